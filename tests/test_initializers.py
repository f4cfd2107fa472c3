"""tngraph.initializers: the graph-aware 'norm' default (unit-scale outputs on any graph)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import random_inputs

import tngraph
from tngraph.initializers import node_initializers, norm, norm_scales, port_second_moment
from tngraph.schema import InputSpec

CLOSED = {"ring3": (Path(__file__).parent.parent / "models" / "ring3.yaml").read_text()
          .replace(", init: normal", ""),
          "grid": "tngraph: 1\nname: g\nnetwork: {template: peps, rows: 3, cols: 3, "
                  "bond_dim: 3, phys_dim: 2}\n"}


@pytest.mark.parametrize("name", CLOSED)
def test_zero_mean_norm_gives_outputs_of_unit_mean_square(name: str) -> None:
    """E[T^2] = 1 exactly over the draws (networks without ports start zero-mean)."""
    module = tngraph.compile(CLOSED[name], optimize="greedy", dtype="float64", cache=False)
    inits = node_initializers(module.spec.network)
    assert all(init == "norm" and "product" not in opts for init, opts in inits.values())
    squares = []
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for node, param in module.tensors.items():
                param.copy_(norm(param.shape, (), inits[node][1], g))
            squares.append(float((module() ** 2).mean()))
    assert 0.75 < sum(squares) / len(squares) < 1.3


def test_a_network_fed_by_leading_one_maps_starts_at_a_product_state() -> None:
    text = ("tngraph: 1\nname: p\nnetwork: {template: peps, rows: 3, cols: 3, bond_dim: 2, "
            "input: x, feature_map: multilinear, output_dim: 4, init: {name: norm, gain: 0}}\n")
    module = tngraph.compile(text, optimize="greedy", dtype="float64", cache=False)
    out = module(**random_inputs(module, 5))
    torch.testing.assert_close(out, torch.ones(5, 4, dtype=torch.float64))
    _, options = node_initializers(module.spec.network)["P1_1"]
    assert options["product"] and options["open"] == ["o"]
    assert options["std"] == pytest.approx(1 / math.sqrt(9 * 4 / 3))


def test_the_default_starts_the_shipped_classifiers_at_unit_scale() -> None:
    """Logits of order 1 for digit-like inputs (the raw 8x8 PEPS started at ~7e5)."""
    module = tngraph.compile(Path(__file__).parent.parent / "models" / "peps_classifier.yaml",
                             {"rows": 4, "cols": 4},
                             optimize="greedy", cache=False)
    x = (torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    out = module(x)
    assert 0.3 < float(out.abs().mean()) < 3


def test_explicit_options_and_other_initialisers_are_kept() -> None:
    spec = tngraph.load_spec(
        "tngraph: 1\nname: t\nnetwork:\n  nodes:\n    A: {legs: {i: 2, a: 9}, init: ones}\n"
        "    B: {legs: {a: 9, j: 2}, init: {name: norm, std: 0.1}}\n    C: {legs: {j: 2}}\n"
        "  edges: [[A.a, B.a], [B.j, C.j]]\n  outputs: [A.i]\n")
    inits = node_initializers(spec.network)
    assert inits["A"] == ("ones", {}) and inits["B"] == ("norm", {"std": 0.1})
    assert inits["C"] == ("norm", {"std": pytest.approx(norm_scales(spec.network)["C"])})
    assert norm_scales(spec.network)["C"] == pytest.approx(2 ** -0.25)


@pytest.mark.parametrize("feature_map,expected", [
    ("multilinear", 4 / 3), ("trig", 1.0), ({"name": "poly", "degree": 2}, 1 + 1 / 3 + 1 / 5),
    (None, 2 / 3)])
def test_port_second_moments_for_values_uniform_on_0_1(feature_map, expected) -> None:
    dim = 3 if isinstance(feature_map, dict) else 2
    port = InputSpec(legs={"p": dim}, feature_map=feature_map)
    assert port_second_moment(port) == pytest.approx(expected, rel=1e-5)
