"""Spec -> networkx graph -> an einsum problem (``inputs, output, size_dict``) for the planner.

Graph nodes are tensors and data-port copies; graph edges are bonds (a self-loop is a trace);
open legs and the batch leg are graph attributes. ``einsum_problem`` numbers every index and keeps
a human name for each (``A3.r``, ``batch``), used in step tables and error messages.

The batch leg of data ports is one *hyperedge*: the same index appears on every data port and on
the output. A spec's own hyperedges (``edges`` entries of three or more ends) are indices of
the same kind: one symbol on every listed leg, in the output where one of its legs is open.
The planner sees the batch as such, so contraction orders are chosen for the batch size of
the plan, and cost reports are per batch.

Examples
--------
>>> from tngraph.spec import load_spec
>>> spec = load_spec("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 3, phys_dim: 2, "
...                  "bond_dim: 4}\\n")
>>> problem = einsum_problem(spec)
>>> [t.name for t in problem.terms], problem.named_equation()
(['A0', 'A1', 'A2'], 'A0[p,r],A1[l,p,r],A2[l,p]->[A0.p,A1.p,A2.p]')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from tngraph.errors import CompileError
from tngraph.schema import LEG_REF_RE, NetworkSpec, Spec, leg_table

BATCH = "batch"


@dataclass(frozen=True)
class Term:
    """One tensor of the einsum: a parameter node or a copy of a data port."""

    name: str                 # graph-node name: "A3" or "x[3]"
    kind: str                 # "tensor" | "input"
    legs: tuple[str, ...]     # leg names in axis order (without the batch leg)
    shape: tuple[int, ...]
    port: str | None = None   # data-port name for inputs
    copy: int | None = None   # index of the copy of a stacked port


@dataclass(frozen=True)
class EinsumProblem:
    """What the planner needs, plus names to explain it.

    ``inputs[k]`` lists the index symbols of ``terms[k]`` (a symbol repeats on a trace; data ports
    carry the batch symbol first). ``output`` is the batch symbol (if any data port exists) followed
    by the ``outputs`` legs in order.
    """

    terms: tuple[Term, ...]
    inputs: tuple[tuple[str, ...], ...]
    output: tuple[str, ...]
    size_dict: dict[str, int]
    index_names: dict[str, str]
    batch: str | None

    @property
    def n_tensors(self) -> int:
        return sum(t.kind == "tensor" for t in self.terms)

    def term_index(self, name: str) -> int:
        return next(k for k, t in enumerate(self.terms) if t.name == name)

    def named_equation(self) -> str:
        """The whole contraction in the spec's own names."""
        parts = [f"{t.name}[{','.join(((BATCH,) if t.kind == 'input' else ()) + t.legs)}]"
                 for t in self.terms]
        return ",".join(parts) + "->[" + ",".join(self.index_names[s] for s in self.output) + "]"

    def with_batch_size(self, batch_size: int) -> EinsumProblem:
        """The same problem with another batch size (no-op without data ports)."""
        if self.batch is None:
            return self
        sizes = {**self.size_dict, self.batch: batch_size}
        return EinsumProblem(self.terms, self.inputs, self.output, sizes, self.index_names,
                             self.batch)


def build_graph(spec: Spec) -> nx.MultiGraph:
    """The network as a networkx MultiGraph.

    Nodes carry ``kind`` ("tensor"/"input"), ``legs`` ({leg: dim}) and for data-port copies
    ``port`` and ``copy``. Edges carry ``legs`` (the two leg references), ``dim``, and
    those of a hyperedge ``hyperedge`` (the number of the spec's edge); a trace is a
    self-loop. A hyperedge of ``n`` ends is ``n - 1`` graph edges from its first end to each
    other end (a star: connectivity is kept, the index is one); ``graph.graph["bonds"]`` lists
    every spec edge's ends as (node, leg) pairs, and ``graph.graph["outputs"]`` the open legs
    in order.
    """
    net = spec.network
    graph = nx.MultiGraph(name=spec.name)
    for name, node in net.nodes.items():
        graph.add_node(name, kind="tensor", legs=dict(node.legs))
    for port_name, port in net.inputs.items():
        for k, copy in enumerate(port.copies(port_name)):
            graph.add_node(copy, kind="input", legs=dict(port.legs), port=port_name,
                           copy=k if port.stack is not None else None)
    bonds: list[tuple[tuple[str, str], ...]] = []
    for k, edge in enumerate(net.edges):
        ends = tuple(map(_split, edge))
        bonds.append(ends)
        (u, leg_u) = ends[0]
        dim = graph.nodes[u]["legs"][leg_u]
        for v, leg_v in ends[1:]:       # a hyperedge: a star of graph edges from its first end
            graph.add_edge(u, v, legs=((u, leg_u), (v, leg_v)), dim=dim,
                           **({"hyperedge": k} if len(ends) > 2 else {}))
    graph.graph["bonds"] = bonds
    graph.graph["outputs"] = [_split(ref) for ref in net.outputs]
    graph.graph["has_inputs"] = bool(net.inputs)
    return graph


