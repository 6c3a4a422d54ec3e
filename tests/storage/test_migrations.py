"""Schema migrations: a database made by the first release (v1) is upgraded in place, row for row."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from oialr_search.storage import SchemaOutdated, SchemaTooNew, Store
from oialr_search.storage._migrate import VERSION_TABLE, TrialsRunning, _config, prepare_schema, schema_version
from oialr_search.storage._schema import SCHEMA_VERSION, Base
from oialr_search.storage._store import _sqlite_engine


# -- the first release's tables, frozen here (never import them from the package: it moves on) -----------------
class V1(DeclarativeBase):
    pass


class V1Study(V1):
    __tablename__ = "oialr_studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    space: Mapped[dict] = mapped_column(JSON)
    space_path: Mapped[str] = mapped_column(Text, default="")
    metric: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(16))
    backend: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    budget: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime)


class V1Trial(V1):
    __tablename__ = "oialr_trials"
    __table_args__ = (UniqueConstraint("study_id", "number", name="uq_oialr_trial_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("oialr_studies.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    rank: Mapped[int] = mapped_column(Integer, default=0)
    island: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    params: Mapped[dict] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    config: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    rank_trajectory: Mapped[list | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started: Mapped[datetime] = mapped_column(DateTime)
    finished: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)


class V1Epoch(V1):
    __tablename__ = "oialr_trial_epochs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("oialr_trials.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    val_loss: Mapped[float] = mapped_column(Float)
    top1: Mapped[float] = mapped_column(Float)
    top5: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)
    trainable_fraction: Mapped[float] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)


class V1Meta(V1):
    __tablename__ = "oialr_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


NEW_COLUMNS = {"oialr_studies": {"objectives", "constraints", "jobs"},  # jobs: v5
               # heartbeat and owner: v3; crashes: v4; backend: v6; deadline: v7
               "oialr_trials": {"objective_values", "feasible", "last_epoch", "heartbeat", "owner", "crashes",
                                "backend", "deadline"},
               "oialr_trial_epochs": {"compression", "train_seconds"}}
NEW_DEFAULTS = {"crashes": 0, "jobs": 0}  # the new columns' values in old rows; None for the others
PAYLOADS = "oialr_trial_payloads"
MOVED = {"oialr_trials": ("config", "rank_trajectory")}  # v2 keeps them in PAYLOADS, one row per trial
TABLES = ("oialr_studies", "oialr_trials", "oialr_trial_epochs", PAYLOADS, "oialr_meta")
STATES = ("COMPLETE", "FAILED", "RUNNING", "INTERRUPTED", "COMPLETE", "PRUNED")


def make_v1(path, url: str | None = None, *, running: bool = False) -> str:
    """A v1 database as the first release wrote it: 2 studies, trials in every state, epochs (at ``path``,
    a SQLite file, or at ``url``, an empty database). The trial of each study that its job left running
    is RUNNING with ``running`` (the job may still be alive: upgrades refuse), else INTERRUPTED."""
    url = url or f"sqlite:///{path}"
    engine = create_engine(url)
    V1.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(V1Meta(key="schema_version", value="1"))
        for i, name in enumerate(("cifar", "mnist")):
            study = V1Study(name=name, space={"raw": {"lr": [1e-4, 1e-1]}, "base": {"a": i}}, space_path="s.yaml",
                            metric="val_loss", direction="minimize", backend="optuna", seed=i, budget=20,
                            created=datetime(2024, 5, 1, 12, i, 30, 123456))
            s.add(study)
            s.flush()
            for number, state in enumerate(STATES):
                done = state != "RUNNING"
                state = state if done or running else "INTERRUPTED"
                trial = V1Trial(study_id=study.id, number=number, state=state, rank=number % 2,
                                island=number % 3 or None, device="cuda:0",
                                params={"lr": 0.1 / (number + 1), "beta": [number, "x"]},
                                value=0.5 / (number + 1) if state == "COMPLETE" else None,
                                metrics={"val_loss": 0.3, "top1": 91.25} if done else None,
                                config=None if number == 4 else {"train": {"epochs": 3}, "trial": [name, number]},
                                rank_trajectory=trajectory(i, number) if done else None,
                                error="boom\nline 2" if state == "FAILED" else None,
                                started=datetime(2024, 5, 2, 1, number),
                                finished=datetime(2024, 5, 2, 2) if done else None, duration=3600.5 if done else None)
                s.add(trial)
                s.flush()
                for epoch in range(1, 4 if done else 2):
                    s.add(V1Epoch(trial_id=trial.id, epoch=epoch, step=10 * epoch, train_loss=1 / epoch, val_loss=0.9,
                                  top1=50.0 + epoch, top5=90.1, lr=1e-3, trainable_fraction=0.25, seconds=1.5 * epoch))
        s.commit()
    engine.dispose()
    return url


def trajectory(study: int, number: int) -> list[dict]:
    """A rank trajectory; the first study's first one is CIFAR-like (~170 KB: overflow pages)."""
    steps = 600 if study == 0 and number == 0 else 2
    return [{"step": 10 * s, "ranks": {f"layer{layer}.weight": 64 - s % 7 - layer for layer in range(20)}}
            for s in range(steps)]


