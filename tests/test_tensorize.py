"""``tngraph.tensorize`` and ``tngraph tensorize``: dense linear layers of a trained pipeline
replaced by TT-layers (TT-SVD of their weights). Seed 001's TT-SVD of one weight is checked in
tests/test_decompose.py; here, whole pipelines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import tngraph
from tngraph import cli
from tngraph.decompose import max_ranks, tt_matrix_to_dense
from tngraph.spec import load_spec
from tngraph.tensorize import (
    TensorizeError,
    balanced_factors,
    choose_shapes,
    layer_shapes,
    linear_layers,
    spec_yaml,
    tensorize_spec,
)

ROOT = Path(__file__).resolve().parent.parent
MLP = str(ROOT / "models" / "mlp.yaml")
Capture = pytest.CaptureFixture[str]

SMALL = """
tngraph: 1
name: small
input_shape: [64]
layers:
  - {type: linear, name: fc1, out_features: 36}
  - {type: relu, name: act}
  - {type: linear, name: fc2, out_features: 10, bias: false}
"""


def exact_tt_weight(in_shape: tuple[int, ...], out_shape: tuple[int, ...], rank: int,
                    seed: int = 0) -> torch.Tensor:
    """A dense (out, in) weight whose TT-matrix ranks are exactly ``rank`` at every bond."""
    gen = torch.Generator().manual_seed(seed)
    r = [1] + [rank] * (len(in_shape) - 1) + [1]
    cores = [torch.randn(r[k], i, o, r[k + 1], generator=gen, dtype=torch.float64)
             for k, (i, o) in enumerate(zip(in_shape, out_shape))]
    return tt_matrix_to_dense(cores)


@pytest.fixture(scope="module")
def small() -> tuple[tngraph.Spec, dict[str, torch.Tensor]]:
    spec = load_spec(SMALL)
    return spec, tngraph.compile(spec, seed=3).state_dict()


def outputs(spec: tngraph.Spec, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    module = tngraph.compile(spec)
    module.load_state_dict(state)
    with torch.no_grad():
        return module(x)


# -- factorisations ------------------------------------------------------------------------------

def _lex_min_bruteforce(n: int, k: int) -> tuple[int, ...]:
    def all_factorisations(m: int, slots: int, cap: int):  # non-increasing tuples
        if slots == 1:
            if m <= cap:
                yield (m,)
            return
        for f in range(1, min(m, cap) + 1):
            if m % f == 0:
                for rest in all_factorisations(m // f, slots - 1, f):
                    yield (f, *rest)
    return min(all_factorisations(n, k, n))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_balanced_factors_is_the_most_balanced(k: int) -> None:
    for n in range(1, 300):
        got = balanced_factors(n, k)
        assert len(got) == k and math.prod(got) == n and list(got) == sorted(got, reverse=True)
        assert got == _lex_min_bruteforce(n, k), n


@pytest.mark.parametrize("n,k,expected", [
    (256, 4, (4, 4, 4, 4)), (4096, 4, (8, 8, 8, 8)), (64, 3, (4, 4, 4)), (784, 4, (7, 7, 4, 4)),
    (10, 4, (5, 2, 1, 1)), (13, 3, (13, 1, 1)), (1, 2, (1, 1)), (360, 3, (9, 8, 5)),
])
def test_balanced_factors_cases(n: int, k: int, expected: tuple[int, ...]) -> None:
    assert balanced_factors(n, k) == expected


@pytest.mark.parametrize("bad", [(0, 2), (12, 0), (2.5, 2), (True, 2)])
def test_balanced_factors_rejects_bad_input(bad: tuple) -> None:
    with pytest.raises(TensorizeError):
        balanced_factors(*bad)


@pytest.mark.parametrize("n_in,n_out,cores,expected", [
    (256, 256, None, ((4, 4, 4, 4), (4, 4, 4, 4))),
    (4096, 16, None, ((8, 8, 8, 8), (2, 2, 2, 2))),    # seed 004
    (64, 36, None, ((4, 4, 2, 2), (2, 2, 3, 3))),      # paired sizes 8, 8, 6, 6
    (256, 10, None, ((4, 4, 4, 4), (1, 1, 2, 5))),     # 10 has 2 prime factors: 1s
    (12, 7, None, ((3, 2, 2), (1, 1, 7))),
    (7, 5, None, ((7,), (5,))),
    (64, 256, 3, ((4, 4, 4), (4, 8, 8))),
])
def test_choose_shapes(n_in: int, n_out: int, cores: int | None, expected: tuple) -> None:
    assert choose_shapes(n_in, n_out, cores) == expected


def test_one_given_shape_fixes_the_number_of_factors() -> None:
    assert layer_shapes("fc", 256, 10, in_shape=[16, 16]) == ((16, 16), (2, 5))
    assert layer_shapes("fc", 256, 10, out_shape=[10]) == ((256,), (10,))


# -- the transformation -----------------------------------------------------------------------

def test_exact_tt_rank_round_trip(small: tuple) -> None:
    """A weight of exact TT-rank r, tensorized at rank r: the same pipeline outputs."""
    spec, state = small
    state = dict(state)
    w = exact_tt_weight((4, 4, 2, 2), (2, 2, 3, 3), rank=3)
    state["layers.fc1.weight"] = w.float()
    new_spec, new_state, rows = tensorize_spec(spec, state, ["fc1"], rank=3)
    (row,) = rows
    assert (row.in_shape, row.out_shape, row.ranks) == ((4, 4, 2, 2), (2, 2, 3, 3), (3, 3, 3))
    assert row.rel_error < 1e-6
    assert row.params_before == 64 * 36 + 36
    assert row.params_after == 8 * 3 + 9 * 8 + 9 * 6 + 3 * 6 + 36
    # the TT-layer's FLOPs per example are its plan's; at this size the plan (minimize: combo)
    # trades a few FLOPs for fewer entries written, so they are near the dense layer's
    assert row.flops_before == 2 * 64 * 36
    assert 0.5 * row.flops_before < row.flops_after < 1.1 * row.flops_before
    x = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    want, got = outputs(spec, state, x), outputs(new_spec, new_state, x)
    assert float((got - want).norm() / want.norm()) < 1e-5


def test_new_spec_and_weights(small: tuple) -> None:
    spec, state = small
    new_spec, new_state, _ = tensorize_spec(spec, state, ["fc1", "fc2"], rank=2,
                                            shapes={"fc2": ([6, 6], [2, 5])})
    assert new_spec.name == "small_tt"
    assert [(layer.name, layer.type) for layer in new_spec.layers] == [
        ("fc1", "network"), ("act", "relu"), ("fc2", "network")]
    assert new_spec.layers[0].template == {
        "template": "tt_linear", "in_shape": [4, 4, 2, 2], "out_shape": [2, 2, 3, 3],
        "ranks": 2, "bias": True}
    assert new_spec.layers[2].template["bias"] is False
    assert sorted(new_state) == [
        "layers.fc1.bias", *(f"layers.fc1.tensors.G{k}" for k in range(4)),
        "layers.fc2.tensors.G0", "layers.fc2.tensors.G1"]
    assert new_state["layers.fc1.bias"].shape == (2, 2, 3, 3)
    torch.testing.assert_close(new_state["layers.fc1.bias"].reshape(-1),
                               state["layers.fc1.bias"])
    assert all(v.dtype == torch.float32 for v in new_state.values())
    assert load_spec(spec_yaml(new_spec)) == new_spec        # what spec.yaml holds reloads
    assert linear_layers(new_spec) == []
    # only the named layers change
    partial_spec, partial_state, _ = tensorize_spec(spec, state, ["fc2"], eps=0.5)
    torch.testing.assert_close(partial_state["layers.fc1.weight"], state["layers.fc1.weight"])
    assert partial_spec.layers[0].type == "linear"


def test_error_decreases_as_rank_grows(small: tuple) -> None:
    spec, state = small
    errors, params = [], []
    for rank in (1, 2, 4, 8, 16, 64):
        (row,) = tensorize_spec(spec, state, ["fc1"], rank=rank).rows
        errors.append(row.rel_error)
        params.append(row.params_after)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert all(a < b for a, b in zip(params, params[1:]))
    assert errors[0] > 0.5 and errors[-1] < 1e-6              # rank 64 >= every bound: exact


def test_large_rank_is_clipped_with_a_note(small: tuple) -> None:
    spec, state = small
    (row,) = tensorize_spec(spec, state, ["fc1"], rank=20).rows
    assert row.ranks == (8, 20, 6)                           # bounds (8, 36, 6)
    assert max_ranks((8, 8, 6, 6)) == (8, 36, 6)
    assert len(row.notes) == 1 and "rank 20 clipped to [8, 20, 6]" in row.notes[0]


@pytest.mark.parametrize("eps", [0.05, 0.3, 0.6])
def test_eps_bounds_the_relative_error(small: tuple, eps: float) -> None:
    spec, state = small
    (row,) = tensorize_spec(spec, state, ["fc1"], eps=eps).rows
    assert row.rel_error <= eps + 1e-9
    (capped,) = tensorize_spec(spec, state, ["fc1"], eps=eps, rank=2).rows
    assert max(capped.ranks) <= 2


MULTI_AXIS = """
tngraph: 1
name: multi
input_shape: [4, 16]
layers: [{type: linear, name: fc, out_features: 8}]
"""


@pytest.mark.parametrize("kwargs,message,hint", [
    ({"layers": ["fc_1"], "rank": 2}, "spec 'small' has no layer 'fc_1'",
     "did you mean 'fc1'? linear layers: fc1, fc2"),
    ({"layers": ["act"], "rank": 2}, "layer 'act' is a 'relu' layer, not a dense linear layer",
     "linear layers: fc1, fc2"),
    ({"layers": [], "rank": 2}, "no layer to tensorize was named", "--layers"),
    ({"layers": ["fc1", "fc1"], "rank": 2}, "layer 'fc1' is named twice", None),
    ({"layers": ["fc1"]}, "give a TT-rank or an accuracy", "--rank R"),
    ({"layers": ["fc1"], "rank": 0}, "rank must be a positive integer, got 0", None),
    ({"layers": ["fc1"], "eps": -0.1}, "eps must be a finite number >= 0", None),
    ({"layers": ["fc1"], "rank": 2, "shapes": {"fc1": ([4, 4, 2], None)}},
     "layer 'fc1': in_shape 4,4,2 multiplies to 32 but the layer has 64 input features",
     "--in-shape 4,4,4"),
    ({"layers": ["fc1"], "rank": 2, "shapes": {"fc1": (None, [5, 7])}},
     "out_shape 5,7 multiplies to 35 but the layer has 36 output features", "6,6"),
    ({"layers": ["fc1"], "rank": 2, "shapes": {"fc1": ([8, 8], [2, 2, 9])}},
     "in_shape 8,8 has 2 factors but out_shape 2,2,9 has 3", "pad with 1s"),
    ({"layers": ["fc1"], "rank": 2, "shapes": {"fc1": ([64, 0], [36, 1])}},
     "in_shape must be a non-empty list of positive integers", None),
    ({"layers": ["fc1"], "rank": 2, "shapes": {"fc2": ([2, 18], [2, 5])}},
     "shapes given for layers that are not tensorized: fc2", None),
])
def test_bad_requests(small: tuple, kwargs: dict, message: str, hint: str | None) -> None:
    spec, state = small
    with pytest.raises(TensorizeError) as info:
        tensorize_spec(spec, state, **kwargs)
    assert info.value.message == message or info.value.message.startswith(message) \
        or message in info.value.message
    if hint is not None:
        assert hint in (info.value.hint or "")


def test_bad_models(small: tuple) -> None:
    spec, state = small
    with pytest.raises(TensorizeError, match="no 'layers.fc1.weight'"):
        tensorize_spec(spec, {k: v for k, v in state.items() if "fc1.weight" not in k},
                       ["fc1"], rank=2)
    with pytest.raises(TensorizeError, match=r"has shape \(36, 64\) but layer 'fc2' needs"):
        tensorize_spec(spec, {**state, "layers.fc2.weight": state["layers.fc1.weight"]},
                       ["fc2"], rank=2)
    multi = load_spec(MULTI_AXIS)
    with pytest.raises(TensorizeError, match=r"examples of shape \(4, 16\)"):
        tensorize_spec(multi, tngraph.compile(multi).state_dict(), ["fc"], rank=2)
    single = load_spec(ROOT / "models" / "tt_linear.yaml")
    with pytest.raises(TensorizeError, match="single tensor network, not a pipeline"):
        tensorize_spec(single, {}, ["G0"], rank=2)


# -- the command -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained mlp (hidden 16, one epoch) as tngraph train writes it."""
    run = tmp_path_factory.mktemp("tensorize") / "mlp16"
    assert cli.main(["train", MLP, "--set", "hidden=16", "--epochs", "1", "--lr", "0.02",
                     "--out", str(run)]) == 0
    return run


