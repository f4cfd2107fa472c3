"""``tree``: a tree tensor network (TTN) over ``sites`` inputs, the label at the root.

Level 0 groups the sites, ``arity`` consecutive sites per node; every higher level groups
``arity`` nodes of the level below, up to one root. Node ``T{level}_{k}`` has one leg per child
(``p0 … p{a-1}``, the physical legs, on level 0; ``c0 … c{a-1}``, bonds to the level below,
above it), then ``u``, the bond to its parent (not on the root), and on the root ``o``, the
label leg of ``output_dim``. The last group of a level may hold fewer children. A bond carries
at most what the subtree below it can hold: ``min(bond_dim, product of the children's
dimensions)`` (on the digits with ``arity: 2``: 4 above two pixels, 16 above four).

Options: ``sites``, ``phys_dim`` (default 2), ``bond_dim``, ``arity`` (default 2), ``input``
(a stacked data port feeding ``p``; without it the physical legs are open outputs),
``feature_map``, ``output_dim``, ``init`` (default: the graph-aware ``norm`` initialiser).

Examples
--------
>>> net = expand(TreeOptions(sites=4, bond_dim=8, input="x", output_dim=3))
>>> {name: node["legs"] for name, node in net["nodes"].items()}
{'T0_0': {'p0': 2, 'p1': 2, 'u': 4}, 'T0_1': {'p0': 2, 'p1': 2, 'u': 4}, \
'T1_0': {'c0': 4, 'c1': 4, 'o': 3}}
>>> net["edges"][:3], net["outputs"]
([['x[0].p', 'T0_0.p0'], ['x[1].p', 'T0_0.p1'], ['x[2].p', 'T0_1.p0']], ['T1_0.o'])
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tngraph.kinds import Template, TemplateError, TemplateOptions
from tngraph.schema import MAX_SITES


class TreeOptions(TemplateOptions):
    sites: int = Field(gt=0, le=MAX_SITES)
    phys_dim: int = Field(default=2, gt=0)
    bond_dim: int = Field(gt=0)
    arity: int = Field(default=2, ge=2, le=16)
    input: str | None = None
    feature_map: str | dict[str, Any] | None = None
    output_dim: int | None = Field(default=None, gt=0)
    init: str | dict[str, Any] | None = None


def expand(o: TreeOptions) -> dict[str, Any]:
    if o.feature_map is not None and o.input is None:
        raise TemplateError("feature_map needs input (the data port it applies to)",
                            "feature_map", "add input: x")
    nodes: dict[str, dict] = {}
    edges: list[list[str]] = []
    outputs: list[str] = []
    # the level below: (leg reference, dimension) of each child, in order
    below: list[tuple[str | None, int]] = [(None, o.phys_dim)] * o.sites
    level = 0
    while True:
        groups = [below[k:k + o.arity] for k in range(0, len(below), o.arity)]
        root = len(groups) == 1
        above: list[tuple[str | None, int]] = []
        for k, group in enumerate(groups):
            name = f"T{level}_{k}"
            legs: dict[str, int] = {}
            leaf = level == 0
            size = 1
            for j, (ref, dim) in enumerate(group):
                leg = f"p{j}" if leaf else f"c{j}"
                legs[leg] = dim
                size *= dim
                if leaf:
                    site = k * o.arity + j
                    if o.input is not None:
                        edges.append([f"{o.input}[{site}].p", f"{name}.{leg}"])
                    else:
                        outputs.append(f"{name}.{leg}")
                else:
                    edges.append([str(ref), f"{name}.{leg}"])
            if root:
                if o.output_dim is not None:
                    legs["o"] = o.output_dim
                    outputs.append(f"{name}.o")
            else:
                legs["u"] = min(o.bond_dim, size)
                above.append((f"{name}.u", legs["u"]))
            node: dict[str, Any] = {"legs": legs}
            if o.init is not None:
                node["init"] = o.init
            nodes[name] = node
        if root:
            break
        below = above
        level += 1
    network: dict[str, Any] = {"nodes": nodes}
    if o.input is not None:
        port: dict[str, Any] = {"legs": {"p": o.phys_dim}, "stack": o.sites}
        if o.feature_map is not None:
            port["feature_map"] = o.feature_map
        network["inputs"] = {o.input: port}
    network["edges"] = edges
    network["outputs"] = outputs
    return network


TEMPLATE = Template("tree", TreeOptions, expand, "tree tensor network (TTN), label at the root")
