"""Contraction planning with cotengra: order, named steps, costs, memory limit, disk cache.

This is the only module that imports cotengra. ``make_plan(problem, options)`` returns a frozen
:class:`Plan`: the cotengra ``ContractionTree``, the pairwise steps (each with its indices, FLOPs
and output size), totals, the naive single-einsum cost, slicing, and whether the memory limit is
respected. Plans are cached on disk, keyed by the network's structure, sizes and the search
options, so re-planning a spec never searches twice.

FLOP convention (as opt_einsum's): a pairwise step costs the product of the sizes of all indices
it touches, times 2 when it sums over at least one index (a multiply and an add). FLOPs are real
ones: in a complex dtype every count is 4 times as large (:data:`FLOP_FACTOR`: a complex
multiply-add is 4 real multiply-adds).

Examples
--------
>>> from tngraph.spec import load_spec, PlanOptions
>>> from tngraph.graph import einsum_problem
>>> spec = load_spec("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 4, phys_dim: 2, "
...                  "bond_dim: 3}\\n")
>>> plan = make_plan(einsum_problem(spec), PlanOptions(cache=False))
>>> len(plan.steps), plan.path_finder
(3, 'optimal')
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tngraph.errors import CompileError, PlanError, Problem, SpecError, did_you_mean
from tngraph.files import WriteError, atomic_write
from tngraph.graph import EinsumProblem, einsum_problem, parameter_count
from tngraph.schema import PlanOptions, Spec
from tngraph.throughput import flops_per_second, format_duration

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "couldn't import kahypar/optuna": optional extras
    import cotengra as ctg
    from cotengra.interface import _PRESETS_PATH
    from cotengra.pathfinders.path_basic import OptimalOptimizer
    from cotengra.presets import estimate_optimal_hardness

CACHE_VERSION = 9
#: ``run_path: auto`` runs the port-fused path while it costs at most this many times the lowest
#: FLOPs found: it saves per-kernel overhead (stacked chains, fused feature maps) that the FLOP
#: count does not see; measured on 64-site MPS classifiers, where refinement saves 7-12 %
#: FLOPs by contracting parameter-only blocks at the chain ends but runs 10-25 % slower
#: (1.25 while plans minimised FLOPs alone; the fused path of a 12-site MPS at bond 3 has
#: 1.27x the FLOPs of its ``combo`` plan, and infers in 164 us against 272 us)
FUSED_TOLERANCE = 1.3

#: the port-fused path contracts a node's data ports with the other operand before the node
#: (``(X x port) x node``) where that costs this many times less than ``(X x node) x port``,
#: counting FLOPs and :data:`COMBO_WRITE_COST` per entry written. An MPS step costs the same
#: either way and stays fused (one order everywhere keeps lockstep chains); the label core of
#: an MPS classifier, ``(l, p, r, o)``, fused writes ``(batch, p, r, o)`` and sums it over
#: ``p``, where ports first write ``(batch, l, p)`` and ``(batch, r, o)``: at bond 40, batch
#: 256, 1.5 times less by this count; measured in the compiled 64-site classifier on one
#: thread, 270 us fused (matmul 160 us, the sum over ``p`` 111 us) against 190 us ports first
#: (outer product 30 us, matmul 160 us)
PORTS_FIRST_MARGIN = 1.25

#: networks whose exact search is estimated this easy are planned exactly by ``auto``
OPTIMAL_HARDNESS_CUTOFF = 250
#: the path finders that run cotengra's exact (dynamic-programming) search
EXACT_PATH_FINDERS = frozenset({"optimal", "dp", "dynamic-programming", "optimal-outer"})
#: ``minimize: combo`` counts an entry written to an intermediate as this many multiply-adds
#: (cotengra's default weight). A step that writes much and computes little is bound by
#: memory, not arithmetic: on a 4096 -> 4096 TT-layer, rank 4, batch 256, the FLOP-optimal
#: order (data through the cores one by one: 6.7e8 FLOPs, three 4.2 M-entry intermediates)
#: runs in 47 ms, the combo order (cores contracted in pairs first: 1.07e9 FLOPs, one such
#: intermediate) in 22 ms (one CPU thread)
COMBO_WRITE_COST = 64
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "complex64": 8,
            "complex128": 16}
#: real FLOPs per counted FLOP: a complex multiply-add is 4 real multiply-adds (4 real
#: multiplies and 4 real additions), so complex plans count their FLOPs 4 times
FLOP_FACTOR = {"complex64": 4, "complex128": 4}
#: the real dtype whose arithmetic rate a complex plan's (real) FLOPs run at
REAL_DTYPE = {"complex64": "float32", "complex128": "float64"}
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


@dataclass(frozen=True)
class Step:
    """One pairwise contraction ``slots[out] = slots[left] * slots[right]``.

    Slots ``0 .. n_terms-1`` hold the leaves (after traces are taken), higher slots the
    intermediates, numbered in execution order.
    """

    left: int
    right: int
    out: int
    left_inds: tuple[str, ...]
    right_inds: tuple[str, ...]
    out_inds: tuple[str, ...]
    flops: int
    size: int


@dataclass(frozen=True)
class Plan:
    """A contraction plan of an :class:`EinsumProblem` and its costs (per batch)."""

    problem: EinsumProblem
    options: PlanOptions
    tree: Any                                   # cotengra.ContractionTree
    leaf_inds: tuple[tuple[str, ...], ...]      # each term's indices after taking traces
    steps: tuple[Step, ...]
    final_inds: tuple[str, ...]                 # indices of the last slot (before permuting)
    flops: int
    naive_flops: int
    largest_intermediate: int                   # elements, per slice
    #: the most intermediate entries alive at once (each freed after its last use), per slice,
    #: plus the running sum of a sliced run
    peak_intermediate: int
    sliced_inds: tuple[str, ...]
    n_slices: int
    #: the contraction-path search that found the tree (``optimal``, ``hyper``, ``greedy``, ...)
    path_finder: str
    search_time: float
    cache_hit: bool
    memory_limit: int                           # bytes
    itemsize: int
    param_count: int
    over_limit: tuple[str, ...] = ()            # reasons the plan exceeds its limits
    rate: float = 0.0                           # FLOP/s the time estimate assumes
    rate_source: str = ""                       # where that rate comes from
    time_budget: float | None = None            # seconds (None: no budget)
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: the port-fused path (see ``PlanOptions.run_path``) where it differs from ``steps``: its
    #: steps, final indices and FLOPs
    fused_steps: tuple[Step, ...] | None = None
    fused_final_inds: tuple[str, ...] = ()
    fused_flops: int | None = None

    @property
    def runs_fused(self) -> bool:
        """Whether the ``network`` execution runs the port-fused path instead of ``steps``."""
        if self.fused_steps is None or self.options.run_path == "min-flops":
            return False
        return self.options.run_path == "fused" or (
            self.fused_flops is not None and self.fused_flops <= FUSED_TOLERANCE * self.flops)

    def executed(self) -> Plan:
        """The plan whose steps the ``network`` execution runs: ``self``, or the same plan
        with the port-fused steps (and their FLOPs) in place of the planned ones."""
        if not self.runs_fused:
            return self
        assert self.fused_steps is not None and self.fused_flops is not None
        return dataclasses.replace(self, steps=self.fused_steps,
                                   final_inds=self.fused_final_inds, flops=self.fused_flops,
                                   fused_steps=None, fused_flops=None, fused_final_inds=())

    @property
    def executed_path(self) -> list[tuple[int, int]]:
        """The SSA contraction path of :meth:`executed` (what the ``network`` execution runs):
        pass it as ``path=`` to plan a network of the same structure with other dimensions
        the same way (e.g. after DMRG changed bond dimensions)."""
        return [(s.left, s.right) for s in self.executed().steps]

    @property
    def batch_size(self) -> int | None:
        b = self.problem.batch
        return self.problem.size_dict[b] if b is not None else None

    @property
    def speedup(self) -> float:
        """Naive over planned FLOPs; an exact integer quotient where the ratio is beyond a
        float's range (the naive FLOPs of a chain of hundreds of sites are)."""
        naive, planned = self.naive_flops, max(self.flops, 1)
        try:
            return naive / planned
        except OverflowError:
            return naive // planned

    @property
    def time_log10(self) -> float:
        """log10 of the estimated seconds of one contraction: the executed path's FLOPs over
        :attr:`rate` (a log: the FLOPs of a huge network are beyond a float's range)."""
        if self.rate <= 0:
            return math.nan
        return _log10(self.executed().flops) - math.log10(self.rate)

    @property
    def estimated_time(self) -> str:
        """The estimated time of one contraction, for people (``4.2 ms``, ``10^22.5 years``)."""
        return format_duration(self.time_log10)

    def step_equation(self, step: Step, named: bool = False) -> str:
        """``ab,bc->ac`` in letters, or in the spec's names with ``named=True``."""
        if not named:
            return equation([step.left_inds, step.right_inds], step.out_inds)
        names = self.problem.index_names
        fmt = lambda inds: "[" + ",".join(names[i] for i in inds) + "]"  # noqa: E731
        return f"{fmt(step.left_inds)},{fmt(step.right_inds)}->{fmt(step.out_inds)}"

    def slot_name(self, slot: int) -> str:
        """A leaf's graph name (``A3``, ``x[3]``) or ``#k`` for the intermediate made by step
        ``k`` (``#`` cannot start a node name, so a node called ``T1`` stays distinct)."""
        n = len(self.problem.terms)
        return self.problem.terms[slot].name if slot < n else f"#{slot - n + 1}"


