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
