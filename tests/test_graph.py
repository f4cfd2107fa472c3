"""Spec -> graph -> einsum problem: terms, index symbols, traces, batch hyperedge, sizes."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import CASES_FOR_GRAPH, ROOT, rand_spec

from tngraph.graph import (
    BATCH,
    build_graph,
    dense_size,
    einsum_problem,
    input_size,
    output_size,
    parameter_count,
)
from tngraph.spec import Spec, load_spec

TRACE_AND_PARALLEL = """
tngraph: 1
name: tp
network:
  nodes:
    A: {legs: {t1: 2, i: 3, t2: 2, a: 4, b: 5}}
    C: {legs: {q: 3}}
    B: {legs: {b: 5, a: 4, j: 6}}
  inputs:
    x: {legs: {p: 3}, stack: 2}
  edges: [[A.t1, A.t2], [A.a, B.a], [A.b, B.b], ["x[0].p", A.i], ["x[1].p", C.q]]
  outputs: [B.j]
"""


@pytest.fixture(scope="module")
def tp() -> Spec:
    return load_spec(TRACE_AND_PARALLEL)


def test_graph_nodes_edges_and_self_loop(tp: Spec) -> None:
    graph = build_graph(tp)
    assert set(graph.nodes) == {"A", "B", "C", "x[0]", "x[1]"}
    assert graph.nodes["x[1]"] == {"kind": "input", "legs": {"p": 3}, "port": "x", "copy": 1}
    assert graph.nodes["A"]["kind"] == "tensor"
    assert graph.number_of_edges() == 5
    assert graph.number_of_edges("A", "B") == 2            # parallel edges are kept
    assert graph.number_of_edges("A", "A") == 1            # the trace is a self-loop
    (loop,) = [d for u, v, d in graph.edges(data=True) if u == v]
    assert loop == {"legs": (("A", "t1"), ("A", "t2")), "dim": 2}
    assert graph.graph["outputs"] == [("B", "j")]
    assert graph.graph["has_inputs"] is True


def test_problem_symbols(tp: Spec) -> None:
    problem = einsum_problem(tp, batch_size=7)
    assert [t.name for t in problem.terms] == ["A", "C", "B", "x[0]", "x[1]"]
    assert [t.kind for t in problem.terms] == ["tensor"] * 3 + ["input"] * 2
    assert problem.n_tensors == 3
    a = problem.inputs[problem.term_index("A")]
    b = problem.inputs[problem.term_index("B")]
    assert len(a) == 5 and a[0] == a[2]                    # the trace repeats a symbol
    assert (a[3], a[4]) == (b[1], b[0])                    # parallel edges: two symbols
    assert len(set(a)) == 4
    x0 = problem.inputs[problem.term_index("x[0]")]
    x1 = problem.inputs[problem.term_index("x[1]")]
    assert x0[0] == x1[0] == problem.batch == problem.output[0]   # batch hyperedge
    assert x0[1] == a[1] and x1[1] == problem.inputs[problem.term_index("C")][0]
    assert problem.output == (problem.batch, b[2])
    assert problem.size_dict[problem.batch] == 7
    assert problem.index_names[problem.batch] == BATCH
    assert problem.index_names[b[2]] == "B.j"
    assert {problem.size_dict[s] for s in a} == {2, 3, 4, 5}
    # every symbol is named and sized; only the batch appears more than twice
    counts = Counter(s for term in problem.inputs for s in term) + Counter(problem.output)
    assert set(counts) == set(problem.size_dict) == set(problem.index_names)
    assert {s for s, c in counts.items() if c > 2} == {problem.batch}
    assert problem.terms[problem.term_index("x[1]")].copy == 1
    assert problem.terms[problem.term_index("x[1]")].port == "x"


def test_batch_size_default_and_override(tp: Spec) -> None:
    problem = einsum_problem(tp)
    assert problem.size_dict[problem.batch] == tp.plan.batch_size == 256
    other = problem.with_batch_size(3)
    assert other.size_dict[other.batch] == 3
    assert problem.size_dict[problem.batch] == 256          # unchanged (frozen)
    assert other.inputs == problem.inputs and other.output == problem.output


def test_no_inputs_no_batch() -> None:
    spec = load_spec(ROOT / "models/ring3.yaml")
    problem = einsum_problem(spec, batch_size=9)
    assert problem.batch is None and BATCH not in problem.index_names.values()
    assert problem.with_batch_size(4) is problem
    assert [problem.index_names[s] for s in problem.output] == ["A.i", "B.j", "C.k"]
    assert problem.named_equation() == "A[i,a,c],B[a,j,b],C[b,k,c]->[A.i,B.j,C.k]"


def test_named_equation_with_inputs(tp: Spec) -> None:
    eq = einsum_problem(tp).named_equation()
    assert eq.startswith("A[t1,i,t2,a,b],C[q],B[b,a,j],x[0][batch,p],x[1][batch,p]")
    assert eq.endswith("->[batch,B.j]")


@pytest.mark.parametrize(("model", "overrides", "params", "out", "inp"), [
    ("ring3", None, 3 * 5 * 2 + 5 * 4 * 6 + 6 * 3 * 2, 3 * 4 * 3, 1),
    ("tt_linear", {"rank": 3}, 8 * 2 * 3 + 2 * 3 * 8 * 2 * 3 + 3 * 8 * 2 + 16, 16, 4096),
    ("mps_classifier", {"bond_dim": 3}, 2 * (2 * 3) + 61 * (3 * 2 * 3) + 3 * 2 * 3 * 10,
     10, 2**64),
    ("mps", None, 2 * (2 * 4) + 8 * (4 * 2 * 4), 2**10, 1),
])
def test_sizes(model: str, overrides: dict | None, params: int, out: int, inp: int) -> None:
    spec = load_spec(ROOT / f"models/{model}.yaml", overrides)
    assert parameter_count(spec) == params
    assert output_size(spec) == out
    assert input_size(spec) == inp
    assert dense_size(spec) == inp * out


@pytest.mark.parametrize(("n", "seed"), CASES_FOR_GRAPH)
def test_random_problem_shapes_match_spec(n: int, seed: int) -> None:
    spec = load_spec(rand_spec(n, seed))
    problem = einsum_problem(spec, batch_size=2)
    for term, inds in zip(problem.terms, problem.inputs, strict=True):
        extra = (problem.batch,) if term.kind == "input" else ()
        assert len(inds) == len(term.legs) + len(extra) == len(term.shape) + len(extra)
        assert tuple(problem.size_dict[i] for i in inds) == tuple(
            problem.size_dict[i] for i in extra) + term.shape
    assert len(problem.output) == len(spec.network.outputs) + (problem.batch is not None)
    assert problem.n_tensors == len(spec.network.nodes)
