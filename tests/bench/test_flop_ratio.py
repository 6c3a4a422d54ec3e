"""bench/trainer.py's FLOP ratio: the training step's multiply-adds for the path each factor takes."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def flop_ratio(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from trainer import flop_ratio

    yield flop_ratio
    sys.modules.pop("trainer", None)


def test_flop_ratio_counts_forward_and_backward_for_the_path_each_factor_takes(flop_ratio):
    from oialr_search.lowrank import LowRankWeight

    f = LowRankWeight(torch.randn(64, 96))
    tokens, dense = 1000, 3 * 64 * 96
    assert flop_ratio([("", f)], tokens) == pytest.approx((3 + 2 * 64 / tokens) * 64 * 96 / dense)  # W built
    f.rotate_(beta=1.0, min_rank=4)  # Σ apart: 3·4 < 64
    assert flop_ratio([("", f)], tokens) == pytest.approx((2 * 4 * (64 + 96) + 3 * 4 * 4) / dense)
    f.sigma_placement = "merged"  # the merged side's gradient: one more product at the narrower width
    assert flop_ratio([("", f)], tokens) == pytest.approx((2 * 4 * (64 + 96) + 4 * 64) / dense)
