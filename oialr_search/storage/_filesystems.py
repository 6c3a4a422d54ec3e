"""Where a SQLite database lives: its file from a storage URL, and whether it is on a network filesystem.

SQLite's locking relies on POSIX locks and shared memory (the WAL index) that NFS, Lustre, GPFS and the
like implement partly or not at all, so concurrent ranks on such a file can lose or corrupt trials. Clusters
put working directories there, which is where the default ``sqlite:///oialr_search.db`` lands; ``run`` and
``resume`` warn. The detection is a pure function of the ``/proc/mounts`` text, so tests feed it fake mounts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Filesystem types (the third field of /proc/mounts) that are shared over a network or a cluster fabric.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "fuse.ceph", "fuse.ceph-fuse",
    "glusterfs", "fuse.glusterfs", "fuse.sshfs", "afs", "panfs", "pvfs2", "orangefs", "wekafs", "fuse.s3fs",
    "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs",
})
MOUNTS = Path("/proc/mounts")


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL (relative to the working directory, as SQLite opens it); None for
    another database, an in-memory one, or a URL that does not parse (the store reports that one)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or database in (None, "", ":memory:"):
        return None
    if str(parsed.query.get("uri", "")).lower() == "true" and database.startswith("file:"):
        database = database[len("file:"):].split("?")[0]  # sqlite:///file:x.db?mode=ro&uri=true
        if not database or database == ":memory:":
            return None
    return Path(database)


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mount_of(path: str | Path, mounts: str) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount holding the absolute ``path``: the longest mount point
    that is ``path`` or one of its folders (a later line wins on a tie: it is mounted over the earlier)."""
    parts = Path(path).parts
    best: tuple[int, str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape(fields[1]), fields[2]
        point_parts = Path(point).parts
        if parts[:len(point_parts)] == point_parts and (best is None or len(point_parts) >= best[0]):
            best = (len(point_parts), point, fstype)
    return (best[1], best[2]) if best else None


def network_filesystem(path: str | Path, mounts: str) -> tuple[str, str] | None:
    """(filesystem type, mount point) when the absolute ``path`` is on a network filesystem, else None."""
    found = mount_of(path, mounts)
    if found is None:
        return None
    point, fstype = found
    return (fstype, point) if fstype.lower() in NETWORK_FILESYSTEMS else None


def _existing(path: Path) -> Path:
    """``path`` with symlinks resolved, or its nearest existing folder (the file may not exist yet)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.resolve()


def network_storage_warning(url: str, mounts: str | None = None) -> str | None:
    """A one-line warning when ``url`` is a SQLite file on a network filesystem, else None. ``mounts``: the
    text of /proc/mounts (read when None; no warning where it cannot be read, e.g. not on Linux)."""
    db = sqlite_file(url)
    if db is None:
        return None
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return None
    found = network_filesystem(_existing(db), mounts)
    if found is None:
        return None
    fstype, point = found
    return (f"--storage {url} is on a network filesystem ({fstype} at {point}): SQLite's locking is unreliable "
            f"there, so concurrent ranks can lose or corrupt trials; put the database on a node-local disk "
            f"(e.g. --storage sqlite:////tmp/{db.name}) or use a database server "
            f"(--storage postgresql+psycopg2://USER@HOST/DB)")
