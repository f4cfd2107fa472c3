"""Writing files so that a crash never leaves a half-written one, and locking a folder.

:func:`atomic_write` fills a temporary file beside the target, flushes it to the disk and
renames it over the target: a reader sees the old file or the new one, never a mixture, even
after a power cut. :func:`write_durably` is the first half alone (a file staged under its own
name). A failed write is a :class:`WriteError` that names the path and the cause ("No space
left on device", "Read-only file system", ...). :class:`FolderLock` gives one process at a time
a folder (a run directory).

Examples
--------
>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> atomic_write(target, b"done")
>>> target.read_text()
'done'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tngraph.errors import TNGraphError

try:                                    # POSIX; elsewhere a lock is a file created exclusively
    import fcntl
except ImportError:                     # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class WriteError(TNGraphError):
    """A file could not be written (disk full, read-only folder, no permission, ...)."""


class FolderLocked(TNGraphError):
    """Another live process holds a folder's lock."""


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _cause(exc: BaseException) -> str:
    """What went wrong, in the operating system's words where there are some."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:                         # pragma: no cover - folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:                         # pragma: no cover - not supported for folders
        pass
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes | Callable[[str], object],
                  shown: Path | None = None) -> None:
    """Write ``data`` (bytes, or a function that fills the file it is given) to ``path`` and
    flush it to the disk; the file gets the process's umask mode.

    Raises
    ------
    WriteError
        Naming ``path`` (or ``shown``: the file it stands for) and the cause; a partly written
        file is removed.
    """
    try:
        if callable(data):
            data(str(path))
            fd = os.open(path, os.O_RDWR)
        else:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _new_file_mode())
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _remove_quietly(path)
        raise WriteError(f"cannot write {shown or path}: {_cause(exc)}") from None


def atomic_write(path: Path, data: bytes | Callable[[str], object]) -> None:
    """Write ``data`` (bytes, or a function that fills the file it is given) to a temporary file
    in ``path``'s folder, flush it to the disk and rename it over ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. The file gets
    the mode of the one it replaces, or that of any new file (the umask's), not the temporary
    file's private ``0600``.

    Raises
    ------
    WriteError
        Naming ``path`` and the cause ("No space left on device", "Read-only file system").
    """
    path = Path(path)
    if path.is_symlink():                   # replace the file the link names, keep the link
        path = Path(os.path.realpath(path))
    if os.path.lexists(path) and not path.is_file():
        raise WriteError(f"cannot write {path}: it is {_file_kind(path)}, not a regular file; "
                         "name a file to write")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_cause(exc)}") from None
    os.close(fd)
    try:
        write_durably(Path(tmp), data, shown=path)
        try:
            mode = path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode()
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(f"cannot write {path}: {_cause(exc)}") from None
        fsync_folder(path.parent)
    finally:
        if os.path.lexists(tmp):            # not renamed: a failed write
            _remove_quietly(Path(tmp))


def _file_kind(path: Path) -> str:
    """'a folder', 'a character device', ... for what ``path`` is."""
    mode = path.lstat().st_mode
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):      # gone already, or a read-only folder
        os.unlink(path)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "x"
    >>> _ = f.write_bytes(b"")
    >>> sha256_file(f)[:12]
    'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# a folder for one process at a time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                 # someone else's live process
        return True
    return True


class FolderLock:
    """An exclusive lock on ``folder``: the file ``folder/.lock``, which names its holder.

    The lock is held by an open file under ``flock`` (POSIX), so the system releases it when
    its process ends, however it ends: a lock file left by a killed process is stale and the
    next holder takes it over. A live holder makes :meth:`acquire` raise :class:`FolderLocked`
    naming it (process id, host, start time and command).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with FolderLock(folder, "train"):
    ...     (folder / ".lock").is_file()
    True
    >>> (folder / ".lock").exists()
    False
    """

    NAME = ".lock"

    def __init__(self, folder: Path, command: str = "") -> None:
        self.path = Path(folder) / self.NAME
        self.command = command
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder (empty if it says nothing readable)."""
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _refuse(self) -> FolderLocked:
        who = self.holder()
        since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["started"]))
                 if isinstance(who.get("started"), (int, float)) else "an unknown time")
        what = f" ({who['command']})" if who.get("command") else ""
        return FolderLocked(
            f"{self.path.parent} is in use by process {who.get('pid', '?')} on "
            f"{who.get('host', '?')}{what}, running since {since}; two writers would mix "
            "their files: wait for it to end (or stop it), or choose another folder")

    def acquire(self) -> FolderLock:
        """Take the lock, or raise :class:`FolderLocked` (a live holder) or :class:`WriteError`
        (the folder cannot be written)."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, _new_file_mode())
            except OSError as exc:
                raise WriteError(f"cannot write {self.path}: {_cause(exc)}") from None
            if not self._lock(fd):
                os.close(fd)
                raise self._refuse()
            try:                            # the file may have been removed by its holder
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": self.command}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
        except BaseException:
            os.close(fd)                    # and with it the lock
            raise
        self._fd = fd
        return self

    def check(self) -> None:
        """Raise :class:`FolderLocked` if a live process holds the lock (nothing is written).

        Examples
        --------
        >>> import pathlib, tempfile
        >>> FolderLock(pathlib.Path(tempfile.mkdtemp())).check()
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:                     # no lock file: nobody holds it
            return
        try:
            free = self._lock(fd)
        finally:
            os.close(fd)
        if not free:
            raise self._refuse()

    def _lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            return True
        who = self.holder()                 # pragma: no cover - no flock: trust live pids
        return not (who.get("pid") and who.get("host") == socket.gethostname()
                    and who["pid"] != os.getpid() and _alive(int(who["pid"])))

    def release(self) -> None:
        """Give the lock back (its file is removed); a lock not held is left alone."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            _remove_quietly(self.path)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
