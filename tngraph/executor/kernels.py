"""Kernel design and execution: one pairwise step as a matmul-shaped kernel.

:func:`design_kernel` decides, without touching data, how the two operands of a step are viewed
as ``(batch, rows, inner)`` and ``(batch, inner, cols)`` matrices (:class:`Operand`) and which
kernel mode runs the step (:class:`Kernel`); :func:`run_kernel` executes a designed kernel, and
the ``_small`` / ``_select`` / ``_matvec`` functions implement the modes that are not a plain
(batched) GEMM.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.executor.pool import BufferPool

try:   # what Function.apply does to its arguments outside transforms (see apply_positional)
    from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead
except ImportError:                   # (a torch without it: the plain apply runs)
    _unwrap_dead = None

#: contractions over at most this many inner entries run as unrolled multiply-adds
#: (``small`` / ``select`` kernels)
SMALL_INNER = 4

#: batched matrix-vector products at least this large run as multiply + sum: batched GEMM
#: kernels are slow on them (measured 2-3x on this CPU for 10x40 and larger per batch entry)
MATVEC_MIN = 400

#: a 'bcast' kernel (see :func:`_broadcast_kernel`) runs only where each of its batched
#: matmuls has at least this many multiply-adds (below, one large copied ``mm`` is faster)
BROADCAST_MIN_MACS = 1 << 15

#: ``sum_n a[n] @ b[n]`` (a broadcast operand's gradient) is formed in chunks of ``n`` whose
#: products hold about this many entries, so they stay in cache instead of one ``(n, rows,
#: cols)`` product of many MB that is written out only to be summed
SUMMED_CHUNK_ENTRIES = 1 << 17

#: ... and one ``addmm_`` per ``n`` once each product has at least this many multiply-adds
SUMMED_LOOP_MACS = 1 << 22


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
    mode: str                        # mm | bmm | bcast | outer | small | select | matvec
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
    flip: bool = False               # 'bcast': the result is (lead, cols, rows): b^T a[n]^T

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
                    best = _cheaper(best, *selected, 0, 2 * swap + rank, sizes, lead, target)
                    continue
            if cost_a and not bt:
                for broadcast in _broadcast_kernels(left, right, out, swap, la, lb, fa, fb, ct,
                                                    sizes):
                    best = _cheaper(best, *broadcast, 0, 2 * swap + rank, sizes, lead, target)
            kernel = Kernel(left, right, out, swap, mode, a, b,
                            tuple(sizes[i] for i in (*bt, *fa, *fb)), (*bt, *fa, *fb),
                            ones_a=mode == "small" and slot_a in ones and len(ct) == 1,
                            ones_b=mode == "small" and slot_b in ones and len(ct) == 1,
                            groups=(tuple(bt), tuple(ct), tuple(fa), tuple(fb)),
                            layouts=(tuple(la), tuple(lb)))
            # among equally cheap layouts prefer rows >= cols: a canonical orientation lets
            # mirror-image steps (e.g. the two half-chains of an MPS) share one signature;
            # an outer product the other way round, its longer side innermost (a broadcast
            # multiply with a short inner run is slow: (256, 40, 1) * (256, 1, 2) took 31 us,
            # (256, 2, 1) * (256, 1, 40) 10 us)
            wide = int(m > n) if mode == "outer" else int(m < n)
            best = _cheaper(best, kernel, cost_a + cost_b, int(slow_gemv) * 2 + wide,
                            2 * swap + rank, sizes, lead, target)
    assert best is not None
    return best[3]


def _cheaper(best: tuple[int, int, int, Kernel] | None, kernel: Kernel, cost: int, tie: int,
             order: int, sizes: dict[str, int], lead: str | None,
             target: dict[str, int] | None) -> tuple[int, int, int, Kernel]:
    """The better of ``best`` and ``kernel`` for :func:`design_kernel`: ``(copy cost plus
    layout penalty, tie-break, candidate order, kernel)``, lowest first."""
    score = (cost + _layout_penalty(kernel.out_layout, sizes, lead, target), tie, order)
    return (*score, kernel) if best is None or score < best[:3] else best


def _layout_penalty(out_layout: Sequence[str], sizes: dict[str, int], lead: str | None,
                    target: dict[str, int] | None) -> int:
    """What :func:`design_kernel` charges a result for its layout: its size where the ``lead``
    index is in it but not first, and a quarter of its size per extra run of output indices."""
    out_size = math.prod(sizes[i] for i in out_layout)
    penalty = out_size if lead is not None and lead in out_layout and \
        out_layout[0] != lead else 0
    if target:
        penalty += out_size * (_runs(out_layout, target) - 1) // 4
    return penalty


def _broadcast_kernels(left: int, right: int, out: int, swap: bool, la: Sequence[str],
                       lb: Sequence[str], fa: Sequence[str], fb: Sequence[str],
                       ct: Sequence[str], sizes: dict[str, int]) -> list[tuple[Kernel, int]]:
    """'bcast' kernels: the leading free indices of ``a`` (layout ``la``) become the batch of
    a batched matmul whose other operand is broadcast (stride 0), so that an ``a`` whose free
    and contracted indices are not in two blocks needs no copy. Returns the kernel and its
    copy cost (``b``'s, if any), and the same kernel flipped (its result ``(lead, cols,
    rows)``, each matmul ``b^T a[n]^T``: the order a TT-layer's output wants, with no permute
    after it); none where it does not apply.

    ``la`` must be ``(*lead, *rest)`` with ``lead`` free indices of ``a`` and ``rest`` the other
    free indices and the contracted ones in two blocks, either order; each matmul must have at
    least :data:`BROADCAST_MIN_MACS` multiply-adds; and the gradient of the broadcast operand
    (the batch of products that autograd sums) must be no larger than ``a``: the copy it
    replaces. A TT-layer's half-train meeting the data (``(b, i0, i1, r, o2, o3)`` against
    ``(i0, i1, r, o0, o1)``) thus runs as ``b`` matmuls ``(o2 o3, i0 i1 r) @ (i0 i1 r, o0 o1)``
    reading the intermediate in place, instead of permuting it into ``(b o2 o3, i0 i1 r)``.
    """
    free, inner = set(fa), set(ct)
    for cut in range(1, len(la)):
        lead = list(la[:cut])
        if not set(lead) <= free:
            return []
        rest = list(la[cut:])
        rows = [i for i in rest if i in free]
        flags = [i in free for i in rest]
        if not rows or not inner <= set(rest) or sum(
                a != b for a, b in zip(flags, flags[1:])) > 1:
            continue                         # rest is not (rows, inner) or (inner, rows)
        order = [i for i in rest if i in inner]
        n_batch = math.prod(sizes[i] for i in lead)
        m = math.prod(sizes[i] for i in rows)
        k = math.prod(sizes[i] for i in order)
        n = math.prod(sizes[i] for i in fb)
        if n_batch < 2 or m * k * n < BROADCAST_MIN_MACS or n > m:
            continue
        transposed = not flags[0]            # rest = (inner, rows)
        a = Operand(None, (n_batch, k, m) if transposed else (n_batch, m, k), transposed)
        b, cost_b = _operand(lb, order, fb, [], sizes, copy_transposed=True)
        kernels = []
        for flip, layout in ((False, (*lead, *rows, *fb)), (True, (*lead, *fb, *rows))):
            # (flipped, b is read as b^T: a copy unless b is stored transposed)
            cost = cost_b + (k * n if flip and not b.transposed else 0)
            kernels.append((Kernel(left, right, out, swap, "bcast", a, b,
                                   tuple(sizes[i] for i in layout), layout,
                                   groups=((), tuple(order), (*lead, *rows), tuple(fb)),
                                   layouts=(tuple(la), tuple(lb)), flip=flip), cost))
        return kernels
    return []


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
            target.out_shape) or kernel.mode in ("small", "select", "bcast"):
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


def inverse_permutation(perm: Sequence[int]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``: ``t.permute(perm).permute(inverse)`` is ``t``.

    Examples
    --------
    >>> inverse_permutation((2, 0, 1))
    (1, 2, 0)
    """
    inverse = [0] * len(perm)
    for axis, source in enumerate(perm):
        inverse[source] = axis
    return tuple(inverse)


