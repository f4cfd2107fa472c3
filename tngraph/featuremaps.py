"""Local feature maps: each raw input value becomes a small vector (registry ``feature map``).

A feature map is chosen by name on a data port (``feature_map: multilinear``) and is applied
elementwise, ``(..., ) -> (..., dim)``. Built-ins:

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tngraph.errors import PluginError
from tngraph.plugins import Registry


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

    def check_options(self, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise PluginError(f"feature map '{self.name}' has no option '{unknown[0]}'; "
                              f"valid: {', '.join(self.options)}")


def _prepare(x: Any, options: Mapping[str, Any]) -> Any:
    return x.clamp(0.0, 1.0) if options.get("scale") else x


def _multilinear(x: Any, options: Mapping[str, Any]) -> Any:
    import torch

    x = _prepare(x, options)
    # one kernel (pad with the constant 1) instead of ones_like + stack
    return torch.nn.functional.pad(x.unsqueeze(-1), (1, 0), value=1.0)


def _trig(x: Any, options: Mapping[str, Any]) -> Any:
    import torch

    x = _prepare(x, options) * (math.pi / 2)
    return torch.stack([torch.cos(x), torch.sin(x)], dim=-1)


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


MULTILINEAR = FeatureMap("multilinear", lambda o: 2, _multilinear, description="[1, x]",
                         leading_one=True)
TRIG = FeatureMap("trig", lambda o: 2, _trig, description="[cos(pi x/2), sin(pi x/2)]",
                  unit_norm=True)
POLY = FeatureMap("poly", lambda o: _poly_degree(o) + 1, _poly, options=("scale", "degree"),
                  description="[1, x, ..., x^degree]", leading_one=True)


def _builtins() -> dict[str, FeatureMap]:
    return {f.name: f for f in (MULTILINEAR, TRIG, POLY)}


FEATURE_MAPS: Registry[FeatureMap] = Registry("feature map", "tngraph.feature_maps", _builtins)


def register_feature_map(feature_map: FeatureMap, **kwargs: Any) -> None:
    """Register a feature map under ``feature_map.name``."""
    FEATURE_MAPS.register(feature_map.name, feature_map, **kwargs)


def get_feature_map(name: str) -> FeatureMap:
    """The feature map called ``name`` (PluginError listing valid names if unknown)."""
    return FEATURE_MAPS.get(name)


def list_feature_maps() -> list[str]:
    """Names of all registered feature maps."""
    return FEATURE_MAPS.list()