def run_cli(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_tensorize_then_fine_tune(trained_run: Path, capsys: Capture) -> None:
    capsys.readouterr()
    code, out, err = run_cli(capsys, "tensorize", str(trained_run), "--layers", "fc2",
                             "--rank", "2", "--data", "digits")
    assert code == 0, err
    out_dir = trained_run.with_name("mlp16-tt")                # the default --out
    assert {p.name for p in out_dir.iterdir()} >= {"spec.yaml", "model.safetensors",
                                                   "tensorize.json"}
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("layer"))
    assert header.split() == ["layer", "in", "->", "out", "ranks", "params", "TT", "params",
                              "compression", "rel.", "error", "FLOPs/ex", "TT", "FLOPs/ex"]
    row = next(line for line in lines if line.lstrip().startswith("fc2")).split()
    assert row[:7] == ["fc2", "2x2x2x2", "->", "2x2x2x2", "2,2,2", "272", "64"]
    assert row[7] == "4.2x" and row[9] == "512"
    report = json.loads((out_dir / "tensorize.json").read_text())
    metrics = report["metrics"]
    assert metrics["metric"] == "accuracy" and 0 <= metrics["after"] <= 1
    assert (f"digits test accuracy: {metrics['before']:.4f} before, {metrics['after']:.4f} "
            "after TT-SVD") in out
    assert f"fine-tune: tngraph train {out_dir / 'spec.yaml'} --init" in out
    assert report["layers"][0]["ranks"] == [2, 2, 2]
    # the output fine-tunes directly, and evaluates like any checkpoint
    code, _, err = run_cli(capsys, "train", str(out_dir / "spec.yaml"), "--init",
                           str(out_dir / "model.safetensors"), "--epochs", "1", "--out",
                           str(out_dir.with_name("mlp16-tt-ft")))
    assert code == 0, err
    summary = json.loads((out_dir.with_name("mlp16-tt-ft") / "summary.json").read_text())
    assert 0 <= summary["test"]["accuracy"] <= 1
    code, out, _ = run_cli(capsys, "eval", str(out_dir / "spec.yaml"), "--checkpoint",
                           str(out_dir / "model.safetensors"))
    assert code == 0 and f"accuracy {metrics['after']:.4f}" in out


