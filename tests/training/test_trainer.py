"""The training loop: both modes, repeatability, evaluation, checkpoint and resume."""

import pytest
import torch

from oialr_search.exceptions import CheckpointError, ConfigError
from oialr_search.training import Trainer, config_from_dict, train


def tiny(**sections):
    base = {
        "model": {"name": "mlp", "kwargs": {"hidden": 48, "depth": 2}},
        "data": {"name": "digits", "val_fraction": 0.2},
        "optim": {"lr": 0.003},
        "schedule": {"warmup": 0.1},
        "oialr": {"delay": 0.3, "update_frequency": 8, "beta": 0.2, "layer_fraction": 0.5},
        "train": {"epochs": 4, "batch_size": 64, "seed": 1},
    }
    for key, value in sections.items():
        base[key] = {**base[key], **value}
    return config_from_dict(base)


def test_oialr_run_learns_and_shrinks():
    res = train(tiny(), log=None)
    assert res.top1 > 80.0
    assert res.trainable_fraction < 1.0 and res.steps == 4 * 23
    updates = res.oialr_updates
    assert updates[0]["update"] == -1 and updates[0]["step"] == round(0.3 * res.steps)
    assert len(updates) > 3 and all("stability" in u for u in updates)
    assert len(res.epochs) == 4 and set(res.final_ranks) == {"1.factor", "3.factor"}


def test_full_rank_baseline():
    res = train(tiny(oialr={"enabled": False}), log=None)
    assert res.trainable_fraction == 1.0 and res.compression == 1.0 and res.final_ranks == {}
    assert res.oialr_updates == []


def test_same_seed_same_result_and_eval_does_not_advance():
    t = Trainer(tiny(), log=None)
    step = t.step
    t.evaluate()
    t.evaluate()
    assert t.step == step
    a = t.fit()
    b = train(tiny(), log=None)
    assert a.val_loss == b.val_loss and a.final_ranks == b.final_ranks


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    cfg = tiny(train={"epochs": 4}, data={"augment": True}, model={"kwargs": {"hidden": 48, "depth": 2}})
    full = train(cfg, log=None)
    ckpt = tmp_path / "run.ckpt"
    Trainer(cfg, checkpoint=ckpt, log=None).fit(stop_after=2)  # interrupted after epoch 2
    state = torch.load(ckpt, weights_only=False)
    assert state["oialr"]["converted"] and state["oialr"]["updates_done"] >= 1  # past the switch
    resumed = Trainer(cfg, checkpoint=ckpt, resume=True, log=None)
    assert resumed.epoch == 2 and resumed.step == 2 * 23
    res = resumed.fit()
    assert res.val_loss == pytest.approx(full.val_loss, abs=1e-6)
    assert res.top1 == full.top1 and res.final_ranks == full.final_ranks
    assert [u["step"] for u in res.oialr_updates] == [u["step"] for u in full.oialr_updates]


