"""The executor: kernel design, stacked lockstep groups, strategies, gradients through groups."""

from __future__ import annotations

import math
import time

import pytest
import torch
from helpers import ROOT, assert_matches, dense_oracle, node_grads, random_inputs, randomize

import tngraph
from tngraph.executor import (
    SMALL_INNER,
    Operand,
    _mm_materialise,
    _operand_source,
    design_kernel,
    merged_permutation,
)

MPS_CLASSIFIER = str(ROOT / "models/mps_classifier.yaml")
TT_LINEAR = str(ROOT / "models/tt_linear.yaml")


def _classifier(bond: int, sites: int = 16, **options: object) -> tngraph.TNModule:
    text = (f"tngraph: 1\nname: c\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
            f"bond_dim: {bond}, input: x, feature_map: multilinear, output_dim: 3}}\n")
    return tngraph.compile(text, dtype="float64", cache=False, **options)


@pytest.mark.parametrize(("left", "right", "kept", "mode"), [
    (("b", "l"), ("l", "p", "r"), {"b", "p", "r"}, "mm"),          # environment x core
    (("b", "p", "r"), ("b", "p"), {"b", "r"}, "small"),            # fused [1, x] feature
    (("b", "l"), ("b", "p"), {"b", "l", "p"}, "outer"),            # nothing contracted
    (("b", "o", "r"), ("b", "r"), {"b", "o"}, "matvec"),           # label site, large
    (("b", "i", "k"), ("b", "k", "j"), {"b", "i", "j"}, "bmm"),
])
def test_kernel_modes(left: tuple[str, ...], right: tuple[str, ...], kept: set[str],
                      mode: str) -> None:
    sizes = {"b": 64, "l": 20, "p": 2, "r": 20, "o": 30, "i": 6, "k": 7, "j": 5}
    kernel = design_kernel(0, 1, 2, left, right, kept, sizes, lead="b")
    assert kernel.mode == mode
    assert set(kernel.out_layout) == kept
    if "b" in kept:
        assert kernel.out_layout[0] == "b"          # batch outermost
    # and the kernel computes the contraction
    a = torch.randn(*(sizes[i] for i in left), dtype=torch.float64)
    b = torch.randn(*(sizes[i] for i in right), dtype=torch.float64)
    from tngraph.executor import run_kernel
    from tngraph.plan import equation

    expected = torch.einsum(equation([left, right], kernel.out_layout), a, b)
    torch.testing.assert_close(run_kernel(kernel, a, b), expected)


_BROADCAST_SIZES = {"b": 3, "k1": 8, "k2": 8, "m": 32, "n": 16}


@pytest.mark.parametrize(("left", "right"), [(("b", "l"), ("b", "p")), (("b", "p"), ("b", "l"))])
def test_an_outer_product_puts_its_longer_side_innermost(left: tuple[str, ...],
                                                          right: tuple[str, ...]) -> None:
    """``(b, l) x (b, p)`` with ``l`` 40 and ``p`` 2, either way round, is written
    ``(b, p, l)``: a broadcast multiply with a short inner run is several times slower."""
    from tngraph.executor import run_kernel

    sizes = {"b": 8, "l": 40, "p": 2}
    kernel = design_kernel(0, 1, 2, left, right, {"b", "l", "p"}, sizes, lead="b")
    assert kernel.mode == "outer" and kernel.out_layout == ("b", "p", "l")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*(sizes[i] for i in left), dtype=torch.float64, generator=gen)
    y = torch.randn(*(sizes[i] for i in right), dtype=torch.float64, generator=gen)
    expected = torch.einsum(f"{''.join(left)},{''.join(right)}->bpl", x, y)
    torch.testing.assert_close(run_kernel(kernel, x, y), expected)


@pytest.mark.parametrize("grad", [False, True])
def test_a_broadcast_kernel_reads_its_operand_in_place(grad: bool) -> None:
    """``(b, k1, k2, m)`` against ``(k1, k2, n)``: no view of the left operand puts its free
    indices in one block, so it would be copied; the 'bcast' kernel runs one matmul per ``b``
    with the right operand broadcast (without autograd), or copies for one ``mm`` (under
    autograd, where the broadcast operand's gradient would cost more). Both give the einsum."""
    from tngraph.executor import run_kernel
    from tngraph.plan import equation

    left, right = ("b", "k1", "k2", "m"), ("k1", "k2", "n")
    sizes = _BROADCAST_SIZES
    kernel = design_kernel(0, 1, 2, left, right, {"b", "m", "n"}, sizes, lead="b")
    assert kernel.mode == "bcast" and kernel.out_layout == ("b", "m", "n")
    assert kernel.a.perm is None and kernel.a.shape3 == (3, 64, 32) and kernel.a.transposed
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(*(sizes[i] for i in left), dtype=torch.float64, generator=gen)
    b = torch.randn(*(sizes[i] for i in right), dtype=torch.float64, generator=gen)
    expected = torch.einsum(equation([left, right], kernel.out_layout), a, b)
    with torch.set_grad_enabled(grad):
        torch.testing.assert_close(run_kernel(kernel, a, b), expected)
    if grad:
        a.requires_grad_()
        b.requires_grad_()
        assert torch.autograd.gradcheck(lambda x, y: run_kernel(kernel, x, y), (a, b),
                                        fast_mode=True)