def recomputed_grads(run: Any, inputs: Sequence[torch.Tensor], needs: Sequence[bool],
                     grad: torch.Tensor) -> list[torch.Tensor | None]:
    """The gradients of ``run(inputs)`` with respect to the ``inputs`` whose ``needs`` is set
    (None for the others), from the output's gradient ``grad``, with a graph back to the inputs.

    The double-backward path of a Function whose fast backward reads saved intermediates that
    carry no graph (:class:`~tngraph.executor.chain._ChainRun`,
    :class:`~tngraph.executor.adjoint._ProgramRun`): called under ``create_graph=True``, it
    recomputes ``run`` from the saved inputs with recorded torch ops and differentiates that.

    Examples
    --------
    >>> x = torch.tensor([3.0], requires_grad=True)
    >>> (g,) = recomputed_grads(lambda t: t[0] ** 3, [x], [True], torch.ones(1))
    >>> g.detach(), torch.autograd.grad(g.sum(), x)[0]      # d/dx x^3, then its derivative
    (tensor([27.]), tensor([18.]))
    """
    with torch.enable_grad():
        leaves = [t if t.requires_grad else t.detach().requires_grad_(need)
                  for t, need in zip(inputs, needs)]
        out = run(leaves)
        wanted = [t for t, need in zip(leaves, needs) if need]
        found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True,
                                         allow_unused=True))
    return [next(found) if need else None for need in needs]