_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: how many distinct indices an einsum equation in letters can name
EINSUM_LETTERS = len(_ALPHABET)


def equation(operands: Sequence[Sequence[str]], out: Sequence[str]) -> str:
    """An einsum equation in single letters (torch's alphabet) for index symbols.

    Examples
    --------
    >>> equation([("i0", "i1"), ("i1", "i2")], ("i0", "i2"))
    'ab,bc->ac'
    """
    letters: dict[str, str] = {}
    alphabet = _ALPHABET
    for i in (*(i for op in operands for i in op), *out):
        if i not in letters:
            if len(letters) == len(alphabet):
                raise CompileError("a contraction step has more than 52 distinct indices")
            letters[i] = alphabet[len(letters)]
    return ",".join("".join(letters[i] for i in op) for op in operands) + "->" + "".join(
        letters[i] for i in out)


# ---------------------------------------------------------------------------------------------
# options


def parse_memory(value: int | str) -> int:
    """Bytes from ``2GiB``, ``512MB``, ``1e9`` or an int.

    Examples
    --------
    >>> parse_memory("2GiB"), parse_memory("512 MB"), parse_memory(1000)
    (2147483648, 512000000, 1000)
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise PlanError(f"memory limit must be positive, got {value}")
        return value
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _UNITS:
        raise PlanError(f"cannot read memory limit {value!r}; write e.g. 4GiB, 512MB or 1e9")
    try:
        number = float(match.group(1))
    except ValueError:
        raise PlanError(f"cannot read memory limit {value!r}; write e.g. 4GiB, 512MB or 1e9") \
            from None
    if not math.isfinite(number):
        raise PlanError(f"cannot read memory limit {value!r}; write e.g. 4GiB, 512MB or 1e9")
    limit = int(number * _UNITS[match.group(2).lower()])
    if limit <= 0:  # also "0.5": less than one byte
        raise PlanError(f"memory limit must be positive, got {value!r}")
    return limit


_DURATION_UNITS = {"": 1, "ms": 1e-3, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hour": 3600,
                   "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
                   "y": 365.25 * 86400, "year": 365.25 * 86400, "years": 365.25 * 86400}


def parse_duration(value: float | str | None) -> float | None:
    """Seconds from ``30s``, ``2h``, ``1.5d``, a number of seconds, or None (no budget).

    Examples
    --------
    >>> parse_duration("2h"), parse_duration("90 s"), parse_duration(5), parse_duration(None)
    (7200.0, 90.0, 5.0, None)
    """
    hint = "write e.g. 30s, 2h, 1d, a number of seconds, or null for no budget"
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
        return None
    if isinstance(value, bool):
        raise PlanError(f"cannot read time budget {value!r}; {hint}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", str(value))
        if not match or match.group(2).lower() not in _DURATION_UNITS:
            raise PlanError(f"cannot read time budget {value!r}; {hint}")
        try:
            number, unit = float(match.group(1)), match.group(2).lower()
        except ValueError:
            raise PlanError(f"cannot read time budget {value!r}; {hint}") from None
    if not math.isfinite(number) or number <= 0:
        raise PlanError(f"time budget must be a positive, finite duration, got {value!r}; {hint}")
    return number * _DURATION_UNITS[unit]


def list_path_finders() -> list[str]:
    """The contraction-path searches ``plan.optimize`` / ``--optimize`` may name (``auto``,
    ``hyper`` and cotengra's presets); "optimizer" is the training strategy, not these."""
    return sorted({"auto", "hyper", *_PRESETS_PATH})


# ---------------------------------------------------------------------------------------------
# costs


def step_flops(left: Sequence[str], right: Sequence[str], out: Sequence[str],
               sizes: dict[str, int]) -> int:
    """FLOPs of one pairwise contraction (opt_einsum convention)."""
    involved = set(left) | set(right)
    summed = involved - set(out)
    return math.prod(sizes[i] for i in involved) * (2 if summed else 1)


def naive_flops(inputs: Sequence[Sequence[str]], output: Sequence[str],
                sizes: dict[str, int]) -> int:
    """FLOPs of one einsum over all terms at once (opt_einsum's ``naive_cost``)."""
    involved = set().union(*map(set, inputs)) if inputs else set()
    inner = bool(involved - set(output))
    return math.prod(sizes[i] for i in involved) * (max(len(inputs) - 1, 1) + int(inner)) \
        if len(inputs) > 1 else math.prod(sizes[i] for i in involved)


def peak_live_size(steps: Sequence[Step], n_leaves: int, sizes: dict[str, int]) -> int:
    """An upper bound of the intermediate entries alive at once when ``steps`` run in order and
    each intermediate is freed after its last use.

    At each step: the intermediates still needed, the step's result, and a copy of each operand
    (a permuted operand is copied before its matrix product); operands are freed only after
    the result is computed.

    Examples
    --------
    >>> s = lambda left, right, out, size: Step(left, right, out, ("i",), ("i",), (), 0, size)
    >>> peak_live_size([s(0, 1, 3, 10), s(3, 2, 4, 5)], 3, {"i": 10})   # T1, T2, copies
    35
    """
    last_use: dict[int, int] = {}
    for k, step in enumerate(steps):
        last_use[step.left] = last_use[step.right] = k
    live: dict[int, int] = {}
    peak = 0
    for k, step in enumerate(steps):
        copies = (math.prod(sizes[i] for i in step.left_inds)
                  + math.prod(sizes[i] for i in step.right_inds))
        live[step.out] = step.size
        peak = max(peak, sum(live.values()) + copies)
        for slot in (step.left, step.right):
            if slot >= n_leaves and last_use.get(slot) == k:
                live.pop(slot, None)
    return peak


def leaf_indices(problem: EinsumProblem) -> tuple[tuple[str, ...], ...]:
    """Each term's indices after taking its traces (an index repeated within one term and found
    nowhere else is summed away before any pairwise step)."""
    counts = Counter(i for term in problem.inputs for i in term)
    out = set(problem.output)
    leaves = []
    for term in problem.inputs:
        local = Counter(term)
        kept: list[str] = []
        for i in term:
            if i in kept:
                continue
            if local[i] == counts[i] and i not in out:
                continue  # traced (or summed) within this term alone
            kept.append(i)
        leaves.append(tuple(kept))
    return tuple(leaves)


def steps_from_path(leaves: Sequence[tuple[str, ...]], output: Sequence[str],
                    sizes: dict[str, int], ssa_path: Sequence[Sequence[int]],
                    removed: frozenset[str] = frozenset(), flop_factor: int = 1
                    ) -> tuple[tuple[Step, ...], tuple[str, ...]]:
    """Pairwise steps of an SSA path; ``removed`` indices (sliced) are dropped everywhere;
    each step's FLOPs are counted ``flop_factor`` times (4 in a complex dtype).

    An intermediate keeps the indices that appear in the output or in a tensor not yet
    contracted into it; kept indices are ordered left-operand first, then right, which lets the
    executor write the result of a matmul without a final transpose.
    """
    slots: list[tuple[str, ...]] = [tuple(i for i in leaf if i not in removed)
                                    for leaf in leaves]
    remaining = Counter(i for leaf in slots for i in set(leaf))
    out = set(output)
    steps: list[Step] = []
    alive = set(range(len(slots)))
    for pair in ssa_path:
        if len(pair) != 2:
            raise PlanError(f"internal: non-pairwise contraction {pair} in path")
        a, b = pair
        left, right = slots[a], slots[b]
        for i in set(left):
            remaining[i] -= 1
        for i in set(right):
            remaining[i] -= 1
        kept = [i for i in left if i in out or remaining[i] > 0]
        kept += [i for i in right if (i in out or remaining[i] > 0) and i not in kept]
        result = tuple(kept)
        for i in result:
            remaining[i] += 1
        slot = len(slots)
        slots.append(result)
        alive -= {a, b}
        alive.add(slot)
        steps.append(Step(a, b, slot, left, right, result,
                          flop_factor * step_flops(left, right, result, sizes),
                          math.prod(sizes[i] for i in result)))
    if len(alive) != 1:
        raise PlanError(f"internal: path leaves {len(alive)} tensors uncontracted")
    return tuple(steps), slots[alive.pop()]


@dataclass(frozen=True)
class Absorption:
    """Data-port copies folded into the one tensor each feeds, for the planner's eyes.

    ``merged[m]`` are the indices of the m-th term the planner sees; ``members[m]`` the leaves it
    stands for: ``(node,)`` or ``(node, port, ...)`` for a node with absorbed data ports.
    """

    merged: tuple[tuple[str, ...], ...]
    members: tuple[tuple[int, ...], ...]


def prefer_fused(absorption: Absorption, path: Sequence[tuple[int, int]],
                 n_leaves: int) -> list[tuple[int, int]]:
    """Rewrite ``(X x port) x node`` as ``(X x node) x port`` for tensors fed by one port.

    For such a tensor the two orders cost nearly the same (an MPS step: 4 B chi^2 + 2 B chi
    against 4 B chi^2 + 4 B chi), so searches and local re-optimisation pick either at random.
    One order everywhere keeps repeated structure repeated, which lets the executor run
    parallel chains in lockstep; the fused order is also the faster one to execute (a matmul
    then a fused multiply-add, where the other needs a broadcast outer product).
    """
    host = {group[1]: group[0] for group in absorption.members if len(group) == 2}
    path = [tuple(p) for p in path]
    position = {n_leaves + t: t for t in range(len(path))}
    for t, (a, b) in enumerate(path):
        node = a if a in host.values() else b if b in host.values() else None
        if node is None:
            continue
        first = b if node == a else a
        if first not in position:
            continue
        x, y = path[position[first]]
        port = x if host.get(x) == node else y if host.get(y) == node else None
        if port is None:
            continue
        other = y if port == x else x
        path[position[first]] = (other, node)
        path[t] = (first, port)
    return path


def _combine_pairs(kind: str, g: tuple[int, ...], h: int | tuple[int, ...]
                   ) -> list[tuple[int, int]]:
    """Steps of combining node-with-ports ``g`` with ``h`` (``-1 - t``: result of step t).

    ``fuse``: h (materialised if it has ports) x g's node, then x each of g's ports;
    ``stage``: g materialised, then x h; ``both``: both materialised, then joined;
    ``ports_first``: h (materialised) x each of g's ports, then x g's node.
    """
    pairs: list[tuple[int, int]] = []

    def materialise(group: int | tuple[int, ...]) -> int:
        if not isinstance(group, tuple):
            return group
        current = group[0]
        for port in group[1:]:
            pairs.append((current, port))
            current = -len(pairs)
        return current

    if kind == "fuse":
        current = materialise(h)
        pairs.append((current, g[0]))
        for port in g[1:]:
            pairs.append((-len(pairs), port))
    elif kind == "ports_first":
        current = materialise(h)
        for port in g[1:]:
            pairs.append((current, port))
            current = -len(pairs)
        pairs.append((current, g[0]))
    else:
        left = materialise(g)
        right = materialise(h)
        pairs.append((left, right))
    return pairs


def absorb_ports(problem: EinsumProblem, leaves: Sequence[tuple[str, ...]]) -> Absorption:
    """Fold each data-port copy whose legs all join one tensor into that tensor.

    The planner then sees, e.g., an MPS classifier as a chain of batched matrices instead of a
    chain of cores plus 64 loose ``(batch, 2)`` vectors tied by the batch hyperedge, which
    misleads greedy searches and slows hyper-searches. :func:`expand_path` turns the plan back
    into steps over the real leaves, fusing each port into the step that first touches its
    tensor.
    """
    batch = problem.batch
    identity = Absorption(tuple(tuple(t) for t in leaves), tuple((k,) for k in range(len(leaves))))
    if batch is None:
        return identity
    holders: dict[str, list[int]] = {}
    for k, leaf in enumerate(leaves):
        for i in leaf:
            holders.setdefault(i, []).append(k)
    out = set(problem.output)
    host: dict[int, int] = {}
    for k, term in enumerate(problem.terms):
        legs = [i for i in leaves[k] if i != batch]
        if term.kind != "input" or not legs or any(i in out for i in legs):
            continue
        owners = {j for i in legs for j in holders[i] if j != k}
        if len(owners) == 1:
            (j,) = owners
            if problem.terms[j].kind == "tensor" and batch not in leaves[j]:
                host[k] = j
    if not host:
        return identity
    merged: list[tuple[str, ...]] = []
    members: list[tuple[int, ...]] = []
    for j, leaf in enumerate(leaves):
        if j in host:
            continue
        ports = tuple(k for k, h in host.items() if h == j)
        if not ports:
            merged.append(tuple(leaf))
            members.append((j,))
            continue
        gone = {i for k in ports for i in leaves[k] if i != batch}
        merged.append(tuple(i for i in leaf if i not in gone) + (batch,))
        members.append((j, *ports))
    return Absorption(tuple(merged), tuple(members))


def expand_path(absorption: Absorption, merged_path: Sequence[Sequence[int]],
                leaves: Sequence[tuple[str, ...]], output: Sequence[str],
                sizes: dict[str, int]) -> list[tuple[int, int]]:
    """An SSA path over the real leaves from one over ``absorption.merged``.

    A tensor with absorbed ports is either *materialised* (tensor x ports first) or *fused*
    (the other operand x tensor, then x each port): whichever of the two costs fewer FLOPs.
    Fusing is what turns an MPS step into ``v A0 + x (v A1)``. Where contracting the other
    operand with the ports first costs :data:`PORTS_FIRST_MARGIN` times less, counting the
    entries written as well, that order is taken instead (an MPS classifier's label core).
    """
    n = len(leaves)
    inds: dict[int, tuple[str, ...]] = dict(enumerate(tuple(t) for t in leaves))
    subtree: dict[int, frozenset[int]] = {k: frozenset([k]) for k in range(n)}
    holders: dict[str, set[int]] = {}
    for k, leaf in enumerate(leaves):
        for i in leaf:
            holders.setdefault(i, set()).add(k)
    out = set(output)
    path: list[tuple[int, int]] = []

    def result(a: int, b: int) -> tuple[frozenset[int], tuple[str, ...]]:
        members = subtree[a] | subtree[b]
        kept = [i for i in dict.fromkeys(inds[a] + inds[b])
                if i in out or holders[i] - members]
        return members, tuple(kept)

    def emit(a: int, b: int) -> int:
        members, kept = result(a, b)
        new = n + len(path)
        path.append((a, b))
        inds[new], subtree[new] = kept, members
        return new

    def cost(pairs: Sequence[tuple[int, int]], written: bool = False) -> int:
        """FLOPs of a chain of steps (``-1 - t`` names the result of step ``t``); with
        ``written``, plus :data:`COMBO_WRITE_COST` per entry of the steps' results."""
        local_inds: dict[int, tuple[str, ...]] = {}
        local_sub: dict[int, frozenset[int]] = {}
        total = 0
        for t, (a, b) in enumerate(pairs):
            ia = local_inds[a] if a < 0 else inds[a]
            ib = local_inds[b] if b < 0 else inds[b]
            members = (local_sub[a] if a < 0 else subtree[a]) | (
                local_sub[b] if b < 0 else subtree[b])
            kept = tuple(i for i in dict.fromkeys(ia + ib) if i in out or holders[i] - members)
            total += step_flops(ia, ib, kept, sizes)
            if written:
                total += COMBO_WRITE_COST * math.prod(sizes[i] for i in kept)
            local_inds[-1 - t], local_sub[-1 - t] = kept, members
        return total

    def materialise(group: tuple[int, ...]) -> int:
        current = group[0]
        for port in group[1:]:
            current = emit(current, port)
        return current

    state: dict[int, int | tuple[int, ...]] = {}
    for m, group in enumerate(absorption.members):
        state[m] = group[0] if len(group) == 1 else group
    next_merged = len(absorption.members)
    for a, b in merged_path:
        sa, sb = state.pop(a), state.pop(b)
        if isinstance(sa, tuple) or isinstance(sb, tuple):
            both = isinstance(sa, tuple) and isinstance(sb, tuple)
            if both:
                options = [("fuse", sb, sa), ("fuse", sa, sb), ("both", sa, sb)]
            else:
                group, other = (sa, sb) if isinstance(sa, tuple) else (sb, sa)
                options = [("fuse", group, other), ("stage", group, other)]
            pairs = min((_combine_pairs(*o) for o in options), key=cost)
            if not both:
                # the ports first where fusing writes much more: a core with a wide free leg
                # (an MPS classifier's label core) would be written whole per example
                ports_first = _combine_pairs("ports_first", group, other)
                if cost(ports_first, written=True) * PORTS_FIRST_MARGIN < cost(pairs,
                                                                            written=True):
                    pairs = ports_first
            results: list[int] = []          # the step list costed above, emitted for real
            for x, y in pairs:
                results.append(emit(results[-1 - x] if x < 0 else x,
                                    results[-1 - y] if y < 0 else y))
            r = results[-1]
        else:
            r = emit(sa, sb)
        state[next_merged] = r
        next_merged += 1
    if len(state) == 1:
        (last,) = state.values()
        if isinstance(last, tuple):
            materialise(last)
    return path


# ---------------------------------------------------------------------------------------------
# cache


def default_cache_dir() -> Path:
    """``$TNGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/tngraph/plans`` (``~/.cache/...``)."""
    env = os.environ.get("TNGRAPH_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tngraph" / "plans"


def cache_key(leaves: Sequence[tuple[str, ...]], output: Sequence[str], sizes: dict[str, int],
              options: PlanOptions, target_size: int | None) -> str:
    """Hash of everything that determines a search's result."""
    payload = {
        "version": CACHE_VERSION,
        "cotengra": getattr(ctg, "__version__", "?"),
        "inputs": [list(t) for t in leaves],
        "output": list(output),
        "sizes": sorted(sizes.items()),
        "optimize": options.optimize,
        "minimize": options.minimize,
        "max_repeats": options.max_repeats,
        "max_time": options.max_time,
        "seed": options.seed,
        "target_size": target_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _cache_read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION:
            return None
        return data
    except (OSError, ValueError):
        return None  # absent or corrupt: search again


def _cached_entry(cached: dict[str, Any], leaves: Sequence[tuple[str, ...]],
                  output: tuple[str, ...], sizes: dict[str, int]) -> tuple[Any, ...] | None:
    """A cache entry checked against this network: ``(path, fused path, tree, sliced indices,
    search time, path finder)``, or ``None`` when it does not fit (of another shape, damaged
    by hand, a path of another network): then the plan is searched again and the entry
    rewritten.

    Examples
    --------
    >>> _cached_entry({"ssa_path": "no"}, [("a",), ("a",)], (), {"a": 2}) is None
    True
    """
    def path_of(value: Any) -> list[tuple[int, int]] | None:
        if not isinstance(value, list) or len(value) != max(len(leaves) - 1, 0):
            return None
        pairs = [tuple(p) for p in value if isinstance(p, list) and len(p) == 2
                 and all(type(i) is int and i >= 0 for i in p)]
        return pairs if len(pairs) == len(value) else None

    full_path = path_of(cached.get("ssa_path"))
    fused = cached.get("fused_path")
    fused_path = None if fused is None else path_of(fused)
    sliced = cached.get("sliced_inds", [])
    search_time = cached.get("search_time", 0.0)
    finder = cached.get("path_finder")
    if (full_path is None or (fused is not None and fused_path is None)
            or not isinstance(sliced, list) or not all(i in sizes for i in sliced)
            or isinstance(search_time, bool) or not isinstance(search_time, (int, float))
            or not isinstance(finder, str)):
        return None
    try:
        tree = _tree_from_path(leaves, output, sizes, full_path)
    except Exception:  # noqa: BLE001 - a path of another network: search again
        return None
    return full_path, fused_path or None, tree, tuple(sliced), float(search_time), finder


def _cache_write(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(data).encode())
    except (OSError, WriteError):
        pass  # a read-only cache must not break planning


# ---------------------------------------------------------------------------------------------
# search


def _resolve_path_finder(options: PlanOptions, leaves: Sequence[tuple[str, ...]]) -> str:
    name = options.optimize
    if name not in list_path_finders():
        raise PlanError(f"unknown path finder '{name}' (plan.optimize); "
                        f"{did_you_mean(name, list_path_finders())}")
    if name == "auto":
        easy = len(leaves) <= 2 or estimate_optimal_hardness(leaves) < OPTIMAL_HARDNESS_CUTOFF
        return "optimal" if easy else "hyper"
    return name


def chain_sweep_path(leaves: Sequence[tuple[str, ...]], output: Sequence[str],
                     batch: str | None) -> list[tuple[int, int]] | None:
    """The sweep of a chain: the SSA path that contracts a path graph of tensors from both ends
    towards the one tensor holding output legs (besides the batch), or None when ``leaves`` is
    not such a chain.

    A chain here: every index except ``batch`` joins at most two tensors, the tensors joined by
    them form one path of three or more, and exactly one tensor holds output legs other than
    ``batch``. An MPS classifier, its data ports folded into their cores
    (:func:`absorb_ports`), is one. The sweep is its natural order, each step a batched
    vector-matrix product; what runs costs what the exact search's plan does. A hyper-search
    of a long chain finds it slowly or not at all: at 784 sites it took 38 s to reach the
    sweep's cost, and found 5.5x more FLOPs within 5 s.

    Examples
    --------
    >>> chain_sweep_path([("b", "x"), ("b", "x", "y", "o"), ("b", "y")], ("b", "o"), "b")
    [(2, 1), (0, 3)]
    """
    n = len(leaves)
    if n < 3:
        return None
    holders: dict[str, list[int]] = {}
    for k, leaf in enumerate(leaves):
        for i in set(leaf):
            if i != batch:
                holders.setdefault(i, []).append(k)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for ks in holders.values():
        if len(ks) > 2:
            return None                                   # a hyperedge: not a chain
        if len(ks) == 2:
            a, b = ks
            neighbours[a].add(b)
            neighbours[b].add(a)
    if any(len(nb) > 2 or not nb for nb in neighbours):
        return None
    ends = [k for k in range(n) if len(neighbours[k]) == 1]
    if len(ends) != 2:
        return None                                       # a ring, or not connected
    order, previous = [ends[0]], None
    while len(order) < n:
        following = [k for k in neighbours[order[-1]] if k != previous]
        if len(following) != 1:
            return None
        previous = order[-1]
        order.append(following[0])
    kept = set(output) - {batch}
    centres = [position for position, k in enumerate(order) if kept & set(leaves[k])]
    if len(centres) != 1:
        return None
    centre = centres[0]
    path: list[tuple[int, int]] = []
    next_id = n

    def sweep(sites: Sequence[int]) -> int | None:
        nonlocal next_id
        if not sites:
            return None
        env = sites[0]
        for k in sites[1:]:
            path.append((env, k))
            env, next_id = next_id, next_id + 1
        return env

    left = sweep(order[:centre])
    right = sweep(order[centre + 1:][::-1])
    env = order[centre]
    # the side after the centre joins it first: for a core declared (l, p, r, o), the data port
    # and that side's bond are then neighbours in the core's layout (p, r), so the core is read
    # as stored, without copying the other operand into its order
    for side in (right, left):
        if side is not None:
            path.append((side, env))
            env, next_id = next_id, next_id + 1
    return path


@contextlib.contextmanager
def _progress(label: str, total: int, poll: Any) -> Iterator[None]:
    """A rich progress bar on stderr while the body runs, if stderr is a terminal."""
    if not sys.stderr.isatty() or os.environ.get("TNGRAPH_NO_PROGRESS"):
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    stop = threading.Event()
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} trials"),
                        TextColumn("{task.fields[best]}"), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)

    def update() -> None:
        task = None
        start = time.perf_counter()
        while not stop.wait(0.1):
            if task is None and time.perf_counter() - start > 0.5:  # only if it takes a while
                progress.start()
                task = progress.add_task(label, total=total, best="")
            if task is not None:
                done, best = poll()
                progress.update(task, completed=done, best=best)
        if task is not None:
            progress.stop()

    thread = threading.Thread(target=update, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _search(leaves: Sequence[tuple[str, ...]], output: tuple[str, ...], sizes: dict[str, int],
            method: str, options: PlanOptions) -> Any:
    leaves = [tuple(t) for t in leaves]
    if method in EXACT_PATH_FINDERS:
        # cotengra's presets of the exact search minimise FLOPs alone: ask it for the plan's
        # objective (what the preset names stand for, with ``minimize``)
        exact = OptimalOptimizer(minimize=_cotengra_objective(options.minimize),
                                 search_outer=method == "optimal-outer")
        return ctg.array_contract_tree(leaves, output, sizes, optimize=exact,
                                       canonicalize=False)
    if method != "hyper":
        # canonicalize=False: keep our index names in the tree (slicing reports them)
        return ctg.array_contract_tree(leaves, output, sizes, optimize=method,
                                       canonicalize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the seed reaches cotengra's sampler (its own generator; seeding ``random`` and NumPy
        # below covers the trial functions): without it the same spec planned differently in
        # about one process in five
        opt = ctg.HyperOptimizer(
            minimize=_cotengra_objective(options.minimize), max_repeats=options.max_repeats,
            max_time=options.max_time, parallel=False, progbar=False,
            on_trial_error="ignore",
            optlib_opts=None if options.seed is None else {"seed": options.seed},
        )

        def poll() -> tuple[int, str]:
            scores = list(getattr(opt, "costs_flops", []) or [])
            best = f"best 10^{math.log10(max(min(scores), 1)):.2f}" if scores else ""
            return len(scores), best

        with _progress("planning", options.max_repeats, poll):
            if options.seed is not None:
                import random

                import numpy as np

                state = random.getstate(), np.random.get_state()
                random.seed(options.seed)
                np.random.seed(options.seed)
                try:
                    return opt.search(leaves, output, sizes)
                finally:
                    random.setstate(state[0])
                    np.random.set_state(state[1])
            return opt.search(leaves, output, sizes)


def make_plan(problem: EinsumProblem, options: PlanOptions | None = None, *,
              cache_dir: str | Path | None = None, param_count: int | None = None,
              path: Sequence[Sequence[int]] | None = None) -> Plan:
    """Find (or read from the cache) a contraction plan for ``problem``.

    Parameters
    ----------
    problem
        From :func:`tngraph.graph.einsum_problem` (its batch index has the plan's batch size).
    options
        Search options (the spec's ``plan:`` block, overridden by the CLI).
    cache_dir
        Where plans are cached (default :func:`default_cache_dir`); ignored when
        ``options.cache`` is false.
    param_count
        Number of parameters, checked against the memory limit.
    path
        A contraction path (SSA, over the real leaves) to use instead of searching: the path of
        a network of the same structure whose dimensions changed (``plan.tree.get_ssa_path()``),
        e.g. after DMRG adapted the bond dimensions. Sliced again if needed; not cached.

    Returns
    -------
    Plan
        With ``over_limit`` listing why it exceeds the memory limit (empty when it fits).
    """
    reuse = path
    fused_path: list[tuple[int, ...]] | None = None
    options = options or PlanOptions()
    itemsize = ITEMSIZE[options.dtype]
    limit = parse_memory(options.memory_limit)
    leaves = leaf_indices(problem)
    output = problem.output
    sizes = problem.size_dict
    params = param_count if param_count is not None else sum(
        math.prod(t.shape) for t in problem.terms if t.kind == "tensor")

    absorption = absorb_ports(problem, leaves)
    merged = absorption.merged
    method = _resolve_path_finder(options, merged)
    target = limit // itemsize
    # keyed by the real leaves and which of them are data: the merged view alone can be the
    # same for different networks
    kinds = "".join("d" if t.kind == "input" else "t" for t in problem.terms)
    key = cache_key([(kinds,), *leaves], output, sizes, options, target)
    path = Path(cache_dir or default_cache_dir()) / f"{key}.json"
    cached = _cache_read(path) if options.cache else None

    notes: list[str] = []
    if reuse is not None and len(reuse) != max(len(leaves) - 1, 0):
        reuse = None     # not a path of this network's structure: search as usual
    if reuse is not None:
        start = time.perf_counter()
        full_path = [tuple(p) for p in reuse]
        tree = _tree_from_path(leaves, output, sizes, full_path) if full_path else None
        sliced = ()
        sliced = _fit_memory(tree, leaves, output, sizes, full_path, target)
        search_time = time.perf_counter() - start
        method = "reused"
        cache_hit = False
        notes.append("contraction path reused from a network of the same structure")
    elif cached is not None and (entry := _cached_entry(cached, leaves, output, sizes)):
        start = time.perf_counter()
        full_path, fused_path, tree, sliced, search_time, method = entry
        cache_hit = True
        replan_time = time.perf_counter() - start
        notes.append(f"plan read from cache in {replan_time * 1e3:.1f} ms")
    else:
        start = time.perf_counter()
        # a chain too large for the exact search (an MPS classifier, ports folded in) is swept
        # from both ends: its natural order, which a hyper-search of a long chain finds slowly
        # or not at all
        sweep = (chain_sweep_path(merged, output, problem.batch)
                 if options.optimize == "auto" and method == "hyper" else None)
        if sweep is not None:
            method = "chain-sweep"
            ssa_path: list[tuple[int, ...]] = list(sweep)
        else:
            found = (_search(merged, output, sizes, method, options) if len(merged) > 1
                     else None)
            ssa_path = [tuple(p) for p in found.get_ssa_path()] if found is not None else []
        # the tree over the real leaves (data ports fused back in) is what runs and is sliced;
        # a local re-optimisation of small subtrees recovers what the merged view cannot
        # express (e.g. contracting the first few cores of a chain before any data)
        full_path = expand_path(absorption, ssa_path, leaves, output, sizes)
        tree = _tree_from_path(leaves, output, sizes, full_path)
        if tree is not None and absorption.merged != tuple(tuple(t) for t in leaves):
            fused_path = list(full_path)
            tree = _refine(tree, options)
            full_path = prefer_fused(absorption, [tuple(p) for p in tree.get_ssa_path()],
                                     len(leaves))
            tree = _tree_from_path(leaves, output, sizes, full_path)
            if fused_path == full_path:
                fused_path = None
        sliced = ()
        search_time = time.perf_counter() - start
        cache_hit = False
        sliced = _fit_memory(tree, leaves, output, sizes, full_path, target)
        if options.cache:
            _cache_write(path, {"version": CACHE_VERSION, "ssa_path": full_path,
                                "fused_path": fused_path,
                                "sliced_inds": list(sliced), "search_time": search_time,
                                "path_finder": method})

    removed = frozenset(sliced)
    factor = FLOP_FACTOR.get(options.dtype, 1)
    steps, final = steps_from_path(leaves, output, sizes, full_path, removed, factor)
    n_slices = math.prod(sizes[i] for i in sliced)
    # traces taken within single tensors before any pairwise step: one pass over each
    trace_flops = factor * sum(math.prod(sizes[i] for i in set(raw))
                               for raw, leaf in zip(problem.inputs, leaves)
                               if tuple(raw) != leaf)
    flops = (sum(s.flops for s in steps) + trace_flops) * n_slices
    fused: dict[str, Any] = {}
    if fused_path is not None and not sliced:
        fused_steps, fused_final = steps_from_path(leaves, output, sizes, fused_path,
                                                   flop_factor=factor)
        if max(s.size for s in fused_steps) > target \
                or peak_live_size(fused_steps, len(leaves), sizes) > target:
            fused_path = None                # the fused path does not fit the memory limit
    if fused_path is not None and not sliced:
        fused = {"fused_steps": fused_steps, "fused_final_inds": fused_final,
                 "fused_flops": sum(s.flops for s in fused_steps) + trace_flops}
        if fused["fused_flops"] <= flops:      # not worse: it is simply the better path
            steps, final, flops = fused_steps, fused_final, fused["fused_flops"]
            tree = _tree_from_path(leaves, output, sizes, fused_path)
            fused = {}
    if sliced:
        flops += factor * math.prod(sizes[i] for i in output) * (n_slices - 1)  # the slices' sum
    sizes_seen = [math.prod(sizes[i] for i in leaf if i not in removed) for leaf in leaves]
    largest = max([s.size for s in steps] + sizes_seen + [1])
    # a sliced run also holds the running sum of the slices
    peak = peak_live_size(steps, len(leaves), sizes) + (
        math.prod(sizes[i] for i in output) if sliced else 0)
    over: list[str] = []
    if params * itemsize > limit:
        over.append(f"parameters need {format_bytes(params * itemsize)} ({params:,} entries), "
                    f"over the memory limit of {format_bytes(limit)}")
    if largest * itemsize > limit:
        over.append(f"largest intermediate needs {format_bytes(largest * itemsize)} "
                    f"({largest:,} entries), over the memory limit of {format_bytes(limit)}"
                    + ("" if sliced else "; slicing cannot reduce it"))
    elif peak * itemsize > limit:
        over.append(f"intermediates alive at once need {format_bytes(peak * itemsize)} at the "
                    f"peak ({peak:,} entries), over the memory limit of {format_bytes(limit)}"
                    + ("" if sliced else "; slicing cannot reduce it"))
    if sliced:
        names = ", ".join(problem.index_names[i] for i in sliced)
        notes.append(f"sliced over {names} into {n_slices:,} slices to fit the memory limit")
    budget = parse_duration(options.time_budget)
    rate = flops_per_second(REAL_DTYPE.get(options.dtype, options.dtype),
                            Path(cache_dir or default_cache_dir()) if options.cache else None)
    made = Plan(problem=problem, options=options, tree=tree, leaf_inds=leaves, steps=steps,
                final_inds=final, flops=flops,
                naive_flops=factor * naive_flops(problem.inputs, output, sizes),
                largest_intermediate=largest, peak_intermediate=peak,
                sliced_inds=tuple(sliced), n_slices=n_slices,
                path_finder=method, search_time=search_time, cache_hit=cache_hit,
                memory_limit=limit, itemsize=itemsize, param_count=params,
                over_limit=tuple(over), notes=tuple(notes), rate=rate.value,
                rate_source=rate.source, time_budget=budget, **fused)
    if budget is None or made.time_log10 <= math.log10(budget):
        return made
    reason = (f"one contraction needs about {made.estimated_time} "
              f"({_log_text(made.executed().flops)} FLOPs at {rate.value / 1e9:.3g} GFLOP/s, "
              f"{rate.source}), over the time budget of {format_duration(math.log10(budget))} "
              "(plan.time_budget)")
    return dataclasses.replace(made, over_limit=(*over, reason))


def _log10(n: int) -> float:
    """log10 of a non-negative integer of any size (-inf for 0)."""
    return math.log10(n) if n > 0 else -math.inf      # exact for ints beyond a float's range


def _log_text(n: int) -> str:
    """``3.2e+12`` or ``10^400.3`` for a count of any size."""
    log = _log10(n)
    return f"{n:.3g}" if log < 300 else f"10^{log:.1f}"


def _tree_from_path(leaves: Sequence[tuple[str, ...]], output: tuple[str, ...],
                    sizes: dict[str, int], ssa_path: list[tuple[int, ...]]) -> Any:
    if len(leaves) <= 1:
        return None
    return ctg.ContractionTree.from_path([tuple(t) for t in leaves], output, sizes,
                                         ssa_path=ssa_path)


def _refine(tree: Any, options: PlanOptions) -> Any:
    """Subtree reconfiguration (cotengra): exact re-ordering of every subtree of 8 leaves,
    kept only where it lowers the plan's objective (``minimize``)."""
    objective = _cotengra_objective(options.minimize)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            better = tree.subtree_reconfigure(subtree_size=8, minimize=objective)
    except Exception:  # noqa: BLE001 - refinement is an optimisation only
        return tree
    return better if tree_cost(better, options.minimize) <= tree_cost(tree, options.minimize) \
        else tree


def _cotengra_objective(minimize: str) -> str:
    """cotengra's name of the objective ``minimize``: ``combo`` with tngraph's write weight."""
    return f"combo-{COMBO_WRITE_COST}" if minimize == "combo" else minimize


def tree_cost(tree: Any, minimize: str) -> float:
    """The cost ``minimize`` gives a contraction tree: its multiply-adds (cotengra's count,
    half the plan's FLOPs), its largest intermediate, the entries it writes, or (``combo``)
    multiply-adds plus :data:`COMBO_WRITE_COST` per entry written.

    Examples
    --------
    >>> import cotengra as ctg
    >>> tree = ctg.ContractionTree.from_path([("a", "b"), ("b", "c")], ("a", "c"),
    ...                                      {"a": 2, "b": 3, "c": 4}, path=[(0, 1)])
    >>> tree_cost(tree, "flops"), tree_cost(tree, "write"), tree_cost(tree, "combo")
    (24.0, 8.0, 536.0)
    """
    if minimize == "flops":
        return float(tree.total_flops())
    if minimize == "size":
        return float(tree.max_size())
    if minimize == "write":
        return float(tree.total_write())
    return float(tree.combo_cost(factor=COMBO_WRITE_COST))


def _fit_memory(tree: Any, leaves: Sequence[tuple[str, ...]], output: tuple[str, ...],
                sizes: dict[str, int], ssa_path: Sequence[Sequence[int]], target: int
                ) -> tuple[str, ...]:
    """Indices to slice so that every intermediate, and the intermediates alive at once,
    fit ``target`` elements: ``()`` when nothing needs slicing or slicing cannot make it fit.

    cotengra slices for the largest intermediate; the slice target is halved until the peak
    of the live set (:func:`peak_live_size`, plus the running sum of the slices) fits too."""
    if tree is None:
        return ()
    total = math.prod(sizes[i] for i in output)

    def peak(removed: Sequence[str]) -> int:
        steps, _ = steps_from_path(leaves, output, sizes, ssa_path, frozenset(removed))
        return peak_live_size(steps, len(leaves), sizes) + (total if removed else 0)

    if tree.max_size() <= target and peak(()) <= target:
        return ()
    size = target
    while size >= 1:
        sliced = _find_slices(tree, size, output)
        if sliced and peak(sliced) <= target:
            return sliced
        size //= 2
    return ()


def _find_slices(tree: Any, target: int, output: Sequence[str]) -> tuple[str, ...]:
    """Indices to slice so that every intermediate fits ``target`` elements, or ``()``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sliced_tree = tree.slice(target_size=target, allow_outer=False, seed=0)
    except Exception:  # noqa: BLE001 - cotengra cannot slice this one: report over limit
        return ()
    sliced = tuple(i for i in sliced_tree.sliced_inds if i not in output)
    if not sliced or sliced_tree.max_size() > target:
        return ()
    return sliced


def format_bytes(n: int) -> str:
    """``1.5 GiB`` style size.

    Examples
    --------
    >>> format_bytes(3 * 2**20), format_bytes(10**40), format_bytes(10**400)
    ('3.0 MiB', '9.09e+27 TiB', '10^387.96 TiB')
    """
    if n >= 2**40 * 10**6:                      # beyond a million TiB: a power of ten
        log = _log10(n) - 40 * math.log10(2)
        return f"{10 ** log:.3g} TiB" if log < 300 else f"10^{log:.2f} TiB"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def check_plan_options(spec: Spec) -> list[Problem]:
    """Problems of the spec's ``plan:`` block that the schema cannot see (path finder names,
    memory sizes), located in the spec file."""
    doc = spec.source
    problems = []

    def at(key: str) -> Any:
        return doc.locate(("plan", key)) if doc is not None else None

    if spec.plan.optimize not in list_path_finders():
        problems.append(Problem(f"unknown path finder '{spec.plan.optimize}'", at("optimize"),
                                did_you_mean(spec.plan.optimize, list_path_finders())))
    try:
        parse_memory(spec.plan.memory_limit)
    except PlanError as exc:
        problems.append(Problem(str(exc), at("memory_limit")))
    try:
        parse_duration(spec.plan.time_budget)
    except PlanError as exc:
        problems.append(Problem(str(exc), at("time_budget")))
    return problems


def plan_spec(spec: Spec, *, cache_dir: str | Path | None = None,
              path: Sequence[Sequence[int]] | None = None, **plan_options: Any) -> Plan:
    """Plan ``spec`` with its ``plan:`` block updated by ``plan_options`` (None values ignored);
    ``path`` reuses a known contraction path (see :func:`make_plan`)."""
    problems = check_plan_options(spec)
    if problems:
        raise SpecError(problems)
    try:
        options = spec.plan.updated(plan_options)
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PlanError(f"invalid plan option: {bad}") from None
    problem = einsum_problem(spec, options.batch_size)
    return make_plan(problem, options, cache_dir=cache_dir, param_count=parameter_count(spec),
                     path=path)
