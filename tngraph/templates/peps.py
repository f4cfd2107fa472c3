"""``peps``: a projected entangled pair state on a ``rows x cols`` grid, nodes ``P{r}_{c}``.

Each node has bond legs ``u``, ``d``, ``l``, ``r`` to its grid neighbours (absent on the border
of an open grid) and, when ``open_phys`` is true (default), a physical leg ``p`` of ``phys_dim``
which is an output. With ``open_phys: false`` the nodes have no physical legs and the network is
closed (a scalar), the usual benchmark for 2D contraction.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tngraph.kinds import Template, TemplateOptions


class PEPSOptions(TemplateOptions):
    rows: int = Field(gt=0, le=1024)
    cols: int = Field(gt=0, le=1024)
    bond_dim: int = Field(gt=0)
    phys_dim: int = Field(default=2, gt=0)
    open_phys: bool = True
    init: str | dict[str, Any] | None = None


def expand(o: PEPSOptions) -> dict[str, Any]:
    nodes: dict[str, dict] = {}
    edges: list[list[str]] = []
    outputs: list[str] = []
    for r in range(o.rows):
        for c in range(o.cols):
            legs: dict[str, int] = {}
            if r > 0:
                legs["u"] = o.bond_dim
            if c > 0:
                legs["l"] = o.bond_dim
            if o.open_phys:
                legs["p"] = o.phys_dim
                outputs.append(f"P{r}_{c}.p")
            if c < o.cols - 1:
                legs["r"] = o.bond_dim
            if r < o.rows - 1:
                legs["d"] = o.bond_dim
            node: dict[str, Any] = {"legs": legs}
            if o.init is not None:
                node["init"] = o.init
            nodes[f"P{r}_{c}"] = node
            if c > 0:
                edges.append([f"P{r}_{c - 1}.r", f"P{r}_{c}.l"])
            if r > 0:
                edges.append([f"P{r - 1}_{c}.d", f"P{r}_{c}.u"])
    return {"nodes": nodes, "edges": edges, "outputs": outputs}


TEMPLATE = Template("peps", PEPSOptions, expand, "2D grid tensor network (PEPS)")
