"""The run folder as a transaction: a stop at every write, damaged files, two processes at
once, stale locks, unique names, write failures, datasets that change under a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faults import Stopped, Stops
from helpers import ROOT

from tngraph.cli import main
from tngraph.files import FolderLock, FolderLocked
from tngraph.train import TrainingError, train

MLP = """
tngraph: 1
name: dropout_mlp
input_shape: [64]
layers:
  - {type: linear, name: fc1, out_features: 24}
  - {type: relu, name: act}
  - {type: dropout, name: drop, p: 0.5}
  - {type: linear, name: fc2, out_features: 10}
train: {epochs: 2, batch_size: 256, lr: 0.01}
"""
#: the changes an uninterrupted two-epoch run makes in its folder (pinned: a new write in the
#: protocol must be added to the stops tried below)
CHANGES = 41
CHECKPOINT = ("model.safetensors", "state.pt", "metrics.jsonl", "spec.yaml")


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "mlp.yaml"
    path.write_text(MLP)
    return path


def _outcome(run: Path) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """What a finished run left: its weights, and its metrics without the timings."""
    from safetensors.torch import load_file

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        del line["seconds"], line["samples_per_s"]
    weights = {f"{name}:{key}": value for name in ("model", "best")
               for key, value in load_file(str(run / f"{name}.safetensors")).items()}
    return weights, lines


@pytest.fixture(scope="module")
def straight(spec_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """An uninterrupted run, its outcome and the changes it made."""
    run = tmp_path_factory.mktemp("straight") / "run"
    stops = Stops(run)
    with stops.active():
        result = train(spec_file, run_dir=run, echo=None)
    return _outcome(run), stops, result


def _assert_same_run(run: Path, expected: tuple) -> None:
    weights, metrics = _outcome(run)
    want_weights, want_metrics = expected
    assert metrics == want_metrics
    assert weights.keys() == want_weights.keys()
    for key, value in want_weights.items():
        assert torch.equal(weights[key], value), key            # bitwise
    leftovers = [p.name for p in run.iterdir() if p.name.endswith((".staged", ".tmp"))]
    assert not leftovers and not (run / ".lock").exists()


def _finish(spec_file: Path, run: Path) -> object:
    """What a user does after a stop: resume; if the message says the run never got its first
    checkpoint, start it again in the same folder."""
    try:
        train(resume=run, echo=None)
    except TrainingError as exc:
        if not run.exists():                # stopped before its folder was made
            assert "no such folder" in str(exc)
            return train(spec_file, run_dir=run, echo=None)
        assert "stopped before its first checkpoint was complete" in str(exc)
        assert f"--out {run} (that folder is reused)" in str(exc)
        train(spec_file, run_dir=run, echo=None)


def test_the_protocol_makes_the_changes_counted(straight: tuple) -> None:
    _, stops, _ = straight
    assert stops.count == CHANGES, stops.log
    calls = [(call, Path(path).name) for call, path in stops.log]
    commit_1 = calls.index(("replace", "checkpoint.json"), calls.index(
        ("write", ".model.safetensors.epoch-1.staged")))
    # every file of epoch 1 is staged before the manifest commits it, and renamed only after
    staged = [i for i, (call, name) in enumerate(calls) if name.endswith(".epoch-1.staged")]
    published = [i for i, (call, name) in enumerate(calls)
                 if call == "replace" and name in CHECKPOINT and i > staged[0]][:4]
    assert max(staged) < commit_1 < min(published)


@pytest.mark.parametrize("stop_at", range(1, CHANGES + 1))
def test_a_stop_at_any_write_resumes_to_the_same_run(spec_file: Path, tmp_path: Path,
                                                     straight: tuple, stop_at: int) -> None:
    """Stop the run at each change it makes, resume it, and get bitwise the uninterrupted run:
    weights and every metrics line (no epoch lost or trained twice)."""
    run = tmp_path / "run"
    stops = Stops(run, stop_at)
    with stops.active(), pytest.raises(Stopped):
        train(spec_file, run_dir=run, echo=None)
    _finish(spec_file, run)
    _assert_same_run(run, straight[0])


def _change(stops: Stops, call: str, name: str) -> int:
    """The number of the change ``call`` on a file called ``name`` (the first such)."""
    return 1 + [(c, Path(p).name) for c, p in stops.log].index((call, name))


@pytest.mark.parametrize(("call", "name"), [
    ("write", ".state.pt.epoch-1.staged"),          # a torn staged write
    ("replace", "checkpoint.json"),                 # the commit of epoch 0
    ("replace", "state.pt"),                        # between the renames of epoch 0's files
])
def test_a_killed_process_resumes_to_the_same_run(spec_file: Path, tmp_path: Path,
                                                  straight: tuple, call: str,
                                                  name: str) -> None:
    """The same with a real SIGKILL of a ``tngraph train`` process."""
    run = tmp_path / "run"
    stop_at = _change(straight[1], call, name)
    killed = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "faults.py"), str(stop_at), str(run), "train",
         str(spec_file), "--out", str(run)], capture_output=True, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert killed.returncode == -9, killed.stderr
    assert (run / ".lock").exists()                    # left by the dead process: stale
    _finish(spec_file, run)
    _assert_same_run(run, straight[0])


@pytest.mark.parametrize("name", [*CHECKPOINT, "best.safetensors", "checkpoint.json"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_run_file_is_a_clear_error(spec_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], name: str,
                                             damage: str) -> None:
    run = tmp_path / "run"
    train(spec_file, run_dir=run, echo=None, epochs=1)
    path = run / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage\xff" * 9)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    if name == "checkpoint.json":
        assert f"cannot read {path}: it is damaged" in err
    else:
        assert f"{path} does not match the checkpoint of epoch 1" in err
    assert "restore it, or train a new run from" in err
    if name == "best.safetensors":                      # eval checks the weights it reads too
        assert main(["eval", str(run)]) == 2
        assert "does not match the checkpoint of epoch 1" in capsys.readouterr().err


def test_a_second_writer_is_refused_while_the_first_runs(spec_file: Path,
                                                         tmp_path: Path) -> None:
    """Two processes at once: the second ``train --out SAME`` and a ``--resume`` of the live
    run are refused (exit 2) naming the live one, whose run ends intact."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    first = subprocess.Popen([sys.executable, "-m", "tngraph.cli", "train", str(spec_file),
                              "--out", str(run), "--epochs", "400"], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for argv in (["train", str(spec_file), "--out", str(run)],
                     ["train", "--resume", str(run)]):
            second = subprocess.run([sys.executable, "-m", "tngraph.cli", *argv], env=env,
                                    cwd=tmp_path, capture_output=True, text=True)
            assert second.returncode == 2, second.stderr
            assert f"{run} is in use by process {first.pid}" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 0   # the lock was stale