@pytest.mark.parametrize(("sizes", "why"), [
    ({**_BROADCAST_SIZES, "m": 16}, "each matmul under BROADCAST_MIN_MACS"),
    ({**_BROADCAST_SIZES, "n": 64}, "the broadcast gradient larger than the operand"),
    ({**_BROADCAST_SIZES, "b": 1}, "a batch of one"),
])
def test_a_broadcast_kernel_is_used_only_where_it_pays(sizes: dict[str, int],
                                                        why: str) -> None:
    kernel = design_kernel(0, 1, 2, ("b", "k1", "k2", "m"), ("k1", "k2", "n"),
                           {"b", "m", "n"}, sizes, lead="b")
    assert kernel.mode != "bcast", why


def test_a_tt_layer_reads_its_half_train_product_in_place() -> None:
    """4096 -> 4096 as [8, 8, 8, 8], rank 4: the data meets one pair of cores, and the result
    ``(b, i0, i1, r, o2, o3)`` meets the other pair. That step is one matmul per sample with
    the pair broadcast: without autograd a plain ``bmm``, in the training program
    ``_BroadcastMatmul``; the recorded-ops program (torch.func, torch.compile) copies the
    result for one ``mm``. Outputs and gradients agree with the recorded ops and the oracle."""
    text = ("tngraph: 1\nname: tt\nnetwork: {template: tt_linear, in_shape: [8, 8, 8, 8], "
            "out_shape: [8, 8, 8, 8], ranks: 4}\n")
    module = tngraph.compile(text, dtype="float64", cache=False, strategy="network")
    randomize(module, seed=1, scale=0.3)
    x = torch.randn(4, 4096, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    program = module._program(4)
    assert "_broadcast_operands(" in program.workspace_source and program._generated_ws is not None
    assert "_BroadcastMatmul.apply" in program.source_code
    assert "_BroadcastMatmul" not in program.plain_source
    assert program._adjoint is not None
    with torch.no_grad():
        inferred = module(x)
    assert_matches(inferred, dense_oracle(module, {"x": x}))
    grads = []
    adjoint = program._adjoint
    for generated in (program._generated, program._generated, program._generated_plain):
        # the generated backward (adjoint), the fused source, the recorded ops
        program._generated, program._adjoint = generated, adjoint if not grads else None
        module.zero_grad()
        out = module(x)
        torch.testing.assert_close(out.detach(), inferred)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum(
            ).backward()
        grads.append([p.grad.clone() for p in module.parameters()])
    for other in grads[1:]:
        for got, want in zip(grads[0], other):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_a_flipped_broadcast_kernel_writes_its_result_transposed(flip: bool,
                                                                  dtype: torch.dtype) -> None:
    """A flipped 'bcast' kernel gives ``(n, cols, m)``: the transposed products, in all three
    programs' forms (recorded, autograd Function, inference), with right gradients."""
    from tngraph.executor.kernels import _broadcast, _BroadcastMatmul

    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, 5, 4, dtype=dtype, generator=gen).transpose(1, 2)   # (n, m, k) view
    b = torch.randn(5, 2, dtype=dtype, generator=gen)
    want = torch.einsum("nmk,kc->nmc", a, b)
    want = want.transpose(1, 2) if flip else want
    for recorded in (False, True):
        torch.testing.assert_close(_broadcast(a, b[None], recorded, flip), want)
    a_leaf, b_leaf = a.detach().requires_grad_(), b.detach().requires_grad_()
    torch.testing.assert_close(_BroadcastMatmul.apply(a_leaf, b_leaf, None, flip), want)
    assert torch.autograd.gradcheck(
        lambda x, y: _BroadcastMatmul.apply(x, y, None, flip), (a_leaf, b_leaf))


def test_the_last_tt_step_writes_the_output_order() -> None:
    """At a TT-layer's last step the flipped kernel's result is already in output order: no
    permute follows it."""
    text = ("tngraph: 1\nname: tt\nnetwork: {template: tt_linear, in_shape: [4, 8, 8, 4], "
            "out_shape: [4, 8, 8, 4], ranks: 8}\n")
    program = tngraph.compile(text, cache=False, strategy="network")._program(64)
    last = program._ops[-1].kernel
    assert last.mode == "bcast" and last.flip
    assert program.final_perm is None and program.final_merged is None