def test_resume_refuses_another_config(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    Trainer(tiny(train={"epochs": 1}), checkpoint=ckpt, log=None).fit()
    with pytest.raises(CheckpointError, match="different config"):
        Trainer(tiny(train={"epochs": 1}, oialr={"beta": 0.5}), checkpoint=ckpt, resume=True, log=None)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        Trainer(tiny(train={"epochs": 1}), checkpoint=ckpt, resume=True, log=None)


def test_mini_vit_runs_both_phases():
    cfg = tiny(model={"name": "mini_vit", "kwargs": {"embed_dim": 24, "depth": 2, "num_heads": 2}},
               train={"epochs": 2}, oialr={"update_frequency": 5})
    res = train(cfg, log=None)
    assert res.trainable_fraction < 0.6
    assert any(u["update"] >= 0 for u in res.oialr_updates)


def test_stop_mid_epoch_checkpoints_there_and_resumes_exactly(tmp_path):
    from oialr_search.training import Preempted

    cfg = tiny(train={"epochs": 3}, model={"name": "mini_vit", "kwargs": {"embed_dim": 24, "depth": 2,
                                                                          "num_heads": 2, "drop_rate": 0.1}})
    full = train(cfg, log=None)
    ckpt = tmp_path / "run.ckpt"
    t = Trainer(cfg, checkpoint=ckpt, log=None)
    with pytest.raises(Preempted, match="stopped at step 30"):
        t.fit(should_stop=lambda: t.step >= 30)  # in epoch 2 (23 steps per epoch), past the switch at 21
    state = torch.load(ckpt, weights_only=False)
    assert (state["epoch"], state["step"], state["batch"]) == (1, 30, 7)
    torch.manual_seed(99)
    res = Trainer(cfg, checkpoint=ckpt, resume=True, log=None).fit()
    assert res.val_loss == full.val_loss and res.top1 == full.top1
    assert [e.train_loss for e in res.epochs] == pytest.approx([e.train_loss for e in full.epochs], rel=1e-12)
    assert [u["step"] for u in res.oialr_updates] == [u["step"] for u in full.oialr_updates]


def test_checkpoint_every_writes_within_epochs(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.ckpt"
    t = Trainer(tiny(train={"epochs": 1}), checkpoint=ckpt, log=None)
    saves = []
    original = t._save
    monkeypatch.setattr(t, "_save", lambda epoch_sums=None: (saves.append(t._batch if epoch_sums is not None
                                                                          else "end"), original(epoch_sums)))
    t.fit(checkpoint_every=1e-9)  # due after every step
    assert saves[:3] == [1, 2, 3] and saves[-1] == "end" and len(saves) == t.steps_per_epoch + 1


def test_a_cuda_device_the_machine_lacks_is_a_config_error(monkeypatch):
    from oialr_search.training._device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device is available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"cuda:5 requested but this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:5")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


def test_a_checkpoint_resumes_with_its_data_set_moved(tmp_path):
    """Where the data lies is no setting of the run: a copy at another data.path continues the checkpoint
    (a resumed search trial reads the study's data.path now; a sweep found them failing on the old one)."""
    import shutil

    from .test_data import _write_cifar

    _write_cifar(tmp_path / "a")
    cfg = {"model": {"name": "mlp", "kwargs": {"hidden": 8, "depth": 1}},
           "data": {"name": "cifar10", "path": str(tmp_path / "a")}, "train": {"epochs": 2, "batch_size": 32}}
    whole = Trainer(config_from_dict(cfg), log=None).fit()
    Trainer(config_from_dict(cfg), checkpoint=tmp_path / "run.ckpt", log=None).fit(stop_after=1)
    shutil.move(tmp_path / "a", tmp_path / "b")
    cfg["data"]["path"] = str(tmp_path / "b")
    resumed = Trainer(config_from_dict(cfg), checkpoint=tmp_path / "run.ckpt", resume=True, log=None)
    assert resumed.epoch == 1
    assert resumed.fit().val_loss == whole.val_loss
    # another data set is no moved copy: the checkpoint is refused (the search then restarts the trial), as a
    # checkpoint of an earlier release (no digest of its data) is on another data.path (found in review)
    _write_cifar(tmp_path / "other", seed=1)
    cfg["data"]["path"] = str(tmp_path / "other")
    Trainer(config_from_dict({**cfg, "data": {**cfg["data"], "path": str(tmp_path / "b")}}),
            checkpoint=tmp_path / "run.ckpt", log=None).fit(stop_after=1)
    with pytest.raises(CheckpointError, match="written on another data set than the one at .*other"):
        Trainer(config_from_dict(cfg), checkpoint=tmp_path / "run.ckpt", resume=True, log=None)
    state = torch.load(tmp_path / "run.ckpt", weights_only=False)
    del state["data"]
    torch.save(state, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match="written on another data set"):
        Trainer(config_from_dict(cfg), checkpoint=tmp_path / "old.ckpt", resume=True, log=None)


def test_a_checkpoint_that_does_not_fit_says_what_and_other_load_errors_pass_through(tmp_path, monkeypatch):
    """A state of other shapes is a CheckpointError naming the mismatch (the search then restarts the trial);
    an error that merely happens while loading, such as running out of memory, is not one, or the search
    would delete a good checkpoint (found in review)."""
    cfg = tiny(train={"epochs": 2})
    Trainer(cfg, checkpoint=tmp_path / "run.ckpt", log=None).fit(stop_after=1)
    state = torch.load(tmp_path / "run.ckpt", weights_only=False)
    key = next(k for k, v in state["model"].items() if v.dim() == 2)
    state["model"][key] = state["model"][key][:, 1:]
    torch.save(state, tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match=rf"does not fit this run's model \(Error\(s\) in loading state_dict.*; "
                                              rf"size mismatch for {key}"):
        Trainer(cfg, checkpoint=tmp_path / "cut.ckpt", resume=True, log=None)

    def out_of_memory(self, state):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        Trainer(cfg, checkpoint=tmp_path / "run.ckpt", resume=True, log=None)
