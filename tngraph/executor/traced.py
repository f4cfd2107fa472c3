"""The plan as one ``torch.einsum`` per pairwise step: what ``torch.compile`` traces.

A :class:`~tngraph.executor.runtime.Program` is generated Python for one batch size (its kernel
layouts and reshapes are concrete). A compiler that traces the module needs code that holds for
any batch size and builds nothing while it is traced: :class:`EinsumProgram` is made once from
the plan and runs its steps as batch-agnostic einsums, which the tracer sees as plain tensor
operations (and Inductor lowers to matrix products).

Examples
--------
>>> import torch, tngraph
>>> m = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 3, "
...                     "phys_dim: 2, bond_dim: 2}\\n", cache=False)
>>> program = einsum_program(m.plan)
>>> torch.allclose(program.run(list(m.tensors.values()), []), m())
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.executor.schedule import LeafSource, leaf_sources, trace_equations
from tngraph.plan import equation

__all__ = ["EinsumProgram", "einsum_program"]


@dataclass(frozen=True)
class EinsumStep:
    """``slots[out] = einsum(equation, slots[left], slots[right])`` (``out`` is the next
    slot)."""

    left: int
    right: int
    equation: str


@dataclass(frozen=True)
class EinsumProgram:
    """Leaves (parameters, data-port copies, traces taken), then one einsum per step, then the
    permutation into the output order."""

    sources: tuple[LeafSource, ...]
    leaf_equations: tuple[str | None, ...]
    steps: tuple[EinsumStep, ...]
    result: int
    final_equation: str | None

    def run(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor]
            ) -> torch.Tensor:
        """Contract: ``tensors`` in term order, ``ports`` as the module hands them over (a
        stacked port copy-major, ``(N, batch, *legs)``)."""
        slots: list[torch.Tensor] = []
        for source, leaf_equation in zip(self.sources, self.leaf_equations):
            if source.kind == "tensor":
                leaf = tensors[source.index]
            elif source.copy is None:
                leaf = ports[source.index]
            else:
                leaf = ports[source.index].select(0, source.copy)
            slots.append(leaf if leaf_equation is None else torch.einsum(leaf_equation, leaf))
        for step in self.steps:
            slots.append(torch.einsum(step.equation, slots[step.left], slots[step.right]))
        result = slots[self.result]
        return result if self.final_equation is None else torch.einsum(self.final_equation,
                                                                       result)


def einsum_program(plan: Any) -> EinsumProgram:
    """The :class:`EinsumProgram` of ``plan`` (its executed path; a plan sliced to fit the
    memory limit runs unsliced here)."""
    plan = plan.executed()
    problem = plan.problem
    sources = leaf_sources(problem)
    leaf_equations = trace_equations(plan)
    # indices as planned, sliced ones included: every step keeps what a later step or the
    # output needs
    inds: list[tuple[str, ...]] = [tuple(leaf) for leaf in plan.leaf_inds]
    alive = set(range(len(inds)))
    steps = []
    for step in plan.steps:
        assert step.out == len(inds), "steps write the slots in order"
        alive -= {step.left, step.right}
        left, right = inds[step.left], inds[step.right]
        needed = set(problem.output).union(*(inds[k] for k in alive))
        out = tuple(dict.fromkeys(i for i in (*left, *right) if i in needed))
        steps.append(EinsumStep(step.left, step.right, equation([left, right], out)))
        alive.add(len(inds))
        inds.append(out)
    result = len(inds) - 1
    final = inds[result]
    final_equation = None if final == tuple(problem.output) else equation([final],
                                                                          problem.output)
    return EinsumProgram(tuple(sources), leaf_equations, tuple(steps), result, final_equation)
