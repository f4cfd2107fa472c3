"""Execution of a plan in torch: each pairwise step becomes one matmul-shaped kernel.

A :class:`Program` is built once per compiled module from the plan. For every step it decides,
without touching data, how to lay the two operands out as ``(batch, rows, inner)`` and
``(batch, inner, cols)`` matrices so that most steps need no copy at all (reshapes and
transposed views only; BLAS reads transposed operands natively), which operand plays which role,
and which kernel runs it:

``mm``      no shared batch index: one GEMM;
``bmm``     batched GEMM over the indices both operands keep (e.g. the data batch);
``outer``   nothing contracted: a broadcast multiply;
``small``   a tiny contraction (inner size <= 4) of a vector per batch entry, e.g. the
            ``[1, x]`` feature of one pixel against a ``(batch, 2, bond)`` environment: an
            unrolled chain of fused multiply-adds (``addcmul``); a factor known to be all ones
            (the constant component of ``multilinear`` / ``poly`` features) is skipped, which
            fuses the feature map into the contraction: ``v A0 + x (v A1)``.

Each intermediate keeps the layout its kernel produced (``batch, rows, cols``); the next step
adapts to it, and the last result is permuted (a view) into the output order.

Steps that are independent and have the same kernel signature run as one batched kernel:
steps are scheduled in waves (all steps whose operands are ready), and equal kernels of a wave
are stacked into one ``bmm``. When a group's operands are exactly the outputs of one earlier
group, in order, the stacked tensor is reused without unstacking (e.g. the left and right
half-chains of an MPS advance together in one ``bmm`` per site).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tngraph.errors import CompileError

SMALL_INNER = 4


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

    @property
    def signature(self) -> tuple[Any, ...]:
        """Kernels with equal signatures can run stacked as one kernel."""
        nb, m, k = _logical(self.a)
        return (self.mode, nb, m, k, _logical(self.b)[2], self.ones_a, self.ones_b)

    @property
    def stack_size(self) -> int:
        """Elements copied when this kernel's operands are stacked with others."""
        return math.prod(self.a.shape3) + math.prod(self.b.shape3)


def _logical(op: Operand) -> tuple[int, int, int]:
    """(batch, rows, cols) of the operand as the kernel sees it (after any transpose)."""
    nb, x, y = op.shape3
    return (nb, y, x) if op.transposed else (nb, x, y)


def _operand(layout: Sequence[str], first: Sequence[str], second: Sequence[str],
             batch: Sequence[str], sizes: dict[str, int]) -> tuple[Operand, int]:
    """View ``layout`` as (batch, first, second); returns the operand and the copy cost."""
    nb = math.prod(sizes[i] for i in batch)
    n1 = math.prod(sizes[i] for i in first)
    n2 = math.prod(sizes[i] for i in second)
    layout = list(layout)
    if layout == [*batch, *first, *second]:
        return Operand(None, (nb, n1, n2), False), 0
    if layout == [*batch, *second, *first]:
        return Operand(None, (nb, n2, n1), True), 0
    target = [*batch, *first, *second]
    perm = tuple(layout.index(i) for i in target)
    return Operand(perm, (nb, n1, n2), False), nb * n1 * n2


