"""The store's clock: one time for every job that writes to a database.

Liveness compares times written by different jobs, maybe on different nodes: a heartbeat that one
job writes is judged stale or not by another. On PostgreSQL that time is the server's (Optuna's RDB
heartbeats use it too): a store reads the server's clock, follows it on this host's monotonic clock
(which no NTP step or VM resume moves), and reads it again every ``refresh`` seconds, so a node whose
clock is minutes off, or jumps, neither looks dead to the others nor takes their live trials over.
SQLite has no server: its time is the writer's, as SQLite's own CURRENT_TIMESTAMP is, so nodes that
share a SQLite file need synchronized clocks (NTP); so do other server databases, whose time
functions give local times without a zone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

REFRESH_SECONDS = 60.0
SERVER_NOW = select(func.now())  # PostgreSQL: the server's time, with its zone


def host_now() -> datetime:
    """This host's UTC time, naive (how the schema stores times)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class DatabaseClock:
    """``now()``: the database's UTC time, naive. ``read_server``: a callable that returns the server's
    current time, aware (None: the host's clock is the database's, as on SQLite)."""

    def __init__(self, read_server: Callable[[], datetime] | None, *, refresh: float = REFRESH_SECONDS,
                 host: Callable[[], datetime] = host_now, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._read_server, self._refresh, self._host, self._monotonic = read_server, refresh, host, monotonic
        self._base: tuple[datetime, float] | None = None  # (the server's time, the monotonic time it was read at)

    def now(self) -> datetime:
        if self._read_server is None:
            return self._host()
        base = self._base
        if base is None or self._monotonic() - base[1] >= self._refresh:
            before = self._monotonic()
            server = self._read_server().astimezone(timezone.utc).replace(tzinfo=None)
            # the server read its clock between our two readings: take the middle
            base = self._base = (server, (before + self._monotonic()) / 2)
        return base[0] + timedelta(seconds=self._monotonic() - base[1])
