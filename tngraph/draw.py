"""Drawings of a network and of its contraction tree (``tngraph draw``, ``compile --draw``).

The network panel shows every tensor with its legs and dimensions, the bonds (``r-l (3)``), the
data inputs (squares; each carries the batch leg) and the open legs (stubs named
``A2.o (10)``). The layout follows the structure: a chain in a line, a ring on a circle, a grid
(nodes named ``P{row}_{col}``, as the ``peps`` template makes them) as a grid, a tree as a
tree, anything else by a force-directed layout (networkx).

The tree panel shows the contraction tree as executed: leaves are the tensors and data-port
copies, inner nodes the steps, named as in the cost report (``#1``, ``#2``, ...), coloured by
the step's FLOPs (log scale) and with the largest intermediate ringed in red.

A pipeline gets one row of panels per network layer. The file type follows the name: ``.png``
or ``.svg``.

Examples
--------
>>> from tngraph.spec import load_spec
>>> spec = load_spec("models/ring3.yaml")
>>> layout_kind(spec.network)
'ring'
>>> draw_spec(spec, "ring3.svg", what="both")               # doctest: +SKIP
PosixPath('ring3.svg')
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from tngraph.errors import TNGraphError, did_you_mean
from tngraph.graph import build_graph
from tngraph.plan import Plan, plan_spec
from tngraph.schema import NetworkSpec, Spec
from tngraph.spec import load_spec
from tngraph.train import tested_weights as weights_tested

__all__ = ["DrawError", "WHAT", "draw", "draw_spec", "layout_kind", "network_positions",
           "tree_layout"]

WHAT = ("network", "tree", "both")
FORMATS = (".png", ".svg")
_GRID_RE = re.compile(r"^(\D*?)(\d+)_(\d+)$")
#: above this many tensors, bonds are drawn without labels and nodes show only their names
_LABEL_LIMIT = 24


class DrawError(TNGraphError):
    """A drawing cannot be made as asked (CLI exit code 2); the hint says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# layouts


def _bonds(network: NetworkSpec) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(network.nodes)
    for edge in network.edges:            # (a hyperedge joins every pair of its tensors)
        joined = [ref.split(".", 1)[0] for ref in edge]
        joined = [u for u in joined if u in network.nodes]
        graph.add_edges_from((u, v) for i, u in enumerate(joined) for v in joined[i + 1:]
                             if u != v)
    return graph


def layout_kind(network: NetworkSpec) -> str:
    """``chain``, ``ring``, ``grid``, ``tree`` or ``other``: how the tensors are joined.

    >>> from tngraph.spec import load_spec
    >>> layout_kind(load_spec("models/mps.yaml").network)
    'chain'
    """
    graph = _bonds(network)
    n = graph.number_of_nodes()
    if any(sum(ref.split(".", 1)[0] in network.nodes for ref in edge) > 2
           for edge in network.edges):
        return "other"                   # a hyperedge joins three or more tensors
    if n > 1 and all(_GRID_RE.match(name) for name in graph) and not nx.is_forest(graph):
        return "grid"
    if n < 2 or not nx.is_connected(graph):
        return "other" if n > 1 else "chain"
    degrees = [d for _, d in graph.degree()]
    if max(degrees) <= 2:
        return "ring" if graph.number_of_edges() == n and n > 2 else "chain"
    if nx.is_tree(graph):
        return "tree"
    return "other"


def _tree_positions(graph: nx.Graph) -> dict[str, tuple[float, float]]:
    """Root (a centre of the tree) on top, each level a row, leaves spread in DFS order."""
    root = nx.center(graph)[0]
    depth = nx.single_source_shortest_path_length(graph, root)
    children = {u: [v for v in graph[u] if depth[v] > depth[u]] for u in graph}
    x: dict[str, float] = {}
    counter = [0.0]

    def place(u: str) -> float:
        if not children[u]:
            x[u] = counter[0]
            counter[0] += 1.0
        else:
            x[u] = sum(place(v) for v in children[u]) / len(children[u])
        return x[u]

    place(root)
    return {u: (x[u], -1.5 * depth[u]) for u in graph}


