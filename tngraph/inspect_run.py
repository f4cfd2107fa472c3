"""A trained run, loaded for analysis, and the entanglement view of its chains
(``tngraph inspect RUN``).

:func:`load_run` loads a run directory exactly as ``tngraph eval RUN`` does: the weights it was
tested with (:func:`tngraph.train.tested_weights`), the dataset and split seed it recorded (a
dataset that changed since is refused), the compiled module with those weights, in eval mode.
``tngraph explain`` and ``tngraph inspect`` both start from it.

:func:`inspect_module` finds the chains of a compiled network or pipeline: networks whose
tensors are joined in a line (MPS, TT-layers / MPOs) or in a ring (tensor rings). For each
chain it reads the trained cores, in chain order, and reports per bond (the TT library,
:func:`tngraph.decompose.bond_spectra` and :func:`~tngraph.decompose.entanglement_entropy`):

* the singular values of the cut at that bond (the Schmidt spectrum of the network read as one
  tensor of all its other legs: data legs, open legs; a TT-layer's in and out legs);
* the entanglement entropy ``S = -sum p ln p``, ``p = s^2 / sum s^2`` (nats), and its bound
  ``ln(rank)``, the rank of the cut being at most the bond dimension and either side's size;
* the bond dimension a relative truncation error ``eps`` allows: the smallest rank whose
  discarded singular values have ``sqrt(sum s^2) <= eps / sqrt(d - 1) * ||A||`` (the rule of
  :func:`tngraph.decompose.tt_round`, so that the whole chain is within ``eps``).

A ring is cut at two bonds: it is read as the open chain whose bonds carry the closing bond
too (ranks ``r_k * r_0``), which is exact, so its spectra are the ring's own.

Examples
--------
>>> import tngraph
>>> module = tngraph.compile("models/mps.yaml", {"sites": 4, "bond_dim": 3}, cache=False)
>>> report = inspect_module(module, eps=0.01)
>>> [c["nodes"] for c in report["chains"]]
[['A0', 'A1', 'A2', 'A3']]
>>> report["chains"][0]["bond_dims"]
[3, 3, 3]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from tngraph.compiler import Compiled, Pipeline, TNModule
from tngraph.compiler import compile as compile_spec
from tngraph.data import Dataset, load_dataset
from tngraph.decompose import bond_spectra, entanglement_entropy
from tngraph.errors import TNGraphError
from tngraph.files import atomic_write
from tngraph.schema import NetworkSpec
from tngraph.spec import load_spec
from tngraph.train import (
    TrainingError,
    check_fit,
    data_drift,
    load_weights,
    read_config,
    recorded_data,
    resolve_device,
)
from tngraph.train import tested_weights as weights_tested

__all__ = ["Chain", "InspectError", "LoadedRun", "find_chain", "inspect_module", "inspect_run",
           "load_run", "load_trained", "format_inspect", "plot_spectra", "truncation_rank"]

#: the default relative truncation error of ``tngraph inspect --eps``
DEFAULT_EPS = 1e-2


class InspectError(TNGraphError):
    """A run or a network cannot be inspected (CLI exit code 2); the hint says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# a trained run


@dataclass(frozen=True, eq=False)
class LoadedRun:
    """A run directory loaded as ``tngraph eval RUN`` loads it.

    Attributes
    ----------
    path : Path
        The run directory.
    module : Compiled
        The compiled network or pipeline with the tested weights, in eval mode.
    dataset : Dataset
        The dataset it was trained on, split with the run's seed.
    checkpoint : Path
        The weights file (``best.safetensors`` or ``model.safetensors``).
    data : str
        The dataset spec string.
    seed : int
        The seed of the split.
    """

    path: Path
    module: Compiled
    dataset: Dataset
    checkpoint: Path
    data: str
    seed: int


