"""Code generation: a program's groups written out as straight-line Python source.

:func:`group_ops` decides once per group what the generated code does (:class:`LoneOp` for a
kernel that runs alone, :class:`StackedOp` for a stacked group, whose operands come from a
:class:`Reused`, :class:`Fetched` or :class:`StackedHere` source); :func:`chain_runs` finds the
runs that execute as one :class:`~tngraph.executor.chain._ChainRun`; :func:`generate_source`
writes the ``contract`` function, and for the inference variant the workspace it writes into
(:class:`WsEmpty`, :class:`WsView`, :class:`WsUnbind` entries).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.executor.chain import ChainStep
from tngraph.executor.kernels import (
    Kernel,
    Operand,
    _kernel_function,
    _logical,
    _mm_materialise,
    _role_slot,
    _small_weighted,
)
from tngraph.executor.pool import POOL_MIN_BYTES
from tngraph.executor.schedule import Group, LeafSource


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
                 shapes: dict[str, tuple[int, ...]] | None = None,
                 variant: str = "plain") -> str:
    """Source of one kernel that runs alone: what :func:`run_kernel` does, written out (the
    generic call costs microseconds of Python per step, as much as a small matmul).
    ``shapes``: the known shapes of operand expressions (see :func:`_operand_source`);
    ``variant``: which program the line is for, which matters to a 'bcast' kernel: ``plain``
    (recorded torch ops only: the operand copied for one ``mm``), ``fused`` (the training
    program: :class:`~tngraph.executor.kernels._BroadcastMatmul`) or ``inference`` (one
    batched matmul with the other operand broadcast). In the training program an ``mm`` step
    whose result may be large runs, under autograd, as
    :class:`~tngraph.executor.kernels._PooledMatmul`, and both Functions take the program's
    buffer pool (``pool``) for their large results."""
    if kernel.mode == "select":
        return f"run_kernel({const(kernel, 'K')}, {left}, {right})"
    x, y = (right, left) if kernel.swap else (left, right)
    known = shapes or {}
    out = kernel.out_shape
    if kernel.mode == "mm":
        pooled = variant == "fused" and math.prod(out) * 8 >= POOL_MIN_BYTES
        # (_PooledMatmul's backward writes both gradients row-major itself: no copies needed)
        materialise = (False, False) if pooled else _mm_materialise(kernel)
        a, b = (_operand_source(expr, op, True, known.get(expr)) + (".contiguous()" if flag
                                                                     else "")
                for expr, op, flag in zip((x, y), (kernel.a, kernel.b), materialise))
        if pooled:
            return f"_pooled_mm({a}, {b}, pool).reshape({out})"
        return f"torch.mm({a}, {b}).reshape({out})"
    if kernel.mode == "bcast":      # (b is broadcast: read as a matrix)
        a = _operand_source(x, kernel.a, shape=known.get(x))
        b = _operand_source(y, kernel.b, True, known.get(y))
        n, m, k = _logical(kernel.a)
        if variant == "plain":
            flat = f"torch.mm({a}.reshape({(n * m, k)}), {b})"
            if kernel.flip:
                return f"{flat}.reshape({(n, m, -1)}).transpose(1, 2).reshape({out})"
            return f"{flat}.reshape({out})"
        if variant == "fused":
            flip = ", True" if kernel.flip else ""
            return f"_BroadcastMatmul.apply({a}, {b}, pool{flip}).reshape({out})"
        return f"torch.bmm(*_broadcast_operands({a}, {b}, {kernel.flip})).reshape({out})"
    a, b = (_operand_source(x, kernel.a, shape=known.get(x)),
            _operand_source(y, kernel.b, shape=known.get(y)))
    if kernel.mode == "bmm":
        return f"torch.bmm({a}, {b}).reshape({out})"
    if kernel.mode == "outer":
        return f"({a} * {b}).reshape({out})"
    return f"{const(_kernel_function(kernel), 'F')}({a}, {b}).reshape({out})"


# -- what each group does -------------------------------------------------------------------
@dataclass(frozen=True)
class Reused:
    """A stacked operand that is a view of group ``group``'s stacked result: viewed as
    ``size`` (``(n * batch, x, y)``), then transposed where ``transposed`` (a view and a
    transpose: unlike ``as_strided``, cheap in the backward pass)."""

    group: int
    size: tuple[int, int, int]
    transposed: bool


@dataclass(frozen=True)
class Fetched:
    """A stacked operand gathered for all groups at once before the program runs: the
    generated code reads it as ``fetched[key]``, ``key`` being ``(group, role)``."""

    key: tuple[int, str]


@dataclass(frozen=True)
class StackedHere:
    """A stacked operand stacked where its group runs: per member, the slot that plays the
    role and its operand view."""

    members: tuple[tuple[int, Operand], ...]


#: where the operands of a stacked group come from
OperandSource = Reused | Fetched | StackedHere


@dataclass(frozen=True)
class LoneOp:
    """A group of one kernel, written out as a lone step."""

    kernel: Kernel


@dataclass(frozen=True)
class StackedOp:
    """A group of equal kernels run as one stacked kernel ``kernel_fn(a, b)``.

    ``keep_stacked``: a later group reuses the stacked result; ``need_parts``: some consumer
    needs the members' results one by one.
    """

    kernels: tuple[Kernel, ...]
    a: OperandSource
    b: OperandSource
    kernel_fn: Any
    keep_stacked: bool
    need_parts: bool


#: what the generated code does for one group
GroupOp = LoneOp | StackedOp


# -- workspace entries (inference variant) ----------------------------------------------------
@dataclass(frozen=True)
class WsEmpty:
    """A workspace tensor of ``shape`` that receives group ``group``'s result."""

    shape: tuple[int, ...]
    group: int