def dump(path) -> dict[str, list[dict]]:
    """Every row of our tables as SQLite stores it (JSON as text), so "kept" means byte for byte."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {t: [dict(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in TABLES if t in tables}
    finally:
        conn.close()


def json_or_none(stored: str | None):  # noqa: ANN201
    return None if stored is None else json.loads(stored)


def last_stored_epoch(tables: dict[str, list[dict]], trial_id: int) -> int | None:
    return max((e["epoch"] for e in tables["oialr_trial_epochs"] if e["trial_id"] == trial_id), default=None)


def assert_upgraded(path, before: dict[str, list[dict]]) -> None:
    """Every v1 row kept byte for byte (trials' config and rank trajectory in PAYLOADS), the schema
    exactly _schema.py's, and the Store reads the moved documents back."""
    after = dump(path)
    assert set(after) == set(before) | {PAYLOADS}
    for table, rows in before.items():
        if table == "oialr_meta":
            assert after[table] == [{"key": "schema_version", "value": str(SCHEMA_VERSION)}]
            continue
        assert len(after[table]) == len(rows) > 0
        moved = MOVED.get(table, ())
        for old, new in zip(rows, after[table]):
            assert {k: new[k] for k in old if k not in moved} == {k: v for k, v in old.items() if k not in moved}
            assert set(new) == set(old) - set(moved) | NEW_COLUMNS[table]
            assert all(new[k] == NEW_DEFAULTS.get(k) for k in NEW_COLUMNS[table] - {"last_epoch"})
            if table == "oialr_trials":  # v6 fills it in: the trial's last stored epoch
                assert new["last_epoch"] == last_stored_epoch(after, new["id"])
    assert after[PAYLOADS] == [{"trial_id": t["id"], **{k: t[k] for k in MOVED["oialr_trials"]}}
                               for t in before["oialr_trials"]]
    assert any(len(t["rank_trajectory"] or "") > 100_000 for t in before["oialr_trials"])  # an overflowing one
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall() == [(f"v{SCHEMA_VERSION}",)]
        objects = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
        assert {"ix_oialr_epoch_trial_epoch", "ix_oialr_trials_study_state", "ix_oialr_trials_study_id",
                "ix_oialr_trials_state", "ix_oialr_trial_epochs_trial_id", "ix_oialr_studies_name"} <= objects
        assert not any(name.startswith("_alembic_tmp") for name in objects)
        # the recreated oialr_trials kept its unique constraint and foreign key; what references it still does
        trials_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'oialr_trials'").fetchone()[0]
        assert "CONSTRAINT uq_oialr_trial_number UNIQUE (study_id, number)" in trials_sql
        for table, column, parent in (("oialr_trials", "study_id", "oialr_studies"),
                                      ("oialr_trial_epochs", "trial_id", "oialr_trials"),
                                      (PAYLOADS, "trial_id", "oialr_trials")):
            fks = [(r[2], r[3], r[4], r[6]) for r in conn.execute(f"PRAGMA foreign_key_list({table})")]
            assert fks == [(parent, column, "id", "CASCADE")]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.connect() as conn:  # what the migrations made is what _schema.py declares (Optuna's tables aside)
        context = MigrationContext.configure(conn, opts={
            "version_table": VERSION_TABLE,
            "include_name": lambda name, type_, _parent: type_ != "table" or name.startswith("oialr_")})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
    store = Store(url, create=False)
    try:
        for study_row in before["oialr_studies"]:
            study = store.get_study(study_row["name"])
            expected = {t["number"]: (json_or_none(t["config"]), json_or_none(t["rank_trajectory"]))
                        for t in before["oialr_trials"] if t["study_id"] == study_row["id"]}
            assert {t.number: (t.config, t.rank_trajectory) for t in store.trials(study, full=True)} == expected
            assert any(config is None for config, _ in expected.values())
            assert any(trajectory for _, trajectory in expected.values())
            assert all(t.config is t.rank_trajectory is None for t in store.trials(study))  # light: not loaded
    finally:
        store.engine.dispose()


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "oialr_search", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})


