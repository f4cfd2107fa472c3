"""Atomic writes: all or nothing, and the mode a new file would have."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tngraph.files import WriteError, atomic_write


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_file_gets_the_umask_mode_not_0600(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "model.safetensors"
    atomic_write(target, lambda tmp: Path(tmp).write_text("weights"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    target = tmp_path / "spec.yaml"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_failed_write_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.pt"
    target.write_text("old")

    def fail(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=f"cannot write {target}: No space left"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


@pytest.mark.parametrize(("make", "kind"), [
    (lambda p: p.mkdir(), "a folder"),
    (lambda p: os.mkfifo(p), "a named pipe"),
])
def test_a_path_that_is_not_a_regular_file_is_refused_and_kept(tmp_path: Path, make,
                                                               kind: str) -> None:
    target = tmp_path / "out"
    make(target)
    with pytest.raises(WriteError, match=f"cannot write {target}: it is {kind}, not a regular "
                                         "file; name a file to write"):
        atomic_write(target, b"data")
    assert not stat.S_ISREG(target.lstat().st_mode) and os.listdir(tmp_path) == ["out"]


def test_a_character_device_is_never_replaced() -> None:
    before = os.stat("/dev/null")
    with pytest.raises(WriteError, match="it is a character device"):
        atomic_write(Path("/dev/null"), b"data")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


def test_a_symlink_is_kept_and_its_target_replaced(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "link").symlink_to("real")
    atomic_write(tmp_path / "link", b"new")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_bytes() == b"new"
