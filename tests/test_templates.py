"""Built-in templates (mps, mpo, tt_linear, peps) and the template / plugin registries."""

from __future__ import annotations

from typing import Any

import pytest

from tngraph.errors import PluginError, SpecError
from tngraph.spec import Spec, load_spec
from tngraph.templates import (
    TEMPLATES,
    Template,
    TemplateOptions,
    expand_template,
    get_template,
    list_templates,
    register_template,
)
from tngraph.yamlio import dump_yaml


def load(template: str, **options: Any) -> Spec:
    """Load a spec whose network is ``template`` called with ``options`` (fully validated)."""
    return load_spec(dump_yaml({"tngraph": 1, "name": "t",
                                "network": {"template": template, **options}}))


def counts(spec: Spec) -> tuple[int, int, int, int]:
    net = spec.network
    return len(net.nodes), len(net.edges), len(net.inputs), len(net.outputs)


# -- mps ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sites", [1, 2, 5])
def test_mps_open(sites: int) -> None:
    spec = load("mps", sites=sites, phys_dim=3, bond_dim=4)
    assert counts(spec) == (sites, sites - 1, 0, sites)
    nodes = spec.network.nodes
    assert nodes["A0"].legs == ({"p": 3, "r": 4} if sites > 1 else {"p": 3})
    assert nodes[f"A{sites - 1}"].legs == ({"l": 4, "p": 3} if sites > 1 else {"p": 3})
    assert spec.network.outputs == [f"A{k}.p" for k in range(sites)]
    assert all(n.init is not None and n.init.name == "normal" for n in nodes.values())


@pytest.mark.parametrize("sites", [1, 2, 4])
def test_mps_periodic(sites: int) -> None:
    spec = load("mps", sites=sites, phys_dim=2, bond_dim=3, boundary="periodic")
    assert counts(spec) == (sites, sites, 0, sites)
    assert all(n.legs == {"l": 3, "p": 2, "r": 3} for n in spec.network.nodes.values())
    assert spec.network.edges[-1] == (f"A{sites - 1}.r", "A0.l")


@pytest.mark.parametrize("site,expected", [(None, 2), (0, 0), (4, 4)])
def test_mps_output_leg(site: int | None, expected: int) -> None:
    options = {"output_site": site} if site is not None else {}
    spec = load("mps", sites=5, phys_dim=2, bond_dim=3, output_dim=10, **options)
    assert counts(spec) == (5, 4, 0, 6)
    assert spec.network.nodes[f"A{expected}"].legs["o"] == 10
    assert spec.network.outputs[-1] == f"A{expected}.o"
    assert sum("o" in n.legs for n in spec.network.nodes.values()) == 1


def test_mps_with_input_and_feature_map() -> None:
    spec = load("mps", sites=4, phys_dim=2, bond_dim=3, input="x", feature_map="trig",
                output_dim=5)
    assert counts(spec) == (4, 3 + 4, 1, 1)
    port = spec.network.inputs["x"]
    assert (port.legs, port.stack, port.feature_map.name) == ({"p": 2}, 4, "trig")
    assert ("x[3].p", "A3.p") in spec.network.edges
    assert all(n.init.name == "identity" for n in spec.network.nodes.values())


