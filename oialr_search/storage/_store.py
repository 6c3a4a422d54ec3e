"""The store: every study and trial, through SQLAlchemy (SQLite by default, any URL works)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..exceptions import OIALRSearchError
from . import _writes
from ._clock import SERVER_NOW, DatabaseClock
from ._engine import open_database
from ._errors import StudyNotFound
from ._records import Progress, Study, Trial, _study, _trial, _trials
from ._schema import (
    COMPLETE,
    INTERRUPTED,
    RUNNING,
    STATES,
    EpochRow,
    StudyRow,
    TrialRow,
)
from ._sqlite import _READ_ONLY, BUSY_TIMEOUT_MS, _sqlite_engine  # noqa: F401 - the last two re-exported
from ._writes import EPOCH_FIELDS, Transactions

DEFAULT_STORAGE = "sqlite:///oialr_search.db"


def default_storage() -> str:
    return os.environ.get("OIALR_SEARCH_STORAGE") or DEFAULT_STORAGE


class Store:
    """Access to one database. Every method runs in its own short transaction, which is rolled
    back and re-raised with context on error, so a crash never leaves a half-written trial.

    ``create``: make the database (and upgrade an older schema) where needed; without it a missing
    database or an outdated schema is an error that says what to run. ``read_only``: open SQLite
    read-only (queries on a copy nobody may write, and never a lock a writer could wait for).
    """

    def __init__(self, url: str | None = None, *, create: bool = True, read_only: bool = False) -> None:
        self.url = url or default_storage()
        self.engine, self._has_tables = open_database(self.url, create=create, read_only=read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(self.engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)
        self._tx = Transactions(self.engine, self.url)
        self._owned: dict[int, str] = {}  # trial id -> the token this store started or claimed it with
        postgres = self.engine.dialect.name == "postgresql"
        self._clock = DatabaseClock(self._server_time if postgres else None)  # see _clock

    def now(self) -> datetime:
        """The database's UTC time (naive, as stored): PostgreSQL's clock, the host's on SQLite (see _clock)."""
        return self._clock.now()

    def _server_time(self) -> datetime:
        try:
            with self.engine.connect() as conn:
                return conn.execute(SERVER_NOW).scalar_one()
        except SQLAlchemyError as exc:
            raise RuntimeError(f"storage {self.url}: reading the database server's clock failed: {exc}") from exc

    @contextlib.contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """A transaction: committed on success, rolled back and re-raised with context on error.
        ``write=False`` for queries: on SQLite they then run without taking the write lock."""
        session = (self._sessions if write else self._read_sessions)()
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
                     seed: int, budget: int, objectives: list[dict] | None = None,
                     constraints: dict | None = None) -> Study:
        """Create the study, or return the existing one of that name (a resume). ``objectives``
        defaults to the single (metric, direction); its first entry must be that pair."""
        objectives = objectives or [{"metric": metric, "direction": direction}]
        assert (objectives[0]["metric"], objectives[0]["direction"]) == (metric, direction)
        try:
            with self.session() as s:
                row = s.scalar(select(StudyRow).where(StudyRow.name == name))
                if row is None:
                    row = StudyRow(name=name, space=space, space_path=space_path, metric=metric, direction=direction,
                                   objectives=objectives, constraints=constraints or None, backend=backend,
                                   seed=seed, budget=budget, created=self.now())
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

    def update_study_space(self, name: str, update: Callable[[dict], dict]) -> dict:
        """Replace the study's stored space by ``update(the stored space)``, read and written in one locked
        transaction: a job that read the study earlier must not undo what another wrote meanwhile (two
        ``resume --set`` at once, one recording its --workdir). Returns the stored space."""
        with self.session() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name).with_for_update())
            row.space = update(dict(row.space))
            return row.space

    def start_job(self, study: Study) -> int:
        """Count a search job started on ``study``; returns how many were started before it (0 for the
        first). One write transaction: jobs starting at the same moment get different numbers."""
        with self.session() as s:
            s.execute(update(StudyRow).where(StudyRow.id == study.id).values(jobs=StudyRow.jobs + 1))
            return s.scalar(select(StudyRow.jobs).where(StudyRow.id == study.id)) - 1

    def find_study(self, name: str) -> Study | None:
        if not self._has_tables:
            return None
        with self.session(write=False) as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            return _study(row) if row is not None else None

    def get_study(self, name: str) -> Study:
        if not self._has_tables:
            raise StudyNotFound(f"no study named {name!r} in {self.url}; this storage has no studies")
        with self.session(write=False) as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if row is None:
                names = s.scalars(select(StudyRow.name).order_by(StudyRow.name)).all()
                known = f"; studies here: {', '.join(names)}" if names else "; this storage has no studies"
                raise StudyNotFound(f"no study named {name!r} in {self.url}{known}")
            return _study(row)

    def studies(self) -> list[tuple[Study, dict[str, int]]]:
        """Every study with its trial counts per state."""
        if not self._has_tables:
            return []
        with self.session(write=False) as s:
            rows = s.scalars(select(StudyRow).order_by(StudyRow.created)).all()
            counts = s.execute(select(TrialRow.study_id, TrialRow.state, func.count()).group_by(
                TrialRow.study_id, TrialRow.state)).all()
        per: dict[int, dict[str, int]] = {}
        for study_id, state, n in counts:
            per.setdefault(study_id, {})[state] = n
        return [(_study(r), per.get(r.id, {})) for r in rows]

    # -- trials ------------------------------------------------------------------------------------
    def start_trial(self, study: Study, *, params: dict, rank: int, island: int | None, device: str,
                    config: dict | None = None, limit: int | None = None, backend: str | None = None,
                    grace: float | None = None) -> Trial | None:
        """Record a RUNNING trial with the next free number (safe with concurrent writers).

        With ``limit``, returns None instead once the study holds that many trials that are not
        INTERRUPTED (the check and the insert are one transaction). ``backend``: what proposed it.
        ``grace``: the job's grace period, which sets the trial's deadline (None: none; see claim_dead).
        """
        owner = _writes.new_owner()
        for _ in range(20):
            try:
                with self._tx.write() as tx:  # started (the first heartbeat) once the lock is held, after the wait
                    started = self.now()
                    row = {"rank": rank, "island": island, "device": device, "params": params, "started": started,
                           "heartbeat": started, "deadline": _writes.deadline(started, grace), "owner": owner,
                           "backend": backend}
                    claimed = _writes.start_trial(tx, study_id=study.id, row=row, config=config, limit=limit)
                if claimed is None:
                    return None
                trial_id, number = claimed
                self._owned[trial_id] = owner
                return Trial(trial_id, number, RUNNING, rank, island, device, params, None, None, config, None,
                             None, started, None, None)
            except RuntimeError as exc:
                # Only a clash on the number is worth another try (the study's row lock makes it rare: see
                # _writes.start_trial); any other integrity error would fail the same way every time.
                if not _writes.number_taken(exc.__cause__):
                    raise
        raise RuntimeError(f"storage {self.url}: could not allocate a trial number")

    def report_epochs(self, trial_id: int, records: list[dict], *, rerun_from: int | None = None,
                      reached: int | None = None) -> None:
        """Store finished epochs of a running trial as they happen (so a killed trial keeps its curve).
        ``rerun_from``: the records are of a new run of the trial (it restarted from scratch), whose epochs
        from this one on replace the stored ones. ``reached``: the last epoch the trial had reached before
        this run (default: the last one stored): only epochs past it reset its count of crashed runs."""
        if not records and rerun_from is None:
            return
        with self._tx.write() as tx:
            _writes.report_epochs(tx, trial_id, records, self._owned.get(trial_id), rerun_from=rerun_from,
                                  reached=reached)

    def finish_trial(self, trial_id: int, *, state: str, value: float | None = None, values: list | None = None,
                     feasible: bool | None = None, metrics: dict | None = None, epochs: list[dict] | None = None,
                     rank_trajectory: list | None = None, error: str | None = None,
                     rerun_from: int | None = None) -> None:
        """Record the outcome. ``epochs`` may repeat epochs already reported: only later ones are added
        (``rerun_from``: see ``report_epochs``).
        One short transaction: it is on every rank's path after every trial."""
        assert state in STATES and state != RUNNING
        fields = {"state": state, "value": value, "objective_values": values, "feasible": feasible,
                  "metrics": metrics, "error": error}
        with self._tx.write() as tx:  # times are taken once the lock is held: they include the wait for it
            _writes.finish_trial(tx, trial_id, fields=fields, epochs=epochs, rank_trajectory=rank_trajectory,
                                 finished=self.now(), owner=self._owned.get(trial_id), rerun_from=rerun_from)
        self._owned.pop(trial_id, None)

    # -- liveness: heartbeats and resuming the trials of dead jobs ----------------------------------------
    def beat(self, trial_id: int, *, grace: float | None) -> bool:
        """Refresh a running trial's heartbeat, and its deadline to ``grace`` seconds from now (None: no deadline,
        as ``start_trial``'s; one short write, the heartbeat thread's). False when this store no longer holds the
        trial (another job took it over)."""
        owner = self._owned.get(trial_id)
        if owner is None:
            return False
        with self._tx.write() as tx:
            return _writes.beat(tx, trial_id, owner, self.now(), grace)

    def release(self, trial_id: int) -> None:
        """Leave a trial RUNNING but dead at once (its job is stopping and checkpointed it): the next
        job of the study resumes it without waiting for the grace period."""
        owner = self._owned.pop(trial_id, None)
        if owner is None:
            return
        with self._tx.write() as tx:
            _writes.release(tx, trial_id, owner)

    def claim_dead(self, study: Study, *, grace: float, rank: int, device: str) -> Trial | None:
        """Atomically take over the lowest-numbered dead RUNNING trial: its deadline has passed, or it has none
        and its heartbeat is NULL or older than ``grace`` seconds (this job's grace period). Its heartbeat
        becomes now, its deadline ``grace`` seconds from now, its rank and device this rank's. None if there is
        none. Two jobs never claim the same trial: the check and the update are one write transaction."""
        with self._tx.read() as tx:  # every rank asks before every trial; almost always there is none
            if not _writes.any_dead(tx, study_id=study.id, now=self.now(), grace=grace):
                return None
        owner = _writes.new_owner()
        with self._tx.write() as tx:
            trial_id = _writes.claim_dead(tx, study_id=study.id, now=self.now(), grace=grace, rank=rank,
                                          device=device, owner=owner)
        if trial_id is None:
            return None
        self._owned[trial_id] = owner
        with self.session(write=False) as s:
            row = s.get(TrialRow, trial_id)
            return _trials(s, [row], full=True)[0]

    def dead_trials(self, study: Study, *, grace: float) -> int:
        """How many RUNNING trials are dead (their jobs died: the next job resumes them); ``grace``: the looking
        job's, for trials without a deadline (see claim_dead)."""
        now = self.now()
        with self.session(write=False) as s:
            return s.scalar(_writes.COUNT_DEAD, {"sid": study.id, "now": now,
                                                 "cutoff": now - timedelta(seconds=grace)}) or 0

    def heartbeats(self, study: Study) -> dict[int, tuple[int, datetime | None, datetime | None]]:
        """The RUNNING trials by id: (number, last heartbeat, the deadline that counts or None) (one read: a job
        that drains watches them; see ``is_dead``)."""
        with self.session(write=False) as s:
            rows = s.execute(select(TrialRow.id, TrialRow.number, TrialRow.heartbeat, _writes.DEADLINE).where(
                TrialRow.study_id == study.id, TrialRow.state == RUNNING)).all()
        return {trial_id: (number, beat, deadline) for trial_id, number, beat, deadline in rows}

    def mark_interrupted(self, study: Study) -> int:
        """Mark the trials left RUNNING by a job that died; returns how many."""
        with self.session() as s:
            result = s.execute(update(TrialRow).where(TrialRow.study_id == study.id, TrialRow.state == RUNNING)
                               .values(state=INTERRUPTED, finished=self.now(),
                                       error="interrupted: the job stopped while this trial was running"))
            return result.rowcount

    def trials(self, study: Study, *, states: tuple[str, ...] | None = None, after_id: int = 0,
               full: bool = False) -> list[Trial]:
        """The study's trials by number; ``full`` also loads each config and rank trajectory."""
        with self.session(write=False) as s:
            q = select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.id > after_id)
            if states:
                q = q.where(TrialRow.state.in_(states))
            return _trials(s, s.scalars(q.order_by(TrialRow.number)).all(), full=full)

    def finished_since(self, study: Study, watermark: int, *, seen: Collection[int] = ()) -> Progress:
        """Trials that are no longer RUNNING, with id >= ``watermark``, the trials still RUNNING, and the
        next watermark.

        The watermark is the lowest id still RUNNING (or one past the highest id), so a trial that
        finishes after a later-numbered one is still returned by the next call; the caller skips
        ids it has seen. Every RUNNING trial has an id at or above it, so ``running`` is all of them.
        ``seen``: ids the caller has had already, finished: only their states are read, not their rows
        (while an old trial runs, the watermark stays at it and most rows above it are ones the caller had).
        """
        with self.session(write=False) as s:
            states = s.execute(select(TrialRow.id, TrialRow.state).where(
                TrialRow.study_id == study.id, TrialRow.id >= watermark).order_by(TrialRow.id)).all()
            wanted = [i for i, state in states if state == RUNNING or i not in seen]
            rows = []
            for k in range(0, len(wanted), 10_000):  # below the bound-parameter limits (SQLite ≥ 3.32: 32766)
                rows += s.scalars(select(TrialRow).where(TrialRow.id.in_(wanted[k:k + 10_000]))).all()
        rows.sort(key=lambda r: r.id)
        running = [i for i, state in states if state == RUNNING]
        nxt = running[0] if running else (states[-1][0] + 1 if states else watermark)
        # by each row's own state: on PostgreSQL a trial may have finished between the two reads (it is then
        # above the watermark, and the next call returns it again; the caller skips it)
        return Progress([_trial(r) for r in rows if r.state != RUNNING],
                        [_trial(r) for r in rows if r.state == RUNNING], nxt)

    def epochs(self, trial_id: int) -> list[dict]:
        with self.session(write=False) as s:
            rows = s.scalars(select(EpochRow).where(EpochRow.trial_id == trial_id).order_by(EpochRow.epoch)).all()
            return [{k: getattr(r, k) for k in EPOCH_FIELDS} for r in rows]

    def study_epochs(self, study: Study) -> dict[int, list[dict]]:
        """Every reported epoch of the study's trials, by trial id, in one query (plots, reports)."""
        with self.session(write=False) as s:
            rows = s.scalars(select(EpochRow).join(TrialRow, TrialRow.id == EpochRow.trial_id)
                             .where(TrialRow.study_id == study.id).order_by(EpochRow.trial_id, EpochRow.epoch))
            out: dict[int, list[dict]] = {}
            for r in rows:
                out.setdefault(r.trial_id, []).append({k: getattr(r, k) for k in EPOCH_FIELDS})
            return out

    def epoch_values(self, study: Study, epoch: int, metrics: tuple[str, ...], *,
                     exclude_trial: int | None = None) -> list[tuple]:
        """The given metrics at ``epoch`` of every trial of the study that reached it (for pruners)."""
        columns = [getattr(EpochRow, m) for m in metrics]
        with self.session(write=False) as s:
            q = (select(*columns).join(TrialRow, TrialRow.id == EpochRow.trial_id)
                 .where(TrialRow.study_id == study.id, EpochRow.epoch == epoch))
            if exclude_trial is not None:
                q = q.where(EpochRow.trial_id != exclude_trial)
            return [tuple(r) for r in s.execute(q).all()]

    def completed_curves_at(self, study: Study, epoch: int, metrics: tuple[str, ...]) -> list[tuple[tuple, list]]:
        """(the metrics at ``epoch``, the stored objective values) of every COMPLETE trial of the study
        that reached ``epoch``: how trials went on from there (Propulate's estimate for pruned trials)."""
        columns = [getattr(EpochRow, m) for m in metrics]
        with self.session(write=False) as s:
            rows = s.execute(select(TrialRow.objective_values, TrialRow.value, *columns)
                             .join(EpochRow, TrialRow.id == EpochRow.trial_id)
                             .where(TrialRow.study_id == study.id, TrialRow.state == COMPLETE,
                                    EpochRow.epoch == epoch)).all()
        return [(tuple(r[2:]), r[0] if r[0] is not None else [r[1]]) for r in rows]

    def best_trial(self, study: Study, *, full: bool = True) -> Trial | None:
        """The feasible COMPLETE trial with the best first-objective value."""
        order = TrialRow.value.asc() if study.minimize else TrialRow.value.desc()
        with self.session(write=False) as s:
            q = (select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.state == COMPLETE,
                                        TrialRow.value.is_not(None), _feasible())
                 .order_by(order, TrialRow.number).limit(1))
            row = s.scalar(q)
            return _trials(s, [row], full=full)[0] if row is not None else None

    def objective_points(self, study: Study) -> list[tuple[int, tuple]]:
        """(number, raw objective values) of every feasible COMPLETE trial: all a Pareto query reads.

        The values are extracted by the database (JSON index → float), one column per objective, so
        a 10,000-trial study costs no JSON decoding in Python.
        """
        columns = [TrialRow.objective_values[j].as_float() for j in range(len(study.objectives))]
        columns[0] = func.coalesce(columns[0], TrialRow.value)  # a v1 trial has only its single value
        with self.session(write=False) as s:
            rows = s.connection().execute(
                select(TrialRow.number, *columns)
                .where(TrialRow.study_id == study.id, TrialRow.state == COMPLETE, _feasible())
                .order_by(TrialRow.number)).all()
        return [(r[0], tuple(r[1:])) for r in rows]

    def trials_numbered(self, study: Study, numbers: list[int]) -> list[Trial]:
        """The given trials (light: no config or trajectory), by number."""
        out: list[Trial] = []
        with self.session(write=False) as s:
            for k in range(0, len(numbers), 10_000):  # below the bound-parameter limits (SQLite ≥ 3.32: 32766)
                q = select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.number.in_(numbers[k:k + 10_000]))
                out += [_trial(r) for r in s.scalars(q).all()]
        return sorted(out, key=lambda t: t.number)

    def get_trial(self, study: Study, number: int, *, full: bool = True) -> Trial:
        with self.session(write=False) as s:
            q = select(TrialRow).where(TrialRow.study_id == study.id, TrialRow.number == number)
            row = s.scalar(q)
            if row is None:
                raise OIALRSearchError(f"study {study.name!r} has no trial {number}")
            return _trials(s, [row], full=full)[0]

    def counts(self, study: Study) -> dict[str, int]:
        """Trials per state (one GROUP BY query)."""
        with self.session(write=False) as s:
            rows = s.execute(select(TrialRow.state, func.count()).where(TrialRow.study_id == study.id)
                             .group_by(TrialRow.state)).all()
        return {state: n for state, n in rows}

    def backends(self, study: Study) -> dict[str, int]:
        """Trials per backend that proposed them (one GROUP BY query); trials of releases before v6 have none
        and are left out."""
        with self.session(write=False) as s:
            rows = s.execute(select(TrialRow.backend, func.count()).where(
                TrialRow.study_id == study.id, TrialRow.backend.is_not(None)).group_by(TrialRow.backend)).all()
        return {backend: n for backend, n in rows}

    def count(self, study: Study, states: tuple[str, ...]) -> int:
        counts = self.counts(study)
        return sum(counts.get(state, 0) for state in states)

    def time_span(self, study: Study) -> tuple[datetime | None, datetime | None, bool]:
        """(first start, last finish, any still running) of the study's trials."""
        with self.session(write=False) as s:
            first, last, running = s.execute(
                select(func.min(TrialRow.started), func.max(TrialRow.finished),
                       func.count().filter(TrialRow.state == RUNNING)).where(TrialRow.study_id == study.id)).one()
        return first, last, bool(running)


def _feasible():  # noqa: ANN202
    """Trials that met the study's constraints (NULL: none were checked, e.g. a v1 trial)."""
    return or_(TrialRow.feasible.is_(None), TrialRow.feasible.is_(True))