def design_kernel(left: int, right: int, out: int, left_layout: Sequence[str],
                  right_layout: Sequence[str], kept: set[str], sizes: dict[str, int],
                  ones: set[int] = frozenset()) -> Kernel:
    """Choose roles, index orders and kernel of one pairwise step with the fewest copies.

    ``kept`` holds the indices the result must keep; ``ones`` holds the slots whose first
    entry along their (single) inner index is known to be all ones.
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
        for rank, source in enumerate((la, lb)):
            bt = [i for i in source if i in batch]
            ct = [i for i in source if i in inner]
            a, cost_a = _operand(la, fa, ct, bt, sizes)
            b, cost_b = _operand(lb, ct, fb, bt, sizes)
            nb, m, k = _logical(a)
            n = _logical(b)[2]
            if not ct:
                mode = "outer"
            elif k <= SMALL_INNER and nb > 1 and (m == 1 or n == 1):
                mode = "small"
            else:
                mode = "bmm" if nb > 1 else "mm"
            slot_a, slot_b = (right, left) if swap else (left, right)
            kernel = Kernel(left, right, out, swap, mode, a, b,
                            tuple(sizes[i] for i in (*bt, *fa, *fb)), (*bt, *fa, *fb),
                            ones_a=mode == "small" and slot_a in ones and len(ct) == 1,
                            ones_b=mode == "small" and slot_b in ones and len(ct) == 1,
                            groups=(tuple(bt), tuple(ct), tuple(fa), tuple(fb)),
                            layouts=(tuple(la), tuple(lb)))
            # among equally cheap layouts prefer rows >= cols: a canonical orientation lets
            # mirror-image steps (e.g. the two half-chains of an MPS) share one signature
            score = (cost_a + cost_b, int(m < n), 2 * swap + rank)
            if best is None or score < best[:3]:
                best = (*score, kernel)
    assert best is not None
    return best[3]


def conform(kernel: Kernel, target: Kernel, sizes: dict[str, int]) -> Kernel:
    """``kernel`` with its free indices reordered so that its result has ``target``'s shape.

    Used for kernels that run stacked with ``target``: their operands are copied by the stack
    anyway, so a permutation is free, and results of equal layout let the next stacked step
    reuse the stacked result without another copy.
    """
    if kernel.out_shape == target.out_shape or sorted(kernel.out_shape) != sorted(
            target.out_shape) or kernel.mode == "small":
        return kernel
    bt, ct, fa, fb = kernel.groups
    if len(fa) > 4 or len(fb) > 4:
        return kernel
    for pa in itertools.permutations(fa):
        for pb in itertools.permutations(fb):
            layout = (*bt, *pa, *pb)
            if tuple(sizes[i] for i in layout) == target.out_shape:
                a, _ = _operand(kernel.layouts[0], pa, ct, bt, sizes)
                b, _ = _operand(kernel.layouts[1], ct, pb, bt, sizes)
                return Kernel(kernel.left, kernel.right, kernel.out, kernel.swap, kernel.mode,
                              a, b, target.out_shape, layout, kernel.ones_a, kernel.ones_b,
                              (bt, ct, pa, pb), kernel.layouts)
    return kernel


def _as3(t: torch.Tensor, op: Operand) -> torch.Tensor:
    if op.perm is not None:
        t = t.permute(op.perm)
    t = t.reshape(op.shape3)
    return t.transpose(1, 2) if op.transposed else t


def run_kernel(kernel: Kernel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Execute one designed step on the step's left and right operands ``x`` and ``y``."""
    a = _as3(y if kernel.swap else x, kernel.a)   # (nb, m, k)
    b = _as3(x if kernel.swap else y, kernel.b)   # (nb, k, n)
    mode = kernel.mode
    if mode == "bmm":
        result = torch.bmm(a, b)
    elif mode == "mm":
        result = torch.mm(a[0], b[0])
    elif mode == "outer":
        result = a * b                     # (nb, m, 1) * (nb, 1, n)
    else:
        result = _small(a, b, kernel.ones_a, kernel.ones_b)
    return result.reshape(kernel.out_shape)


def _small(a: torch.Tensor, b: torch.Tensor, ones_a: bool, ones_b: bool) -> torch.Tensor:
    """sum_k a[:, :, k, None] * b[:, None, k, :] for a tiny k, as fused multiply-adds.

    Returns ``(nb, n)`` when a has one row, else ``(nb, m)`` (b has one column); the caller
    reshapes. A weight known to be all ones (``ones_*``) is not multiplied.
    """
    if a.shape[1] == 1:       # weights per batch entry (from a) on the rows of b
        weights, terms, skip = a.unbind(2), b.unbind(1), ones_a     # (nb, 1) and (nb, n)
    else:                     # weights (from b's single column) on the columns of a
        weights, terms, skip = b.unbind(1), a.unbind(2), ones_b     # (nb, 1) and (nb, m)
    acc = terms[0] if skip else terms[0] * weights[0]
    for term, weight in zip(terms[1:], weights[1:]):
        acc = torch.addcmul(acc, term, weight)
    return acc