@pytest.mark.parametrize("options,expected", [
    ({"output_site": 4, "output_dim": 2}, "output_site 4 is outside the chain (0..3)"),
    ({"output_site": -1, "output_dim": 2}, "output_site -1 is outside the chain (0..3)"),
    ({"output_site": 1}, "output_site needs output_dim"),
    ({"feature_map": "trig"}, "feature_map needs input"),
    ({"boundary": "closed"}, "network.boundary: Input should be 'open' or 'periodic'"),
    ({"sites": 0}, "network.sites: Input should be greater than 0"),
    ({"bond_dim": 2.0}, "network.bond_dim: Input should be a valid integer"),
    ({"input": "x", "feature_map": "poly"}, "makes vectors of dim 3, but leg x.p has dim 2"),
])
def test_mps_inconsistent_options(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load("mps", **{"sites": 4, "phys_dim": 2, "bond_dim": 3, **options})
    assert any(expected in p.message for p in exc.value.problems), exc.value.format()
    assert all(p.location is not None for p in exc.value.problems)


# -- mpo ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("boundary,bonds", [("open", 2), ("periodic", 3)])
def test_mpo_without_input(boundary: str, bonds: int) -> None:
    spec = load("mpo", sites=3, in_dim=2, out_dim=5, bond_dim=4, boundary=boundary)
    assert counts(spec) == (3, bonds, 0, 6)
    assert spec.network.outputs == ["W0.o", "W1.o", "W2.o", "W0.i", "W1.i", "W2.i"]
    assert spec.network.nodes["W1"].legs == {"l": 4, "i": 2, "o": 5, "r": 4}


def test_mpo_with_input() -> None:
    spec = load("mpo", sites=3, in_dim=2, out_dim=5, bond_dim=4, input="v")
    assert counts(spec) == (3, 2 + 3, 1, 3)
    assert spec.network.inputs["v"].stack == 3
    assert spec.network.nodes["W0"].init.name == "identity"


# -- tt_linear ---------------------------------------------------------------------------------

def test_tt_linear_int_ranks() -> None:
    spec = load("tt_linear", in_shape=[2, 3, 4], out_shape=[5, 6, 7], ranks=2)
    assert counts(spec) == (3, 2 + 3, 1, 3)
    nodes = spec.network.nodes
    assert nodes["G0"].legs == {"i": 2, "o": 5, "r": 2}
    assert nodes["G1"].legs == {"l": 2, "i": 3, "o": 6, "r": 2}
    assert nodes["G2"].legs == {"l": 2, "i": 4, "o": 7}
    assert spec.network.inputs["x"].legs == {"i0": 2, "i1": 3, "i2": 4}
    assert spec.network.bias and spec.network.flatten_outputs
    assert nodes["G0"].init.name == "normal" and nodes["G0"].init.options["std"] > 0


def test_tt_linear_list_ranks_no_bias_custom_input() -> None:
    spec = load("tt_linear", in_shape=[2, 3, 4], out_shape=[5, 6, 7], ranks=[3, 9],
                bias=False, input="u", init="ones")
    nodes = spec.network.nodes
    assert (nodes["G0"].legs["r"], nodes["G1"].legs["l"]) == (3, 3)
    assert (nodes["G1"].legs["r"], nodes["G2"].legs["l"]) == (9, 9)
    assert list(spec.network.inputs) == ["u"] and not spec.network.bias
    assert all(n.init.name == "ones" for n in nodes.values())


def test_tt_linear_single_core() -> None:
    spec = load("tt_linear", in_shape=[6], out_shape=[4], ranks=[])
    assert counts(spec) == (1, 1, 1, 1)
    assert spec.network.nodes["G0"].legs == {"i": 6, "o": 4}


@pytest.mark.parametrize("options,expected,option_line", [
    ({"out_shape": [2, 2]}, "in_shape has 3 factors but out_shape has 2", 6),
    ({"ranks": [2]}, "ranks needs 2 values (one per bond), got 1", 7),
    ({"ranks": [2, 0]}, "ranks must be positive, got [2, 0]", 7),
    ({"ranks": 0}, "ranks must be positive, got [0, 0]", 7),
    ({"in_shape": [2, 0, 2]}, "in_shape factors must be positive", 5),
    ({"in_shape": []}, "network.in_shape: List should have at least 1 item", 5),
])
def test_tt_linear_inconsistent_options(options: dict[str, Any], expected: str,
                                        option_line: int) -> None:
    with pytest.raises(SpecError) as exc:
        load("tt_linear", **{"in_shape": [2, 2, 2], "out_shape": [2, 2, 2], "ranks": 2,
                             **options})
    (problem,) = exc.value.problems
    assert expected in problem.message
    assert problem.location is not None and problem.location.line == option_line


# -- peps --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 4), (3, 2), (4, 4)])
@pytest.mark.parametrize("open_phys", [True, False])
def test_peps(rows: int, cols: int, open_phys: bool) -> None:
    spec = load("peps", rows=rows, cols=cols, bond_dim=3, phys_dim=5, open_phys=open_phys)
    n_edges = rows * (cols - 1) + cols * (rows - 1)
    assert counts(spec) == (rows * cols, n_edges, 0, rows * cols if open_phys else 0)
    last = spec.network.nodes[f"P{rows - 1}_{cols - 1}"].legs
    assert last.get("p") == (5 if open_phys else None)
    assert "r" not in last and "d" not in last
    assert all(d == 3 for k, d in last.items() if k != "p")


def test_peps_inner_node_has_four_bonds() -> None:
    spec = load("peps", rows=3, cols=3, bond_dim=2)
    assert spec.network.nodes["P1_1"].legs == {"u": 2, "l": 2, "p": 2, "r": 2, "d": 2}


# -- registry ----------------------------------------------------------------------------------

def test_builtin_templates_are_listed() -> None:
    assert {"mps", "mpo", "tt_linear", "peps"} <= set(list_templates())
    assert get_template("mps").name == "mps"
    assert "mps" in TEMPLATES


def test_unknown_template_lists_valid_names() -> None:
    with pytest.raises(PluginError) as exc:
        get_template("mpss")
    assert "did you mean 'mps'?" in str(exc.value)
    assert "mpo, mps, peps, tt_linear" in str(exc.value)


def test_duplicate_template_registration_is_refused() -> None:
    with pytest.raises(PluginError, match="already registered"):
        register_template(get_template("mps"))


def test_expand_template_without_document() -> None:
    data = expand_template({"template": "mps", "sites": 2, "phys_dim": 2, "bond_dim": 2})
    assert data["edges"] == [["A0.r", "A1.l"]]
    with pytest.raises(SpecError, match="unknown template 'nope'"):
        expand_template({"template": "nope"})
    with pytest.raises(SpecError, match="unknown template None"):
        expand_template({"sites": 2})


class _StarOptions(TemplateOptions):
    arms: int
    dim: int = 2


def _expand_star(o: _StarOptions) -> dict[str, Any]:
    nodes = {"C": {"legs": {f"a{k}": o.dim for k in range(o.arms)}}}
    nodes.update({f"L{k}": {"legs": {"a": o.dim, "p": o.dim}} for k in range(o.arms)})
    return {"nodes": nodes, "edges": [[f"C.a{k}", f"L{k}.a"] for k in range(o.arms)],
            "outputs": [f"L{k}.p" for k in range(o.arms)]}


@pytest.fixture
def scratch_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made by a test are undone afterwards."""
    TEMPLATES.list()   # load the built-ins first
    monkeypatch.setattr(TEMPLATES, "_entries", dict(TEMPLATES._entries))
    monkeypatch.setattr(TEMPLATES, "_info", dict(TEMPLATES._info))


def test_registered_template_is_usable(scratch_templates: None) -> None:
    register_template(Template("star", _StarOptions, _expand_star, "a star"))
    spec = load("star", arms=3)
    assert counts(spec) == (4, 3, 0, 3)
    assert "star" in list_templates()
    with pytest.raises(PluginError, match="already registered"):
        register_template(Template("star", _StarOptions, _expand_star))
    register_template(Template("star", _StarOptions, _expand_star, "v2"), replace=True)
    assert get_template("star").description == "v2"
    with pytest.raises(SpecError) as exc:
        load("star", arms=2, dims=3)
    assert "did you mean 'dim'?" in (exc.value.problems[0].hint or "")


def test_scratch_registration_did_not_leak() -> None:
    assert "star" not in list_templates()


@pytest.mark.parametrize(("feature_map", "init"), [
    ("multilinear", "identity"),
    ("trig", {"name": "identity", "rotation": "p", "sign": -1}),       # A1: an odd site
])
def test_mps_identity_init_follows_the_feature_map(feature_map: str, init: object) -> None:
    """[1, x] carries the identity on its constant component; the unit-norm cos / sin map gets
    the slices I and +-J (J antisymmetric, orthogonal on pairs), every site matrix a rotation,
    odd sites turning the other way."""
    import torch

    import tngraph

    text = ("tngraph: 1\nname: t\nnetwork: {template: mps, sites: 4, phys_dim: 2, bond_dim: 3, "
            f"input: x, feature_map: {feature_map}, output_dim: 2}}\n")
    spec = load_spec(text)
    assert spec.network.nodes["A1"].init.to_data() == init
    module = tngraph.compile(spec, cache=False, dtype="float64")
    core = module.tensors["A1"].detach()                       # legs (l, p, r)
    eye = torch.eye(3, dtype=torch.float64)
    if feature_map == "trig":
        j = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
                         dtype=torch.float64)
        torch.testing.assert_close(core[:, 0, :], eye, atol=0.05, rtol=0)
        torch.testing.assert_close(core[:, 1, :], -j, atol=0.05, rtol=0)
        assert spec.network.nodes["A2"].init.to_data() == {"name": "identity", "rotation": "p"}
    else:
        torch.testing.assert_close(core[:, 0, :], eye, atol=0.05, rtol=0)
        assert core[:, 1, :].abs().max() < 0.05


@pytest.mark.parametrize(("network", "key", "bound"), [
    ("{template: mps, sites: 99999999999999999999, phys_dim: 2, bond_dim: 2}", "sites", "100000"),
    ("{template: mpo, sites: 100001, phys_dim: 2, bond_dim: 2}", "sites", "100000"),
    ("{template: peps, rows: 5000, cols: 2, bond_dim: 2}", "rows", "1024"),
])
def test_a_template_too_large_to_expand_is_refused_before_expanding(network: str, key: str,
                                                                    bound: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_spec(f"tngraph: 1\nname: t\nnetwork: {network}\n")
    text = exc.value.format()
    assert key in text and bound in text.replace(",", ""), text
