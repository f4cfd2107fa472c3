"""The optimizer toolkit: what steppers share (``TorchStepper``, the parameter buffer, the
learning-rate schedule), for the strategies that say how one training step updates a network
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

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    "OPTIMIZERS", "NonFiniteLoss", "OptimizerContext", "OptimizerStrategy", "Stepper",
    "TorchStepper", "check_optimizer", "get_optimizer", "learning_rate", "list_optimizers",
    "one_cpu_thread", "optimizer_options", "register_optimizer",
]


class NonFiniteLoss(TNGraphError):
    """A step met a NaN or infinite loss; no parameter was changed."""

    def __init__(self, value: float):
        super().__init__(f"the loss became {value}")
        self.value = value


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


#: ``torch.optim`` classes whose update is elementwise (no per-tensor norms, shapes or factored
#: statistics): stepping the concatenation of parameters is stepping each of them
ELEMENTWISE_OPTIMIZERS = ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop",
                          "Adagrad", "Adadelta", "ASGD", "Rprop")


class ParameterBuffer:
    """Parameters re-seated as views of one contiguous buffer per device and dtype, so that an
    elementwise optimizer steps each buffer as one tensor.

    A tensor network keeps one parameter per core (64 for a 64-site MPS); an optimizer's step
    costs a few microseconds of bookkeeping per tensor, as much as the arithmetic of small
    cores. Here each trainable parameter's data becomes a slice of a flat buffer (the parameter
    objects, their names, shapes and ``state_dict`` stay as they were) and :attr:`flats` holds
    one ``nn.Parameter`` per buffer for the optimizer. After ``backward``, :meth:`gather_grads`
    concatenates the parameters' gradients into the buffers' ``.grad`` (one copy); the
    optimizer's in-place update of a buffer is the update of its members.

    Parameters that do not require gradients, and sparse ones, are left alone. The members'
    ``.grad`` are cleared by :meth:`clear_grads`; read them between ``backward`` and the step.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> buffer = ParameterBuffer(model.parameters())
    >>> [tuple(f.shape) for f in buffer.flats]
    [(8,)]
    >>> optimizer = torch.optim.SGD(buffer.flats, lr=0.1)
    >>> model(torch.ones(4, 3)).sum().backward()
    >>> buffer.gather_grads()
    True
    >>> optimizer.step()
    >>> bool(torch.allclose(model.bias, buffer.flats[0][6:]))
    True
    """

    def __init__(self, params: Iterable[torch.Tensor]):
        import torch
        from torch import nn

        #: every parameter, in the given order (the index space of a per-parameter optimizer)
        self.params: list[torch.Tensor] = list(params)
        groups: dict[tuple[Any, Any], list[int]] = {}
        for i, p in enumerate(self.params):
            if p.requires_grad and p.layout == torch.strided:
                groups.setdefault((p.device, p.dtype), []).append(i)
        #: indices (into :attr:`params`) of each buffer's members, in buffer order
        self.members: list[tuple[int, ...]] = []
        #: one flat parameter per buffer (what the optimizer steps)
        self.flats: list[nn.Parameter] = []
        #: ``(offset, numel)`` of each parameter in its buffer
        self.slots: dict[int, tuple[int, int]] = {}
        for (device, dtype), indices in groups.items():
            total = sum(self.params[i].numel() for i in indices)
            flat = torch.empty(total, device=device, dtype=dtype)
            offset = 0
            with torch.no_grad():
                for i in indices:
                    p, n = self.params[i], self.params[i].numel()
                    flat[offset:offset + n].copy_(p.reshape(-1))
                    p.data = flat[offset:offset + n].view(p.shape)
                    self.slots[i] = (offset, n)
                    offset += n
            self.members.append(tuple(indices))
            self.flats.append(nn.Parameter(flat))
        self._member_params = [[self.params[i] for i in m] for m in self.members]
        self._addresses = [[p.data_ptr() for p in params] for params in self._member_params]

    def intact(self) -> bool:
        """Whether every member still views its slot (``.data`` replaced or ``.to()`` after
        the buffer was made break that)."""
        return all([p.data_ptr() for p in params] == addresses
                   for params, addresses in zip(self._member_params, self._addresses))

    def gather_grads(self) -> bool:
        """Set each buffer's ``.grad`` to its members' gradients, concatenated (None where no
        member has one). False, with nothing set, when some but not all members of a buffer
        have a gradient: an elementwise optimizer would then move the others (momentum), which
        a per-parameter one does not -- step :attr:`params` one by one instead."""
        gathered = []
        for params in self._member_params:
            grads = [p.grad for p in params]
            missing = sum(g is None for g in grads)
            if missing == len(grads):
                gathered.append(None)
                continue
            if missing:
                return False
            try:
                gathered.append(_flatten(grads))
            except RuntimeError:            # sparse gradients: no flat form
                return False
        for flat, grad in zip(self.flats, gathered):
            flat.grad = grad
        return True

    def clear_grads(self) -> None:
        """Set the members' and the buffers' ``.grad`` to None."""
        for params in self._member_params:
            for p in params:
                p.grad = None
        for flat in self.flats:
            flat.grad = None

    def per_parameter_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """An optimizer ``state_dict`` over :attr:`flats` (one param group) as the same
        optimizer over :attr:`params` would have it: per-buffer statistics sliced per member."""
        groups = state["param_groups"]
        if len(groups) != 1:
            raise ValueError("a buffer optimizer has one param group")
        per_param: dict[int, dict[str, Any]] = {}
        for b, members in enumerate(self.members):
            flat_state = state["state"].get(groups[0]["params"][b])
            if not flat_state:
                continue
            numel = self.flats[b].numel()
            for i in members:
                offset, n = self.slots[i]
                shape = self.params[i].shape
                per_param[i] = {
                    key: (value[offset:offset + n].view(shape).clone()
                          if _is_flat_statistic(value, numel) else _copied(value))
                    for key, value in flat_state.items()}
        return {"state": per_param,
                "param_groups": [{**groups[0], "params": list(range(len(self.params)))}]}

    def buffer_state(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """The inverse of :meth:`per_parameter_state`, or None where the per-parameter state
        has no buffer form (members of one buffer at different steps, or some without state:
        their updates are not the same elementwise function)."""
        import torch

        groups = state["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            return None
        ids = groups[0]["params"]
        flat_states: dict[int, dict[str, Any]] = {}
        for b, members in enumerate(self.members):
            states = [state["state"].get(ids[i]) for i in members]
            if not any(states):
                continue
            if not all(states) or any(s.keys() != states[0].keys() for s in states):
                return None
            merged: dict[str, Any] = {}
            for key, first in states[0].items():
                values = [s[key] for s in states]
                if all(isinstance(v, torch.Tensor) and v.shape == self.params[i].shape
                       and v.dim() > 0 for v, i in zip(values, members)):
                    merged[key] = torch.cat([v.reshape(-1) for v in values])
                elif all(_same(v, first) for v in values):
                    merged[key] = _copied(first)
                else:
                    return None
            flat_states[b] = merged
        return {"state": flat_states,
                "param_groups": [{**groups[0], "params": list(range(len(self.flats)))}]}


def _owners(module: nn.Module, params: Sequence[torch.Tensor]) -> list[tuple[dict[str, Any], str]]:
    """For each of ``module``'s ``params``: the ``_parameters`` dictionary and the name it is
    registered under (the first place, for a shared parameter)."""
    where: dict[int, tuple[dict[str, Any], str]] = {}
    for sub in module.modules():
        for name, p in sub._parameters.items():
            if p is not None:
                where.setdefault(id(p), (sub._parameters, name))
    return [where[id(p)] for p in params]


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors, each flattened, concatenated (one C++ call for the lot where torch has it:
    a Python list of per-tensor views costs as much as the copy for small cores)."""
    import torch

    flatten = getattr(torch._C._nn, "flatten_dense_tensors", None)
    if flatten is not None:
        return flatten(tensors)
    return torch.cat([t.reshape(-1) for t in tensors])