def test_cli_tensorized_spec_keeps_the_runs_split(tmp_path: Path, capsys: Capture) -> None:
    """A run trained with --seed 3: the tensorized spec trains (fine-tunes) and tests on the
    seed-3 split, not the spec's default one (whose test examples the weights partly saw)."""
    run = tmp_path / "mlp-seed3"
    assert cli.main(["train", MLP, "--set", "hidden=16", "--epochs", "1", "--seed", "3",
                     "--out", str(run)]) == 0
    code, _, err = run_cli(capsys, "tensorize", str(run), "--layers", "fc2", "--rank", "2")
    assert code == 0, err
    tensorized = load_spec(tmp_path / "mlp-seed3-tt" / "spec.yaml")
    assert (tensorized.train.seed, tensorized.train.data) == (3, "digits")


def test_cli_spec_file_with_checkpoint(trained_run: Path, capsys: Capture) -> None:
    out_dir = trained_run.parent / "from-spec"
    code, out, err = run_cli(capsys, "tensorize", MLP, "--set", "hidden=16", "--checkpoint",
                             str(trained_run / "model.safetensors"), "--layers", "fc1,fc2",
                             "--eps", "0.5", "--out", str(out_dir))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.lstrip().startswith("fc")]
    assert [r[0] for r in rows] == ["fc1", "fc2"]
    assert all(float(r[8]) <= 0.5 for r in rows)             # relative error column
    assert load_spec(out_dir / "spec.yaml").layers[0].type == "network"