def apply_positional(function: Any, *args: Any) -> Any:
    """``function.apply(*args)`` for an ``autograd.Function`` in the ``setup_context`` form
    called with positional arguments only, for every parameter of its ``forward``.

    torch's ``apply`` binds the arguments to ``forward``'s signature at every call
    (``inspect.signature``), so that ``setup_context`` sees defaults filled in; arguments that
    are all given positionally bind to themselves. That binding cost about 27 us a call here
    (13 arguments; 8 us without), once per training step for a chain run or a TT-layer. Inside
    a ``torch.func`` transform this is the plain ``apply``, which dispatches to the Function's
    transform rules; outside, dead ``torch.func`` wrappers are unwrapped as ``apply`` does.

    Examples
    --------
    >>> class Double(torch.autograd.Function):
    ...     @staticmethod
    ...     def forward(x):
    ...         return 2 * x
    ...     @staticmethod
    ...     def setup_context(ctx, inputs, output):
    ...         pass
    ...     @staticmethod
    ...     def backward(ctx, grad):
    ...         return 2 * grad
    >>> x = torch.ones(2, requires_grad=True)
    >>> apply_positional(Double, x).sum().backward()
    >>> x.grad
    tensor([2., 2.])
    """
    if _unwrap_dead is None or _transforms_active():
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*_unwrap_dead(args))


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
    elif mode == "bcast":
        result = _broadcast(a, b, torch.is_grad_enabled(), kernel.flip)
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


def _broadcast(a: torch.Tensor, b: torch.Tensor, recorded: bool, flip: bool = False
               ) -> torch.Tensor:
    """A 'bcast' kernel: ``a`` ``(n, m, k)`` times ``b`` ``(1, k, cols)`` for every ``n``
    (with ``flip``, the transposed products: ``(n, cols, m)``).

    Without autograd, as one batched matmul with ``b`` broadcast (``a`` read in place). Under
    autograd (``recorded``), ``a`` is copied into ``(n * m, k)`` for one ``mm``: plain
    recorded ops, as :func:`run_kernel` may run inside ``torch.func`` transforms (generated
    training programs use :class:`_BroadcastMatmul` instead; autograd's own gradient of the
    broadcast, measured on TT-layer 1024 -> 1024 rank 8, batch 256, made forward + backward
    14.7 ms against 11.6 ms with the copy)."""
    if recorded:
        out = torch.mm(a.reshape(-1, a.shape[2]), b[0]).view(a.shape[0], a.shape[1], -1)
        return out.transpose(1, 2) if flip else out
    return torch.bmm(*_broadcast_operands(a, b[0], flip))


