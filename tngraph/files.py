"""Writing files so that a crash never leaves a half-written one.

Examples
--------
>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
>>> atomic_write(target, lambda tmp: pathlib.Path(tmp).write_text("done"))
>>> target.read_text()
'done'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process's umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Let ``write`` fill a temporary file in ``path``'s folder, then rename it over ``path``;
    on any error the temporary file is removed and ``path`` is left as it was. The file gets
    the mode of the one it replaces, or that of any new file (the umask's), not the
    temporary file's private ``0600``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        mode = path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