def test_cli_rank_clipping_note(trained_run: Path, capsys: Capture) -> None:
    code, out, err = run_cli(capsys, "tensorize", str(trained_run), "--layers", "fc2",
                             "--rank", "50", "--out", str(trained_run.parent / "clipped"))
    assert code == 0
    assert err.startswith("note: fc2: rank 50 clipped to [4, 16, 4]")


GOLDEN = [
    (["--layers", "fc_2", "--rank", "2"],
     "{run}: error: spec 'mlp' has no layer 'fc_2'\n"
     "  hint: did you mean 'fc2'? linear layers: fc1, fc2, fc3\n"),
    (["--layers", "conv", "--rank", "2"],
     "{run}: error: spec 'mlp' has no layer 'conv'\n  hint: linear layers: fc1, fc2, fc3\n"),
    (["--layers", "act1", "--rank", "2"],
     "{run}: error: layer 'act1' is a 'relu' layer, not a dense linear layer\n"
     "  hint: only linear layers can be tensorized; linear layers: fc1, fc2, fc3\n"),
    (["--rank", "2"],
     "{run}: error: no layer to tensorize was named\n"
     "  hint: name them with --layers NAME[,NAME]; linear layers: fc1, fc2, fc3\n"),
    (["--layers", "fc2"],
     "{run}: error: give a TT-rank or an accuracy\n"
     "  hint: --rank R (the same rank at every bond) or --eps E (relative error "
     "||W - W_tt|| <= E ||W|| per layer)\n"),
    (["--layers", "fc2", "--rank", "0"],
     "{run}: error: rank must be a positive integer, got 0\n  hint: for example --rank 8\n"),
    (["--layers", "fc2", "--rank", "2", "--in-shape", "4,4,2"],
     "{run}: error: layer 'fc2': in_shape 4,4,2 multiplies to 32 but the layer has 16 input "
     "features\n  hint: factor 16 into 3 factors, e.g. --in-shape 4,2,2, or leave --in-shape "
     "out to have it chosen\n"),
    (["--layers", "fc2", "--rank", "2", "--in-shape", "4,4", "--out-shape", "2,2,4"],
     "{run}: error: layer 'fc2': in_shape 4,4 has 2 factors but out_shape 2,2,4 has 3\n"
     "  hint: a TT-matrix pairs in_shape[k] with out_shape[k]: give both the same number of "
     "factors (pad with 1s)\n"),
    (["--layers", "fc2", "--rank", "2", "--in-shape", "4,a"],
     "{run}: error: --in-shape '4,a' is not a list of integers\n"
     "  hint: write it as comma-separated factors, e.g. --in-shape 4,4,4,4\n"),
]