@dataclass(frozen=True)
class WsView:
    """Workspace entry ``base`` viewed as ``size`` (and transposed where ``transposed``)."""

    base: int
    size: tuple[int, ...]
    transposed: bool


@dataclass(frozen=True)
class WsUnbind:
    """Workspace entry ``base`` viewed as ``size`` and split along ``dim`` (a tuple)."""

    base: int
    size: tuple[int, ...]
    dim: int


#: one entry of a workspace: ``ws[i]`` in the generated code
WsSpec = WsEmpty | WsView | WsUnbind


@dataclass(frozen=True)
class GeneratedSource:
    """The source of one ``contract`` function and what it needs.

    ``constants``: the values its names are bound to; ``ws_specs``: how to build the
    workspace it refers to as ``ws[i]`` (empty unless generated for the workspace);
    ``inlined``: the groups whose split weights it reads from the gathered columns directly;
    ``stacked_cores``: per parameter gather whose stacked operand a chain run reads whole (as
    ``fetched[("stacked", number)]``), the positions of the operands it reads there.
    """

    text: str
    constants: dict[str, Any]
    ws_specs: tuple[WsSpec, ...]
    inlined: frozenset[int]
    stacked_cores: Mapping[int, frozenset[int]] = dataclasses.field(default_factory=dict)