def _broadcast_operands(a: torch.Tensor, b: torch.Tensor, flip: bool
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The two operands of the batched matmul that a 'bcast' kernel runs: ``a`` ``(n, m, k)``
    and ``b`` ``(k, cols)`` broadcast over ``n``; flipped, ``b^T`` broadcast and ``a^T``, for
    the transposed products ``(n, cols, m)``. (``b`` is small and made contiguous first: a
    transposed view of it, broadcast, would make ``bmm`` copy it ``n`` times.)

    Examples
    --------
    >>> a, b = torch.randn(3, 2, 4), torch.randn(4, 5)
    >>> torch.bmm(*_broadcast_operands(a, b, True)).shape
    torch.Size([3, 5, 2])
    """
    n = a.shape[0]
    if flip:
        return b.mT.contiguous().expand(n, -1, -1), a.transpose(1, 2)
    return a, b.contiguous().expand(n, -1, -1)


def _broadcast_grads(a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor,
                     pool: BufferPool | None, need_a: bool, need_b: bool
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of ``a`` ``(n, m, k)`` and of the broadcast ``b`` ``(k, cols)`` from that
    of their products ``grad`` ``(n, m, cols)`` (None where not needed).

    ``a``'s is computed in the memory order of ``a`` itself (for the usual transposed view of a
    ``(n, k, m)`` tensor: ``b @ grad^T``, written ``(n, k, m)``), so no copy is needed to hand
    it back; ``b``'s is the batched products summed over ``n`` (:func:`_summed_bmm`)."""
    grad_a = grad_b = None
    if need_a:
        n = a.shape[0]
        if a.transpose(1, 2).is_contiguous():    # a transposed view: answer in its order
            grad_a = _pooled(torch.bmm, b.conj().contiguous().expand(n, -1, -1),
                             grad.transpose(1, 2), pool).transpose(1, 2)
        else:
            grad_a = _pooled(torch.bmm, grad, b.mT.conj().contiguous().expand(n, -1, -1), pool)
    if need_b:
        grad_b = _summed_bmm(a.mT.conj(), grad, pool)
    return grad_a, grad_b


def _matmul_grads(matmul: Any, a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor,
                  pool: BufferPool | None, need_a: bool, need_b: bool
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of ``a`` and ``b`` from that of ``matmul(a, b)`` (``torch.mm`` or
    ``torch.bmm``), None where not needed: torch's own matmul backward (a GEMM reading the
    result gradient transposed runs several times slower here), large ones into ``pool``."""
    return (_pooled(matmul, grad, b.mH, pool) if need_a else None,
            _pooled(matmul, a.mH, grad, pool) if need_b else None)


class _BroadcastMatmul(torch.autograd.Function):
    """A 'bcast' kernel under autograd: ``a`` ``(n, m, k)`` times ``b`` ``(k, cols)`` for every
    ``n``, ``b`` broadcast, with a backward that keeps ``a``'s layout.

    The gradients are :func:`_broadcast_grads`'s: ``a``'s in ``a``'s own memory order, ``b``'s
    the batched products summed over ``n``. Written in differentiable torch ops, so gradients
    of any order are right. Measured on one thread for
    TT-layer steps ``(n, k, m, cols)``, forward + backward against copying ``a`` for one
    ``mm``: (64, 256, 32, 32) 1.23 against 1.70 ms; (256, 256, 64, 64) 17.9 against 28.0 ms.

    Examples
    --------
    >>> a, b = torch.randn(3, 8, 4, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    >>> out = _BroadcastMatmul.apply(a.transpose(1, 2), b)
    >>> torch.allclose(out, torch.einsum("nkm,kc->nmc", a, b))
    True
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, pool: BufferPool | None = None,
                flip: bool = False) -> torch.Tensor:
        return torch.bmm(*_broadcast_operands(a, b, flip))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs[:2])
        ctx.pool = inputs[2] if len(inputs) > 2 else None
        ctx.flip = len(inputs) > 3 and inputs[3]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        if 0 in grad.stride():     # a broadcast gradient (``out.sum().backward()``): batched
            grad = grad.contiguous()   # matmuls take a slow per-matrix path on it
        if ctx.flip:
            grad = grad.transpose(1, 2)
        return (*_broadcast_grads(a, b, grad, ctx.pool, *ctx.needs_input_grad[:2]), None, None)


