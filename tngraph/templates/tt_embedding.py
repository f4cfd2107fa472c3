"""``tt_embedding``: a TT-matrix embedding table (TT-Rec, tltorch ``FactorizedEmbedding``).

The table ``E`` of shape ``(prod(voc_shape), prod(dim_shape))`` is a TT-matrix of cores
``G0 … G{d-1}`` with legs ``l`` (rank), ``i`` (``voc_shape[k]``), ``o`` (``dim_shape[k]``), ``r``
(rank). Row ``n`` of the table is looked up by writing ``n`` in the mixed radix of
``voc_shape`` (most significant factor first, at ``G0``), ``n = ((n0 v1 + n1) v2 + n2) …``,
and feeding each digit as a one-hot vector to its own data port ``{input}{k}`` (leg ``i`` of
``voc_shape[k]``): the network contracts ``G0[:, n0, :, :] … G{d-1}[:, n_{d-1}, :, :]``, row ``n``
of ``E``, flattened to ``(batch, prod(dim_shape))``. :func:`one_hot_inputs` turns a tensor of
integer indices into those inputs. The one-hot ports cost ``sum(voc_shape)`` values per
example, not ``prod(voc_shape)``; an executor-side gather (index the cores instead of
contracting one-hot vectors) would save that multiply, but is not needed for the lookup to be
exact.

Options: ``voc_shape``, ``dim_shape`` (same length d), ``ranks`` (one int, or d-1 ints),
``input`` (port name prefix, default ``x``), ``init`` (default: Gaussian cores whose product
has entries of unit variance, as ``torch.nn.Embedding``).

Examples
--------
>>> net = expand(TTEmbeddingOptions(voc_shape=[10, 10], dim_shape=[4, 2], ranks=3))
>>> net["nodes"]["G1"]["legs"], sorted(net["inputs"]), net["edges"][-1]
({'l': 3, 'i': 10, 'o': 2}, ['x0', 'x1'], ['x1.i', 'G1.i'])
>>> {k: v.tolist() for k, v in one_hot_inputs([0, 23], [10, 10]).items()}["x1"][1][:4]
[0.0, 0.0, 0.0, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from tngraph.errors import CompileError
from tngraph.kinds import Template, TemplateError, TemplateOptions
from tngraph.templates.tt_linear import check_factor_shapes


class TTEmbeddingOptions(TemplateOptions):
    voc_shape: list[int] = Field(min_length=1)
    dim_shape: list[int] = Field(min_length=1)
    ranks: int | list[int] = 8
    input: str = "x"
    init: str | dict[str, Any] | None = None


def expand(o: TTEmbeddingOptions) -> dict[str, Any]:
    d = check_factor_shapes(("voc_shape", o.voc_shape), ("dim_shape", o.dim_shape))
    ranks = [o.ranks] * (d - 1) if isinstance(o.ranks, int) else list(o.ranks)
    if len(ranks) != d - 1 or any(r <= 0 for r in ranks):
        raise TemplateError(f"ranks needs {d - 1} positive values (one per bond), got "
                            f"{o.ranks}", "ranks", "write one number for all bonds, e.g. 8")
    nodes: dict[str, dict] = {}
    edges: list[list[str]] = []
    for k in range(d):
        left = ranks[k - 1] if k > 0 else 1
        right = ranks[k] if k < d - 1 else 1
        legs: dict[str, int] = {}
        if k > 0:
            legs["l"] = left
        legs["i"] = o.voc_shape[k]
        legs["o"] = o.dim_shape[k]
        if k < d - 1:
            legs["r"] = right
        # std^2 = 1 / sqrt(left * right): the table's entries have variance 1
        std = round((left * right) ** -0.25, 6)
        nodes[f"G{k}"] = {"legs": legs,
                          "init": o.init if o.init is not None else {"name": "normal",
                                                                     "std": std}}
        if k > 0:
            edges.append([f"G{k - 1}.r", f"G{k}.l"])
    inputs = {f"{o.input}{k}": {"legs": {"i": n}} for k, n in enumerate(o.voc_shape)}
    edges += [[f"{o.input}{k}.i", f"G{k}.i"] for k in range(d)]
    return {"nodes": nodes, "inputs": inputs, "edges": edges,
            "outputs": [f"G{k}.o" for k in range(d)], "flatten_outputs": True}


def one_hot_inputs(indices: Any, voc_shape: Sequence[int], input: str = "x") -> dict[str, Any]:
    """The inputs of a ``tt_embedding`` network for integer ``indices`` (any shape ``(batch,)``
    tensor or list, values in ``0 .. prod(voc_shape) - 1``): ``{input}{k}`` is the one-hot of
    digit ``k`` of each index, shape ``(batch, voc_shape[k])``, float32 (cast it to the module's
    dtype if that differs)."""
    import torch

    idx = torch.as_tensor(indices)
    size = math.prod(voc_shape)
    if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.dim() != 1:
        raise CompileError(f"indices must be a 1-D tensor of integers, got {idx.dtype} of "
                           f"shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise CompileError(f"indices must be in 0 .. {size - 1} (the vocabulary "
                           f"{' x '.join(map(str, voc_shape))}), got {int(idx.min())} .. "
                           f"{int(idx.max())}")
    out: dict[str, Any] = {}
    rest = idx.long()
    for k in reversed(range(len(voc_shape))):
        digit = rest % voc_shape[k]
        rest = rest // voc_shape[k]
        out[f"{input}{k}"] = torch.nn.functional.one_hot(digit, voc_shape[k]).float()
    return dict(sorted(out.items(), key=lambda item: int(item[0][len(input):])))


TEMPLATE = Template("tt_embedding", TTEmbeddingOptions, expand,
                    "TT-matrix embedding table, looked up by one-hot digits of the index")
