"""Declarations of tngraph's built-in training strategies: names, descriptions, options.

Every entry point of ``tngraph.optimizers`` and ``tngraph.distillers`` in tngraph's
``pyproject.toml`` names an object here. A declaration is light: its options model is what a
spec's ``train.optimizer`` / ``distill.strategy`` is checked against, and its ``create`` /
``objective`` is a :class:`~tngraph.registry.Deferred` reference to the implementation
(:mod:`tngraph_plugins.optimizers`, :mod:`tngraph_plugins.dmrg`,
:mod:`tngraph_plugins.riemannian`, :mod:`tngraph_plugins.distillers`), imported only when a run
uses the strategy. So validating a spec imports neither torch nor any implementation.

Examples
--------
>>> DMRG.options(max_rank=16).model_dump()
{'layers': None, 'layer_lr': None, 'max_rank': 16, 'cutoff': 1e-10, 'steps_per_bond': 1, \
'inner': 'adam'}
>>> RIEMANNIAN.options(layers="fc1, fc2").layers        # from the CLI: riemannian?layers=fc1,fc2
('fc1', 'fc2')
>>> ADAM.create
Deferred('tngraph_plugins.optimizers:create_adam')
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from tngraph.kinds import DistillStrategy, OptimizerStrategy
from tngraph.registry import Deferred

__all__ = [
    "ADAM", "DMRG", "LAYER", "RESPONSE", "RIEMANNIAN", "SGD", "TANGENT", "AdamOptions",
    "DMRGOptions", "LayerOptions", "PipelineLayerOptions", "ResponseOptions",
    "RiemannianOptions", "SGDOptions", "TangentOptions",
]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineLayerOptions(_Options):
    """Options of the chain strategies (``riemannian``, ``tangent``, ``dmrg``) on a pipeline.

    Attributes
    ----------
    layers
        The tensor-network layers the strategy trains (a list, or a comma-separated string as
        from ``--optimizer "riemannian?layers=fc1,fc2"``); default: every network layer whose
        network is a chain the strategy can train. Every other parameter of the pipeline is
        stepped by Adam with the run's ``lr`` and ``weight_decay``. Not for a single network.
    layer_lr
        Learning rate of those layers (default: the run's ``lr``); it follows the run's
        schedule like ``lr``. Only for a pipeline.

    Examples
    --------
    >>> PipelineLayerOptions(layers="fc1,fc2").layers
    ('fc1', 'fc2')
    """

    layers: tuple[str, ...] | None = None
    layer_lr: float | None = Field(default=None, gt=0)

    @field_validator("layers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if isinstance(value, (list, tuple)):
            if not value or any(not isinstance(v, str) or not v for v in value):
                raise ValueError("expected one or more layer names, e.g. fc1 or fc1,fc2")
            if len(set(value)) != len(value):
                raise ValueError(f"a layer is named twice in {list(value)}")
        return value


# ---------------------------------------------------------------------------------------------
# gradient optimizers from torch.optim


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


ADAM = OptimizerStrategy("adam", "Adam (torch.optim, fused); options betas, eps, amsgrad, "
                         "decoupled", AdamOptions,
                         Deferred("tngraph_plugins.optimizers:create_adam"))
SGD = OptimizerStrategy("sgd", "SGD with momentum (torch.optim); options momentum, nesterov, "
                        "dampening", SGDOptions, Deferred("tngraph_plugins.optimizers:create_sgd"))


# ---------------------------------------------------------------------------------------------
# two-site DMRG sweeps


class DMRGOptions(PipelineLayerOptions):
    """Options of ``dmrg`` (the learning rate and weight decay are the loop's ``lr`` /
    ``weight_decay``).

    Attributes
    ----------
    max_rank
        Largest bond dimension (TT-rank) the truncation keeps; ``max_bond``, its earlier name,
        is read as well.
    cutoff
        Largest relative discarded weight ``sum(dropped s^2) / sum(s^2)`` of a truncation.
    steps_per_bond
        Gradient steps (mini-batches) on a merged tensor before the sweep moves on.
    inner
        Update of the merged tensor: ``adam`` (moments reset at every bond; a per-entry step
        of about ``lr`` whatever the scale of the environments) or ``sgd`` (plain gradient
        step ``lr * grad``).

    Examples
    --------
    >>> DMRGOptions(max_rank=8).steps_per_bond
    1
    """

    max_rank: int = Field(default=32, ge=1,
                          validation_alias=AliasChoices("max_rank", "max_bond"))
    cutoff: float = Field(default=1e-10, ge=0, lt=1)
    steps_per_bond: int = Field(default=1, ge=1)
    inner: Literal["adam", "sgd"] = "adam"


DMRG = OptimizerStrategy(
    "dmrg", "two-site DMRG sweeps (Stoudenmire & Schwab 2016) with adaptive bond dimensions; "
    "options max_rank, cutoff, steps_per_bond, inner, layers, layer_lr", DMRGOptions,
    Deferred("tngraph_plugins.dmrg:create_stepper"))


# ---------------------------------------------------------------------------------------------
# fixed-rank manifold steps


class RiemannianOptions(PipelineLayerOptions):
    """Options of ``riemannian`` (``lr`` and ``weight_decay`` are train keys)."""

    #: heavy-ball momentum; the previous direction is transported by projection (0: none)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    #: cap on every TT-rank (default: keep the network's ranks)
    max_rank: int | None = Field(default=None, ge=1)


class TangentOptions(PipelineLayerOptions):
    """Options of ``tangent`` (``lr`` is the rotation angle per step, in radians)."""

    #: norm the network is kept at (default: its norm at the start)
    radius: float | None = Field(default=None, gt=0)
    #: cap on every TT-rank (default: keep the network's ranks)
    max_rank: int | None = Field(default=None, ge=1)


RIEMANNIAN = OptimizerStrategy(
    "riemannian", "Riemannian gradient descent on fixed-rank tensor trains (chain networks); "
    "options momentum, max_rank, layers, layer_lr", RiemannianOptions,
    Deferred("tngraph_plugins.riemannian:create_riemannian"))
TANGENT = OptimizerStrategy(
    "tangent", "tangent-space gradient steps of a fixed-norm tensor-train state, lr is the "
    "angle (chain networks); options radius, max_rank, layers, layer_lr", TangentOptions,
    Deferred("tngraph_plugins.riemannian:create_tangent"))


# ---------------------------------------------------------------------------------------------
# distillation


class ResponseOptions(_Options):
    """Options of ``response``."""

    #: softening temperature T of both distributions
    temperature: float = Field(default=4.0, gt=0)
    #: weight of the loss on the labels (0: the teacher only)
    alpha: float = Field(default=0.1, ge=0, le=1)


class LayerOptions(ResponseOptions):
    """Options of ``layer`` (plus those of ``response``, used after the layer fit)."""

    #: the last student layer of the part that is fitted (a pipeline layer name)
    student_layer: str
    #: the teacher layer whose outputs are the target (a pipeline layer name, or ``output``)
    teacher_layer: str
    #: epochs of the layer fit
    epochs: int = Field(default=5, gt=0)
    #: learning rate of the layer fit (Adam)
    lr: float = Field(default=1e-3, gt=0)
    #: always learn a linear projection (by default only when the sizes differ)
    projection: bool = False


RESPONSE = DistillStrategy(
    "response", "KL(teacher || student) of softened outputs x T^2, plus alpha x cross-entropy",
    ResponseOptions, Deferred("tngraph_plugins.distillers:response_objective"))
LAYER = DistillStrategy(
    "layer", "fit a student part to a teacher layer (MSE, learned projection), then response",
    LayerOptions, Deferred("tngraph_plugins.distillers:layer_objective"))
