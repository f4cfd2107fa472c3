"""The seven kinds of plugin: what an entry of each is, and the registry that holds them.

A spec chooses templates, feature maps, initialisers, layer types, datasets, optimizer strategies
and distillation strategies by name. Each kind has one :class:`~tngraph.registry.Registry` here,
filled from its entry-point group (tngraph's own built-ins are declared in ``pyproject.toml``
exactly like a third party's), and one ``register_* / get_* / list_*`` trio:

================  ========================  ===================================
kind              entry-point group         an entry is
================  ========================  ===================================
template          ``tngraph.templates``     :class:`Template`
feature map       ``tngraph.feature_maps``  :class:`FeatureMap`
initializer       ``tngraph.initializers``  a function (:data:`Initializer`)
layer             ``tngraph.layers``        :class:`LayerType`
dataset           ``tngraph.datasets``      :class:`DataSource`
optimizer         ``tngraph.optimizers``    :class:`OptimizerStrategy`
distiller         ``tngraph.distillers``    :class:`DistillStrategy`
================  ========================  ===================================

This module imports no implementation and no torch: validating a spec reads an entry's options
model from here, and the entry's heavy part (a stepper's ``create``, a layer's ``build``) may be
a :class:`~tngraph.registry.Deferred` reference that is imported only when it runs. The modules
that implement the built-ins (:mod:`tngraph.templates`, :mod:`tngraph.layers`,
:mod:`tngraph.optimizers`, ``tngraph_plugins``, ...) import this one, never the reverse.

Examples
--------
>>> [r.kind for r in registries()][:3]
['template', 'feature map', 'initializer']
>>> get_optimizer("adam").options().model_dump()["betas"]
(0.9, 0.999)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from tngraph.errors import PluginError, TNGraphError
from tngraph.registry import TNGRAPH, Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tngraph.data import Dataset
    from tngraph.train import Objective

Shape = tuple[int, ...]

# ---------------------------------------------------------------------------------------------
# templates


class TemplateOptions(BaseModel):
    """Base class of template option models (unknown options are errors).

    Strict like the raw form's dimensions: ``sites: "4"`` or ``phys_dim: true`` are mistakes,
    not 4 and 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class Template:
    """A named network template: an options model and a function expanding it into the raw
    network form (nodes, edges, inputs, outputs)."""

    name: str
    options: type[TemplateOptions]
    expand: Callable[[Any], dict[str, Any]]
    description: str = ""


