"""tngraph.spec: schema, parameters, overrides, templates in load_spec, the canonical raw form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tngraph
from tngraph.errors import SpecError
from tngraph.spec import FORMAT_VERSION, Spec, load_spec, parse_override
from tngraph.yamlio import document_from_data, load_document

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.yaml"))


def spec_text(network: str, params: str = "", name: str = "t") -> str:
    head = f"tngraph: 1\nname: {name}\n"
    if params:
        head += f"params: {params}\n"
    return head + "network:\n" + "\n".join("  " + line for line in network.splitlines()) + "\n"


def messages(exc: pytest.ExceptionInfo[SpecError]) -> list[str]:
    return [p.message for p in exc.value.problems]


# -- valid edge cases -----------------------------------------------------------------------

VALID = {
    "parallel_edges": """
nodes: {A: {legs: {a: 2, b: 3}}, B: {legs: {a: 2, b: 3}}}
edges: [[A.a, B.a], [A.b, B.b]]
outputs: []
""",
    "trace": """
nodes: {A: {legs: {a: 2, b: 2, i: 3}}}
edges: [[A.a, A.b]]
outputs: [A.i]
""",
    "disconnected": """
nodes: {A: {legs: {i: 2}}, B: {legs: {j: 3}}, C: {legs: {a: 2}}, D: {legs: {a: 2}}}
edges: [[C.a, D.a]]
outputs: [A.i, B.j]
""",
    "single_node": """
nodes: {A: {legs: {i: 2, j: 3}}}
outputs: [A.j, A.i]
""",
    "closed_scalar": """
nodes: {A: {legs: {a: 2}}, B: {legs: {a: 2}}}
edges: [[A.a, B.a]]
outputs: []
""",
    "stacked_input": """
nodes: {A: {legs: {p: 2, q: 2, o: 5}}}
inputs: {x: {legs: {v: 2}, stack: 2, feature_map: trig}}
edges: [["x[0].v", A.p], ["x[1].v", A.q]]
outputs: [A.o]
""",
    "largest_dim": """
nodes: {A: {legs: {i: 2147483647}}}
outputs: [A.i]
""",
}


@pytest.mark.parametrize("network", VALID.values(), ids=VALID.keys())
def test_valid_edge_cases_load(network: str) -> None:
    spec = load_spec(spec_text(network))
    raw = load_document(spec_text(network)).data["network"]
    assert list(spec.network.nodes) == list(raw["nodes"])
    assert [list(e) for e in spec.network.edges] == raw.get("edges", [])
    assert spec.network.outputs == raw["outputs"]


def test_leg_order_is_axis_order() -> None:
    spec = load_spec(spec_text(VALID["single_node"]))
    assert spec.network.nodes["A"].shape == (2, 3)
    assert list(spec.network.nodes["A"].legs) == ["i", "j"]


def test_anchors_and_aliases_used_normally() -> None:
    spec = load_spec(spec_text("""
nodes:
  A: {legs: &core {l: 4, p: 2}, init: &init {name: normal, std: 0.5}}
  B: {legs: *core, init: *init}
edges: [[A.l, B.l]]
outputs: [A.p, B.p]
"""))
    assert spec.network.nodes["A"] == spec.network.nodes["B"]
    assert spec.network.nodes["B"].init is not None
    assert spec.network.nodes["B"].init.options == {"std": 0.5}


def test_init_short_and_long_form() -> None:
    spec = load_spec(spec_text("""
nodes: {A: {legs: {i: 2}, init: ones}, B: {legs: {j: 2}, init: {name: uniform, a: 0.1}}}
outputs: [A.i, B.j]
"""))
    assert spec.network.nodes["A"].init.to_data() == "ones"
    assert spec.network.nodes["B"].init.to_data() == {"name": "uniform", "a": 0.1}


# -- parameters -----------------------------------------------------------------------------

PARAM_NET = """
nodes:
  "A": {legs: {i: "${d}", a: "${chi}"}}
  B: {legs: {a: "${chi}", j: 2}}