def _is_flat_statistic(value: Any, numel: int) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == numel


def _copied(value: Any) -> Any:
    import torch

    return value.clone() if isinstance(value, torch.Tensor) else value


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    return bool(a == b)


class TorchStepper:
    """A :class:`Stepper` over a ``torch.optim.Optimizer``: forward, backward, ``step``.

    Built by :meth:`over_buffer`, an elementwise optimizer steps the module's parameters as
    one :class:`ParameterBuffer` per device and dtype (the same update, one tensor per buffer
    instead of one per core); :meth:`state_dict` is then written per parameter, as a plain
    optimizer over ``module.parameters()`` would write it, so checkpoints do not depend on it.
    A step where only some members of a buffer have gradients switches, for good and without
    loss, to stepping the parameters one by one.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> stepper = TorchStepper(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> loss, out = stepper.step(torch.ones(4, 3), lambda out: (out ** 2).mean())
    >>> out.shape
    torch.Size([4, 1])
    >>> stepper = TorchStepper.over_buffer(model, torch.optim.Adam, lr=0.01)
    >>> len(stepper.optimizer.param_groups[0]["params"])      # weight and bias, one buffer
    1
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                 buffer: ParameterBuffer | None = None):
        self._module = module
        self.optimizer = optimizer
        #: clip the global norm of the gradients to this before each step (None: no clipping;
        #: the training option ``grad_clip`` sets it on any stepper that has this attribute)
        self.max_grad_norm: float | None = None
        #: the buffer that ``optimizer`` steps, or None (it steps the parameters themselves)
        self.buffer = buffer
        self._options: dict[str, Any] = {}      # how ``optimizer`` was made (over_buffer)
        #: where each buffered parameter is registered (its module's ``_parameters``, name)
        self._owners = _owners(module, buffer.params) if buffer is not None else []

    @classmethod
    def over_buffer(cls, module: nn.Module, optimizer_class: type[torch.optim.Optimizer],
                    **options: Any) -> TorchStepper:
        """A stepper whose ``optimizer_class(..., **options)`` steps ``module``'s parameters
        through a :class:`ParameterBuffer` when the update is elementwise
        (:data:`ELEMENTWISE_OPTIMIZERS`), else the parameters themselves."""
        params = list(module.parameters())
        if optimizer_class.__name__ not in ELEMENTWISE_OPTIMIZERS or \
                not any(p.requires_grad for p in params):
            return cls(module, optimizer_class(params, **options))
        buffer = ParameterBuffer(params)
        stepper = cls(module, optimizer_class(buffer.flats, **options), buffer)
        stepper._options = options
        return stepper

    @property
    def module(self) -> nn.Module:
        return self._module

    def track_submodules(self) -> None:
        """Look the parameters up again where the module now registers them: call it after
        swapping submodules that keep the same parameters (``SyncBatchNorm`` conversion), so
        that a later ``.to()`` that replaces parameter objects is still noticed."""
        if self.buffer is not None:
            self._owners = _owners(self._module, self.buffer.params)

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
        if self.buffer is not None:
            self.buffer.clear_grads()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def update(self) -> None:
        """The optimizer's step from the gradients of the last ``backward``."""
        if self.buffer is not None:
            if not self.buffer.intact() or self._parameters_replaced():
                self._reseat()
            if not self.buffer.gather_grads():
                self._per_parameter()
        if self.max_grad_norm is not None:     # one norm over all: buffer or parameters
            from torch.nn.utils import clip_grad_norm_

            clip_grad_norm_(
                [p for group in self.optimizer.param_groups for p in group["params"]],
                self.max_grad_norm)
        self.optimizer.step()

    def _parameters_replaced(self) -> bool:
        """Whether the module holds other parameter objects than the buffer's: ``.to()`` makes
        new ones where the tensor types differ (e.g. to ``meta``), or always under
        ``torch.__future__.set_overwrite_module_params_on_conversion(True)``. (One dictionary
        lookup per parameter: walking ``module.parameters()`` at every step costs 5x more.)"""
        assert self.buffer is not None
        return any(registry.get(name) is not p
                   for (registry, name), p in zip(self._owners, self.buffer.params))

    def _reseat(self) -> None:
        """A new buffer where the parameters moved (``.to()``, ``.data`` replaced, parameter
        objects replaced), statistics carried over (they are kept per parameter index)."""
        assert self.buffer is not None
        state = self.state_dict()
        params = list(self._module.parameters())
        grads = [p.grad for p in params]
        self.buffer = ParameterBuffer(params)
        self._owners = _owners(self._module, params)
        for p, grad in zip(self.buffer.params, grads):
            p.grad = grad
        self.optimizer = type(self.optimizer)(self.buffer.flats, **self._options)
        self.load_state_dict(state)

    def _per_parameter(self) -> None:
        """Step the parameters one by one from now on, statistics carried over."""
        assert self.buffer is not None
        state = self.state_dict()["optimizer"]
        for flat in self.buffer.flats:
            flat.grad = None
        self.optimizer = type(self.optimizer)(self.buffer.params, **self._options)
        self.optimizer.load_state_dict(state)
        self.buffer = None

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        state = self.optimizer.state_dict()
        if self.buffer is not None:
            state = self.buffer.per_parameter_state(state)
        return {"optimizer": state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        optimizer_state = state["optimizer"]
        if self.buffer is not None:
            merged = self.buffer.buffer_state(optimizer_state)
            if merged is None:
                self._per_parameter()
            else:
                optimizer_state = merged
        self.optimizer.load_state_dict(optimizer_state)

    def describe(self) -> dict[str, Any]:
        return {}
