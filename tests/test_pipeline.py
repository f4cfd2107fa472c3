"""Pipeline specs (``layers:``): compile, report, CLI, training, and every shipped model trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import MODELS

import tngraph
from tngraph.cli import main
from tngraph.data import load_dataset
from tngraph.errors import CompileError
from tngraph.train import TrainingError, train

PIPE = """\
tngraph: 1
name: pipe
params: {hidden: 6}
input_shape: [64]
layers:
  - {type: reshape, shape: [1, 8, 8]}
  - {type: conv2d, name: conv, out_channels: 2, kernel_size: 3, padding: 1}
  - relu
  - {type: maxpool, kernel_size: 2}
  - flatten
  - sigmoid
  - type: network
    name: mps
    network: {template: mps, sites: 32, phys_dim: 2, bond_dim: 3, input: x,
              feature_map: multilinear, output_dim: "${hidden}"}
  - {type: batchnorm, name: norm}
  - {type: linear, name: head, out_features: 10}
train: {epochs: 2, batch_size: 128, lr: 0.01}
"""


@pytest.fixture()
def pipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(PIPE)
    return path


def test_compile_gives_named_layers_and_state_dict_keys(pipe_file: Path) -> None:
    pipe = tngraph.compile(pipe_file, cache=False)
    assert isinstance(pipe, tngraph.Pipeline)
    assert list(pipe.layers) == ["reshape0", "conv", "relu2", "maxpool3", "flatten4", "sigmoid5",
                                 "mps", "norm", "head"]
    assert pipe.shapes["maxpool3"] == (2, 4, 4) and pipe.output_shape == (10,)
    assert isinstance(pipe.layers["mps"], tngraph.TNModule)
    keys = set(pipe.state_dict())
    assert {"layers.conv.weight", "layers.mps.tensors.A0", "layers.head.bias",
            "layers.norm.running_mean"} <= keys
    assert tuple(pipe(torch.rand(5, 8, 8)).shape) == (5, 10)   # any shape with 64 entries


def test_same_seed_same_weights_and_global_rng_untouched(pipe_file: Path) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = tngraph.compile(pipe_file, cache=False, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    b = tngraph.compile(pipe_file, cache=False, seed=4)
    c = tngraph.compile(pipe_file, cache=False, seed=5)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.state_dict()["layers.conv.weight"],
                           c.state_dict()["layers.conv.weight"])


def test_float64_pipeline(pipe_file: Path) -> None:
    pipe = tngraph.compile(pipe_file, cache=False, dtype="float64")
    assert all(p.dtype == torch.float64 for p in pipe.parameters())
    assert pipe(torch.rand(3, 64)).dtype == torch.float64


def test_wrong_input_size_is_a_clear_error(pipe_file: Path) -> None:
    pipe = tngraph.compile(pipe_file, cache=False)
    with pytest.raises(CompileError, match=r"takes examples of shape \(64,\) \(64 entries\)"):
        pipe(torch.rand(2, 63))


def test_report_text_and_json(pipe_file: Path) -> None:
    pipe = tngraph.compile(pipe_file, cache=False)
    text = pipe.report()
    assert text.startswith("tngraph pipeline report: pipe")
    assert "tngraph cost report: pipe.mps (template mps)" in text
    data = json.loads(pipe.report("json"))
    rows = {r["name"]: r for r in data["layers"]}
    assert rows["conv"]["params"] == 2 * 9 + 2 and rows["conv"]["shape"] == [2, 8, 8]
    assert rows["head"]["params"] == 6 * 10 + 10
    assert data["params"] == sum(p.numel() for p in pipe.parameters())
    tt = tngraph.compile(Path(__file__).parents[1] / "models" / "mlp_tt.yaml", cache=False)
    tt_data = json.loads(tt.report("json"))         # network layers with a bias, counted once
    assert tt_data["params"] == sum(p.numel() for p in tt.parameters())
    assert data["networks"]["mps"]["params"] == rows["mps"]["params"]
    assert data["output_shape"] == [10]


def test_cli_compile_expand_and_save(pipe_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["compile", str(pipe_file), "--no-cache"]) == 0
    assert "tngraph pipeline report: pipe" in capsys.readouterr().out
    assert main(["expand", str(pipe_file)]) == 0
    raw = capsys.readouterr().out
    again = tmp_path / "again.yaml"
    again.write_text(raw)
    assert tngraph.load_spec(again).to_raw() == tngraph.load_spec(pipe_file).to_raw()
    weights = tmp_path / "w.safetensors"
    assert main(["compile", str(pipe_file), "--no-cache", "--save", str(weights)]) == 0
    assert weights.is_file()


def test_train_resume_and_eval_a_pipeline(pipe_file: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    first = train(pipe_file, run_dir=run, echo=None, epochs=1)
    resumed = train(resume=run, echo=None, epochs=2)
    full = train(pipe_file, run_dir=tmp_path / "full", echo=None, epochs=2)
    assert len(resumed.history) == 2
    assert first.history[0].train_loss == full.history[0].train_loss
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in full.history]
    assert resumed.test == full.test
    assert main(["eval", str(pipe_file), "--checkpoint", str(run / "model.safetensors")]) == 0
    assert f"accuracy {full.test['accuracy']:.4f}" in capsys.readouterr().out


def test_pipeline_input_shape_must_fit_the_data(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("tngraph: 1\nname: p\ninput_shape: [32]\n"
                    "layers: [{type: linear, out_features: 10}]\n")
    with pytest.raises(TrainingError, match=r"takes examples of shape \[32\] .* 64 features"):
        train(path, run_dir=tmp_path / "r", echo=None)


#: small settings of each classifier so that a few steps run in seconds
SMALL = {"mps_classifier": {"bond_dim": 4}, "two_mps": {"bond_dim": 4, "hidden": 6},
         "cnn_mps": {"bond_dim": 4}, "peps_classifier": {"bond_dim": 2},
         "tree_classifier": {}, "ring_classifier": {"bond_dim": 4}}
#: the digits classifiers (cnn_tt_cifar takes 3 x 32 x 32 images: its own test is in
#: test_models.py)
CLASSIFIERS = [pytest.param(p, id=p.stem) for p in MODELS
               if ("output_dim: 10" in p.read_text() or "out_features: 10" in p.read_text())
               and "cifar" not in p.stem]


def test_every_classifier_is_covered() -> None:
    assert {p.values[0].stem for p in CLASSIFIERS} == {
        "mps_classifier", "two_mps", "cnn_mps", "cnn_teacher", "cnn_tt", "mlp", "mlp_tt",
        "peps_classifier", "tree_classifier", "ring_classifier"}


@pytest.mark.parametrize("path", CLASSIFIERS)
def test_shipped_classifier_loss_decreases_on_digits(path: Path) -> None:
    """A few epochs' worth of Adam steps at the spec's own learning rate lower the loss."""
    spec = tngraph.load_spec(path, SMALL.get(path.stem))
    model = tngraph.compile(spec, cache=False, batch_size=64, optimize="greedy")
    x, y = load_dataset("digits").split("train")
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=spec.train.lr)
    losses = []
    for _ in range(60):
        index = torch.randint(0, x.shape[0], (64,), generator=gen)
        out = model(x[index]).reshape(64, -1)
        loss = torch.nn.functional.cross_entropy(out, y[index])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


def test_cli_validate_summarises_a_pipeline(pipe_file: Path, capsys) -> None:
    assert main(["validate", str(pipe_file)]) == 0
    out = capsys.readouterr().out
    assert "ok (pipe, pipeline: 9 layers, 1 networks, [64] -> [10]," in out
