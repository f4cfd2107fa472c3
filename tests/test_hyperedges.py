"""Hyperedges: an ``edges`` entry of three or more ends is one index shared by all its legs.

Random hypergraph networks (:func:`helpers.rand_hypernetwork`) match one ``opt_einsum``
contraction in float64 (forward and, through the same einsum in torch, gradients); hyperedges
that stay open, diagonals (two legs of one node), data ports on hyperedges, the builder, the
plan's shared indices and the kernel design (an index shared by both operands and a later
tensor is kept, not summed).
"""

from __future__ import annotations

import pytest
import torch
from helpers import (
    assert_matches,
    dense_oracle,
    node_grads,
    rand_hypernetwork,
    rand_spec,
    random_inputs,
)

import tngraph
from tngraph.errors import SpecError
from tngraph.executor import design_kernel
from tngraph.graph import build_graph, einsum_problem
from tngraph.spec import load_spec

BATCH = 3
CASES = [(n, seed) for n in (2, 3, 4, 6, 8) for seed in range(12)]

STAR = {"tngraph": 1, "name": "star", "network": {
    "nodes": {"A": {"legs": {"c": 3, "i": 2}}, "B": {"legs": {"c": 3, "j": 2}},
              "C": {"legs": {"k": 4, "c": 3}}},
    "edges": [["A.c", "B.c", "C.c"]], "outputs": ["A.i", "B.j", "C.k"]}}


def _compile(source: object, seed: int = 0, **options: object) -> tngraph.TNModule:
    options = {"optimize": "greedy", "dtype": "float64", "batch_size": BATCH, "cache": False,
               **options}
    return tngraph.compile(source, seed=seed, **options)


def test_generator_covers_hyperedges() -> None:
    nets = [rand_hypernetwork(n, seed) for n, seed in CASES]
    hyper = [e for net in nets for e in net["edges"] if len(e) > 2]
    assert len(hyper) > 30
    assert any(len(e) == 4 for e in hyper)
    assert any(any(ref.startswith("x") for ref in e) for e in hyper), "no data port"
    assert any(len({ref.split(".")[0] for ref in e}) < len(e) for e in hyper), "no diagonal"
    assert any(set(e) & set(net["outputs"]) for net in nets for e in net["edges"]
               if len(e) > 2), "no open hyperedge"
    assert rand_spec(5, 3, hyper=True) == rand_spec(5, 3, hyper=True)


@pytest.mark.parametrize(("n", "seed"), CASES)
def test_random_hypergraphs_match_oracle(n: int, seed: int) -> None:
    module = _compile(rand_spec(n, seed, hyper=True), seed)
    inputs = random_inputs(module, BATCH, seed)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


@pytest.mark.parametrize(("n", "seed"), [(n, seed) for n in (3, 5) for seed in range(4)])
def test_random_hypergraphs_match_oracle_with_auto_search(n: int, seed: int) -> None:
    module = _compile(rand_spec(n, seed, hyper=True), seed, optimize="auto")
    inputs = random_inputs(module, BATCH, seed)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


@pytest.mark.parametrize("seed", range(4))
def test_gradients_match_one_einsum(seed: int) -> None:
    module = _compile(rand_spec(4, seed, data=False, hyper=True), seed)
    problem = module.plan.problem
    weights = torch.randn(module().shape, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(seed))
    grads = node_grads(module, (module() * weights).sum())
    leaves = {name: t.detach().clone().requires_grad_() for name, t in module.tensors.items()}
    operands = [x for t, inds in zip(problem.terms, problem.inputs)
                for x in (leaves[t.name], list(inds))]
    symbols = {s: k for k, s in enumerate(problem.size_dict)}
    dense = torch.einsum(*[[symbols[i] for i in x] if isinstance(x, list) else x
                           for x in operands], [symbols[i] for i in problem.output])
    expected = torch.autograd.grad((dense * weights).sum(), list(leaves.values()))
    for name, want in zip(leaves, expected):
        assert_matches(grads[name], want)


def test_star_is_one_shared_index() -> None:
    spec = load_spec(STAR)
    problem = einsum_problem(spec)
    (a_c, _), (b_c, _), (_, c_c) = problem.inputs
    assert a_c == b_c == c_c and a_c not in problem.output
    assert problem.index_names[a_c] == "A.c"
    graph = build_graph(spec)
    assert graph.graph["bonds"] == [(("A", "c"), ("B", "c"), ("C", "c"))]
    assert sorted((u, v) for u, v, d in graph.edges(data=True) if d.get("hyperedge") == 0) == [
        ("A", "B"), ("A", "C")]
    module = _compile(STAR)
    t = module.tensors
    assert_matches(module(), torch.einsum("ci,cj,kc->ijk", t["A"], t["B"], t["C"]))


@pytest.mark.parametrize(("outputs", "equation"), [
    (["C.c", "A.i", "B.j", "C.k"], "ci,cj,kc->cijk"),
    (["A.i", "B.c", "B.j", "C.k"], "ci,cj,kc->icjk"),
])
def test_open_hyperedge_stays_once_in_its_position(outputs: list[str], equation: str) -> None:
    spec = {**STAR, "network": {**STAR["network"], "outputs": outputs}}
    module = _compile(spec)
    t = module.tensors
    assert_matches(module(), torch.einsum(equation, t["A"], t["B"], t["C"]))


def test_builder_makes_the_same_spec() -> None:
    net = tngraph.Network("star")
    a, b, c = net.node("A", c=3, i=2), net.node("B", c=3, j=2), net.node("C", k=4, c=3)
    net.edge(a.c, b.c, c.c).outputs(a.i, b.j, c.k)
    assert load_spec(net) == load_spec(STAR)


def test_shared_kept_index_is_a_batch_index_of_the_kernel() -> None:
    """A step over two operands that share ``c`` with a third tensor keeps ``c`` as a batch
    index (one product per value), and sums the index only they share."""
    sizes = {"c": 3, "i": 2, "a": 5, "j": 4}
    kernel = design_kernel(0, 1, 3, ("c", "i", "a"), ("a", "c", "j"), {"c", "i", "j"}, sizes)
    bt, ct, fa, fb = kernel.groups
    assert bt == ("c",) and ct == ("a",) and {*fa, *fb} == {"i", "j"}


def test_hyperedge_dims_and_open_legs_are_checked_together() -> None:
    spec = {**STAR, "network": {**STAR["network"],
                                "edges": [["A.c", "B.c", "C.c", "A.c"]],
                                "outputs": ["A.i", "B.j", "C.k", "A.c", "C.c"]}}
    spec["network"]["nodes"] = {**STAR["network"]["nodes"], "C": {"legs": {"k": 4, "c": 5}}}
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    messages = [p.message for p in info.value.problems]
    assert messages == [
        "hyperedge 1 lists leg A.c twice",
        "hyperedge joins A.c (dim 3), B.c (dim 3), C.c (dim 5), A.c (dim 3); "
        "dimensions must match",
        "output C.c opens hyperedge 1 again (already open as A.c)"]
