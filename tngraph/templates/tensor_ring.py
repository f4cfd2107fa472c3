"""``tensor_ring``: a ring of ``sites`` cores ``R0 … R{n-1}`` (a periodic MPS, tensor ring).

Every core has legs ``l``, ``p``, ``r``; ``R{n-1}.r`` joins ``R0.l``. With ``input: x`` a stacked
data port feeds every ``p`` (through an optional ``feature_map``) and ``output_dim`` adds a label
leg ``o`` at ``output_site`` (default the middle): a ring classifier. Without ``input`` the
physical legs are open outputs (a tensor-ring state or tensor).

Unlike the ``mps`` template's chains, whose default ``identity`` gives a ring the trace of the
identity (the class-0 logit equals ``bond_dim`` for every input), the cores start from the
graph-aware ``norm`` initialiser: zero-mean, the output of unit variance
(:func:`tngraph.initializers.norm_scales`).

Options: ``sites``, ``phys_dim``, ``bond_dim``, ``input``, ``feature_map``, ``output_dim``,
``output_site``, ``init``.

Examples
--------
>>> net = expand(TensorRingOptions(sites=3, phys_dim=2, bond_dim=4, input="x", output_dim=10))
>>> net["nodes"]["R1"]["legs"], net["edges"][2], net["outputs"]
({'l': 4, 'p': 2, 'r': 4, 'o': 10}, ['R2.r', 'R0.l'], ['R1.o'])
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tngraph.kinds import Template, TemplateError, TemplateOptions
from tngraph.schema import MAX_SITES
from tngraph.templates.mps import chain_nodes, feed_sites, label_site


class TensorRingOptions(TemplateOptions):
    sites: int = Field(gt=0, le=MAX_SITES)
    phys_dim: int = Field(default=2, gt=0)
    bond_dim: int = Field(gt=0)
    input: str | None = None
    feature_map: str | dict[str, Any] | None = None
    output_dim: int | None = Field(default=None, gt=0)
    output_site: int | None = None
    init: str | dict[str, Any] | None = None


def expand(o: TensorRingOptions) -> dict[str, Any]:
    if o.feature_map is not None and o.input is None:
        raise TemplateError("feature_map needs input (the data port it applies to)",
                            "feature_map", "add input: x")
    nodes, edges = chain_nodes("R", o.sites, o.bond_dim, True, {"p": o.phys_dim})
    site = label_site(nodes, "R", o.sites, o.output_dim, o.output_site, "ring")
    if o.init is not None:
        for node in nodes.values():
            node["init"] = o.init
    network: dict[str, Any] = {"nodes": nodes}
    outputs: list[str] = []
    feed_sites(network, edges, outputs, "R", o.sites, o.phys_dim, o.input, o.feature_map)
    if site is not None:
        outputs.append(f"R{site}.o")
    network["edges"] = edges
    network["outputs"] = outputs
    return network


TEMPLATE = Template("tensor_ring", TensorRingOptions, expand,
                    "tensor ring (periodic MPS), classifier or state")