def group_ops(groups: Sequence[Group], split_weights: set[int]) -> list[GroupOp]:
    """Per group what to do, decided once: a :class:`LoneOp` for a lone kernel, else a
    :class:`StackedOp` (groups in ``split_weights`` get their 'b' weights split, and run as
    :func:`~tngraph.executor.kernels._small_weighted`)."""
    ops: list[GroupOp] = []
    for g, group in enumerate(groups):
        kernels = group.kernels
        if len(kernels) == 1:
            ops.append(LoneOp(kernels[0]))
            continue
        first = kernels[0]
        sources: list[OperandSource] = []
        for role, reuse, fetch in (("a", group.reuse_a, group.prefetch_a),
                                   ("b", group.reuse_b, group.prefetch_b)):
            op = getattr(first, role)
            if reuse is not None:
                size = (len(kernels) * op.shape3[0], op.shape3[1], op.shape3[2])
                sources.append(Reused(reuse, size, op.transposed))
            elif fetch:
                sources.append(Fetched((g, role)))
            else:
                sources.append(StackedHere(tuple((_role_slot(k, role), getattr(k, role))
                                                 for k in kernels)))
        kernel_fn = _kernel_function(first)
        if g in split_weights:
            kernel_fn = functools.partial(_small_weighted, skip_first=first.ones_b)
        ops.append(StackedOp(tuple(kernels), sources[0], sources[1], kernel_fn,
                             group.keep_stacked, group.need_parts))
    return ops


def _is_split_small(op: StackedOp) -> bool:
    """Whether ``op`` runs a 'small' kernel on weights handed over split."""
    return isinstance(op.kernel_fn, functools.partial) and op.kernel_fn.func is _small_weighted


def _is_chain_matmul(op: GroupOp) -> bool:
    return (isinstance(op, StackedOp) and op.kernel_fn is torch.bmm
            and isinstance(op.a, Reused) and isinstance(op.b, Fetched)
            and op.keep_stacked and not op.need_parts)


def _is_chain_feature(op: GroupOp, matmul: int,
                      weight_slots: Mapping[tuple[int, str], tuple[int, int]],
                      last: bool = False) -> bool:
    """Whether ``op`` is the fused feature step after chain matmul ``matmul``: its stacked
    result is the next step's operand, or (``last``) is split into the members' results."""
    if not isinstance(op, StackedOp):
        return False
    ends = op.need_parts and not op.keep_stacked if last else (
        op.keep_stacked and not op.need_parts)
    return (_is_split_small(op) and isinstance(op.a, Reused) and op.a.group == matmul
            and ends and isinstance(op.b, Fetched) and op.b.key in weight_slots)


def chain_runs(ops: Sequence[GroupOp], weight_slots: Mapping[tuple[int, str], tuple[int, int]]
               ) -> dict[int, list[int]]:
    """Runs of at least two consecutive (stacked matmul, fused feature) group pairs in
    which each matmul takes the previous pair's result: first group -> the run's groups.
    The last pair's result may be split into its members' results (the two half-chains of an
    MPS, each going on to its own step).

    ``weight_slots`` maps a group's split weights to their (gather number, position)."""
    runs: dict[int, list[int]] = {}
    g = 0
    while g + 1 < len(ops):
        run: list[int] = []
        h = g
        while (h + 1 < len(ops) and _is_chain_matmul(ops[h])
               and (not run or ops[h].a.group == run[-1])):
            if _is_chain_feature(ops[h + 1], h, weight_slots):
                run += [h, h + 1]
                h += 2
                continue
            if run and _is_chain_feature(ops[h + 1], h, weight_slots, last=True):
                run += [h, h + 1]
                h += 2
            break
        if len(run) >= 4:
            runs[g] = run
            g = h
        else:
            g += 1
    return runs


def _last_reads(ops: Sequence[GroupOp]) -> dict[int, int]:
    """Per group whose stacked result only later groups read, as a stacked operand (a view of
    it), the last such group; the others (whose members' results are read one by one, as
    variables) are left out: their workspace tensors are never written again."""
    last: dict[int, int] = {}
    for h, op in enumerate(ops):
        if isinstance(op, StackedOp):
            for source in (op.a, op.b):
                if isinstance(source, Reused):
                    last[source.group] = h
    return {g: h for g, h in last.items()
            if isinstance(ops[g], StackedOp) and not ops[g].need_parts}


