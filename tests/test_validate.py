"""tngraph.validate: semantic checks on raw networks (without YAML, and with locations)."""

from __future__ import annotations

from typing import Any

import pytest

from tngraph.errors import SpecError
from tngraph.spec import NetworkSpec, load_spec
from tngraph.validate import leg_table, validate_network


def net(**data: Any) -> NetworkSpec:
    return NetworkSpec.model_validate(data)


def msgs(network: NetworkSpec) -> list[str]:
    return [p.message for p in validate_network(network)]


RING = {"nodes": {"A": {"legs": {"i": 3, "a": 5}}, "B": {"legs": {"a": 5, "j": 4}}},
        "edges": [["A.a", "B.a"]], "outputs": ["A.i", "B.j"]}


def test_valid_network_has_no_problems() -> None:
    assert validate_network(net(**RING)) == []


def test_problems_without_document_are_unlocated() -> None:
    problems = validate_network(net(nodes={"A": {"legs": {"i": 2}}}))
    assert [p.location for p in problems] == [None]
    assert problems[0].hint == "join it with an edge, or add A.i to outputs"


@pytest.mark.parametrize("change,expected", [
    ({"nodes": {}, "edges": [], "outputs": []}, ["network has no nodes"]),
    ({"edges": [["A.a", "A.a"]], "outputs": ["A.i", "B.j", "B.a"]},
     ["edge joins leg A.a to itself"]),
    ({"edges": [["A.a", "B.a"], ["B.a", "A.a"]]},
     ["leg B.a is joined twice (also edge 1 [A.a, B.a])",
      "leg A.a is joined twice (also edge 1 [A.a, B.a])"]),
    ({"outputs": ["A.i", "B.j", "A.i"]}, ["output A.i is already used by outputs"]),
    ({"outputs": ["A.i", "B.j", "B.a"]}, ["output B.a is already used by edge 1 [A.a, B.a]"]),
    ({"edges": [["A.a", "B"]]},
     ["'B' is not a leg reference", "leg B.a is not joined by an edge and not listed in outputs"]),
    ({"outputs": ["A.i"]}, ["leg B.j is not joined by an edge and not listed in outputs"]),
    ({"edges": [["A.a", "X.a"]], "outputs": ["A.i", "B.j", "B.a"]}, ["unknown node 'X' in 'X.a'"]),
])
def test_edge_and_output_rules(change: dict[str, Any], expected: list[str]) -> None:
    assert msgs(net(**{**RING, **change})) == expected


def test_dimension_mismatch_names_both_ends() -> None:
    data = {**RING, "nodes": {"A": {"legs": {"i": 3, "a": 16}}, "B": {"legs": {"a": 8, "j": 4}}}}
    assert msgs(net(**data)) == [
        "edge joins A.a (dim 16) to B.a (dim 8); dimensions must match"]


def test_trace_and_parallel_edges_are_valid() -> None:
    data = {"nodes": {"A": {"legs": {"a": 2, "b": 2, "c": 3}}, "B": {"legs": {"c": 3, "d": 3}}},
            "edges": [["A.a", "A.b"], ["A.c", "B.c"], ["B.d", "C.d"]],
            "outputs": []}
    assert msgs(net(**data)) == ["unknown node 'C' in 'C.d'"]   # B.d counts as joined
    data["edges"] = data["edges"][:2]
    data["nodes"]["B"]["legs"] = {"c": 3, "d": 3, "e": 3}
    data["edges"].append(["B.d", "B.e"])
    assert msgs(net(**data)) == []


def test_names_must_be_identifiers() -> None:
    data = {"nodes": {"A-1": {"legs": {"i j": 2}}}, "outputs": []}
    assert msgs(net(**data)) == [
        "node name 'A-1' is not an identifier",
        "leg name 'i j' of node A-1 is not an identifier",
        "leg A-1.i j is not joined by an edge and not listed in outputs",
    ]


STACKED = {"nodes": {"A": {"legs": {"p": 2, "q": 2, "o": 3}}},
           "inputs": {"x": {"legs": {"v": 2}, "stack": 2}},
           "edges": [["x[0].v", "A.p"], ["x[1].v", "A.q"]], "outputs": ["A.o"]}


def test_stacked_input_copies() -> None:
    network = net(**STACKED)
    assert leg_table(network) == {"A": {"p": 2, "q": 2, "o": 3}, "x[0]": {"v": 2},
                                  "x[1]": {"v": 2}}
    assert msgs(network) == []