@pytest.mark.parametrize("argv,expected", GOLDEN)
def test_cli_user_errors_golden(trained_run: Path, capsys: Capture, argv: list[str],
                                expected: str) -> None:
    code, out, err = run_cli(capsys, "tensorize", str(trained_run), *argv)
    assert code == 2 and out == ""
    assert err == expected.format(run=trained_run)


def test_cli_model_errors(trained_run: Path, capsys: Capture, tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "tensorize", MLP, "--layers", "fc2", "--rank", "2")
    assert code == 2 and "is a spec file; its trained weights are needed too" in err
    assert "hint: add --checkpoint RUN/model.safetensors" in err
    code, _, err = run_cli(capsys, "tensorize", str(tmp_path), "--layers", "fc2", "--rank", "2")
    assert code == 2 and "is not a tngraph run directory: no spec.yaml / model.safetensors" \
        in err
    code, _, err = run_cli(capsys, "tensorize", MLP, "--checkpoint",
                           str(trained_run / "model.safetensors"), "--layers", "fc2",
                           "--rank", "2")              # hidden 256 in the spec, 16 trained
    assert code == 2 and "has shape (16, 16) but layer 'fc2' needs (256, 256)" in err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "spec.yaml").write_text("")
    code, _, err = run_cli(capsys, "tensorize", str(trained_run), "--layers", "fc2", "--rank",
                           "2", "--out", str(taken))
    assert code == 2 and f"{taken} already holds spec.yaml" in err
