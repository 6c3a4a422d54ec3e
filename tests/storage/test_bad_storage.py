"""Storage that cannot be used as it is: a file that is not a database, a database of a newer release, a
read-only file or folder, a disk that fills up during a search, a database on a network filesystem. Every
verb says what is wrong in one line with exit code 2, and nothing stored is changed."""

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import DatabaseError

from oialr_search.cli import main
from oialr_search.storage import COMPLETE, Store
from oialr_search.storage import _filesystems as filesystems
from oialr_search.storage._filesystems import mount_of, network_filesystem, network_storage_warning, sqlite_file
from oialr_search.storage._schema import SCHEMA_VERSION
from oialr_search.storage._sqlite import storage_failure
from tests.search.test_search_cli import MPIEXEC, run, trials, write_space

STUDY = "s"
# every verb that opens the storage, with what it needs besides --storage
VERBS = {
    "run": ["run", "space.yaml", "--study", STUDY, "--budget", "3"],
    "resume": ["resume", "--study", STUDY],
    "status": ["status", "--study", STUDY],
    "trials": ["trials", "--study", STUDY],
    "best": ["best", "--study", STUDY],
    "pareto": ["pareto", "--study", STUDY],
    "export": ["export", "--study", STUDY, "-o", "tuned.yaml"],
    "studies": ["studies"],
    "storage upgrade": ["storage", "upgrade"],
}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, byte for byte (a -wal or -shm file left behind counts too)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def make_db(path: Path) -> str:
    """A database of this release with one study and two completed trials, closed (no -wal file left)."""
    url = f"sqlite:///{path}"
    store = Store(url)
    study = store.create_study(name=STUDY, space={"raw": {}}, space_path="space.yaml", metric="val_loss",
                               direction="minimize", backend="optuna", seed=0, budget=3)
    for k in range(2):
        trial = store.start_trial(study, params={"optim.lr": 0.01 * (k + 1)}, rank=0, island=None, device="cpu")
        store.finish_trial(trial.id, state=COMPLETE, value=1.0 + k, values=[1.0 + k], metrics={"val_loss": 1.0 + k},
                           epochs=[{"epoch": 1, "val_loss": 1.0 + k}])
    store.engine.dispose()
    return url


def cli(capsys, args: list[str], url: str) -> tuple[int, str, str]:
    code = main([*args, "--storage", url])
    out, err = capsys.readouterr()
    return code, out, err


NOT_DATABASES = {
    "text": b"study,trial,value\nfront,1,0.5\n",
    "random bytes": random.Random(0).randbytes(8192),
    "damaged": None,  # a SQLite header followed by garbage: made in the test
}
NOT_DATABASE_MESSAGES = {
    "text": "not a database (file is not a SQLite database); give another path",
    "random bytes": "not a database (file is not a SQLite database); give another path",
    "damaged": "damaged database (database disk image is malformed); restore it from a backup, or give another path",
}


@pytest.mark.parametrize("content", NOT_DATABASES)
def test_a_file_that_is_not_a_database_is_refused_by_every_verb_and_left_alone(tmp_path, monkeypatch, capsys,
                                                                              content):
    monkeypatch.chdir(tmp_path)
    write_space(tmp_path)
    db = tmp_path / "x.db"
    if content == "damaged":
        make_db(db)
        data = bytearray(db.read_bytes())
        data[100:] = random.Random(1).randbytes(len(data) - 100)  # keeps SQLite's 100-byte file header
        db.write_bytes(bytes(data))
    else:
        db.write_bytes(NOT_DATABASES[content])
    before = snapshot(tmp_path)
    url = "sqlite:///x.db"
    for verb, args in VERBS.items():
        code, out, err = cli(capsys, args, url)
        assert code == 2, (verb, out, err)
        assert out == "", (verb, out)
        assert err.count("\n") == 1 and err.endswith(f"error: --storage {url}: {NOT_DATABASE_MESSAGES[content]}\n"), \
            (verb, err)
        assert snapshot(tmp_path) == before, verb