ENGINES = {"plain": create_engine, "store": _sqlite_engine}


@pytest.mark.parametrize("engine_kind", ENGINES)
def test_v1_database_is_refused_without_create(tmp_path, engine_kind):
    url = make_v1(tmp_path / "v1.db")
    before = dump(tmp_path / "v1.db")
    engine = ENGINES[engine_kind](url)
    assert schema_version(engine) == 1
    with pytest.raises(SchemaOutdated) as err:
        prepare_schema(engine, url=url, create=False)
    assert str(err.value) == (f"{url}: database schema v1 is older than this release's v{SCHEMA_VERSION}; "
                              "upgrade it with: "
                              f"oialr-search storage upgrade --storage {url}")
    engine.dispose()
    assert dump(tmp_path / "v1.db") == before


def test_cli_upgrade_keeps_every_row(tmp_path):
    url = make_v1(tmp_path / "v1.db")
    before = dump(tmp_path / "v1.db")
    proc = run_cli("storage", "upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"upgraded {url}: schema v1 -> v{SCHEMA_VERSION} (2 studies, 12 trials, 32 epochs kept)\n"
    assert_upgraded(tmp_path / "v1.db", before)
    engine = create_engine(url)
    assert schema_version(engine) == SCHEMA_VERSION
    prepare_schema(engine, url=url, create=False)  # now accepted as it is
    engine.dispose()
    proc = run_cli("storage", "upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{url} is up to date (schema v{SCHEMA_VERSION})\n"
    assert_upgraded(tmp_path / "v1.db", before)


@pytest.mark.parametrize("engine_kind", ENGINES)
def test_prepare_schema_with_create_upgrades_v1(tmp_path, engine_kind, capsys):
    url = make_v1(tmp_path / "v1.db")
    before = dump(tmp_path / "v1.db")
    engine = ENGINES[engine_kind](url)
    prepare_schema(engine, url=url, create=True)
    assert schema_version(engine) == SCHEMA_VERSION
    prepare_schema(engine, url=url, create=True)  # idempotent
    engine.dispose()
    assert_upgraded(tmp_path / "v1.db", before)
    assert capsys.readouterr() == ("", "")  # silent: the caller decides what to print


@pytest.mark.parametrize("engine_kind", ENGINES)
def test_fresh_database_is_current_and_stamped(tmp_path, engine_kind):
    url = f"sqlite:///{tmp_path}/new.db"
    engine = ENGINES[engine_kind](url)
    assert schema_version(engine) is None
    prepare_schema(engine, url=url, create=False)  # an empty database is left alone without create
    assert schema_version(engine) is None
    prepare_schema(engine, url=url, create=True)
    prepare_schema(engine, url=url, create=True)
    assert schema_version(engine) == SCHEMA_VERSION
    with engine.connect() as conn:
        assert conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}")) == f"v{SCHEMA_VERSION}"
        assert conn.execute(text("SELECT key, value FROM oialr_meta")).all() == [("schema_version",
                                                                                  str(SCHEMA_VERSION))]
        # what create_all made is what the migrations make: nothing for autogenerate to add
        assert compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                                Base.metadata) == []
    engine.dispose()