@pytest.mark.parametrize("regime", ["one bmm", "chunks", "loop"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_summed_batched_products_in_every_regime(regime: str, dtype: torch.dtype,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``sum_n a[n] @ b[n]``: one bmm and a sum, chunks accumulated with baddbmm (a ragged
    last chunk included), or one addmm_ per n; from pooled buffers or not, conjugate views."""
    from tngraph.executor import kernels
    from tngraph.executor.pool import BufferPool

    chunk_entries, loop_macs = {"one bmm": (1 << 30, 1 << 40), "chunks": (3 * 6 * 4, 1 << 40),
                                "loop": (1, 1)}[regime]
    monkeypatch.setattr(kernels, "SUMMED_CHUNK_ENTRIES", chunk_entries)
    monkeypatch.setattr(kernels, "SUMMED_LOOP_MACS", loop_macs)
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(7, 5, 6, dtype=dtype, generator=gen).mT.conj()
    b = torch.randn(7, 5, 4, dtype=dtype, generator=gen)
    want = torch.einsum("nik,nkj->ij", a, b)
    for pool in (None, BufferPool()):
        torch.testing.assert_close(kernels._summed_bmm(a, b, pool), want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("transposed", [False, True])
def test_the_broadcast_matmul_is_twice_differentiable_and_vmaps(transposed: bool,
                                                                 dtype: torch.dtype) -> None:
    """``_BroadcastMatmul`` (a 'bcast' kernel under autograd): gradcheck and gradgradcheck
    for an operand stored either way (complex: conjugate-Wirtinger gradients), and ``vmap``
    gives the loop over the mapped axis."""
    from tngraph.executor.kernels import _BroadcastMatmul

    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 4, 5, dtype=dtype, generator=gen)     # (n, k, m) or (n, m, k)
    b = torch.randn(5 if not transposed else 4, 2, dtype=dtype, generator=gen)
    a.requires_grad_()
    b.requires_grad_()

    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _BroadcastMatmul.apply(x.transpose(1, 2) if transposed else x, y)

    assert torch.autograd.gradcheck(run, (a, b))
    assert torch.autograd.gradgradcheck(run, (a, b))
    stack = torch.randn(2, *a.shape, dtype=dtype, generator=gen)
    mapped = torch.vmap(run, in_dims=(0, None))(stack, b)
    torch.testing.assert_close(mapped, torch.stack([run(s, b) for s in stack]))


def test_small_inner_is_unrolled_only_for_tiny_contractions() -> None:
    sizes = {"b": 8, "p": SMALL_INNER + 1, "r": 3}
    kernel = design_kernel(0, 1, 2, ("b", "p", "r"), ("b", "p"), {"b", "r"}, sizes)
    assert kernel.mode != "small"


def test_mps_half_chains_run_in_lockstep() -> None:
    module = _classifier(bond=6, sites=32)
    program = module._program(16)
    stacked = [g for g in program.groups if len(g.kernels) > 1]
    steps = len(module.plan.steps)
    # most steps run two at a time (left and right half-chain together)
    assert sum(len(g.kernels) for g in stacked) >= 0.7 * steps
    assert any(g.reuse_a is not None or g.reuse_b is not None for g in stacked)


@pytest.mark.parametrize("bond", [2, 5])
def test_stacked_groups_match_oracle_and_gradcheck(bond: int) -> None:
    module = _classifier(bond=bond, sites=10)
    randomize(module, seed=bond, scale=0.5)
    x = random_inputs(module, 4, seed=1)["x"]
    assert_matches(module(x), dense_oracle(module, {"x": x}))
    names = list(module.tensors)

    def f(*tensors: torch.Tensor) -> torch.Tensor:
        state = {f"tensors.{n}": t for n, t in zip(names, tensors)}
        return torch.func.functional_call(module, state, (x,))

    inputs = tuple(t.detach().clone().requires_grad_() for t in module.tensors.values())
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)


def test_gradients_through_groups_match_unstacked() -> None:
    """The same network run with and without stacking gives the same gradients."""
    grouped = _classifier(bond=3, sites=12)
    sliced = _classifier(bond=3, sites=12)
    sliced.load_state_dict(grouped.state_dict())
    x = random_inputs(grouped, 5, seed=3)["x"]
    from tngraph.executor import build_program

    lone = build_program(sliced.plan, sliced._ones, 5)
    for group in lone.groups:                       # force every step to run alone
        assert group.kernels
    unstacked = type(lone)(lone.n_leaves, lone.leaf_equations,
                           [type(g)([k]) for g in lone.groups for k in g.kernels],
                           lone.final_perm, lone.result_slot, lone.sliced, lone.sources)
    tensors = list(sliced.tensors.values())                   # declared (= term) order
    port = sliced._port_data("x", sliced.spec.network.inputs["x"], x)
    out_lone = unstacked.run(tensors, [port])
    out_grouped = grouped(x)
    torch.testing.assert_close(out_lone, out_grouped)
    g1 = torch.autograd.grad(out_lone.sum(), tensors)
    g2 = node_grads(grouped, out_grouped.sum())
    for a, b in zip(g1, g2.values()):
        torch.testing.assert_close(a, b)


def test_no_grad_weight_cache_follows_parameter_updates() -> None:
    module = _classifier(bond=3, sites=8)
    x = random_inputs(module, 4, seed=0)["x"]
    with torch.no_grad():
        first = module(x)
        module.tensors["A3"].mul_(2.0)              # in-place update bumps the version
        second = module(x)
    assert not torch.allclose(first, second)
    assert_matches(second, dense_oracle(module, {"x": x}))


@pytest.mark.parametrize("strategy", ["network", "dense", "auto"])
@pytest.mark.parametrize("grad", [True, False])
def test_strategies_agree(strategy: str, grad: bool) -> None:
    module = tngraph.compile(TT_LINEAR, {"rank": 3}, dtype="float64", cache=False,
                             strategy=strategy)
    with torch.no_grad():
        module.bias.normal_()
    x = torch.randn(7, 4096, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        out = module(x)
        again = module(x)                          # cached weight / chosen strategy
    weight = module.dense().reshape(4096, 16)
    expected = x @ weight + module.bias.reshape(16)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(again, expected)
    assert module.execution == (strategy if strategy != "auto" else module.execution)
    assert module.execution in ("network", "dense")


TT_1024 = """\
tngraph: 1
name: tt1024
network: {{template: tt_linear, in_shape: [4, 8, 8, 4], out_shape: [4, 8, 8, 4], ranks: {rank},
          input: x}}
plan: {{batch_size: {batch}}}
"""


@pytest.mark.parametrize(("text", "overrides", "expected"), [
    # a TT-layer at the plan's batch: one 4096 x 16 weight and a matmul beat four steps
    (TT_LINEAR, {"rank": 8}, "dense"),
    # a chain classifier has stacked ports: the network always
    (None, None, "network"),
    # 1024 -> 1024 TT-layers, as timed (one thread): rank 8 at batch 64 runs the network in
    # 1.0 ms against 1.9 ms dense; rank 16 at batch 256 the dense weight in 4.1 ms against 5.0
    (TT_1024.format(rank=8, batch=64), None, "network"),
    (TT_1024.format(rank=16, batch=256), None, "dense"),
    (TT_1024.format(rank=4, batch=256), None, "network"),
])
def test_auto_execution_is_decided_from_the_plan(text: str | None, overrides: dict | None,
                                                 expected: str) -> None:
    """No timing: the same plan always runs the same way (a cost model of the plan)."""
    make = (lambda: tngraph.compile(text, overrides, cache=False)) if text is not None else \
        (lambda: _classifier(bond=2, sites=4))
    first, second = make(), make()
    assert first.execution == second.execution == expected
    x = random_inputs(first, 3)

    def no_clock() -> float:
        raise AssertionError("a forward pass read the clock")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "perf_counter", no_clock)
        torch.testing.assert_close(first(**x), second(**x))


def test_dense_strategy_gradients_match_network() -> None:
    dense = tngraph.compile(TT_LINEAR, {"rank": 2}, dtype="float64", cache=False,
                            strategy="dense")
    network = tngraph.compile(TT_LINEAR, {"rank": 2}, dtype="float64", cache=False,
                              strategy="network")
    network.load_state_dict(dense.state_dict())
    x = torch.randn(3, 4096, dtype=torch.float64)
    _assert_same_node_grads(dense, network, x)


def _assert_same_node_grads(one: tngraph.TNModule, other: tngraph.TNModule,
                            x: torch.Tensor) -> None:
    """Both modules give every node (and the bias) the same gradient, whatever their
    parameter layouts (the dense weight's program reads the cores otherwise)."""
    grads = [node_grads(m, m(x).square().sum()) for m in (one, other)]
    assert list(grads[0]) == list(grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name])
    for m in (one, other):
        m.zero_grad()
        m(x).square().sum().backward()
    torch.testing.assert_close(one.bias.grad, other.bias.grad)


def test_dense_strategy_refused_for_stacked_ports() -> None:
    module = _classifier(bond=2, sites=4, strategy="dense")
    x = random_inputs(module, 2)["x"]
    with pytest.raises(tngraph.CompileError, match="execution 'dense'"):
        module(x)


def test_plan_cache_tells_apart_networks_with_the_same_merged_view(tmp_path) -> None:
    """One 2-leg port vs a stacked port of two copies: same shape once ports are folded in."""
    one = """
tngraph: 1
name: one
network:
  nodes:
    A: {legs: {p: 2, r: 3}}
    B: {legs: {l: 3, q: 2, o: 4}}
  inputs:
    x: {legs: {p: 2, q: 2}}
  edges: [[A.r, B.l], [x.p, A.p], [x.q, B.q]]
  outputs: [B.o]
"""
    two = """
tngraph: 1
name: two
network:
  nodes:
    A: {legs: {p: 2, r: 3}}
    B: {legs: {l: 3, p: 2, o: 4}}
  inputs:
    x: {legs: {p: 2}, stack: 2}
  edges: [[A.r, B.l], ["x[0].p", A.p], ["x[1].p", B.p]]
  outputs: [B.o]
"""
    first = tngraph.compile(one, cache_dir=tmp_path, dtype="float64")
    second = tngraph.compile(two, cache_dir=tmp_path, dtype="float64")
    assert not second.plan.cache_hit
    for module in (first, second):
        x = random_inputs(module, 3)["x"]
        assert_matches(module(x), dense_oracle(module, {"x": x}))


def test_parameters_keep_the_declared_node_order() -> None:
    module = _classifier(bond=2, sites=12)
    declared = list(module.spec.network.nodes)
    assert list(module.tensors) == declared        # A0, A1, A2, ..., not A0, A1, A10, ...
    assert [k.removeprefix("tensors.") for k in module.state_dict()] == declared


@pytest.mark.parametrize("optimizer", [
    lambda p: torch.optim.Adam(p, lr=0.1, fused=True),     # no version bump on parameters
    lambda p: torch.optim.SGD(p, lr=0.1),
], ids=["fused-adam", "sgd"])
def test_no_grad_caches_see_optimizer_steps(optimizer) -> None:
    """Cached gathered cores (MPS) and cached dense weights (TT) follow every optimizer step."""
    for module in (_classifier(bond=3, sites=8), tngraph.compile(TT_LINEAR, {"rank": 2},
                                                                  dtype="float64", cache=False,
                                                                  strategy="dense")):
        x = random_inputs(module, 4, seed=0)["x"]
        opt = optimizer(list(module.parameters()))
        with torch.no_grad():
            before = module(x)
        module(x).square().sum().backward()
        opt.step()
        with torch.no_grad():
            after = module(x)
        assert not torch.allclose(before, after)
        assert_matches(after, dense_oracle(module, {"x": x}))


@pytest.mark.parametrize(("sites", "feature_map", "bound"), [
    (64, "multilinear", 1e6), (784, "multilinear", 1e6),
    # trig starts as a chain of rotations (norm sqrt(10 / 2) without noise); tighter bounds and
    # 784 sites in test_stability.py
    (64, "trig", 10.0),
])
def test_long_chains_stay_finite_in_float32(sites: int, feature_map: str, bound: float) -> None:
    """Default (near-identity) initialisation: outputs and gradients of long MPS chains on
    uniform [0, 1] inputs stay finite and bounded in float32."""
    text = (f"tngraph: 1\nname: long\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
            f"bond_dim: 6, input: x, feature_map: {feature_map}, output_dim: 10}}\n")
    module = tngraph.compile(text, optimize="random-greedy", cache=False, batch_size=16)
    x = torch.rand(16, sites, generator=torch.Generator().manual_seed(0))
    out = module(x)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert 1e-6 < float(out.detach().abs().max()) < bound
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())


@pytest.mark.parametrize(("left", "right", "kept"), [
    (("b", "l", "p", "o"), ("b", "p"), {"b", "l", "o"}),      # label core: p in the middle
    (("b", "p"), ("b", "l", "p", "o"), {"b", "l", "o"}),      # the same, operands swapped
    (("b", "c", "l", "p", "o"), ("c", "b", "p"), {"b", "c", "l", "o"}),  # two batch indices
])
@pytest.mark.parametrize("ones", [False, True])
def test_select_kernel_weights_in_place(left: tuple[str, ...], right: tuple[str, ...],
                                        kept: set[str], ones: bool) -> None:
    """A tiny contraction whose large operand holds the inner index mid-layout runs without
    copying that operand, and computes the contraction (with a known leading-ones slice)."""
    sizes = {"b": 5, "c": 3, "l": 4, "p": 2, "o": 6}
    weights_slot = 1 if len(right) < len(left) else 0
    kernel = design_kernel(0, 1, 2, left, right, kept, sizes, lead="b",
                           ones={weights_slot} if ones else frozenset())
    assert kernel.mode == "select"
    assert kernel.a.perm is None
    assert kernel.out_layout[0] == "b" and set(kernel.out_layout) == kept
    a = torch.randn(*(sizes[i] for i in left), dtype=torch.float64)
    b = torch.randn(*(sizes[i] for i in right), dtype=torch.float64)
    if ones:
        small = (a, b)[weights_slot]
        small.select(list((left, right)[weights_slot]).index("p"), 0).fill_(1.0)
    from tngraph.executor import run_kernel
    from tngraph.plan import equation

    expected = torch.einsum(equation([left, right], kernel.out_layout), a, b)
    torch.testing.assert_close(run_kernel(kernel, a, b), expected)


@pytest.mark.parametrize("bond", [3, 7])
def test_stacked_chain_keeps_the_bond_innermost(bond: int) -> None:
    """Stacked parameters are copied anyway, so their free indices are ordered largest last:
    each half-chain's environment comes out as (batch, p, bond), whatever the plan's
    orientation, and the next tiny contraction over p reads contiguous rows."""
    module = _classifier(bond=bond, sites=24)
    program = module._program(16)
    stacked = [g.kernels[0] for g in program.groups
               if len(g.kernels) > 1 and g.kernels[0].mode in ("bmm", "mm")
               and len(g.kernels[0].groups[3]) > 1]
    assert stacked
    for kernel in stacked:
        free_b = kernel.groups[3]
        sizes = module.plan.problem.size_dict
        assert [sizes[i] for i in free_b] == sorted(sizes[i] for i in free_b)



def _program_and_inputs(bond: int = 4, sites: int = 24) -> tuple[tngraph.TNModule, torch.Tensor]:
    module = _classifier(bond=bond, sites=sites)
    randomize(module, seed=bond, scale=0.5)
    return module, random_inputs(module, 6, seed=1)["x"]


def test_inference_runs_in_a_workspace_kept_between_calls() -> None:
    module, x = _program_and_inputs()
    with torch.no_grad():
        out = module(x)
    program = module._program(6)
    assert program._generated_ws is not None
    assert "out=ws[" in program.workspace_source
    (entries, pointers, store), = program._workspaces.values()
    assert pointers and out.untyped_storage().data_ptr() not in pointers
    assert_matches(out, dense_oracle(module, {"x": x}))
    with torch.no_grad():
        module(x)
    assert len(program._workspaces) == 1          # reused, not rebuilt
    with torch.inference_mode():                  # inference tensors: a workspace of their own
        assert_matches(module(x), dense_oracle(module, {"x": x}))
    assert len(program._workspaces) == 2


def test_the_split_lockstep_step_runs_fused_in_the_workspace() -> None:
    """The last lockstep step, whose result splits into the two half-chains' environments, is
    one multiply-add into a workspace tensor (not a generic kernel into fresh memory)."""
    import re

    module, x = _program_and_inputs()
    with torch.no_grad():
        out = module(x)
    source = module._program(6).workspace_source
    split = re.search(r"    r(\d+) = torch\.addcmul\([^\n]*out=ws\[\d+\]\)\n"
                      r"(?:    del [^\n]*\n)*    p\1 = r\1\.reshape\(2, -1\)\.unbind\(0\)", source)
    assert split is not None, source
    assert_matches(out, dense_oracle(module, {"x": x}))


def test_inference_gathers_the_ports_into_the_workspace() -> None:
    """The data ports' gathers (the feature weights of every chain step) are written into
    tensors kept in the workspace, split into views once; each call rewrites them, so a new
    input gives its own result, and they are never handed out."""
    module, x = _program_and_inputs()
    other = torch.rand_like(x)
    with torch.no_grad():
        first = module(x)
    program = module._program(6)
    (_, pointers, store), = program._workspaces.values()
    kept = dict(store.kept)
    assert kept and all(buffer.untyped_storage().data_ptr() in pointers
                        for buffer, _ in kept.values())
    with torch.no_grad():
        second = module(other)
        again = module(x)
    assert all(store.kept[key][1] is views for key, (_, views) in kept.items())  # made once
    assert_matches(second, dense_oracle(module, {"x": other}))
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert not torch.allclose(second, first)

def test_inference_reuses_its_operands_while_the_storages_stay() -> None:
    """The workspace variant's operands (views of the stored cores and of the kept gathers)
    are handed over as one dict made once: later calls only rewrite the ports' gathers. A
    storage re-seated (``p.data = ...``) or changed in place is seen: the dict is made anew,
    or its views alias the changed memory."""
    module, x = _program_and_inputs()
    other = torch.rand_like(x)
    program = module._program(6)
    with torch.no_grad():
        module(x)
        (_, _, store), = program._workspaces.values()
        operands = store.fetched[1]
        assert_matches(module(other), dense_oracle(module, {"x": other}))
        assert store.fetched[1] is operands                     # reused
        stacked = max(module.parameters(), key=lambda p: p.dim())
        stacked.mul_(0.5)                                       # in place: same views
        assert_matches(module(x), dense_oracle(module, {"x": x}))
        assert store.fetched[1] is operands
        stacked.data = stacked.data.clone() * 2                 # re-seated: made anew
        assert_matches(module(other), dense_oracle(module, {"x": other}))
        assert store.fetched[1] is not operands



def test_workspace_in_use_elsewhere_falls_back_to_allocating() -> None:
    """A second thread (here: the lock held) runs the allocating code, with the same result."""
    from tngraph.executor import _WORKSPACE_LOCK

    module, x = _program_and_inputs()
    with torch.no_grad():
        expected = module(x)
        with _WORKSPACE_LOCK:
            got = module(x)
    torch.testing.assert_close(got, expected)


def test_autograd_calls_do_not_use_the_workspace() -> None:
    module, x = _program_and_inputs()
    out = module(x)
    assert out.requires_grad
    assert not module._program(6)._workspaces
    out.sum().backward()
    assert all(p.grad is not None for p in module.parameters())


def _pair(bond: int = 3, sites: int = 16, monkeypatch: pytest.MonkeyPatch | None = None
          ) -> tuple[tngraph.TNModule, tngraph.TNModule]:
    """The same classifier twice: with fused chain runs, and with them switched off."""
    from tngraph.executor import Program

    fused = _classifier(bond=bond, sites=sites)
    randomize(fused, seed=bond, scale=0.5)
    assert monkeypatch is not None
    monkeypatch.setattr(Program, "_chain_runs", lambda self: {})
    plain = _classifier(bond=bond, sites=sites)
    plain.load_state_dict(fused.state_dict())
    plain._program(5)                               # built while chain runs are off
    monkeypatch.undo()
    return fused, plain


def test_chain_runs_are_one_autograd_node(monkeypatch: pytest.MonkeyPatch) -> None:
    fused, plain = _pair(monkeypatch=monkeypatch)
    assert "apply_positional(_ChainRun, " in fused._program(5).source_code
    assert "_ChainRun" not in plain._program(5).source_code


@pytest.mark.parametrize("frozen", [False, True])
def test_chain_run_gradients_match_op_by_op_autograd(monkeypatch: pytest.MonkeyPatch,
                                                     frozen: bool) -> None:
    """Cores, the incoming environment and the data (feature weights) all get the gradients
    that op-by-op autograd gives; frozen cores get none."""
    fused, plain = _pair(monkeypatch=monkeypatch)
    if frozen:
        for module in (fused, plain):
            for node in ("A3", "A12"):      # (their storages: a half-chain's cores)
                tensors = module.tensors
                tensors.get_parameter(tensors.parameter_of(node)).requires_grad_(False)
    x = random_inputs(fused, 5, seed=4)["x"]
    grads = []
    for module in (fused, plain):
        xx = x.clone().requires_grad_()
        out = module(xx)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * weights).sum().backward()
        grads.append([xx.grad] + list(module.tensors.grads().values()))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected)
    if frozen:
        assert fused.tensors.grads()["A3"] is None