def test_the_cli_process_reports_a_non_database_in_one_line(tmp_path):
    """The same through a real process: no traceback, exit code 2 (it was 1 and 137 lines)."""
    (tmp_path / "x.db").write_text("hello\n")
    proc = run(["studies", "--storage", "sqlite:///x.db"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == ("oialr-search studies: error: --storage sqlite:///x.db: not a database (file is not a "
                           "SQLite database); give another path\n")
    assert (tmp_path / "x.db").read_text() == "hello\n" and sorted(os.listdir(tmp_path)) == ["x.db"]


def test_a_folder_given_as_the_database_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    code, _, err = cli(capsys, ["studies"], "sqlite:///runs")
    assert code == 2
    assert err == ("oialr-search studies: error: --storage sqlite:///runs: runs is a folder; give a database file in "
                   "it, e.g. sqlite:///runs/oialr_search.db\n")
    assert list((tmp_path / "runs").iterdir()) == []


def bump_alembic(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("UPDATE oialr_alembic_version SET version_num = ?", (f"v{SCHEMA_VERSION + 1}",))
    conn.commit()
    conn.close()


def bump_meta(db: Path) -> None:
    """A database that has only oialr_meta's version row (as before the migrations existed), a newer one."""
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE oialr_alembic_version")
    conn.execute("UPDATE oialr_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("bump", [bump_alembic, bump_meta], ids=["alembic version", "oialr_meta version"])
def test_a_database_of_a_newer_release_is_refused_by_every_verb_and_left_alone(tmp_path, monkeypatch, capsys, bump):
    monkeypatch.chdir(tmp_path)
    write_space(tmp_path)
    url = make_db(tmp_path / "new.db")
    bump(tmp_path / "new.db")
    before = snapshot(tmp_path)
    for verb, args in VERBS.items():
        code, out, err = cli(capsys, args, url)
        assert code == 2, (verb, out, err)
        assert out == "", (verb, out)
        assert err.count("\n") == 1, (verb, err)
        assert err.endswith(f"error: {url}: database schema v{SCHEMA_VERSION + 1} is newer than this release's "
                            f"v{SCHEMA_VERSION}; upgrade oialr-search (pip install -U oialr-search)\n"), (verb, err)
        assert snapshot(tmp_path) == before, verb


def read_only(target: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI with ``target`` (a file or a folder) read-only. As root, permissions do not stop writes:
    then ``target`` is bind-mounted read-only over itself in a private mount namespace, a real read-only
    filesystem (EROFS) for SQLite too."""
    cmd = [sys.executable, "-m", "oialr_search", *args]
    env = {**os.environ, "OIALR_SEARCH_STORAGE": ""}
    if os.geteuid() != 0:
        mode = target.stat().st_mode
        target.chmod(0o555 if target.is_dir() else 0o444)
        try:
            return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
        finally:
            target.chmod(mode)
    mount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(target), "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root without the right to mount (needed to make a file read-only): {probe.stderr}")
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(target), *cmd],
                          cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_database_is_refused_by_run_before_any_write_and_stays_queryable(tmp_path, what):
    write_space(tmp_path)
    (tmp_path / "db").mkdir()
    url = make_db(tmp_path / "db" / "search.db")
    target = tmp_path / "db" / "search.db" if what == "file" else tmp_path / "db"
    before = snapshot(tmp_path)
    for args in (["run", "space.yaml", "--study", "other", "--storage", url],
                 ["resume", "--study", STUDY, "--storage", url]):
        proc = read_only(target, args, tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "error: --storage" in lines[0], proc.stderr
        assert "is read-only" in lines[0] and "stored trials are intact" in lines[0], lines[0]
        assert snapshot(tmp_path) == before  # not even a -wal or -shm file
    proc = read_only(target, ["status", "--study", STUDY, "--storage", url], tmp_path)  # queries still work
    assert proc.returncode == 0 and "2 complete" in proc.stdout, proc.stderr
    assert snapshot(tmp_path) == before
    # nothing to upgrade: said, and nothing left behind (it left -wal/-shm files beside a read-only file)
    proc = read_only(target, ["storage", "upgrade", "--storage", url], tmp_path)
    assert proc.returncode == 0 and proc.stdout == f"{url} is up to date (schema v{SCHEMA_VERSION})\n", proc.stderr
    assert snapshot(tmp_path) == before


FULL_DISK = '''\
"""The CLI on a disk that fills up: every connection may grow the database by SLACK pages, no more."""
import os
import sys

from sqlalchemy import event
from sqlalchemy.engine import Engine

SLACK = int(os.environ["SLACK"])


@event.listens_for(Engine, "connect")
def _no_room(dbapi_conn, _record):
    pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0]
    dbapi_conn.execute(f"PRAGMA max_page_count = {pages + SLACK}")


from oialr_search.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("ranks", [None, 2], ids=["one process", "mpiexec -n 2"])
def test_a_disk_that_fills_up_during_a_search_ends_it_in_one_line_and_keeps_the_stored_trials(tmp_path, ranks):
    """SQLite's own SQLITE_FULL (a connection may not grow the file past a page limit), not a mock: each
    write that needs room fails as on a full disk, wherever in the search it comes."""
    write_space(tmp_path)
    first = run(["run", "space.yaml", "--study", STUDY, "--budget", "2"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    stored = trials(tmp_path, STUDY)
    assert [t["state"] for t in stored] == [COMPLETE, COMPLETE]
    (tmp_path / "full_disk.py").write_text(FULL_DISK)
    cmd = [sys.executable, "full_disk.py", "resume", "--study", STUDY, "--budget", "60"]
    if ranks:  # no -m mpi4py: the CLI itself must end the other rank
        cmd = [str(MPIEXEC), "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OIALR_SEARCH_STORAGE": "", "SLACK": "4"}, start_new_session=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    url = "sqlite:///oialr_search.db"
    line = (f"oialr-search resume: error: --storage {url}: the disk is full (database or disk is full); free space "
            f"on that disk or move the database to one with room, then continue with: oialr-search resume --study "
            f"{STUDY} --storage {url} (the trials stored so far are intact)")
    assert line in proc.stderr.splitlines(), proc.stderr[-3000:]
    if not ranks:
        assert proc.stderr.splitlines()[-1] == line
    conn = sqlite3.connect(tmp_path / "oialr_search.db")
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    after = {t["number"]: t for t in trials(tmp_path, STUDY)}
    assert len(after) < 60  # it stopped
    for t in stored:  # nothing stored before is lost or changed
        assert after[t["number"]] == t


# -- a database on a network filesystem -----------------------------------------------------------------------
MOUNTS = r"""sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
tmpfs /home/ada/tmp tmpfs rw,nosuid,nodev 0 0
10.0.0.1@o2ib:/scratch /scratch lustre rw,flock 0 0
gpfs0 /gpfs gpfs rw,relatime 0 0
host:/with\040space /mnt/with\040space nfs rw 0 0
/dev/sdb1 /homework ext4 rw 0 0
/dev/sdc1 /data ext4 rw 0 0
storage:/data /data nfs rw 0 0
ada@login:/home/ada /mnt/login fuse.sshfs rw,nosuid,nodev 0 0
"""


@pytest.mark.parametrize(("path", "expected"), [
    ("/home/ada/search/oialr_search.db", ("nfs4", "/home")),
    ("/home/ada/tmp/oialr_search.db", None),  # a local tmpfs mounted inside the NFS home
    ("/scratch/project/x.db", ("lustre", "/scratch")),
    ("/gpfs/x.db", ("gpfs", "/gpfs")),
    ("/mnt/with space/x.db", ("nfs", "/mnt/with space")),  # /proc/mounts escapes the space
    ("/homework/x.db", None),  # /home is not a folder of /homework
    ("/data/x.db", ("nfs", "/data")),  # mounted over the local disk: the later line wins
    ("/mnt/login/x.db", ("fuse.sshfs", "/mnt/login")),
    ("/var/tmp/x.db", None),
])
def test_network_filesystems_are_found_by_the_longest_mount_point(path, expected):
    assert network_filesystem(path, MOUNTS) == expected


def test_mount_of_a_path_outside_every_mount_is_none():
    assert mount_of("/x/y", "tmpfs /run tmpfs rw 0 0\n") is None
    assert mount_of("/x/y", "") is None


def test_the_warning_names_the_risk_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mounts = f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs4 rw 0 0\n"
    warning = network_storage_warning("sqlite:///search.db", mounts)  # relative: the working directory's
    assert warning == (f"--storage sqlite:///search.db is on a network filesystem (nfs4 at {tmp_path}): SQLite's "
                       "locking is unreliable there, so concurrent ranks can lose or corrupt trials; put the database "
                       "on a node-local disk (e.g. --storage sqlite:////tmp/search.db) or use a database server "
                       "(--storage postgresql+psycopg2://USER@HOST/DB)")
    assert network_storage_warning(f"sqlite:///{tmp_path}/not/yet/made.db", mounts) is not None  # its folder's
    assert network_storage_warning("sqlite:////var/x.db", mounts) is None
    assert network_storage_warning("postgresql+psycopg2://u@h/db", mounts) is None
    assert network_storage_warning("sqlite://", mounts) is None  # in memory
    # a symlink to the network filesystem counts where it points
    (tmp_path / "real.db").write_bytes(b"")
    local = Path(os.path.realpath("/tmp")) / f"link-{os.getpid()}.db"
    local.symlink_to(tmp_path / "real.db")
    try:
        assert network_storage_warning(f"sqlite:///{local}", mounts) is not None
    finally:
        local.unlink()


def test_sqlite_file_of_urls():
    assert sqlite_file("sqlite:///a/b.db") == Path("a/b.db")
    assert sqlite_file("sqlite:////abs/b.db") == Path("/abs/b.db")
    assert sqlite_file("sqlite:///file:/abs/b.db?mode=ro&uri=true") == Path("/abs/b.db")
    assert sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql+psycopg2://u@h/db") is None
    assert sqlite_file("not a url") is None


def test_run_and_resume_warn_once_on_a_network_filesystem(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    fake = tmp_path / "mounts"
    fake.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs rw 0 0\n")
    monkeypatch.setattr(filesystems, "MOUNTS", fake)
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = cli(capsys, ["resume", "--study", STUDY], "sqlite:///x.db")
    assert code == 2
    warning, error = err.splitlines()
    assert warning.startswith("oialr-search resume: warning: --storage sqlite:///x.db is on a network filesystem "
                              f"(nfs at {tmp_path}): SQLite's locking is unreliable there")
    assert error == "oialr-search resume: error: --storage sqlite:///x.db: no such database file"
    monkeypatch.setenv("PMI_RANK", "1")  # the other ranks of the job stay quiet
    assert cli(capsys, ["resume", "--study", STUDY], "sqlite:///x.db")[2].count("\n") == 1
    monkeypatch.delenv("PMI_RANK")
    assert "warning" not in cli(capsys, ["studies"], "sqlite:///x.db")[2]  # queries do not lock: no warning


# -- recognising a storage failure --------------------------------------------------------------------------------
def test_storage_failure_is_found_through_the_wrappers(tmp_path):
    full = sqlite3.OperationalError("database or disk is full")  # as Python 3.10 makes it: no result code
    try:
        try:
            raise DatabaseError("INSERT ...", {}, full) from full  # SQLAlchemy's wrapper
        except DatabaseError as wrapped:
            raise RuntimeError("storage x: transaction rolled back") from wrapped  # the store's
    except RuntimeError as outer:
        failure = storage_failure(outer, Path("runs/x.db"))
    assert failure == "the disk is full (database or disk is full); free space on that disk or move the database " \
                      "to one with room"
    readonly = sqlite3.OperationalError("attempt to write a readonly database")
    assert storage_failure(readonly, Path("runs/x.db")) == ("the database is read-only (attempt to write a readonly "
                                                            "database); make runs/x.db and its folder writable, or "
                                                            "give a writable path")
    (tmp_path / "x.db").write_text("not a database")
    with pytest.raises(sqlite3.DatabaseError) as real:  # SQLite's own error, with its result code where Python has it
        sqlite3.connect(tmp_path / "x.db").execute("SELECT * FROM sqlite_master")
    assert storage_failure(real.value) == "not a database (file is not a SQLite database); give another path"
    assert storage_failure(sqlite3.OperationalError("database is locked")) is None  # busy, not broken
    assert storage_failure(ValueError("database or disk is full")) is None  # not from SQLite