def _split(ref: str) -> tuple[str, str]:
    match = LEG_REF_RE.match(ref)
    assert match, ref  # validated before
    return match.group(1), match.group(2)


def _symbol(k: int) -> str:
    # Any hashable works for cotengra; readable, stable and unicode-free symbols help debugging.
    return f"i{k}"


def einsum_problem(spec: Spec, batch_size: int | None = None) -> EinsumProblem:
    """Number the indices of ``spec``'s network for the planner.

    Parameters
    ----------
    spec
        A validated spec.
    batch_size
        Size of the batch index (default: the spec's ``plan.batch_size``); ignored without
        data ports.
    """
    graph = build_graph(spec)
    leg_symbol: dict[tuple[str, str], str] = {}
    names: dict[str, str] = {}
    sizes: dict[str, int] = {}
    counter = 0

    def new_symbol(name: str, dim: int) -> str:
        nonlocal counter
        symbol = _symbol(counter)
        counter += 1
        names[symbol] = name
        sizes[symbol] = dim
        return symbol

    for ends in graph.graph["bonds"]:
        a, leg_a = ends[0]
        symbol = new_symbol(f"{a}.{leg_a}", graph.nodes[a]["legs"][leg_a])
        for end in ends:
            leg_symbol[end] = symbol
    output: list[str] = []
    batch = None
    if graph.graph["has_inputs"]:
        batch = new_symbol(BATCH, batch_size or spec.plan.batch_size)
        output.append(batch)
    for node, leg in graph.graph["outputs"]:
        symbol = leg_symbol.get((node, leg))      # a hyperedge kept open: its shared index
        if symbol is None:
            symbol = new_symbol(f"{node}.{leg}", graph.nodes[node]["legs"][leg])
            leg_symbol[(node, leg)] = symbol
        output.append(symbol)

    terms: list[Term] = []
    inputs: list[tuple[str, ...]] = []
    for name, data in graph.nodes(data=True):
        legs = tuple(data["legs"])
        symbols = tuple(leg_symbol[(name, leg)] for leg in legs)
        if data["kind"] == "input":
            symbols = (batch, *symbols)  # data arrive as (batch, *legs)
        terms.append(Term(name, data["kind"], legs, tuple(data["legs"].values()),
                          data.get("port"), data.get("copy")))
        inputs.append(symbols)
    return EinsumProblem(tuple(terms), tuple(inputs), tuple(output), sizes, names, batch)


def parameter_count(spec: Spec) -> int:
    """Number of trainable entries (all node tensors but those reusing another's, plus the bias
    if any)."""
    count = sum(math.prod(node.shape) for node in spec.network.nodes.values()
                if node.same_as is None)
    if spec.network.bias:
        count += output_size(spec)
    return count


def output_size(spec: Spec) -> int:
    """Number of entries of one result (without the batch axis)."""
    legs = leg_table(spec.network)
    return math.prod(legs[n][leg] for n, leg in map(_split, spec.network.outputs))


def input_size(spec: Spec) -> int:
    """Number of entries of one sample of all data ports together (after feature maps)."""
    return math.prod(
        math.prod(port.shape) ** (port.stack or 1) for port in spec.network.inputs.values()
    )


def dense_size(spec: Spec) -> int:
    """Entries of the dense tensor the network represents: the map from every data-port entry
    to every output entry (for a network without data ports, the full output tensor)."""
    return input_size(spec) * output_size(spec)


class ChainError(CompileError):
    """The network's tensor nodes do not form an open chain (the message says why)."""


#: what :func:`chain_sites` accepts, for its messages
CHAIN_SUPPORTED = ("supported: an open chain of tensor nodes (each bonded to at most two "
                   "others by one edge, no ring), e.g. the templates mps (boundary: open) and "
                   "tt_linear")


