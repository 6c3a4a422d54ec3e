"""Files written atomically: readers see the old file or the new one, never a part of it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .exceptions import OIALRSearchError


def _default_mode() -> int:
    """The mode ``open()`` would give a new file under the process's umask (mkstemp's is 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


# a path that names an open descriptor of this process rather than a file: /dev/stdout, /dev/fd/N, ...
_DESCRIPTOR = re.compile(r"/dev/(?:(stdout)|(stderr)|fd/([0-9]+))|/proc/(self|[0-9]+)/fd/([0-9]+)")


def named_descriptor(path: str | Path) -> int | None:
    """The descriptor ``path`` names (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``, or a
    link to one), or None. Such an output is written through the open descriptor: resolved to a file and
    replaced, ``export -o /dev/stdout >> log`` wiped the log (a review)."""
    fd = _same_file_as_stdout_or_stderr(path)
    if fd is not None:  # however it is reached: /proc/thread-self/fd/1, a link to /dev/fd, the log's own name
        return fd
    here = os.path.abspath(path)
    for _ in range(40):  # links to links, as the kernel follows them
        match = _DESCRIPTOR.fullmatch(here)
        if match is not None and match.group(4) in (None, "self", str(os.getpid())):
            stdout, stderr, fd, _, proc_fd = match.groups()
            return 1 if stdout else 2 if stderr else int(fd or proc_fd)
        try:
            if not os.path.islink(here):
                return None
            here = os.path.normpath(os.path.join(os.path.dirname(here), os.readlink(here)))
        except OSError:  # a link we may not read (another process's descriptor)
            return None
    return None


def _same_file_as_stdout_or_stderr(path: str | Path) -> int | None:
    """1 or 2 when ``path`` is the file (or pipe, or terminal) this process's stdout or stderr writes to: it
    is then written through that descriptor, never replaced (``export -o log >> log`` kept the log's
    earlier lines only so)."""
    try:
        target = os.stat(path)
    except (OSError, ValueError):
        return None
    for fd in (1, 2):
        try:
            if os.path.samestat(target, os.fstat(fd)):
                return fd
        except OSError:
            continue
    return None


def plain_output(path: str | Path) -> bool:
    """Whether ``path`` is (or will be) a plain file, written atomically; not a descriptor, device or FIFO."""
    if named_descriptor(path) is not None:
        return False
    try:
        target = Path(os.path.realpath(path))
    except OSError:  # a link we may not follow: not ours to make a plain file of
        return False
    return not target.exists() or target.is_file()


def make_folder_for(path: str | Path) -> None:
    """Make the folder a plain-file output ``path`` is written in (a link's: that of the file it points to)."""
    if plain_output(path):
        Path(os.path.realpath(path)).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` when the block ends without an error: written to
    a temporary file in the same folder, flushed to disk, then ``os.replace``\\ d over ``path``. On an error
    (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.

    A link is followed (the file it points to is replaced, the link stays). What is not a plain file is
    written into as it is: an open descriptor (``/dev/stdout``) through itself, a device or FIFO
    (``/dev/null``) opened (replacing it would swap the device for a file)."""
    fd = named_descriptor(path)
    if fd is not None:
        sys.stdout.flush()  # what was printed before comes first
        sys.stderr.flush()
        with os.fdopen(os.dup(fd), "wb") as fh:
            yield fh
        return
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    if path.exists() and not path.is_file():
        with open(path, "wb") as fh:
            yield fh
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _default_mode())  # a result to share, not a private temporary file
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_file_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see :func:`atomic_writer`); the folder must exist."""
    with atomic_writer(path) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def output_file(path: str | Path, *, option: str, example: str,
                error: type[OIALRSearchError] = OIALRSearchError, binary: bool = False) -> Path:
    """``path`` as a file a command may write, checked before it writes anything: not a folder, in an existing
    folder (never created: a typo must not leave a tree of folders), writable; with ``binary``, not a terminal
    (as gzip refuses to write to one). ``example``: a file name to suggest when ``path`` is a folder."""
    out = Path(path)
    if binary and _a_terminal(out):
        raise error(f"{option} {out}: is a terminal, and this output is binary; give a file name such as {example}, "
                    "or redirect it to a file")
    if out.is_dir():
        raise error(f"{option} {out}: is a folder; give a file name such as {out / example}")
    if not out.parent.is_dir():
        raise error(f"{option} {out}: folder {out.parent} does not exist; create it first")
    fd = named_descriptor(out)
    if fd is not None:  # /dev/stdout: written through the open descriptor (see atomic_writer)
        try:
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        except (OSError, OverflowError):
            raise error(f"{option} {out}: descriptor {fd} is not open") from None
        if not writable:
            raise error(f"{option} {out}: descriptor {fd} is not open for writing")
        return out
    try:
        target = Path(os.path.realpath(out))
    except OSError as exc:  # a link we may not follow
        raise error(f"{option} {out}: cannot be written ({exc.strerror})") from None
    if target.exists() and not target.is_file():  # /dev/null, a FIFO: written into as it is (see atomic_writer)
        why = _not_writable_into(target)
        if why is not None:
            raise error(f"{option} {out}: {why}")
        return out
    # the new file is made in the folder (see atomic_writer): try it, as permissions do not tell for root or
    # for mounts such as /proc
    why = unusable_folder(target.parent) if target.parent.is_dir() else f"folder {target.parent} does not exist"
    if why is not None:
        raise error(f"{option} {out}: {why}")
    if target.exists() and not os.access(target, os.W_OK):
        raise error(f"{option} {out}: cannot be written")
    return out


# Linux's terminal devices by major number: ttyN and ttySN, /dev/tty and the console, the pseudo-terminals
_TTY_MAJORS = frozenset({4, 5, *range(136, 144)})


def _a_terminal(path: Path) -> bool:
    """Whether ``path`` names a terminal: an open descriptor (/dev/stdout on a tty) or a terminal device, told by
    its device number: opening a device only to look at it may have effects (a watchdog starts counting)."""
    fd = named_descriptor(path)
    if fd is not None:
        try:
            return os.isatty(fd)
        except OSError:
            return False
    try:
        info = os.stat(path)
    except OSError:
        return False
    # (elsewhere the numbers mean other devices; the user's own terminal is stdout's, told above)
    return sys.platform.startswith("linux") and stat.S_ISCHR(info.st_mode) and os.major(info.st_rdev) in _TTY_MAJORS


def _not_writable_into(target: Path) -> str | None:
    """Why the existing non-plain file ``target`` cannot take an output, or None. A FIFO is written as any Unix
    tool writes one: once a reader opens it (probing for one would hand a waiting reader an empty stream)."""
    mode = target.stat().st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)):
        return "is not a file, device or pipe"
    return None if os.access(target, os.W_OK) else "cannot be written"


def unusable_folder(folder: Path) -> str | None:
    """Why ``folder`` could not be made (with its parents) and written, or None, found before anything is
    written: the nearest existing folder on its path must be a folder we can write in, which is tried (a
    temporary folder, removed at once), since permissions do not tell for root or for mounts such as /proc."""
    existing = folder
    try:
        while not existing.exists():
            if existing.is_symlink():
                return f"{existing} is a broken link"
            existing = existing.parent
    except OSError as exc:  # a folder on the way that cannot be searched, a name too long
        return f"{existing}: {exc.strerror}"
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".oialr-probe-", dir=existing))
    except OSError as exc:
        return f"{existing} cannot be written ({exc.strerror})"
    return None
