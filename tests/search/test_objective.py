"""One trial: every kind of failure becomes a FAILED outcome with its reason, never an exception."""

import math
import sys

import pytest

from oialr_search.search import load_space, run_trial, score
from oialr_search.storage import COMPLETE, FAILED, PRUNED

from .test_search_cli import FAULTY, write_space


@pytest.fixture()
def space(tmp_path, monkeypatch):
    (tmp_path / "faulty_models_unit.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield load_space(write_space(tmp_path, extra="trial_timeout: 8"))
    sys.modules.pop("faulty_models_unit", None)


def test_complete_trial_has_metrics(space):
    reported = []
    out = run_trial(space, {"oialr.beta": 0.2, "optim.lr": 0.005}, device="cpu", threads=1,
                    report=lambda record: reported.append(record) or True)
    assert out.state == COMPLETE and math.isfinite(out.metrics["val_loss"])
    assert out.epochs and out.trajectory
    # every epoch reached the reporter as it ended, with every metric an objective may name
    assert [r["epoch"] for r in reported] == [1, 2] and reported == out.epochs
    assert {"val_loss", "top1", "top5", "trainable_fraction", "compression", "train_seconds"} <= set(reported[0])
    scored = score(out.state, out.metrics, out.error, space.objectives, space.constraints)
    assert scored.state == COMPLETE and scored.values == [out.metrics["val_loss"]]


def test_a_reporter_that_says_stop_prunes_the_trial(space):
    out = run_trial(space, {"oialr.beta": 0.2}, device="cpu", threads=1, report=lambda record: False)
    assert out.state == PRUNED and [e["epoch"] for e in out.epochs] == [1]
    assert out.metrics["val_loss"] == out.epochs[0]["val_loss"]


def test_a_nan_objective_is_failed(space):
    scored = score(COMPLETE, {"val_loss": float("nan")}, None, space.objectives, space.constraints)
    assert scored.state == FAILED and "val_loss is nan" in scored.error


@pytest.mark.parametrize(("model", "reason"), [("nan_model", "nan"), ("raising_model", "injected failure"),
                                                ("hanging_model", "timeout"), ("no_such_builder", "no callable")])
def test_failures_are_outcomes(space, model, reason):
    out = run_trial(space, {"model.name": f"faulty_models_unit:{model}"}, device="cpu", threads=1)
    assert out.state == FAILED and reason in out.error.lower()


def test_ctrl_c_that_a_library_turns_into_its_own_error_is_still_ctrl_c(space, monkeypatch):
    """Ctrl-C in the middle of, say, a checkpoint write surfaces as the writer's RuntimeError (seen under
    mpiexec in CI): that is an interrupted job, not a failed trial, which must stay RUNNING to be resumed."""
    from oialr_search.training import Trainer

    def fit(self, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from None

    monkeypatch.setattr(Trainer, "fit", fit)
    with pytest.raises(KeyboardInterrupt):
        run_trial(space, {"oialr.beta": 0.2}, device="cpu", threads=1)


def test_an_error_that_merely_mentions_an_interrupt_is_a_failure(space, monkeypatch):
    from oialr_search.training import Trainer

    def fit(self, **kwargs):
        raise RuntimeError("KeyboardInterrupt")

    monkeypatch.setattr(Trainer, "fit", fit)
    assert run_trial(space, {"oialr.beta": 0.2}, device="cpu", threads=1).state == FAILED


def test_the_data_cache_shares_a_data_set_across_batch_level_settings_and_stays_bounded(monkeypatch):
    """Trials that differ in Mixup only share one loaded data set, and the cache keeps the last two: a search
    over augmentation settings held one copy per trial (found in review)."""
    from oialr_search.search import _objective
    from oialr_search.training import config_from_dict

    monkeypatch.setattr(_objective, "_DATA_CACHE", {})
    loads = []
    monkeypatch.setattr(_objective, "load_data", lambda name, **kw: loads.append(kw["augment"]) or object())

    def data(**augment):
        cfg = config_from_dict({"data": {"name": "digits", "augment": {"pipeline": "timm", **augment}}})
        return _objective._data_for(cfg)

    first = data(mixup_alpha=0.2)
    assert data(mixup_alpha=0.8, cutmix_alpha=1.0) is first and len(loads) == 1
    data(re_prob=0.1)
    data(re_prob=0.2)
    assert len(loads) == 3 and len(_objective._DATA_CACHE) == 2
    assert data(re_prob=0.2) is not first and len(loads) == 3  # the most recent stays
    data(mixup_alpha=0.5)  # the first was evicted
    assert len(loads) == 4


def test_a_stopped_trial_reads_the_data_where_the_study_says_it_lies_now(tmp_path):
    from oialr_search.search._objective import _at_the_studys_data

    write_space(tmp_path)
    space = load_space(tmp_path / "space.yaml").with_overrides(["data.path=/new"])
    stored = {"data": {"name": "cifar10", "path": "/old"}, "train": {"epochs": 2}}
    assert _at_the_studys_data(stored, space) == {"data": {"name": "cifar10", "path": "/new"}, "train": {"epochs": 2}}
    assert stored["data"]["path"] == "/old"  # the stored config itself is left as it was


def test_a_resumed_trial_pruned_at_an_epoch_its_checkpoint_restored_ends_there(tmp_path):
    """The pruner may stop a resumed trial at a replayed epoch (the epochs of another run than the stored ones
    are all judged): its outcome is that epoch's, not the later epochs' its checkpoint had reached."""
    space = load_space(write_space(tmp_path, epochs=3, name="three.yaml"))
    params, checkpoint = {"oialr.beta": 0.2, "optim.lr": 0.005}, tmp_path / "trial.ckpt"
    full = run_trial(space, params, device="cpu", threads=1, checkpoint=checkpoint, report=lambda record: True)
    assert full.state == COMPLETE and len(full.epochs) == 3 and checkpoint.exists()
    out = run_trial(space, params, device="cpu", threads=1, checkpoint=checkpoint, resume=True,
                    report=lambda record: record["epoch"] != 1)  # the replay of epoch 1 is pruned
    assert out.state == PRUNED and out.epochs == full.epochs[:1]
    first = full.epochs[0]
    assert {k: out.metrics[k] for k in ("val_loss", "top1", "trainable_fraction", "train_seconds")} == \
        {k: first[k] for k in ("val_loss", "top1", "trainable_fraction", "train_seconds")}
    assert out.metrics["steps"] == first["step"] and all(u["step"] < first["step"] for u in out.trajectory)
    original = out.metrics["original_parameters"]
    assert out.metrics["trainable_parameters"] == round(first["trainable_fraction"] * original)
