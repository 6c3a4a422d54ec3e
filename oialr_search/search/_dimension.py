"""One searched key of a space: its kind and range, and its encoding for Propulate, which knows only plain
float and int ranges (no log scale, buggy categoricals)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dimension:
    """One searched key. ``kind`` is float, int or categorical."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple = ()

    # Propulate only knows plain ranges (float, int) and buggy categoricals, with no log scale:
    # floats (and log-ints) are searched on [low, high] or [log10 low, log10 high] as floats,
    # categoricals as an int index.
    def propulate_limits(self) -> tuple[float, float] | tuple[int, int]:
        if self.kind == "categorical":
            return (0, len(self.choices) - 1)
        if self.kind == "int" and not self.log:
            return (int(self.low), int(self.high))
        lo, hi = (math.log10(self.low), math.log10(self.high)) if self.log else (self.low, self.high)
        return (float(lo), float(hi))

    def decode(self, raw: float | int) -> Any:
        """Map a backend value (propulate encoding) to the config value, clipped to the range."""
        if self.kind == "categorical":
            return self.choices[min(max(int(round(raw)), 0), len(self.choices) - 1)]
        value = _shortest_power(float(raw)) if self.log else raw
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.kind == "int" else float(value)

    def encode(self, value: Any) -> float | int:
        """Inverse of :meth:`decode` (to seed a population from stored trials)."""
        if self.kind == "categorical":
            return self.choices.index(value)
        if self.log:
            return math.log10(value)
        return int(value) if self.kind == "int" else float(value)


def _shortest_power(raw: float) -> float:
    """10 ** raw, as the shortest decimal whose log10 is ``raw``: 10 ** log10(0.05) is 0.049999999999999996,
    and a value the user wrote (the base config's, which seeds the first trial in this encoding) must come
    back as written. Other values keep every digit."""
    value = 10**raw
    if value == 0 or not math.isfinite(value):  # out of any range: clipped to it by decode
        return value
    for digits in range(1, 17):
        short = float(f"{value:.{digits}g}")
        if math.log10(short) == raw:
            return short
    return value
