"""Plain data behind the figures of one run: its per-epoch curves and its OIALR rank trajectory.

Built from records only (epoch dicts, ``UpdateRecord.to_dict()`` dicts), never from a store, so the same
figures draw a stored trial and a ``train`` run's result alike, and tests compare these values with what
was stored instead of comparing pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def _number(value: object) -> float | None:
    """A finite float, or None for missing, NaN (stored as null) and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Curve:
    """Per-epoch values of one run, in epoch order (None where a value is missing or was not finite)."""

    label: str
    state: str  # COMPLETE, PRUNED, FAILED, RUNNING, ... (a ``train`` run is COMPLETE)
    epochs: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # optimizer steps done at each epoch's end
    val_loss: list[float | None] = field(default_factory=list)
    top1: list[float | None] = field(default_factory=list)
    lr: list[float | None] = field(default_factory=list)
    trainable_fraction: list[float | None] = field(default_factory=list)
    number: int | None = None  # the trial number (None for a ``train`` run)


def curve_from_epochs(label: str, state: str, epochs: Sequence[Mapping], *, number: int | None = None) -> Curve:
    """A :class:`Curve` from epoch records (``Store.epochs`` dicts or a ``TrainResult``'s epochs as dicts)."""
    rows = sorted(epochs, key=lambda e: e["epoch"])
    return Curve(label, state, [int(e["epoch"]) for e in rows], [int(e.get("step") or 0) for e in rows],
                 [_number(e.get("val_loss")) for e in rows], [_number(e.get("top1")) for e in rows],
                 [_number(e.get("lr")) for e in rows], [_number(e.get("trainable_fraction")) for e in rows], number)


@dataclass(frozen=True)
class Trajectory:
    """The OIALR events of one run: the switch to low rank (update -1) and every basis update.

    ``ranks[i][k]`` is layer ``layers[i]``'s rank after event ``k`` (None where the record lacks it).
    ``mean_alignment`` is None when the records predate the alignment field.
    """

    steps: list[int]
    updates: list[int]
    trainable_fraction: list[float | None]
    mean_stability: list[float | None]  # the paper's eq. 4 (normalized by the old rank); None at the switch
    mean_alignment: list[float | None] | None  # kept directions' alignment (normalized by the new rank)
    layers: list[str]
    ranks: list[list[int | None]]

    def __len__(self) -> int:
        return len(self.steps)


def trajectory_from_records(records: Sequence[Mapping] | None) -> Trajectory:
    """A :class:`Trajectory` from ``UpdateRecord.to_dict()`` dicts (a trial's ``rank_trajectory``)."""
    rows = sorted(records or (), key=lambda r: (r["step"], r["update"]))
    layers: list[str] = []
    for r in rows:  # model order: the order the layers first appear in
        layers += [name for name in (r.get("ranks") or {}) if name not in layers]
    has_alignment = any("mean_alignment" in r or "alignment" in r for r in rows)
    return Trajectory(
        steps=[int(r["step"]) for r in rows],
        updates=[int(r["update"]) for r in rows],
        trainable_fraction=[_number(r.get("trainable_fraction")) for r in rows],
        mean_stability=[_number(r.get("mean_stability")) for r in rows],
        mean_alignment=[_number(r.get("mean_alignment")) for r in rows] if has_alignment else None,
        layers=layers,
        ranks=[[(r.get("ranks") or {}).get(name) for r in rows] for name in layers],
    )


@dataclass(frozen=True)
class RunData:
    """Everything the OIALR figures draw for one run (a trial or a ``train`` run)."""

    label: str  # "trial 7", or the config's name
    curve: Curve
    trajectory: Trajectory


def run_data(label: str, state: str, epochs: Sequence[Mapping], records: Sequence[Mapping] | None, *,
             number: int | None = None) -> RunData:
    """:class:`RunData` from a run's epoch records and OIALR update records."""
    return RunData(label, curve_from_epochs(label, state, epochs, number=number), trajectory_from_records(records))


def trainable_series(run: RunData) -> tuple[list[int], list[float]]:
    """(steps, trainable fraction) as a step function over the whole run: 1 from step 0 until the switch,
    then the value after each OIALR event, held until the run's last step."""
    steps, values = [0], [1.0]
    for step, tf in zip(run.trajectory.steps, run.trajectory.trainable_fraction):
        if tf is not None:
            steps.append(step)
            values.append(tf)
    last = max(run.curve.steps, default=0)
    if last > steps[-1]:
        steps.append(last)
        values.append(values[-1])
    return steps, values


def stability_series(run: RunData) -> tuple[list[int], list[float], list[int], list[float]]:
    """(steps, mean Stability, steps, mean alignment) at the basis updates that have them (the switch
    has none); the alignment lists are empty for trajectories recorded before it existed."""
    t = run.trajectory
    stab = [(s, v) for s, v in zip(t.steps, t.mean_stability) if v is not None]
    align = [(s, v) for s, v in zip(t.steps, t.mean_alignment or ()) if v is not None]
    return [s for s, _ in stab], [v for _, v in stab], [s for s, _ in align], [v for _, v in align]