class TemplateError(ValueError):
    """Raised by a template's ``expand`` for options that are individually valid but
    inconsistent together; ``option`` names the offending key for the error location."""

    def __init__(self, message: str, option: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.option = option
        self.hint = hint


# ---------------------------------------------------------------------------------------------
# feature maps and initialisers


@dataclass(frozen=True)
class FeatureMap:
    """A named local feature map: its output dimension and its elementwise function.

    Parameters
    ----------
    name : str
        Registered name, used in specs (``feature_map: trig``).
    dim : callable
        ``options -> int``, the length of the feature vector.
    apply : callable
        ``(x, options) -> phi(x)``, elementwise, ``(...) -> (..., dim)``.
    options : tuple of str
        Option names the map accepts.
    description : str
        One line for listings.
    leading_one : bool
        The first component is the constant 1 (lets the executor skip that multiply; a
        near-identity chain carries its identity on that component).
    unit_norm : bool
        ``|phi(x)| = 1`` for every input ``x`` (true for ``trig``; not for ``multilinear`` or
        ``poly``, whose norm ``sqrt(1 + x^2 + ...)`` grows with ``x``). Lets the ``mps`` template
        start the chain as a product of rotations, which preserves norms at any length.
    apply_into : callable, optional
        ``(x, options, out) -> None``: write ``phi(x)`` into ``out``, a tensor that ``apply``
        returned for an input of ``x``'s shape, dtype and device and that nothing else has
        written since (so constant components need not be written again). Lets inference
        keep the features of a batch in one tensor between calls instead of allocating it;
        a map without it is applied with ``apply``.

    Examples
    --------
    >>> get_feature_map("trig").unit_norm, get_feature_map("multilinear").unit_norm
    (True, False)
    """

    name: str
    dim: Callable[[Mapping[str, Any]], int]
    apply: Callable[[Any, Mapping[str, Any]], Any]
    options: tuple[str, ...] = ("scale",)
    description: str = ""
    #: the first component is the constant 1 (lets the executor skip that multiply)
    leading_one: bool = False
    #: the feature vector has Euclidean norm 1 for every input value
    unit_norm: bool = False
    #: ``(x, options, out)``: ``phi(x)`` written into a tensor ``apply`` made earlier
    apply_into: Callable[[Any, Mapping[str, Any], Any], None] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled by its registered name (its functions may be lambdas): a module holding it
        # unpickles wherever the same feature map is registered
        return (get_feature_map, (self.name,))

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse option names the map does not declare (PluginError naming the valid ones)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise PluginError(f"feature map '{self.name}' has no option '{unknown[0]}'; "
                              f"valid: {', '.join(self.options)}")


#: ``fn(shape, legs, options, generator) -> tensor`` (float64 on the CPU); an ``options``
#: attribute (a tuple of names) declares the options it reads
Initializer = Callable[[Sequence[int], Sequence[str], Mapping[str, Any], Any], Any]

# ---------------------------------------------------------------------------------------------
# layer types

#: the layer type of tensor networks (handled by the spec loader and the compiler)
NETWORK = "network"


class LayerError(TNGraphError):
    """A layer cannot take the shape it receives (message and hint are shown at the layer)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class LayerType:
    """A registered layer type.

    Attributes
    ----------
    name
        What ``type:`` says in the spec.
    description
        One line for listings.
    options
        Pydantic model of its options (``extra="forbid"``).
    shape
        ``(options, in_shape) -> out_shape`` for one example (no batch axis); raises LayerError.
    build
        ``(options, in_shape) -> torch.nn.Module`` acting on batches ``(batch, *in_shape)``
        (may be a :class:`~tngraph.registry.Deferred` reference).
    params
        ``(options, in_shape) -> int`` trainable parameters.
    flops
        ``(options, in_shape, out_shape) -> int`` floating-point operations per example.
    """

    name: str
    description: str
    options: type[BaseModel]
    shape: Callable[[Any, Shape], Shape]
    build: Callable[[Any, Shape], nn.Module]
    params: Callable[[Any, Shape], int] = lambda _o, _s: 0
    flops: Callable[[Any, Shape, Shape], int] = lambda _o, _i, out: math.prod(out)


# ---------------------------------------------------------------------------------------------
# datasets


@dataclass(frozen=True)
class DataRequest:
    """What a data source is asked to load: its path, options and the split settings."""

    name: str
    path: Path | None
    options: Mapping[str, Any]
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dataclass(frozen=True)
class DataSource:
    """A named way to load a :class:`~tngraph.data.Dataset` (an entry of the ``dataset``
    registry).

    ``load(request)`` returns the dataset; ``path`` says whether the spec must (``required``),
    may (``optional``) or must not (``none``) name a path; ``options`` lists the option names
    ``load`` reads (others are refused before it is called).
    """

    name: str
    load: Callable[[DataRequest], Dataset]
    path: Literal["required", "optional", "none"] = "none"
    options: tuple[str, ...] = ()
    description: str = ""
    #: shown with a missing path, e.g. ``a folder with the four MNIST IDX files``
    path_help: str = "a path"


# ---------------------------------------------------------------------------------------------
# optimizer strategies


class Stepper(Protocol):
    """One module being trained by one optimizer strategy.

    The training loop only talks to the stepper: ``step(x, objective)`` per mini-batch,
    ``set_lr`` per epoch, ``end_epoch``, ``state_dict`` / ``load_state_dict`` for checkpoints,
    and ``describe()`` for what the epoch line and the run summary show. A stepper may *replace*
    the module it trains (``stepper.module``): DMRG sweeps change bond dimensions.
    """

    @property
    def module(self) -> nn.Module:
        """The network as it is now (a strategy may rebuild it, e.g. with new bond dims)."""

    def step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update from one mini-batch; returns ``(loss, outputs)`` as computed before the update.

        ``objective(outputs) -> loss`` (a scalar). Raises
        :class:`~tngraph.optimizers.NonFiniteLoss` without changing anything when the loss is
        not finite.
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
    """What the training loop tells an optimizer strategy besides its own options."""

    lr: float
    weight_decay: float = 0.0
    #: ``classification`` or ``regression``
    task: str = "classification"


@dataclass(frozen=True)
class OptimizerStrategy:
    """A registered optimizer strategy (how one training step updates a network).

    Attributes
    ----------
    name
        Registered name (``train.optimizer`` / ``--optimizer``).
    description
        One line for ``tngraph plugins list`` and error messages.
    options
        Pydantic model of the strategy's options (``extra="forbid"``; defaults for all).
    create
        ``create(module, options, context) -> Stepper`` (may be a
        :class:`~tngraph.registry.Deferred` reference to the implementation).
    """

    name: str
    description: str
    options: type[BaseModel]
    create: Callable[[Any, Any, OptimizerContext], Stepper]


# ---------------------------------------------------------------------------------------------
# distillation strategies


@dataclass(frozen=True)
class DistillStrategy:
    """A registered distillation strategy.

    Attributes
    ----------
    name
        Registered name (``distill.strategy`` / ``--strategy``).
    description
        One line for listings.
    options
        Pydantic model of its options (``extra="forbid"``, defaults for all or required keys).
    objective
        ``objective(student, teacher, options) -> tngraph.train.Objective``: the loss of one
        mini-batch and an optional preparation phase (may be a
        :class:`~tngraph.registry.Deferred` reference).
    """

    name: str
    description: str
    options: type[BaseModel]
    objective: Callable[[Any, Any, Any], Objective]


# ---------------------------------------------------------------------------------------------
# the registries

TEMPLATES: Registry[Template] = Registry("template", "tngraph.templates", expects=Template,
                                         builtin=TNGRAPH)
FEATURE_MAPS: Registry[FeatureMap] = Registry("feature map", "tngraph.feature_maps",
                                              expects=FeatureMap, builtin=TNGRAPH)
INITIALIZERS: Registry[Initializer] = Registry("initializer", "tngraph.initializers",
                                               expects=callable, builtin=TNGRAPH)
LAYERS: Registry[LayerType] = Registry("layer", "tngraph.layers", expects=LayerType,
                                       builtin=TNGRAPH)
DATASETS: Registry[DataSource] = Registry("dataset", "tngraph.datasets", expects=DataSource,
                                          builtin=TNGRAPH)
OPTIMIZERS: Registry[OptimizerStrategy] = Registry("optimizer", "tngraph.optimizers",
                                                   expects=OptimizerStrategy, builtin=TNGRAPH)
DISTILLERS: Registry[DistillStrategy] = Registry("distiller", "tngraph.distillers",
                                                  expects=DistillStrategy, builtin=TNGRAPH)


def registries() -> list[Registry[Any]]:
    """Every registry of tngraph, in the order ``tngraph plugins list`` shows them."""
    return [TEMPLATES, FEATURE_MAPS, INITIALIZERS, LAYERS, DATASETS, OPTIMIZERS, DISTILLERS]


def register_template(template: Template, **kwargs: Any) -> None:
    """Register ``template`` under its name (a name can be registered once)."""
    TEMPLATES.register(template.name, template, **kwargs)


def get_template(name: str) -> Template:
    """The template called ``name`` (PluginError listing valid names if unknown)."""
    return TEMPLATES.get(name)


def list_templates() -> list[str]:
    """Names of all registered templates."""
    return TEMPLATES.list()


def register_feature_map(feature_map: FeatureMap, **kwargs: Any) -> None:
    """Register a feature map under ``feature_map.name``."""
    FEATURE_MAPS.register(feature_map.name, feature_map, **kwargs)


def get_feature_map(name: str) -> FeatureMap:
    """The feature map called ``name`` (PluginError listing valid names if unknown)."""
    return FEATURE_MAPS.get(name)


def list_feature_maps() -> list[str]:
    """Names of all registered feature maps."""
    return FEATURE_MAPS.list()


def register_initializer(name: str, fn: Initializer, **kwargs: Any) -> None:
    """Register ``fn`` as the initialiser ``name``."""
    INITIALIZERS.register(name, fn, **kwargs)


def get_initializer(name: str) -> Initializer:
    """The initialiser called ``name`` (PluginError listing valid names if unknown)."""
    return INITIALIZERS.get(name)


def list_initializers() -> list[str]:
    """Names of all registered initialisers."""
    return INITIALIZERS.list()


def register_layer(layer: LayerType, **kwargs: Any) -> None:
    """Register a layer type under ``layer.name`` (``network`` is reserved)."""
    if layer.name == NETWORK:
        raise PluginError("layer type 'network' is reserved for tensor networks")
    LAYERS.register(layer.name, layer, **kwargs)


def get_layer(name: str) -> LayerType:
    """The layer type called ``name``; unknown names list the valid ones."""
    if name == NETWORK:
        raise PluginError("'network' layers are tensor networks, not a registered layer type")
    return LAYERS.get(name)


def list_layers() -> list[str]:
    """Every layer type a spec may name (``network`` included)."""
    return sorted([*LAYERS.list(), NETWORK])


def register_dataset(source: DataSource, **kwargs: Any) -> None:
    """Register a data source under ``source.name`` (an identifier; ``replace=True`` overrides).

    Examples
    --------
    >>> def load_xor(request):                                     # doctest: +SKIP
    ...     ...                                                    # build and return a Dataset
    >>> register_dataset(DataSource("xor", load_xor))              # doctest: +SKIP
    """
    DATASETS.register(source.name, source, **kwargs)


def list_datasets() -> list[str]:
    """Names of all registered data sources."""
    return DATASETS.list()


def register_optimizer(strategy: OptimizerStrategy, **kwargs: Any) -> None:
    """Register ``strategy`` under ``strategy.name`` (a second registration is refused).

    Examples
    --------
    >>> register_optimizer(my_strategy)            # doctest: +SKIP
    """
    OPTIMIZERS.register(strategy.name, strategy, **kwargs)


def get_optimizer(name: str) -> OptimizerStrategy:
    """The optimizer strategy called ``name``; unknown names list the valid ones."""
    return OPTIMIZERS.get(name)


def list_optimizers() -> list[str]:
    """Names of the working optimizer strategies."""
    return OPTIMIZERS.list()


def register_distiller(strategy: DistillStrategy, **kwargs: Any) -> None:
    """Register ``strategy`` under ``strategy.name`` (a second registration is refused)."""
    DISTILLERS.register(strategy.name, strategy, **kwargs)


def get_distiller(name: str) -> DistillStrategy:
    """The distillation strategy called ``name``; unknown names list the valid ones."""
    return DISTILLERS.get(name)


def list_distillers() -> list[str]:
    """Names of the working distillation strategies."""
    return DISTILLERS.list()
