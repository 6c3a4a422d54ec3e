"""The whole study as the data of the Propulate backend's surrogate (``_surrogate``).

An island's population holds its own trials and the migrants it received: with two or more islands a
model fitted to it sees part of the study only (on 4 ranks, each island started from its own 8-point
design and bred 8 of the 24 trials, from half the data). :class:`StudyPoints` gives the model every
finished trial instead (every island, rank and earlier job; read as they finish, see ``_finished``),
each with the working loss Propulate ranks it by (``_scalarization``; a PRUNED trial by its projection,
``_projection``), and the trials running now, which the model takes as placeholders so that parallel
proposals spread out. Breeding stays the island's: only the choice among its children sees the study.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ..storage import COMPLETE, PRUNED, Store, Study, Trial
from ._finished import FinishedTrials
from ._objectives import minimize_sense
from ._projection import ranked_as
from ._scalarization import nsga_scores, provisional
from ._space import SearchSpace

Encode = Callable[[dict], dict]  # a trial's params -> its traits (raises KeyError/ValueError for another space)


class StudyPoints:
    """``points()``: (traits and working loss of every finished trial with finite values, the running
    trials' traits). ``keep``: only the order of the best ``keep`` matters (the model fits those)."""

    def __init__(self, *, store: Store, study: Study, space: SearchSpace, encode: Encode, keep: int) -> None:
        self.store, self.study, self.space, self.encode, self.keep = store, study, space, encode, keep
        self.reader = FinishedTrials(store, study)
        self.known: dict[int, tuple[Mapping, tuple[float, ...], str, bool | None]] = {}  # id -> traits, ranked as
        self.unprojected: dict[int, Trial] = {}  # PRUNED with nothing to project with yet: tried again later
        self.backlog: dict[int, Trial] = {}  # read but not added yet (a storage error while adding: next call)
        self._points: list[tuple[Mapping, float]] = []  # the last scores: recomputed when a trial was added

    def points(self) -> tuple[list[tuple[Mapping, float]], list[Mapping]]:
        finished, running = self.reader.poll()
        self.backlog.update((t.id, t) for t in finished)
        if self.unprojected and any(t.state == COMPLETE for t in finished):
            self.backlog.update(self.unprojected)
        if self.backlog:
            cache: dict = {}  # stop epoch -> the projection's offsets, read once per call
            for t in list(self.backlog.values()):
                self._add(t, cache)
                del self.backlog[t.id]
            self._points = self._scored()
        return self._points, [traits for t in running if (traits := self._traits(t)) is not None]

    def _scored(self) -> list[tuple[Mapping, float]]:
        known = list(self.known.values())
        if len(self.space.objectives) == 1:
            scores = [provisional(values, state, feasible) for _, values, state, feasible in known]
        else:
            scores = nsga_scores([k[1] for k in known], [k[2] for k in known], feasible=[k[3] for k in known],
                                 keep=self.keep)
        return [(k[0], s) for k, s in zip(known, scores, strict=True) if math.isfinite(s)]

    def _traits(self, t: Trial) -> Mapping | None:
        try:
            traits = self.encode(t.params)
        except (KeyError, ValueError, TypeError):
            return None  # a trial of an older version of the space
        # a NaN param (rows written before params were cleaned) would make every fit fail
        return traits if all(math.isfinite(float(v)) for v in traits.values()) else None

    def _add(self, t: Trial, cache: dict) -> None:
        self.unprojected.pop(t.id, None)
        objectives = self.space.objectives
        if t.state not in (COMPLETE, PRUNED) or t.values is None or len(t.values) != len(objectives) \
                or not all(v is not None and math.isfinite(v) for v in t.values):
            return  # failed or diverged: no working loss (+inf on an island too)
        traits = self._traits(t)
        if traits is None:
            return
        values, state, feasible = ranked_as(self.store, self.study, self.space, minimize_sense(t.values, objectives),
                                            t.state, t.feasible, t.last_epoch, cache=cache)
        if state == PRUNED:
            self.unprojected[t.id] = t
        self.known[t.id] = (traits, tuple(values), state, feasible)