class _SourceWriter:
    """The state of one source generation: lines written, constants bound, the variables
    that hold slot values, and (workspace variant) the workspace entries used."""

    def __init__(self, ops: Sequence[GroupOp], sources: Mapping[int, LeafSource],
                 leaf_equations: Sequence[str | None], sliced: bool,
                 weight_slots: Mapping[tuple[int, str], tuple[int, int]],
                 workspace: bool,
                 core_slots: Mapping[tuple[int, str], tuple[int, int]] | None = None,
                 fused: bool = False) -> None:
        self.ops = ops
        self.sources = sources
        self.leaf_equations = leaf_equations
        self.sliced = sliced
        self.weight_slots = weight_slots
        self.core_slots = core_slots or {}
        self.stacked_cores: dict[int, set[int]] = {}
        self.workspace = workspace
        self.fused = fused
        self.lines = ["def contract(tensors, ports, fetched, leaves"
                      + (", ws):" if workspace else "):")]
        self.constants: dict[str, Any] = {}
        self.names: dict[int, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}    # variable -> its shape (s<slot> ones)
        self.specs: list[WsSpec] = []
        self.buffers: dict[int, int] = {}          # group -> workspace entry holding its result
        self.views: dict[WsSpec, str] = {}
        self.inlined: set[int] = set()
        #: per workspace tensor (entry number), the group whose result it holds now
        self.holder: dict[int, int] = {}
        self.last_read = _last_reads(ops)

    def const(self, value: Any, prefix: str) -> str:
        """A fresh name bound to ``value``."""
        name = f"{prefix}{len(self.constants)}"
        self.constants[name] = value
        return name

    def ws_entry(self, spec: WsSpec) -> str:
        """The workspace entry ``spec`` (added at first use)."""
        if spec not in self.views:
            self.views[spec] = f"ws[{len(self.specs)}]"
            self.specs.append(spec)
        return self.views[spec]

    def new_buffer(self, shape: tuple[int, ...], group: int) -> str:
        """A workspace tensor that receives ``group``'s result: one of ``shape`` whose value
        every reader has read (its last reader ran before ``group``), or a new one. Chain steps
        thus write into a few tensors in turn, which stay in the cache, instead of one each."""
        for entry, held in self.holder.items():
            if self.specs[entry].shape == shape and self.last_read.get(held, group) < group:
                break
        else:
            self.ws_entry(WsEmpty(shape, group))
            entry = len(self.specs) - 1
        self.holder[entry] = group
        self.buffers[group] = entry
        return f"ws[{entry}]"

    def stacked(self, key: int, size: tuple[int, ...], transposed: bool) -> str:
        """The operand view of group ``key``'s stacked result."""
        if key in self.buffers:
            return self.ws_entry(WsView(self.buffers[key], size, transposed))
        return f"g{key}.view({size})" + (".transpose(1, 2)" if transposed else "")

    def use(self, slot: int) -> str:
        """The expression of ``slot``'s value (a variable is used once)."""
        if slot in self.names:
            return self.names.pop(slot)
        if self.sliced:      # sliced runs hand in leaves already selected (and traced)
            return f"leaves[{slot}]"
        source = self.sources[slot]
        if source.kind == "tensor":
            expr = f"tensors[{source.index}]"
        elif source.copy is None:
            expr = f"ports[{source.index}]"
        else:
            expr = f"ports[{source.index}].select(0, {source.copy})"
        eq = self.leaf_equations[slot]
        return expr if eq is None else f"torch.einsum({eq!r}, {expr})"

    def lone(self, k: Kernel) -> None:
        """Write a kernel that runs alone."""
        left, right = self.use(k.left), self.use(k.right)
        variant = "inference" if self.workspace else "fused" if self.fused else "plain"
        source = _lone_source(k, left, right, self.const, self.shapes, variant)
        self.lines.append(f"    s{k.out} = {source}")
        self.names[k.out] = f"s{k.out}"
        self.shapes[f"s{k.out}"] = tuple(k.out_shape)

    def group(self, g: int, op: StackedOp) -> None:
        """Write stacked group ``g``: its operands, the stacked kernel, the members' results."""
        kernels, lines = op.kernels, self.lines
        operands = []
        for role, source in zip("ab", (op.a, op.b)):
            if isinstance(source, Reused):
                expr = self.stacked(source.group, source.size, source.transposed)
            elif isinstance(source, Fetched):
                expr = f"fetched[{source.key!r}]"
            else:
                parts = ", ".join(f"_as3({self.use(slot)}, {self.const(view, 'O')})"
                                  for slot, view in source.members)
                _, x, y = _logical(getattr(kernels[0], role))
                expr = f"torch.stack([{parts}]).view(-1, {x}, {y})"
            operands.append(expr)
        kernel_fn = op.kernel_fn
        call = ("torch.bmm" if kernel_fn is torch.bmm else self.const(kernel_fn, "F"))
        if self.workspace and kernel_fn is torch.bmm:
            nb, m, _ = _logical(kernels[0].a)
            out = self.new_buffer((len(kernels) * nb, m, _logical(kernels[0].b)[2]), g)
            lines.append(f"    r{g} = torch.bmm({operands[0]}, {operands[1]}, out={out})")
        else:
            lines.append(f"    r{g} = {call}({operands[0]}, {operands[1]})")
        if op.keep_stacked:
            lines.append(f"    g{g} = r{g}" if kernel_fn is torch.bmm else
                         f"    g{g} = r{g} if r{g}.is_contiguous() else r{g}.contiguous()")
        if op.need_parts:
            self.split(g, op, f"r{g}")

    def split(self, g: int, op: StackedOp, stacked: str) -> None:
        """Write the split of group ``g``'s stacked result (the expression ``stacked``) into its
        members' results ``s<slot>``."""
        self.lines.append(f"    p{g} = {stacked}.reshape({len(op.kernels)}, -1).unbind(0)")
        for i, k in enumerate(op.kernels):
            self.lines.append(f"    s{k.out} = p{g}[{i}].reshape({k.out_shape})")
            self.names[k.out] = f"s{k.out}"
            self.shapes[f"s{k.out}"] = tuple(k.out_shape)

    def chain(self, run: list[int]) -> None:
        """Write ``run`` (see :func:`chain_runs`) as one ``_ChainRun``."""
        steps, cores, weights = [], [], []
        for matmul, feature in zip(run[0::2], run[1::2]):
            matmul_op, feature_op = self.ops[matmul], self.ops[feature]
            assert isinstance(matmul_op, StackedOp) and isinstance(feature_op, StackedOp)
            a_source, b_source = matmul_op.a, matmul_op.b
            s_source, w_source = feature_op.a, feature_op.b
            assert isinstance(a_source, Reused) and isinstance(b_source, Fetched)
            assert isinstance(s_source, Reused) and isinstance(w_source, Fetched)
            matmuls, first = matmul_op.kernels, feature_op.kernels[0]
            terms = _logical(first.a)[2]
            nb, m, _ = _logical(matmuls[0].a)
            result = (len(matmuls) * nb, m, _logical(matmuls[0].b)[2])
            count = terms - (1 if first.ones_b else 0)
            steps.append(ChainStep(a_source.size, a_source.transposed, result, s_source.size,
                                   1 if s_source.transposed else 2, terms, first.ones_b,
                                   (len(weights), len(weights) + count)))
            cores.append(b_source.key)
            n, i = self.weight_slots[w_source.key]
            if not feature_op.need_parts:   # (a last step split into parts is written as a
                self.inlined.add(feature)   # group where no run is: it reads its own weights)
            weights += [f"fetched[('columns', {n})][{j}][{i}]"
                        for j in range(1 if first.ones_b else 0, terms)]
        start = self.ops[run[0]].a.group
        slots = [self.core_slots.get(key) for key in cores]
        if all(slots) and len({slot[0] for slot in slots}) == 1:  # one gather: read it whole
            number = slots[0][0]
            steps = [dataclasses.replace(step, core=position)
                     for step, (_, position) in zip(steps, slots)]
            self.stacked_cores.setdefault(number, set()).update(p for _, p in slots)
            args = [f"fetched[('stacked', {number})]"]
        else:
            args = [f"fetched[{key!r}]" for key in cores]
        line = (f"    g{run[-1]} = apply_positional(_ChainRun, {self.const(tuple(steps), 'C')}, "
                f"g{start}, "
                f"{', '.join(args + weights)})[0]")
        self.lines.append(line)
        last = self.ops[run[-1]]
        if isinstance(last, StackedOp) and last.need_parts:   # split into the members' results
            self.split(run[-1], last, f"g{run[-1]}")

    def inline_small(self, g: int, op: StackedOp) -> bool:
        """Write a 'small' group whose weights come split from the gather, and whose other
        operand is an earlier stacked result, as plain multiply-adds (the hot step of a fused
        feature map). Returns False for any other group.

        In the workspace variant, slices of a workspace result are taken from the workspace,
        and the sum is written into a workspace tensor of its own; there a group whose members'
        results are read one by one (the last step of an MPS's lockstep half-chains) is written
        so too, then split."""
        first, lines = op.kernels[0], self.lines
        a_source, b_source = op.a, op.b
        k = _logical(first.a)[2]
        first_term = 1 if first.ones_b else 0
        in_workspace = self.workspace and k - first_term >= 1
        if not (_is_split_small(op) and isinstance(a_source, Reused)
                and (in_workspace or not op.need_parts)):
            return False
        assert isinstance(b_source, Fetched)
        key, size = a_source.group, a_source.size
        dim = 1 if a_source.transposed else 2   # transposed: (G*nb, k, m) stored, rows are terms
        if self.workspace and key in self.buffers:
            lines.append(f"    t{g} = {self.ws_entry(WsUnbind(self.buffers[key], size, dim))}")
        else:
            lines.append(f"    t{g} = g{key}.view({size}).unbind({dim})")
        n, i = self.weight_slots[b_source.key]
        if not op.need_parts:
            # (the other variants write a split group as a group, which reads its own weights)
            self.inlined.add(g)
        lines.append(f"    w{g} = fetched[('columns', {n})]")
        if in_workspace:
            rows = size[0]
            cols = size[2] if dim == 1 else size[1]
            out = self.new_buffer((rows, cols), g)
            if first.ones_b:
                lines.append(f"    r{g} = torch.addcmul(t{g}[0], t{g}[1], w{g}[1][{i}], "
                             f"out={out})")
            else:
                lines.append(f"    r{g} = torch.mul(t{g}[0], w{g}[0][{i}], out={out})")
            for j in range(first_term + 1, k):
                lines.append(f"    r{g}.addcmul_(t{g}[{j}], w{g}[{j}][{i}])")
            if op.keep_stacked:
                lines.append(f"    g{g} = r{g}")
            if op.need_parts:
                self.split(g, op, f"r{g}")
            return True
        lines.append(f"    r{g} = t{g}[0]" if first.ones_b else
                     f"    r{g} = t{g}[0] * w{g}[0][{i}]")
        for j in range(1, k):
            lines.append(f"    r{g} = torch.addcmul(r{g}, t{g}[{j}], w{g}[{j}][{i}])")
        if op.keep_stacked:
            contiguous = ".contiguous()" if k == 1 and first.ones_b else ""
            lines.append(f"    g{g} = r{g}{contiguous}")
        return True