@pytest.mark.parametrize("engine_kind", ENGINES)
@pytest.mark.parametrize("start", ["fresh", "v1"])
def test_racing_writers_make_one_schema(tmp_path, engine_kind, start):
    """Ranks that open a new (or a v1) database at once: one creates (upgrades) it, the others use it."""
    url = make_v1(tmp_path / "race.db") if start == "v1" else f"sqlite:///{tmp_path}/race.db"
    errors = []

    def worker():
        engine = ENGINES[engine_kind](url)
        try:
            prepare_schema(engine, url=url, create=True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = create_engine(url)
    assert schema_version(engine) == SCHEMA_VERSION
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [(f"v{SCHEMA_VERSION}",)]
        assert conn.execute(text("SELECT key, value FROM oialr_meta")).all() == [("schema_version",
                                                                                  str(SCHEMA_VERSION))]
    engine.dispose()


def test_migration_scripts_match_the_schema(tmp_path):
    """v1's script is the frozen v1 tables, v1 -> v2 gives _schema.py's tables, and both go back down."""
    engine = create_engine(f"sqlite:///{tmp_path}/scripts.db")
    with engine.begin() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        command.upgrade(_config(conn), "v1")
        assert compare_metadata(context, V1.metadata) == []
        assert schema_version(conn) == 1
        command.upgrade(_config(conn), "head")
        assert compare_metadata(context, Base.metadata) == []
        assert schema_version(conn) == SCHEMA_VERSION
        assert conn.scalar(text("SELECT value FROM oialr_meta")) == str(SCHEMA_VERSION)
        command.downgrade(_config(conn), "v1")
        assert compare_metadata(context, V1.metadata) == []
        assert conn.scalar(text("SELECT value FROM oialr_meta")) == "1"
        command.downgrade(_config(conn), "base")
        assert schema_version(conn) is None
    engine.dispose()


@pytest.mark.parametrize("engine_kind", ENGINES)
def test_upgraded_v1_database_goes_back_down_row_for_row(tmp_path, engine_kind):
    """v2's downgrade puts every trial's config and rank trajectory back into its row: v1 byte for byte."""
    url = make_v1(tmp_path / "v1.db")
    before = dump(tmp_path / "v1.db")
    engine = ENGINES[engine_kind](url)
    prepare_schema(engine, url=url, create=True)
    engine.dispose()
    assert_upgraded(tmp_path / "v1.db", before)
    engine = create_engine(url)  # pysqlite's default: foreign keys not enforced, as a table recreate needs
    with engine.begin() as conn:
        command.downgrade(_config(conn), "v1")
        assert compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                                V1.metadata) == []
        assert schema_version(conn) == 1
    engine.dispose()
    assert dump(tmp_path / "v1.db") == before
    conn = sqlite3.connect(tmp_path / "v1.db")
    try:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert not conn.execute(f"SELECT name FROM sqlite_master WHERE name LIKE '{PAYLOADS}%' "
                                "OR name LIKE '_alembic_tmp%' OR name = 'ix_oialr_trials_study_state'").fetchall()
    finally:
        conn.close()


def test_upgrade_keeps_foreign_keys_enforced(tmp_path):
    """The Store's engine enforces foreign keys; the upgrade turns that off around its transaction only
    (a recreated oialr_trials would else cascade-delete its epochs), and the cascades still work after."""
    url = make_v1(tmp_path / "v1.db")
    engine = _sqlite_engine(url)
    prepare_schema(engine, url=url, create=True)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1  # the pooled connection got it back
        conn.exec_driver_sql("DELETE FROM oialr_studies WHERE name = 'cifar'")
    engine.dispose()
    after = dump(tmp_path / "v1.db")
    assert [s["name"] for s in after["oialr_studies"]] == ["mnist"]
    trial_ids = {t["id"] for t in after["oialr_trials"]}
    assert len(trial_ids) == len(STATES) and {t["study_id"] for t in after["oialr_trials"]} == {2}
    assert {p["trial_id"] for p in after[PAYLOADS]} == trial_ids
    assert {e["trial_id"] for e in after["oialr_trial_epochs"]} == trial_ids and len(after["oialr_trial_epochs"]) == 16


