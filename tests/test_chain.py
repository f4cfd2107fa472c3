"""The chain view of a network (plugins/tngraph_plugins/chain.py): site order, leg roles, cores,
resizing and rebuilding."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT

import tngraph
from tngraph.decompose import tt_to_dense
from tngraph.spec import load_spec
from tngraph_plugins.chain import Chain, ChainError, ChainSite, find_chain, rebuild

MPS_OUT = ("tngraph: 1\nname: c\nnetwork: {template: mps, sites: 4, phys_dim: 2, bond_dim: 3, "
           "input: x, feature_map: multilinear, output_dim: 5, output_site: 1}\n")
MPS_OPEN = "tngraph: 1\nname: o\nnetwork: {template: mps, sites: 4, phys_dim: 2, bond_dim: 3}\n"
TT = ("tngraph: 1\nname: tt\nnetwork: {template: tt_linear, in_shape: [2, 3, 2], "
      "out_shape: [2, 2, 3], ranks: [3, 4]}\n")

#: a raw chain declared in reverse, with the bond legs in unusual positions
RAW = """
tngraph: 1
name: raw
network:
  nodes:
    C: {legs: {z: 3, u: 2}}
    B: {legs: {v: 2, y: 4, w: 5}}
    A: {legs: {x: 2, q: 5}}
  edges: [[A.q, B.w], [B.v, C.u]]
  outputs: [C.z, B.y, A.x]
