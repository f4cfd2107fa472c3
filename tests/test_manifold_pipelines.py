"""Chain strategies (riemannian, tangent, dmrg) on the tensor-network layers of a pipeline, Adam
on the rest (plugins/tngraph_plugins/layerwise.py): the same steps as on the network alone,
Adam's step on every other parameter, the layer choice and its refusals, exact resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import tngraph
from tngraph.cli import main
from tngraph.optimizers import NonFiniteLoss, OptimizerContext, get_optimizer
from tngraph.train import train
from tngraph_plugins.layerwise import LayerChoiceError, LayerwiseStepper
from tngraph_plugins.strategies import RiemannianOptions

DATA = "synthetic-regression?n_samples=64&n_features=8&n_informative=4&n_targets=2"
MPS = ("{template: mps, sites: 4, phys_dim: 2, bond_dim: 2, input: x, "
       "feature_map: multilinear, output_dim: 4}")
TT = "{template: tt_linear, in_shape: [2, 2], out_shape: [2, 2], ranks: 2, bias: true}"
RING = ("{template: mps, sites: 4, phys_dim: 2, bond_dim: 2, input: x, boundary: periodic, "
        "feature_map: multilinear, output_dim: 4}")
#: a linear layer, an MPS layer (dmrg can train it), a TT-layer (not dmrg), a linear head
PIPE = """\
tngraph: 1
name: pipe
input_shape: [8]
layers:
  - {{type: linear, name: pre, out_features: 4}}
  - {{type: network, name: mps, network: {mps}}}
  - {{type: network, name: tt, network: {tt}}}
  - {{type: linear, name: head, out_features: 2}}
