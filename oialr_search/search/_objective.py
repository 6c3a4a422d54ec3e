"""One trial: a config from the space, trained in-process; every failure is caught and described.

Nothing may escape from here: under Propulate an exception in one rank's loss function hangs every
other rank, and a NaN corrupts its selection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import CheckpointError
from ..storage import COMPLETE, FAILED, PRUNED, RUNNING
from ..training import (
    DataBundle,
    Preempted,
    Trainer,
    TrainResult,
    config_from_dict,
    load_data,
    stored_run_config,
    weights_payload,
)
from ..training._distributed import TrialGroup, collective_failed, group_max
from ._space import SearchSpace

# report(epoch record as a dict) -> whether the trial goes on; the runner stores it and asks the pruner.
Report = Callable[[dict], bool]

_DATA_CACHE: dict[tuple, DataBundle] = {}
DATA_CACHE_SIZE = 2


class TrialTimeout(Exception):
    pass


@dataclass
class TrialOutcome:
    """What one trial produced. ``metrics`` are the final (or, for PRUNED, the last epoch's) metrics;
    the runner reads the objectives' values from them."""

    state: str
    metrics: dict | None = None
    epochs: list[dict] = field(default_factory=list)
    trajectory: list[dict] | None = None
    error: str | None = None
    seconds: float = 0.0
    device_lost: bool = False  # a CUDA error poisoned this process's context: it can train nothing more
    group_broken: bool = False  # a collective of the trial's ranks failed: their process group is unusable
    preempted: bool = False  # stopped by should_stop and checkpointed: the trial is to be resumed, not stored
    # COMPLETE: builds the weights file's payload from the trained model, called only for trials whose
    # weights are kept (search/_weights.py); None where there is no model (failed, custom objectives)
    final_weights: Callable[[], dict] | None = field(default=None, repr=False)


# What a CUDA error that poisons the process's context says: after one of these every later kernel
# fails too, so the rank must stop taking trials instead of failing each one instantly.
_FATAL_CUDA = ("device-side assert", "illegal memory access", "illegal instruction", "unspecified launch failure",
               "misaligned address", "cudaErrorLaunchFailure", "CUBLAS_STATUS_EXECUTION_FAILED",
               "uncorrectable ECC error")


def while_interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a KeyboardInterrupt was being handled: Ctrl-C in the middle of a
    checkpoint write, for one, surfaces as the writer's RuntimeError. The trial did not fail; the job was
    interrupted, and the trial must stay RUNNING for the next job to resume."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def device_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a CUDA error after which this process's CUDA context is unusable."""
    text = str(exc)
    return any(marker in text for marker in _FATAL_CUDA)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise TrialTimeout in the main thread after ``seconds`` (no-op when None)."""
    if not seconds:
        yield
        return

    def _alarm(_signum: int, _frame: Any) -> None:
        raise TrialTimeout(f"timeout: the trial ran longer than {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _data_for(config) -> DataBundle:  # noqa: ANN001
    """The trial's data set, loaded once for the trials of a process that share it. The cache keeps the
    last DATA_CACHE_SIZE: a search over augmentation settings would otherwise hold one copy per trial."""
    d = config.data
    key = (d.name, d.path, d.val_fraction, d.img_size, d.augment.for_loading())
    bundle = _DATA_CACHE.pop(key, None)  # popped and put back: the most recently used is last
    if bundle is None:
        bundle = load_data(d.name, path=d.path, val_fraction=d.val_fraction, img_size=d.img_size,
                           augment=d.augment)
        while len(_DATA_CACHE) >= DATA_CACHE_SIZE:
            del _DATA_CACHE[next(iter(_DATA_CACHE))]
    _DATA_CACHE[key] = bundle
    return bundle


def _at_the_studys_data(config: dict, space: SearchSpace) -> dict:
    """A stopped trial's stored config, reading the data set where the study's config says it lies now:
    ``resume --set data.path=…`` moves the study's trials, stopped ones too (a sweep found them failing on
    the old path after the README's advice for a moved data set). Unless data.path is searched."""
    if any(d.key in ("data", "data.path") for d in space.dimensions):
        return config
    return {**config, "data": {**config.get("data", {}), "path": space.base.get("data", {}).get("path")}}


def _threads_here(stored: int | None, share: int) -> int | None:
    """The threads a stored trial resumes with: its own (CPU float sums depend on them: an exact resume needs
    the same), but never more than this rank's share of the cores. A job of more ranks than the one that
    started it would run it oversubscribed (a sweep measured 70x slower epochs on 2 cores)."""
    if not stored or not share or stored <= share:
        return stored
    print(f"a stopped trial that ran on {stored} threads resumes on {share}, this rank's share of the cores: its "
          "CPU float sums may differ from an uninterrupted run's in the last bits", file=sys.stderr, flush=True)
    return share


def _trainer(config, group: TrialGroup | None, checkpoint: Path | None, resume: bool,  # noqa: ANN001
             save: bool) -> Trainer:
    """The trial's Trainer, resumed from ``checkpoint`` when asked and possible."""
    if checkpoint is not None and resume and checkpoint.exists():
        try:
            return Trainer(config, log=None, data=_data_for(config), group=group, checkpoint=checkpoint,
                           resume=True, save=save)
        except CheckpointError as exc:
            print(f"{exc}: the trial restarts from scratch", file=sys.stderr, flush=True)
            if save:
                checkpoint.unlink(missing_ok=True)
    elif checkpoint is not None and resume:
        print(f"{checkpoint}: no checkpoint; the trial restarts from scratch", file=sys.stderr, flush=True)
    # the checkpoint path on every rank of a group (only the first writes): each rank's random state goes in it
    return Trainer(config, log=None, data=_data_for(config), group=group, checkpoint=checkpoint, save=save)


def _replay(trainer: Trainer, on_epoch: Callable | None) -> int | None:
    """Report the epochs a resumed trainer restored (the reporter stores those the dead job had not, and
    its pruner judges them: a job can die between a checkpoint and the report of its epoch; and all of
    them when they are another run's than the stored epochs). The epoch the pruner stopped the trial at,
    if it did at one of them."""
    for record in list(trainer.history) if on_epoch is not None else ():
        if not on_epoch(record) and record.epoch < trainer.config.train.epochs:
            return record.epoch
    return None


def _as_of(result: TrainResult, epoch: int) -> TrainResult:
    """``result`` as it was at the end of ``epoch``: a resumed trial pruned at an epoch its checkpoint restored
    had trained past it. Its ranks are those of the last OIALR event before then (fp16's count of skipped
    steps stays the whole run's)."""
    record = result.epochs[epoch - 1]
    updates = [u for u in result.oialr_updates if u["step"] < record.step]  # events before the epoch's last step
    last = updates[-1] if updates else None
    # the histories of checkpoints of earlier releases lack these two (NaN): the last event's, the run's
    compression = record.compression if math.isfinite(record.compression) else \
        last["compression"] if last else 1.0
    seconds = record.train_seconds if math.isfinite(record.train_seconds) else result.train_seconds
    return dataclasses.replace(
        result, val_loss=record.val_loss, top1=record.top1, top5=record.top5, train_seconds=seconds,
        steps=record.step, trainable_fraction=record.trainable_fraction, compression=compression,
        trainable_parameters=round(record.trainable_fraction * result.original_parameters),
        final_ranks=dict(last["ranks"]) if last else {}, epochs=result.epochs[:epoch], oialr_updates=updates,
        stopped_early=True)


def run_trial(space: SearchSpace, params: dict[str, Any], *, device: str = "auto", threads: int = 0,
              report: Report | None = None, group: TrialGroup | None = None, config: dict | None = None,
              checkpoint: Path | None = None, resume: bool = False, save: bool = True,
              should_stop: Callable[[], bool] | None = None, checkpoint_every: float | None = None) -> TrialOutcome:
    """Train the trial's config and return its outcome; never raises (but KeyboardInterrupt).

    ``report`` receives every epoch as it ends; when it answers False the trial stops there and is
    PRUNED with the metrics of its last epoch. ``group``: the ranks that train this trial together
    (every one of them calls this with the same params). ``config``: the trial's stored run config
    (a resumed trial; default: built from ``params``). ``checkpoint``: the trial's checkpoint file,
    written every epoch (and every ``checkpoint_every`` seconds) when ``save``; with ``resume`` the run
    continues from it — a missing or unreadable one restarts the trial from scratch, with a message.
    When ``should_stop()`` says so, the run is checkpointed at the next step boundary and the outcome
    is ``preempted``.
    """
    start = time.perf_counter()
    on_epoch = (lambda record: report(asdict(record))) if report is not None else None
    timeout, stop, deadline = space.trial_timeout, should_stop, math.inf
    if group is not None and timeout:  # no SIGALRM: every rank of the group must stop at the same step
        deadline = time.monotonic() + timeout  # the group's latest, once the trainer is built (below)
        stop = (lambda: time.monotonic() > deadline or (should_stop is not None and should_stop()))  # noqa: E731
        timeout = None
    try:
        with time_limit(timeout):
            data = _at_the_studys_data(stored_run_config(dict(config)), space) if config is not None else \
                space.trial_config(params, threads=threads)
            data["train"] = {**data["train"], "device": device,
                             "threads": _threads_here(data["train"].get("threads"), threads)}
            cfg = config_from_dict(data)
            trainer = _trainer(cfg, group, checkpoint, resume, save)
            if stop is not should_stop:
                # One deadline for the group (its ranks share a node, so a monotonic clock): the ranks stop
                # together when any asks, and then each tells a timeout from a preemption by the deadline; a
                # rank that started a moment later must not take the group's timeout for a preemption
                deadline = group_max(deadline, group, trainer.device)
            try:
                pruned_at = _replay(trainer, on_epoch)  # the dead job's epochs, as it would have reported them
                if pruned_at is None:
                    result = trainer.fit(on_epoch=on_epoch, should_stop=stop, checkpoint_every=checkpoint_every)
                else:
                    result = _as_of(trainer.result(), pruned_at)
            except Preempted:
                if time.monotonic() > deadline:
                    raise TrialTimeout(f"timeout: the trial ran longer than {space.trial_timeout:g}s") from None
                return TrialOutcome(RUNNING, epochs=[asdict(e) for e in trainer.history],
                                    seconds=time.perf_counter() - start, preempted=True)
        metrics = result.to_dict()
        epochs = metrics.pop("epochs")
        trajectory = metrics.pop("oialr_updates")
        state = PRUNED if metrics.pop("stopped_early") else COMPLETE
        final = (lambda: weights_payload(trainer)) if state == COMPLETE else None
        return TrialOutcome(state, metrics, epochs, trajectory, None, time.perf_counter() - start, final_weights=final)
    except (KeyboardInterrupt, SystemExit):
        raise
    except TrialTimeout as exc:
        return TrialOutcome(FAILED, error=str(exc), seconds=time.perf_counter() - start)
    except BaseException as exc:  # noqa: BLE001 - see the module docstring
        if while_interrupted(exc):  # Ctrl-C that a library turned into its own error: still Ctrl-C
            raise KeyboardInterrupt from exc
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return TrialOutcome(FAILED, error=f"{type(exc).__name__}: {exc}\n{''.join(tb[-4:])}",
                            seconds=time.perf_counter() - start, device_lost=device_lost(exc),
                            group_broken=group is not None and collective_failed(exc))
