"""The torch modules of tngraph's own pipeline layers (``flatten``, ``reshape``, ``permute``,
``feature_map``) and the builds that make them.

:mod:`tngraph.layers` declares these layer types without importing torch; their ``build`` is a
:class:`~tngraph.registry.Deferred` reference to a function here, imported when a pipeline is
compiled.

Examples
--------
>>> import torch
>>> from tngraph.layers import ReshapeOptions
>>> build_reshape(ReshapeOptions(shape=(2, -1)), (6,))(torch.zeros(5, 6)).shape
torch.Size([5, 2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tngraph.kinds import FeatureMap, Shape
from tngraph.layers import (
    FeatureMapOptions,
    NoOptions,
    PermuteOptions,
    ReshapeOptions,
    feature_map_of,
    reshape_shape,
)


class Reshape(nn.Module):
    """Reshape every example to ``shape`` (the batch axis stays)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Permute(nn.Module):
    """Permute the axes of every example (the batch axis stays first)."""

    def __init__(self, dims: tuple[int, ...]):
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, *(d + 1 for d in self.dims))

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class FeatureMapLayer(nn.Module):
    """A local feature map as a layer: every entry ``x`` becomes the vector ``phi(x)``,
    ``(batch, *shape) -> (batch, *shape, dim)``."""

    def __init__(self, feature_map: FeatureMap, options: Mapping[str, Any]):
        super().__init__()
        self.feature_map = feature_map
        self.options = dict(options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map.apply(x, self.options)

    def extra_repr(self) -> str:
        return f"{self.feature_map.name}, options={self.options}"


def build_flatten(options: NoOptions, shape: Shape) -> nn.Module:
    """The module of a ``flatten`` layer: one axis per example."""
    return Reshape((math.prod(shape),))


def build_reshape(options: ReshapeOptions, shape: Shape) -> nn.Module:
    """The module of a ``reshape`` layer."""
    return Reshape(reshape_shape(options, shape))


def build_permute(options: PermuteOptions, shape: Shape) -> nn.Module:
    """The module of a ``permute`` layer."""
    return Permute(options.dims)


def build_feature_map(options: FeatureMapOptions, shape: Shape) -> nn.Module:
    """The module of a ``feature_map`` layer."""
    fmap, fmap_options = feature_map_of(options)
    return FeatureMapLayer(fmap, fmap_options)
