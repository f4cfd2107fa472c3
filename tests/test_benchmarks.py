"""The benchmark scripts still run (their --quick smoke modes); they assert no timings."""

from __future__ import annotations

import sys

import pytest
from helpers import load_script


def _load(name: str):
    return load_script(f"benchmarks/{name}.py", f"bench_{name}")


@pytest.mark.parametrize(("name", "argv", "expected"), [
    ("plan_quality", ["--quick"], ["Plan quality", "Cached re-plan", "FLOPs within 1.10x"]),
    ("execution", ["--quick", "--only", "tt", "--threads", "1"],
     ["TT-linear summary", "best TN peer", "rebuild-W"]),
    ("execution", ["--quick", "--only", "mps", "--threads", "1"],
     ["MPS classifier", "reference", "tngraph stepper", "infer GFLOP/s"]),
    ("decompose", ["--quick", "--threads", "1"],
     ["TT-SVD: tt_svd", "TT-rounding against the rank", "re-decomposing the dense tensor",
      "tt_linear summary", "tngraph-auto", "training step, tngraph (auto) <= nn.Linear"]),
    ("compile", ["--quick", "--backend", "aot_eager", "--threads", "1"],
     ["eager vs torch.compile", "train step", "eager/compiled"]),
    ("tt_toolbox", ["--quick", "--threads", "1"],
     ["TT-cross at equal ranks", "Ackley", "Heisenberg chain ground energy", "comparisons pass"]),
], ids=["plan_quality", "execution-tt", "execution-mps", "decompose", "compile", "tt_toolbox"])
def test_benchmark_quick_mode_runs(name: str, argv: list[str], expected: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert _load(name).main(argv) == 0
    out = capsys.readouterr().out
    for text in expected:
        assert text in out


def test_decompose_benchmark_runs_without_tltorch(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """tensorly-torch is optional: its rows say so and the other candidates still run."""
    monkeypatch.setitem(sys.modules, "tltorch", None)      # makes `import tltorch` fail
    assert _load("decompose").main(["--quick", "--only", "linear", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "tltorch not installed: skipped" in out
    assert "tt_linear summary" in out and "tngraph-net" in out


def test_accuracy_benchmark_quick_mode_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/accuracy.py --quick: tngraph, the reference and TensorKrowch each train the
    digits MPS classifier (bond 10, 3 epochs, one seed); the loop is checked against
    tngraph.train.train, and the reference (same initial cores) ends where tngraph does."""
    pytest.importorskip("tensorkrowch")
    assert _load("accuracy").main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("test accuracy % over seeds 0", "Test accuracy minus tngraph's", "tngraph",
                 "reference", "tensorkrowch", "wall times are"):
        assert text in out
    # the benchmark's loop must stay tngraph.train.train's (update accuracy.fit if train changes)
    assert ": same" in out
    row = next(line for line in out.splitlines() if "reference" in line and "PASS" in line[-8:]
               or "reference" in line and "FAIL" in line[-8:])
    assert row.rstrip().endswith("PASS")        # same model, other kernels: same accuracy
