"""Scheduling of a plan's steps into stacked groups, and gathering of their parameters.

:func:`plan_schedule` designs every kernel of a plan and schedules the steps in waves, stacking
equal kernels of a wave into one :class:`Group`; :func:`merged_permutation` prepares the final
permutation of a large result; :class:`ParamGather` (planned by :func:`plan_param_gather`, run
by :func:`gather_params`) stacks the parameters of stacked groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.executor.kernels import (
    Kernel,
    Operand,
    _role_slot,
    conform,
    design_kernel,
    inverse_permutation,
    larger_inside,
)
from tngraph.plan import equation


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


#: stack independent equal kernels only while their operands are this small (elements):
#: stacking copies the operands, which pays off where the per-kernel overhead dominates.
STACK_LIMIT = 1 << 16


@dataclass(frozen=True)
class LeafSource:
    """Where one leaf of the plan comes from.

    ``kind`` is ``"tensor"`` (``index``: the parameter tensor, in term order) or ``"port"``
    (``index``: the data port; ``copy``: the copy of a stacked port, None for a plain port).
    """

    kind: str
    index: int
    copy: int | None = None


@dataclass(frozen=True)
class Schedule:
    """A plan designed and scheduled for one batch size: the fields of a program.

    ``groups`` run in order over numbered slots (leaves first, then step results);
    ``leaf_equations`` hold the einsum that brings each leaf into its planned index order (None
    where it already is); ``final_perm`` / ``final_merged`` permute the result (in slot
    ``result_slot``) into the output order; ``sliced`` holds, per sliced index, its size and
    the ``(leaf, axis)`` places it occurs at; ``sources`` says where each leaf comes from.
    """

    n_leaves: int
    leaf_equations: list[str | None]
    groups: list[Group]
    final_perm: tuple[int, ...] | None
    result_slot: int
    sliced: list[tuple[int, list[tuple[int, int]]]]
    sources: dict[int, LeafSource]
    final_merged: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None


def leaf_sources(problem: Any) -> list[LeafSource]:
    """Where each leaf of ``problem`` comes from: parameter tensor ``i`` (in term order), or a
    data port (numbered in order of appearance) and its copy (``None``: not stacked)."""
    ports: dict[str, int] = {}
    sources = []
    n_tensors = 0
    for term in problem.terms:
        if term.kind == "tensor":
            sources.append(LeafSource("tensor", n_tensors))
            n_tensors += 1
        else:
            sources.append(LeafSource("port", ports.setdefault(term.port, len(ports)),
                                      term.copy))
    return sources


def trace_equations(plan: Any) -> tuple[str | None, ...]:
    """Per leaf, the einsum that takes its traces and brings it into its planned index order
    (``None`` where it already is)."""
    return tuple(None if tuple(raw) == tuple(leaf) else equation([raw], leaf)
                 for raw, leaf in zip(plan.problem.inputs, plan.leaf_inds))


def plan_schedule(plan: Any, ones: set[int] = frozenset(), batch_size: int | None = None,
                  *, grouping: bool = True) -> Schedule:
    """Design every kernel of ``plan`` for ``batch_size`` and schedule them into stacked groups.

    Scheduling is greedy: among the steps whose operands are ready, the largest set of steps
    with one kernel signature runs next (ties: the shallowest, then the earliest step of the
    plan). Two chains that advance one site per step thus fall into lockstep even when the plan
    orders them one after the other.

    Running steps side by side keeps more intermediates alive at once than the plan's order.
    Where that peak (:func:`schedule_peak`) would exceed the plan's memory limit, and for sliced
    plans and ``grouping=False``, the steps run one at a time in the plan's order, whose peak
    the plan's memory guard has checked.
    """
    schedule = _schedule(plan, ones, batch_size, grouping and not plan.sliced_inds)
    if grouping and not plan.sliced_inds and any(len(g.kernels) > 1 for g in schedule.groups):
        limit = getattr(plan, "memory_limit", None)
        itemsize = getattr(plan, "itemsize", 4)
        if limit is not None and schedule_peak(schedule) * itemsize > limit:
            return _schedule(plan, ones, batch_size, False)
    return schedule


def schedule_peak(schedule: Schedule) -> int:
    """An upper bound of the intermediate entries alive at once when ``schedule`` runs: per
    group, the results still needed (a stacked group's results live until the last of them is
    used: they are views of one tensor), its own results and a copy of each operand."""
    owner: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for g, group in enumerate(schedule.groups):
        for k in group.kernels:
            owner[k.out] = g
            sizes[k.out] = math.prod(k.out_shape)
    last: dict[int, int] = {}
    for g, group in enumerate(schedule.groups):
        for k in group.kernels:
            for slot in (k.left, k.right):
                if slot in owner:
                    last[owner[slot]] = g
    live: dict[int, int] = {}
    peak = 0
    for g, group in enumerate(schedule.groups):
        copies = sum(math.prod(k.a.shape3) + math.prod(k.b.shape3) for k in group.kernels)
        live[g] = sum(sizes[k.out] for k in group.kernels)
        peak = max(peak, sum(live.values()) + copies)
        for done in [h for h, at in last.items() if at == g]:
            live.pop(done, None)
    return peak


def _schedule(plan: Any, ones: set[int], batch_size: int | None, grouping: bool) -> Schedule:
    problem = plan.problem
    removed = set(plan.sliced_inds)
    sources = dict(enumerate(leaf_sources(problem)))
    sizes = dict(problem.size_dict)
    if problem.batch is not None and batch_size is not None:
        sizes[problem.batch] = batch_size
    leaf_equations = list(trace_equations(plan))
    layouts = {k: tuple(i for i in leaf if i not in removed)
               for k, leaf in enumerate(plan.leaf_inds)}
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
            if grouping and kernel.stack_size <= STACK_LIMIT and kernel.mode not in (
                    "select", "bcast"):
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
        # shallowest (so that parallel chains stay level); then plan order. Ungrouped: the
        # plan's order (its next step is always ready)
        chosen = max(classes.values(), key=lambda members: (
            len(members), lookahead(members),
            -min(depth[steps[p].out] for p in members), -members[0])) if grouping \
            else [min(ready)]
        kernels = [designed[pos] for pos in chosen]
        if len(kernels) > 1 and all(_role_slot(k, "b") in sources
                                    and sources[_role_slot(k, "b")].kind == "tensor"
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
    return Schedule(n_leaves, leaf_equations, groups, final_perm, result_slot, sliced, sources,
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
    return ParamGather(tuple(parts), "index", inverse_permutation(order))


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
