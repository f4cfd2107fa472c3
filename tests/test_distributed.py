"""Data-parallel training under torchrun: two CPU processes (gloo) train the same model.

One launch (module fixture) runs four commands in each of two processes through
tests/ddp_driver.py: a 2-epoch run with an odd batch size (uneven shares of every batch), its
``--resume`` to 3 epochs, the same 3 epochs straight, and a run with an optimizer that cannot be
data-parallel. The tests read what each rank dumped and what rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tngraph.train import Launch, TrainingError, current_launch, shard_batches

ROOT = Path(__file__).resolve().parent.parent

GLOO = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build")

SMALL = """
tngraph: 1
name: small_mps
params: {bond_dim: 3, sites: 64, classes: 10}
network:
  template: mps
  sites: ${sites}
  phys_dim: 2
  bond_dim: ${bond_dim}
  input: x
  feature_map: multilinear
  output_dim: ${classes}
train: {epochs: 2, batch_size: 128, lr: 0.01, schedule: constant}
plan: {optimize: random-greedy-128}
"""
# (a constant learning rate: a 2-epoch run resumed to 3 epochs then equals 3 epochs straight;
# the cosine schedule depends on the number of epochs)

#: odd: every batch of 101 is split 51 / 50, the last one (1258 = 12 * 101 + 46) 23 / 23
BATCH = "101"


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the four commands in 2 processes; return paths, output and each rank's dump."""
    tmp = tmp_path_factory.mktemp("ddp")
    spec = tmp / "small.yaml"
    spec.write_text(SMALL)
    run, refused, dump = tmp / "run", tmp / "refused", tmp / "dump"
    commands = [
        ["train", str(spec), "--out", str(run), "--epochs", "2", "--batch-size", BATCH],
        ["train", "--resume", str(run), "--epochs", "3"],
        ["train", str(spec), "--out", str(tmp / "straight"), "--epochs", "3",
         "--batch-size", BATCH],
        ["train", str(spec), "--out", str(refused), "--epochs", "1",
         "--optimizer", "riemannian"],
    ]
    argv = [arg for k, command in enumerate(commands) for arg in (["+++"] if k else []) + command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TNGRAPH_NO_PROGRESS": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(ROOT / "tests" / "ddp_driver.py"), str(dump), *argv],
        capture_output=True, text=True, env=env, cwd=tmp, timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=False)["results"] for r in (0, 1)]
    return {"spec": spec, "run": run, "refused": refused, "output": output, "ranks": ranks,
            "seconds": time.perf_counter() - start}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@GLOO
def test_both_ranks_train_the_same_model(launched: dict[str, Any]) -> None:
    first, second = launched["ranks"]
    assert [r["code"] for r in first] == [r["code"] for r in second] == [0, 0, 0, 2]
    for trained, resumed in (first[:2], second[:2]):
        assert trained["state"] and resumed["state"]
    assert _same(first[0]["state"], second[0]["state"])       # bitwise, after 2 epochs
    assert _same(first[1]["state"], second[1]["state"])       # and after the resumed 3rd
    assert not _same(first[0]["state"], first[1]["state"])    # the 3rd epoch trained


@GLOO
def test_resume_continues_exactly_and_runs_repeat(launched: dict[str, Any]) -> None:
    """2 epochs + --resume to 3 == 3 epochs straight, bitwise: same batches, optimizer state,
    random state on every rank (and the same seed gives the same run)."""
    for rank in launched["ranks"]:
        assert _same(rank[1]["state"], rank[2]["state"])


@GLOO
def test_rank_0_writes_one_run(launched: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    run: Path = launched["run"]
    assert sorted(p.name for p in run.iterdir()) == [
        "best.safetensors", "checkpoint.json", "config.json", "curves.png", "metrics.jsonl",
        "model.safetensors", "spec.yaml", "state.pt", "summary.json"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    losses = [line["train_loss"] for line in lines]
    assert losses[0] > losses[1] > losses[2]
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    assert _same(load_file(str(run / "model.safetensors")), launched["ranks"][0][1]["state"])
    state = torch.load(run / "state.pt", weights_only=False)
    assert [sorted(rank) for rank in state["rng_ranks"]] == [["torch_rng"], ["torch_rng"]]
    assert not torch.equal(state["rng_ranks"][0]["torch_rng"], state["rng_ranks"][1]["torch_rng"])
    output = launched["output"]
    # only rank 0 prints: epoch 1 in the first and the straight run, the header in all three
    assert output.count("epoch   1  loss") == 2
    assert output.count("data-parallel: 2 processes (gloo)") == 3


@GLOO
def test_data_parallel_run_equals_one_process(launched: dict[str, Any], tmp_path: Path) -> None:
    """The global batch is split over the ranks (loss-weighted where the shares are uneven):
    the run follows the one-process run up to rounding."""
    from tngraph.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(launched["spec"], run_dir=tmp_path / "single", echo=None, epochs=2,
                       batch_size=int(BATCH))
    finally:
        torch.set_num_threads(threads)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "single" / "model.safetensors"))
    parallel = launched["ranks"][0][0]["state"]
    for name, value in weights.items():
        torch.testing.assert_close(parallel[name], value, rtol=1e-4, atol=1e-5)
    lines = [json.loads(line)
             for line in (launched["run"] / "metrics.jsonl").read_text().splitlines()]
    for h, line in zip(single.history, lines):
        assert line["train_loss"] == pytest.approx(h.train_loss, rel=1e-5)
        assert line["train_metric"] == pytest.approx(h.train_metric, abs=2e-3)


@GLOO
def test_non_gradient_optimizer_is_refused(launched: dict[str, Any]) -> None:
    assert "optimizer 'riemannian' cannot run data-parallel" in launched["output"]
    assert not (launched["refused"] / "metrics.jsonl").exists()


@GLOO
def test_launch_is_quick(launched: dict[str, Any]) -> None:
    assert launched["seconds"] < 120     # ~25 s on an idle 2-core machine


# -- in one process ----------------------------------------------------------------------------


def test_shards_cover_every_batch_once() -> None:
    n, batch = 1258, 101
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    for world in (1, 2, 3):
        shards = [shard_batches(n, batch, torch.Generator().manual_seed(0), Launch(r, world, r))
                  for r in range(world)]
        assert len({len(s) for s in shards}) == 1           # same number of steps everywhere
        for step, parts in enumerate(zip(*shards)):
            together = torch.cat([index for index, _ in parts])
            assert torch.equal(together, order[step * batch:(step + 1) * batch])
            sizes = [len(index) for index, _ in parts]
            assert max(sizes) - min(sizes) <= 1
            # averaging weight * (mean loss of a share) over the ranks gives the mean loss of
            # the global batch: each example counts 1 / batch
            for (_, weight), size in zip(parts, sizes):
                assert weight / size / world == pytest.approx(1 / sum(sizes))


def test_a_last_batch_smaller_than_the_world_is_dropped() -> None:
    shards = shard_batches(9, 4, torch.Generator().manual_seed(0), Launch(0, 2, 0))
    assert [len(index) for index, _ in shards] == [2, 2]     # 4, 4 split; the last 1 dropped


def test_launch_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert current_launch() == Launch()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not current_launch().distributed
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainingError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        current_launch()
    for key, value in (("RANK", "1"), ("LOCAL_RANK", "1"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29500")):
        monkeypatch.setenv(key, value)
    assert current_launch() == Launch(rank=1, world_size=2, local_rank=1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(TrainingError, match="outside"):
        current_launch()
