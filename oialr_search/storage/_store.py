"""The store: every study and trial, through SQLAlchemy (SQLite by default, any URL works)."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..exceptions import OIALRSearchError
from ._schema import (
    COMPLETE,
    INTERRUPTED,
    RUNNING,
    SCHEMA_VERSION,
    STATES,
    Base,
    EpochRow,
    MetaRow,
    StudyRow,
    TrialRow,
)

DEFAULT_STORAGE = "sqlite:///oialr_search.db"
BUSY_TIMEOUT_MS = 60_000


class StorageError(OIALRSearchError):
    """The storage URL is invalid or the database cannot be opened."""


class StudyNotFound(OIALRSearchError):
    """No study of that name in the storage."""


def default_storage() -> str:
    return os.environ.get("OIALR_SEARCH_STORAGE") or DEFAULT_STORAGE


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True)
class Study:
    id: int
    name: str
    space: dict
    space_path: str
    metric: str
    direction: str
    backend: str
    seed: int
    budget: int
    created: datetime

    @property
    def minimize(self) -> bool:
        return self.direction == "minimize"


@dataclass(frozen=True)
class Trial:
    id: int
    number: int
    state: str
    rank: int
    island: int | None
    device: str
    params: dict
    value: float | None
    metrics: dict | None
    config: dict | None
    rank_trajectory: list | None
    error: str | None
    started: datetime
    finished: datetime | None
    duration: float | None


def _study(row: StudyRow) -> Study:
    return Study(row.id, row.name, row.space, row.space_path, row.metric, row.direction, row.backend, row.seed,
                 row.budget, row.created)


def _trial(row: TrialRow) -> Trial:
    return Trial(row.id, row.number, row.state, row.rank, row.island, row.device, row.params, row.value, row.metrics,
                 row.config, row.rank_trajectory, row.error, row.started, row.finished, row.duration)


def _begin_immediate(dbapi_conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, retried with sub-millisecond jittered sleeps while another writer holds the lock.

    SQLite's own busy handler backs off to 10–100 ms sleeps although our write transactions hold the
    lock for 1–2 ms; with 8 ranks that made every trial wait tens of milliseconds. With BEGIN
    IMMEDIATE only the BEGIN can wait, so retrying it here is all that is needed.
    """
    dbapi_conn.execute("PRAGMA busy_timeout=0")
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.0002
    try:
        while True:
            try:
                dbapi_conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 1.5, 0.002)
    finally:
        dbapi_conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _sqlite_engine(url: str) -> Engine:
    """SQLite with WAL, a busy timeout and BEGIN IMMEDIATE for writes, so concurrent ranks queue
    for the lock instead of failing with "database is locked" on a read→write upgrade."""
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        _begin_immediate(conn.connection.driver_connection)

    return engine


