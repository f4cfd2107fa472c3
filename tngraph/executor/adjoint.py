"""Whole-program training runs: a generated forward and its generated backward, one autograd node.

A program made only of lone matmul steps (``mm``, ``bmm`` and ``bcast`` kernels: TT-layers,
trees, small grids) costs autograd about five recorded nodes per step: views, transposes,
permuted copies and the matmul. On a 1024 -> 1024 TT-layer at batch 64 that bookkeeping was a
third of a training step. Here the compiler writes the step's backward too, as straight-line
code next to the forward (:func:`generate_adjoint`), and :class:`_ProgramRun` runs the pair as
one autograd node:

- the forward runs without recording and keeps each step's two operand views (what the
  matmul gradients read); large results go into the program's
  :class:`~tngraph.executor.pool.BufferPool`;
- the backward walks the steps in reverse: per step the one or two matmuls of its gradients,
  each written in the memory order of the operand it belongs to (a transposed view gets its
  gradient transposed, so no copy follows), then the inverse of the operand's view or permute;
  nothing is computed for a subtree whose leaves need no gradient;
- under ``create_graph=True`` the backward instead recomputes the program from its inputs with
  recorded torch ops and differentiates that, so gradients of any order are right; under
  ``torch.vmap`` the recorded program runs batched by torch's own rules.

Programs with stacked groups, chain runs, feature-map kernels, sliced indices or leaf einsums
run as before (:func:`adjoint_eligible` says which).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.executor.codegen import GroupOp, LoneOp, _operand_source, free_after_last_use
from tngraph.executor.kernels import (
    Kernel,
    Operand,
    _broadcast_grads,
    _broadcast_operands,
    _logical,
    _matmul_grads,
    _pooled,
    apply_positional,
    inverse_permutation,
    recomputed_grads,
)
from tngraph.executor.pool import BufferPool
from tngraph.executor.schedule import LeafSource

#: the kernel modes whose backward :func:`generate_adjoint` writes
ADJOINT_MODES = frozenset({"mm", "bmm", "bcast"})


def adjoint_eligible(ops: Sequence[GroupOp], sources: Mapping[int, LeafSource],
                     leaf_equations: Sequence[str | None], sliced: bool) -> bool:
    """Whether a program can run as one :class:`_ProgramRun`: lone ``mm`` / ``bmm`` / ``bcast``
    steps only, leaves read as they are (no einsum, no copy of a stacked port), not sliced."""
    if sliced or not ops:
        return False
    if any(eq is not None for eq in leaf_equations):
        return False
    if any(source.kind == "port" and source.copy is not None for source in sources.values()):
        return False
    return all(isinstance(op, LoneOp) and op.kernel.mode in ADJOINT_MODES for op in ops)


@dataclass(frozen=True)
class AdjointSource:
    """The generated pair: ``forward(tensors, ports, pool)`` returns ``(result, saved)``;
    ``backward(grad, tensors, ports, saved, need_t, need_p, pool)`` returns the gradients of
    ``tensors`` and ``ports`` (lists, None where not needed)."""

    forward: str
    backward: str
    constants: dict[str, Any]


def _unview(grad: torch.Tensor, shape: Sequence[int], perm: Sequence[int] | None
            ) -> torch.Tensor:
    """The gradient of a value of ``shape`` from that of its operand view (before any
    transpose): undo the reshape, and the permute where ``perm`` is given.

    Examples
    --------
    >>> v = torch.arange(24.).reshape(2, 3, 4)
    >>> view = v.permute(2, 0, 1).contiguous().reshape(4, 6)
    >>> torch.equal(_unview(view, v.shape, (2, 0, 1)), v)
    True
    """
    if perm is None:
        return grad.reshape(shape)
    return grad.reshape([shape[p] for p in perm]).permute(inverse_permutation(perm))


class _Writer:
    """The state of one adjoint generation."""

    def __init__(self, sources: Mapping[int, LeafSource]) -> None:
        self.sources = sources
        self.constants: dict[str, Any] = {}
        self.forward = ["def forward(tensors, ports, pool):"]
        self.backward: list[str] = []
        self.saved: list[str] = []
        self.leaves: dict[int, set[tuple[str, int]]] = {}   # slot -> leaf inputs below it
        self.shapes: dict[int, tuple[int, ...]] = {}        # intermediate slot -> its shape
        self.calls: dict[int, tuple[Kernel, str, str]] = {}  # slot -> its step's kernel, operands

    def value(self, slot: int) -> str:
        """The forward expression of ``slot``'s value."""
        source = self.sources.get(slot)
        if source is None:
            return f"s{slot}"
        return f"tensors[{source.index}]" if source.kind == "tensor" else \
            f"ports[{source.index}]"

    def below(self, slot: int) -> set[tuple[str, int]]:
        source = self.sources.get(slot)
        if source is None:
            return self.leaves[slot]
        return {("t" if source.kind == "tensor" else "p", source.index)}

    def shape_of(self, slot: int) -> str:
        """The backward expression of ``slot``'s value shape."""
        source = self.sources.get(slot)
        if source is None:
            return repr(self.shapes[slot])
        return f"{self.value(slot)}.shape"

    def need(self, slot: int) -> str:
        return " or ".join(sorted(f"need_{kind}[{index}]" for kind, index in self.below(slot)))

    def operand(self, slot: int, op: Operand, matrix: bool) -> str:
        """The operand view of ``slot``'s value."""
        return _operand_source(self.value(slot), op, matrix)

    def step(self, kernel: Kernel) -> None:
        x, y = (kernel.right, kernel.left) if kernel.swap else (kernel.left, kernel.right)
        o = kernel.out
        a_name, b_name = f"a{o}", f"b{o}"
        mode = kernel.mode
        matrix_a = mode == "mm"
        matrix_b = mode in ("mm", "bcast")
        self.forward.append(f"    {a_name} = {self.operand(x, kernel.a, matrix_a)}")
        self.forward.append(f"    {b_name} = {self.operand(y, kernel.b, matrix_b)}")
        mat = "torch.mm" if mode == "mm" else "torch.bmm"
        operands = (f"*_broadcast_operands({a_name}, {b_name}, {kernel.flip})"
                    if mode == "bcast" else f"{a_name}, {b_name}")
        call = f"_pooled({mat}, {operands}, pool)"
        self.forward.append(f"    s{o} = {call}.reshape({tuple(kernel.out_shape)})")
        self.calls[o] = (kernel, a_name, b_name)
        self.saved += [a_name, b_name]
        self.leaves[o] = self.below(x) | self.below(y)
        self.shapes[o] = tuple(kernel.out_shape)
        # backward, written in reverse order later
        nb, m, _ = _logical(kernel.a)
        cols = _logical(kernel.b)[2]
        result = (m, cols) if mode == "mm" else (nb, m, cols)
        grad = (f"d{o}.reshape({(nb, cols, m)}).transpose(1, 2)" if kernel.flip
                else f"d{o}.reshape({result})")
        grads = (f"_broadcast_grads({a_name}, {b_name}, G, pool" if mode == "bcast"
                 else f"_matmul_grads({mat}, {a_name}, {b_name}, G, pool")
        lines = [f"    if {self.need(o)}:", f"        G = {grad}", f"        del d{o}",
                 f"        ga, gb = {grads}, {self.need(x)}, {self.need(y)})",
                 "        del G"]
        # each gradient is of the operand view: transposed back to its stored layout (for a
        # 'bcast' operand a contiguous tensor, else a view), then the reshape and permute undone
        for slot, op, name in ((x, kernel.a, "ga"), (y, kernel.b, "gb")):
            matrix = mode == "mm" or (mode == "bcast" and name == "gb")
            t = (".t()" if matrix else ".transpose(1, 2)") if op.transposed else ""
            perm = self.const(op.perm, "P") if op.perm is not None else "None"
            lines.append(f"        if {self.need(slot)}:")
            lines.append(f"            d{slot} = _unview({name}{t}, {self.shape_of(slot)}, {perm})")
        lines.append("        del ga, gb")
        self.backward[:0] = lines

    def const(self, value: Any, prefix: str) -> str:
        name = f"{prefix}{len(self.constants)}"
        self.constants[name] = value
        return name


