"""``peps``: a projected entangled pair state on a ``rows x cols`` grid, nodes ``P{r}_{c}``.

Each node has bond legs ``u``, ``d``, ``l``, ``r`` to its grid neighbours (absent on the border
of an open grid) and, when ``open_phys`` is true (default), a physical leg ``p`` of ``phys_dim``
which is an output. With ``open_phys: false`` the nodes have no physical legs and the network is
closed (a scalar), the usual benchmark for 2D contraction.

With ``input: x`` the physical legs are fed by a stacked data port ``x`` (``stack: rows * cols``,
copy ``x[r * cols + c]`` at ``P{r}_{c}``: an image in row-major order) through an optional
``feature_map``; ``output_dim`` adds an open label leg ``o`` at ``output_site`` (``[row, col]``,
default the centre): a PEPS classifier. Nodes without ``init`` start from the graph-aware
``norm`` initialiser (unit-variance output, :func:`tngraph.initializers.norm_scales`).

Examples
--------
>>> net = expand(PEPSOptions(rows=2, cols=2, bond_dim=3, input="x", output_dim=10))
>>> net["nodes"]["P1_1"]["legs"], net["outputs"], net["inputs"]["x"]["stack"]
({'u': 3, 'l': 3, 'p': 2, 'o': 10}, ['P1_1.o'], 4)
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tngraph.kinds import Template, TemplateError, TemplateOptions


class PEPSOptions(TemplateOptions):
    rows: int = Field(gt=0, le=1024)
    cols: int = Field(gt=0, le=1024)
    bond_dim: int = Field(gt=0)
    phys_dim: int = Field(default=2, gt=0)
    open_phys: bool = True
    input: str | None = None
    feature_map: str | dict[str, Any] | None = None
    output_dim: int | None = Field(default=None, gt=0)
    output_site: list[int] | None = None
    init: str | dict[str, Any] | None = None


def _output_site(o: PEPSOptions) -> tuple[int, int] | None:
    if o.output_dim is None:
        if o.output_site is not None:
            raise TemplateError("output_site needs output_dim", "output_site",
                                "set output_dim, e.g. the number of classes")
        return None
    if o.output_site is None:
        return o.rows // 2, o.cols // 2
    if len(o.output_site) != 2 or not (0 <= o.output_site[0] < o.rows
                                       and 0 <= o.output_site[1] < o.cols):
        raise TemplateError(f"output_site {o.output_site} is not a [row, col] of the grid "
                            f"(0..{o.rows - 1}, 0..{o.cols - 1})", "output_site")
    return o.output_site[0], o.output_site[1]


def expand(o: PEPSOptions) -> dict[str, Any]:
    if o.input is not None and not o.open_phys:
        raise TemplateError("input feeds the physical legs, but open_phys is false", "input",
                            "remove open_phys: false")
    if o.feature_map is not None and o.input is None:
        raise TemplateError("feature_map needs input (the data port it applies to)",
                            "feature_map", "add input: x")
    site = _output_site(o)
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
                if o.input is None:
                    outputs.append(f"P{r}_{c}.p")
            if c < o.cols - 1:
                legs["r"] = o.bond_dim
            if r < o.rows - 1:
                legs["d"] = o.bond_dim
            if (r, c) == site:
                legs["o"] = o.output_dim
            node: dict[str, Any] = {"legs": legs}
            if o.init is not None:
                node["init"] = o.init
            nodes[f"P{r}_{c}"] = node
            if c > 0:
                edges.append([f"P{r}_{c - 1}.r", f"P{r}_{c}.l"])
            if r > 0:
                edges.append([f"P{r - 1}_{c}.d", f"P{r}_{c}.u"])
    network: dict[str, Any] = {"nodes": nodes}
    if o.input is not None:
        port: dict[str, Any] = {"legs": {"p": o.phys_dim}, "stack": o.rows * o.cols}
        if o.feature_map is not None:
            port["feature_map"] = o.feature_map
        network["inputs"] = {o.input: port}
        edges += [[f"{o.input}[{r * o.cols + c}].p", f"P{r}_{c}.p"]
                  for r in range(o.rows) for c in range(o.cols)]
    if site is not None:
        outputs.append(f"P{site[0]}_{site[1]}.o")
    network["edges"] = edges
    network["outputs"] = outputs
    return network


TEMPLATE = Template("peps", PEPSOptions, expand, "2D grid tensor network (PEPS)")