def load_run(run: str | Path, *, device: str | None = None) -> LoadedRun:
    """Load a run directory written by ``tngraph train`` / ``distill``: its tested weights,
    its dataset and split, as ``tngraph eval RUN`` does.

    Raises
    ------
    TrainingError
        Not a run directory, no readable ``config.json``, weights that do not match the run's
        manifest or network, a dataset that changed since the run.

    Examples
    --------
    >>> run = load_run("runs/demo")                        # doctest: +SKIP
    >>> run.module(run.dataset.x_test[:4]).shape           # doctest: +SKIP
    torch.Size([4, 10])
    """
    path = Path(run)
    if not path.is_dir():
        raise TrainingError(f"{path} is not a run directory; give a folder written by tngraph "
                            "train (it holds spec.yaml, config.json and the weights)")
    if not (path / "spec.yaml").is_file():
        raise TrainingError(f"{path} is a folder without spec.yaml; give a run directory "
                            "written by tngraph train")
    try:
        read_config(path)
    except TrainingError as exc:
        raise TrainingError(f"cannot tell which split {path} was trained on ({exc}); train "
                            "it again, or restore its config.json") from None
    checkpoint, source = weights_tested(path)
    return load_trained(source, checkpoint, device=device, run=path)


def load_trained(spec: str | Path, checkpoint: str | Path, *,
                 overrides: Mapping[str, Any] | None = None, data: str | None = None,
                 seed: int | None = None, device: str | None = None,
                 run: str | Path | None = None) -> LoadedRun:
    """Compile ``spec``, load ``checkpoint`` into it and load the dataset it was trained on,
    split as it was: ``data`` and ``seed`` default to those recorded with the weights (their
    run's ``config.json`` or their metadata), the device to the recorded one. What ``tngraph
    eval`` and :func:`load_run` share.

    Raises
    ------
    TrainingError
        Weights that do not fit the network, or a dataset that changed since they were trained
        (its recorded split sizes or checksums differ).
    """
    recorded = recorded_data(checkpoint)
    loaded = load_spec(spec, overrides)
    target = resolve_device(device or recorded.get("device") or loaded.train.device)
    seed = seed if seed is not None else recorded.get("seed", loaded.train.seed)
    data = data or recorded.get("data") or loaded.train.data
    dataset = load_dataset(data, seed=seed)
    drift = (data_drift(recorded, dataset)
             if recorded.get("data") == data and recorded.get("seed") == seed else None)
    if drift:
        raise TrainingError(f"{checkpoint} was trained on {data} ({recorded['where']}), but "
                            f"{drift}: the dataset changed since, so its test split may hold "
                            "examples it was trained on; restore the data it was trained on")
    module = compile_spec(loaded)
    check_fit(module, dataset)
    load_weights(module, checkpoint)
    module = module.to(target).eval()
    return LoadedRun(Path(run if run is not None else Path(checkpoint).parent), module, dataset,
                     Path(checkpoint), data, int(seed))


# ---------------------------------------------------------------------------------------------
# chains and their cores


@dataclass(frozen=True)
class Chain:
    """The tensors of one network in chain order.

    Attributes
    ----------
    name : str
        The network's name (``fc1`` for a pipeline layer).
    nodes : tuple of str
        Node names in chain order.
    ring : bool
        Whether the last node joins the first (a tensor ring).
    cores : tuple of Tensor
        One core per node, ``(left bond, *other legs, right bond)`` (size-1 bonds at the ends
        of an open chain; a node with no other leg gets a size-1 mode).
    legs : tuple of tuple of str
        The other legs of each core, in axis order.
    """

    name: str
    nodes: tuple[str, ...]
    ring: bool
    cores: tuple[torch.Tensor, ...]
    legs: tuple[tuple[str, ...], ...]


def _bond_graph(network: NetworkSpec) -> nx.MultiGraph:
    """Nodes = the network's tensors; edges = bonds between two of them (``legs``)."""
    graph = nx.MultiGraph()
    graph.add_nodes_from(network.nodes)
    for edge in network.edges:
        ends = [ref.split(".", 1) for ref in edge]
        if len(ends) != 2:
            if sum(u in network.nodes for u, _ in ends) > 1:
                graph.graph["hyperedge"] = edge      # (not a line or ring: see _chain_order)
            continue
        (u, leg_u), (v, leg_v) = ends
        if u in network.nodes and v in network.nodes:
            graph.add_edge(u, v, legs={u: leg_u, v: leg_v} if u != v else {u: leg_u})
    return graph


