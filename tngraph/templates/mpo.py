"""``mpo``: a matrix product operator (TT-matrix) of ``sites`` cores ``W0 ... W{n-1}``.

Core ``Wk`` has legs ``l``, ``i`` (input), ``o`` (output), ``r``; the ends of an open chain lack
``l`` / ``r``. Options: ``sites``, ``in_dim``, ``out_dim``, ``bond_dim``, ``boundary``
(``open``/``periodic``), ``input`` (name of a stacked data port feeding every ``i`` leg; without
it the ``i`` legs are open), ``init``. Outputs: every ``o`` leg, then (without ``input``) every
``i`` leg.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tngraph.kinds import Template, TemplateOptions
from tngraph.schema import MAX_SITES
from tngraph.templates.mps import chain_nodes


class MPOOptions(TemplateOptions):
    sites: int = Field(gt=0, le=MAX_SITES)
    in_dim: int = Field(gt=0)
    out_dim: int = Field(gt=0)
    bond_dim: int = Field(gt=0)
    boundary: Literal["open", "periodic"] = "open"
    input: str | None = None
    init: str | dict[str, Any] | None = None


def expand(o: MPOOptions) -> dict[str, Any]:
    nodes, edges = chain_nodes("W", o.sites, o.bond_dim, o.boundary == "periodic",
                               {"i": o.in_dim, "o": o.out_dim})
    init = o.init if o.init is not None else ("identity" if o.input else "normal")
    for node in nodes.values():
        node["init"] = init
    network: dict[str, Any] = {"nodes": nodes}
    outputs = [f"W{k}.o" for k in range(o.sites)]
    if o.input is not None:
        network["inputs"] = {o.input: {"legs": {"i": o.in_dim}, "stack": o.sites}}
        edges += [[f"{o.input}[{k}].i", f"W{k}.i"] for k in range(o.sites)]
    else:
        outputs += [f"W{k}.i" for k in range(o.sites)]
    network["edges"] = edges
    network["outputs"] = outputs
    return network


TEMPLATE = Template("mpo", MPOOptions, expand, "matrix product operator / TT-matrix")
