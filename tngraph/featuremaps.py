"""Local feature maps: each raw input value becomes a small vector (registry ``feature map``).

A feature map is chosen by name on a data port (``feature_map: multilinear``) and is applied
elementwise, ``(..., ) -> (..., dim)``. Built-ins (entry points of ``tngraph.feature_maps``; the
:class:`~tngraph.kinds.FeatureMap` record and the registry live in :mod:`tngraph.kinds`):

* ``multilinear``: phi(x) = [1, x] (dim 2), the map of Novikov-style and Glasser-style models;
* ``trig``: phi(x) = [cos(pi x / 2), sin(pi x / 2)] (dim 2), Stoudenmire & Schwab (2016);
* ``poly``: phi(x) = [1, x, ..., x^degree] (dim ``degree + 1``).

Every map takes ``scale: true`` to clamp inputs to [0, 1] first. This module does not import
torch at import time: ``dim`` is needed by validation, which stays torch-free.

Two flags describe a map to the code that initialises the network around it: ``leading_one``
(the first component is the constant 1: ``multilinear``, ``poly``) and ``unit_norm`` (the vector
has Euclidean norm 1 for every input: ``trig``, since cos^2 + sin^2 = 1). The ``mps`` template
starts a chain fed by a unit-norm map as a product of rotations (see
:func:`tngraph.initializers.identity`), which keeps every chain length at unit scale.

Examples
--------
>>> import torch
>>> get_feature_map("multilinear").apply(torch.tensor([0.5]), {})
tensor([[1.0000, 0.5000]])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tngraph.errors import PluginError
from tngraph.kinds import (
    FEATURE_MAPS,
    FeatureMap,
    get_feature_map,
    list_feature_maps,
    register_feature_map,
)

__all__ = ["FEATURE_MAPS", "MULTILINEAR", "POLY", "TRIG", "FeatureMap", "get_feature_map",
           "list_feature_maps", "register_feature_map"]


def _prepare(x: Any, options: Mapping[str, Any]) -> Any:
    return x.clamp(0.0, 1.0) if options.get("scale") else x


def _multilinear(x: Any, options: Mapping[str, Any]) -> Any:
    import torch

    x = _prepare(x, options)
    # one kernel (pad with the constant 1) instead of ones_like + stack
    return torch.nn.functional.pad(x.unsqueeze(-1), (1, 0), value=1.0)


def _multilinear_into(x: Any, options: Mapping[str, Any], out: Any) -> None:
    out.select(-1, 1).copy_(_prepare(x, options))      # (the ones stay from the first call)


def _trig(x: Any, options: Mapping[str, Any]) -> Any:
    import torch

    x = _prepare(x, options) * (math.pi / 2)
    return torch.stack([torch.cos(x), torch.sin(x)], dim=-1)


def _trig_into(x: Any, options: Mapping[str, Any], out: Any) -> None:
    import torch

    x = _prepare(x, options) * (math.pi / 2)
    torch.cos(x, out=out.select(-1, 0))
    torch.sin(x, out=out.select(-1, 1))


def _poly_degree(options: Mapping[str, Any]) -> int:
    degree = options.get("degree", 2)
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise PluginError(f"feature map 'poly' needs an integer degree >= 1, got {degree!r}")
    return degree


def _poly(x: Any, options: Mapping[str, Any]) -> Any:
    import torch

    x = _prepare(x, options)
    powers = [torch.ones_like(x)]
    for _ in range(_poly_degree(options)):
        powers.append(powers[-1] * x)
    return torch.stack(powers, dim=-1)


def _poly_into(x: Any, options: Mapping[str, Any], out: Any) -> None:
    import torch

    x = _prepare(x, options)
    out.select(-1, 1).copy_(x)                       # (the ones stay from the first call)
    for k in range(2, _poly_degree(options) + 1):
        torch.mul(out.select(-1, k - 1), x, out=out.select(-1, k))


MULTILINEAR = FeatureMap("multilinear", lambda o: 2, _multilinear, description="[1, x]",
                         leading_one=True, apply_into=_multilinear_into)
TRIG = FeatureMap("trig", lambda o: 2, _trig, description="[cos(pi x/2), sin(pi x/2)]",
                  unit_norm=True, apply_into=_trig_into)
POLY = FeatureMap("poly", lambda o: _poly_degree(o) + 1, _poly, options=("scale", "degree"),
                  description="[1, x, ..., x^degree]", leading_one=True,
                  apply_into=_poly_into)