def _chain_order(network: NetworkSpec) -> tuple[list[str], bool] | str:
    """The node order of a line or ring of tensors, or why the network is neither."""
    graph = _bond_graph(network)
    simple = nx.Graph(graph)
    names = list(network.nodes)
    if "hyperedge" in graph.graph:
        return f"hyperedge [{', '.join(graph.graph['hyperedge'])}] joins several tensors"
    if any(u == v for u, v in graph.edges()):
        return "a tensor has a trace (an edge joining two of its own legs)"
    if len(names) < 2:
        return "it has one tensor, no bond"
    if not nx.is_connected(simple):
        return "its tensors are not all joined"
    degrees = dict(simple.degree())
    if max(degrees.values()) > 2:
        busy = next(n for n, d in degrees.items() if d > 2)
        return f"tensor {busy} has {degrees[busy]} neighbours (a chain has at most 2)"
    ends = [n for n in names if degrees[n] == 1]
    ring = not ends
    start = ends[0] if ends else names[0]
    order = [start]
    while len(order) < len(names):
        following = [n for n in simple[order[-1]] if n not in order]
        order.append(following[0])
    return order, ring


def find_chain(network: NetworkSpec, tensors: Mapping[str, torch.Tensor], name: str
               ) -> Chain | str:
    """The :class:`Chain` of ``network`` with the values ``tensors`` (node name -> tensor, axes
    in declared leg order), or a sentence saying why it is not a chain.

    Examples
    --------
    >>> from tngraph.spec import load_spec
    >>> spec = load_spec("models/ring3.yaml")
    >>> tensors = {n: torch.ones(node.shape) for n, node in spec.network.nodes.items()}
    >>> chain = find_chain(spec.network, tensors, "ring3")
    >>> chain.nodes, chain.ring, [tuple(c.shape) for c in chain.cores]
    (('A', 'B', 'C'), True, [(1, 3, 10), (10, 4, 12), (12, 3, 1)])
    """
    found = _chain_order(network)
    if isinstance(found, str):
        return found
    order, ring = found
    graph = _bond_graph(network)
    cores: list[torch.Tensor] = []
    legs_out: list[tuple[str, ...]] = []
    n = len(order)
    for k, node in enumerate(order):
        before = order[k - 1] if k > 0 or ring else None
        after = order[(k + 1) % n] if k < n - 1 or ring else None
        core, other = _core(network, graph, node, before, after, tensors[node])
        cores.append(core)
        legs_out.append(other)
    if ring:
        cores = _open_ring(cores)
    return Chain(name, tuple(order), ring, tuple(cores), tuple(legs_out))


