"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl from the machine's PostgreSQL binaries,
in a temporary folder, on a free port, gone after the session.

PostgreSQL refuses to run as root, so as root the folder is handed to the ``postgres`` user and the
binaries run as that user. Debian keeps them off PATH (``/usr/lib/postgresql/<version>/bin``; see
docs DESIGN §7), hence the search below.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

DATABASE = "oialr_test"


class PostgresUnavailable(RuntimeError):
    """No server could be started here (the message says why)."""


def bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: pg_config's bindir, the newest /usr/lib/postgresql/*/bin, or PATH."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))

    def version(path: str) -> tuple[int, ...]:
        parts = Path(path).parent.name.split(".")
        return tuple(int(p) for p in parts if p.isdigit())

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl) in pg_config --bindir, "
                              "/usr/lib/postgresql/*/bin or PATH; install the postgresql package")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server in its own temporary folder; ``url`` is a database in it that the tests may use freely."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # the server refuses root: run it as postgres
            try:
                self.user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no postgres user to run the "
                                          "server as") from None
        try:
            self.folder = Path(tempfile.mkdtemp(prefix="oialr-pg-"))
        except OSError as exc:
            raise PostgresUnavailable(f"no temporary folder for the server: {exc}") from None
        self.data = self.folder / "data"
        self.port = 0
        self.url = ""
        if self.user is not None:
            try:
                os.chown(self.folder, self.user.pw_uid, self.user.pw_gid)
            except OSError as exc:
                shutil.rmtree(self.folder, ignore_errors=True)
                raise PostgresUnavailable(f"cannot hand {self.folder} to the postgres user: {exc}") from None

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a server binary (as postgres when we are root); PostgresUnavailable with its output on failure."""
        cmd = [str(self.bin / args[0]), *args[1:]]
        as_user = {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid,
                                                "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        if self.user is not None:
            env["HOME"] = str(self.folder)
        try:
            proc = subprocess.run(cmd, cwd=self.folder, capture_output=True, text=True, timeout=timeout,
                                  env=env, **as_user)
        except (OSError, subprocess.SubprocessError) as exc:
            raise PostgresUnavailable(f"{args[0]} could not run: {exc}") from None
        if proc.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"{' '.join(args)} failed ({proc.returncode}): "
                                      f"{(proc.stdout + proc.stderr).strip()[-2000:]}\n{tail}".strip())
        return proc

    def start(self) -> PostgresServer:
        # trust auth on a server only this folder's socket and 127.0.0.1 reach, for the tests' lifetime
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        options = ("-c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off "
                   f"-c full_page_writes=off -k {self.folder}")
        for attempt in range(3):  # the free port may be taken before the server binds it
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w", "-t", "60",
                          "-o", f"-p {self.port} {options}", "start")
                break
            except PostgresUnavailable:
                if attempt == 2:
                    raise
        base = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}"
        self._create_database(base)
        self.url = f"{base}/{DATABASE}"
        return self

    def _create_database(self, base: str) -> None:
        try:
            from sqlalchemy import create_engine, text
        except ImportError as exc:  # pragma: no cover - sqlalchemy is a dependency
            raise PostgresUnavailable(str(exc)) from None
        try:
            engine = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        except ImportError:
            raise PostgresUnavailable("the PostgreSQL driver is missing: pip install 'oialr-search[postgres]'") \
                from None
        try:
            with engine.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {DATABASE}"))
        except Exception as exc:  # noqa: BLE001 - any failure means: no server for the tests
            raise PostgresUnavailable(f"CREATE DATABASE failed: {exc}") from None
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop the server (immediately: its data is thrown away) and remove its folder."""
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(PostgresUnavailable):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def server() -> Iterator[str]:
    """A started server's database URL; stopped and removed after."""
    srv = PostgresServer()
    try:
        yield srv.start().url
    finally:
        srv.stop()


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """``url`` with a new, empty schema first on its search path (dropped after), so every test gets its
    own tables in a shared database: our tables, Optuna's, and the migrations' version table."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {name}"))
        parsed = make_url(url)
        yield parsed.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)
        # a connection the test left in a transaction would make the drop wait for good: give up instead
        # (a leftover schema harms no other test)
        with contextlib.suppress(Exception), admin.connect() as conn:
            conn.execute(text("SET lock_timeout = '10s'"))
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
    finally:
        admin.dispose()