def test_a_lock_says_who_holds_it_and_a_stale_one_is_taken_over(tmp_path: Path) -> None:
    refused = pytest.raises(FolderLocked, match=f"in use by process {os.getpid()} on .* "
                                                r"\(tngraph train\), running since")
    with FolderLock(tmp_path, "tngraph train"), refused:
        FolderLock(tmp_path).acquire()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone"}))
    with FolderLock(tmp_path, "second") as lock:          # no live flock: stale
        assert lock.holder()["pid"] == os.getpid()


def test_runs_started_in_the_same_second_get_their_own_folders(
        spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(time, "strftime", lambda *_: "20261202-080000")
    first = train(spec_file, echo=None, epochs=1).run_dir
    second = train(spec_file, echo=None, epochs=1).run_dir
    assert (first.name, second.name) == ("dropout_mlp-20261202-080000",
                                         "dropout_mlp-20261202-080000-2")


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EROFS"])
def test_a_failed_write_names_the_file_the_cause_and_the_last_checkpoint(
        spec_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], straight: tuple, errno_name: str) -> None:
    """The disk fills up (or turns read-only) while epoch 2 is written: exit 2 naming the file,
    the system's words and the epoch to resume from; after room is made, the resume gives the
    uninterrupted run."""
    import errno

    run = tmp_path / "run"
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".model.safetensors.epoch-2.staged"):
            raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    assert main(["train", str(spec_file), "--out", str(run)]) == 2
    err = capsys.readouterr().err
    cause = os.strerror(getattr(errno, errno_name))
    assert (f"cannot write {run}/.model.safetensors.epoch-2.staged: {cause}; the last complete "
            f"checkpoint is epoch 1: make room and resume it with tngraph train --resume {run}"
            in err), err
    monkeypatch.setattr(os, "write", real_write)
    assert not [p for p in run.iterdir() if p.name.endswith(".staged")]
    assert main(["train", "--resume", str(run)]) == 0
    _assert_same_run(run, straight[0])


