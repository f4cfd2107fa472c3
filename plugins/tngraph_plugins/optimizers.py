"""The steppers of the gradient optimizers ``adam`` and ``sgd`` (``torch.optim``; declared in
:mod:`tngraph_plugins.strategies`).

Examples
--------
>>> ADAM.options(betas=(0.9, 0.99)).betas
(0.9, 0.99)
"""

from __future__ import annotations

from typing import Any

import torch

from tngraph.optimizers import OptimizerContext, TorchStepper
from tngraph_plugins.strategies import ADAM, SGD, AdamOptions, SGDOptions

__all__ = ["ADAM", "SGD", "AdamOptions", "SGDOptions", "create_adam", "create_sgd"]


def _fused(params: list[Any]) -> bool | None:
    # one kernel for all tensors where torch has it (real floating tensors on the CPU or CUDA;
    # complex ones take the default, foreach, implementation)
    return True if all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                       for p in params) else None


def create_adam(module: Any, options: AdamOptions, context: OptimizerContext) -> TorchStepper:
    """The stepper of ``adam``: ``torch.optim.Adam`` (``AdamW`` with ``decoupled``) over the
    module's parameters, fused where the device allows."""
    params = list(module.parameters())
    cls = torch.optim.AdamW if options.decoupled else torch.optim.Adam
    return TorchStepper(module, cls(params, lr=context.lr, weight_decay=context.weight_decay,
                                    betas=options.betas, eps=options.eps,
                                    amsgrad=options.amsgrad, fused=_fused(params)))


def create_sgd(module: Any, options: SGDOptions, context: OptimizerContext) -> TorchStepper:
    """The stepper of ``sgd``: ``torch.optim.SGD`` over the module's parameters."""
    return TorchStepper(module, torch.optim.SGD(
        module.parameters(), lr=context.lr, momentum=options.momentum,
        nesterov=options.nesterov, dampening=options.dampening,
        weight_decay=context.weight_decay))
