"""Execution of a plan in torch: each pairwise step becomes one matmul-shaped kernel.

A :class:`Program` is built once per compiled module from the plan. For every step it decides,
without touching data, how to lay the two operands out as ``(batch, rows, inner)`` and
``(batch, inner, cols)`` matrices so that most steps need no copy at all (reshapes and
transposed views only; BLAS reads transposed operands natively), which operand plays which role,
and which kernel runs it:

``mm``      no shared batch index: one GEMM;
``bmm``     batched GEMM over the indices both operands keep (e.g. the data batch);
``outer``   nothing contracted: a broadcast multiply;
``matvec``  a larger matrix-vector product per batch entry: broadcast multiply and sum;
``small``   a tiny contraction (inner size <= 4) of a vector per batch entry, e.g. the
            ``[1, x]`` feature of one pixel against a ``(batch, 2, bond)`` environment: an
            unrolled chain of fused multiply-adds (``addcmul``); a factor known to be all ones
            (the constant component of ``multilinear`` / ``poly`` features) is skipped, which
            fuses the feature map into the contraction: ``v A0 + x (v A1)``.
``select``  the same tiny contraction where the larger operand holds the contracted index in
            the middle of its layout (e.g. a label core's ``(batch, l, p, o)`` result): its
            slices along that axis are weighted in place (strided views) instead of copying
            the operand into ``(batch, rows, inner)`` order first.

Each intermediate keeps the layout its kernel produced (``batch, rows, cols``); the next step
adapts to it, and the last result is permuted (a view) into the output order.

Steps that are independent and have the same kernel signature run as one batched kernel:
steps are scheduled in waves (all steps whose operands are ready), and equal kernels of a wave
are stacked into one ``bmm``. When a group's operands are exactly the outputs of one earlier
group, in order, the stacked tensor is reused without unstacking (e.g. the left and right
half-chains of an MPS advance together in one ``bmm`` per site).

The program is Python source generated once (one line per tensor operation). Without autograd
a second variant runs: stacked results are written (``out=``) into a workspace of tensors kept
between calls, with every view of them made once when the workspace is built, so a chain step
costs two torch calls and no allocation (the result handed back never shares its memory).
With autograd, runs of such chain steps execute as one autograd node (:class:`_ChainRun`) with a
hand-written backward, instead of about ten recorded nodes per step.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from tngraph.plan import equation

SMALL_INNER = 4

#: bumped after every optimizer step (any torch optimizer, through a global hook): fused
#: optimizers update parameters in place without bumping their version counters
_STEPS = [0]


#: one inference call at a time uses its program's workspace; a concurrent one (another
#: thread) runs the allocating code instead
_WORKSPACE_LOCK = threading.Lock()


def _count_step(*_: Any) -> None:
    _STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


def weights_key(tensors: Sequence[torch.Tensor]) -> tuple[Any, ...]:
    """Changes whenever any of ``tensors`` may have changed: an in-place edit or
    ``load_state_dict`` (version counters), an optimizer step (global count), or other
    tensor objects (``.to()``). Values derived from the tensors are cached under it."""
    return (_STEPS[0], tuple((id(t), t._version) for t in tensors))
#: batched matrix-vector products at least this large run as multiply + sum: batched GEMM
#: kernels are slow on them (measured 2-3x on this CPU for 10x40 and larger per batch entry)
MATVEC_MIN = 400


@dataclass(frozen=True)
class Operand:
    """How one operand is viewed as a 3-d ``(batch, x, y)`` array."""

    perm: tuple[int, ...] | None     # permute first (forces a copy in reshape), or None
    shape3: tuple[int, int, int]     # (batch, x, y) after the (optional) permute
    transposed: bool                 # take the view's transpose: (batch, y, x)


@dataclass(frozen=True)
class Kernel:
    """One pairwise step, designed: operands ``a`` (rows x inner), ``b`` (inner x cols)."""

    left: int
    right: int
    out: int
    swap: bool                       # a is the step's right operand
    mode: str                        # mm | bmm | outer | small
    a: Operand
    b: Operand
    out_shape: tuple[int, ...]
    out_layout: tuple[str, ...]
    ones_a: bool = False             # a[..., 0] is all ones (skip that multiply)
    ones_b: bool = False
    # index groups: shared kept (batch), contracted (inner), free in a, free in b
    groups: tuple[tuple[str, ...], ...] = ((), (), (), ())
    layouts: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())   # layouts of a and b
    axis: int | None = None          # 'select': the contracted axis of a (kept in its layout)

    @property
    def signature(self) -> tuple[Any, ...]:
        """Kernels with equal signatures can run stacked as one kernel."""
        nb, m, k = _logical(self.a)
        return (self.mode, nb, m, k, _logical(self.b)[2], self.ones_a, self.ones_b)

    @property
    def stack_size(self) -> int:
        """Elements copied when this kernel's operands are stacked with others."""
        return math.prod(self.a.shape3) + math.prod(self.b.shape3)


def _by_target(free: list[str], target: dict[str, int]) -> list[str]:
    """``free`` sorted by final output position (indices not in the output last, in order)."""
    return sorted(free, key=lambda index: (target.get(index, len(target)), free.index(index)))


def _runs(layout: Sequence[str], target: dict[str, int]) -> int:
    """Number of runs of consecutive target positions among the output indices of ``layout``."""
    positions = [target[i] for i in layout if i in target]
    return 1 + sum(b != a + 1 for a, b in zip(positions, positions[1:])) if positions else 1


def _logical(op: Operand) -> tuple[int, int, int]:
    """(batch, rows, cols) of the operand as the kernel sees it (after any transpose)."""
    nb, x, y = op.shape3
    return (nb, y, x) if op.transposed else (nb, x, y)


def _operand(layout: Sequence[str], first: Sequence[str], second: Sequence[str],
             batch: Sequence[str], sizes: dict[str, int], copy_transposed: bool = False
             ) -> tuple[Operand, int]:
    """View ``layout`` as (batch, first, second); returns the operand and the copy cost.

    When no view fits, the operand is copied: as (batch, first, second), or with
    ``copy_transposed`` as (batch, second, first) and used transposed. The right operand is
    copied that way (inner index last, like ``nn.Linear``'s weight), which keeps the GEMMs of
    its backward pass in their fast orientation.
    """
    nb = math.prod(sizes[i] for i in batch)
    n1 = math.prod(sizes[i] for i in first)
    n2 = math.prod(sizes[i] for i in second)
    layout = list(layout)
    if layout == [*batch, *first, *second]:
        return Operand(None, (nb, n1, n2), False), 0
    if layout == [*batch, *second, *first]:
        return Operand(None, (nb, n2, n1), True), 0
    if copy_transposed:
        perm = tuple(layout.index(i) for i in (*batch, *second, *first))
        return Operand(perm, (nb, n2, n1), True), nb * n1 * n2
    perm = tuple(layout.index(i) for i in (*batch, *first, *second))
    return Operand(perm, (nb, n1, n2), False), nb * n1 * n2