class Store:
    """Access to one database. Every method runs in its own short transaction, which is rolled
    back and re-raised with context on error, so a crash never leaves a half-written trial."""

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = url or default_storage()
        try:
            parsed = make_url(self.url)
        except ArgumentError:
            raise StorageError(f"--storage {self.url!r}: not a database URL (e.g. sqlite:///search.db)") from None
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            db = Path(parsed.database)
            if not create and not db.exists():
                raise StorageError(f"--storage {self.url}: no such database file")
            if not db.parent.exists():
                raise StorageError(f"--storage {self.url}: folder {db.parent} does not exist")
        try:
            self.engine = _sqlite_engine(self.url) if parsed.get_backend_name() == "sqlite" else \
                create_engine(self.url, pool_pre_ping=True)
            self._sessions = sessionmaker(self.engine, expire_on_commit=False)
            if create:
                Base.metadata.create_all(self.engine)
                with self.session() as s:
                    if s.get(MetaRow, "schema_version") is None:
                        s.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
        except IntegrityError:
            pass  # another rank wrote the version row first
        except (OperationalError, ImportError) as exc:
            raise StorageError(f"--storage {self.url}: cannot open ({exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0]})") from None

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            raise RuntimeError(f"storage {self.url}: transaction rolled back: {exc}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- studies -----------------------------------------------------------------------------------
    def create_study(self, *, name: str, space: dict, space_path: str, metric: str, direction: str, backend: str,
                     seed: int, budget: int) -> Study:
        """Create the study, or return the existing one of that name (a resume)."""
        try:
            with self.session() as s:
                row = s.scalar(select(StudyRow).where(StudyRow.name == name))
                if row is None:
                    row = StudyRow(name=name, space=space, space_path=space_path, metric=metric, direction=direction,
                                   backend=backend, seed=seed, budget=budget, created=_now())
                    s.add(row)
                    s.flush()
                return _study(row)
        except RuntimeError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # created concurrently: load it
                return self.get_study(name)
            raise

    def update_study(self, name: str, **fields: Any) -> None:
        with self.session() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            for key, value in fields.items():
                setattr(row, key, value)

    def find_study(self, name: str) -> Study | None:
        with self.session() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            return _study(row) if row is not None else None

    def get_study(self, name: str) -> Study:
        with self.session() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if row is None:
                names = s.scalars(select(StudyRow.name).order_by(StudyRow.name)).all()
                known = f"; studies here: {', '.join(names)}" if names else "; this storage has no studies"
                raise StudyNotFound(f"no study named {name!r} in {self.url}{known}")
            return _study(row)

    def studies(self) -> list[tuple[Study, dict[str, int]]]:
        """Every study with its trial counts per state."""
        with self.session() as s:
            rows = s.scalars(select(StudyRow).order_by(StudyRow.created)).all()
            counts = s.execute(select(TrialRow.study_id, TrialRow.state, func.count()).group_by(
                TrialRow.study_id, TrialRow.state)).all()
        per: dict[int, dict[str, int]] = {}
        for study_id, state, n in counts:
            per.setdefault(study_id, {})[state] = n
        return [(_study(r), per.get(r.id, {})) for r in rows]

    # -- trials ------------------------------------------------------------------------------------
    def start_trial(self, study: Study, *, params: dict, rank: int, island: int | None, device: str,
                    config: dict | None = None, limit: int | None = None) -> Trial | None:
        """Record a RUNNING trial with the next free number (safe with concurrent writers).

        With ``limit``, returns None instead once the study holds that many trials that are not
        INTERRUPTED (the check and the insert are one transaction).
        """
        for _ in range(20):
            try:
                with self.session() as s:
                    if limit is not None:
                        taken = s.scalar(select(func.count()).where(TrialRow.study_id == study.id,
                                                                    TrialRow.state != INTERRUPTED))
                        if taken >= limit:
                            return None
                    last = s.scalar(select(func.coalesce(func.max(TrialRow.number), -1))
                                    .where(TrialRow.study_id == study.id))
                    number = last + 1
                    row = TrialRow(study_id=study.id, number=number, state=RUNNING, rank=rank, island=island,
                                   device=device, params=params, config=config, started=_now())
                    s.add(row)
                    s.flush()
                    return _trial(row)
            except RuntimeError as exc:  # a concurrent writer took the number (non-SQLite servers)
                if not isinstance(exc.__cause__, IntegrityError):
                    raise
        raise RuntimeError(f"storage {self.url}: could not allocate a trial number")

    def finish_trial(self, trial_id: int, *, state: str, value: float | None = None, metrics: dict | None = None,
                     epochs: list[dict] | None = None, rank_trajectory: list | None = None,
                     error: str | None = None) -> Trial:
        assert state in STATES and state != RUNNING
        with self.session() as s:
            row = s.get(TrialRow, trial_id)
            row.state, row.value, row.metrics, row.error = state, value, metrics, error
            row.rank_trajectory = rank_trajectory
            row.finished = _now()
            row.duration = (row.finished - row.started).total_seconds()
            for e in epochs or []:
                s.add(EpochRow(trial_id=trial_id, **{k: e[k] for k in (
                    "epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr", "trainable_fraction",
                    "seconds")}))
            s.flush()
            return _trial(row)

    def mark_interrupted(self, study: Study) -> int:
        """Mark the trials left RUNNING by a job that died; returns how many."""
        with self.session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.state == RUNNING)).all()
            for row in rows:
                row.state, row.finished = INTERRUPTED, _now()
                row.error = "interrupted: the job stopped while this trial was running"
            return len(rows)

    def trials(self, study: Study, *, states: tuple[str, ...] | None = None, after_id: int = 0) -> list[Trial]:
        with self.session() as s:
            q = select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.id > after_id)
            if states:
                q = q.where(TrialRow.state.in_(states))
            return [_trial(r) for r in s.scalars(q.order_by(TrialRow.number)).all()]

    def epochs(self, trial_id: int) -> list[dict]:
        with self.session() as s:
            rows = s.scalars(select(EpochRow).where(EpochRow.trial_id == trial_id).order_by(EpochRow.epoch)).all()
            return [{k: getattr(r, k) for k in ("epoch", "step", "train_loss", "val_loss", "top1", "top5", "lr",
                                                "trainable_fraction", "seconds")} for r in rows]

    def best_trial(self, study: Study) -> Trial | None:
        order = TrialRow.value.asc() if study.minimize else TrialRow.value.desc()
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.state == COMPLETE,
                                                  TrialRow.value.is_not(None)).order_by(order, TrialRow.number)
                           .limit(1))
            return _trial(row) if row is not None else None

    def get_trial(self, study: Study, number: int) -> Trial:
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.number == number))
            if row is None:
                raise OIALRSearchError(f"study {study.name!r} has no trial {number}")
            return _trial(row)

    def count(self, study: Study, states: tuple[str, ...]) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).where(TrialRow.study_id == study.id, TrialRow.state.in_(states)))