edges: [["A.a", "B.${leg}"]]
outputs: [A.i, B.j]
"""


def test_whole_value_substitution_keeps_the_type() -> None:
    spec = load_spec(spec_text(PARAM_NET, "{d: 3, chi: 4, leg: a}", name='"net_${chi}x${d}"'))
    assert spec.network.nodes["A"].legs == {"i": 3, "a": 4}
    assert type(spec.network.nodes["A"].legs["a"]) is int
    assert spec.name == "net_4x3"          # substituted inside a string
    assert spec.network.edges == [("A.a", "B.a")]
    assert spec.params == {"d": 3, "chi": 4, "leg": "a"}


def test_string_param_as_dimension_is_an_error() -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(spec_text(PARAM_NET, "{d: '3', chi: 4, leg: a}"))
    assert any("dimension of leg" in m for m in messages(exc))


def test_overrides_replace_params() -> None:
    spec = load_spec(spec_text(PARAM_NET, "{d: 3, chi: 4, leg: a}"), {"chi": 7})
    assert spec.network.nodes["B"].legs["a"] == 7
    assert spec.params["chi"] == 7


def test_every_unresolved_parameter_is_reported() -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(spec_text(PARAM_NET, "{d: 3}"))
    found = messages(exc)
    assert sorted(found) == sorted(["unresolved parameter '${chi}'"] * 2
                                   + ["unresolved parameter '${leg}'"])
    lines = sorted(p.location.line for p in exc.value.problems if p.location)
    assert lines == [7, 8, 9]


def test_unknown_override_is_located_at_params() -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(spec_text(PARAM_NET, "{d: 3, chi: 4, leg: a}"), {"ch": 2, "leg": "a"})
    (problem,) = exc.value.problems
    assert "no parameter 'ch'" in problem.message
    assert problem.location is not None and problem.location.line == 3
    assert "did you mean 'chi'" in (problem.hint or "")


@pytest.mark.parametrize("params,expected", [
    ("{2x: 1}", "parameter name '2x' is not an identifier"),
    ("{a: [1, 2]}", "parameter 'a' must be a number, string or boolean"),
    ("{a: null}", "parameter 'a' must be a number, string or boolean"),
    ("{a: '${b}', b: 1}", "parameter 'a' refers to another parameter"),
    ("[1, 2]", "'params' must be a mapping"),
])
def test_bad_params(params: str, expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(spec_text(VALID["single_node"], params))
    assert any(expected in m for m in messages(exc)), messages(exc)


@pytest.mark.parametrize("text,expected", [
    ("bond_dim=8", ("bond_dim", 8)),
    (" bond_dim = 8 ", ("bond_dim", 8)),
    ("x=0.5", ("x", 0.5)),
    ("x=true", ("x", True)),
    ("x=abc", ("x", "abc")),
    ("x='8'", ("x", "8")),
    ("x=a=b", ("x", "a=b")),
    ("x=", ("x", "")),
    ("x=[1, 2]", ("x", "[1, 2]")),
    ("x=~", ("x", "~")),
    ("x={", ("x", "{")),
])
def test_parse_override_reads_yaml_scalars(text: str, expected: tuple[str, Any]) -> None:
    key, value = parse_override(text)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


def test_parse_override_needs_equals() -> None:
    with pytest.raises(SpecError, match="expects key=value"):
        parse_override("bond_dim")


# -- format version and top-level keys --------------------------------------------------------

@pytest.mark.parametrize("version", ["2", "1.0", "true", "'1'", "null"])
def test_only_format_version_1(version: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(spec_text(VALID["single_node"]).replace("tngraph: 1", f"tngraph: {version}"))
    assert messages(exc)[0].startswith("unsupported format version")
    assert "write 'tngraph: 1'" in (exc.value.problems[0].hint or "")


def test_missing_keys() -> None:
    with pytest.raises(SpecError) as exc:
        load_spec("tngraph: 1\nname: x\n")
    assert messages(exc) == ["missing required key 'network'"]
    with pytest.raises(SpecError) as exc:
        load_spec("tngraph: 1\nnetwork: {nodes: {A: {legs: {}}}}\n")
    assert messages(exc) == ["missing required key 'name' in the spec"]


def test_unknown_plan_key_has_did_you_mean() -> None:
    text = spec_text(VALID["single_node"]) + "plan: {optimise: greedy}\n"
    with pytest.raises(SpecError) as exc:
        load_spec(text)
    (problem,) = exc.value.problems
    assert problem.message == "unknown key 'optimise' in plan"
    assert "did you mean 'optimize'" in (problem.hint or "")


def test_plan_block_is_read() -> None:
    text = spec_text(VALID["single_node"]) + "plan: {optimize: greedy, batch_size: 4}\n"
    spec = load_spec(text)
    assert (spec.plan.optimize, spec.plan.batch_size) == ("greedy", 4)
    assert spec.to_raw()["plan"] == {"optimize": "greedy", "batch_size": 4}


def test_sources_path_text_and_document(tmp_path: Path) -> None:
    text = spec_text(VALID["trace"])
    path = tmp_path / "trace.yaml"
    path.write_text(text)
    by_path, by_str, by_text = load_spec(path), load_spec(str(path)), load_spec(text)
    by_doc = load_spec(load_document(text))
    assert by_path == by_str == by_text == by_doc
    assert by_path.source.filename == str(path)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


# -- templates through load_spec, canonical raw form --------------------------------------------

def test_template_call_is_kept_after_substitution() -> None:
    spec = load_spec(spec_text("template: mps\nsites: ${n}\nphys_dim: 2\nbond_dim: 3", "{n: 4}"))
    assert spec.template == {"template": "mps", "sites": 4, "phys_dim": 2, "bond_dim": 3}
    assert len(spec.network.nodes) == 4


def test_template_network_problems_are_located_at_the_template() -> None:
    text = spec_text("template: mps\nsites: 3\nphys_dim: 2\nbond_dim: 3\ninput: x\n"
                     "feature_map: {name: poly, degree: 2}")
    with pytest.raises(SpecError) as exc:
        load_spec(text)
    (problem,) = exc.value.problems
    assert "makes vectors of dim 3, but leg x.p has dim 2" in problem.message
    assert problem.location is not None and problem.location.line == 4   # 'template: mps'


@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_models_expand_round_trip(path: Path) -> None:
    spec = load_spec(path)
    text = tngraph.expand(spec)
    again = load_spec(text)
    assert again.network == spec.network
    assert again.template is None and again.params == {}
    assert (again.name, again.plan) == (spec.name, spec.plan)
    assert tngraph.expand(again) == text
    assert again.to_raw()["tngraph"] == FORMAT_VERSION


def test_to_raw_has_no_params_or_template() -> None:
    spec = load_spec(spec_text("template: tt_linear\nin_shape: [2, 3]\nout_shape: [4, 5]\n"
                               "ranks: ${r}", "{r: 2}"))
    raw = spec.to_raw()
    assert set(raw) == {"tngraph", "name", "network"}
    assert raw["network"]["bias"] is True and raw["network"]["flatten_outputs"] is True
    assert "${" not in tngraph.expand(spec)
    assert isinstance(Spec.model_validate({**raw, "template": None}), Spec)


def test_one_long_line_of_yaml_is_text_not_a_path() -> None:
    text = ('{"tngraph": 1, "name": "' + "x" * 400 + '", '
            '"network": {"nodes": {"A": {"legs": {"i": 2}}}, "outputs": ["A.i"]}}')
    assert load_spec(text).network.outputs == ["A.i"]


# -- specs given as dicts ---------------------------------------------------------------------

@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_a_dict_of_the_yaml_structure_loads_to_the_same_spec(path: Path) -> None:
    data = load_document(path.read_text()).data
    assert load_spec(data) == load_spec(path)
    assert tngraph.expand(data) == tngraph.expand(path)


def test_a_dict_spec_takes_overrides_and_python_values_and_is_not_changed() -> None:
    np = pytest.importorskip("numpy")
    data = {"tngraph": 1, "name": "t", "params": {"chi": np.int64(3)},
            "network": {"nodes": {"A": {"legs": {"i": 2, "a": "${chi}"}},
                                  "B": {"legs": {"a": "${chi}", "j": np.int32(4)}}},
                        "edges": [("A.a", "B.a")], "outputs": ("A.i", "B.j")}}
    spec = load_spec(data, {"chi": 5})
    assert spec.network.nodes["B"].legs == {"a": 5, "j": 4}
    assert type(spec.network.nodes["B"].legs["j"]) is int
    assert spec.network.edges == [("A.a", "B.a")]
    assert data["network"]["nodes"]["A"]["legs"]["a"] == "${chi}"     # the caller's dict
    assert spec.source.keyed and spec.source.filename == "<dict>"


def test_a_dict_that_contains_itself_is_a_located_error() -> None:
    nodes: dict[str, Any] = {"A": {"legs": {"i": 2}}}
    nodes["A"]["legs"]["self"] = nodes
    with pytest.raises(SpecError) as exc:
        load_spec({"tngraph": 1, "name": "t", "network": {"nodes": nodes, "outputs": []}})
    assert str(exc.value) == ("<dict>: network.nodes.A.legs.self: error: the value contains "
                              "itself\n  hint: a spec is a tree of dicts and lists; copy the "
                              "shared part")


@pytest.mark.parametrize("value,found", [([1], "list"), (3, "int")])
def test_only_a_mapping_is_a_dict_spec(value: Any, found: str) -> None:
    with pytest.raises(SpecError, match=f"<dict>: error: spec must be a mapping .* found {found}"):
        document_from_data(value)
