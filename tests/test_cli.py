"""The command line, in-process through ``tngraph.cli.main(argv) -> int``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tngraph import cli
from tngraph.spec import load_spec

ROOT = Path(__file__).parent.parent
MODELS = sorted((ROOT / "models").glob("*.yaml"))
RING3 = str(ROOT / "models" / "ring3.yaml")
Capture = pytest.CaptureFixture[str]


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def compile_args(tmp_path: Path, *extra: str, spec: str = RING3) -> list[str]:
    return ["compile", spec, "--optimize", "greedy", "--cache-dir", str(tmp_path / "cache"),
            *extra]


# -- validate ----------------------------------------------------------------------------------

def test_validate_ok(capsys: Capture) -> None:
    code, out, err = run(capsys, "validate", RING3)
    assert code == 0 and err == ""
    assert out == (f"{RING3}: ok (ring3, raw: 3 nodes, 3 edges, 0 inputs, 186 parameters)\n")


def test_validate_template_with_set(capsys: Capture) -> None:
    path = str(ROOT / "models" / "mps.yaml")
    code, out, _ = run(capsys, "validate", path, "--set", "sites=3", "--set", "bond_dim=2")
    assert code == 0
    assert "ok (mps, mps: 3 nodes, 2 edges, 0 inputs, 16 parameters)" in out


@pytest.mark.parametrize("argv,expected", [
    (["validate", "no/such/spec.yaml"], "error: no such file: no/such/spec.yaml"),
    (["validate", RING3, "--set", "chi"], "error: --set expects key=value, got 'chi'"),
    (["validate", RING3, "--set", "chj=3"], ":5:1: error: --set chj: the spec has no parameter"),
    (["validate", RING3, "--set", "chi=0"], ":8:25: error: network.nodes.A.legs.a: dimension"),
])
def test_validate_user_errors(capsys: Capture, argv: list[str], expected: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert expected in err


def test_directory_is_a_user_error(capsys: Capture, tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", str(tmp_path))
    assert code == 2 and "is a directory" in err


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["validate"], ["compile", RING3,
                                                                     "--format", "xml"]])
def test_usage_errors_exit_2(capsys: Capture, argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and "usage:" in err


def test_help_exits_0(capsys: Capture) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "validate" in out and "compile" in out


# -- compile -----------------------------------------------------------------------------------

def test_compile_text_report_and_plan_cache(capsys: Capture, tmp_path: Path) -> None:
    code, first, err = run(capsys, *compile_args(tmp_path))
    assert code == 0 and err == ""
    for row in ("parameters", "FLOPs (planned)", "FLOPs (naive single einsum)",
                "largest intermediate", "compression", "contraction steps"):
        assert row in first, row
    assert "186" in first
    assert [line.split()[-1] for line in first.splitlines() if "plan cache" in line] == ["miss"]
    code, second, _ = run(capsys, *compile_args(tmp_path))
    assert code == 0
    assert [line.split()[-1] for line in second.splitlines() if "plan cache" in line] == ["hit"]
    assert any(p.suffix == ".json" for p in (tmp_path / "cache").iterdir())


def test_no_cache_searches_again(capsys: Capture, tmp_path: Path) -> None:
    run(capsys, *compile_args(tmp_path))
    code, out, _ = run(capsys, *compile_args(tmp_path, "--no-cache"))
    assert code == 0
    assert [line.split()[-1] for line in out.splitlines() if "plan cache" in line] == ["miss"]


def test_compile_json(capsys: Capture, tmp_path: Path) -> None:
    code, out, _ = run(capsys, *compile_args(tmp_path, "--format", "json"))
    assert code == 0
    data = json.loads(out)
    assert {"params", "flops", "naive_flops", "largest_intermediate", "steps"} <= set(data)
    assert data["params"] == 186
    assert data["flops"] <= data["naive_flops"]
    assert len(data["steps"]) == 2      # three tensors: two pairwise contractions
    assert data["largest_intermediate"]["elements"] > 0


def test_compile_with_overrides_changes_costs(capsys: Capture, tmp_path: Path) -> None:
    _, out, _ = run(capsys, *compile_args(tmp_path, "--format", "json", "--set", "chi=2"))
    assert json.loads(out)["params"] == 3 * 2 * 2 + 2 * 4 * 6 + 6 * 3 * 2


def test_compile_save_safetensors(capsys: Capture, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    target = tmp_path / "out.safetensors"
    code, _, err = run(capsys, *compile_args(tmp_path, "--save", str(target)))
    assert code == 0 and f"weights written to {target}" in err
    tensors = load_file(str(target))
    assert set(tensors) == {"tensors.A", "tensors.B", "tensors.C"}
    assert tuple(tensors["tensors.A"].shape) == (3, 5, 2)
    with safe_open(str(target), "pt") as handle:
        metadata = handle.metadata()
    assert load_spec(metadata["tngraph_spec"]).network == load_spec(RING3).network
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_compile_save_into_missing_folder(capsys: Capture, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.safetensors"
    code, _, err = run(capsys, *compile_args(tmp_path, "--save", str(target)))
    assert code == 2 and "does not exist" in err
    assert not target.parent.exists()


@pytest.mark.parametrize(("target", "message"), [
    ("folder", "cannot write {target}: it is a folder, not a regular file; name a file to write"),
    ("/dev/null", "cannot write /dev/null: it is a character device, not a regular file"),
    ("readonly/w.safetensors", "cannot write {target}: Read-only file system"),
])
def test_compile_save_onto_what_cannot_be_written(capsys: Capture, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, target: str,
                                                  message: str) -> None:
    import errno

    (tmp_path / "folder").mkdir()
    (tmp_path / "readonly").mkdir()
    real_open = os.open

    def read_only(path: str, *args: object, **kwargs: object) -> int:
        if str(path).startswith(str(tmp_path / "readonly")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    path = target if target.startswith("/") else str(tmp_path / target)
    code, _, err = run(capsys, *compile_args(tmp_path, "--save", path))
    assert code == 2 and "Traceback" not in err
    assert f"error: {message.format(target=path)}" in err, err
    assert (tmp_path / "folder").is_dir() and os.listdir(tmp_path / "readonly") == []


def test_time_budget_exceeded(capsys: Capture, tmp_path: Path) -> None:
    code, out, err = run(capsys, *compile_args(tmp_path, "--time-budget", "1e-9s"))
    assert code == 2 and "OVER BUDGET" in out
    assert ("error: one contraction needs about" in err and "over the time budget of under 1 µs"
            in err and "hint: raise --time-budget" in err), err
    code, _, err = run(capsys, *compile_args(tmp_path, "--time-budget", "soon"))
    assert code == 2 and "cannot read time budget 'soon'; write e.g. 30s, 2h" in err


def test_memory_limit_exceeded(capsys: Capture, tmp_path: Path) -> None:
    code, out, err = run(capsys, *compile_args(tmp_path, "--memory-limit", "100B"))
    assert code == 2
    assert "FLOPs (planned)" in out                 # the report is still printed
    assert "OVER LIMIT" in out
    assert f"{RING3}: error: " in err and "over the memory limit of 100 B" in err


@pytest.mark.parametrize("argv,expected", [
    (["--memory-limit", "foo"], "cannot read memory limit 'foo'"),
    (["--memory-limit=-5MB"], "cannot read memory limit"),
    (["--optimize", "foo"], "unknown path finder 'foo' (plan.optimize); valid: auto"),
    (["--batch-size", "0"], "invalid plan option"),
])
def test_bad_plan_options(capsys: Capture, tmp_path: Path, argv: list[str],
                          expected: str) -> None:
    code, out, err = run(capsys, *compile_args(tmp_path, *argv))
    assert code == 2
    assert expected in err
    if "path finder" in expected:
        assert "greedy" in err


def test_compile_bad_spec_is_exit_2(capsys: Capture, tmp_path: Path) -> None:
    bad = ROOT / "tests" / "specs" / "bad" / "edge_dim_mismatch.yaml"
    code, out, err = run(capsys, *compile_args(tmp_path, spec=str(bad)))
    assert code == 2 and out == ""
    assert f"{bad}:9:7: error: edge joins A.a (dim 3) to B.a (dim 4)" in err


# -- expand, templates -------------------------------------------------------------------------

@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_expand_round_trip(capsys: Capture, tmp_path: Path, path: Path) -> None:
    code, text, err = run(capsys, "expand", str(path))
    assert code == 0 and err == ""
    assert "${" not in text and "template:" not in text
    again = load_spec(text)
    assert again.network == load_spec(path).network
    raw = tmp_path / path.name
    raw.write_text(text)
    code, text2, _ = run(capsys, "expand", str(raw))
    assert code == 0 and text2 == text


def test_expand_applies_overrides(capsys: Capture) -> None:
    code, text, _ = run(capsys, "expand", RING3, "--set", "chi=7")
    assert code == 0
    assert load_spec(text).network.nodes["A"].legs["a"] == 7


def test_templates_command(capsys: Capture) -> None:
    code, out, _ = run(capsys, "templates")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert {"mps", "mpo", "tt_linear", "peps"} <= set(names)
    assert "bond_dim" in out


def test_internal_error_is_exit_1(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("tngraph.cli.load_spec", broken)
    code, _, err = run(capsys, "validate", RING3)
    assert code == 1
    assert "internal error: RuntimeError: boom" in err and "--debug" in err
    code = cli.main(["validate", RING3, "--debug"])
    assert code == 1
    assert "Traceback" in capsys.readouterr().err


def test_out_of_memory_is_a_user_error(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 2.91 PiB")

    monkeypatch.setattr("tngraph.cli.load_spec", exhausted)
    code, _, err = run(capsys, "validate", RING3)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("tngraph: error: out of memory (Unable to allocate 2.91 PiB); lower "
                          "--batch-size")


def test_user_errors_are_printed_by_rank_0_only(tmp_path, monkeypatch, capsys) -> None:
    missing = str(tmp_path / "missing.yaml")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["validate", missing]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["validate", missing]) == 2
    assert "missing.yaml" in capsys.readouterr().err


@pytest.mark.parametrize(("run_path", "expected"), [("auto", "fused"), ("fused", "fused"),
                                                    ("min-flops", "min-flops")])
def test_compile_run_path(capsys: Capture, tmp_path: Path, run_path: str,
                          expected: str) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text("tngraph: 1\nname: c\nnetwork: {template: mps, sites: 24, phys_dim: 2, "
                    "bond_dim: 8, input: x, feature_map: multilinear, output_dim: 3}\n")
    code, out, _ = run(capsys, "compile", str(spec), "--max-repeats", "16", "--no-cache",
                       "--format", "json", "--run-path", run_path)
    assert code == 0
    data = json.loads(out)
    assert data["path"] == expected
    assert (data["executed_flops"] > data["flops"]) == (expected == "fused")


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_spec_beside_resume_is_refused(capsys: Capture, tmp_path: Path, command: str) -> None:
    """--resume continues a run with its own spec.yaml: a spec given too would be ignored."""
    code, _, err = run(capsys, command, "models/mps.yaml", "--resume", str(tmp_path))
    assert code == 2
    assert f"--resume {tmp_path} continues that run with its own spec.yaml; drop " \
           "models/mps.yaml" in err


def test_the_mnist_hint_is_a_flag_the_shipped_classifier_takes(capsys: Capture) -> None:
    assert run(capsys, "validate", "models/mps_classifier.yaml", "--set", "sites=784")[0] == 0


def test_plugins_list_shows_a_version_for_every_built_in(capsys: Capture) -> None:
    from importlib.metadata import version

    code, out, _ = run(capsys, "plugins", "list")
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(
        ("linear ", "conv2d ", "relu ", "mps ", "adam ", "digits "))]
    assert code == 0 and len(rows) >= 5, out
    assert all(row[-2] == version("tngraph") and row[-1] == "ok" for row in rows), rows