class _PooledMatmul(torch.autograd.Function):
    """A lone ``mm`` step of the training program with a large result: ``torch.mm`` writing
    its result, and in the backward its operands' gradients, into buffers of the program's
    :class:`~tngraph.executor.pool.BufferPool` (memory of earlier calls, not pages fresh from
    the operating system). The backward is the matmul's own, in torch ops, so gradients of any
    order are right (under ``create_graph`` it allocates as usual).

    Examples
    --------
    >>> a = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    >>> b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    >>> torch.autograd.gradcheck(lambda a, b: _PooledMatmul.apply(a, b, BufferPool()), (a, b))
    True
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, pool: BufferPool | None) -> torch.Tensor:
        return _pooled(torch.mm, a, b, pool)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs[:2])
        ctx.pool = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        return (*_matmul_grads(torch.mm, a, b, grad, ctx.pool, *ctx.needs_input_grad[:2]),
                None)


def _pooled_mm(a: torch.Tensor, b: torch.Tensor, pool: BufferPool | None) -> torch.Tensor:
    """``torch.mm(a, b)``; under autograd as :class:`_PooledMatmul` (the training program's
    large ``mm`` steps: without autograd nothing is kept for a backward, and no buffer is
    held between calls)."""
    if _recording(a, b):
        return _PooledMatmul.apply(a, b, pool)
    return torch.mm(a, b)


def _pooled(matmul: Any, a: torch.Tensor, b: torch.Tensor,
            pool: BufferPool | None) -> torch.Tensor:
    """``matmul(a, b)`` (``torch.mm`` or ``torch.bmm``), written into a buffer of ``pool``
    where its result is large and nothing is being recorded: not under autograd
    (``create_graph``) nor a ``torch.func`` transform.

    Examples
    --------
    >>> a, b = torch.randn(1024, 16), torch.randn(16, 512)
    >>> torch.equal(_pooled(torch.mm, a, b, BufferPool()), torch.mm(a, b))
    True
    """
    if pool is None or _recording(a, b) or _transforms_active():
        return matmul(a, b)
    shape = (*a.shape[:-1], b.shape[-1])
    if a.dtype != b.dtype or not pool.wanted(shape, a.dtype, a.device):
        return matmul(a, b)
    return matmul(a, b, out=pool.take(shape, a.dtype, a.device))


def _recording(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on ``tensors`` (a backward under ``create_graph``)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _summed_bmm(a: torch.Tensor, b: torch.Tensor, pool: BufferPool | None = None
                ) -> torch.Tensor:
    """``sum_n a[n] @ b[n]`` for ``a`` ``(n, rows, inner)`` and ``b`` ``(n, inner, cols)``.

    ``torch.bmm(a, b).sum(0)`` writes all ``n`` products out before summing them: at a 4096 TT-
    layer's last step (``n`` 256, products 1024 x 64) that is 67 MB of fresh memory and took
    52 ms on one thread. Without autograd or a ``torch.func`` transform the products are instead
    accumulated a chunk of ``n`` at a time (``baddbmm``) in one buffer that stays in cache and
    summed once at the end (at ``(256, 256, 32, 32)``: 1.0 against 1.25 ms), or, where each
    product is a large matmul, added one by one with ``addmm_`` (21 ms at the 4096 layer).
    Under autograd (``create_graph``) or a transform the plain, differentiable form runs.

    Examples
    --------
    >>> a, b = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(5, 4, 2, dtype=torch.float64)
    >>> torch.allclose(_summed_bmm(a, b), torch.einsum("nik,nkj->ij", a, b))
    True
    """
    n, rows, inner = a.shape
    cols = b.shape[2]
    if _recording(a, b) or _transforms_active():
        return torch.bmm(a, b).sum(0)
    dtype = torch.promote_types(a.dtype, b.dtype)
    if rows * inner * cols >= SUMMED_LOOP_MACS:
        acc = torch.mm(a[0], b[0])
        for i in range(1, n):
            acc.addmm_(a[i], b[i])
        return acc
    chunk = max(1, min(n, SUMMED_CHUNK_ENTRIES // max(1, rows * cols)))
    if chunk >= n:
        return torch.bmm(a, b).sum(0)
    shape = (chunk, rows, cols)
    buffer = (pool.take(shape, dtype, a.device) if pool is not None
              else torch.empty(shape, dtype=dtype, device=a.device))
    torch.bmm(a[:chunk], b[:chunk], out=buffer)
    for start in range(chunk, n, chunk):
        part = buffer[:min(n, start + chunk) - start]
        torch.baddbmm(part, a[start:start + chunk], b[start:start + chunk], out=part)
    return buffer.sum(0)


#: torch's own test for an active torch.func transform (private; absent: assume none)
_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


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


def _role_slot(kernel: Kernel, role: str) -> int:
    """The slot that plays operand ``role`` ("a" or "b") in ``kernel``."""
    if role == "a":
        return kernel.right if kernel.swap else kernel.left
    return kernel.left if kernel.swap else kernel.right