def _snake(k: int, width: int = 16) -> tuple[float, float]:
    """Position ``k`` of a chain drawn in rows of ``width`` that turn back at each end."""
    row, col = divmod(k, width)
    return (2.0 * (col if row % 2 == 0 else width - 1 - col), -3.0 * row)


def network_positions(network: NetworkSpec) -> dict[str, tuple[float, float]]:
    """A position for every tensor of ``network`` suited to its structure."""
    kind = layout_kind(network)
    graph = _bonds(network)
    if kind == "grid":
        return {name: (2.0 * int(m[3]), -2.0 * int(m[2]))
                for name in graph if (m := _GRID_RE.match(name))}
    if kind == "chain" and graph.number_of_nodes() > 1:
        ends = [u for u, d in graph.degree() if d == 1]
        order = list(nx.dfs_preorder_nodes(graph, ends[0]))
        return {u: _snake(k) for k, u in enumerate(order)}
    if kind == "chain":
        return {u: (0.0, 0.0) for u in graph}
    if kind == "ring":
        order = list(nx.dfs_preorder_nodes(graph, next(iter(network.nodes))))
        radius = max(1.5, len(order) / math.pi)
        return {u: (radius * math.cos(2 * math.pi * k / len(order)),
                    radius * math.sin(2 * math.pi * k / len(order)))
                for k, u in enumerate(order)}
    if kind == "tree":
        return _tree_positions(graph)
    found = nx.spring_layout(graph, seed=0, scale=max(2.0, math.sqrt(len(graph))))
    return {u: (float(p[0]), float(p[1])) for u, p in found.items()}


# ---------------------------------------------------------------------------------------------
# the network panel


def _draw_network(ax: Any, spec: Spec) -> None:
    network = spec.network
    graph = build_graph(spec)
    pos = network_positions(network)
    small = len(network.nodes) <= _LABEL_LIMIT
    tensors = [u for u, d in graph.nodes(data=True) if d["kind"] == "tensor"]
    ports: dict[str, list[str]] = {}
    for u, v in graph.edges():
        for a, b in ((u, v), (v, u)):
            if graph.nodes[a]["kind"] == "input" and graph.nodes[b]["kind"] == "tensor":
                ports.setdefault(b, []).append(a)
    for node, copies in ports.items():
        x0, y0 = pos[node]
        for k, copy in enumerate(dict.fromkeys(copies)):
            if copy not in pos:
                pos[copy] = (x0 + 0.7 * (k - (len(copies) - 1) / 2), y0 - 1.1)
    for u in graph:
        pos.setdefault(u, (0.0, -2.0))           # a data port joined to no tensor
    for u, v, data in graph.edges(data=True):
        (x1, y1), (x2, y2) = pos[u], pos[v]
        is_port = "input" in (graph.nodes[u]["kind"], graph.nodes[v]["kind"])
        if u == v:
            ax.add_patch(_loop(x1, y1))
            continue
        ax.plot([x1, x2], [y1, y2], color="0.6" if is_port else "0.2",
                linestyle=":" if is_port else "-", linewidth=1.0 if is_port else 1.6, zorder=1)
        if small:
            (_, leg_u), (_, leg_v) = data["legs"]
            ax.text((x1 + x2) / 2, (y1 + y2) / 2, f"{leg_u}-{leg_v} ({data['dim']})",
                    fontsize=6, ha="center", va="center", color="0.25", zorder=3,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                          "alpha": 0.8})
    for node in tensors:
        x, y = pos[node]
        legs = graph.nodes[node]["legs"]
        ax.scatter([x], [y], s=420 if small else 160, color="tab:blue", zorder=2,
                   edgecolors="black")
        ax.text(x, y, node, fontsize=6 if small else 5, ha="center", va="center",
                color="white", zorder=4, fontweight="bold")
        if small:                              # the node's legs and dimensions
            ax.text(x - 0.25, y + 0.3, " ".join(f"{k}={v}" for k, v in legs.items()),
                    fontsize=5.5, ha="right", va="bottom", zorder=4)
    inputs = [u for u, d in graph.nodes(data=True) if d["kind"] == "input"]
    for copy in inputs:
        x, y = pos[copy]
        ax.scatter([x], [y], s=120 if small else 40, marker="s", color="tab:orange",
                   edgecolors="black", zorder=2)
        if small:
            ax.text(x, y - 0.35, copy, fontsize=6, ha="center", va="top")
    for k, (node, leg) in enumerate(graph.graph["outputs"]):
        x, y = pos[node]
        dim = graph.nodes[node]["legs"][leg]
        ax.plot([x, x + 0.4], [y, y + 0.8], color="tab:red", linewidth=1.6, zorder=1)
        if small or k < 8:
            ax.text(x + 0.45, y + 0.85, f"{node}.{leg} ({dim})", fontsize=6, color="tab:red")
    batch = " (each carries the batch leg)" if inputs else ""
    ax.set_title(f"{spec.name}: {len(tensors)} tensors ({layout_kind(network)}), "
                 f"{len(inputs)} data inputs{batch}, {len(graph.graph['outputs'])} open legs",
                 fontsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.15)
    ax.axis("off")