def _core(network: NetworkSpec, graph: nx.MultiGraph, node: str, before: str | None,
          after: str | None, tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``node``'s tensor as a core ``(left bond, *other legs, right bond)`` (float64, CPU)."""
    declared = list(network.nodes[node].legs)
    dims = dict(network.nodes[node].legs)

    def bond_legs(other: str | None) -> list[str]:
        if other is None:
            return []
        edges = graph.get_edge_data(node, other, default={}).values()
        return sorted((data["legs"][node] for data in edges), key=declared.index)

    left, right = bond_legs(before), bond_legs(after)
    other = tuple(leg for leg in declared if leg not in left and leg not in right)
    perm = [declared.index(leg) for leg in (*left, *other, *right)]
    modes = [dims[leg] for leg in other] or [1]
    core = tensor.detach().to(torch.float64).cpu().permute(perm).reshape(
        math.prod(dims[leg] for leg in left), *modes, math.prod(dims[leg] for leg in right))
    return core, other


def _open_ring(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A ring's cores as an open chain carrying the closing bond ``b`` (exact: ranks
    ``r_k * r_0``): the first core moves ``b`` to its right, ``(a_1, b)``; every middle core
    is ``G_k ⊗ I_b``; the last core closes ``b`` on its right."""
    r0 = cores[0].shape[0]
    eye = torch.eye(r0, dtype=cores[0].dtype)
    out = []
    for k, core in enumerate(cores):
        modes = core.shape[1:-1]
        flat = core.reshape(core.shape[0], -1, core.shape[-1])       # (a, m, c)
        a, m, c = flat.shape
        if k == 0:
            opened = flat.permute(1, 2, 0).reshape(1, m, c * r0)
        elif k == len(cores) - 1:
            opened = flat.permute(0, 2, 1).reshape(a * r0, m, 1)
        else:
            opened = torch.einsum("amc,bd->abmcd", flat, eye).reshape(a * r0, m, c * r0)
        out.append(opened.reshape(opened.shape[0], *modes, opened.shape[-1]))
    return out


def truncation_rank(spectrum: Sequence[float], delta: float) -> int:
    """The smallest rank whose discarded singular values have ``sqrt(sum s^2) <= delta``
    (at least 1).

    >>> truncation_rank([3.0, 2.0, 0.1, 0.01], 0.2)
    2
    """
    s2 = [float(s) ** 2 for s in spectrum]
    tail = 0.0
    rank = len(s2)
    for k in range(len(s2) - 1, 0, -1):
        tail += s2[k]
        if math.sqrt(tail) > delta:
            break
        rank = k
    return max(rank, 1)


def _chain_report(chain: Chain, eps: float) -> dict[str, Any]:
    spectra = bond_spectra(list(chain.cores))
    entropy = entanglement_entropy(list(chain.cores))
    norm = math.sqrt(float((spectra[0].double() ** 2).sum())) if spectra else 0.0
    delta = eps / math.sqrt(max(len(spectra), 1)) * norm
    closing = f" +{chain.nodes[-1]}-{chain.nodes[0]}" if chain.ring else ""
    bonds = [f"{chain.nodes[k]}-{chain.nodes[k + 1]}{closing}"
             for k in range(len(chain.nodes) - 1)]
    modes = [math.prod(c.shape[1:-1]) for c in chain.cores]
    # the rank of a cut is at most its bond dimension and either side's number of entries
    bounds = [min(int(chain.cores[k].shape[-1]), math.prod(modes[:k + 1]),
                  math.prod(modes[k + 1:])) for k in range(len(chain.cores) - 1)]
    return {
        "name": chain.name,
        "kind": "ring" if chain.ring else "chain",
        "nodes": list(chain.nodes),
        "bonds": bonds,
        "bond_dims": [int(c.shape[-1]) for c in chain.cores[:-1]],
        "spectra": [[float(v) for v in s] for s in spectra],
        "entropy": [float(v) for v in entropy],
        "max_entropy": [math.log(b) for b in bounds],
        "eps": eps,
        "ranks_at_eps": [truncation_rank(s.tolist(), delta) for s in spectra],
    }


def _networks(module: Compiled) -> dict[str, TNModule]:
    if isinstance(module, Pipeline):
        return module.networks()
    if isinstance(module, TNModule):
        return {module.spec.name: module}
    raise InspectError(f"expected a network or pipeline compiled by tngraph, got "
                       f"{type(module).__name__}", "compile it with tngraph.compile(spec)")


def inspect_module(module: Compiled, *, eps: float = DEFAULT_EPS) -> dict[str, Any]:
    """Bond spectra, entanglement entropy and the ranks that ``eps`` allows, per chain of
    ``module`` (a network, or each network layer of a pipeline).

    Returns ``{"eps", "chains": [...], "skipped": {name: reason}}``; each chain as in the JSON
    that ``tngraph inspect`` writes (``name``, ``kind``, ``nodes``, ``bonds``, ``bond_dims``,
    ``spectra``, ``entropy``, ``max_entropy``, ``eps``, ``ranks_at_eps``).

    Raises
    ------
    InspectError
        No network of ``module`` is a chain or ring, or ``eps`` is not in (0, 1).
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise InspectError(f"--eps must be a relative error between 0 and 1, got {eps!r}",
                           "e.g. --eps 0.01 for the bond dimensions that keep 99% of the norm")
    networks = _networks(module)
    if not networks:
        raise InspectError(f"pipeline '{module.spec.name}' has no tensor-network layer",
                           "inspect reads MPS, TT-layers (MPOs) and tensor rings: networks "
                           "whose tensors are joined in a line or a ring")
    chains, skipped = [], {}
    for name, network in networks.items():
        tensors = {k: v for k, v in network.tensors.items()}
        found = find_chain(network.spec.network, tensors, name)
        if isinstance(found, str):
            skipped[name] = found
        else:
            chains.append(_chain_report(found, float(eps)))
    if not chains:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise InspectError(f"no chain to inspect ({why})",
                           "inspect reads MPS, TT-layers (MPOs) and tensor rings: networks "
                           "whose tensors are joined in a line or a ring")
    return {"eps": float(eps), "chains": chains, "skipped": skipped}


def format_inspect(report: Mapping[str, Any]) -> str:
    """The report as a text table, one row per bond.

    >>> print(format_inspect({"eps": 0.1, "skipped": {}, "chains": [{"name": "m",
    ...     "kind": "chain", "bonds": ["A-B"], "bond_dims": [2], "entropy": [0.5],
    ...     "max_entropy": [0.6931], "ranks_at_eps": [1]}]}))
    m (chain, 1 bonds)
      bond   dim   entropy (nats)   of max   rank at eps 0.1
      A-B      2           0.5000      72%                 1
    """
    lines = []
    for chain in report["chains"]:
        lines.append(f"{chain['name']} ({chain['kind']}, {len(chain['bonds'])} bonds)")
        width = max(4, *(len(b) for b in chain["bonds"]))
        lines.append(f"  {'bond':{width}}   dim   entropy (nats)   of max   rank at eps "
                     f"{report['eps']:g}")
        for bond, dim, s, top, rank in zip(chain["bonds"], chain["bond_dims"], chain["entropy"],
                                           chain["max_entropy"], chain["ranks_at_eps"]):
            share = f"{s / top:.0%}" if top > 0 else "-"
            lines.append(f"  {bond:{width}} {dim:5d} {s:16.4f} {share:>8} {rank:17d}")
    for name, reason in report.get("skipped", {}).items():
        lines.append(f"{name}: not a chain ({reason})")
    return "\n".join(lines)


def plot_spectra(report: Mapping[str, Any], path: Path) -> None:
    """One row per chain: the singular values of every bond (log scale) and the entropy per
    bond against its bound ``ln(dim)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chains = report["chains"]
    fig, axes = plt.subplots(len(chains), 2, figsize=(10, 3.2 * len(chains)), squeeze=False)
    for row, chain in zip(axes, chains):
        cmap = plt.get_cmap("viridis")
        n = max(len(chain["spectra"]) - 1, 1)
        for k, s in enumerate(chain["spectra"]):
            values = [v for v in s if v > 0]
            row[0].semilogy(range(1, len(values) + 1), values, marker=".", color=cmap(k / n),
                            label=chain["bonds"][k] if len(chain["spectra"]) <= 8 else None)
        row[0].set_title(f"{chain['name']}: singular values per bond")
        row[0].set_xlabel("index")
        if len(chain["spectra"]) <= 8:
            row[0].legend(fontsize=7)
        x = range(len(chain["entropy"]))
        row[1].bar(x, chain["entropy"], color="tab:blue", label="entropy")
        row[1].plot(x, chain["max_entropy"], "k_", markersize=12, label="ln(max rank)")
        row[1].set_title(f"{chain['name']}: entanglement entropy (nats)")
        row[1].set_xticks(list(x))
        row[1].set_xticklabels(chain["bonds"], rotation=90, fontsize=6)
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def inspect_run(run: str | Path, *, eps: float = DEFAULT_EPS, out: str | Path | None = None,
                device: str | None = None) -> tuple[dict[str, Any], Path]:
    """Inspect a trained run's chains (:func:`inspect_module` of :func:`load_run`); write
    ``inspect.json`` and ``spectra.png`` into ``out`` (default ``<run>-inspect``).

    Returns the report and the output folder.
    """
    loaded = load_run(run, device=device)
    report = inspect_module(loaded.module, eps=eps)
    folder = Path(out) if out is not None else loaded.path.with_name(loaded.path.name
                                                                     + "-inspect")
    if folder.exists() and not folder.is_dir():
        raise InspectError(f"--out {folder} is a file", "give a folder (it is created)")
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run": str(loaded.path), "checkpoint": str(loaded.checkpoint), **report}
    atomic_write(folder / "inspect.json", json.dumps(record, indent=2).encode())
    plot_spectra(report, folder / "spectra.png")
    return record, folder
