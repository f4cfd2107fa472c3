"""``tt_linear``: a TT-layer (Novikov et al. 2015), ``y = x W^T (+ b)`` with W a TT-matrix.

The weight of shape ``(prod(out_shape), prod(in_shape))`` is stored as cores ``G0 ... G{d-1}``
with legs ``l`` (rank), ``i`` (in_shape[k]), ``o`` (out_shape[k]), ``r`` (rank). The data port
``x`` (name set by ``input``) has legs ``i0 ... i{d-1}`` and takes ``(batch, prod(in_shape))`` or
``(batch, *in_shape)``; the output is ``(batch, prod(out_shape))`` (``flatten_outputs``).

Options: ``in_shape``, ``out_shape`` (same length d), ``ranks`` (one int for every bond, or a
list of d-1 ints), ``bias`` (default true), ``input`` (default ``x``), ``init``.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from tngraph.kinds import Template, TemplateError, TemplateOptions


class TTLinearOptions(TemplateOptions):
    in_shape: list[int] = Field(min_length=1)
    out_shape: list[int] = Field(min_length=1)
    ranks: int | list[int] = Field(default=8)
    bias: bool = True
    input: str = "x"
    init: str | dict[str, Any] | None = None


def check_factor_shapes(first: tuple[str, list[int]], second: tuple[str, list[int]]) -> int:
    """The number of factors ``d`` of a TT-matrix's two factored sizes, given as ``(option
    name, factors)``; raises TemplateError (naming the option) unless both have ``d`` positive
    factors. Shared by ``tt_linear`` and ``tt_embedding``.

    Examples
    --------
    >>> check_factor_shapes(("in_shape", [4, 8]), ("out_shape", [2, 2]))
    2
    """
    (first_key, first_shape), (second_key, second_shape) = first, second
    d = len(first_shape)
    if len(second_shape) != d:
        raise TemplateError(f"{first_key} has {d} factors but {second_key} has "
                            f"{len(second_shape)}", second_key,
                            "factor both sizes into the same number of factors")
    for key, shape in (first, second):
        if any(n <= 0 for n in shape):
            raise TemplateError(f"{key} factors must be positive, got {shape}", key)
    return d


def expand(o: TTLinearOptions) -> dict[str, Any]:
    d = check_factor_shapes(("in_shape", o.in_shape), ("out_shape", o.out_shape))
    ranks = [o.ranks] * (d - 1) if isinstance(o.ranks, int) else list(o.ranks)
    if len(ranks) != d - 1:
        raise TemplateError(f"ranks needs {d - 1} values (one per bond), got {len(ranks)}",
                            "ranks", f"write one number for all bonds, e.g. ranks: {ranks[0]}"
                            if ranks else None)
    if any(r <= 0 for r in ranks):
        raise TemplateError(f"ranks must be positive, got {ranks}", "ranks")
    nodes: dict[str, dict] = {}
    edges: list[list[str]] = []
    fan_in = math.prod(o.in_shape)
    for k in range(d):
        legs: dict[str, int] = {}
        if k > 0:
            legs["l"] = ranks[k - 1]
        legs["i"] = o.in_shape[k]
        legs["o"] = o.out_shape[k]
        if k < d - 1:
            legs["r"] = ranks[k]
        # Per-core std so that W's entries have variance ~ 1/fan_in (like nn.Linear's scale).
        ranks_in = ranks[k - 1] if k > 0 else 1
        std = (1.0 / fan_in) ** (1.0 / (2 * d)) / math.sqrt(ranks_in)
        init = o.init if o.init is not None else {"name": "normal", "std": round(std, 6)}
        nodes[f"G{k}"] = {"legs": legs, "init": init}
        if k > 0:
            edges.append([f"G{k - 1}.r", f"G{k}.l"])
    port = {"legs": {f"i{k}": n for k, n in enumerate(o.in_shape)}}
    edges += [[f"{o.input}.i{k}", f"G{k}.i"] for k in range(d)]
    return {
        "nodes": nodes,
        "inputs": {o.input: port},
        "edges": edges,
        "outputs": [f"G{k}.o" for k in range(d)],
        "bias": o.bias,
        "flatten_outputs": True,
    }


TEMPLATE = Template("tt_linear", TTLinearOptions, expand, "TT-matrix linear layer")