def _loop(x: float, y: float) -> Any:
    from matplotlib.patches import Circle

    return Circle((x + 0.35, y + 0.35), 0.3, fill=False, color="0.2")


# ---------------------------------------------------------------------------------------------
# the tree panel


def tree_layout(plan: Plan) -> tuple[dict[int, tuple[float, float]], list[tuple[int, int]]]:
    """Positions of the contraction tree's slots (leaves at height 0, in the order the tree
    visits them; a step one above its higher child, centred over its children) and its
    edges (child slot, parent slot), for the steps as executed."""
    steps = plan.executed().steps
    n = len(plan.problem.terms)
    children = {s.out: (s.left, s.right) for s in steps}
    root = steps[-1].out if steps else 0
    pos: dict[int, tuple[float, float]] = {}
    counter = [0.0]

    def place(slot: int) -> tuple[float, float]:
        if slot < n or slot not in children:
            pos[slot] = (counter[0], 0.0)
            counter[0] += 1.0
        else:
            (xl, yl), (xr, yr) = (place(c) for c in children[slot])
            pos[slot] = ((xl + xr) / 2, max(yl, yr) + 1.0)
        return pos[slot]

    place(root)
    for slot in range(n):                     # leaves no step uses (a one-tensor network)
        if slot not in pos:
            pos[slot] = (counter[0], 0.0)
            counter[0] += 1.0
    edges = [(c, s.out) for s in steps for c in (s.left, s.right)]
    return pos, edges


def _draw_tree(ax: Any, plan: Plan, title: str) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    executed = plan.executed()
    steps = executed.steps
    pos, edges = tree_layout(plan)
    n = len(plan.problem.terms)
    for child, parent in edges:
        (x1, y1), (x2, y2) = pos[child], pos[parent]
        ax.plot([x1, x2], [y1, y2], color="0.4", linewidth=1.0, zorder=1)
    small = n <= 40
    for slot in range(n):
        x, y = pos[slot]
        ax.scatter([x], [y], s=60 if small else 15, marker="s", color="0.85",
                   edgecolors="black", zorder=2)
        if small:
            ax.text(x, y - 0.25, plan.slot_name(slot), fontsize=6, ha="center", va="top",
                    rotation=90 if n > 12 else 0)
    if steps:
        flops = [max(s.flops, 1) for s in steps]
        norm = LogNorm(vmin=min(flops), vmax=max(max(flops), min(flops) * 1.0001))
        cmap = plt.get_cmap("viridis")
        largest = max(range(len(steps)), key=lambda k: steps[k].size)
        for k, step in enumerate(steps):
            x, y = pos[step.out]
            ax.scatter([x], [y], s=150 if small else 40, color=cmap(norm(flops[k])),
                       edgecolors="red" if k == largest else "black",
                       linewidths=2.5 if k == largest else 0.8, zorder=3)
            if small or k == largest:
                ax.text(x + 0.15, y + 0.12, plan.slot_name(step.out), fontsize=6, zorder=4)
        x, y = pos[steps[largest].out]
        ax.annotate(f"largest intermediate\n{plan.slot_name(steps[largest].out)}: "
                    f"{steps[largest].size:,} entries", (x, y), xytext=(12, -18),
                    textcoords="offset points", fontsize=6.5, color="red", va="top",
                    zorder=5)
        mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        ax.figure.colorbar(mappable, ax=ax, fraction=0.04, pad=0.01, label="FLOPs of the step")
    ax.set_title(f"{title}: contraction tree, {len(steps)} steps, {executed.flops:,} FLOPs "
                 "per batch", fontsize=8)
    ax.margins(0.08)
    ax.axis("off")


