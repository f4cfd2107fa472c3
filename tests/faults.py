"""Stops injected at the file-system changes a run makes in its folder (not a test module).

:class:`Stops` wraps the system calls that change what is on the disk -- ``os.write`` (data),
``os.replace`` / ``os.rename`` (a file into place), ``os.unlink`` and ``os.mkdir`` -- and counts
those that touch one folder. At the chosen one the process stops:

- ``mode="kill"``: ``SIGKILL`` to itself, before the call: what a kill, an OOM kill or a power
  cut after the last flush does. Run it in a subprocess (``python tests/faults.py``).
- ``mode="raise"``: :class:`Stopped` is raised, and from then on every further change is
  refused (raising again) and none is made, as if the process had died there: ``finally``
  blocks and ``except`` handlers run, but cannot clean up. This is the in-process version, for
  trying every point quickly.

A stop at an ``os.write`` first writes half of the bytes (a torn write).

Run as a script, ``python tests/faults.py KILL_AT RUN_DIR ARGV...`` runs ``tngraph ARGV`` with
a kill at the ``KILL_AT``-th change inside ``RUN_DIR``.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Stopped(BaseException):
    """The process 'died' here (``mode="raise"``)."""


class Stops:
    """Count (and stop at) the changes made inside ``folder``; see the module docstring.

    Attributes
    ----------
    count
        Changes seen so far.
    log
        ``(call, path)`` of each change seen, in order.
    """

    def __init__(self, folder: Path, stop_at: int | None = None, mode: str = "raise") -> None:
        self.folder = str(Path(folder).resolve())
        self.stop_at = stop_at
        self.mode = mode
        self.count = 0
        self.dead = False
        self.log: list[tuple[str, str]] = []

    def _inside(self, path: Any) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(self.folder)
        except TypeError:
            return False

    def _fd_path(self, fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return ""

    def _point(self, call: str, path: str) -> bool:
        """Whether to stop at this change (counting it when it is inside the folder)."""
        if self.dead:
            raise Stopped(f"after the stop: {call} {path}")
        if not self._inside(path):
            return False
        self.count += 1
        self.log.append((call, path))
        return self.count == self.stop_at

    def _stop(self) -> None:
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        self.dead = True
        raise Stopped(f"stopped at change {self.count}: {self.log[-1]}")

    @contextmanager
    def active(self) -> Iterator[Stops]:
        """Wrap the calls while the block runs."""
        real = {name: getattr(os, name) for name in ("write", "replace", "rename", "unlink",
                                                     "mkdir")}

        def two_paths(name: str) -> Callable[..., Any]:
            def wrapped(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                if self._point(name, os.fspath(dst)):
                    self._stop()
                return real[name](src, dst, *args, **kwargs)
            return wrapped

        def one_path(name: str) -> Callable[..., Any]:
            def wrapped(path: Any, *args: Any, **kwargs: Any) -> Any:
                if self._point(name, path):
                    self._stop()
                return real[name](path, *args, **kwargs)
            return wrapped

        def write(fd: int, data: Any) -> int:
            if self._point("write", self._fd_path(fd)):
                half = bytes(data)[: len(data) // 2]
                if half:
                    real["write"](fd, half)
                self._stop()
            return real["write"](fd, data)

        os.write = write
        os.replace = two_paths("replace")
        os.rename = two_paths("rename")
        os.unlink = one_path("unlink")
        os.mkdir = one_path("mkdir")
        try:
            yield self
        finally:
            for name, function in real.items():
                setattr(os, name, function)


def main(argv: list[str]) -> int:
    """``KILL_AT RUN_DIR ARGV...``: ``tngraph ARGV`` killed at a change inside ``RUN_DIR``."""
    from tngraph.cli import main as tngraph

    stop_at, folder, *command = argv
    Path(folder).mkdir(parents=True, exist_ok=True)     # so that it resolves as it will be
    with Stops(Path(folder), int(stop_at), mode="kill").active():
        return tngraph(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