def generate_adjoint(ops: Sequence[GroupOp], sources: Mapping[int, LeafSource], *,
                     result_slot: int, final_perm: tuple[int, ...] | None,
                     final_merged: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
                     | None) -> AdjointSource:
    """The forward and backward source of an :func:`adjoint_eligible` program.

    The backward holds, per step in reverse, the step's result gradient ``d<slot>`` viewed as
    the matmul's result ``G``, then for each operand whose leaves need a gradient one matmul
    and the inverse view, giving the operand slot's ``d<slot>``; the leaves' gradients are
    returned per parameter tensor and data port (summed where a tensor is read twice).
    """
    writer = _Writer(sources)
    for op in ops:
        assert isinstance(op, LoneOp)
        writer.step(op.kernel)
    result = f"s{result_slot}"
    shape = writer.shapes[result_slot]
    # the result is handed out: not a pool buffer; the bias (added over the leading batch axis)
    # goes into the last matmul where its result is (batch, outputs), else is added after it
    line = next(k for k, text in enumerate(writer.forward) if text.startswith(f"    {result} ="))
    writer.forward[line] = writer.forward[line].replace("_pooled(torch.mm, ", "torch.mm(") \
        .replace("_pooled(torch.bmm, ", "torch.bmm(").replace(", pool).reshape(", ").reshape(")
    fused = _bias_call(*writer.calls[result_slot]) if final_merged is None \
        and final_perm is None else None
    if fused is not None:
        call, entries = fused
        writer.forward[line:line + 1] = [
            f"    if bias is not None and bias.numel() == {entries}:",
            f"        {result} = {call}.reshape({shape})",
            "        bias = None", "    else:", "    " + writer.forward[line]]
    if final_merged is not None:
        merged, perm, out = final_merged
        result = f"{result}.reshape({merged}).permute({perm}).contiguous().view({out})"
        permuted = tuple(merged[p] for p in perm)
        unfinal = (f"grad.reshape({permuted}).permute({inverse_permutation(perm)})"
                   f".reshape({shape})")
    elif final_perm is not None:
        result = f"{result}.permute({final_perm})"
        unfinal = f"grad.permute({inverse_permutation(final_perm)})"
    else:
        unfinal = "grad"
    saved = ", ".join(writer.saved)
    writer.forward[0] = "def forward(tensors, ports, pool, bias):"
    writer.forward.append(f"    out = {result} if bias is None else {result} + bias")
    forward = writer.forward + [f"    return out, [{saved}]"]
    # per leaf input, the slots that read it: gradients summed where a tensor is read twice
    reads: dict[tuple[str, int], list[int]] = {}
    for slot, source in sources.items():
        reads.setdefault(("t" if source.kind == "tensor" else "p", source.index), []).append(slot)
    back = ["def backward(grad, tensors, ports, saved, need_t, need_p, pool):",
            f"    [{saved}] = saved",
            f"    d{result_slot} = {unfinal}",
            *writer.backward,
            "    grad_t = [None] * len(tensors)",
            "    grad_p = [None] * len(ports)"]
    for (kind, index), slots in sorted(reads.items()):
        target = f"grad_{kind}[{index}]"
        back.append(f"    if need_{kind}[{index}]:")
        back.append(f"        {target} = {' + '.join(f'd{slot}' for slot in slots)}")
    back.append("    return grad_t, grad_p")
    return AdjointSource("\n".join(free_after_last_use(forward)) + "\n",
                         "\n".join(back) + "\n", writer.constants)