@dataclass
class Group:
    """Kernels of one wave with the same signature, run as one stacked kernel."""

    kernels: list[Kernel]
    reuse_a: int | None = None   # index of an earlier group whose stacked output is 'a'
    reuse_b: int | None = None
    keep_stacked: bool = False   # a later group reuses this group's stacked output
    need_parts: bool = True      # some consumer needs the members' results one by one


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
    consumers: dict[int, int] = {}
    waiting = {s.out: 2 for s in steps}
    for pos, s in enumerate(steps):
        consumers[s.left] = pos
        consumers[s.right] = pos
    depth: dict[int, int] = {k: 0 for k in range(n_leaves)}
    for s in steps:
        depth[s.out] = 1 + max(depth[s.left], depth[s.right])
    ready = [pos for pos, s in enumerate(steps) if s.left < n_leaves and s.right < n_leaves]
    for pos in ready:
        waiting[steps[pos].out] = 0
    groups: list[Group] = []
    produced_by: dict[int, tuple[int, int]] = {}   # slot -> (group index, member index)
    while ready:
        designed = {}
        for pos in ready:
            s = steps[pos]
            designed[pos] = design_kernel(s.left, s.right, s.out, layouts[s.left],
                                          layouts[s.right], set(s.out_inds), sizes, ones)
        classes: dict[tuple[Any, ...], list[int]] = {}
        for pos in sorted(ready):
            kernel = designed[pos]
            key = kernel.signature if kernel.stack_size <= STACK_LIMIT else ("solo", pos)
            classes.setdefault(key, []).append(pos)
        # largest class first; then the shallowest (so that parallel chains stay level)
        chosen = max(classes.values(), key=lambda members: (
            len(members), -min(depth[steps[p].out] for p in members), -members[0]))
        kernels = [designed[pos] for pos in chosen]
        kernels = [kernels[0]] + [conform(k, kernels[0], sizes) for k in kernels[1:]]
        group = Group(kernels)
        if len(kernels) > 1:
            group.reuse_a = _reusable(kernels, "a", produced_by, groups)
            group.reuse_b = _reusable(kernels, "b", produced_by, groups)
        g = len(groups)
        groups.append(group)
        for member, (pos, kernel) in enumerate(zip(chosen, kernels)):
            layouts[kernel.out] = kernel.out_layout
            produced_by[kernel.out] = (g, member)
            ready.remove(pos)
            if kernel.out in consumers:
                nxt = consumers[kernel.out]
                other = steps[nxt].left if steps[nxt].right == kernel.out else steps[nxt].right
                if other < n_leaves or other in layouts:
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
    sliced = []
    for index in plan.sliced_inds:
        where = [(k, leaf.index(index)) for k, leaf in enumerate(plan.leaf_inds)
                 if index in leaf]
        sliced.append((sizes[index], where))
    return Program(n_leaves, leaf_equations, groups, final_perm, result_slot, sliced)


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


def equation(operands: Sequence[Sequence[str]], out: Sequence[str]) -> str:
    letters: dict[str, str] = {}
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for i in itertools.chain(*operands, out):
        if i not in letters:
            if len(letters) == len(alphabet):
                raise CompileError("a contraction step has more than 52 distinct indices")
            letters[i] = alphabet[len(letters)]
    return ",".join("".join(letters[i] for i in op) for op in operands) + "->" + "".join(
        letters[i] for i in out)


@dataclass
class Program:
    """The plan as a list of kernel groups over numbered slots."""

    n_leaves: int
    leaf_equations: list[str | None]
    groups: list[Group]
    final_perm: tuple[int, ...] | None
    result_slot: int
    sliced: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)

    # -- running ----------------------------------------------------------------------------
    def run(self, leaves: list[torch.Tensor]) -> torch.Tensor:
        leaves = [t if eq is None else torch.einsum(eq, t)
                  for t, eq in zip(leaves, self.leaf_equations)]
        if not self.sliced:
            return self._contract(leaves)
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
            part = self._contract(parts)
            total = part if total is None else total + part
        assert total is not None
        return total

    def _contract(self, leaves: list[torch.Tensor]) -> torch.Tensor:
        slots: dict[int, torch.Tensor] = dict(enumerate(leaves))
        stacked: dict[int, torch.Tensor] = {}
        for g, group in enumerate(self.groups):
            kernels = group.kernels
            if len(kernels) == 1:
                k = kernels[0]
                slots[k.out] = run_kernel(k, slots.pop(k.left), slots.pop(k.right))
                continue
            first = kernels[0]
            if group.reuse_a is not None:
                a = self._stacked(group.reuse_a, first.a, stacked)
            else:
                a = torch.stack([_as3(slots.pop(k.right if k.swap else k.left), k.a)
                                 for k in kernels])
            if group.reuse_b is not None:
                b = self._stacked(group.reuse_b, first.b, stacked)
            else:
                b = torch.stack([_as3(slots.pop(k.left if k.swap else k.right), k.b)
                                 for k in kernels])
            # a: (G, nb, m, k), b: (G, nb, k, n) -> fold G into the batch
            size, nb = a.shape[0], a.shape[1]
            a2 = a.reshape(size * nb, a.shape[2], a.shape[3])
            b2 = b.reshape(size * nb, b.shape[2], b.shape[3])
            if first.mode in ("bmm", "mm"):
                res = torch.bmm(a2, b2)
            elif first.mode == "outer":
                res = a2 * b2
            else:
                res = _small(a2, b2, first.ones_a, first.ones_b)
            res = res.reshape(size, nb, -1)
            if group.keep_stacked:
                stacked[g] = res
            if group.need_parts:
                for k, part in zip(kernels, res.unbind(0)):
                    slots[k.out] = part.reshape(k.out_shape)
        result = slots[self.result_slot]
        if self.final_perm is not None:
            result = result.permute(self.final_perm)
        return result

    @staticmethod
    def _stacked(g: int, op: Operand, stacked: dict[int, torch.Tensor]) -> torch.Tensor:
        """An earlier group's stacked output viewed as this group's stacked operand."""
        res = stacked[g]
        view = res.view(res.shape[0], *op.shape3)
        return view.transpose(2, 3) if op.transposed else view