plan: {{cache: false}}
train: {{data: "{data}", epochs: {epochs}, batch_size: 16, lr: 0.01, optimizer: {optimizer}}}
"""


def _pipe(epochs: int, optimizer: str) -> str:
    return PIPE.format(mps=MPS, tt=TT, data=DATA, epochs=epochs, optimizer=optimizer)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pipeline(layers: str, input_shape: int = 4) -> tngraph.Pipeline:
    text = (f"tngraph: 1\nname: p\ninput_shape: [{input_shape}]\nlayers:\n{layers}"
            "plan: {cache: false}\n")
    return tngraph.compile(text, cache=False, dtype="float64")


def _create(name: str, module, lr: float = 0.05, **options):
    strategy = get_optimizer(name)
    return strategy.create(module, strategy.options(**options), OptimizerContext(lr=lr))


def _mse(y: torch.Tensor):
    return lambda out: ((out - y) ** 2).mean()


@pytest.mark.parametrize(("name", "network", "options"), [
    ("riemannian", "{template: tt_linear, in_shape: [2, 2], out_shape: [2, 2], ranks: 2, "
     "bias: false}",
     {"momentum": 0.5}),
    ("tangent", "{template: tt_linear, in_shape: [2, 2], out_shape: [2, 2], ranks: 2, "
     "bias: false}", {}),
    ("dmrg", "{template: mps, sites: 4, phys_dim: 2, bond_dim: 2, input: x, "
     "feature_map: multilinear, output_dim: 4}", {"max_rank": 4}),
])
def test_a_pipeline_of_one_network_steps_as_the_network_alone(name: str, network: str,
                                                              options: dict) -> None:
    """The layer's steps in a pipeline are the strategy's steps on the network itself."""
    pipeline = _pipeline(f"  - {{type: network, name: net, network: {network}}}\n")
    alone = copy.deepcopy(pipeline.layers["net"])
    in_pipeline = _create(name, pipeline, **options)
    single = _create(name, alone, **options)
    assert isinstance(in_pipeline, LayerwiseStepper) and in_pipeline.adam is None
    x, y = torch.rand(6, 4, dtype=torch.float64), torch.rand(6, 4, dtype=torch.float64)
    for _ in range(4):
        a, _ = in_pipeline.step(x, _mse(y))
        b, _ = single.step(x, _mse(y))
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(in_pipeline.module(x), single.module(x))
    assert in_pipeline.describe()["layers"] == ["net"]


def test_every_other_parameter_takes_adams_step() -> None:
    """Convolution-like layers and the TT-layer's bias: exactly torch.optim.Adam's step with the
    run's lr and weight decay, from the gradient of the loss (the doubled network computes the
    same function); the TT-layer keeps its ranks."""
    pipeline = _pipeline(f"  - {{type: linear, name: pre, out_features: 4}}\n"
                         f"  - {{type: network, name: tt, network: {TT}}}\n"
                         "  - {type: linear, name: head, out_features: 2}\n", input_shape=3)
    reference = copy.deepcopy(pipeline)
    strategy = get_optimizer("riemannian")
    stepper = strategy.create(pipeline, strategy.options(layers="tt"),
                              OptimizerContext(lr=0.01, weight_decay=0.1))
    x, y = torch.rand(5, 3, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64)
    rest = [p for n, p in reference.named_parameters() if ".tensors." not in n]
    adam = torch.optim.Adam(rest, lr=0.01, weight_decay=0.1)
    _mse(y)(reference(x)).backward()
    adam.step()
    expected = float(_mse(y)(copy.deepcopy(pipeline)(x)).detach())
    loss, _ = stepper.step(x, _mse(y))
    assert float(loss) == pytest.approx(expected, rel=1e-12)    # the loss before the step
    after = dict(pipeline.named_parameters())
    moved = {n: p for n, p in reference.named_parameters() if ".tensors." not in n}
    assert set(moved) == {"layers.pre.weight", "layers.pre.bias", "layers.tt.bias",
                          "layers.head.weight", "layers.head.bias"}
    for n, p in moved.items():
        torch.testing.assert_close(after[n], p)
    assert stepper.describe()["adam"] == "pre, tt.bias, head"
    assert stepper.describe()["tt.ranks"] == [2]


def test_the_default_layers_are_the_chains_the_strategy_can_train() -> None:
    layers = (f"  - {{type: network, name: ring, network: {RING}}}\n"
              f"  - {{type: network, name: mps, network: {MPS}}}\n"
              f"  - {{type: network, name: tt, network: {TT}}}\n")
    assert _create("riemannian", _pipeline(layers)).describe()["layers"] == ["mps", "tt"]
    assert _create("dmrg", _pipeline(layers)).describe()["layers"] == ["mps"]


@pytest.mark.parametrize(("name", "layers", "message"), [
    ("riemannian", "mp",
     "optimizer riemannian: pipeline 'p' has no layer 'mp' (option layers); did you mean "
     "'mps'? valid: mps, tt"),
    ("tangent", "head",
     "optimizer tangent: pipeline 'p': layer 'head' (option layers) is a linear layer, not a "
     "tensor network; tangent trains the tensor-network layers of a pipeline whose network is "
     "a chain (TT-layers, MPS); the other parameters are stepped by Adam; valid: mps, tt"),
    ("riemannian", "tt,ring",
     "optimizer riemannian: pipeline 'p': layer 'ring' (option layers) cannot be trained by "
     "riemannian: network 'p.ring' is a ring (every node has two neighbours: A0 - A1 - A2 - "
     "A3); supported: an open chain of tensor nodes (each bonded to at most two others by one "
     "edge, no ring), e.g. the templates mps (boundary: open) and tt_linear, e.g. mps with "
     "boundary: open; valid: mps, tt"),
    ("dmrg", "tt",
     "optimizer dmrg: pipeline 'p': layer 'tt' (option layers) cannot be trained by dmrg: "
     "network 'p.tt': data port 'x' must be stacked (one copy per site) with a single leg; "
     "dmrg trains an open MPS-like chain with one data-port copy per site, e.g. template mps "
     "with input and boundary: open; valid: mps"),
])
def test_layers_that_cannot_be_trained_are_refused(name: str, layers: str,
                                                   message: str) -> None:
    pipeline = _pipeline(f"  - {{type: network, name: ring, network: {RING}}}\n"
                         f"  - {{type: network, name: mps, network: {MPS}}}\n"
                         f"  - {{type: network, name: tt, network: {TT}}}\n"
                         "  - {type: linear, name: head, out_features: 2}\n")
    with pytest.raises(LayerChoiceError) as info:
        _create(name, pipeline, layers=layers)
    assert str(info.value) == message


@pytest.mark.parametrize(("name", "network", "start", "end"), [
    ("tangent", RING, "optimizer tangent: pipeline 'p' has no tensor-network layer that tangent "
     "can train (layer 'net': network 'p.net' is a ring",
     "the other parameters are stepped by Adam. Train it with adam or sgd"),
    ("dmrg", TT, "optimizer dmrg: pipeline 'p' has no tensor-network layer that dmrg can train "
     "(layer 'net': network 'p.net': data port 'x' must be stacked",
     "dmrg trains the tensor-network layers of a pipeline whose network is an MPS-like chain "
     "fed site by site (template mps with input); the other parameters are stepped by Adam. "
     "Train it with riemannian or tangent (any chain), or adam"),
])
def test_a_pipeline_without_a_trainable_network_is_refused(name: str, network: str, start: str,
                                                           end: str) -> None:
    pipeline = _pipeline(f"  - {{type: network, name: net, network: {network}}}\n"
                         "  - {type: linear, name: head, out_features: 2}\n")
    with pytest.raises(LayerChoiceError) as info:
        _create(name, pipeline)
    assert str(info.value).startswith(start) and str(info.value).endswith(end)


def test_layer_options_on_a_single_network_are_refused() -> None:
    module = tngraph.compile(f"tngraph: 1\nname: net\nnetwork: {TT}\n", cache=False)
    with pytest.raises(LayerChoiceError) as info:
        _create("dmrg", module, layer_lr=0.1)
    assert str(info.value) == (
        "optimizer dmrg: option layer_lr (0.1) selects layers of a pipeline, but 'net' is a "
        "single network, trained as one chain; drop layer_lr (the run's lr is the step)")


@pytest.mark.parametrize(("value", "error"), [
    ("", "expected one or more layer names"), ("fc1,,fc2", "expected one or more layer names"),
    ("fc1,fc1", "a layer is named twice"),
])
def test_the_layers_option_is_checked(value: str, error: str) -> None:
    assert RiemannianOptions(layers=" fc1 , fc2").layers == ("fc1", "fc2")
    with pytest.raises(ValueError, match=error):
        RiemannianOptions(layers=value)


def test_a_non_finite_loss_changes_nothing() -> None:
    pipeline = _pipeline(f"  - {{type: linear, name: pre, out_features: 4}}\n"
                         f"  - {{type: network, name: mps, network: {MPS}}}\n")
    stepper = _create("dmrg", pipeline)
    before = {k: v.clone() for k, v in pipeline.state_dict().items()}
    state = stepper.state_dict()
    with pytest.raises(NonFiniteLoss):
        stepper.step(torch.rand(4, 4, dtype=torch.float64), lambda o: o.sum() * float("nan"))
    assert all(torch.equal(before[k], v) for k, v in stepper.module.state_dict().items())
    assert stepper.state_dict()["layers"]["mps"]["bond"] == state["layers"]["mps"]["bond"]


@pytest.mark.parametrize(("optimizer", "layers"), [
    ("{name: riemannian, layers: tt, momentum: 0.5, layer_lr: 0.1}", ["tt"]),
    ("{name: tangent, layer_lr: 0.05}", ["mps", "tt"]),
    ("{name: dmrg, steps_per_bond: 2, max_rank: 4}", ["mps"]),
])
def test_resume_continues_exactly(optimizer: str, layers: list[str], tmp_path: Path) -> None:
    """2 epochs == 1 epoch + resume (dmrg: the epoch of 3 batches ends inside a bond with Adam
    moments in flight, the bond dimensions grow and the pipeline's spec.yaml records them)."""
    whole = train(_pipe(2, optimizer), run_dir=tmp_path / "whole",
                  echo=None)
    train(_pipe(2, optimizer), run_dir=tmp_path / "part", epochs=1, echo=None)
    state = torch.load(tmp_path / "part" / "state.pt", weights_only=True)["stepper"]
    assert list(state["layers"]) == layers and state["adam"]["optimizer"]["state"]
    if "dmrg" in optimizer:
        assert state["layers"]["mps"]["count"] == 1 and state["layers"]["mps"]["moments"]
        assert state["layers"]["mps"]["bond_dims"] != [2, 2, 2]
        assert "r: 4" in (tmp_path / "part" / "spec.yaml").read_text()
    resumed = train(resume=tmp_path / "part", epochs=2, echo=None)

    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "spec.yaml").read_text() == \
        (tmp_path / "part" / "spec.yaml").read_text()
    assert [h.train_loss for h in whole.history] == [h.train_loss for h in resumed.history]
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["optimizer"]["adam"].startswith("pre")


def test_cli_refuses_a_layer_with_exit_code_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "pipe.yaml"
    spec.write_text(_pipe(1, "adam"))
    code = main(["train", str(spec), "--optimizer", "riemannian?layers=head,tt",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "layer 'head' (option layers) is a linear layer, not a tensor network" in err
    assert "internal error" not in err