def _bias_call(kernel: Kernel, a_name: str, b_name: str) -> tuple[str, int] | None:
    """The last step's matmul with the bias added in it (``addmm`` / ``baddbmm``), and the
    bias entries it takes, where its result is ``(batch, outputs)`` with the batch its leading
    axis; else None."""
    nb, m, _ = _logical(kernel.a)
    cols = _logical(kernel.b)[2]
    out = kernel.out_shape
    if not out:
        return None
    if kernel.mode == "mm":
        if out[0] != m or math.prod(out[1:]) != cols:
            return None
        return f"torch.addmm(bias.reshape(1, {cols}), {a_name}, {b_name})", cols
    rows, last = (cols, m) if kernel.flip else (m, cols)
    if out[0] != nb or math.prod(out[1:]) != rows * last:
        return None
    operands = (f"*_broadcast_operands({a_name}, {b_name}, {kernel.flip})"
                if kernel.mode == "bcast" else f"{a_name}, {b_name}")
    return f"torch.baddbmm(bias.reshape(1, {rows}, {last}), {operands})", rows * last


class AdjointProgram:
    """An eligible program's generated forward and backward, and its recorded form (for
    ``create_graph`` and ``torch.vmap``), with the program's buffer pool."""

    def __init__(self, source: AdjointSource, plain: Any, pool: BufferPool) -> None:
        self.source = source
        namespace: dict[str, Any] = {"torch": torch, "_pooled": _pooled, "_unview": _unview,
                                     "_broadcast_operands": _broadcast_operands,
                                     "_broadcast_grads": _broadcast_grads,
                                     "_matmul_grads": _matmul_grads, **source.constants}
        exec(compile(source.forward, "<tngraph program (adjoint forward)>", "exec"),  # noqa: S102
             namespace)
        exec(compile(source.backward, "<tngraph program (adjoint backward)>", "exec"),  # noqa: S102
             namespace)
        self.forward = namespace["forward"]
        self.backward = namespace["backward"]
        self.plain = plain
        self.pool = pool

    def run(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor],
            bias: torch.Tensor | None = None) -> torch.Tensor:
        """The program's result, as one autograd node; ``bias`` (``outputs``-shaped, for a
        result ``(batch, *outputs)``) is added to it."""
        extra = () if bias is None else (bias,)
        return apply_positional(_ProgramRun, self, len(tensors), len(ports), *tensors,
                                *ports, *extra)[0]

    def recorded(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor],
                 bias: torch.Tensor | None) -> torch.Tensor:
        """The same result from the recorded program (autograd records every op)."""
        out = self.plain(tensors, ports)
        return out if bias is None else out + bias