def test_migration_refuses_to_recreate_tables_with_foreign_keys_enforced(tmp_path):
    """Run by hand on the Store's engine (foreign keys ON, and no way to turn them off inside the
    transaction), v2 would lose every epoch: it refuses, and the rollback leaves the database as it was."""
    url = make_v1(tmp_path / "v1.db")
    before = dump(tmp_path / "v1.db")
    engine = _sqlite_engine(url)
    for target in ("head", "v1"):
        with pytest.raises(RuntimeError, match="PRAGMA foreign_keys=OFF"), engine.begin() as conn:
            command.stamp(_config(conn), "v1" if target == "head" else "v2")
            getattr(command, "upgrade" if target == "head" else "downgrade")(_config(conn), target)
    assert schema_version(engine) == 1
    engine.dispose()
    assert dump(tmp_path / "v1.db") == before
    conn = sqlite3.connect(tmp_path / "v1.db")
    assert VERSION_TABLE not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()


def test_postgresql_upgrade_and_downgrade(postgres_schema_url):
    """v1 -> v2 -> v1 on PostgreSQL (ALTER TABLE, no table recreate), row for row; drops our tables after.
    The database: the tests' throwaway server, or OIALR_SEARCH_TEST_POSTGRES_URL (see tests/conftest.py)."""
    engine = create_engine(postgres_schema_url)

    def rows() -> dict[str, list[dict]]:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            return {t: [dict(r._mapping) for r in conn.execute(text(f"SELECT * FROM {t} ORDER BY 1"))]
                    for t in TABLES if t in names}

    def compare(metadata) -> list:  # noqa: ANN001
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata)

    def drop_ours() -> None:
        with engine.begin() as conn:
            for table in (PAYLOADS, "oialr_trial_epochs", "oialr_trials", "oialr_studies", "oialr_meta",
                          VERSION_TABLE):
                conn.execute(text(f"DROP TABLE IF EXISTS {table}"))

    drop_ours()
    try:
        make_v1(None, postgres_schema_url)
        before = rows()
        prepare_schema(engine, url=postgres_schema_url, create=True)
        assert schema_version(engine) == SCHEMA_VERSION
        assert compare(Base.metadata) == []
        after = rows()
        moved = MOVED["oialr_trials"]
        assert [{k: v for k, v in t.items() if k not in moved} for t in before["oialr_trials"]] == \
            [{k: t[k] for k in before["oialr_trials"][0] if k not in moved} for t in after["oialr_trials"]]
        assert after[PAYLOADS] == [{"trial_id": t["id"], **{k: t[k] for k in moved}} for t in before["oialr_trials"]]
        assert after["oialr_trial_epochs"] == [{**e, "compression": None, "train_seconds": None}
                                               for e in before["oialr_trial_epochs"]]
        store = Store(postgres_schema_url, create=False)
        try:
            for study_row in before["oialr_studies"]:
                trials = store.trials(store.get_study(study_row["name"]), full=True)
                assert [(t.id, t.config, t.rank_trajectory) for t in trials] == [
                    (t["id"], t["config"], t["rank_trajectory"]) for t in before["oialr_trials"]
                    if t["study_id"] == study_row["id"]]
        finally:
            store.engine.dispose()
        with engine.begin() as conn:
            command.downgrade(_config(conn), "v1")
        assert compare(V1.metadata) == []
        assert rows() == before
    finally:
        drop_ours()
        engine.dispose()


