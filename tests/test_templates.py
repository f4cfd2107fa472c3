"""Built-in templates (mps, mpo, tt_linear, peps, tree, tensor_ring, tt_embedding) and the
template / plugin registries."""

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


def test_peps_classifier_feeds_every_node_and_puts_the_label_at_the_centre() -> None:
    spec = load("peps", rows=3, cols=4, bond_dim=2, input="x", feature_map="multilinear",
                output_dim=10)
    assert counts(spec) == (12, 17 + 12, 1, 1)
    assert spec.network.inputs["x"].stack == 12
    assert ("x[7].p", "P1_3.p") in spec.network.edges
    assert spec.network.outputs == ["P1_2.o"]
    assert spec.network.nodes["P1_2"].legs == {"u": 2, "l": 2, "p": 2, "r": 2, "d": 2, "o": 10}
    assert all(node.init is None for node in spec.network.nodes.values())   # the norm default


@pytest.mark.parametrize("options,expected", [
    ({"output_site": [3, 0], "output_dim": 2}, "output_site [3, 0] is not a [row, col]"),
    ({"output_site": [0, 0]}, "output_site needs output_dim"),
    ({"feature_map": "trig"}, "feature_map needs input"),
    ({"input": "x", "open_phys": False}, "input feeds the physical legs, but open_phys is"),
])
def test_peps_inconsistent_options(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load("peps", rows=3, cols=2, bond_dim=2, **options)
    assert expected in exc.value.problems[0].message


# -- tree, tensor_ring, tt_embedding -----------------------------------------------------------

@pytest.mark.parametrize("sites,arity,nodes", [(1, 2, 1), (2, 2, 1), (5, 2, 6), (64, 2, 63),
                                               (9, 3, 4), (10, 4, 4)])
def test_tree_levels(sites: int, arity: int, nodes: int) -> None:
    spec = load("tree", sites=sites, bond_dim=6, arity=arity, input="x",
                feature_map="multilinear", output_dim=3)
    net = spec.network
    assert len(net.nodes) == nodes and len(net.edges) == nodes - 1 + sites
    root = list(net.nodes)[-1]
    assert net.outputs == [f"{root}.o"] and "u" not in net.nodes[root].legs
    # a bond holds at most what its subtree holds: 4 above two pixels, 6 (the cap) above that
    ups = [node.legs["u"] for node in net.nodes.values() if "u" in node.legs]
    assert all(u <= 6 for u in ups)
    if sites == 64:
        assert net.nodes["T0_0"].legs == {"p0": 2, "p1": 2, "u": 4}
        assert net.nodes["T1_0"].legs == {"c0": 4, "c1": 4, "u": 6}


def test_tree_without_input_has_open_physical_legs() -> None:
    spec = load("tree", sites=3, bond_dim=2, phys_dim=3)
    assert spec.network.outputs == ["T0_0.p0", "T0_0.p1", "T0_1.p0"]
    assert spec.network.nodes["T0_1"].legs == {"p0": 3, "u": 2}


@pytest.mark.parametrize("sites", [1, 3, 6])
def test_tensor_ring_closes_the_ring(sites: int) -> None:
    spec = load("tensor_ring", sites=sites, bond_dim=3, input="x", feature_map="trig",
                output_dim=4)
    net = spec.network
    assert counts(spec) == (sites, 2 * sites, 1, 1)
    assert (f"R{sites - 1}.r", "R0.l") in net.edges
    assert net.nodes[f"R{sites // 2}"].legs == {"l": 3, "p": 2, "r": 3, "o": 4}


@pytest.mark.parametrize("template,options,expected", [
    ("tensor_ring", {"output_site": 5, "output_dim": 2}, "output_site 5 is outside the ring"),
    ("tensor_ring", {"output_site": 1}, "output_site needs output_dim"),
    ("tree", {"feature_map": "trig"}, "feature_map needs input"),
    ("tree", {"arity": 1}, "network.arity: Input should be greater than or equal to 2"),
])
def test_ring_and_tree_inconsistent_options(template: str, options: dict[str, Any],
                                            expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load(template, sites=3, bond_dim=2, **options)
    assert expected in exc.value.problems[0].message


def test_tt_embedding_looks_up_rows_of_its_table() -> None:
    torch = pytest.importorskip("torch")
    import tngraph
    from tngraph.templates.tt_embedding import one_hot_inputs

    module = tngraph.compile(load("tt_embedding", voc_shape=[5, 3, 4], dim_shape=[2, 3, 2],
                                  ranks=[3, 2]), optimize="greedy", dtype="float64",
                             cache=False)
    g0, g1, g2 = (module.tensors[f"G{k}"].detach() for k in range(3))
    table = torch.einsum("aor,rbps,scq->abcopq", g0, g1, g2).reshape(60, 12)
    indices = torch.tensor([0, 7, 59, 31])
    inputs = {k: v.double() for k, v in one_hot_inputs(indices, [5, 3, 4]).items()}
    torch.testing.assert_close(module(**inputs), table[indices])
    assert 0.5 < float(table.std()) < 2.0         # entries of about unit variance


@pytest.mark.parametrize("options,expected", [
    ({"dim_shape": [2]}, "voc_shape has 2 factors but dim_shape has 1"),
    ({"ranks": [2, 2]}, "ranks needs 1 positive values"),
    ({"voc_shape": [3, 0]}, "voc_shape factors must be positive"),
])
def test_tt_embedding_inconsistent_options(options: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load("tt_embedding", **{"voc_shape": [3, 4], "dim_shape": [2, 2], **options})
    assert expected in exc.value.problems[0].message


@pytest.mark.parametrize("indices,expected", [
    ([0, 12], "indices must be in 0 .. 11"), ([-1], "indices must be in 0 .. 11"),
    ([0.5], "indices must be a 1-D tensor of integers"),
])
def test_tt_embedding_inputs_refuse_bad_indices(indices: Any, expected: str) -> None:
    pytest.importorskip("torch")
    from tngraph.errors import CompileError
    from tngraph.templates.tt_embedding import one_hot_inputs

    with pytest.raises(CompileError, match=expected):
        one_hot_inputs(indices, [3, 4])


# -- registry ----------------------------------------------------------------------------------

def test_builtin_templates_are_listed() -> None:
    assert {"mps", "mpo", "tt_linear", "peps", "tree", "tensor_ring", "tt_embedding"} <= set(
        list_templates())
    assert get_template("mps").name == "mps"
    assert "mps" in TEMPLATES


def test_unknown_template_lists_valid_names() -> None:
    with pytest.raises(PluginError) as exc:
        get_template("mpss")
    assert "did you mean 'mps'?" in str(exc.value)
    assert "mpo, mps, peps, tensor_ring, tree, tt_embedding, tt_linear" in str(exc.value)


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
