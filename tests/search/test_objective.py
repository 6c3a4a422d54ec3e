"""One trial: every kind of failure becomes a FAILED outcome with its reason, never an exception."""

import math
import sys

import pytest

from oialr_search.search import load_space, run_trial
from oialr_search.storage import COMPLETE, FAILED

from .test_search_cli import FAULTY, write_space


@pytest.fixture()
def space(tmp_path, monkeypatch):
    (tmp_path / "faulty_models_unit.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield load_space(write_space(tmp_path, extra="trial_timeout: 8"))
    sys.modules.pop("faulty_models_unit", None)


def test_complete_trial_has_metrics(space):
    out = run_trial(space, {"oialr.beta": 0.2, "optim.lr": 0.005}, device="cpu", threads=1)
    assert out.state == COMPLETE and math.isfinite(out.value) and out.value == out.metrics["val_loss"]
    assert out.epochs and out.trajectory and out.loss(True) == out.value and out.loss(False) == -out.value


@pytest.mark.parametrize(("model", "reason"), [("nan_model", "nan"), ("raising_model", "injected failure"),
                                                ("hanging_model", "timeout"), ("no_such_builder", "no callable")])
def test_failures_are_outcomes(space, model, reason):
    out = run_trial(space, {"model.name": f"faulty_models_unit:{model}"}, device="cpu", threads=1)
    assert out.state == FAILED and reason in out.error.lower()
    assert out.loss(True) == math.inf and out.loss(False) == math.inf
