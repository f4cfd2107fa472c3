"""Every example spec in models/ loads, validates, plans, compiles and matches the oracle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CUDA, MODELS, assert_matches, dense_oracle, random_inputs

import tngraph
from tngraph.graph import parameter_count

#: overrides that keep a model cheap enough for the test suite (still the same structure)
OVERRIDES: dict[str, dict[str, object]] = {"mps_classifier": {"bond_dim": 4},
                                            "two_mps": {"bond_dim": 3, "hidden": 6},
                                            "cnn_mps": {"bond_dim": 3},
                                            "peps_classifier": {"rows": 3, "cols": 3,
                                                                "bond_dim": 2},
                                            "tree_classifier": {"sites": 6, "bond_dim": 3},
                                            "ring_classifier": {"sites": 5, "bond_dim": 3},
                                            "tt_embedding": {"rank": 3}}
#: expected (output shape without batch, has inputs) of each model at its test overrides
SHAPES: dict[str, tuple[tuple[int, ...], bool]] = {
    "mpo": ((2,) * 6, True),
    "mps": ((2,) * 10, False),
    "mps_classifier": ((10,), True),
    "peps": ((), False),
    "peps_classifier": ((10,), True),
    "tree_classifier": ((10,), True),
    "ring_classifier": ((10,), True),
    "tt_embedding": ((16,), True),
    "ring3": ((3, 4, 3), False),
    "tt_linear": ((16,), True),
    "two_mps": ((10,), True),
    "cnn_mps": ((10,), True),
    "cnn_teacher": ((10,), True),
    "cnn_tt": ((10,), True),
    "cnn_tt_cifar": ((10,), True),
    "mlp": ((10,), True),
    "mlp_tt": ((10,), True),
}
MODEL_PARAMS = [pytest.param(path, id=path.stem) for path in MODELS]
NETWORK_MODELS = [p for p in MODEL_PARAMS if "layers:" not in p.values[0].read_text()]
PIPELINE_MODELS = [p for p in MODEL_PARAMS if "layers:" in p.values[0].read_text()]


def test_every_model_is_covered() -> None:
    assert {p.stem for p in MODELS} == set(SHAPES)


@pytest.mark.parametrize("path", MODEL_PARAMS)
def test_model_loads_and_validates(path: Path) -> None:
    spec = tngraph.load_spec(path, OVERRIDES.get(path.stem))
    assert spec.name == path.stem
    if spec.is_pipeline:
        networks = [layer.name for layer in spec.layers if layer.network is not None]
        assert all(parameter_count(spec.network_spec(n)) > 0 for n in networks)
    else:
        assert spec.network.nodes
        assert parameter_count(spec) > 0


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad"])
@pytest.mark.parametrize("path", NETWORK_MODELS)
def test_model_matches_oracle(path: Path, grad: bool) -> None:
    """With autograd, and without (a second call runs in the kept inference workspace)."""
    module = tngraph.compile(path, OVERRIDES.get(path.stem), optimize="greedy", dtype="float64",
                             cache=False, batch_size=8)
    shape, has_inputs = SHAPES[path.stem]
    assert bool(module.input_names) == has_inputs
    assert module.plan.path_finder == "greedy"
    assert module.plan.over_limit == ()
    inputs = random_inputs(module, 3, seed=len(path.stem))
    with torch.set_grad_enabled(grad):
        out = module(**inputs)
        if not grad:
            out = module(**inputs)
    assert tuple(out.shape) == ((3,) if has_inputs else ()) + shape
    assert torch.isfinite(out).all()
    assert_matches(out, dense_oracle(module, inputs))


@pytest.mark.parametrize("path", PIPELINE_MODELS)
def test_pipeline_model_matches_oracle(path: Path) -> None:
    """Run layer by layer; every network layer's output equals its dense einsum oracle."""
    pipe = tngraph.compile(path, OVERRIDES.get(path.stem), optimize="greedy", dtype="float64",
                           cache=False, batch_size=8).eval()
    shape, _ = SHAPES[path.stem]
    x = torch.rand(3, *pipe.input_shape, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(1))
    out = pipe(x)
    assert tuple(out.shape) == (3, *shape) and tuple(pipe.output_shape) == shape
    h = x.reshape(3, *pipe.input_shape)
    networks = 0
    for name, layer in pipe.layers.items():
        if isinstance(layer, tngraph.TNModule):
            expected = dense_oracle(layer, {layer.input_names[0]: h})
            if layer.spec.network.flatten_outputs:
                expected = expected.reshape(3, -1)
            assert_matches(layer(h), expected)
            h = expected
            networks += 1
        else:
            h = layer(h)
        assert tuple(h.shape[1:]) == pipe.shapes[name], name
    assert networks == sum(layer.network is not None for layer in pipe.spec.layers)
    assert_matches(out, h)


@pytest.mark.parametrize("path", MODEL_PARAMS)
def test_model_gradients(path: Path) -> None:
    module = tngraph.compile(path, OVERRIDES.get(path.stem), optimize="greedy", dtype="float64",
                             cache=False, batch_size=8)
    inputs = ({"x": torch.rand(2, *module.input_shape)}
              if isinstance(module, tngraph.Pipeline) else random_inputs(module, 2))
    module(**inputs).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("path", MODEL_PARAMS)
def test_model_runs_wherever_its_parameters_are(path: Path) -> None:
    """Moved to another device (``meta``: shapes only, runs on any machine), the model runs
    forward and backward, in train and eval mode, without touching the CPU: a tensor that the
    executor, a feature map or a layer made on the CPU would be refused next to the moved ones,
    as on a GPU."""
    module = tngraph.compile(path, OVERRIDES.get(path.stem), optimize="greedy", cache=False,
                             batch_size=8).to("meta")
    inputs = ({"x": torch.rand(5, *module.input_shape)}
              if isinstance(module, tngraph.Pipeline) else random_inputs(module, 5))
    inputs = {k: v.to("meta") for k, v in inputs.items()}
    module(**inputs).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.device.type == "meta", name
    module.eval()
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            out = module(**inputs)
        assert out.device.type == "meta"
    assert tuple(out.shape) == ((5,) if SHAPES[path.stem][1] else ()) + SHAPES[path.stem][0]


@CUDA
@pytest.mark.parametrize("path", MODEL_PARAMS)
def test_model_on_a_gpu_matches_the_cpu(path: Path) -> None:
    module = tngraph.compile(path, OVERRIDES.get(path.stem), optimize="greedy", dtype="float64",
                             cache=False, batch_size=8).eval()
    inputs = {"x": torch.rand(5, *module.input_shape, dtype=torch.float64)} \
        if isinstance(module, tngraph.Pipeline) else random_inputs(module, 5)
    expected = module(**inputs)
    expected.sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    module.zero_grad(set_to_none=True)
    module.to("cuda")
    out = module(**{k: v.cuda() for k, v in inputs.items()})
    out.sum().backward()
    torch.testing.assert_close(out.cpu(), expected)
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.grad.cpu(), grads[name], msg=name)


def test_mps_classifier_full_size_plans() -> None:
    """The 64-site classifier at its declared bond dimension plans (cost only, no forward)."""
    module = tngraph.compile(MODELS[[p.stem for p in MODELS].index("mps_classifier")],
                             optimize="greedy", cache=False)
    plan = module.plan
    assert plan.batch_size == 256
    assert len(plan.problem.terms) == 128
    assert len(plan.steps) == 127
    assert tuple(module.tensors["A32"].shape) == (20, 2, 20, 10)   # bond 20, label leg 10
