"""Whole-program training runs (tngraph.executor.adjoint): one autograd node whose backward is
generated next to the forward, checked against the recorded program it replaces."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import ROOT, rand_spec, randomize

import tngraph
from tngraph.executor.adjoint import _unview, adjoint_eligible

TT = ("tngraph: 1\nname: tt\nnetwork: {{template: tt_linear, in_shape: {ins}, "
      "out_shape: {outs}, ranks: {rank}}}\n")


def _tt(ins: list[int], outs: list[int], rank: int, dtype: str = "float64",
        bias: bool = True) -> tngraph.TNModule:
    text = TT.format(ins=ins, outs=outs, rank=rank)
    if not bias:
        text = text.replace("ranks:", "bias: false, ranks:")
    module = tngraph.compile(text, dtype=dtype, cache=False, strategy="network")
    randomize(module, seed=3, scale=0.5)
    return module


def _nodes(out: torch.Tensor) -> list[str]:
    seen, names, todo = set(), [], [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.append(type(fn).__name__)
        todo.extend(f for f, _ in fn.next_functions)
    return names


def _grads(module: tngraph.TNModule, x: torch.Tensor, recorded: bool
           ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
    """Output, parameter gradients and the data's gradient, through the generated backward or
    (``recorded``) the recorded program."""
    program = module._program(x.shape[0])
    saved = program._adjoint, program._generated
    if recorded:
        program._adjoint, program._generated = None, program._generated_plain
    try:
        module.zero_grad()
        x = x.detach().requires_grad_(x.requires_grad)
        out = module(x)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.real.dtype).view(out.shape)
        (out * weights).sum().abs().backward()
        return (out.detach(), [p.grad if p.grad is None else p.grad.clone()
                               for p in module.parameters()],
                None if x.grad is None else x.grad.clone())
    finally:
        program._adjoint, program._generated = saved


TT_CASES = [
    ([4, 8, 8, 4], [4, 8, 8, 4], 8, 16),      # 'bcast' steps (flipped into output order)
    ([4, 4, 4], [2, 3, 4], 3, 5),             # mm steps only
    ([2, 3], [3, 2], 2, 7),
]


@pytest.mark.parametrize(("ins", "outs", "rank", "batch"), TT_CASES)
def test_a_tt_layer_trains_as_one_autograd_node(ins: list[int], outs: list[int], rank: int,
                                                batch: int) -> None:
    module = _tt(ins, outs, rank)
    x = torch.randn(batch, *ins, dtype=torch.float64)
    program = module._program(batch)
    assert program._adjoint is not None
    nodes = _nodes(module(x))
    assert nodes.count("_ProgramRunBackward") == 1
    assert "AddBackward0" not in nodes                   # the bias is added inside the node
    assert "(bias.reshape(1" in program.adjoint_source.forward   # ... in its last matmul
    assert not {"MmBackward0", "BmmBackward0", "_BroadcastMatmulBackward"} & set(nodes)


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("data_grad", [False, True])
@pytest.mark.parametrize(("ins", "outs", "rank", "batch"), TT_CASES)
def test_the_generated_backward_matches_the_recorded_program(
        ins: list[int], outs: list[int], rank: int, batch: int, data_grad: bool,
        dtype: str) -> None:
    module = _tt(ins, outs, rank, dtype)
    x = torch.randn(batch, *ins, dtype=getattr(torch, dtype)).requires_grad_(data_grad)
    got = _grads(module, x, recorded=False)
    want = _grads(module, x, recorded=True)
    torch.testing.assert_close(got[0], want[0])
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w)
    assert (got[2] is None) == (not data_grad)
    if data_grad:
        torch.testing.assert_close(got[2], want[2])


@pytest.mark.parametrize("seed", range(8))
def test_seeded_random_tt_layers_agree_whichever_program_trains_them(seed: int) -> None:
    rng = random.Random(seed)
    d = rng.randint(2, 4)
    ins = [rng.randint(1, 4) for _ in range(d)]
    outs = [rng.randint(1, 4) for _ in range(d)]
    module = _tt(ins, outs, rng.randint(1, 4))
    batch = rng.randint(1, 6)
    assert module._program(batch)._adjoint is not None
    x = torch.randn(batch, *ins, dtype=torch.float64, requires_grad=True)
    got, want = _grads(module, x, recorded=False), _grads(module, x, recorded=True)
    torch.testing.assert_close(got[0], want[0])
    for g, w in zip([*got[1], got[2]], [*want[1], want[2]]):
        torch.testing.assert_close(g, w)


def test_programs_with_other_kernels_are_not_eligible() -> None:
    module = tngraph.compile(rand_spec(4, 0, data=True), dtype="float64", cache=False)
    program = module._program(3)
    assert program._adjoint is None
    assert not adjoint_eligible(program._ops, program.sources, program.leaf_equations,
                                bool(program.sliced))


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradients_of_any_order_are_right(dtype: torch.dtype) -> None:
    """gradcheck runs the generated backward; gradgradcheck differentiates the backward, which
    recomputes the program with recorded ops under ``create_graph``."""
    module = _tt([2, 3, 2], [3, 2, 2], 2, str(dtype).split(".")[1])
    params = list(module.parameters())
    x = torch.randn(3, 2, 3, 2, dtype=dtype, requires_grad=True)

    def run(data: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(module, dict(zip(
            [n for n, _ in module.named_parameters()], values)), (data,))
        return out

    assert "_ProgramRunBackward" in _nodes(run(x, *params))
    assert torch.autograd.gradcheck(run, (x, *params))
    assert torch.autograd.gradgradcheck(run, (x, *params))


def test_two_forwards_before_one_backward_keep_their_own_intermediates() -> None:
    """Large intermediates come from the program's buffer pool: a buffer the first call's graph
    still holds is not handed to the second call (gradient accumulation, two losses)."""
    module = _tt([4, 8, 8, 4], [4, 8, 8, 4], 8, "float32")
    gen = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(64, 1024, generator=gen), torch.randn(64, 1024, generator=gen)
    module.zero_grad()
    (module(x1).square().sum() + 2 * module(x2).square().sum()).backward()
    together = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module(x1).square().sum().backward()
    (2 * module(x2).square().sum()).backward()
    for got, want in zip(together, [p.grad for p in module.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert module._program(64)._pool.nbytes > 0


def test_a_broadcast_gradient_is_copied_into_the_pool() -> None:
    """``out.sum().backward()`` hands the program a broadcast gradient (stride 0), which its
    matmuls cannot read: it is copied once, into the pool (a fresh tensor of 1 MB faults its
    pages at every step), and the gradients equal those of a dense gradient of ones."""
    module = _tt([4, 8, 8, 4], [4, 8, 8, 4], 8, "float32")
    x = torch.randn(256, 1024, generator=torch.Generator().manual_seed(0))
    module(x).sum().backward()
    broadcast = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    out = module(x)
    out.backward(torch.ones_like(out))
    for got, want in zip(broadcast, [p.grad for p in module.parameters()]):
        torch.testing.assert_close(got, want)
    pool = module._program(256)._pool
    assert ((256, 4, 8, 8, 4), torch.float32) in set(pool._free)


def test_a_retained_graph_gives_the_same_gradients_twice() -> None:
    module = _tt([4, 4, 4], [2, 3, 4], 3)
    out = module(torch.randn(5, 64, dtype=torch.float64)).sum()
    first = torch.autograd.grad(out, list(module.parameters()), retain_graph=True)
    second = torch.autograd.grad(out, list(module.parameters()))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_a_weight_changed_in_place_before_the_backward_is_refused() -> None:
    module = _tt([4, 4, 4], [2, 3, 4], 3, bias=False)
    out = module(torch.randn(5, 64, dtype=torch.float64)).sum()
    with torch.no_grad():
        next(module.parameters()).mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()


def test_frozen_weights_get_no_gradient_and_the_others_are_right() -> None:
    module = _tt([4, 4, 4], [2, 3, 4], 3)
    x = torch.randn(5, 64, dtype=torch.float64)
    want = _grads(module, x, recorded=True)[1]
    frozen = next(module.parameters())
    frozen.requires_grad_(False)
    got = _grads(module, x, recorded=False)[1:]
    assert got[1] is None
    for p, g, w in zip(module.parameters(), got[0], want):
        if p is frozen:
            assert p.grad is None
        else:
            torch.testing.assert_close(g, w)


def test_vmap_runs_the_recorded_program() -> None:
    module = _tt([4, 4, 4], [2, 3, 4], 3)
    program = module._program(5)
    tensors = list(module.tensors.values_for_call())
    stack = torch.randn(3, 5, 4, 4, 4, dtype=torch.float64)
    mapped = torch.vmap(lambda x: program._adjoint.run(tensors, [x]))(stack)
    for m, x in zip(mapped, stack):
        torch.testing.assert_close(m, program._adjoint.run(tensors, [x]))


def test_chains_and_stacked_groups_keep_their_own_training_program() -> None:
    module = tngraph.compile(str(ROOT / "models/mps_classifier.yaml"), cache=False)
    assert module._program(8)._adjoint is None


def test_unview_undoes_a_permuted_copy_and_a_reshape() -> None:
    v = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(_unview(v.reshape(6, 4), v.shape, None), v)
    assert torch.equal(_unview(v.permute(1, 2, 0).reshape(12, 2), v.shape, (1, 2, 0)), v)
