"""Gradient optimizers from ``torch.optim``: ``adam`` and ``sgd`` with their options.

Examples
--------
>>> ADAM.options(betas=(0.9, 0.99)).betas
(0.9, 0.99)
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tngraph.optimizers import OptimizerContext, OptimizerStrategy, TorchStepper


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdamOptions(_Options):
    """Options of ``adam`` (``torch.optim.Adam``; ``lr`` and ``weight_decay`` are train keys)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    amsgrad: bool = False
    #: decoupled weight decay (AdamW) instead of L2 added to the gradient
    decoupled: bool = False


class SGDOptions(_Options):
    """Options of ``sgd`` (``torch.optim.SGD``)."""

    momentum: float = Field(default=0.9, ge=0)
    nesterov: bool = False
    dampening: float = Field(default=0.0, ge=0)


def _fused(params: list[Any]) -> bool | None:
    # one kernel for all cores: a network keeps many small tensors
    return True if all(p.device.type in ("cpu", "cuda") for p in params) else None


def _create_adam(module: Any, options: AdamOptions, context: OptimizerContext) -> TorchStepper:
    import torch

    params = list(module.parameters())
    cls = torch.optim.AdamW if options.decoupled else torch.optim.Adam
    return TorchStepper.over_buffer(module, cls, lr=context.lr,
                                    weight_decay=context.weight_decay, betas=options.betas,
                                    eps=options.eps, amsgrad=options.amsgrad,
                                    fused=_fused(params))


def _create_sgd(module: Any, options: SGDOptions, context: OptimizerContext) -> TorchStepper:
    import torch

    return TorchStepper.over_buffer(module, torch.optim.SGD, lr=context.lr,
                                    momentum=options.momentum, nesterov=options.nesterov,
                                    dampening=options.dampening,
                                    weight_decay=context.weight_decay)


ADAM = OptimizerStrategy("adam", "Adam (torch.optim, fused); options betas, eps, amsgrad, "
                         "decoupled", AdamOptions, _create_adam)
SGD = OptimizerStrategy("sgd", "SGD with momentum (torch.optim); options momentum, nesterov, "
                        "dampening", SGDOptions, _create_sgd)

#: the built-in optimizers (also registered through entry points in pyproject.toml)
BUILTIN_OPTIMIZERS = (ADAM, SGD)