# ---------------------------------------------------------------------------------------------
# the figure


def _panels(spec: Spec, plans: Mapping[str, Plan] | None, cache_dir: str | Path | None
            ) -> list[tuple[str, Spec, Plan | None]]:
    if not spec.is_pipeline:
        plan = (plans or {}).get(spec.name)
        return [(spec.name, spec, plan)]
    names = [layer.name for layer in spec.layers or () if layer.network is not None]
    if not names:
        raise DrawError(f"pipeline '{spec.name}' has no tensor-network layer to draw",
                        "draw shows the networks of a spec (network: or layers of type "
                        "network)")
    return [(name, spec.network_spec(name), (plans or {}).get(name)) for name in names]


def draw_spec(spec: Spec, path: str | Path, *, what: str = "both",
              plans: Mapping[str, Plan] | None = None,
              cache_dir: str | Path | None = None) -> Path:
    """Draw ``spec``'s network(s) and/or contraction tree(s) into ``path`` (``.png``/``.svg``).

    Parameters
    ----------
    spec
        A loaded spec; a pipeline gets one row per network layer.
    path
        The file to write; its suffix picks the format.
    what
        ``network``, ``tree`` or ``both``.
    plans
        Plans already made (by network name, or pipeline layer name); others are planned.
    cache_dir
        The plan cache.
    """
    if what not in WHAT:
        raise DrawError(f"unknown --what '{what}'", did_you_mean(str(what), WHAT))
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise DrawError(f"cannot draw into {path}: the file type is taken from its name",
                        "name it .png or .svg")
    if not path.parent.is_dir():
        raise DrawError(f"cannot write {path}: folder {path.parent} does not exist",
                        "create the folder first, or give another --out")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _panels(spec, plans, cache_dir)
    matplotlib.rcParams["svg.fonttype"] = "none"        # SVG text stays text (searchable)
    cols = 2 if what == "both" else 1
    fig, axes = plt.subplots(len(panels), cols, figsize=(7 * cols, 5 * len(panels)),
                             squeeze=False)
    for row, (title, sub, plan) in zip(axes, panels):
        if what in ("network", "both"):
            _draw_network(row[0], sub)
        if what in ("tree", "both"):
            if plan is None:
                plan = plan_spec(sub, cache_dir=cache_dir)
            _draw_tree(row[-1], plan, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw(source: str | Path, path: str | Path | None = None, *, what: str = "both",
         overrides: Mapping[str, Any] | None = None,
         cache_dir: str | Path | None = None) -> Path:
    """Draw a spec file or a run directory's spec (the one its tested weights belong to) into
    ``path`` (default ``NAME.png``); returns the file written.

    >>> draw("models/mps.yaml", "mps.png", what="network")      # doctest: +SKIP
    PosixPath('mps.png')
    """
    source = Path(source)
    if source.is_dir():
        if not (source / "spec.yaml").is_file():
            raise DrawError(f"{source} is a folder without spec.yaml",
                            "give a spec file or a run directory written by tngraph train")
        _, text = weights_tested(source)
        spec = load_spec(text, overrides)
    else:
        spec = load_spec(source, overrides)
    return draw_spec(spec, path if path is not None else f"{spec.name}.png", what=what,
                     cache_dir=cache_dir)