def test_a_file_size_limit_is_a_clear_error(spec_file: Path, tmp_path: Path) -> None:
    """A real write failure from the kernel (``RLIMIT_FSIZE``: "File too large")."""
    run = tmp_path / "run"
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); "
            "from tngraph.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "train", str(spec_file), "--out",
                           str(run)], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "File too large; no checkpoint was written, the run did not start" in done.stderr
    assert "Traceback" not in done.stderr


CSV = "a,b,label\n" + "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(60))

CSV_SPEC = """
tngraph: 1
name: csv_mlp
input_shape: [2]
layers:
  - {type: linear, name: fc, out_features: 2}
train: {epochs: 1, batch_size: 16, lr: 0.01}
"""


def test_a_dataset_changed_after_training_is_refused(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """eval, --resume and --init (also of a checkpoint copied out of its run) compare the
    dataset with the one recorded and name what changed."""
    data = tmp_path / "data.csv"
    data.write_text(CSV)
    spec = tmp_path / "spec.yaml"
    spec.write_text(CSV_SPEC)
    run = tmp_path / "run"
    source = f"csv:{data}?label=label"
    assert main(["train", str(spec), "--data", source, "--out", str(run)]) == 0
    copied = tmp_path / "copied.safetensors"
    copied.write_bytes((run / "model.safetensors").read_bytes())
    capsys.readouterr()
    data.write_text(CSV.replace("\n3,4,", "\n3,3,", 1))            # one row edited
    checks = {
        ("eval", str(run)): "the rows of the",
        ("eval", str(spec), "--checkpoint", str(copied)): "the rows of the",
        ("train", "--resume", str(run), "--epochs", "2"): "the rows of the",
        ("train", str(spec), "--data", source, "--init", str(copied),
         "--out", str(tmp_path / "b")): "the rows of the",
    }
    for argv, message in checks.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "differ" in err and "Traceback" not in err, (argv, err)
    data.write_text(CSV + "1,1,1\n" * 10)                          # rows added
    assert main(["eval", str(run)]) == 2
    assert "the split sizes were train" in capsys.readouterr().err


def test_eval_of_a_copied_checkpoint_uses_the_split_in_its_metadata(
        spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(spec_file), "--out", str(run), "--seed", "3", "--epochs",
                 "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    in_run = capsys.readouterr().out.split(": ", 1)[1]
    copied = tmp_path / "elsewhere" / "weights.safetensors"
    copied.parent.mkdir()
    copied.write_bytes((run / "model.safetensors").read_bytes())
    assert main(["eval", str(spec_file), "--checkpoint", str(copied)]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == in_run     # seed 3's split, not 0's
    with pytest.raises(TrainingError, match="with seed 3 .*the metadata of"):
        train(spec_file, init=copied, run_dir=tmp_path / "b", echo=None, epochs=1)


def test_a_run_stopped_before_its_first_checkpoint_starts_again_in_its_folder(
        spec_file: Path, tmp_path: Path, straight: tuple) -> None:
    run = tmp_path / "run"                      # config.json written, no checkpoint yet
    stops = Stops(run, _change(straight[1], "write", ".model.safetensors.epoch-0.staged"))
    with stops.active(), pytest.raises(Stopped):
        train(spec_file, run_dir=run, echo=None)
    assert (run / "config.json").exists() and not (run / "checkpoint.json").exists()
    assert main(["train", "--resume", str(run)]) == 2
    train(spec_file, run_dir=run, echo=None)        # what the message says: no "resume it"
    _assert_same_run(run, straight[0])