@pytest.mark.parametrize("change,expected", [
    ({"edges": [["x[0].v", "A.p"]], "outputs": ["A.o", "A.q"]},
     ["leg x[1].v of input 'x' is not joined by an edge and not listed in outputs"]),
    ({"edges": [["x[0].v", "A.p"], ["x[2].v", "A.q"]]},
     ["unknown node 'x[2]' in 'x[2].v'",
      "leg x[1].v of input 'x' is not joined by an edge and not listed in outputs"]),
    ({"edges": [["x.v", "A.p"], ["x[1].v", "A.q"]]},
     ["unknown node 'x' in 'x.v'",
      "leg x[0].v of input 'x' is not joined by an edge and not listed in outputs"]),
    ({"inputs": {"x": {"legs": {}, "stack": 2}}, "edges": [], "outputs": ["A.o", "A.p", "A.q"]},
     ["input 'x' has no legs"]),
    ({"inputs": {"x": {"legs": {"v": 2}, "stack": 2, "feature_map": "poly"}}},
     ["feature map 'poly' makes vectors of dim 3, but leg x.v has dim 2"]),
    ({"inputs": {"x": {"legs": {"v": 2}, "stack": 2, "feature_map": {"name": "trig", "deg": 2}}}},
     ["feature map 'trig' has no option 'deg'; valid: scale"]),
    ({"inputs": {"x": {"legs": {"v": 2}, "stack": 2,
                       "feature_map": {"name": "poly", "degree": 0}}}},
     ["feature map 'poly' needs an integer degree >= 1, got 0"]),
    ({"inputs": {"x": {"legs": {"v": 2, "w": 2}, "stack": 2, "feature_map": "trig"}},
      "outputs": ["A.o"], "edges": STACKED["edges"]},
     ["input 'x' has a feature map, so it must have exactly one leg (found 2)",
      "leg x[0].w of input 'x' is not joined by an edge and not listed in outputs",
      "leg x[1].w of input 'x' is not joined by an edge and not listed in outputs"]),
])
def test_input_rules(change: dict[str, Any], expected: list[str]) -> None:
    assert msgs(net(**{**STACKED, **change})) == expected


def test_feature_map_with_matching_dim_is_valid() -> None:
    change = {"inputs": {"x": {"legs": {"v": 2}, "stack": 2,
                               "feature_map": {"name": "poly", "degree": 1, "scale": True}}}}
    assert msgs(net(**{**STACKED, **change})) == []


def test_unknown_initializer_lists_valid_ones() -> None:
    (problem,) = validate_network(net(nodes={"A": {"legs": {}, "init": "normall"}}))
    assert problem.message == "unknown initializer 'normall' for node A"
    assert problem.hint is not None and problem.hint.startswith("did you mean 'normal'?")


def test_problems_are_located_in_the_document() -> None:
    text = """tngraph: 1
name: loc
network:
  nodes:
    A: {legs: {i: 3, a: 5}}
    B: {legs: {a: 6, j: 4}}
  edges:
    - [A.a, B.a]
  outputs: [A.i]
"""
    with pytest.raises(SpecError) as exc:
        load_spec(text)
    located = [(p.location.line, p.location.column, p.message) for p in exc.value.problems
               if p.location]
    assert located == [
        (8, 7, "edge joins A.a (dim 5) to B.a (dim 6); dimensions must match"),
        (6, 22, "leg B.j is not joined by an edge and not listed in outputs"),
    ]


def test_unknown_initializer_option_is_located() -> None:
    from tngraph.errors import SpecError
    from tngraph.spec import load_spec

    text = ("tngraph: 1\nname: t\nnetwork:\n  nodes:\n"
            "    A: {legs: {i: 2}, init: {name: normal, sd: 0.1}}\n  outputs: [A.i]\n")
    with pytest.raises(SpecError) as exc:
        load_spec(text)
    (problem,) = exc.value.problems
    assert "initializer 'normal' has no option 'sd'" in problem.message
    assert (problem.location.line, problem.location.column) == (5, 44)
    assert "std" in (problem.hint or "")


@pytest.mark.parametrize(("name", "valid", "expected"), [
    ("bond", ["boundary", "bond_dim", "phys_dim"], "did you mean 'bond_dim'?"),
    ("sits", ["sites", "phys_dim"], "did you mean 'sites'?"),
])
def test_did_you_mean_prefers_prefixes(name: str, valid: list[str], expected: str) -> None:
    from tngraph.errors import did_you_mean

    assert did_you_mean(name, valid).startswith(expected)
