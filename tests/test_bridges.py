"""Bridges between compiled chains and the TT library: ``module.cores()`` in the layout of
:mod:`tngraph.decompose`, ``mps_spec`` / ``mps_state_dict`` (``qtt()`` cores load into an
``mps`` module as they are), and ``entanglement_entropy`` / ``bond_spectra`` of a module."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_matches

import tngraph
from tngraph.decompose import (
    bond_spectra,
    entanglement_entropy,
    mps_spec,
    mps_state_dict,
    qtt,
    tt_linear_spec,
    tt_linear_state_dict,
    tt_matrix,
    tt_matrix_to_dense,
    tt_svd,
    tt_to_dense,
)
from tngraph.errors import CompileError

MPS = ("tngraph: 1\nname: m\nnetwork: {template: mps, sites: 5, phys_dim: 2, bond_dim: 3}\n")


def _compile(source: str, **options: object) -> tngraph.TNModule:
    return tngraph.compile(source, dtype="float64", cache=False, **options)


@pytest.mark.parametrize(("max_rank", "dtype"), [(None, torch.float64), (3, torch.float64),
                                                 (None, torch.complex128)])
def test_qtt_cores_load_into_an_mps_module_as_they_are(max_rank: int | None,
                                                       dtype: torch.dtype) -> None:
    psi = torch.randn(2 ** 6, dtype=dtype, generator=torch.Generator().manual_seed(0))
    cores = qtt(psi, max_rank=max_rank)         # ranks 2, 4, 8, 4, 2 (or capped at 3)
    module = tngraph.compile(mps_spec(cores), cache=False, dtype=str(dtype).split(".")[1])
    assert module.load_state_dict(mps_state_dict(cores)) is not None
    assert_matches(module().reshape(-1), tt_to_dense(cores).reshape(-1))
    got = module.cores()
    assert [tuple(c.shape) for c in got] == [tuple(c.shape) for c in cores]
    for mine, theirs in zip(got, cores):
        assert_matches(mine, theirs)
    assert_matches(entanglement_entropy(module), entanglement_entropy(cores))


def test_mps_spec_with_a_data_port_and_a_feature_map() -> None:
    cores = tt_svd(torch.randn(2, 2, 2, 2, dtype=torch.float64), max_rank=2)
    text = mps_spec(cores, input="x", feature_map="multilinear")
    assert "template: mps" in text and "input: x" in text
    module = _compile(text)
    module.load_state_dict(mps_state_dict(cores))
    x = torch.rand(3, 4, dtype=torch.float64)
    features = torch.stack([torch.ones_like(x), x], -1)
    dense = tt_to_dense(cores)
    expected = torch.einsum("abcd,na,nb,nc,nd->n", dense, *features.unbind(1))
    assert_matches(module(x), expected)
    raw = mps_spec(qtt(torch.randn(16, dtype=torch.float64)), input="x")
    assert "template" not in raw and "stack: 4" in raw
    _compile(raw)


def test_cores_of_a_tt_layer_are_tt_matrix_cores() -> None:
    w = torch.randn(6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cores = tt_matrix(w, [3, 4], [2, 3])
    module = _compile(tt_linear_spec(cores, bias=False))
    module.load_state_dict(tt_linear_state_dict(cores))
    got = module.cores()
    assert [tuple(c.shape) for c in got] == [tuple(c.shape) for c in cores]
    assert_matches(tt_matrix_to_dense([c.detach() for c in got]), w)
    assert len(bond_spectra(module)) == 1


def test_cores_keep_autograd_and_follow_the_parameters() -> None:
    module = _compile(MPS)
    cores = module.cores()
    assert [tuple(c.shape) for c in cores] == [(1, 2, 3), (3, 2, 3), (3, 2, 3), (3, 2, 3),
                                               (3, 2, 1)]
    sum(c.sum() for c in cores).backward()
    assert all(p.grad is not None for p in module.parameters())
    before = cores[2].detach().clone()
    with torch.no_grad():
        module.tensors["A2"].mul_(2)
    assert_matches(module.cores()[2], before * 2)


def test_classifier_cores_keep_the_label_leg_and_entropy_reads_the_chain() -> None:
    module = _compile("tngraph: 1\nname: c\nnetwork: {template: mps, sites: 6, phys_dim: 2, "
                      "bond_dim: 4, input: x, feature_map: multilinear, output_dim: 3}\n")
    shapes = [tuple(c.shape) for c in module.cores()]
    assert shapes[0] == (1, 2, 4) and shapes[-1] == (4, 2, 1)
    assert (4, 2, 3, 4) in shapes                             # the label leg: a second mode
    entropy = entanglement_entropy(module)
    assert entropy.shape == (5,) and bool((entropy >= 0).all())


@pytest.mark.parametrize(("source", "message"), [
    ("models/ring3.yaml", "is a ring"),
    ("models/peps.yaml", "is bonded to 3 nodes"),
    ("tngraph: 1\nname: h\nnetwork: {nodes: {A: {legs: {c: 2}}, B: {legs: {c: 2}}, "
     "C: {legs: {c: 2}}}, edges: [[A.c, B.c, C.c]]}\n", "hyperedge"),
])
def test_non_chains_are_refused_with_the_reason(source: str, message: str) -> None:
    module = _compile(source, optimize="greedy")
    with pytest.raises(CompileError, match=message):
        module.cores()
    with pytest.raises(CompileError, match=message):
        entanglement_entropy(module)