def generate_source(ops: Sequence[GroupOp], sources: Mapping[int, LeafSource],
                    leaf_equations: Sequence[str | None], *, sliced: bool, result_slot: int,
                    final_perm: tuple[int, ...] | None,
                    final_merged: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None,
                    weight_slots: Mapping[tuple[int, str], tuple[int, int]],
                    runs: Mapping[int, list[int]], workspace: bool = False,
                    core_slots: Mapping[tuple[int, str], tuple[int, int]] | None = None,
                    fused: bool = False) -> GeneratedSource:
    """Straight-line Python for the whole contraction (one line per tensor operation).

    With ``workspace``: the variant for inference (no autograd), ``contract(..., ws)``,
    whose stacked matmuls and fused multiply-adds write into preallocated tensors
    (``out=``), and whose views of them (the next step's operand, the slices of a fused
    feature map) are made once, when the workspace is built (the result's ``ws_specs`` say
    how). A 64-site chain step then costs two torch calls and no allocation.

    Sliced programs (``sliced``) read their leaves from ``leaves`` (selected per slice); the
    others cut them from ``tensors`` and ``ports`` and take gathered operands from ``fetched``.
    Interpreting the group list costs a few microseconds of Python per group, which is
    what a 64-site chain spends most of its time on at small bond dimensions; generated
    code leaves only the torch calls. Constants (kernels, operand layouts, functions) are
    bound by name (the result's ``constants``). ``runs`` (see :func:`chain_runs`) are written
    as one ``_ChainRun`` each; ``core_slots`` maps gathered parameter operands to their
    ``(gather number, position)``: a run whose cores all come from one gather reads its stacked
    tensor whole, and its backward writes their gradients into one tensor (no stacking of
    per-step gradients). ``fused``: the training program, where 'bcast' kernels run as
    :class:`~tngraph.executor.kernels._BroadcastMatmul` (else, outside the workspace variant,
    as recorded torch ops).
    """
    writer = _SourceWriter(ops, sources, leaf_equations, sliced, weight_slots, workspace,
                           core_slots, fused)
    lines = writer.lines
    skip: set[int] = set()
    for g, op in enumerate(ops):
        if g in skip:
            continue
        if g in runs:
            skip.update(runs[g])
            writer.chain(runs[g])
            continue
        if isinstance(op, LoneOp):
            writer.lone(op.kernel)
            continue
        if writer.inline_small(g, op):
            continue
        writer.group(g, op)
    result = writer.names.get(result_slot) if ops else writer.use(0)
    if final_merged is not None:
        merged, perm, shape = final_merged
        result = f"{result}.reshape({merged}).permute({perm}).contiguous().view({shape})"
    elif final_perm is not None:
        result = f"{result}.permute({final_perm})"
    lines.append(f"    return {result}")
    return GeneratedSource("\n".join(free_after_last_use(lines)) + "\n", writer.constants,
                           tuple(writer.specs), frozenset(writer.inlined),
                           {n: frozenset(p) for n, p in writer.stacked_cores.items()})


#: the variables generated code assigns (``s<slot>``, ``r<group>``, ``g<group>``, ...)
_VARIABLE = re.compile(r"\b([srgptw]\d+)\b")


def free_after_last_use(lines: Sequence[str]) -> list[str]:
    """``lines`` of straight-line code with a ``del`` of each variable after the line that uses
    it last, so that an intermediate is freed as soon as no later step needs it (without
    autograd nothing else holds it; the memory guard counts on this).

    Examples
    --------
    >>> free_after_last_use(["def f(x):", "    s1 = x + 1", "    s2 = s1 * 2", "    return s2"])
    ['def f(x):', '    s1 = x + 1', '    s2 = s1 * 2', '    del s1', '    return s2']
    """
    last: dict[str, int] = {}
    for k, line in enumerate(lines):
        for name in _VARIABLE.findall(line):
            last[name] = k
    freed: dict[int, list[str]] = {}
    for name, k in last.items():
        if not lines[k].lstrip().startswith("return "):
            freed.setdefault(k, []).append(name)
    out: list[str] = []
    for k, line in enumerate(lines):
        out.append(line)
        if k in freed:
            out.append(f"    del {', '.join(sorted(freed[k]))}")
    return out
