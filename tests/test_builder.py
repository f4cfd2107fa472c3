"""tngraph.builder: networks built in Python are the specs their YAML gives, down to the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import MODELS, random_inputs

import tngraph
from tngraph.builder import Network
from tngraph.errors import SpecError
from tngraph.graph import einsum_problem
from tngraph.spec import load_spec

ROOT = Path(__file__).parent.parent
COMPILE = {"optimize": "greedy", "dtype": "float64", "cache": False, "batch_size": 4}


def ring3() -> Network:
    """models/ring3.yaml, built in Python."""
    net = Network("ring3", description="Three tensors joined in a ring (the raw format, no "
                                       "template).")
    chi = net.param("chi", 5)
    A = net.node("A", i=3, a=chi, c=2)
    B = net.node("B", a=chi, j=4, b=6)
    C = net.node("C", b=6, k=3, c=2, init="normal")
    return net.edge(A.a, B.a).edge(B.b, C.b).edge(C.c, A.c).outputs(A.i, B.j, C.k)


def mps_classifier(sites: int, bond: int) -> Network:
    """The mps template's classifier written out by hand: a stacked port with a feature map."""
    net = Network("mps_classifier")
    x = net.input("x", p=2, stack=sites, feature_map="multilinear")
    cores = []
    for k in range(sites):
        legs = {"l": bond} if k else {}
        legs["p"] = 2
        if k < sites - 1:
            legs["r"] = bond
        if k == sites // 2:
            legs["o"] = 10
        cores.append(net.node(f"A{k}", legs, init="identity"))
    for left, right in zip(cores, cores[1:]):
        net.edge(left.r, right.l)
    for k, core in enumerate(cores):
        net.edge(x[k].p, core.p)
    return net.outputs(cores[sites // 2].o)


def mps_yaml(sites: int, bond: int) -> str:
    return (f"tngraph: 1\nname: mps_classifier\nnetwork: {{template: mps, sites: {sites}, "
            f"phys_dim: 2, bond_dim: {bond}, input: x, feature_map: multilinear, "
            "output_dim: 10}\n")


BUILT = {
    "ring3": (ring3, ROOT / "models" / "ring3.yaml"),
    "mps_classifier": (lambda: mps_classifier(5, 3), mps_yaml(5, 3)),
    "mps_template": (lambda: Network.template(
        "mps", "mps_classifier", sites=5, phys_dim=2, bond_dim="${b}", input="x",
        feature_map="multilinear", output_dim=10, params={"b": 3}), mps_yaml(5, 3)),
}


def _same_network(built: Any, source: Any) -> None:
    assert built.to_raw() == source.to_raw()
    assert built.network == source.network


@pytest.mark.parametrize("name", BUILT)
def test_built_spec_compiles_to_the_plan_and_output_of_its_yaml(name: str) -> None:
    make, source = BUILT[name]
    built, written = load_spec(make()), load_spec(source)
    _same_network(built, written)
    assert tngraph.expand(make()) == tngraph.expand(written)
    assert einsum_problem(built) == einsum_problem(written)
    a, b = tngraph.compile(make(), seed=3, **COMPILE), tngraph.compile(source, seed=3, **COMPILE)
    assert a.plan.tree.get_ssa_path() == b.plan.tree.get_ssa_path()
    assert a.plan.problem == b.plan.problem
    inputs = random_inputs(a, 4, seed=1)
    torch.testing.assert_close(a(**inputs), b(**inputs), rtol=0, atol=0)


def test_params_of_a_built_network_take_overrides() -> None:
    assert load_spec(ring3(), {"chi": 2}) == load_spec(ROOT / "models" / "ring3.yaml",
                                                       {"chi": 2})
    assert ring3().spec({"chi": 7}).network.nodes["A"].legs["a"] == 7
    assert ring3().spec_data()["params"] == {"chi": 5}


def test_plan_and_train_blocks_and_flags() -> None:
    net = ring3().plan(optimize="greedy", batch_size=8).train(epochs=2, lr=0.01)
    net.bias = True
    spec = net.spec()
    assert (spec.plan.optimize, spec.plan.batch_size) == ("greedy", 8)
    assert (spec.train.epochs, spec.train.lr, spec.network.bias) == (2, 0.01, True)


@pytest.mark.parametrize("path", [p for p in MODELS if "layers:" not in p.read_text()],
                         ids=lambda p: p.stem)
def test_from_spec_gives_the_expanded_network_of_every_model(path: Path) -> None:
    net = Network.from_spec(path)
    assert net.spec().to_raw() == load_spec(path).to_raw()


def test_from_spec_extends_a_template() -> None:
    net = Network.from_spec(Network.template("mps", sites=3, phys_dim=2, bond_dim=2,
                                             boundary="periodic"))
    E = net.node("E", q=5)
    spec = net.outputs(E.q).spec()
    assert spec.network.outputs == ["A0.p", "A1.p", "A2.p", "E.q"]
    assert spec.network.edges[-1] == ("A2.r", "A0.l")


# -- mistakes ----------------------------------------------------------------------------------

def test_problems_of_a_built_network_are_located_by_key_path() -> None:
    net = Network("bad")
    A, B = net.node("A", i=2, a=3), net.node("B", a=4, j=0)
    net.edge(A.a, B.a).outputs(A.i)
    with pytest.raises(SpecError) as exc:
        net.spec()
    assert str(exc.value) == (
        "<Network 'bad'>: network.nodes.B.legs.j: error: dimension of leg must be a positive "
        "integer (up to 2147483647), got 0\n"
        "  hint: dimensions are whole numbers such as 2 or ${bond_dim}")
    B = Network("bad")
    A, C = B.node("A", i=2, a=3), B.node("C", a=4, j=2)
    with pytest.raises(SpecError) as exc:
        B.edge(A.a, C.a).outputs(A.i).spec()
    assert [p.format().partition(" error: ")[0] for p in exc.value.problems] == [
        "<Network 'bad'>: network.edges[0]:", "<Network 'bad'>: network.nodes.C.legs.j:"]


@pytest.mark.parametrize("call,message", [
    (lambda n: n.node("A", ij=2).i, "A has no leg 'i'  hint: did you mean 'ij'?"),
    (lambda n: n.input("x", p=2, stack=3)[3], "input 'x' has copies 0..2, asked for [3]"),
    (lambda n: n.input("x", p=2, stack=3).p, "input 'x' is stacked (3 copies): name a copy"),
    (lambda n: n.input("x", p=2)[0], "input 'x' has no copies (not stacked)"),
    (lambda n: (n.node("A", i=2), n.input("A", i=2)), "already has a node or input 'A'"),
    (lambda n: n.node("2A", i=2), "node name '2A' is not an identifier"),
    (lambda n: n.edge(3, "A.i"), "an edge's end must be a leg reference such as A.r"),
    (lambda n: Network.template("mps", sites=2).node("B"),
     "network 'mps' is a call of template 'mps': it has no nodes to add"),
    (lambda n: Network(["x"]), "a network's name must be a string, got list"),
    (lambda n: Network.from_spec(ROOT / "models" / "mlp.yaml"), "is a pipeline of layers"),
], ids=["unknown-leg", "copy-out-of-range", "stacked-leg", "not-stacked", "name-clash",
        "bad-name", "edge-end", "template-node", "name-type", "from-pipeline"])
def test_builder_misuse_is_a_clear_spec_error(call: Any, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        call(Network("n"))
    rendered = "  hint: ".join(filter(None, (exc.value.problems[0].message,
                                             exc.value.problems[0].hint)))
    assert message in rendered


def test_a_missing_leg_is_an_attribute_error_too() -> None:
    A = Network("n").node("A", i=2)
    assert not hasattr(A, "j") and hasattr(A, "i") and A.i == "A.i" and str(A) == "A"
