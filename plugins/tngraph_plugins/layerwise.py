"""Chain strategies (``riemannian``, ``tangent``, ``dmrg``) on the tensor-network layers of a
pipeline, Adam on every other parameter.

A pipeline (``models/cnn_tt.yaml``: convolutions, then a TT-layer ``fc1``, then a dense ``fc2``)
is trained by one :class:`LayerwiseStepper`. Per step (one mini-batch):

1. each selected layer's strategy puts a *stand-in* in the layer's place: ``riemannian`` /
   ``tangent`` the doubled-rank network whose gradient is the Riemannian gradient, ``dmrg`` the
   chain's outputs through the merged tensor of its current bond;
2. one forward pass of the pipeline and one backward pass give the gradients of the stand-ins'
   tensors and of every other parameter (convolutions, batch norms, biases, dense layers);
3. only when the loss and every layer's direction are finite, each layer takes its own step
   (retraction to its fixed ranks, or the DMRG split) and Adam steps the rest, with the run's
   ``lr`` and ``weight_decay``; the layers use ``layer_lr`` (default the run's ``lr``), on the
   same schedule.

Which layers: the strategy's ``layers`` option, or by default every network layer whose network
the strategy can train (an open chain: TT-layers, MPS; ``dmrg`` also needs one data-port copy
per site). A name that is not a layer, a layer that is not a tensor network, or a network the
strategy cannot train is refused with a :class:`LayerChoiceError` naming it and the valid
choices (CLI exit code 2). The checkpointed state holds each layer's state and Adam's, so
``--resume`` continues exactly.

Examples
--------
>>> import tngraph
>>> from tngraph.optimizers import get_optimizer, OptimizerContext
>>> pipeline = tngraph.compile("models/cnn_tt.yaml", cache=False)
>>> strategy = get_optimizer("riemannian")
>>> stepper = strategy.create(pipeline, strategy.options(), OptimizerContext(lr=0.003))
>>> stepper.describe()["layers"], stepper.describe()["adam"]
(['fc1'], 'conv1, norm1, conv2, norm2, fc1.bias, fc2')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from tngraph.compiler import Pipeline, TNModule
from tngraph.errors import TNGraphError, did_you_mean
from tngraph.optimizers import NonFiniteLoss, OptimizerContext, TorchStepper
from tngraph.spec import load_spec
from tngraph.yamlio import dump_yaml
from tngraph_plugins.chain import ChainError

if TYPE_CHECKING:
    from tngraph_plugins.strategies import PipelineLayerOptions

__all__ = ["LayerChoiceError", "LayerPart", "LayerwiseStepper", "OpenStep", "for_pipeline",
           "select_layers", "single_network_only"]


class LayerChoiceError(TNGraphError):
    """The ``layers`` of a chain strategy name something it cannot train (the message says
    what, where, and the valid choices)."""


@dataclass(frozen=True)
class OpenStep:
    """One layer's part of a step: the module run in its place, the tensors whose gradients it
    needs, and what it keeps for :meth:`LayerPart.check_step`."""

    stand_in: nn.Module
    tensors: list[torch.Tensor]
    token: Any


class LayerPart(Protocol):
    """What :class:`LayerwiseStepper` needs of a strategy's stepper of one network layer."""

    @property
    def module(self) -> nn.Module: ...

    def open_step(self) -> OpenStep: ...

    def check_step(self, token: Any, grads: Sequence[torch.Tensor | None]) -> Any: ...

    def commit_step(self, update: Any) -> None: ...

    def set_lr(self, lr: float) -> None: ...

    def end_epoch(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def single_network_only(module: Any, options: PipelineLayerOptions, strategy: str) -> None:
    """Refuse ``layers`` / ``layer_lr`` for a single network (they select pipeline layers).

    Examples
    --------
    >>> import tngraph
    >>> from tngraph_plugins.strategies import RiemannianOptions
    >>> module = tngraph.compile("models/mps.yaml", cache=False)
    >>> single_network_only(module, RiemannianOptions(layers="A0"), "riemannian")
    Traceback (most recent call last):
    tngraph_plugins.layerwise.LayerChoiceError: optimizer riemannian: option layers (A0) \
selects layers of a pipeline, but 'mps' is a single network, trained as one chain; drop layers
    """
    for key in ("layers", "layer_lr"):
        value = getattr(options, key)
        if value is not None:
            shown = ",".join(value) if key == "layers" else f"{value:g}"
            name = getattr(getattr(module, "spec", None), "name", type(module).__name__)
            raise LayerChoiceError(
                f"optimizer {strategy}: option {key} ({shown}) selects layers of a pipeline, "
                f"but '{name}' is a single network, trained as one chain; drop {key}"
                + ("" if key == "layers" else " (the run's lr is the step)"))


def _layer_type(pipeline: Pipeline, name: str) -> str:
    for layer in pipeline.spec.layers or ():
        if layer.name == name:
            return str(layer.type)
    return type(pipeline.layers[name]).__name__


def select_layers(pipeline: Pipeline, requested: Sequence[str] | None, strategy: str,
                  fits: Callable[[TNModule], object]) -> list[str]:
    """The network layers of ``pipeline`` that ``strategy`` trains: ``requested``, each
    checked, or every network layer for which ``fits(layer)`` raises no ``ChainError``.

    Raises
    ------
    LayerChoiceError
        A requested name that is not a layer, not a network layer, or a network the strategy
        cannot train (with ``fits``' reason); or no layer to train at all.
    """
    networks = pipeline.networks()
    reasons: dict[str, str] = {}
    for name, layer in networks.items():
        try:
            fits(layer)
        except ChainError as exc:
            reasons[name] = str(exc)
    valid = [n for n in networks if n not in reasons]
    where = f"optimizer {strategy}: pipeline '{pipeline.spec.name}'"
    kind = ("an MPS-like chain fed site by site (template mps with input)" if strategy == "dmrg"
            else "a chain (TT-layers, MPS)")
    trains = (f"{strategy} trains the tensor-network layers of a pipeline whose network is "
              f"{kind}; the other parameters are stepped by Adam")
    others = ("riemannian or tangent (any chain), or adam" if strategy == "dmrg"
              else "adam or sgd")
    if requested is None:
        if valid:
            return valid
        if not networks:
            raise LayerChoiceError(f"{where} has no tensor-network layer; {trains}. Train it "
                                   f"with {others}")
        why = "; ".join(f"layer '{n}': {reasons[n]}" for n in networks)
        raise LayerChoiceError(f"{where} has no tensor-network layer that {strategy} can "
                               f"train ({why}); {trains}. Train it with {others}")
    valid_choices = did_you_mean if valid else (lambda _n, _v: "no layer of it can be trained "
                                                f"by {strategy}")
    for name in requested:
        if name not in pipeline.layers:
            raise LayerChoiceError(f"{where} has no layer '{name}' (option layers); "
                                   f"{valid_choices(name, valid)}")
        if name not in networks:
            raise LayerChoiceError(
                f"{where}: layer '{name}' (option layers) is a {_layer_type(pipeline, name)} "
                f"layer, not a tensor network; {trains}; {valid_choices(name, valid)}")
        if name in reasons:
            raise LayerChoiceError(
                f"{where}: layer '{name}' (option layers) cannot be trained by {strategy}: "
                f"{reasons[name]}; {valid_choices(name, valid)}")
    return list(requested)


def for_pipeline(pipeline: Pipeline, options: PipelineLayerOptions, context: OptimizerContext,
                 strategy: str, fits: Callable[[TNModule], object],
                 make: Callable[[TNModule, float], LayerPart]) -> LayerwiseStepper:
    """The :class:`LayerwiseStepper` of ``strategy`` over ``pipeline``: ``make(layer, lr)`` is
    the strategy's stepper of one layer (with the layers' learning rate)."""
    names = select_layers(pipeline, options.layers, strategy, fits)
    layer_lr = options.layer_lr if options.layer_lr is not None else context.lr
    parts = {name: make(pipeline.layers[name], layer_lr) for name in names}
    return LayerwiseStepper(pipeline, parts, context, layer_lr)


class LayerwiseStepper:
    """A :class:`~tngraph.optimizers.Stepper` of a pipeline: the ``parts`` (layer name ->
    the strategy's stepper of that network layer) train their layers, Adam (``torch.optim``,
    with ``context``'s ``lr`` and ``weight_decay``) every other parameter. See the module
    docstring.

    The parts' modules are the pipeline's layers; a part that replaces its module (``dmrg``
    changing bond dimensions, or ranks reduced at the start) has it put in the pipeline, with
    the old module's other parameters (the bias) kept, and the pipeline's spec updated, so that
    checkpoints record the new shapes.
    """

    def __init__(self, pipeline: Pipeline, parts: Mapping[str, LayerPart],
                 context: OptimizerContext, layer_lr: float):
        self._pipeline = pipeline
        self.parts = dict(parts)
        self.base_lr = float(context.lr)
        self.layer_lr = float(layer_lr)
        self._sync(keep_parameters=False)
        trained = {id(p) for name in self.parts
                   for p in self._pipeline.layers[name].tensors.parameters()}
        named = [(n, p) for n, p in pipeline.named_parameters()
                 if id(p) not in trained and p.requires_grad]
        #: names of the parameters Adam steps (``layers.conv1.weight``, ...)
        self.rest_names = [n for n, _ in named]
        self._rest = [p for _, p in named]
        self.adam: TorchStepper | None = None
        if self._rest:
            fused = True if all(p.device.type in ("cpu", "cuda") for p in self._rest) else None
            self.adam = TorchStepper(pipeline, torch.optim.Adam(
                self._rest, lr=context.lr, weight_decay=context.weight_decay, fused=fused))

    @property
    def module(self) -> Pipeline:
        """The pipeline, its network layers up to date."""
        self._sync(keep_parameters=True)
        return self._pipeline

    def step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        pipeline = self._pipeline
        opened = {name: part.open_step() for name, part in self.parts.items()}
        originals = {name: pipeline.layers[name] for name in opened}
        try:
            for name, step in opened.items():
                pipeline.layers[name] = step.stand_in
            out = pipeline(x)
        finally:
            for name, layer in originals.items():
                pipeline.layers[name] = layer
        loss = objective(out)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteLoss(float(loss.detach()))
        tensors = [t for step in opened.values() for t in step.tensors]
        grads = torch.autograd.grad(loss, tensors + self._rest, allow_unused=True)
        directions = {}
        start = 0
        for name, step in opened.items():     # every check before any change
            stop = start + len(step.tensors)
            directions[name] = self.parts[name].check_step(step.token, grads[start:stop])
            start = stop
        for name, direction in directions.items():
            self.parts[name].commit_step(direction)
        if self.adam is not None:
            for p, g in zip(self._rest, grads[start:]):
                p.grad = g
            self.adam.update()
            for p in self._rest:
                p.grad = None
        return loss.detach(), out.detach()

    def set_lr(self, lr: float) -> None:
        if self.adam is not None:
            self.adam.set_lr(lr)
        scale = lr / self.base_lr if self.base_lr else 1.0
        for part in self.parts.values():
            part.set_lr(self.layer_lr * scale)

    def end_epoch(self) -> None:
        for part in self.parts.values():
            part.end_epoch()
        self._sync(keep_parameters=True)

    def state_dict(self) -> dict[str, Any]:
        return {"layers": {name: part.state_dict() for name, part in self.parts.items()},
                "adam": None if self.adam is None else self.adam.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = list(state.get("layers", {}))
        if saved != list(self.parts):
            raise LayerChoiceError(
                f"the saved optimizer state trains the layers {', '.join(saved) or 'none'} of "
                f"pipeline '{self._pipeline.spec.name}', this run {', '.join(self.parts)}; "
                "resume with the run's own optimizer options")
        for name, part in self.parts.items():
            part.load_state_dict(state["layers"][name])
        if self.adam is not None and state.get("adam") is not None:
            self.adam.load_state_dict(state["adam"])
        self._sync(keep_parameters=True)

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"layers": list(self.parts)}
        for name, part in self.parts.items():
            facts.update({f"{name}.{key}": value for key, value in part.describe().items()})
        owners: list[str] = []
        for full in self.rest_names:
            _, layer, *rest = full.split(".")
            shown = f"{layer}.{rest[-1]}" if layer in self.parts else layer
            if shown not in owners:
                owners.append(shown)
        facts["adam"] = ", ".join(owners) if owners else "none"
        return facts

    def _sync(self, keep_parameters: bool) -> None:
        """Put each part's module in the pipeline where it replaced the layer's (keeping the
        pipeline's parameter objects outside the chain, which Adam steps, when
        ``keep_parameters``) and record its network in the pipeline's spec."""
        changed = {}
        for name, part in self.parts.items():
            new, old = part.module, self._pipeline.layers[name]
            if new is old:
                continue
            if keep_parameters:
                for key, p in old.named_parameters():
                    if not key.startswith("tensors."):
                        owner, _, attr = key.rpartition(".")
                        setattr(new.get_submodule(owner), attr, p)
            self._pipeline.layers[name] = new
            changed[name] = new
        if changed:
            raw = self._pipeline.spec.to_raw()
            for layer in raw["layers"]:
                if layer.get("name") in changed:
                    layer["network"] = changed[layer["name"]].spec.to_raw()["network"]
            self._pipeline.spec = load_spec(dump_yaml(raw))