def test_chain_run_gradcheck_including_the_data() -> None:
    module = _classifier(bond=3, sites=16)
    randomize(module, seed=0, scale=0.5)
    assert "apply_positional(_ChainRun, " in module._program(3).source_code
    x = random_inputs(module, 3, seed=5)["x"].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda data: module(data), (x,), fast_mode=True)


def _chain_run_calls(module: tngraph.TNModule, x: torch.Tensor,
                     monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """The arguments of every chain run (``apply_positional(_ChainRun, ...)``) in one forward
    and backward of ``module`` on ``x`` (batch 5)."""
    from tngraph.executor import _ChainRun
    from tngraph.executor.kernels import apply_positional

    calls: list[tuple] = []

    def recorder(function: type, *args: object) -> object:
        assert function is _ChainRun
        calls.append(args)
        return apply_positional(function, *args)

    monkeypatch.setitem(module._program(5)._generated.__globals__, "apply_positional", recorder)
    module(x).sum().backward()
    monkeypatch.undo()
    return calls


def test_a_chain_run_reads_its_cores_as_one_stacked_tensor() -> None:
    """The lockstep run of a 16-site classifier takes the half-chains' stacked cores whole,
    through its last step (whose result splits into the two environments), so its backward
    writes all core gradients into one tensor instead of stacking per-step ones."""
    module = _classifier(bond=3, sites=16)
    source = module._program(5).source_code
    (run,) = [line for line in source.splitlines() if "apply_positional(_ChainRun, " in line]
    assert "fetched[('stacked', " in run and "'b')]" not in run     # no per-step cores
    program = module._program(5)
    assert [len(p) for p in program._stacked_cores.values()] == [
        len(reqs) for n, reqs in enumerate(program._param_gathers.values())
        if n in program._stacked_cores]


def test_a_chain_run_over_part_of_a_stacked_tensor_leaves_the_rest_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cores read from a stacked tensor that also holds cores of other steps: their gradient
    is zero, the run's cores get what recorded autograd gives."""
    from tngraph.executor import _ChainRun
    from tngraph.executor.chain import chain_forward

    module = _classifier(bond=3, sites=16)
    randomize(module, seed=3, scale=0.5)
    (call,) = _chain_run_calls(module, random_inputs(module, 5, seed=8)["x"], monkeypatch)
    steps, env, stacked, *weights = call
    assert steps[0].core is not None and stacked.dim() == 4
    wider = torch.cat([stacked.detach(), torch.randn_like(stacked[:1])])
    grads = []
    for run in (lambda *t: _ChainRun.apply(*t)[0], lambda s, e, *t: chain_forward(s, e, t)):
        cores = wider.clone().requires_grad_()
        e = env.detach().clone().requires_grad_()
        out = run(steps, e, cores, *weights)
        grads.append(torch.autograd.grad(out.square().sum(), (e, cores)))
    torch.testing.assert_close(grads[0], grads[1])
    assert torch.count_nonzero(grads[0][1][-1]) == 0


@pytest.mark.parametrize("seed", range(6))
def test_merged_permutation_equals_the_plain_permute(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    ndim = 3 + seed % 4
    shape = tuple(int(s) for s in torch.randint(2, 7, (ndim,), generator=gen))
    shape = (*shape[:-1], max(shape[-1], (1 << 16) // math.prod(shape[:-1]) + 1))
    perm = tuple(int(p) for p in torch.randperm(ndim, generator=gen))
    perm = perm if perm != tuple(range(ndim)) else tuple(reversed(perm))
    x = torch.randn(shape, generator=gen)
    merged = merged_permutation(shape, perm)
    if merged is None:                       # no neighbours survive the permutation
        assert all(b != a + 1 for a, b in zip(perm, perm[1:]))
        return
    merged_shape, merged_perm, out_shape = merged
    assert len(merged_shape) < ndim and out_shape == tuple(shape[p] for p in perm)
    got = x.reshape(merged_shape).permute(merged_perm).contiguous().view(out_shape)
    assert torch.equal(got, x.permute(perm))


def test_merged_permutation_leaves_small_results_as_views() -> None:
    assert merged_permutation((4, 8, 4, 8), (0, 1, 3, 2)) is None
    assert merged_permutation((64, 64, 64), (1, 2, 0)) == ((64, 4096), (1, 0), (64, 64, 64))


def test_dense_tt_weight_materialises_small_transposed_operands() -> None:
    """The 1024 x 1024 TT-matrix weight meets its two half-trains in one ``mm``: an operand
    left as a transposed view would have autograd compute its gradient from the weight's
    gradient transposed (3-4x slower on CPU BLAS), so the small operand is copied; values and
    gradients are unchanged."""
    text = ("tngraph: 1\nname: tt\nnetwork: {template: tt_linear, in_shape: [4, 8, 8, 4], "
            "out_shape: [4, 8, 8, 4], ranks: 3, bias: true}\n")
    dense = tngraph.compile(text, dtype="float64", cache=False, strategy="dense")
    network = tngraph.compile(text, dtype="float64", cache=False, strategy="network")
    network.load_state_dict(dense.state_dict())
    x = torch.randn(5, 1024, dtype=torch.float64)
    dense(x)
    program = dense._dense.program
    final = [k for group in program.groups for k in group.kernels][-1]
    assert final.mode == "mm" and any(_mm_materialise(final))
    assert ".contiguous()" in program.source_code
    _assert_same_node_grads(dense, network, x)


@pytest.mark.parametrize(("op", "matrix", "shape", "expected"), [
    (Operand(None, (64, 2, 10), False), False, (64, 2, 10), "s4"),
    (Operand(None, (64, 2, 10), True), False, (64, 2, 10), "s4.transpose(1, 2)"),
    (Operand(None, (1, 64, 10), False), True, (64, 10), "s4"),
    (Operand(None, (64, 2, 10), False), False, (64, 20), "s4.reshape((64, 2, 10))"),
    (Operand(None, (64, 2, 10), False), False, None, "s4.reshape((64, 2, 10))"),
    (Operand((1, 0, 2), (2, 64, 10), False), False, (2, 64, 10),
     "s4.permute((1, 0, 2)).contiguous().reshape((2, 64, 10))"),
])
def test_operand_source_leaves_out_reshapes_to_the_known_shape(
        op: Operand, matrix: bool, shape: tuple[int, ...] | None, expected: str) -> None:
    """Each left-out reshape is one autograd node less per training step."""
    assert _operand_source("s4", op, matrix, shape) == expected


def test_a_chain_run_is_vmapped_by_its_rule_and_matches_its_recorded_ops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused chain Function (setup_context form) has a vmap rule: vmapped over a batch of
    environments it gives what vmapping its recorded ops gives, and its gradients match."""
    from tngraph.executor import _ChainRun
    from tngraph.executor.chain import chain_forward

    module = _classifier(bond=3, sites=16)
    (call,) = _chain_run_calls(module, random_inputs(module, 5, seed=8)["x"], monkeypatch)
    steps, env, *tensors = call
    envs = torch.stack([env.detach(), 0.5 * env.detach(), -env.detach()])

    def fused(e: torch.Tensor) -> torch.Tensor:
        return _ChainRun.apply(steps, e, *tensors)[0]

    def recorded(e: torch.Tensor) -> torch.Tensor:
        return chain_forward(steps, e, tuple(tensors))

    torch.testing.assert_close(torch.vmap(fused)(envs), torch.vmap(recorded)(envs))
    torch.testing.assert_close(torch.vmap(fused)(envs)[0], fused(env.detach()))
    one = env.detach().clone().requires_grad_()
    torch.testing.assert_close(torch.autograd.grad(fused(one).square().sum(), one),
                               torch.autograd.grad(recorded(one).square().sum(), one))
