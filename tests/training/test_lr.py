import math

import pytest

from oialr_search.training import ScheduleConfig, lr_at, trainable_coupling


def test_warmup_then_cosine():
    s = ScheduleConfig(warmup=10, warmup_lr=0.0, min_lr=0.0)
    assert lr_at(0, 110, 1.0, s) == 0.0
    assert lr_at(5, 110, 1.0, s) == pytest.approx(0.5)
    assert lr_at(10, 110, 1.0, s) == pytest.approx(1.0)
    assert lr_at(60, 110, 1.0, s) == pytest.approx(0.5)
    assert lr_at(110, 110, 1.0, s) == pytest.approx(0.0, abs=1e-12)


def test_warmup_fraction_and_rising_schedule():
    s = ScheduleConfig(warmup=0.1, warmup_lr=0.1, min_lr=3.0)  # min_lr above lr: rises after warmup
    lrs = [lr_at(t, 100, 1.0, s) for t in range(10, 101)]
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] == pytest.approx(3.0)
    assert all(b >= a for a, b in zip(lrs, lrs[1:]))


def test_k_decay_keeps_lr_high_longer():
    plain, k2 = ScheduleConfig(warmup=0, min_lr=0.0), ScheduleConfig(warmup=0, min_lr=0.0, k_decay=2.0)
    assert lr_at(50, 100, 1.0, k2) > lr_at(50, 100, 1.0, plain)
    assert lr_at(50, 100, 1.0, k2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_trainable_coupling():
    assert trainable_coupling(0.25, 0.0) == 1.0
    assert trainable_coupling(0.25, 0.5) == pytest.approx(2.0)
    assert trainable_coupling(1.0, 1.0) == 1.0