def design_kernel(left: int, right: int, out: int, left_layout: Sequence[str],
                  right_layout: Sequence[str], kept: set[str], sizes: dict[str, int],
                  ones: set[int] = frozenset(), lead: str | None = None,
                  target: dict[str, int] | None = None) -> Kernel:
    """Choose roles, index orders and kernel of one pairwise step with the fewest copies.

    ``kept`` holds the indices the result must keep; ``ones`` holds the slots whose first
    entry along their (single) inner index is known to be all ones. A result that holds the
    ``lead`` index (the data batch) anywhere but first is charged its size, as the next step
    would have to copy it (batched matmuls want the batch outermost).

    ``target`` gives each output index its position in the final result. A result whose output
    indices lie in many separate runs (relative to that order) will have to be permuted in
    small pieces later, which is slow; it is charged a quarter of its size per extra run, and
    an operand may be copied with its free indices sorted into target order when that is
    cheaper (e.g. rebuilding a TT-matrix: in- and out-legs come out grouped, not interleaved).
    """
    in_right = set(right_layout)
    in_left = set(left_layout)
    shared = [i for i in left_layout if i in in_right]
    batch = [i for i in shared if i in kept]
    inner = [i for i in shared if i not in kept]
    free_left = [i for i in left_layout if i not in in_right]
    free_right = [i for i in right_layout if i not in in_left]
    best: tuple[int, int, int, Kernel] | None = None
    for swap in (False, True):
        la, lb = (right_layout, left_layout) if swap else (left_layout, right_layout)
        fa, fb = (free_right, free_left) if swap else (free_left, free_right)
        orders = [(fa, fb)]
        if target:
            sorted_orders = (_by_target(fa, target), _by_target(fb, target))
            if sorted_orders != (fa, fb):
                orders.append(sorted_orders)
        for rank, (source, (fa, fb)) in enumerate(itertools.product((la, lb), orders)):
            bt = [i for i in source if i in batch]
            ct = [i for i in source if i in inner]
            a, cost_a = _operand(la, fa, ct, bt, sizes)
            b, cost_b = _operand(lb, ct, fb, bt, sizes, copy_transposed=True)
            nb, m, k = _logical(a)
            n = _logical(b)[2]
            if not ct:
                mode = "outer"
            elif k <= SMALL_INNER and nb > 1 and (m == 1 or n == 1):
                mode = "small"
            elif nb > 1 and (m == 1 or n == 1) and max(m, n) * k >= MATVEC_MIN and (
                    not a.transposed if n == 1 else b.transposed):
                mode = "matvec"      # dot products along the matrix's contiguous inner axis
            else:
                mode = "bmm" if nb > 1 else "mm"
            # a batched matrix-vector product whose matrix holds the inner index first runs
            # fast only as (vector row) x (matrix): batched GEMV kernels are slow otherwise
            slow_gemv = mode == "bmm" and (m == 1 or n == 1) and max(m, n) > 1 and not (
                m == 1 and not b.transposed)
            slot_a, slot_b = (right, left) if swap else (left, right)
            if mode == "small" and n == 1 and cost_a and len(ct) == 1:
                selected = _select_kernel(left, right, out, swap, la, lb, ct[0], batch, sizes,
                                          ones_b=slot_b in ones)
                if selected is not None:
                    kernel, cost = selected
                    out_size = math.prod(kernel.out_shape)
                    misplaced = lead is not None and lead in kernel.out_layout and \
                        kernel.out_layout[0] != lead
                    penalty = (out_size if misplaced else 0) + (
                        out_size * (_runs(kernel.out_layout, target) - 1) // 4 if target else 0)
                    score = (cost + penalty, 0, 2 * swap + rank)
                    if best is None or score < best[:3]:
                        best = (*score, kernel)
                    continue
            kernel = Kernel(left, right, out, swap, mode, a, b,
                            tuple(sizes[i] for i in (*bt, *fa, *fb)), (*bt, *fa, *fb),
                            ones_a=mode == "small" and slot_a in ones and len(ct) == 1,
                            ones_b=mode == "small" and slot_b in ones and len(ct) == 1,
                            groups=(tuple(bt), tuple(ct), tuple(fa), tuple(fb)),
                            layouts=(tuple(la), tuple(lb)))
            # among equally cheap layouts prefer rows >= cols: a canonical orientation lets
            # mirror-image steps (e.g. the two half-chains of an MPS) share one signature
            out_layout = (*bt, *fa, *fb)
            misplaced = lead is not None and lead in out_layout and out_layout[0] != lead
            out_size = math.prod(sizes[i] for i in out_layout)
            penalty = out_size if misplaced else 0
            if target:
                penalty += out_size * (_runs(out_layout, target) - 1) // 4
            score = (cost_a + cost_b + penalty, int(slow_gemv) * 2 + int(m < n),
                     2 * swap + rank)
            if best is None or score < best[:3]:
                best = (*score, kernel)
    assert best is not None
    return best[3]


def larger_inside(kernel: Kernel, sizes: dict[str, int]) -> Kernel:
    """``kernel`` with the free indices of its ``b`` operand ordered by size, largest last.

    For kernels whose ``b`` is copied anyway (stacked parameters): a result such as an MPS
    environment ``(batch, p, r)`` keeps the bond innermost, so the next step's tiny contraction
    over ``p`` reads whole contiguous rows (``(batch, r, p)`` would make it read every p-th
    value, about twice as slow).
    """
    bt, ct, fa, fb = kernel.groups
    if kernel.mode not in ("bmm", "mm") or not 1 < len(fb) <= 4:
        return kernel
    pb = tuple(sorted(fb, key=lambda i: sizes[i]))
    if pb == fb:
        return kernel
    b, _ = _operand(kernel.layouts[1], ct, pb, bt, sizes, copy_transposed=True)
    layout = (*bt, *fa, *pb)
    return dataclasses.replace(kernel, b=b, out_shape=tuple(sizes[i] for i in layout),
                               out_layout=layout, groups=(bt, ct, fa, pb))


def _select_kernel(left: int, right: int, out: int, swap: bool, la: Sequence[str],
                   lb: Sequence[str], inner: str, batch: Sequence[str], sizes: dict[str, int],
                   ones_b: bool) -> tuple[Kernel, int] | None:
    """A ``select`` kernel: ``a`` (layout ``la``, batch indices leading) weighted along its
    ``inner`` axis in place by the per-batch vector ``b``; None where ``a`` does not start with
    the batch indices. Returns the kernel and its copy cost (``b``'s, if any)."""
    bt = [i for i in la if i in batch]
    if list(la[:len(bt)]) != bt or set(lb) != {*bt, inner}:
        return None
    nb = math.prod(sizes[i] for i in bt)
    a = Operand(None, (nb, math.prod(sizes[i] for i in la) // nb, 1), False)
    b, cost_b = _operand(lb, [inner], [], bt, sizes)
    out_layout = tuple(i for i in la if i != inner)
    kernel = Kernel(left, right, out, swap, "select", a, b,
                    tuple(sizes[i] for i in out_layout), out_layout, ones_b=ones_b,
                    groups=(tuple(bt), (inner,), tuple(out_layout[len(bt):]), ()),
                    layouts=(tuple(la), tuple(lb)), axis=la.index(inner))
    return kernel, cost_b


def conform(kernel: Kernel, target: Kernel, sizes: dict[str, int]) -> Kernel:
    """``kernel`` with its free indices reordered so that its result has ``target``'s shape.

    Used for kernels that run stacked with ``target``: their operands are copied by the stack
    anyway, so a permutation is free, and results of equal layout let the next stacked step
    reuse the stacked result without another copy.
    """
    if kernel.out_shape == target.out_shape or sorted(kernel.out_shape) != sorted(
            target.out_shape) or kernel.mode in ("small", "select"):
        return kernel
    bt, ct, fa, fb = kernel.groups
    if len(fa) > 4 or len(fb) > 4:
        return kernel
    for pa in itertools.permutations(fa):
        for pb in itertools.permutations(fb):
            layout = (*bt, *pa, *pb)
            if tuple(sizes[i] for i in layout) == target.out_shape:
                a, _ = _operand(kernel.layouts[0], pa, ct, bt, sizes)
                b, _ = _operand(kernel.layouts[1], ct, pb, bt, sizes, copy_transposed=True)
                return Kernel(kernel.left, kernel.right, kernel.out, kernel.swap, kernel.mode,
                              a, b, target.out_shape, layout, kernel.ones_a, kernel.ones_b,
                              (bt, ct, pa, pb), kernel.layouts)
    return kernel


def _as3(t: torch.Tensor, op: Operand) -> torch.Tensor:
    if op.perm is not None:
        # copy: a permuted view that happens to reshape without one can leave the batch
        # with stride 1, which batched matmuls handle very slowly
        t = t.permute(op.perm).contiguous()
    t = t.reshape(op.shape3)
    return t.transpose(1, 2) if op.transposed else t


def run_kernel(kernel: Kernel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Execute one designed step on the step's left and right operands ``x`` and ``y``."""
    if kernel.mode == "select":
        return _select(kernel, y if kernel.swap else x, x if kernel.swap else y)
    a = _as3(y if kernel.swap else x, kernel.a)   # (nb, m, k)
    b = _as3(x if kernel.swap else y, kernel.b)   # (nb, k, n)
    mode = kernel.mode
    if mode == "bmm":
        result = torch.bmm(a, b)
    elif mode == "mm":
        a, b = (t.contiguous() if flag else t for t, flag in zip((a, b), _mm_materialise(kernel)))
        result = torch.mm(a[0], b[0])
    elif mode == "outer":
        result = a * b                     # (nb, m, 1) * (nb, 1, n)
    elif mode == "matvec":
        result = _matvec(a, b)
    else:
        result = _small(a, b, kernel.ones_a, kernel.ones_b)
    return result.reshape(kernel.out_shape)


def _mm_materialise(kernel: Kernel) -> tuple[bool, bool]:
    """Which operands of an ``mm`` kernel to copy out of their transposed view.

    BLAS reads a transposed operand at no cost, but autograd then computes that operand's
    gradient in the same column-major layout, from the *result's* gradient transposed: for a
    small operand of a large result (a TT-core half-train meeting the other half in a 1024 x 1024
    weight), that product runs 3-4x slower than the row-major one on this CPU (measured:
    (1024x1024)^T (1024x8) 2.5 ms, 1024x1024 (1024x8) 0.66 ms). Copying the small operand
    costs a few microseconds. Operands at least 1/16 of the result stay views."""
    out = math.prod(kernel.out_shape)
    return tuple(op.transposed and math.prod(op.shape3) * 16 <= out
                 for op in (kernel.a, kernel.b))


def _kernel_function(kernel: Kernel) -> Any:
    """The function that runs ``kernel``'s mode on 3-d operands ``(a, b)``."""
    if kernel.mode == "small":
        return functools.partial(_small, ones_a=kernel.ones_a, ones_b=kernel.ones_b)
    if kernel.mode == "matvec":
        return _matvec
    if kernel.mode == "outer":
        return operator.mul
    return torch.bmm


def _weighted_sum(terms: Sequence[torch.Tensor], weights: Sequence[Any],
                  skip_first: bool) -> torch.Tensor:
    """``sum_j terms[j] * weights[j]`` as fused multiply-adds; with ``skip_first`` the first
    weight is known to be all ones and not read (it may be None). The sum is a new tensor except
    for a lone skipped term, which is returned as it is."""
    if skip_first:
        if len(terms) == 1:
            return terms[0]
        acc, start = torch.addcmul(terms[0], terms[1], weights[1]), 2
    else:
        acc, start = terms[0] * weights[0], 1
    for term, weight in zip(terms[start:], weights[start:]):
        acc.addcmul_(term, weight)
    return acc


def _select(kernel: Kernel, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_k a.select(axis, k) * b[:, k]`` with ``b``'s entries broadcast over ``a``'s other
    axes (``a`` keeps its layout; the slices are strided views)."""
    n_batch = len(kernel.groups[0])
    terms = a.unbind(kernel.axis)
    # weights (nb, k, 1) -> one (batch..., 1, ..., 1) column per slice
    weights = _as3(b, kernel.b).reshape(*a.shape[:n_batch], len(terms),
                                        *([1] * (a.dim() - 1 - n_batch)))
    return _weighted_sum(terms, weights.unbind(n_batch), kernel.ones_b)


def _small_weighted(a: torch.Tensor, weights: Sequence[torch.Tensor], skip_first: bool
                    ) -> torch.Tensor:
    """``_small`` with the weights (one ``(nb, 1)`` column per inner index) already split."""
    return _weighted_sum(a.unbind(2), weights, skip_first)


def _matvec(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product as one broadcast multiply and a sum over the inner axis."""
    if b.shape[2] == 1:                              # (nb, m, k) x (nb, k, 1) -> (nb, m)
        return (a * b.transpose(1, 2)).sum(-1)
    return (a.transpose(1, 2) * b).sum(1)            # (nb, 1, k) x (nb, k, n) -> (nb, n)


def _small(a: torch.Tensor, b: torch.Tensor, ones_a: bool, ones_b: bool) -> torch.Tensor:
    """sum_k a[:, :, k, None] * b[:, None, k, :] for a tiny k, as fused multiply-adds.

    Returns ``(nb, n)`` when a has one row, else ``(nb, m)`` (b has one column); the caller
    reshapes. A weight known to be all ones (``ones_*``) is not multiplied.
    """
    if a.shape[1] == 1:       # weights per batch entry (from a) on the rows of b
        weights, terms, skip = a.unbind(2), b.unbind(1), ones_a     # (nb, 1) and (nb, n)
    else:                     # weights (from b's single column) on the columns of a
        weights, terms, skip = b.unbind(1), a.unbind(2), ones_b     # (nb, 1) and (nb, m)
    return _weighted_sum(terms, weights, skip)


@dataclass
class Group:
    """Kernels of one wave with the same signature, run as one stacked kernel."""

    kernels: list[Kernel]
    reuse_a: int | None = None   # index of an earlier group whose stacked output is 'a'
    reuse_b: int | None = None
    keep_stacked: bool = False   # a later group reuses this group's stacked output
    need_parts: bool = True      # some consumer needs the members' results one by one
    prefetch_a: bool = False     # operand gathered for all groups at once at the start
    prefetch_b: bool = False


#: largest workspace (elements) kept between inference calls: the stacked intermediates of
#: one forward pass, reused instead of allocated at every step
WORKSPACE_LIMIT = 1 << 24

#: stack independent equal kernels only while their operands are this small (elements):
#: stacking copies the operands, which pays off where the per-kernel overhead dominates.
STACK_LIMIT = 1 << 16


def build_program(plan: Any, ones: set[int] = frozenset(), batch_size: int | None = None
                  ) -> Program:
    """Design every kernel of ``plan`` for ``batch_size`` and schedule them into stacked groups.

    Kernel shapes are concrete, so a program serves one batch size (the caller keeps one per
    batch size seen).

    Scheduling is greedy: among the steps whose operands are ready, the largest set of steps
    with one kernel signature runs next (ties: the shallowest, then the earliest step of the
    plan). Two chains that advance one site per step thus fall into lockstep even when the plan
    orders them one after the other.
    """
    problem = plan.problem
    removed = set(plan.sliced_inds)
    # where each leaf comes from: ("tensor", i) or ("port", port index, copy index or None)
    port_index: dict[str, int] = {}
    sources: dict[int, tuple[Any, ...]] = {}
    n_tensors = 0
    for k, term in enumerate(problem.terms):
        if term.kind == "tensor":
            sources[k] = ("tensor", n_tensors)
            n_tensors += 1
        else:
            sources[k] = ("port", port_index.setdefault(term.port, len(port_index)), term.copy)
    sizes = dict(problem.size_dict)
    if problem.batch is not None and batch_size is not None:
        sizes[problem.batch] = batch_size
    leaf_equations: list[str | None] = []
    layouts: dict[int, tuple[str, ...]] = {}
    for k, (raw, leaf) in enumerate(zip(problem.inputs, plan.leaf_inds)):
        leaf_equations.append(None if tuple(raw) == tuple(leaf) else equation([raw], leaf))
        layouts[k] = tuple(i for i in leaf if i not in removed)
    steps = list(plan.steps)
    n_leaves = len(problem.inputs)
    target = {i: k for k, i in enumerate(problem.output)}
    consumers: dict[int, int] = {}
    for pos, s in enumerate(steps):
        consumers[s.left] = pos
        consumers[s.right] = pos
    depth: dict[int, int] = {k: 0 for k in range(n_leaves)}
    for s in steps:
        depth[s.out] = 1 + max(depth[s.left], depth[s.right])
    ready = [pos for pos, s in enumerate(steps) if s.left < n_leaves and s.right < n_leaves]
    grouping = not plan.sliced_inds   # sliced runs select on single leaves: keep them apart
    groups: list[Group] = []
    produced_by: dict[int, tuple[int, int]] = {}   # slot -> (group index, member index)
    while ready:
        designed = {}
        for pos in ready:
            s = steps[pos]
            designed[pos] = design_kernel(s.left, s.right, s.out, layouts[s.left],
                                          layouts[s.right], set(s.out_inds), sizes, ones,
                                          problem.batch, target)
        def key_of(kernel: Kernel, pos: int) -> tuple[Any, ...]:
            if grouping and kernel.stack_size <= STACK_LIMIT and kernel.mode != "select":
                return kernel.signature
            return ("solo", pos)

        classes: dict[tuple[Any, ...], list[int]] = {}
        for pos in sorted(ready):
            classes.setdefault(key_of(designed[pos], pos), []).append(pos)

        def lookahead(members: list[int], designed: dict[int, Kernel] = designed,
                      classes: dict[tuple[Any, ...], list[int]] = classes) -> int:
            """Size of the largest class ready after running a lone step (chains that are
            out of step fall back in step when the lagging one moves first)."""
            if len(members) > 1 or len(classes) == 1 or not grouping:
                return 0
            (pos,) = members
            kernel = designed[pos]
            counts: dict[tuple[Any, ...], int] = {}
            for other_pos in ready:
                if other_pos != pos:
                    k = key_of(designed[other_pos], other_pos)
                    counts[k] = counts.get(k, 0) + 1
            nxt = consumers.get(kernel.out)
            if nxt is not None:
                s = steps[nxt]
                other = s.left if s.right == kernel.out else s.right
                if other in layouts:
                    trial = {**layouts, kernel.out: kernel.out_layout}
                    k = key_of(design_kernel(s.left, s.right, s.out, trial[s.left],
                                             trial[s.right], set(s.out_inds), sizes, ones,
                                             problem.batch, target), nxt)
                    counts[k] = counts.get(k, 0) + 1
            return max(counts.values(), default=0)

        # largest class first; then the one that lets the next wave group best; then the
        # shallowest (so that parallel chains stay level); then plan order
        chosen = max(classes.values(), key=lambda members: (
            len(members), lookahead(members),
            -min(depth[steps[p].out] for p in members), -members[0]))
        kernels = [designed[pos] for pos in chosen]
        if len(kernels) > 1 and all(sources.get(_role_slot(k, "b"), ("",))[0] == "tensor"
                                    for k in kernels):
            kernels[0] = larger_inside(kernels[0], sizes)   # b is copied by the gather anyway
        kernels = [kernels[0]] + [conform(k, kernels[0], sizes) for k in kernels[1:]]
        group = Group(kernels)
        if len(kernels) > 1:
            group.reuse_a = _reusable(kernels, "a", produced_by, groups)
            group.reuse_b = _reusable(kernels, "b", produced_by, groups)
            group.prefetch_a = group.reuse_a is None and all(
                _role_slot(k, "a") in sources and leaf_equations[_role_slot(k, "a")] is None
                for k in kernels)
            group.prefetch_b = group.reuse_b is None and all(
                _role_slot(k, "b") in sources and leaf_equations[_role_slot(k, "b")] is None
                for k in kernels)
        g = len(groups)
        groups.append(group)
        for member, (pos, kernel) in enumerate(zip(chosen, kernels)):
            layouts[kernel.out] = kernel.out_layout
            produced_by[kernel.out] = (g, member)
            ready.remove(pos)
            if kernel.out in consumers:
                nxt = consumers[kernel.out]
                other = steps[nxt].left if steps[nxt].right == kernel.out else steps[nxt].right
                if other in layouts:
                    ready.append(nxt)
    result_slot = steps[-1].out if steps else 0
    stacked_only = set()
    for group in groups:
        for role, reuse in (("a", group.reuse_a), ("b", group.reuse_b)):
            if reuse is not None:
                stacked_only.update(_role_slot(k, role) for k in group.kernels)
    for group in groups:
        group.need_parts = any(k.out not in stacked_only or k.out == result_slot
                               for k in group.kernels)
    final = [i for i in layouts[result_slot]]
    output = [i for i in problem.output]
    final_perm = None if final == output else tuple(final.index(i) for i in output)
    final_merged = None
    if final_perm is not None and not plan.sliced_inds:
        final_merged = merged_permutation([sizes[i] for i in final], final_perm)
    sliced = []
    for index in plan.sliced_inds:
        where = [(k, leaf.index(index)) for k, leaf in enumerate(plan.leaf_inds)
                 if index in leaf]
        sliced.append((sizes[index], where))
    return Program(n_leaves, leaf_equations, groups, final_perm, result_slot, sliced, sources,
                   final_merged)


#: results at least this large are permuted with runs of axes merged (and copied): a copy
#: through 8 axes of sizes 4-8 ran 2.4x slower than the same copy through 4 merged axes
MERGED_PERMUTE_MIN = 1 << 16


def merged_permutation(shape: Sequence[int], perm: Sequence[int]
                       ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """``(merged shape, merged perm, permuted shape)`` where axes that stay neighbours under
    ``perm`` merge into one, or None when none merge or the tensor is small.

    Examples
    --------
    >>> merged_permutation((4, 8, 4, 8, 8, 4, 8, 4), (0, 1, 4, 5, 2, 3, 6, 7))
    ((32, 32, 32, 32), (0, 2, 1, 3), (4, 8, 8, 4, 4, 8, 8, 4))
    """
    if math.prod(shape) < MERGED_PERMUTE_MIN:
        return None
    runs: list[list[int]] = []                   # runs of source axes, in output order
    for axis in perm:
        if runs and runs[-1][-1] + 1 == axis:
            runs[-1].append(axis)
        else:
            runs.append([axis])
    if len(runs) == len(perm):
        return None
    by_source = sorted(range(len(runs)), key=lambda r: runs[r][0])
    merged_shape = tuple(math.prod(shape[a] for a in runs[r]) for r in by_source)
    merged_perm = tuple(by_source.index(r) for r in range(len(runs)))
    return merged_shape, merged_perm, tuple(shape[a] for a in perm)


def _role_slot(kernel: Kernel, role: str) -> int:
    """The slot that plays operand ``role`` ("a" or "b") in ``kernel``."""
    if role == "a":
        return kernel.right if kernel.swap else kernel.left
    return kernel.left if kernel.swap else kernel.right


def _reusable(kernels: list[Kernel], role: str, produced_by: dict[int, tuple[int, int]],
              groups: list[Group]) -> int | None:
    """Index of the earlier group whose stacked output is exactly this group's ``role``
    operands (same order, plain views), or None."""
    slots = [_role_slot(k, role) for k in kernels]
    origin = [produced_by.get(slot) for slot in slots]
    if any(o is None for o in origin):
        return None
    g = origin[0][0]
    if [o for o in origin] != [(g, m) for m in range(len(kernels))]:
        return None
    if len(groups[g].kernels) != len(kernels):
        return None
    operands = [getattr(k, role) for k in kernels]
    if any(op.perm is not None or op != operands[0] for op in operands):
        return None
    groups[g].keep_stacked = True
    return g


@dataclass(frozen=True)
class ParamGather:
    """How the parameters of stacked groups are gathered into one ``(n, nb, x, y)`` tensor.

    Members that share an operand layout (and a shape) are stacked raw and viewed once
    (``parts``: tensor indices, permutation, ``(n, nb, x, y)`` shape, transposed), so a call
    costs a few tensor ops per layout, not per member; mixed layouts are then interleaved back
    into member order, by one ``stack`` where they alternate (the left / right half-chains of
    an MPS), else by one ``index_select`` (``inverse``). Decided once per program: grouping
    members by layout in Python at every call cost about as much as the copies themselves.
    """

    parts: tuple[tuple[tuple[int, ...], tuple[int, ...] | None, tuple[int, ...], bool], ...]
    interleave: str                  # "none" | "stack" | "index"
    inverse: tuple[int, ...] = ()


def plan_param_gather(shapes: Sequence[tuple[int, ...]], members: Sequence[tuple[int, Operand]]
                      ) -> ParamGather:
    """The :class:`ParamGather` of ``members`` (tensor index, operand); ``shapes[i]`` is the
    shape of tensor ``i``."""
    by_layout: dict[tuple[Operand, tuple[int, ...]], list[int]] = {}
    for position, (index, op) in enumerate(members):
        by_layout.setdefault((op, tuple(shapes[index])), []).append(position)
    parts = []
    order: list[int] = []
    for (op, _), positions in by_layout.items():
        perm = None if op.perm is None else (0, *(d + 1 for d in op.perm))
        parts.append((tuple(members[p][0] for p in positions), perm,
                      (len(positions), *op.shape3), op.transposed))
        order += positions
    if len(parts) == 1:
        return ParamGather(tuple(parts), "none")
    q, n = len(parts), len(members)
    if n % q == 0 and all(order[j * (n // q) + i] == i * q + j
                          for j in range(q) for i in range(n // q)):
        return ParamGather(tuple(parts), "stack")
    inverse = [0] * len(order)
    for place, position in enumerate(order):
        inverse[position] = place
    return ParamGather(tuple(parts), "index", tuple(inverse))


def gather_params(tensors: Sequence[torch.Tensor], gather: ParamGather) -> torch.Tensor:
    """Stack the parameters of ``gather`` (see :class:`ParamGather`) as ``(n, nb, x, y)``."""
    stacks = []
    for indices, perm, shape, transposed in gather.parts:
        stacked = torch.stack([tensors[i] for i in indices])
        if perm is not None:
            stacked = stacked.permute(perm)
        stacked = stacked.reshape(shape)
        stacks.append(stacked.transpose(2, 3) if transposed else stacked)
    if gather.interleave == "none":
        return stacks[0]
    if gather.interleave == "stack":
        n = sum(len(part[0]) for part in gather.parts)
        return torch.stack(stacks, dim=1).reshape(n, *stacks[0].shape[1:])
    joined = torch.cat(stacks)
    return joined.index_select(0, torch.tensor(gather.inverse, device=joined.device))


def _operand_source(expr: str, op: Operand, matrix: bool = False,
                    shape: tuple[int, ...] | None = None) -> str:
    """Source of :func:`_as3` applied to ``expr`` (``matrix``: 2-d, for an ``mm``); ``shape``:
    ``expr``'s shape where the generator knows it (a reshape to it is left out: under
    autograd every reshape is a recorded node)."""
    target = tuple(op.shape3[1:] if matrix else op.shape3)
    if op.perm is not None:
        expr = f"{expr}.permute({op.perm}).contiguous()"
    if op.perm is not None or shape is None or tuple(shape) != target:
        expr = f"{expr}.reshape({target})"
    if op.transposed:
        expr += ".t()" if matrix else ".transpose(1, 2)"
    return expr


def _lone_source(kernel: Kernel, left: str, right: str, const: Any,
                 shapes: dict[str, tuple[int, ...]] | None = None) -> str:
    """Source of one kernel that runs alone: what :func:`run_kernel` does, written out (the
    generic call costs microseconds of Python per step, as much as a small matmul).
    ``shapes``: the known shapes of operand expressions (see :func:`_operand_source`)."""
    if kernel.mode == "select":
        return f"run_kernel({const(kernel, 'K')}, {left}, {right})"
    x, y = (right, left) if kernel.swap else (left, right)
    known = shapes or {}
    out = kernel.out_shape
    if kernel.mode == "mm":
        a, b = (_operand_source(expr, op, True, known.get(expr)) + (".contiguous()" if flag
                                                                     else "")
                for expr, op, flag in zip((x, y), (kernel.a, kernel.b), _mm_materialise(kernel)))
        return f"torch.mm({a}, {b}).reshape({out})"
    a, b = (_operand_source(x, kernel.a, shape=known.get(x)),
            _operand_source(y, kernel.b, shape=known.get(y)))
    if kernel.mode == "bmm":
        return f"torch.bmm({a}, {b}).reshape({out})"
    if kernel.mode == "outer":
        return f"({a} * {b}).reshape({out})"
    return f"{const(_kernel_function(kernel), 'F')}({a}, {b}).reshape({out})"


@dataclass(frozen=True)
class ChainStep:
    """One step of a fused chain run: a stacked matmul, then a fused-feature sum.

    ``a_size``/``a_transposed``: how the incoming environment is viewed as the matmul's left
    operand; ``result``: the matmul's ``(batch, rows, cols)``; ``terms_size``/``terms_dim``: how
    that result is viewed and split into the ``terms`` feature slices; ``ones``: the first
    slice's weight is the constant 1; ``weights``: the step's ``(start, stop)`` among the run's
    weight tensors.
    """

    a_size: tuple[int, ...]
    a_transposed: bool
    result: tuple[int, int, int]
    terms_size: tuple[int, ...]
    terms_dim: int
    terms: int
    ones: bool
    weights: tuple[int, int]


def _result_buffer(buffers: dict[ChainStep, tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
                   step: ChainStep, like: torch.Tensor
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A reusable tensor in the layout of ``step``'s matmul result, and its feature slices."""
    key = (step.result, step.terms_size, step.terms_dim)
    found = buffers.get(key)
    if found is None:
        buffer = like.new_empty(step.result)
        found = buffers[key] = (buffer, buffer.view(step.terms_size).unbind(step.terms_dim))
    return found


class _ChainRun(torch.autograd.Function):
    """A run of lockstep chain steps (matmul with stacked cores, then the fused feature map) as
    one autograd node, with a hand-written backward.

    Recorded op by op, a step costs about ten autograd nodes (views, split, multiply-add, matmul)
    whose bookkeeping, at small bond dimensions, costs more than the arithmetic. Here the
    forward runs unrecorded, each matmul writing into one buffer per shape whose feature slices
    are viewed once (the multiply-add allocates the step's environment, kept for the backward);
    the backward is four tensor ops per step into reused buffers (the cores' gradients aside):
    the incoming gradient and its feature-weighted copies written into the matmul-result
    layout, then the two matmuls of the step. What each step needs is prepared in the forward,
    so that the backward loop does little besides those calls.
    """

    @staticmethod
    def forward(ctx: Any, steps: tuple[ChainStep, ...], env: torch.Tensor,
                *tensors: torch.Tensor) -> torch.Tensor:
        cores, weights = tensors[:len(steps)], tensors[len(steps):]
        keep_terms = any(w.requires_grad for w in weights)
        buffers: dict[Any, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        records = []
        for step, core in zip(steps, cores):
            shape = env.shape
            a = env.view(step.a_size)
            if step.a_transposed:
                a = a.transpose(1, 2)
            if keep_terms:            # the terms are needed for the weights' gradients
                terms = torch.bmm(a, core).view(step.terms_size).unbind(step.terms_dim)
            else:
                buffer, terms = _result_buffer(buffers, step, env)
                torch.bmm(a, core, out=buffer)
            w = weights[step.weights[0]:step.weights[1]]
            env = _weighted_sum(terms, (None, *w) if step.ones else w, step.ones)
            if step.ones and step.terms == 1:
                env = env.clone()         # not a view of the reused matmul buffer
            records.append((step, a.transpose(1, 2), core.transpose(1, 2), w, shape,
                            terms if keep_terms else None))
        ctx.records = records
        ctx.save_for_backward(*cores, *weights)
        return env

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        records = ctx.records
        n = len(records)
        ctx.saved_tensors                          # noqa: B018 - checks for in-place changes
        need_env, need_cores = ctx.needs_input_grad[1], ctx.needs_input_grad[2:2 + n]
        need_weights = ctx.needs_input_grad[2 + n:]
        grad_cores: list[torch.Tensor | None] = [None] * n
        grad_weights: list[torch.Tensor | None] = [None] * len(need_weights)
        buffers: dict[Any, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        grad = grad.contiguous()
        for k in range(n - 1, -1, -1):
            step, a_t, core_t, w, shape, terms = records[k]
            if terms is not None:
                start, offset = step.weights[0], 1 if step.ones else 0
                for j, weight in enumerate(w):
                    if need_weights[start + j]:
                        grad_weights[start + j] = (terms[j + offset] * grad).sum(
                            tuple(range(1, grad.dim())), keepdim=True).reshape(weight.shape)
            # the gradient of the matmul's result, in its layout: slice j is weight_j * grad
            grad_r, slices = _result_buffer(buffers, step, grad)
            if step.ones:
                slices[0].copy_(grad)
                for target, weight in zip(slices[1:], w):
                    torch.mul(grad, weight, out=target)
            else:
                for target, weight in zip(slices, w):
                    torch.mul(grad, weight, out=target)
            if need_cores[k]:
                grad_cores[k] = torch.bmm(a_t, grad_r)
            if k == 0 and not need_env:
                break
            grad_a = torch.bmm(grad_r, core_t)
            grad = (grad_a.transpose(1, 2) if step.a_transposed else grad_a).reshape(shape)
        return (None, grad if need_env else None, *grad_cores, *grad_weights)


@dataclass
class Program:
    """The plan as a list of kernel groups over numbered slots.

    ``run(tensors, ports)`` takes the parameter tensors (in term order) and the data ports, each
    ``(N, batch, *legs)`` for a stacked port (copy-major) or ``(batch, *legs)``; leaves are cut
    from them only where a kernel needs one alone, while operands of stacked groups are gathered
    for all groups at once (one ``stack`` of parameters per shape, one ``index_select`` per
    port).
    """

    n_leaves: int
    leaf_equations: list[str | None]
    groups: list[Group]
    final_perm: tuple[int, ...] | None
    result_slot: int
    sliced: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    sources: dict[int, tuple[Any, ...]] = field(default_factory=dict)
    #: the final permutation with neighbouring axes merged (:func:`merged_permutation`)
    final_merged: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        # gather classes: operands of stacked groups fetched for all groups at once, keyed by
        # everything that lets their chunks come out of one tensor by a single unbind
        self._param_gathers: dict[tuple[Any, ...], list[tuple[int, str]]] = {}
        self._port_gathers: dict[tuple[Any, ...], list[tuple[int, str]]] = {}
        split_weights: set[int] = set()     # groups whose 'b' weights arrive split
        for g, group in enumerate(self.groups):
            for role, flag in (("a", group.prefetch_a), ("b", group.prefetch_b)):
                if not flag:
                    continue
                slots = [_role_slot(k, role) for k in group.kernels]
                kinds = {self.sources[slot][0] for slot in slots}
                ports = {self.sources[slot][1] for slot in slots}
                ops = [getattr(k, role) for k in group.kernels]
                size = len(group.kernels)
                if kinds == {"port"} and len(ports) == 1 and len(set(ops)) == 1 and all(
                        self.sources[slot][2] is not None for slot in slots) \
                        and ops[0].perm is None:
                    # the weights of a 'small' kernel are handed over already split
                    # (its first column is not gathered where it is known to be all ones)
                    weights = (role == "b" and group.kernels[0].mode == "small"
                               and _logical(group.kernels[0].a)[1] > 1)
                    skip = weights and all(k.ones_b for k in group.kernels)
                    key = (ports.pop(), size, ops[0], weights, skip)
                    self._port_gathers.setdefault(key, []).append((g, role))
                    if weights:
                        split_weights.add(g)
                elif kinds == {"tensor"}:
                    key = (size, _logical(ops[0]))
                    self._param_gathers.setdefault(key, []).append((g, role))
                else:
                    setattr(group, f"prefetch_{role}", False)
        self._port_idx = {key: [self.sources[_role_slot(k, role)][2] for g, role in reqs
                                for k in self.groups[g].kernels]
                          for key, reqs in self._port_gathers.items()}
        # split weights: (gather number, position) of each group's weights in that gather's
        # columns; groups written out inline read them there (no per-group tuple at each call)
        self._weight_slots = {req: (n, i) for n, (key, reqs) in
                              enumerate(self._port_gathers.items()) if key[3]
                              for i, req in enumerate(reqs)}
        self._inlined: set[int] = set()
        self._port_idx_tensor: dict[tuple[Any, ...], torch.Tensor] = {}
        self._param_cache: tuple[Any, dict[tuple[int, str], torch.Tensor]] | None = None
        self._gather_plans: dict[tuple[Any, ...], ParamGather] = {}
        # per group, what to do, decided once: (None, kernel) for a lone kernel, else
        # (kernels, a source, b source, kernel function, keep stacked, need parts) where a
        # source is (0, group, size, transposed) reuse | (1, key, -, -) gathered |
        # (2, members, -, -) stacked here
        self._ops: list[tuple[Any, ...]] = []
        for g, group in enumerate(self.groups):
            kernels = group.kernels
            if len(kernels) == 1:
                self._ops.append((None, kernels[0]))
                continue
            first = kernels[0]
            sources = []
            for role, reuse, fetch in (("a", group.reuse_a, group.prefetch_a),
                                       ("b", group.reuse_b, group.prefetch_b)):
                op = getattr(first, role)
                if reuse is not None:
                    # a view (and a transpose): unlike as_strided, cheap in the backward pass
                    size = (len(kernels) * op.shape3[0], op.shape3[1], op.shape3[2])
                    sources.append((0, reuse, size, op.transposed))
                elif fetch:
                    sources.append((1, (g, role), None, None))
                else:
                    sources.append((2, [(_role_slot(k, role), getattr(k, role))
                                        for k in kernels], None, None))
            kernel_fn = _kernel_function(first)
            if g in split_weights:
                kernel_fn = functools.partial(_small_weighted, skip_first=first.ones_b)
            self._ops.append((kernels, sources[0], sources[1], kernel_fn,
                              group.keep_stacked, group.need_parts))

        self.source_code = self._generate_source()
        namespace = {"torch": torch, "run_kernel": run_kernel, "_as3": _as3,
                     "_ChainRun": _ChainRun, **self._constants}
        exec(compile(self.source_code, "<tngraph program>", "exec"), namespace)  # noqa: S102
        self._generated = namespace["contract"]
        # inference variant: stacked results written into a workspace kept between calls
        self._ws_specs: list[tuple[Any, ...]] = []
        self._workspaces: dict[tuple[Any, ...], tuple[list[Any], set[int]]] = {}
        self._generated_ws = None
        if not self.sliced:
            self.workspace_source = self._generate_source(workspace=True)
            size = sum(math.prod(spec[1]) for spec in self._ws_specs if spec[0] == "empty")
            if self._ws_specs and size <= WORKSPACE_LIMIT:
                namespace = {"torch": torch, "run_kernel": run_kernel, "_as3": _as3,
                             **self._constants}
                exec(compile(self.workspace_source, "<tngraph program (workspace)>",  # noqa: S102
                             "exec"), namespace)
                self._generated_ws = namespace["contract"]

    # -- code generation ----------------------------------------------------------------------
    def _generate_source(self, workspace: bool = False) -> str:
        """Straight-line Python for the whole contraction (one line per tensor operation).

        With ``workspace``: the variant for inference (no autograd), ``contract(..., ws)``,
        whose stacked matmuls and fused multiply-adds write into preallocated tensors
        (``out=``), and whose views of them (the next step's operand, the slices of a fused
        feature map) are made once, when the workspace is built (``self._ws_specs`` says how).
        A 64-site chain step then costs two torch calls and no allocation.

        Sliced programs read their leaves from ``leaves`` (selected per slice); the others cut
        them from ``tensors`` and ``ports`` and take gathered operands from ``fetched``.
        Interpreting the group list costs a few microseconds of Python per group, which is
        what a 64-site chain spends most of its time on at small bond dimensions; generated
        code leaves only the torch calls. Constants (kernels, operand layouts, functions) are
        bound by name; the text is kept in ``self.source_code`` for inspection.
        """
        constants: dict[str, Any] = {}

        def const(value: Any, prefix: str) -> str:
            name = f"{prefix}{len(constants)}"
            constants[name] = value
            return name

        lines = ["def contract(tensors, ports, fetched, leaves"
                 + (", ws):" if workspace else "):")]
        names: dict[int, str] = {}
        shapes: dict[str, tuple[int, ...]] = {}    # variable -> its shape (s<slot> ones)
        specs = self._ws_specs if workspace else []
        buffers: dict[int, int] = {}          # group -> workspace entry holding its result
        views: dict[tuple[Any, ...], str] = {}

        def ws_entry(spec: tuple[Any, ...]) -> str:
            if spec not in views:
                views[spec] = f"ws[{len(specs)}]"
                specs.append(spec)
            return views[spec]

        def new_buffer(shape: tuple[int, ...], group: int) -> str:
            """A workspace tensor that receives ``group``'s result."""
            name = ws_entry(("empty", shape, group))
            buffers[group] = len(specs) - 1
            return name

        def stacked(key: int, size: tuple[int, ...], transposed: bool) -> str:
            """The operand view of group ``key``'s stacked result."""
            if key in buffers:
                return ws_entry(("view", buffers[key], size, transposed))
            return f"g{key}.view({size})" + (".transpose(1, 2)" if transposed else "")

        def use(slot: int) -> str:
            if slot in names:
                return names.pop(slot)
            if self.sliced:      # sliced runs hand in leaves already selected (and traced)
                return f"leaves[{slot}]"
            source = self.sources[slot]
            if source[0] == "tensor":
                expr = f"tensors[{source[1]}]"
            elif source[2] is None:
                expr = f"ports[{source[1]}]"
            else:
                expr = f"ports[{source[1]}].select(0, {source[2]})"
            eq = self.leaf_equations[slot]
            return expr if eq is None else f"torch.einsum({eq!r}, {expr})"

        runs = {} if workspace else self._chain_runs()
        skip: set[int] = set()
        for g, op in enumerate(self._ops):
            if g in skip:
                continue
            if g in runs:
                skip.update(runs[g])
                lines.append(self._chain_source(runs[g], const))
                continue
            if op[0] is None:
                k = op[1]
                left, right = use(k.left), use(k.right)
                lines.append(f"    s{k.out} = {_lone_source(k, left, right, const, shapes)}")
                names[k.out] = f"s{k.out}"
                shapes[f"s{k.out}"] = tuple(k.out_shape)
                continue
            kernels, a_source, b_source, kernel_fn, keep, need_parts = op
            if self._inline_small(g, op, lines, buffers if workspace else None, ws_entry,
                                  new_buffer):
                continue
            operands = []
            for role, (kind, key, size, transposed) in zip("ab", (a_source, b_source)):
                if kind == 0:
                    expr = stacked(key, size, transposed)
                elif kind == 1:
                    expr = f"fetched[{key!r}]"
                else:
                    parts = ", ".join(f"_as3({use(slot)}, {const(view, 'O')})"
                                      for slot, view in key)
                    _, x, y = _logical(getattr(kernels[0], role))
                    expr = f"torch.stack([{parts}]).view(-1, {x}, {y})"
                operands.append(expr)
            call = ("torch.bmm" if kernel_fn is torch.bmm else const(kernel_fn, "F"))
            if workspace and kernel_fn is torch.bmm:
                nb, m, _ = _logical(kernels[0].a)
                out = new_buffer((len(kernels) * nb, m, _logical(kernels[0].b)[2]), g)
                lines.append(f"    r{g} = torch.bmm({operands[0]}, {operands[1]}, out={out})")
            else:
                lines.append(f"    r{g} = {call}({operands[0]}, {operands[1]})")
            if keep:
                lines.append(f"    g{g} = r{g}" if kernel_fn is torch.bmm else
                             f"    g{g} = r{g} if r{g}.is_contiguous() else r{g}.contiguous()")
            if need_parts:
                lines.append(f"    p{g} = r{g}.reshape({len(kernels)}, -1).unbind(0)")
                for i, k in enumerate(kernels):
                    lines.append(f"    s{k.out} = p{g}[{i}].reshape({k.out_shape})")
                    names[k.out] = f"s{k.out}"
                    shapes[f"s{k.out}"] = tuple(k.out_shape)
        result = names.get(self.result_slot) if self.groups else use(0)
        if self.final_merged is not None:
            merged, perm, shape = self.final_merged
            result = f"{result}.reshape({merged}).permute({perm}).contiguous().view({shape})"
        elif self.final_perm is not None:
            result = f"{result}.permute({self.final_perm})"
        lines.append(f"    return {result}")
        self._constants = constants
        return "\n".join(lines) + "\n"

    def _is_chain_matmul(self, g: int) -> bool:
        op = self._ops[g]
        return (op[0] is not None and op[3] is torch.bmm and op[1][0] == 0
                and op[2][0] == 1 and op[4] and not op[5])

    def _is_chain_feature(self, g: int, matmul: int) -> bool:
        op = self._ops[g]
        if op[0] is None:
            return False
        kernels, a_source, b_source, kernel_fn, keep, need_parts = op
        return (isinstance(kernel_fn, functools.partial) and kernel_fn.func is _small_weighted
                and a_source[0] == 0 and a_source[1] == matmul and keep and not need_parts
                and b_source[0] == 1 and b_source[1] in self._weight_slots)

    def _chain_runs(self) -> dict[int, list[int]]:
        """Runs of at least two consecutive (stacked matmul, fused feature) group pairs in
        which each matmul takes the previous pair's result: first group -> the run's groups."""
        runs: dict[int, list[int]] = {}
        g = 0
        while g + 1 < len(self._ops):
            run: list[int] = []
            h = g
            while (h + 1 < len(self._ops) and self._is_chain_matmul(h)
                   and self._is_chain_feature(h + 1, h)
                   and (not run or self._ops[h][1][1] == run[-1])):
                run += [h, h + 1]
                h += 2
            if len(run) >= 4:
                runs[g] = run
                g = h
            else:
                g += 1
        return runs

    def _chain_source(self, run: list[int], const: Any) -> str:
        """The line running ``run`` (see :meth:`_chain_runs`) as one :class:`_ChainRun`."""
        steps, cores, weights = [], [], []
        for matmul, feature in zip(run[0::2], run[1::2]):
            matmuls, a_source, b_source, *_ = self._ops[matmul]
            kernels, s_source, w_source, *_ = self._ops[feature]
            first = kernels[0]
            terms = _logical(first.a)[2]
            _, _, size, transposed = s_source
            nb, m, _ = _logical(matmuls[0].a)
            result = (len(matmuls) * nb, m, _logical(matmuls[0].b)[2])
            count = terms - (1 if first.ones_b else 0)
            steps.append(ChainStep(a_source[2], a_source[3], result, size,
                                   1 if transposed else 2, terms, first.ones_b,
                                   (len(weights), len(weights) + count)))
            cores.append(f"fetched[{b_source[1]!r}]")
            n, i = self._weight_slots[w_source[1]]
            self._inlined.add(feature)
            weights += [f"fetched[('columns', {n})][{j}][{i}]"
                        for j in range(1 if first.ones_b else 0, terms)]
        start = self._ops[run[0]][1][1]
        return (f"    g{run[-1]} = _ChainRun.apply({const(tuple(steps), 'C')}, g{start}, "
                f"{', '.join(cores + weights)})")

    def _inline_small(self, g: int, op: tuple[Any, ...], lines: list[str],
                      buffers: dict[int, int] | None = None, ws_entry: Any = None,
                      new_buffer: Any = None) -> bool:
        """Write a 'small' group whose weights come split from the gather, and whose other
        operand is an earlier stacked result, as plain multiply-adds (the hot step of a fused
        feature map). Returns False for any other group.

        With ``buffers`` (workspace variant): slices of a workspace result are taken from the
        workspace, and the sum is written into a workspace tensor of its own."""
        kernels, a_source, b_source, kernel_fn, keep, need_parts = op
        first = kernels[0]
        if not (isinstance(kernel_fn, functools.partial) and kernel_fn.func is _small_weighted
                and a_source[0] == 0 and not need_parts):
            return False
        _, key, size, transposed = a_source
        k = _logical(first.a)[2]
        dim = 1 if transposed else 2       # transposed: (G*nb, k, m) stored, rows are terms
        if buffers is not None and key in buffers:
            lines.append(f"    t{g} = {ws_entry(('unbind', buffers[key], size, dim))}")
        else:
            lines.append(f"    t{g} = g{key}.view({size}).unbind({dim})")
        n, i = self._weight_slots[b_source[1]]
        self._inlined.add(g)
        lines.append(f"    w{g} = fetched[('columns', {n})]")
        first_term = 1 if first.ones_b else 0
        if buffers is not None and k - first_term >= 1:
            rows = size[0]
            cols = size[2] if dim == 1 else size[1]
            out = new_buffer((rows, cols), g)
            if first.ones_b:
                lines.append(f"    r{g} = torch.addcmul(t{g}[0], t{g}[1], w{g}[1][{i}], "
                             f"out={out})")
            else:
                lines.append(f"    r{g} = torch.mul(t{g}[0], w{g}[0][{i}], out={out})")
            for j in range(first_term + 1, k):
                lines.append(f"    r{g}.addcmul_(t{g}[{j}], w{g}[{j}][{i}])")
            if keep:
                lines.append(f"    g{g} = r{g}")
            return True
        lines.append(f"    r{g} = t{g}[0]" if first.ones_b else
                     f"    r{g} = t{g}[0] * w{g}[0][{i}]")
        for j in range(1, k):
            lines.append(f"    r{g} = torch.addcmul(r{g}, t{g}[{j}], w{g}[{j}][{i}])")
        if keep:
            contiguous = ".contiguous()" if k == 1 and first.ones_b else ""
            lines.append(f"    g{g} = r{g}{contiguous}")
        return True

    def _workspace(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor]
                   ) -> tuple[list[Any], set[int]]:
        """The workspace for this dtype and device (built at first use): its entries as the
        workspace source refers to them, and the data pointers of its tensors."""
        ref = tensors[0] if tensors else ports[0]
        key = (ref.dtype, ref.device, torch.is_inference_mode_enabled())
        found = self._workspaces.get(key)
        if found is None:
            entries: list[Any] = []
            for spec in self._ws_specs:
                if spec[0] == "empty":
                    entries.append(torch.empty(spec[1], dtype=ref.dtype, device=ref.device))
                elif spec[0] == "view":
                    _, base, size, transposed = spec
                    view = entries[base].view(size)
                    entries.append(view.transpose(1, 2) if transposed else view)
                else:
                    _, base, size, dim = spec
                    entries.append(entries[base].view(size).unbind(dim))
            pointers = {e.untyped_storage().data_ptr() for e, spec in zip(entries, self._ws_specs)
                        if spec[0] == "empty"}
            found = self._workspaces[key] = (entries, pointers)
        return found

    # -- leaves -----------------------------------------------------------------------------
    def _leaf(self, slot: int, tensors: Sequence[torch.Tensor],
              ports: Sequence[torch.Tensor]) -> torch.Tensor:
        source = self.sources[slot]
        if source[0] == "tensor":
            t = tensors[source[1]]
        else:
            t = ports[source[1]] if source[2] is None else ports[source[1]].select(0, source[2])
        eq = self.leaf_equations[slot]
        return t if eq is None else torch.einsum(eq, t)

    def _prefetch(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor]
                  ) -> dict[tuple[int, str], torch.Tensor]:
        out: dict[tuple[int, str], torch.Tensor] = {}
        # Without autograd, parameters gathered once are reused until any of them may have
        # changed (see weights_key).
        cacheable = not torch.is_grad_enabled()
        version = weights_key(tensors) if cacheable else None
        if cacheable and self._param_cache is not None and self._param_cache[0] == version:
            out.update(self._param_cache[1])
        else:
            for key, reqs in self._param_gathers.items():
                size, (nb, x, y) = key
                plan = self._gather_plans.get(key)
                if plan is None:
                    members = [(self.sources[_role_slot(k, role)][1], getattr(k, role))
                               for g, role in reqs for k in self.groups[g].kernels]
                    plan = self._gather_plans[key] = plan_param_gather(
                        [tuple(t.shape) for t in tensors], members)
                gathered = gather_params(tensors, plan)               # (n * size, nb, x, y)
                chunks = gathered.view(len(reqs), size * nb, x, y).unbind(0)
                out.update(zip(reqs, chunks))
            self._param_cache = (version, dict(out)) if cacheable else None
        for number, (key, reqs) in enumerate(self._port_gathers.items()):
            p, size, op, weights, skip = key
            data = ports[p]
            cache_key = (key, data.device)
            idx = self._port_idx_tensor.get(cache_key)
            if idx is None:
                idx = self._port_idx_tensor[cache_key] = torch.tensor(self._port_idx[key],
                                                                      device=data.device)
            nb, x, y = op.shape3
            if weights:       # per group the k weights (G*nb, 1), each contiguous (strided
                # weights slow the multiply-adds down): one gather per column, for all groups
                table = data.reshape(data.shape[0], nb, x)                    # (N, nb, k)
                columns: list[Any] = [None] if skip else []
                for j in range(1 if skip else 0, x):
                    column = table.select(2, j).index_select(0, idx)          # (n * size, nb)
                    columns.append(column.view(len(reqs), size * nb, 1).unbind(0))
                out[("columns", number)] = columns
                out.update((req, tuple(c if c is None else c[i] for c in columns))
                           for i, req in enumerate(reqs) if req[0] not in self._inlined)
                continue
            gathered = data.index_select(0, idx)   # (n * size, batch, *legs)
            gathered = gathered.view(len(reqs), size * nb, x, y)
            if op.transposed:
                gathered = gathered.transpose(2, 3)
            out.update(zip(reqs, gathered.unbind(0)))
        return out

    # -- running ----------------------------------------------------------------------------
    def run(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor]
            ) -> torch.Tensor:
        """Contract the network for these parameters and data ports."""
        if not self.sliced:
            fetched = self._prefetch(tensors, ports)
            if self._generated_ws is not None and not torch.is_grad_enabled() \
                    and _WORKSPACE_LOCK.acquire(blocking=False):
                try:
                    ws, pointers = self._workspace(tensors, ports)
                    result = self._generated_ws(tensors, ports, fetched, None, ws)
                    if result.untyped_storage().data_ptr() in pointers:
                        result = result.clone()    # never hand out workspace memory
                    return result
                finally:
                    _WORKSPACE_LOCK.release()
            return self._generated(tensors, ports, fetched, None)
        leaves = [self._leaf(k, tensors, ports) for k in range(self.n_leaves)]
        total = None
        for choice in itertools.product(*(range(n) for n, _ in self.sliced)):
            picked: dict[int, list[tuple[int, int]]] = {}
            for value, (_, where) in zip(choice, self.sliced):
                for leaf, axis in where:
                    picked.setdefault(leaf, []).append((axis, value))
            parts = list(leaves)
            for leaf, selections in picked.items():
                tensor = parts[leaf]
                for axis, value in sorted(selections, reverse=True):  # high axes first
                    tensor = tensor.select(axis, value)
                parts[leaf] = tensor
            part = self._generated(tensors, ports, {}, parts)
            total = part if total is None else total + part
        assert total is not None
        return total