def test_optuna_tables_coexist(tmp_path):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = make_v1(tmp_path / "shared.db")
    before = dump(tmp_path / "shared.db")
    study = optuna.create_study(storage=url, study_name="opt")  # Optuna's tables and its own alembic_version
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    conn = sqlite3.connect(tmp_path / "shared.db")
    optuna_revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    conn.close()
    engine = create_engine(url)
    assert schema_version(engine) == 1
    engine.dispose()

    proc = run_cli("storage", "upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_upgraded(tmp_path / "shared.db", before)
    conn = sqlite3.connect(tmp_path / "shared.db")
    assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == optuna_revision
    conn.close()
    assert len(optuna.load_study(storage=url, study_name="opt").trials) == 2

    # and the other way round: our schema made in a database that has only Optuna's tables
    url = f"sqlite:///{tmp_path}/optuna_first.db"
    optuna.create_study(storage=url, study_name="opt")
    engine = _sqlite_engine(url)
    assert schema_version(engine) is None
    prepare_schema(engine, url=url, create=True)
    assert schema_version(engine) == SCHEMA_VERSION
    engine.dispose()
    assert optuna.load_study(storage=url, study_name="opt").trials == []


def test_newer_schema_is_refused(tmp_path):
    url = make_v1(tmp_path / "v1.db")
    engine = create_engine(url)
    prepare_schema(engine, url=url, create=True)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = 'v{SCHEMA_VERSION + 1}'"))
    for create in (False, True):
        with pytest.raises(SchemaTooNew, match=f"newer than this release.s v{SCHEMA_VERSION}; upgrade oialr-search"):
            prepare_schema(engine, url=url, create=create)
    engine.dispose()
    proc = run_cli("storage", "upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 2 and "newer than this release" in proc.stderr


def test_bad_storage_is_one_line_and_changes_nothing(tmp_path):
    proc = run_cli("storage", "upgrade", "--storage", "sqlite:///missing.db", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no such database file" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    proc = run_cli("storage", "upgrade", "--storage", "not a url", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a database URL" in proc.stderr
    (tmp_path / "other.db").write_bytes(b"")
    proc = run_cli("storage", "upgrade", "--storage", "sqlite:///other.db", cwd=tmp_path)
    assert proc.returncode == 2 and "no oialr-search tables" in proc.stderr
    assert (tmp_path / "other.db").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_run_refused_for_its_work_folder_leaves_an_older_database_as_it_was(tmp_path):
    """The work folder is checked before the database is opened for writing, which upgrades an older schema
    (a review: a study's recorded --workdir was looked up only after that)."""
    make_v1(tmp_path / "oialr_search.db")
    (tmp_path / "space.yaml").write_text("base: {model: {name: mlp}, data: {name: digits}}\n"
                                         "params: {optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}}\n")
    (tmp_path / "oialr_search.work").write_text("not a folder")  # the default work folder cannot be made
    before = (tmp_path / "oialr_search.db").read_bytes()
    proc = run_cli("run", "space.yaml", "--study", "new", "--backend", "optuna", cwd=tmp_path)
    assert proc.returncode == 2 and "oialr_search.work is not a folder" in proc.stderr, proc.stderr
    assert (tmp_path / "oialr_search.db").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oialr_search.db", "oialr_search.work", "space.yaml"]


# -- a job of the older release may still be running: no upgrade underneath it, unless forced ---------------------
def running_message(url: str, n: int = 2) -> str:
    return (f"{url}: {n} trial(s) are RUNNING under the older release's schema v1; stop that job first (or, if it "
            f"died, upgrade anyway with: oialr-search storage upgrade --force --storage {url})")


def test_cli_upgrade_refuses_while_trials_run_and_force_upgrades(tmp_path):
    url = make_v1(tmp_path / "v1.db", running=True)
    before = dump(tmp_path / "v1.db")
    assert sum(t["state"] == "RUNNING" for t in before["oialr_trials"]) == 2
    proc = run_cli("storage", "upgrade", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"oialr-search storage: error: {running_message(url)}\n"
    assert dump(tmp_path / "v1.db") == before
    # run, which would upgrade it, refuses as the upgrade does: with the file byte for byte as it was (found by a
    # sweep: its writer had switched the file to WAL before the refusal)
    (tmp_path / "space.yaml").write_text("base: {model: {name: mlp}, data: {name: digits}}\n"
                                         "params: {optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2}}\n")
    raw = (tmp_path / "v1.db").read_bytes()
    proc = run_cli("run", "space.yaml", "--study", "new", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == f"oialr-search: error: {running_message(url)}\n", proc.stderr
    assert (tmp_path / "v1.db").read_bytes() == raw
    conn = sqlite3.connect(tmp_path / "v1.db")
    try:  # not even switched to WAL, nor stamped
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert VERSION_TABLE not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()

    proc = run_cli("storage", "upgrade", "--force", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (f"upgraded {url}: schema v1 -> v{SCHEMA_VERSION} (2 studies, 12 trials, 32 epochs kept)\n"
                           "2 trial(s) left RUNNING by the older release: the next search of their study resumes "
                           "them (from scratch: that release wrote no trial checkpoints)\n")
    assert_upgraded(tmp_path / "v1.db", before)
    store = Store(url)  # as the next search's start does: no heartbeat, so dead at once, and claimed
    try:
        for name in ("cifar", "mnist"):
            study = store.get_study(name)
            assert store.dead_trials(study, grace=60) == 1
            claimed = store.claim_dead(study, grace=60, rank=0, device="cpu")
            assert claimed is not None and claimed.state == "RUNNING" and claimed.config is not None
            assert store.claim_dead(study, grace=60, rank=1, device="cpu") is None  # taken: alive now
    finally:
        store.engine.dispose()


@pytest.mark.parametrize("engine_kind", ENGINES)
def test_prepare_schema_refuses_to_upgrade_while_trials_run(tmp_path, engine_kind):
    url = make_v1(tmp_path / "v1.db", running=True)
    before = dump(tmp_path / "v1.db")
    engine = ENGINES[engine_kind](url)
    with pytest.raises(TrialsRunning) as err:
        prepare_schema(engine, url=url, create=True)
    assert str(err.value) == running_message(url)
    assert isinstance(err.value, SchemaOutdated)
    with pytest.raises(SchemaOutdated, match="older than this release"):  # without create: the usual message
        prepare_schema(engine, url=url, create=False)
    assert schema_version(engine) == 1
    assert dump(tmp_path / "v1.db") == before
    with engine.connect() as conn, conn.begin():  # checked again under the write lock, where it counts
        from oialr_search.storage._migrate import _create_or_upgrade

        with pytest.raises(TrialsRunning, match="2 trial"):
            _create_or_upgrade(conn, url=url, force=False)
    assert dump(tmp_path / "v1.db") == before
    with pytest.raises(TrialsRunning):  # the Store (a search's start) refuses likewise
        Store(url)
    prepare_schema(engine, url=url, create=True, force=True)
    assert schema_version(engine) == SCHEMA_VERSION
    engine.dispose()
    assert_upgraded(tmp_path / "v1.db", before)


# -- NaN measurements: SQLite stores them as NULL ----------------------------------------------------------------
EPOCH = {"epoch": 1, "step": 10, "train_loss": 2.5, "val_loss": 2.4, "top1": 10.0, "top5": 50.0, "lr": 0.1,
         "trainable_fraction": 1.0, "seconds": 1.0, "compression": 1.0, "train_seconds": 0.9}


@pytest.mark.parametrize("start", ["fresh", "v1"])
def test_epochs_with_nan_measurements_are_stored(tmp_path, start):
    """A diverged trial reports NaN losses: its epochs are stored (NULL) and it finishes, not left RUNNING."""
    path = tmp_path / "nan.db"
    url = make_v1(path) if start == "v1" else f"sqlite:///{path}"
    before = dump(path) if start == "v1" else None
    store = Store(url)  # creates, or upgrades v1
    try:
        if before:
            assert_upgraded(path, before)
            study = store.get_study("cifar")
        else:
            study = store.create_study(name="s", space={}, space_path="", metric="val_loss", direction="minimize",
                                       backend="random", seed=0, budget=2)
        trial = store.start_trial(study, params={}, rank=0, island=None, device="cpu")
        nan = float("nan")
        store.report_epochs(trial.id, [EPOCH, {**EPOCH, "epoch": 2, "train_loss": nan, "val_loss": nan}])
        store.finish_trial(trial.id, state="FAILED", error="diverged", epochs=[
            {**EPOCH, "epoch": e, "train_loss": nan, "val_loss": nan, "top1": nan, "step": None} for e in (2, 3)])
        epochs = store.epochs(trial.id)
        assert [(e["epoch"], e["val_loss"]) for e in epochs] == [(1, 2.4), (2, None), (3, None)]
        assert epochs[2]["top1"] is epochs[2]["step"] is None and epochs[2]["top5"] == 50.0
        assert store.get_trial(study, trial.number).state == "FAILED"
    finally:
        store.engine.dispose()
    conn = sqlite3.connect(path)
    try:  # also by hand: only trial_id and epoch stay NOT NULL
        conn.execute("INSERT INTO oialr_trial_epochs (trial_id, epoch, val_loss) VALUES (?, 9, NULL)", (trial.id,))
        conn.commit()
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            conn.execute("INSERT INTO oialr_trial_epochs (trial_id, step) VALUES (?, 1)", (trial.id,))
    finally:
        conn.close()
    # v1 cannot hold them: the downgrade says so, and changes nothing
    rows = dump(path)
    engine = _transactional_ddl(create_engine(url))  # v3's downgrade runs first: its DROP COLUMN must roll back
    with pytest.raises(RuntimeError, match=r"3 row\(s\) of oialr_trial_epochs have a NULL measurement"), \
            engine.begin() as conn:
        command.downgrade(_config(conn), "v1")
    assert schema_version(engine) == SCHEMA_VERSION
    engine.dispose()
    assert dump(path) == rows


def _transactional_ddl(engine):
    """pysqlite runs DDL outside any transaction unless BEGIN is emitted explicitly (as the Store does)."""
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")

    return engine


# -- the schema check on every Store open is a read: no write lock ------------------------------------------------
def _prompt(call, seconds: float = 5.0):  # noqa: ANN001, ANN202
    """Run ``call`` in a thread; the exception it raised (None), or fail if it takes longer than ``seconds``."""
    outcome = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s (for the write lock?)"
    assert time.monotonic() - start < seconds
    return outcome[0]


@pytest.mark.parametrize("start", ["v2", "v1"])
def test_schema_check_does_not_wait_for_a_writer(tmp_path, start):
    """While another process holds the write lock (BEGIN IMMEDIATE), checking a current database, or
    refusing an older one, returns at once: a plain BEGIN, not BEGIN IMMEDIATE behind the writer."""
    path = tmp_path / "busy.db"
    url = f"sqlite:///{path}"
    if start == "v2":
        Store(url).engine.dispose()  # current, WAL
    else:
        make_v1(path, running=True)
        sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").connection.close()  # as the first release's Store
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    engine = _sqlite_engine(url)
    try:
        if start == "v2":
            assert _prompt(lambda: prepare_schema(engine, url=url, create=True)) is None
            assert _prompt(lambda: prepare_schema(engine, url=url, create=False)) is None
            assert _prompt(lambda: Store(url).engine.dispose()) is None
            assert _prompt(lambda: Store(url, create=False).engine.dispose()) is None
        else:
            assert isinstance(_prompt(lambda: prepare_schema(engine, url=url, create=False)), SchemaOutdated)
            assert isinstance(_prompt(lambda: prepare_schema(engine, url=url, create=True)), TrialsRunning)
        assert _prompt(lambda: schema_version(engine)) is None
        # the writer really held the lock: a write transaction of the Store's engine would have waited
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sqlite3.connect(path, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        engine.dispose()


@pytest.mark.parametrize("release", ["v2", "v3", "v4", "v6"])
def test_a_database_of_an_earlier_release_is_upgraded_with_every_row(tmp_path, release):
    """v1 -> v2, v3, v4 or v6 (the schemas of earlier releases, a study with a finished and a RUNNING trial), then
    this release's `storage upgrade --force`: every row kept, the new columns NULL (crashes, jobs 0), the RUNNING
    trial resumable."""
    url = make_v1(tmp_path / f"{release}.db", running=True)
    engine = _transactional_ddl(create_engine(url))
    with engine.begin() as conn:
        command.stamp(_config(conn), "v1")
        command.upgrade(_config(conn), release)
    engine.dispose()
    before = dump(tmp_path / f"{release}.db")
    proc = run_cli("storage", "upgrade", "--force", "--storage", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"upgraded {url}: schema {release} -> v{SCHEMA_VERSION} ")
    after = dump(tmp_path / f"{release}.db")
    assert after.keys() == before.keys()
    for table, rows in before.items():
        assert len(after[table]) == len(rows)
        for old, new in zip(rows, after[table], strict=True):
            if table == "oialr_trials":  # left NULL by v2 for trials stored before it; v6 fills it in
                assert old["last_epoch"] == (None if release < "v6" else new["last_epoch"])
                assert new["last_epoch"] == last_stored_epoch(after, new["id"])
                old = {**old, "last_epoch": new["last_epoch"]}
            assert {k: new[k] for k in old} == old or table == "oialr_meta"
            assert all(new[k] == NEW_DEFAULTS.get(k) for k in set(new) - set(old))
    store = Store(url, create=False)
    try:
        study = store.get_study("cifar")
        assert store.dead_trials(study, grace=60) == 1  # no heartbeat: resumed by the next search
        running = store.claim_dead(study, grace=60, rank=0, device="cpu")
        assert running is not None and running.crashes == 0  # no heartbeat: not a death
    finally:
        store.engine.dispose()