"""


def _compile(text: str) -> tngraph.TNModule:
    return tngraph.compile(text, cache=False, dtype="float64", strategy="network")


def test_mps_with_output_leg() -> None:
    chain = find_chain(load_spec(MPS_OUT))
    assert chain.nodes == ["A0", "A1", "A2", "A3"]
    assert chain.sites[0] == ChainSite("A0", None, "r", ("p",), ("p", "r"))
    assert chain.sites[1].physical == ("p", "o") and chain.sites[1].left == "l"
    assert chain.sites[-1].right is None
    assert chain.bond_dims(load_spec(MPS_OUT)) == [3, 3, 3]


def test_mps_without_output_and_tt_linear() -> None:
    assert [s.physical for s in find_chain(load_spec(MPS_OPEN)).sites] == [("p",)] * 4
    spec = load_spec(TT)
    chain = find_chain(spec)
    assert [s.physical for s in chain.sites] == [("i", "o")] * 3
    assert chain.bond_dims(spec) == [3, 4]
    assert chain.physical_dims(spec) == [(2, 2), (3, 2), (2, 3)]


def test_raw_chain_starts_at_first_declared_end() -> None:
    spec = load_spec(RAW)
    chain = find_chain(spec)
    # C is declared first and is an end of the path C - B - A
    assert chain.nodes == ["C", "B", "A"]
    assert chain.sites[1] == ChainSite("B", "v", "w", ("y",), ("v", "y", "w"))
    assert chain.bond_dims(spec) == [2, 5]


@pytest.mark.parametrize("text, words", [
    ("tngraph: 1\nname: ring\nnetwork: {template: mps, sites: 4, phys_dim: 2, bond_dim: 3, "
     "boundary: periodic}\n", ["ring", "boundary: open"]),
    ("tngraph: 1\nname: star\nnetwork:\n  nodes:\n    H: {legs: {a: 2, b: 2, c: 2}}\n"
     "    A: {legs: {a: 2}}\n    B: {legs: {b: 2}}\n    C: {legs: {c: 2}}\n"
     "  edges: [[H.a, A.a], [H.b, B.b], [H.c, C.c]]\n", ["'H' is bonded to 3 nodes"]),
    ("tngraph: 1\nname: dbl\nnetwork:\n  nodes:\n    A: {legs: {a: 2, b: 2}}\n"
     "    B: {legs: {a: 2, b: 2}}\n  edges: [[A.a, B.a], [A.b, B.b]]\n", ["more than one edge"]),
    ("tngraph: 1\nname: two\nnetwork:\n  nodes:\n    A: {legs: {a: 2}}\n"
     "    B: {legs: {b: 2}}\n  outputs: [A.a, B.b]\n", ["not one chain", "B"]),
])
def test_non_chains_are_refused_with_a_reason(text: str, words: list[str]) -> None:
    with pytest.raises(ChainError) as info:
        find_chain(load_spec(text))
    message = str(info.value)
    assert all(w in message for w in words), message
    assert "supported: an open chain" in message


def test_ring_model_is_refused() -> None:
    with pytest.raises(ChainError, match="ring"):
        find_chain(load_spec("models/ring3.yaml"))


@pytest.mark.parametrize("text", [MPS_OUT, MPS_OPEN, TT, RAW])
def test_cores_round_trip_and_contract_to_the_network(text: str) -> None:
    module = _compile(text)
    chain = find_chain(module.spec)
    cores = chain.to_cores(module.tensors)
    assert cores[0].shape[0] == 1 and cores[-1].shape[-1] == 1
    assert [c.shape[-1] for c in cores[:-1]] == chain.bond_dims(module.spec)
    back = chain.from_cores(cores, module.spec)
    for name, t in module.tensors.items():
        assert torch.equal(back[name], t)
    # the TT of the cores is the network's parameter tensor, physical legs in chain order
    if text in (MPS_OPEN,):
        assert torch.allclose(tt_to_dense(cores).reshape(-1), module().reshape(-1))


def test_from_cores_checks_shapes() -> None:
    spec = load_spec(MPS_OPEN)
    chain = find_chain(spec)
    with pytest.raises(ChainError, match="expected"):
        chain.from_cores([torch.zeros(1, 3, 3)] + [torch.zeros(3, 2, 3)] * 2
                         + [torch.zeros(3, 2, 1)], spec)
    with pytest.raises(ChainError, match="4 sites but 2 cores"):
        chain.from_cores([torch.zeros(1, 2, 1)] * 2, spec)


@pytest.mark.parametrize("text", [MPS_OUT, TT, RAW])
def test_resize_and_rebuild_with_zero_padded_bonds_compute_the_same(text: str) -> None:
    module = _compile(text)
    if module.bias is not None:
        with torch.no_grad():
            module.bias.normal_()
    chain = find_chain(module.spec)
    cores = [c.detach() for c in chain.to_cores(module.tensors)]
    old = chain.bond_dims(module.spec)
    new_dims = [b + 2 for b in old]
    padded = []
    for k, c in enumerate(cores):
        left = new_dims[k - 1] if k else 1
        right = new_dims[k] if k < len(cores) - 1 else 1
        p = torch.zeros(left, c.shape[1], right, dtype=c.dtype)
        p[:c.shape[0], :, :c.shape[2]] = c
        padded.append(p)
    spec = chain.resize(module.spec, new_dims)
    assert chain.bond_dims(spec) == new_dims
    assert spec.plan == module.spec.plan and spec.train == module.spec.train
    assert spec.network.inputs == module.spec.network.inputs
    assert spec.network.outputs == module.spec.network.outputs
    bigger = rebuild(module, spec, chain.from_cores(padded, spec))
    assert bigger.tensors[chain.nodes[0]].dtype == torch.float64
    assert bigger.plan.options == module.plan.options
    if module.input_names:
        shape = (7, 4) if "mps" in text else (7, 12)
        x = torch.rand(*shape, dtype=torch.float64)
        assert torch.allclose(bigger(x), module(x))
    else:
        assert torch.allclose(bigger(), module())
    # the chain of the resized spec is the same chain
    assert find_chain(spec).nodes == chain.nodes


def test_rebuild_runs_the_order_that_ran_before() -> None:
    """A classifier whose plan runs the port-fused order (within 1.3x of the lowest FLOPs)
    keeps running it after a rebuild, not the lowest-FLOP order."""
    module = tngraph.compile(ROOT / "models" / "mps_classifier.yaml", {"bond_dim": 16},
                             batch_size=64, cache=False)
    assert module.plan.runs_fused
    chain = find_chain(module.spec)
    cores = chain.to_cores(module.tensors)
    again = rebuild(module, chain.resize(module.spec, chain.bond_dims(module.spec)),
                    chain.from_cores(cores, module.spec))
    ran = [(s.left, s.right) for s in module.plan.executed().steps]
    assert module.plan.executed_path == ran != module.plan.tree.get_ssa_path()
    assert [(s.left, s.right) for s in again.plan.executed().steps] == ran
    assert again.plan.executed().flops == module.plan.executed().flops
    x = torch.rand(5, 64)
    torch.testing.assert_close(again(x), module(x))


def test_resize_checks_dims() -> None:
    spec = load_spec(MPS_OPEN)
    with pytest.raises(ChainError, match="3 bond dimensions"):
        find_chain(spec).resize(spec, [2, 2])
    assert isinstance(find_chain(spec), Chain)
