"""Mixed precision: bf16 and fp16 autocast on CPU, the loss scaler's skipped steps, fp32 master
weights and OIALR events, exact resume, and no host synchronization per training step."""

import sys

import pytest
import torch
from torch import nn

from oialr_search.exceptions import ConfigError
from oialr_search.lowrank import convert_to_low_rank
from oialr_search.training import Trainer, config_from_dict, train
from oialr_search.training._precision import resolve_precision

from .test_trainer import tiny


def test_precision_names_are_checked_and_auto_is_fp32_on_cpu():
    with pytest.raises(ConfigError, match="train.precision: must be one of auto, fp32, bf16, fp16"):
        config_from_dict({"train": {"precision": "fp8"}})
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("mode", ["dense", "factorized"])
def test_converted_model_matches_dense_under_bf16_autocast(mode, monkeypatch):
    from oialr_search.lowrank import LowRankWeight

    monkeypatch.setattr(LowRankWeight, "forward_mode", mode)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 10)).eval()
    x = torch.randn(16, 32)
    with torch.no_grad():
        reference = model(x)  # fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dense = model(x)
        convert_to_low_rank(model, keep_last_layer=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert dense.dtype == low.dtype == torch.bfloat16
    scale = reference.abs().max().item()
    tol = 3 * 2**-8 * scale * 3  # bf16 keeps 8 bits of mantissa; three layers of rounding
    assert (dense.float() - reference).abs().max().item() <= tol  # the tolerance is bf16's, not looser
    assert (low.float() - dense.float()).abs().max().item() <= tol
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_bf16_run_learns_with_oialr_updates_and_fp32_state():
    res = train(tiny(train={"precision": "bf16"}), log=None)
    assert res.precision == "bf16" and res.skipped_steps == 0
    assert res.top1 > 75.0
    assert len(res.oialr_updates) > 3 and res.trainable_fraction < 1.0
    t = Trainer(tiny(train={"precision": "bf16", "epochs": 2}), log=None)
    t.fit()
    assert t.oialr.converted
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    for group in t.optimizer.param_groups:
        for p in group["params"]:
            for value in t.optimizer.state[p].values():
                if torch.is_tensor(value) and value.is_floating_point():
                    assert value.dtype == torch.float32


def test_fp16_skips_and_counts_a_step_with_an_inf_gradient():
    cfg = tiny(train={"precision": "fp16", "epochs": 1, "grad_clip": None})
    t = Trainer(cfg, log=None)
    first = next(p for p in t.model.parameters() if p.requires_grad)
    calls = {"n": 0}

    def poison(grad):
        calls["n"] += 1
        return torch.full_like(grad, float("inf")) if calls["n"] == 3 else grad

    first.register_hook(poison)
    seen = []
    for x, y in t.train_batches.epoch(0):
        before = first.detach().clone()
        t.train_step(x, y)
        seen.append(torch.equal(before, first.detach()))
        if len(seen) == 5:
            break
    assert seen == [False, False, True, False, False]  # the third step changed nothing
    assert t.precision.skipped_steps == 1
    res = Trainer(tiny(train={"precision": "fp16", "epochs": 2}), log=None).fit()
    assert res.precision == "fp16" and res.skipped_steps >= 0 and res.top1 > 50.0


def test_fp16_skipped_step_right_before_an_oialr_event_is_not_a_divergence():
    """The check before an event may see a window of one step; under fp16 a skipped step alone there ended
    the run as diverged (found in review). Epoch 2 starts at step 23; the switch is due at step 24."""
    t = Trainer(tiny(train={"precision": "fp16", "epochs": 2, "grad_clip": None}, oialr={"delay": 24}), log=None)
    criterion = t.criterion
    t.criterion = lambda out, y: criterion(out, y) * (float("inf") if t.step == 23 else 1.0)  # an overflowing loss
    res = t.fit()
    assert res.skipped_steps == 1 and t.oialr.converted and res.steps == 46


def test_resume_is_exact_with_the_scaler_and_every_rng(tmp_path):
    # fp16 (scaler state), dropout in the mini-ViT (torch RNG); numpy/python states are saved too
    cfg = tiny(model={"name": "mini_vit", "kwargs": {"embed_dim": 24, "depth": 2, "num_heads": 2,
                                                      "drop_rate": 0.1}},
               train={"precision": "fp16", "epochs": 3}, oialr={"update_frequency": 5})
    full = train(cfg, log=None)
    ckpt = tmp_path / "run.ckpt"
    Trainer(cfg, checkpoint=ckpt, log=None).fit(stop_after=1)
    state = torch.load(ckpt, weights_only=False)
    assert state["precision"]["scaler"]["scale"] > 0 and {"torch", "python", "numpy"} <= set(state["rng"])
    torch.manual_seed(123)  # a resumed process starts from other RNG states
    res = Trainer(cfg, checkpoint=ckpt, resume=True, log=None).fit()
    assert res.val_loss == full.val_loss and res.top1 == full.top1 and res.skipped_steps == full.skipped_steps
    assert [u["step"] for u in res.oialr_updates] == [u["step"] for u in full.oialr_updates]


def test_no_host_synchronization_per_step(monkeypatch):
    """Reads of device values (item, tolist, bool, float) per epoch do not grow with its steps."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            # AdamW reads its step counters, which live on the host even for CUDA parameters (no sync)
            if not sys._getframe(1).f_globals.get("__name__", "").startswith("torch.optim"):
                counts["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    per_epoch = []
    for batch_size in (128, 16):  # 12 and 90 steps per epoch
        trainer = Trainer(tiny(oialr={"enabled": False}, train={"batch_size": batch_size, "epochs": 1}), log=None)
        counts["n"] = 0
        trainer.fit()
        per_epoch.append((trainer.steps_per_epoch, counts["n"]))
    (few_steps, few), (many_steps, many) = per_epoch
    assert many_steps > 5 * few_steps
    assert few <= 6  # the epoch's loss, the evaluation's sums, the finiteness check, the skipped steps
    assert many <= few + many_steps // 50  # one more finiteness check per 50 steps, nothing per step


def test_a_checkpoint_of_the_previous_release_resumes(tmp_path):
    """Before mixed precision: no precision or full RNG state, data.augment a bool, no on_device key."""
    cfg = tiny(train={"epochs": 2})
    full = train(cfg, log=None)
    ckpt = tmp_path / "run.ckpt"
    Trainer(cfg, checkpoint=ckpt, log=None).fit(stop_after=1)
    state = torch.load(ckpt, weights_only=False)
    state["rng"] = state["rng"]["torch"]
    del state["precision"], state["config"]["train"]["precision"], state["config"]["data"]["on_device"]
    state["config"]["data"]["augment"] = False
    torch.save(state, ckpt)
    res = Trainer(cfg, checkpoint=ckpt, resume=True, log=None).fit()
    assert res.val_loss == full.val_loss


def test_fp16_divergence_is_found_when_checkpoints_come_every_step(tmp_path):
    """Frequent checkpoints zeroed the window before it was judged: a run whose every step overflowed
    completed with train_loss 0.0 (found in review)."""
    from oialr_search.training import TrainingDiverged

    t = Trainer(tiny(train={"precision": "fp16", "epochs": 2}), checkpoint=tmp_path / "run.ckpt", log=None)
    criterion = t.criterion
    t.criterion = lambda out, y: criterion(out, y) * float("inf")
    with pytest.raises(TrainingDiverged):
        t.fit(checkpoint_every=1e-9)
