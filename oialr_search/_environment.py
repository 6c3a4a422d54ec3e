"""Settings read from environment variables. A value that cannot be used is an error naming the
variable, not silently the default: a typo in a job script would otherwise change nothing visible."""

from __future__ import annotations

import math
import os

from .exceptions import OIALRSearchError


class EnvironmentSettingError(OIALRSearchError):
    """An ``OIALR_SEARCH_*`` environment variable holds a value that cannot be used."""


SHORTEST, LONGEST = 0.1, 1e6  # seconds: shorter spins a thread, longer overflows a wait (about 11 days)


def seconds_from_env(name: str, default: float) -> float:
    """The number of seconds (from 0.1 to 10⁶) in environment variable ``name``; ``default`` when it is
    unset or empty. Raises :class:`EnvironmentSettingError` for anything else."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not SHORTEST <= value <= LONGEST:  # NaN fails too
        raise EnvironmentSettingError(f"{name}={raw!r}: expected a number of seconds from {SHORTEST:g} to "
                                      f"{LONGEST:.0f}, e.g. {name}={default:g}, or leave it unset")
    return value
