"""The optimizer toolkit: what steppers share (``TorchStepper``, the learning-rate schedule),
for the strategies that say how one training step updates a network
(``adam``, ``sgd``, ``dmrg``, ``riemannian``, ...), chosen by registered name.

A strategy is an :class:`OptimizerStrategy`: a name, a pydantic model of its options (validated
and located in the spec like any other key: ``train.optimizer: {name: dmrg, max_rank: 32}``) and
a ``create`` factory that returns a :class:`Stepper` for one module. The training loop
(:mod:`tngraph.train`) only talks to the stepper: ``step(x, objective)`` per mini-batch,
``set_lr`` per epoch, ``end_epoch``, ``state_dict`` / ``load_state_dict`` for checkpoints, and
``describe()`` for what the epoch line and the run summary show (e.g. adapted bond dimensions).
A stepper may *replace* the module it trains (``stepper.module``): DMRG sweeps change bond
dimensions, so the network is rebuilt with the new shapes.

Strategies register through the ``tngraph.optimizers`` entry-point group; the built-in ones live in
``plugins/tngraph_plugins`` and register through that same group. The strategy record, the
:class:`Stepper` protocol and the registry are defined in :mod:`tngraph.kinds` (importable from
here too); a spec's ``train.optimizer`` is checked there, without this module. This module
imports torch only where a stepper runs.

Examples
--------
>>> "adam" in OPTIMIZERS and "sgd" in OPTIMIZERS
True
>>> get_optimizer("adam").options().model_dump()["betas"]
(0.9, 0.999)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from tngraph.errors import TNGraphError
from tngraph.kinds import (
    OPTIMIZERS,
    OptimizerContext,
    OptimizerStrategy,
    Stepper,
    get_optimizer,
    list_optimizers,
    register_optimizer,
)
from tngraph.schema import NamedOptions
from tngraph.validate import check_optimizer

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "OPTIMIZERS", "NonFiniteLoss", "OptimizerContext", "OptimizerStateError",
    "OptimizerStrategy", "Stepper", "TorchStepper", "check_optimizer", "get_optimizer",
    "learning_rate", "list_optimizers", "optimizer_options", "register_optimizer",
]


class NonFiniteLoss(TNGraphError):
    """A step met a NaN or infinite loss; no parameter was changed."""

    def __init__(self, value: float):
        super().__init__(f"the loss became {value}")
        self.value = value


class OptimizerStateError(TNGraphError):
    """A checkpoint's optimizer state does not fit the optimizer it is loaded into."""


def optimizer_options(named: NamedOptions) -> BaseModel:
    """Validate ``named``'s options against its strategy (raises PluginError / ValidationError)."""
    return get_optimizer(named.name).options.model_validate(named.options)


def learning_rate(base: float, epoch: int, epochs: int, schedule: str) -> float:
    """Learning rate of ``epoch`` (1-based): ``cosine`` decays from ``base`` towards 0 by the
    end of the run (as ``CosineAnnealingLR`` with ``T_max=epochs``), ``constant`` keeps it.

    Examples
    --------
    >>> learning_rate(0.1, 1, 10, "cosine"), learning_rate(0.1, 6, 10, "cosine")
    (0.1, 0.05)
    """
    if schedule == "constant":
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


class TorchStepper:
    """A :class:`Stepper` over a ``torch.optim.Optimizer``: forward, backward, ``step``.

    The optimizer steps the module's parameters as they are registered; a compiled network
    stores the cores of stacked kernels as one parameter each (see
    :class:`tngraph.compiler.NodeTensors`), so a plain (fused) optimizer steps a few tensors.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> stepper = TorchStepper(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> loss, out = stepper.step(torch.ones(4, 3), lambda out: (out ** 2).mean())
    >>> out.shape
    torch.Size([4, 1])
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer):
        self._module = module
        self.optimizer = optimizer
        #: clip the global norm of the gradients to this before each step (None: no clipping;
        #: the training option ``grad_clip`` sets it on any stepper that has this attribute)
        self.max_grad_norm: float | None = None

    @property
    def module(self) -> nn.Module:
        return self._module

    def step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        out = self._module(x)
        loss = objective(out)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(float(loss.detach()))
        self.zero_grad()
        loss.backward()
        self.update()
        return loss.detach(), out.detach()

    def zero_grad(self) -> None:
        """Clear the gradients before a ``backward``."""
        self.optimizer.zero_grad(set_to_none=True)

    def update(self) -> None:
        """The optimizer's step from the gradients of the last ``backward``."""
        if self.max_grad_norm is not None:
            from torch.nn.utils import clip_grad_norm_

            clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]],
                self.max_grad_norm)
        self.optimizer.step()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [len(group.get("params", ())) for group in
                 state.get("optimizer", {}).get("param_groups", ())]
        own = [len(group["params"]) for group in self.optimizer.param_groups]
        if saved != own:
            raise OptimizerStateError(
                f"the optimizer state was saved for {sum(saved)} parameter tensor(s), but this "
                f"module has {sum(own)}: a run made before tngraph stored the cores of stacked "
                "kernels together (one parameter each), or another model; start a new run "
                "from its weights with --init RUN/model.safetensors (the optimizer's "
                "statistics start afresh)")
        self.optimizer.load_state_dict(state["optimizer"])

    def describe(self) -> dict[str, Any]:
        return {}
