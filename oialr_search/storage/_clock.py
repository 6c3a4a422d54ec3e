"""The store's clock: one time for every job that writes to a database.

Liveness compares times written by different jobs, maybe on different nodes: a heartbeat that one
job writes is judged stale or not by another. On a database server that time is the server's
(Optuna's RDB heartbeats use it too): a store reads the server's clock once, follows it as an offset
from its host's clock, and reads it again every ``refresh`` seconds, so a node whose clock is minutes
off neither looks dead to the others nor takes their live trials over. SQLite has no server: its time
is the writer's, as SQLite's own CURRENT_TIMESTAMP is, so nodes that share a SQLite file need
synchronized clocks (NTP).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

REFRESH_SECONDS = 60.0
SERVER_NOW = select(func.now())  # the server's time, with its zone on PostgreSQL


def host_now() -> datetime:
    """This host's UTC time, naive (how the schema stores times)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class DatabaseClock:
    """``now()``: the database's UTC time (naive). ``read_server``: a callable that returns the server's
    current time (None on SQLite: the host's clock is the database's)."""

    def __init__(self, read_server: Callable[[], datetime] | None, *, refresh: float = REFRESH_SECONDS,
                 host: Callable[[], datetime] = host_now) -> None:
        self._read_server, self._refresh, self._host = read_server, refresh, host
        self._offset = timedelta(0)
        self._next = 0.0  # monotonic time of the next reading of the server's clock

    def now(self) -> datetime:
        if self._read_server is not None and time.monotonic() >= self._next:
            before = self._host()
            server = _utc_naive(self._read_server())
            after = self._host()
            # the server read its clock between our two readings: take the middle
            self._offset = server - (before + (after - before) / 2)
            self._next = time.monotonic() + self._refresh
        return self._host() + self._offset


def _utc_naive(value: datetime) -> datetime:
    """An aware time in UTC, naive; a naive one (a server that gives its time without a zone) as it is:
    every store of the database reads the same clock, so liveness stays consistent either way."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo is not None else value
