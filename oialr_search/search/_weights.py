"""The trained weights a study keeps: the front's (``keep_weights: front``), the best's, or none.

Kept weights live in the study's work folder, ``<work folder>/weights/trial_<number>.pt`` (a weights
file, see ``training/_weights.py``); ``oialr-search export --weights`` copies them out.

The keep set, computed from the store's feasible COMPLETE trials with finite values:

- ``front``: one objective, the best trial; several, the non-dominated trials plus the best on each
  objective;
- ``best``: the best on each objective (one objective: the best);
- ``none``: nothing.
"Best" on objective j breaks ties by the other objectives in order, then by the lower trial number, as
``pick`` does: the best on an objective is then always on the front, and ``export`` without ``--trial``
(or with a ``--pick`` on objectives) finds the weights it chose.

Several ranks and jobs finish trials at once, with no lock between them; each keeps the folder right
by itself, in two steps of :class:`KeptWeights`:

1. :meth:`~KeptWeights.write`, *before* the trial's outcome is stored: the keep set is computed over
   the stored trials plus this one; if this one is in it, its file is written (atomically). Written
   first, a kept trial never exists COMPLETE without its file (a crash in between leaves the trial
   RUNNING, and whoever resumes it writes the file again).
2. :meth:`~KeptWeights.prune`, once the outcome is stored: the keep set is computed again, from the
   store alone, and a file is deleted only when its trial was in that snapshot and is not kept (or is
   this rank's own trial and not kept: it failed to store, or was overtaken meanwhile).

Why that is safe: a stored COMPLETE trial never changes, so a trial that is out of the keep set of
some snapshot that holds it stays out forever (whatever dominated it, or beat it on an objective,
stays stored). A deletion therefore never removes the file of a trial that is kept now or later.
Files of trials the snapshot did not hold (finishing on another rank right now) are left to their own
rank: that rank prunes after its file is written, so it sees every trial stored before its write and
deletes its own file if one of them pushed it off; a trial stored after the write deletes the file in
its own prune. So when no rank is between its steps, the folder holds exactly the keep set.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..storage import COMPLETE, Store, Study, Trial
from ..training import save_weights
from ._front import _points
from ._objective import while_interrupted
from ._objectives import Objective, Scored, objectives_from
from ._pareto import non_dominated

STALE_WRITE_SECONDS = 3600.0  # a temporary weights file this old belongs to no write in progress


def weights_folder(work: Path) -> Path:
    """Where a study whose work folder is ``work`` keeps its trials' weights."""
    return Path(work) / "weights"


def weights_file(work: Path, number: int) -> Path:
    """The kept weights of trial ``number`` (which may not exist)."""
    return weights_folder(work) / f"trial_{number}.pt"


def keep_set(points: Sequence[tuple[int, Sequence[float]]], mode: str) -> set[int]:
    """The trial numbers to keep among ``points``, (number, objective values in minimize sense) of the
    feasible COMPLETE trials with finite values; ``mode`` is front, best or none."""
    if mode == "none" or not points:
        return set()
    objectives = len(points[0][1])
    def best_on(j: int) -> int:  # ties: the other objectives in order, then the number (as pick)
        return min(points, key=lambda p: (p[1][j], *p[1][:j], *p[1][j + 1:], p[0]))[0]

    keep = {best_on(j) for j in range(objectives)}
    if mode == "front" and objectives > 1:
        keep.update(points[i][0] for i in non_dominated([p[1] for p in points]))
    return keep


class KeptWeights:
    """Keeps the weights of a study's kept trials in ``folder`` up to date (see the module docstring).

    Only a trial's leader rank calls it (a group's followers never do). Errors never end the search: the
    trial's outcome is what matters, so a failed write or deletion is reported on stderr and passed over.
    """

    def __init__(self, store: Store, study: Study, mode: str, folder: Path, rank: int) -> None:
        self.store, self.study, self.mode, self.folder, self.rank = store, study, mode, Path(folder), rank
        self.objectives: tuple[Objective, ...] = objectives_from(study.objectives)

    def path(self, number: int) -> Path:
        return self.folder / f"trial_{number}.pt"

    def _keep(self, extra: tuple[int, tuple[float, ...]] | None = None) -> tuple[set[int], set[int]]:
        """(kept numbers, numbers of the trials the snapshot holds) over the store's trials (and ``extra``)."""
        points = [(number, minimized) for number, _, minimized in _points(self.store, self.study)]
        if extra is not None:
            points = [p for p in points if p[0] != extra[0]] + [extra]
        return keep_set(points, self.mode), {p[0] for p in points}

    def write(self, trial: Trial, scored: Scored, final_weights: Callable[[], dict] | None,
              metrics: dict | None = None) -> None:
        """Before ``trial``'s outcome is stored: write its weights if it will be kept."""
        if self.mode == "none" or final_weights is None or scored.state != COMPLETE or scored.feasible is False:
            return
        minimized = scored.minimized(self.objectives)
        if minimized is None or not all(map(math.isfinite, minimized)):
            return
        try:
            if trial.number not in self._keep((trial.number, minimized))[0]:
                return
            scalars = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float, str, bool))}
            save_weights(self.path(trial.number), final_weights() | {"study": self.study.name,
                                                                     "trial": trial.number, "metrics": scalars})
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            if while_interrupted(exc):  # Ctrl-C inside torch.save: still Ctrl-C
                raise KeyboardInterrupt from exc
            self._warn(f"trial {trial.number}: keeping its weights failed ({type(exc).__name__}: {exc})")

    def prune(self, trial: Trial) -> None:
        """Once ``trial``'s outcome is stored: delete the files of trials that are no longer kept."""
        if not self.folder.is_dir():  # nothing was ever kept here: no query
            return
        try:
            keep, seen = self._keep()
            for path in self.folder.glob("trial_*.pt"):
                number = path.stem.removeprefix("trial_")
                if not number.isdigit() or int(number) in keep:
                    continue
                if int(number) in seen or int(number) == trial.number:
                    path.unlink(missing_ok=True)  # another rank may have deleted it already
            for tmp in self.folder.glob(".trial_*.tmp"):  # left by a process killed while writing
                with contextlib.suppress(OSError):
                    if time.time() - tmp.stat().st_mtime > STALE_WRITE_SECONDS:
                        tmp.unlink()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            if while_interrupted(exc):  # Ctrl-C inside torch.save: still Ctrl-C
                raise KeyboardInterrupt from exc
            self._warn(f"after trial {trial.number}: deleting weights no longer kept failed "
                       f"({type(exc).__name__}: {exc})")

    def _warn(self, message: str) -> None:
        print(f"[rank {self.rank}] {message}", file=sys.stderr, flush=True)
