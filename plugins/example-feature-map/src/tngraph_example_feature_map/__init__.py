"""``rbf``: a tngraph feature map of Gaussian bumps, shipped as a third-party plugin.

Each raw value x becomes ``dim`` Gaussian bumps centred evenly on [0, 1]::

    phi_k(x) = exp(-(x - c_k)^2 / (2 width^2)),   c_k = k / (dim - 1),   k = 0 .. dim-1

Options (validated like the built-in ``poly`` map's ``degree``: a wrong value raises
:class:`tngraph.errors.PluginError` from ``dim(options)``, which tngraph's validation calls and
reports at the spec's ``feature_map:`` line):

``dim``
    Number of bumps, an integer >= 2 (default 3).
``width``
    Standard deviation of each bump, a number > 0 (default ``1 / (dim - 1)``, the spacing of
    the centres).
``scale``
    ``true`` clamps inputs to [0, 1] first (as for every built-in map).

The package is registered through the ``tngraph.feature_maps`` entry-point group (see its
``pyproject.toml``); tngraph finds it once it is installed, nothing imports it by path.

Examples
--------
>>> import torch
>>> RBF.dim({"dim": 4})
4
>>> RBF.apply(torch.tensor([0.0, 1.0]), {"dim": 3, "width": 0.5}).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from tngraph.errors import PluginError
from tngraph.featuremaps import FeatureMap

__all__ = ["RBF", "rbf_centres", "rbf_dim", "rbf_width"]

DEFAULT_DIM = 3


def rbf_dim(options: Mapping[str, Any]) -> int:
    """The number of bumps, ``options["dim"]`` (default 3); PluginError unless an int >= 2.

    Also checks ``width``, so that one call (the one validation makes) reports every bad value.

    Examples
    --------
    >>> rbf_dim({})
    3
    >>> rbf_dim({"dim": 1})
    Traceback (most recent call last):
    ...
    tngraph.errors.PluginError: feature map 'rbf' needs an integer dim >= 2, got 1
    """
    dim = options.get("dim", DEFAULT_DIM)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2:
        raise PluginError(f"feature map 'rbf' needs an integer dim >= 2, got {dim!r}")
    rbf_width(options, dim)
    return dim


def rbf_width(options: Mapping[str, Any], dim: int) -> float:
    """The bump width, ``options["width"]`` (default ``1 / (dim - 1)``); PluginError unless > 0.

    Examples
    --------
    >>> rbf_width({}, 5)
    0.25
    >>> rbf_width({"width": "wide"}, 5)
    Traceback (most recent call last):
    ...
    tngraph.errors.PluginError: feature map 'rbf' needs a number width > 0, got 'wide'
    """
    width = options.get("width", 1.0 / (dim - 1))
    if (not isinstance(width, (int, float)) or isinstance(width, bool)
            or not math.isfinite(width) or width <= 0):
        raise PluginError(f"feature map 'rbf' needs a number width > 0, got {width!r}")
    return float(width)


def rbf_centres(dim: int) -> list[float]:
    """The ``dim`` bump centres, evenly spaced on [0, 1] (both ends included).

    Examples
    --------
    >>> rbf_centres(3)
    [0.0, 0.5, 1.0]
    """
    return [k / (dim - 1) for k in range(dim)]


def _rbf(x: Any, options: Mapping[str, Any]) -> Any:
    import torch  # imported on use: tngraph's validation stays torch-free

    dim = rbf_dim(options)
    width = rbf_width(options, dim)
    if options.get("scale"):
        x = x.clamp(0.0, 1.0)
    centres = torch.tensor(rbf_centres(dim), dtype=x.dtype, device=x.device)
    return torch.exp(-((x.unsqueeze(-1) - centres) ** 2) / (2 * width**2))


#: The registered object: what the ``rbf`` entry point in pyproject.toml points to.
RBF = FeatureMap(
    name="rbf",
    dim=rbf_dim,
    apply=_rbf,
    options=("scale", "dim", "width"),
    description="Gaussian bumps exp(-(x - c_k)^2 / (2 width^2)) at dim centres on [0, 1]",
    leading_one=False,
)
