"""One training loop for the full-rank baseline and OIALR."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import CheckpointError, ConfigError
from ..lowrank import OIALR
from ._augment import build_batch_ops
from ._batches import BatchIterator, loading_for, random_shift_flip
from ._checkpoint import (
    load_checkpoint,
    misfit_of,
    portable_config,
    resolved_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ._compile import TrainingCompiler
from ._config import RunConfig
from ._config_io import config_to_dict
from ._data import DataBundle, load_data
from ._device import full_fp32, resolve_device, use_device
from ._distributed import (
    TrialGroup,
    all_reduce_sum,
    average_norm_statistics,
    gather_objects,
    rewrap,
    shard,
    share,
    wrap,
)
from ._lr import lr_at, trainable_coupling
from ._models import create_model
from ._precision import Precision
from ._results import EpochCallback, EpochRecord, Preempted, TrainingDiverged, TrainResult

# Steps between checks that the training loss is finite: the check reads the device, so it is not
# done every step (a GPU would wait for the host each time); a divergence is still caught within it.
FINITE_CHECK_EVERY = 50


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The random seed of rank ``rank`` of a trial's group, for what each rank draws alone (dropout,
    drop-path, Mixup): one seed on every rank would give item i of every rank's share the same masks."""
    return (seed * 1_000_003 + 7919 * (rank + 1)) % 2**63


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay every tensor of 2+ dimensions; biases and norms (≤ 1-D) get none. (timm also exempts the names a
    model lists in no_weight_decay(), a ViT's class token and position embedding; we do not, and changing it
    would change every stored study's training.)"""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Trains ``config`` (OIALR when ``config.oialr.enabled``, else full rank).

    ``checkpoint``: a file written atomically after every epoch; with ``resume=True`` training
    continues from it and ends exactly where an uninterrupted run would (same seed, CPU).
    ``log`` receives one progress line per epoch (``None`` for silence). ``group``: the ranks that
    train this run together (see ``_distributed``); ``train.batch_size`` is then the global batch.
    """

    def __init__(self, config: RunConfig, *, checkpoint: str | Path | None = None, resume: bool = False,
                 log: Callable[[str], None] | None = print, data: DataBundle | None = None,
                 group: TrialGroup | None = None, save: bool = True) -> None:
        config.validate()
        self.config, self.log = config, log
        self.checkpoint_path = Path(checkpoint) if checkpoint else None
        self._saves = save  # False: read ``checkpoint`` to resume, never write it (a group's follower ranks)
        if resume and self.checkpoint_path is None:
            raise ConfigError("--resume needs --checkpoint PATH")
        tc = config.train
        if group is not None and tc.batch_size < 2 * group.size:  # a rank with no item would stall the others
            raise ConfigError(f"train.batch_size: {tc.batch_size} is too small for a trial trained by {group.size} "
                              f"ranks; it is the global batch and needs at least 2 items per rank "
                              f"({2 * group.size})")
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)
        use_device(self.device)
        self.compiler = TrainingCompiler(mode=tc.compile)
        self.precision = Precision(tc.precision, self.device)
        seed_everything(tc.seed)
        self.data = data or load_data(config.data.name, path=config.data.path, val_fraction=config.data.val_fraction,
                                      img_size=config.data.img_size, augment=config.data.augment)
        self.model = create_model(config.model.name, num_classes=self.data.num_classes, in_chans=self.data.in_chans,
                                  img_size=self.data.img_size, **config.model.kwargs).to(self.device)
        oc = config.optim
        # fused on GPUs: one kernel per step, and the fp16 loss scaler's inf check stays on the device
        # (unfused, GradScaler.step reads it on the host every step)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, oc.weight_decay), lr=oc.lr,
                                           betas=(oc.beta1, oc.beta2), eps=oc.eps,
                                           fused=True if self.device.type == "cuda" else None)
        dc = config.data
        # Mixup/CutMix of each training batch on the device and its soft-target loss, or None and
        # label-smoothed cross-entropy.
        self.batch_transform, self.criterion = build_batch_ops(config, self.data.num_classes)
        augment = None  # the "shift" pipeline: whole tensor batches, shifted (and flipped) in the iterator
        if dc.augment.enabled and not dc.augment.per_image and dc.name in ("mnist", "digits", "cifar10"):
            augment = random_shift_flip(pad=max(1, self.data.img_size // 8),
                                        flip=dc.augment.hflip_for(self.data.in_chans))
        loading = loading_for(dc, self.data, self.device)  # workers, pinned memory, tensors kept on the device
        shard = (group.rank, group.size) if group is not None else None  # each rank loads only its share
        self.train_batches = BatchIterator(self.data.train, tc.batch_size, shuffle=True, seed=tc.seed, augment=augment,
                                           num_workers=loading.num_workers, pin_memory=loading.pin_memory,
                                           device=loading.device, shard=shard)
        self.val_batches = BatchIterator(self.data.val, tc.eval_batch_size, shuffle=False,
                                         num_workers=loading.num_workers, pin_memory=loading.pin_memory,
                                         device=loading.device, shard=shard)
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.oialr = OIALR(self.model, self.optimizer, config.oialr, total_steps=self.total_steps)
        self.compiler.compile(self.model)  # in place: DDP below wraps the compiled model
        self.group = group
        if group is not None:  # the model is the first rank's (DDP broadcasts it); each rank draws its own masks
            seed_everything(rank_seed(tc.seed, group.rank))
        self._forward: nn.Module | None = None  # DDP over the group, else the model: built below
        self.step = 0
        self.epoch = 0
        self.train_seconds = 0.0
        self.history: list[EpochRecord] = []
        self._lr_mult = 1.0
        self._batch = 0  # batches of the current epoch already trained (a checkpoint may fall mid-epoch)
        self._epoch_sums: torch.Tensor | None = None  # and their loss sums, from such a checkpoint
        if self.checkpoint_path is not None:  # now, not in the save a preemption signal asks for (seconds on ImageNet)
            self.data.fingerprint()
        if resume:
            self._resume()
        # after the resume, which may have made the model low-rank: a wrapper built before it would track the
        # dense weights, which get no gradient any more (DDP then fails the first step; found by a sweep)
        self._forward = wrap(self.model, self.device, group)

    # -- checkpoints -----------------------------------------------------------------------------
    def _save(self, epoch_sums: torch.Tensor | None = None) -> None:
        """Checkpoint; ``epoch_sums`` (loss sums of the epoch so far) for a checkpoint within an epoch."""
        assert self.checkpoint_path is not None
        rng = rng_state(self.device)
        every_rank = gather_objects(rng, self.group)  # collective: a group's followers call this too
        if not self._saves:
            return
        save_checkpoint(self.checkpoint_path, {
            "batch": self._batch if epoch_sums is not None else 0,
            "epoch_sums": epoch_sums.cpu() if epoch_sums is not None else None,
            "config": config_to_dict(self.config), "epoch": self.epoch, "step": self.step,
            "train_seconds": self.train_seconds, "history": [vars(h) for h in self.history],
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "oialr": self.oialr.state_dict(), "lr_mult": self._lr_mult, "rng": rng, "rng_ranks": every_rank,
            "precision": self.precision.state_dict(), "data": self.data.fingerprint(),
        })

    def _resume(self) -> None:
        assert self.checkpoint_path is not None
        if not self.checkpoint_path.exists():
            return  # nothing yet: start from scratch, so "--resume" is safe to always pass
        state = load_checkpoint(self.checkpoint_path)
        if portable_config(resolved_config(state["config"])) != portable_config(config_to_dict(self.config)):
            raise CheckpointError(f"{self.checkpoint_path}: written by a different config; use another checkpoint "
                                  "path or the same config")
        stored_data = state.get("data")  # checkpoints of earlier releases have none: then only the same data.path
        if (stored_data is not None and stored_data != self.data.fingerprint()) or (
                stored_data is None and state["config"].get("data", {}).get("path") != self.config.data.path):
            raise CheckpointError(f"{self.checkpoint_path}: written on another data set than the one at "
                                  f"{self.config.data.path or self.config.data.name}; use another checkpoint path or "
                                  "that data set")
        self.oialr.prepare_load(state["oialr"])  # gives the model the checkpoint's structure and ranks
        self.compiler.shapes_changed(self.model)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as exc:  # a state that does not fit: the trial restarts, not fails
            misfit = misfit_of(exc)
            if misfit is None:  # anything else (out of memory) is no reason to drop the checkpoint
                raise
            raise CheckpointError(f"{self.checkpoint_path}: does not fit this run's model ({misfit})") from None
        self.oialr.load_state_dict(state["oialr"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.train_seconds, self._lr_mult = state["train_seconds"], state["lr_mult"]
        self.history = [EpochRecord(**h) for h in state["history"]]
        self._batch = state.get("batch", 0)
        self._epoch_sums = state.get("epoch_sums")
        self.precision.load_state_dict(state.get("precision"))
        ranks = state.get("rng_ranks")
        if self.group is not None and ranks is not None and len(ranks) == self.group.size:
            set_rng_state(ranks[self.group.rank], self.device)
        else:
            set_rng_state(state["rng"], self.device)
            if self.group is not None:  # a checkpoint with the first rank's state only (or another rank count)
                seed_everything(rank_seed(self.config.train.seed + self.step, self.group.rank))
        if self.log:
            self.log(f"resumed from {self.checkpoint_path} at epoch {self.epoch}, step {self.step}")

    # -- loop ------------------------------------------------------------------------------------
    def _set_lr(self) -> float:
        sc, oc = self.config.schedule, self.config.optim
        lr = lr_at(self.step, self.total_steps, oc.lr, sc) * self._lr_mult
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self, x: torch.Tensor, y: torch.Tensor, global_size: int | None = None) -> torch.Tensor:
        """One optimizer step on a global batch, or with ``global_size`` on this rank's share of a
        global batch of that many items (as ``train_batches`` yields them in a group). Returns the
        loss as a detached device tensor (reading it would make the host wait for the device every step)."""
        with full_fp32(self.device):  # outside autocast too: SVDs and rotations in fp32
            record = self.oialr.before_step(self.step)
        if record is not None:
            self.compiler.shapes_changed(self.model)
            self._lr_mult = trainable_coupling(record.trainable_fraction, self.config.schedule.trainable_lr_alpha)
            if self.group is not None:  # new parameters: same state everywhere, then a new DDP wrapper
                self._forward = None  # see rewrap: the old wrapper must be gone first
                self._forward = rewrap(self.model, self.optimizer, self.oialr.ranks, self.device, self.group)
        self._set_lr()
        self.model.train()
        if global_size is None:
            global_size = len(y)
            x, y = shard(x, self.group), shard(y, self.group)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        target = y
        if self.batch_transform is not None:
            x, target = self.batch_transform(x, y)
        with self.compiler.training():  # the backward too: its graph compiles at the first backward
            with self.precision.autocast():
                loss = self.criterion(self._forward(x), target)
            if self.group is not None:
                loss = loss * share(len(y), global_size, self.group)
            self.optimizer.zero_grad(set_to_none=True)
            self.precision.backward_and_step(loss, self.optimizer, self.model.parameters(),
                                             self.config.train.grad_clip)
        self.step += 1
        return loss.detach().float()

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float, float]:
        """(mean cross-entropy, top-1 %, top-5 %) on the validation split; does not advance the step.
        Sums stay on the device until the end: one synchronization per evaluation."""
        self.model.eval()
        average_norm_statistics(self.model, self.group)  # one model on every rank, the one that is saved
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, top-1 hits, top-5 hits
        total = 0
        k = min(5, self.data.num_classes)
        for x, y in self.val_batches.epoch(0):  # in a group, each rank scores its share
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.compiler.eager(), self.precision.autocast():
                logits = self.model(x)
            logits = logits.float()
            best = logits.topk(k, dim=1).indices
            sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 (best[:, 0] == y).sum().double(), (best == y[:, None]).any(dim=1).sum().double()])
            total += len(y)
        sums = all_reduce_sum(torch.cat([sums, sums.new_tensor([total])]), self.group)
        loss_sum, top1, top5, total = sums.tolist()
        return loss_sum / total, 100.0 * top1 / total, 100.0 * top5 / total

    def _stop_or_save(self, should_stop: Callable[[], bool] | None, due: bool, boundary: bool) -> tuple[bool, bool]:
        """(stop, save now): ``should_stop()`` and the checkpoint interval, every step alone; in a group
        only at window boundaries, where every rank asks and all act if any asked (a rank that saved or
        left alone would pair its collectives with the others' gradient all-reduce)."""
        stop = should_stop is not None and should_stop()
        if self.group is None:
            return stop, due
        if not boundary:
            return False, False
        flags = all_reduce_sum(torch.tensor([float(stop), float(due)], device=self.device), self.group).tolist()
        return flags[0] > 0, flags[1] > 0

    def _check_finite(self, window: torch.Tensor, first_step: int, *, whole: bool = True) -> None:
        """Raise TrainingDiverged when a loss of the steps since ``first_step`` was not finite (under
        fp16 only when all were: the loss scaler skips single overflowing steps by design). Under fp16 a
        check within a window (``whole=False``: before an OIALR event) is none: such a window may hold one
        skipped step alone, and skipped steps leave the weights finite."""
        if not whole and self.precision.scaler is not None:
            return
        window = all_reduce_sum(window.clone(), self.group)  # every rank of a group decides alike
        bad, steps = int(window[1].item()), (self.step - first_step) * (self.group.size if self.group else 1)
        if bad and (self.precision.scaler is None or bad >= steps):
            clip = self.config.train.grad_clip
            hint = f"lower train.grad_clip (now {clip:g})" if clip is not None else "set train.grad_clip"
            raise TrainingDiverged(f"training loss became NaN or inf between steps {first_step + 1} and "
                                   f"{self.step} (epoch {self.epoch + 1}); lower optim.lr or {hint}")

    def fit(self, *, stop_after: int | None = None, on_epoch: EpochCallback | None = None,
            should_stop: Callable[[], bool] | None = None, checkpoint_every: float | None = None) -> TrainResult:
        """Train to ``train.epochs`` (or stop once ``stop_after`` epochs are done; resumable).

        ``on_epoch(record)`` is called after every epoch (after the checkpoint is written); when it
        returns False before the last epoch the run stops there and the result has ``stopped_early``
        set (a pruned trial). ``should_stop()`` is asked after every step (in a group, every 50 steps
        and after every epoch, all ranks agreeing); when it says so the run is checkpointed where it
        is (when there is a checkpoint file) and :class:`Preempted` is raised. ``checkpoint_every`` seconds:
        also checkpoint within an epoch when that long has passed since the last checkpoint.
        """
        tc = self.config.train
        last = tc.epochs if stop_after is None else min(stop_after, tc.epochs)
        stopped = False
        last_save = time.monotonic()
        while self.epoch < last and not stopped:
            start = time.perf_counter()
            # On the device: (sum of finite losses, non-finite count, finite count) for the epoch, and
            # the same for the steps since the last finiteness check.
            epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            if self._epoch_sums is not None:  # resumed within this epoch
                epoch_sums += self._epoch_sums.to(self.device)
                self._epoch_sums = None
            window, window_start = torch.zeros_like(epoch_sums), self.step
            skip = self._batch
            for i, (x, y) in enumerate(self.train_batches.epoch(self.epoch, skip=skip), start=skip):
                if self.oialr.event_due(self.step):  # an SVD of diverged weights fails with a worse message
                    self._check_finite(window, window_start, whole=False)
                loss = self.train_step(x, y, self.train_batches.global_size(i))
                self._batch = i + 1
                finite = torch.isfinite(loss)
                window += torch.stack([torch.where(finite, loss, 0.0).double(), (~finite).double(), finite.double()])
                boundary = self.step - window_start >= FINITE_CHECK_EVERY
                if boundary:
                    self._check_finite(window, window_start)
                    epoch_sums += window
                    window.zero_()
                    window_start = self.step
                if should_stop is None and not checkpoint_every:
                    continue
                due = bool(checkpoint_every) and time.monotonic() - last_save >= checkpoint_every
                stop, save = self._stop_or_save(should_stop, due, boundary)  # in a group: a collective on all
                if stop or save:
                    # the window is judged and folded in here, but under fp16, which judges whole windows only: it
                    # then runs on to its boundary (zeroed here, a run checkpointed often would never be judged)
                    folded = self.precision.scaler is None
                    if folded:
                        self._check_finite(window, window_start)
                        epoch_sums += window
                        window.zero_()
                        window_start = self.step
                    now = time.perf_counter()
                    self.train_seconds += now - start
                    start = now
                    so_far = epoch_sums if folded else epoch_sums + window
                    if self.group is not None:  # every rank resumes with the group's sums, 1/K each
                        shared = all_reduce_sum(so_far.clone(), self.group) / self.group.size
                    else:
                        shared = so_far
                    if self.checkpoint_path is not None:  # a group's followers do not write (see _saves)
                        self._save(epoch_sums=shared)
                    last_save = time.monotonic()
                    if stop:
                        raise Preempted(f"stopped at step {self.step} (epoch {self.epoch + 1}), checkpointed to "
                                        f"{self.checkpoint_path}")
            self._batch = 0
            self._check_finite(window, window_start)
            epoch_sums += window
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.train_seconds += time.perf_counter() - start
            # a group's weighted losses sum to K times the global batch's mean
            loss_sum, _, finite_steps = all_reduce_sum(epoch_sums, self.group).tolist()
            val_loss, top1, top5 = self.evaluate()
            self.epoch += 1
            counts = self.oialr.counts()
            rec = EpochRecord(self.epoch, self.step, loss_sum / max(1.0, finite_steps), val_loss, top1, top5,
                              self.optimizer.param_groups[0]["lr"], counts.trainable_fraction,
                              time.perf_counter() - start, counts.compression, self.train_seconds)
            self.history.append(rec)
            if self.log:
                self.log(f"epoch {rec.epoch}/{tc.epochs}  step {rec.step}  train_loss {rec.train_loss:.4f}  "
                         f"val_loss {val_loss:.4f}  top1 {top1:.2f}%  top5 {top5:.2f}%  "
                         f"trainable {100 * counts.trainable_fraction:.1f}%  lr {rec.lr:.2e}  {rec.seconds:.1f}s")
            if self.checkpoint_path is not None:
                self._save()
                last_save = time.monotonic()
            if on_epoch is not None:  # called for the last epoch too, so every epoch reaches the caller
                stopped = not on_epoch(rec) and self.epoch < tc.epochs
            if self.group is not None and not stopped and self.epoch < last \
                    and self._stop_or_save(should_stop, False, True)[0]:  # on every rank, whatever it was given
                # a group asks only every FINITE_CHECK_EVERY steps within an epoch, so also here: shorter
                # epochs would never stop for a timeout or a preemption. The epoch is checkpointed already
                raise Preempted(f"stopped after epoch {self.epoch}, checkpointed to {self.checkpoint_path}")
        result = self.result()
        result.stopped_early = stopped
        return result

    def result(self) -> TrainResult:
        last = self.history[-1] if self.history else None
        val_loss, top1, top5 = (last.val_loss, last.top1, last.top5) if last else self.evaluate()
        counts = self.oialr.counts()
        return TrainResult(val_loss=val_loss, top1=top1, top5=top5, train_seconds=self.train_seconds,
                           steps=self.step, trainable_fraction=counts.trainable_fraction,
                           compression=counts.compression, trainable_parameters=counts.trainable,
                           original_parameters=counts.original, final_ranks=self.oialr.ranks,
                           precision=self.precision.name, skipped_steps=self.precision.skipped_steps,
                           epochs=list(self.history), oialr_updates=[r.to_dict() for r in self.oialr.records])


def train(config: RunConfig, **kwargs: Any) -> TrainResult:
    """Train ``config`` and return its metrics; see :class:`Trainer` for the keyword arguments."""
    return Trainer(config, **kwargs).fit()