@dataclass(frozen=True)
class ChainSite:
    """One node of an open chain and the roles of its legs.

    Attributes
    ----------
    node
        Node name (key of ``spec.network.nodes`` and ``module.tensors``).
    left, right
        Its leg bonded to the previous / next site (``None`` at the first / last site).
    physical
        Its other legs, in declared order.
    declared
        Every leg in the node's declared order (the axis order of its tensor); empty means
        ``(left, *physical, right)``.
    """

    node: str
    left: str | None
    right: str | None
    physical: tuple[str, ...]
    declared: tuple[str, ...] = ()

    @property
    def legs(self) -> tuple[str, ...]:
        """The node's legs in axis order."""
        if self.declared:
            return self.declared
        return ((self.left,) if self.left else ()) + self.physical \
            + ((self.right,) if self.right else ())


def chain_sites(network: NetworkSpec, name: str = "network",
                supported: str = CHAIN_SUPPORTED) -> tuple[ChainSite, ...]:
    """The tensor nodes of ``network`` as an open chain, first to last (torch-free).

    Node-node edges must form a path: every node bonded to at most two others, exactly one edge
    between neighbours, no trace, ring, branch, hyperedge among nodes or shared (``same_as``)
    node, all nodes connected. Legs joined to data ports and open legs are physical. The chain
    starts at the end that comes first in the declared node order (``A0`` of an ``mps``, ``G0``
    of a ``tt_linear``). ``name`` and ``supported`` go into the messages.

    Raises
    ------
    ChainError
        Saying what breaks the chain.

    Examples
    --------
    >>> net = NetworkSpec(nodes={"B": {"legs": {"l": 2, "p": 3}},
    ...                          "A": {"legs": {"p": 3, "r": 2}}},
    ...                   edges=[["A.r", "B.l"]], outputs=["A.p", "B.p"])
    >>> [(s.node, s.left, s.right, s.physical) for s in chain_sites(net)]
    [('B', None, 'l', ('p',)), ('A', 'r', None, ('p',))]
    """
    nodes = network.nodes
    names = list(nodes)
    if not names:
        raise ChainError(f"{name} has no tensor nodes; {supported}")
    shared = [n for n, node in nodes.items() if node.same_as is not None]
    if shared:
        raise ChainError(f"{name} is not a chain: node '{shared[0]}' reuses another node's "
                         f"tensor (same_as); {supported}")
    # neighbour -> (own leg, neighbour's leg), per node
    links: dict[str, dict[str, tuple[str, str]]] = {n: {} for n in names}
    for edge in network.edges:
        ends = [_split(ref) for ref in edge]
        inner = [(n, leg) for n, leg in ends if n in nodes]
        if len(inner) < 2:
            continue                             # a leg joined to a data port: physical
        if len(ends) > 2:
            raise ChainError(f"{name} is not a chain: hyperedge [{', '.join(edge)}] joins "
                             f"several nodes; {supported}")
        (a, leg_a), (b, leg_b) = inner
        if a == b:
            raise ChainError(f"{name} is not a chain: edge [{', '.join(edge)}] is a trace of "
                             f"node '{a}'; {supported}")
        if b in links[a]:
            first = links[a][b]
            raise ChainError(
                f"{name} is not a chain: nodes '{a}' and '{b}' are joined by more than one "
                f"edge ([{a}.{first[0]}, {b}.{first[1]}] and [{', '.join(edge)}]); "
                f"{supported} (merge the two legs into one)")
        links[a][b] = (leg_a, leg_b)
        links[b][a] = (leg_b, leg_a)
    branch = [n for n in names if len(links[n]) > 2]
    if branch:
        n = branch[0]
        raise ChainError(f"{name} is not a chain: node '{n}' is bonded to {len(links[n])} "
                         f"nodes ({', '.join(links[n])}), a tree or grid; {supported}")
    ends = [n for n in names if len(links[n]) <= 1]
    if not ends:
        raise ChainError(f"{name} is a ring (every node has two neighbours: "
                         f"{' - '.join(names)}); {supported}, e.g. mps with boundary: open")
    order = [ends[0]]
    previous: str | None = None
    while len(order) <= len(names):         # (the degree checks exclude a ring here)
        following = [n for n in links[order[-1]] if n != previous]
        if not following:
            break
        previous = order[-1]
        order.append(following[0])
    if len(order) != len(names):
        rest = [n for n in names if n not in order]
        raise ChainError(f"{name} is not one chain: nodes {', '.join(rest)} are not connected "
                         f"to {order[0]}; {supported}")
    sites = []
    for k, node in enumerate(order):
        left = links[node][order[k - 1]][0] if k > 0 else None
        right = links[node][order[k + 1]][0] if k + 1 < len(order) else None
        physical = tuple(leg for leg in nodes[node].legs if leg not in (left, right))
        sites.append(ChainSite(node, left, right, physical, tuple(nodes[node].legs)))
    return tuple(sites)
