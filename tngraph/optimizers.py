"""Optimizer strategies: how one training step updates a network (``adam``, ``sgd``, ``dmrg``,
``riemannian``, ...), chosen by registered name.

A strategy is an :class:`OptimizerStrategy`: a name, a pydantic model of its options (validated
and located in the spec like any other key: ``train.optimizer: {name: dmrg, max_bond: 32}``) and
a ``create`` factory that returns a :class:`Stepper` for one module. The training loop
(:mod:`tngraph.train`) only talks to the stepper: ``step(x, objective)`` per mini-batch,
``set_lr`` per epoch, ``end_epoch``, ``state_dict`` / ``load_state_dict`` for checkpoints, and
``describe()`` for what the epoch line and the run summary show (e.g. adapted bond dimensions).
A stepper may *replace* the module it trains (``stepper.module``): DMRG sweeps change bond
dimensions, so the network is rebuilt with the new shapes.

Strategies register through the ``tngraph.optimizers`` entry-point group; the built-in ones live in
``plugins/tngraph_plugins`` and register through that same group. This module does not import
torch (specs are validated without it); steppers do.

Examples
--------
>>> "adam" in OPTIMIZERS and "sgd" in OPTIMIZERS
True
>>> get_optimizer("adam").options().model_dump()["betas"]
(0.9, 0.999)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from tngraph.errors import PluginError, Problem, TNGraphError
from tngraph.plugins import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tngraph.spec import NamedOptions
    from tngraph.yamlio import DocPath, Document


class NonFiniteLoss(TNGraphError):
    """A step met a NaN or infinite loss; no parameter was changed."""

    def __init__(self, value: float):
        super().__init__(f"the loss became {value}")
        self.value = value


class Stepper(Protocol):
    """One module being trained by one strategy (see the module docstring)."""

    @property
    def module(self) -> nn.Module:
        """The network as it is now (a strategy may rebuild it, e.g. with new bond dims)."""

    def step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update from one mini-batch; returns ``(loss, outputs)`` as computed before the update.

        ``objective(outputs) -> loss`` (a scalar). Raises :class:`NonFiniteLoss` without
        changing anything when the loss is not finite.
        """

    def set_lr(self, lr: float) -> None:
        """The learning rate for the coming steps (the training loop's schedule)."""

    def end_epoch(self) -> None:
        """Called after the last step of each epoch (before evaluation and the checkpoint)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (moments, sweep position, ...)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s result."""

    def describe(self) -> dict[str, Any]:
        """Short facts for the epoch line and the run summary (JSON-serialisable)."""


@dataclass(frozen=True)
class OptimizerContext:
    """What the training loop tells a strategy besides its own options."""

    lr: float
    weight_decay: float = 0.0
    #: ``classification`` or ``regression``
    task: str = "classification"


@dataclass(frozen=True)
class OptimizerStrategy:
    """A registered optimizer strategy.

    Attributes
    ----------
    name
        Registered name (``train.optimizer`` / ``--optimizer``).
    description
        One line for ``tngraph plugins list`` and error messages.
    options
        Pydantic model of the strategy's options (``extra="forbid"``; defaults for all).
    create
        ``create(module, options, context) -> Stepper``.
    """

    name: str
    description: str
    options: type[BaseModel]
    create: Callable[[Any, Any, OptimizerContext], Stepper]


def _builtins() -> dict[str, OptimizerStrategy]:
    try:
        from tngraph_plugins.optimizers import BUILTIN_OPTIMIZERS
    except ImportError:   # pragma: no cover - a source tree without plugins/ on the path
        return {}
    return {s.name: s for s in BUILTIN_OPTIMIZERS}


OPTIMIZERS: Registry[OptimizerStrategy] = Registry("optimizer", "tngraph.optimizers", _builtins,
                                                   expects=OptimizerStrategy)


def register_optimizer(strategy: OptimizerStrategy, **kwargs: Any) -> None:
    """Register ``strategy`` under ``strategy.name`` (a second registration is refused).

    Examples
    --------
    >>> register_optimizer(my_strategy)            # doctest: +SKIP
    """
    OPTIMIZERS.register(strategy.name, strategy, **kwargs)


def get_optimizer(name: str) -> OptimizerStrategy:
    """The strategy called ``name``; unknown names list the valid ones."""
    strategy = OPTIMIZERS.get(name)
    if not isinstance(strategy, OptimizerStrategy):
        raise PluginError(f"optimizer plugin '{name}' is not an OptimizerStrategy "
                          f"(got {type(strategy).__name__})")
    return strategy


def list_optimizers() -> list[str]:
    """Names of the working optimizer strategies."""
    return OPTIMIZERS.list()


def optimizer_options(named: NamedOptions) -> BaseModel:
    """Validate ``named``'s options against its strategy (raises PluginError / ValidationError)."""
    return get_optimizer(named.name).options.model_validate(named.options)


def check_optimizer(named: NamedOptions, doc: Document | None, path: DocPath) -> list[Problem]:
    """Problems of a ``train.optimizer`` entry (unknown name, bad options), located in ``doc``.

    Examples
    --------
    >>> from tngraph.spec import NamedOptions
    >>> check_optimizer(NamedOptions(name="adam"), None, ("train", "optimizer"))
    []
    """
    from tngraph.spec import pydantic_problems

    def where(p: DocPath, key: bool = False) -> Any:
        return doc.locate(p, key=key) if doc is not None else None

    name_path = (*path, "name") if named.options else path
    try:
        strategy = get_optimizer(named.name)
    except PluginError as exc:
        return [Problem(str(exc), where(name_path))]
    try:
        strategy.options.model_validate(named.options)
    except ValidationError as exc:
        if doc is None:
            return [Problem(f"optimizer '{named.name}': {exc}", None)]
        return pydantic_problems(exc, strategy.options, doc, path,
                                 what=f"options of optimizer '{named.name}'")
    return []


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


@contextlib.contextmanager
def one_cpu_thread(device: Any) -> Iterator[None]:
    """Run the block on one CPU thread (the count is restored afterwards); no change on other
    devices or when torch already uses one thread.

    For steppers whose step is many tiny linear-algebra calls (per-core QRs, SVDs, small
    matrix products), where handing work to a second OpenMP thread costs more than it saves.

    Examples
    --------
    >>> import torch
    >>> with one_cpu_thread(torch.device("cpu")):
    ...     torch.get_num_threads()
    1
    """
    import torch

    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TorchStepper:
    """A :class:`Stepper` over a ``torch.optim.Optimizer``: forward, backward, ``step``.

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
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), out.detach()

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def describe(self) -> dict[str, Any]:
        return {}
