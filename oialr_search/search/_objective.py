"""One trial: a config from the space, trained in-process; every failure is caught and described.

Nothing may escape from here: under Propulate an exception in one rank's loss function hangs every
other rank, and a NaN corrupts its selection.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..storage import COMPLETE, FAILED
from ..training import DataBundle, Trainer, config_from_dict, load_data
from ._space import SearchSpace

_DATA_CACHE: dict[tuple, DataBundle] = {}


class TrialTimeout(Exception):
    pass


@dataclass
class TrialOutcome:
    state: str
    value: float | None
    metrics: dict | None = None
    epochs: list[dict] = field(default_factory=list)
    trajectory: list[dict] | None = None
    error: str | None = None
    seconds: float = 0.0

    def loss(self, minimize: bool) -> float:
        """The value for a minimizer: failures (and NaN) map to +inf."""
        if self.state != COMPLETE or self.value is None or not math.isfinite(self.value):
            return math.inf
        return self.value if minimize else -self.value


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
    d = config.data
    key = (d.name, d.path, d.val_fraction, d.img_size, d.augment)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_data(d.name, path=d.path, val_fraction=d.val_fraction, img_size=d.img_size,
                                     augment=d.augment)
    return _DATA_CACHE[key]


def run_trial(space: SearchSpace, params: dict[str, Any], *, device: str = "auto", threads: int = 0) -> TrialOutcome:
    """Train the trial's config and return its outcome; never raises (but KeyboardInterrupt)."""
    start = time.perf_counter()
    try:
        with time_limit(space.trial_timeout):
            data = space.trial_config(params, threads=threads)
            data["train"]["device"] = device
            config = config_from_dict(data)
            result = Trainer(config, log=None, data=_data_for(config)).fit()
        metrics = result.to_dict()
        epochs = metrics.pop("epochs")
        trajectory = metrics.pop("oialr_updates")
        value = float(metrics[space.metric])
        if not math.isfinite(value):
            return TrialOutcome(FAILED, None, metrics, epochs, trajectory, f"objective {space.metric} is {value}",
                                time.perf_counter() - start)
        return TrialOutcome(COMPLETE, value, metrics, epochs, trajectory, None, time.perf_counter() - start)
    except KeyboardInterrupt:
        raise
    except TrialTimeout as exc:
        return TrialOutcome(FAILED, None, error=str(exc), seconds=time.perf_counter() - start)
    except BaseException as exc:  # noqa: BLE001 - see the module docstring
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return TrialOutcome(FAILED, None, error=f"{type(exc).__name__}: {exc}\n{''.join(tb[-4:])}",
                            seconds=time.perf_counter() - start)
