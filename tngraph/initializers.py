"""Initialisers of network tensors (registry ``initializer``), chosen per node by ``init:``.

An initialiser is ``fn(shape, legs, options, generator) -> torch.Tensor`` (float64 on the CPU;
the module casts it). Built-ins:

* ``normal`` (the default): zero-mean Gaussian, ``std`` option, default
  ``1/sqrt(largest leg dimension)`` so that contracting chains neither explodes nor vanishes
  quickly;
* ``uniform``: ``U(-a, a)``, ``a`` option (default as ``normal``'s std times sqrt(3));
* ``zeros``, ``ones``;
* ``identity``: for MPS-like cores with legs ``l`` and ``r``: identity from l to r on every
  other index value ... plus ``std`` noise (default 1e-2); the first entry of the remaining legs
  carries the identity, so a chain of such cores starts as a near-identity map.

This module does not import torch at import time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tngraph.plugins import Registry

Initializer = Callable[[Sequence[int], Sequence[str], Mapping[str, Any], Any], Any]


def _default_std(shape: Sequence[int]) -> float:
    return 1.0 / math.sqrt(max(shape)) if shape else 1.0


def normal(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
            generator: Any) -> Any:
    import torch

    std = float(options.get("std", _default_std(shape)))
    mean = float(options.get("mean", 0.0))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * std + mean


def uniform(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
             generator: Any) -> Any:
    import torch

    a = float(options.get("a", _default_std(shape) * math.sqrt(3)))
    return (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1) * a


def zeros(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
           generator: Any) -> Any:
    import torch

    return torch.zeros(tuple(shape), dtype=torch.float64)


def ones(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
          generator: Any) -> Any:
    import torch

    return torch.ones(tuple(shape), dtype=torch.float64)


def identity(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
              generator: Any) -> Any:
    """Near-identity core: ``T[l, ..., r] = delta(l, r) * [other legs at index 0] + noise``.

    With ``spread: [p, ...]`` the identity is laid on every value of those legs instead of the
    first: for feature maps without a constant component (``trig``: cos and sin, whose sum is
    1 at x = 0 and x = 1 and at most sqrt(2) between), so that every input value passes the
    chain on at about unit scale.
    """
    import torch

    std = float(options.get("std", 1e-2))
    tensor = torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * std
    legs = list(legs)
    spread = [legs.index(leg) for leg in options.get("spread", ()) if leg in legs]
    left = legs.index("l") if "l" in legs else None
    right = legs.index("r") if "r" in legs else None
    index: list[Any] = [0] * len(shape)
    if left is not None and right is not None:
        n = min(shape[left], shape[right])
        diag = torch.arange(n)
        index[left] = diag
        index[right] = diag
    elif left is not None:
        index[left] = 0
    elif right is not None:
        index[right] = 0
    weight = 1.0
    for axis in spread:
        index[axis] = slice(None)
    if spread and left is not None and right is not None:
        # advanced indices (the diagonal) separated by slices: assign through a view per value
        for values in itertools.product(*(range(shape[a]) for a in spread)):
            spot = list(index)
            for axis, value in zip(spread, values):
                spot[axis] = value
            tensor[tuple(spot)] += weight
        return tensor
    tensor[tuple(index)] += weight
    return tensor


# the options each built-in reads (validation rejects others); a plugin may set ``.options``
normal.options = ("std", "mean")        # type: ignore[attr-defined]
uniform.options = ("a",)                # type: ignore[attr-defined]
zeros.options = ()                      # type: ignore[attr-defined]
ones.options = ()                       # type: ignore[attr-defined]
identity.options = ("std", "spread")   # type: ignore[attr-defined]


def _builtins() -> dict[str, Initializer]:
    return {"normal": normal, "uniform": uniform, "zeros": zeros, "ones": ones,
            "identity": identity}


INITIALIZERS: Registry[Initializer] = Registry("initializer", "tngraph.initializers", _builtins)


def register_initializer(name: str, fn: Initializer, **kwargs: Any) -> None:
    """Register ``fn`` as the initialiser ``name``."""
    INITIALIZERS.register(name, fn, **kwargs)


def get_initializer(name: str) -> Initializer:
    """The initialiser called ``name`` (PluginError listing valid names if unknown)."""
    return INITIALIZERS.get(name)


def list_initializers() -> list[str]:
    """Names of all registered initialisers."""
    return INITIALIZERS.list()
