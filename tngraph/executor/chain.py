"""Fused chain runs: lockstep chain steps executed as one autograd node.

A run of (stacked matmul, fused feature map) steps, as the two half-chains of an MPS advance,
is described by one :class:`ChainStep` per step and executed by :class:`_ChainRun`, whose
hand-written backward replaces about ten recorded autograd nodes per step. Its gradients are
differentiable again: under ``create_graph=True`` (gradient penalties, Hessian-vector
products) the backward recomputes the run from its inputs with recorded torch ops
(:func:`chain_forward`) and differentiates that.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.executor.kernels import _weighted_sum, recomputed_grads


@dataclass(frozen=True)
class ChainStep:
    """One step of a fused chain run: a stacked matmul, then a fused-feature sum.

    ``a_size``/``a_transposed``: how the incoming environment is viewed as the matmul's left
    operand; ``result``: the matmul's ``(batch, rows, cols)``; ``terms_size``/``terms_dim``: how
    that result is viewed and split into the ``terms`` feature slices; ``ones``: the first
    slice's weight is the constant 1; ``weights``: the step's ``(start, stop)`` among the run's
    weight tensors; ``core``: where the run reads its cores from one stacked tensor (see
    :func:`run_cores`), the step's position in it, else None.
    """

    a_size: tuple[int, ...]
    a_transposed: bool
    result: tuple[int, int, int]
    terms_size: tuple[int, ...]
    terms_dim: int
    terms: int
    ones: bool
    weights: tuple[int, int]
    core: int | None = None

    @functools.cached_property
    def buffer_key(self) -> str:
        """What steps whose matmul results can share one buffer have in common (a string: its
        hash is computed once, where a tuple's is at every lookup)."""
        return repr((self.result, self.terms_size, self.terms_dim))


def run_cores(steps: Sequence[ChainStep], tensors: Sequence[torch.Tensor]
              ) -> tuple[list[torch.Tensor], Sequence[torch.Tensor]]:
    """The cores of a run of ``steps`` and its weight tensors, from the run's ``tensors``: one
    tensor per step then the weights, or (steps with a ``core`` position) one stacked tensor
    ``(positions, batch, rows, cols)`` that holds every step's core, then the weights."""
    if steps and steps[0].core is not None:
        stacked = tensors[0]
        return [stacked[step.core] for step in steps], tensors[1:]
    return list(tensors[:len(steps)]), tensors[len(steps):]


def _result_buffer(buffers: dict[Any, tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
                   step: ChainStep, like: torch.Tensor
                   ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A reusable tensor in the layout of ``step``'s matmul result, and its feature slices."""
    key = step.buffer_key
    found = buffers.get(key)
    if found is None:
        buffer = like.new_empty(step.result)
        found = buffers[key] = (buffer, buffer.view(step.terms_size).unbind(step.terms_dim))
    return found


def chain_forward(steps: tuple[ChainStep, ...], env: torch.Tensor,
                  tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The run of ``steps`` as plain, recorded torch ops (what :class:`_ChainRun` computes)."""
    cores, weights = run_cores(steps, tensors)
    for step, core in zip(steps, cores):
        a = env.view(step.a_size)
        if step.a_transposed:
            a = a.transpose(1, 2)
        terms = torch.bmm(a, core).view(step.terms_size).unbind(step.terms_dim)
        w = weights[step.weights[0]:step.weights[1]]
        env = _weighted_sum(terms, (None, *w) if step.ones else w, step.ones)
    return env


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
    def forward(steps: tuple[ChainStep, ...], env: torch.Tensor, *tensors: torch.Tensor
                ) -> tuple[torch.Tensor, list[Any]]:
        """The run's result, and what its backward needs of each step (a list, passed on to
        :meth:`setup_context`: no gradient flows through it)."""
        cores, weights = run_cores(steps, tensors)
        keep_terms = any(w.requires_grad for w in weights)
        complex_ = env.is_complex() or any(t.is_complex() for t in tensors)
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
            # the backward's adjoints: conjugate transposes, as torch's conjugate-Wirtinger
            # gradients need (plain transposes for real tensors)
            if complex_:
                records.append((step, a.transpose(1, 2).conj(), core.transpose(1, 2).conj(),
                                [t.conj() for t in w], shape, terms if keep_terms else None))
            else:
                records.append((step, a.mT, core.mT, w, shape, terms if keep_terms else None))
        return env, records

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        steps, env_in, *tensors = inputs
        ctx.records = output[1]
        ctx.steps = steps
        ctx.save_for_backward(env_in, *tensors)

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], steps: tuple[ChainStep, ...],
             env: torch.Tensor, *tensors: torch.Tensor) -> tuple[Any, Any]:
        """Under ``torch.vmap``: the run as recorded ops (:func:`chain_forward`), batched by
        torch's own rules (the fused forward writes into buffers of one example's shape)."""
        def run(e: torch.Tensor, *t: torch.Tensor) -> torch.Tensor:
            return chain_forward(steps, e, t)
        out = torch.vmap(run, in_dims=in_dims[1:], randomness=info.randomness)(env, *tensors)
        return (out, None), (0, None)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _records: Any = None
                 ) -> tuple[torch.Tensor | None, ...]:
        if torch.is_grad_enabled():          # create_graph=True: a differentiable backward
            return _ChainRun._recorded_backward(ctx, grad)
        with torch.no_grad():
            return _ChainRun._fast_backward(ctx, grad)

    @staticmethod
    def _recorded_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Recompute the run from its saved inputs with recorded ops and differentiate it with
        ``create_graph``, so that the gradients have a graph back to the inputs (the fast
        backward's saved intermediates have none)."""
        steps = ctx.steps
        grads = recomputed_grads(lambda t: chain_forward(steps, t[0], tuple(t[1:])),
                                 ctx.saved_tensors, ctx.needs_input_grad[1:], grad)
        return (None, *grads)

    @staticmethod
    def _fast_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        records = ctx.records
        n = len(records)
        saved = ctx.saved_tensors                  # (also checks for in-place changes)
        stacked = ctx.steps[0].core is not None
        n_cores = 1 if stacked else n
        need_env = ctx.needs_input_grad[1]
        need_cores = ctx.needs_input_grad[2:2 + n_cores]
        need_weights = ctx.needs_input_grad[2 + n_cores:]
        grad_cores: list[torch.Tensor | None] = [None] * n
        grad_stacked = None
        if stacked:
            if need_cores[0]:
                # every step's core gradient written in place into one tensor (zeros where the
                # stacked tensor holds cores of other steps)
                positions = {step.core for step in ctx.steps}
                grad_stacked = (torch.empty_like(saved[1])
                                if len(positions) == saved[1].shape[0]
                                else torch.zeros_like(saved[1]))
                grad_parts = grad_stacked.unbind(0)
            need_cores = (need_cores[0],) * n
        grad_weights: list[torch.Tensor | None] = [None] * len(need_weights)
        buffers: dict[Any, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        grad = grad.contiguous()
        for k in range(n - 1, -1, -1):
            step, a_t, core_t, w, shape, terms = records[k]
            if terms is not None:
                start, offset = step.weights[0], 1 if step.ones else 0
                for j, weight in enumerate(w):
                    if need_weights[start + j]:
                        grad_weights[start + j] = (terms[j + offset].conj() * grad).sum(
                            tuple(range(1, grad.dim())), keepdim=True).reshape(weight.shape)
            # the gradient of the matmul's result, in its layout: slice j is conj(weight_j) * grad
            # (``w`` holds the conjugates)
            grad_r, slices = _result_buffer(buffers, step, grad)
            if step.ones:
                slices[0].copy_(grad)
                for target, weight in zip(slices[1:], w):
                    torch.mul(grad, weight, out=target)
            else:
                for target, weight in zip(slices, w):
                    torch.mul(grad, weight, out=target)
            if grad_stacked is not None:
                torch.bmm(a_t, grad_r, out=grad_parts[step.core])
            elif need_cores[k]:
                grad_cores[k] = torch.bmm(a_t, grad_r)
            if k == 0 and not need_env:
                break
            grad_a = torch.bmm(grad_r, core_t)
            grad = (grad_a.transpose(1, 2) if step.a_transposed else grad_a).reshape(shape)
        if stacked:
            return (None, grad if need_env else None, grad_stacked, *grad_weights)
        return (None, grad if need_env else None, *grad_cores, *grad_weights)