class _ProgramRun(torch.autograd.Function):
    """A whole lone-step program as one autograd node (see the module docstring).

    Examples
    --------
    ``tests/test_executor.py`` checks it against the recorded program: values, gradients,
    ``gradcheck`` and ``gradgradcheck`` in real and complex dtypes, ``vmap``.
    """

    @staticmethod
    def forward(program: AdjointProgram, n_tensors: int, n_ports: int, *inputs: torch.Tensor
                ) -> tuple[torch.Tensor, list[Any]]:
        tensors, ports, rest = _split(inputs, n_tensors, n_ports)
        return program.forward(tensors, ports, program.pool, rest[0] if rest else None)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        program, n_tensors, n_ports, *tensors = inputs
        ctx.program, ctx.n_tensors, ctx.n_ports = program, n_tensors, n_ports
        ctx.operands = output[1]
        ctx.save_for_backward(*tensors)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], program: AdjointProgram, n_tensors: int,
             n_ports: int, *inputs: torch.Tensor) -> tuple[Any, Any]:
        """Under ``torch.vmap``: the recorded program, batched by torch's own rules."""
        def run(*xs: torch.Tensor) -> torch.Tensor:
            tensors, ports, rest = _split(xs, n_tensors, n_ports)
            return program.recorded(tensors, ports, rest[0] if rest else None)
        out = torch.vmap(run, in_dims=in_dims[3:], randomness=info.randomness)(*inputs)
        return (out, None), (0, None)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _operands: Any = None
                 ) -> tuple[torch.Tensor | None, ...]:
        inputs = ctx.saved_tensors                 # (also checks for in-place changes)
        needs = ctx.needs_input_grad[3:]
        n, n_ports = ctx.n_tensors, ctx.n_ports
        if torch.is_grad_enabled():          # create_graph=True: a differentiable backward
            program = ctx.program

            def run(leaves: Sequence[torch.Tensor]) -> torch.Tensor:
                tensors, ports, rest = _split(leaves, n, n_ports)
                return program.recorded(tensors, ports, rest[0] if rest else None)
            return (None, None, None, *recomputed_grads(run, inputs, needs, grad))
        if 0 in grad.stride():     # a broadcast gradient (``out.sum().backward()``): batched
            # matmuls take a slow per-matrix path on it; copied into the pool (fresh memory
            # this large faults its pages: 0.37 against 0.03 ms for 1 MB in a TT-layer's step)
            grad = ctx.program.pool.take(grad.shape, grad.dtype, grad.device).copy_(grad)
        tensors, ports, rest = _split(inputs, n, n_ports)
        with torch.no_grad():
            grad_t, grad_p = ctx.program.backward(grad, tensors, ports, ctx.operands,
                                                  needs[:n], needs[n:n + n_ports],
                                                  ctx.program.pool)
            grad_bias = [grad.sum_to_size(rest[0].shape) if needs[-1] else None] if rest else []
        return (None, None, None, *grad_t, *grad_p, *grad_bias)


def _split(inputs: Sequence[Any], n_tensors: int, n_ports: int
           ) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
    """``inputs`` as (parameter tensors, data ports, the bias if any)."""
    return (inputs[:n_tensors], inputs[n_tensors:n_tensors + n_ports],
            inputs[n_tensors + n_ports:])
