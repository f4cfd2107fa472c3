"""Every example spec in models/ loads, validates, plans, compiles and matches the oracle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import MODELS, assert_matches, dense_oracle, random_inputs

import tngraph
from tngraph.graph import parameter_count

#: overrides that keep a model cheap enough for the test suite (still the same structure)
OVERRIDES: dict[str, dict[str, object]] = {"mps_classifier": {"bond_dim": 4}}
#: expected (output shape without batch, has inputs) of each model at its test overrides
SHAPES: dict[str, tuple[tuple[int, ...], bool]] = {
    "mpo": ((2,) * 6, True),
    "mps": ((2,) * 10, False),
    "mps_classifier": ((10,), True),
    "peps": ((), False),
    "ring3": ((3, 4, 3), False),
    "tt_linear": ((16,), True),
}
MODEL_PARAMS = [pytest.param(path, id=path.stem) for path in MODELS]


def test_every_model_is_covered() -> None:
    assert {p.stem for p in MODELS} == set(SHAPES)


@pytest.mark.parametrize("path", MODEL_PARAMS)
def test_model_loads_and_validates(path: Path) -> None:
    spec = tngraph.load_spec(path, OVERRIDES.get(path.stem))
    assert spec.name == path.stem
    assert spec.network.nodes
    assert parameter_count(spec) > 0


@pytest.mark.parametrize("path", MODEL_PARAMS)
def test_model_matches_oracle(path: Path) -> None:
    module = tngraph.compile(path, OVERRIDES.get(path.stem), optimize="greedy", dtype="float64",
                             cache=False, batch_size=8)
    shape, has_inputs = SHAPES[path.stem]
    assert bool(module.input_names) == has_inputs
    assert module.plan.optimizer == "greedy"
    assert module.plan.over_limit == ()
    inputs = random_inputs(module, 3, seed=len(path.stem))
    out = module(**inputs)
    assert tuple(out.shape) == ((3,) if has_inputs else ()) + shape
    assert torch.isfinite(out).all()
    assert_matches(out, dense_oracle(module, inputs))


@pytest.mark.parametrize("path", MODEL_PARAMS)
def test_model_gradients(path: Path) -> None:
    module = tngraph.compile(path, OVERRIDES.get(path.stem), optimize="greedy", dtype="float64",
                             cache=False, batch_size=8)
    module(**random_inputs(module, 2)).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_mps_classifier_full_size_plans() -> None:
    """The 64-site classifier at its declared bond dimension plans (cost only, no forward)."""
    module = tngraph.compile(MODELS[[p.stem for p in MODELS].index("mps_classifier")],
                             optimize="greedy", cache=False)
    plan = module.plan
    assert plan.batch_size == 256
    assert len(plan.problem.terms) == 128
    assert len(plan.steps) == 127
    assert tuple(module.tensors["A32"].shape) == (20, 2, 20, 10)   # bond 20, label leg 10
