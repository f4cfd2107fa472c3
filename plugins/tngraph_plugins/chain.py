"""The tensor nodes of a network seen as one open chain (a tensor train), for chain optimizers.

Sweeping optimizers (``dmrg``) and manifold optimizers (``riemannian``, ``tangent``) work on a
network whose parameter tensors form a *path*: every node is bonded to at most two others, by
exactly one edge each, with no ring. :func:`find_chain` finds that path in a spec; a
:class:`Chain` converts between the module's tensors (legs in each node's declared order) and TT
cores ``(left, physical, right)`` as :mod:`tngraph.decompose` uses them, and resizes the bonds
(:meth:`Chain.resize`, :func:`rebuild`) when a strategy changes the ranks.

Legs of a site that are not bonds to its neighbours are its *physical* legs: legs joined to a
data port (``x[k].p``, ``x.i0``), open output legs (``o``), TT-matrix ``i``/``o`` legs. They keep
the node's declared order and are flattened into one mode axis of the core.

This module's top level does not import torch.

Examples
--------
>>> from tngraph.spec import load_spec
>>> spec = load_spec("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 3, phys_dim: 2, "
...                  "bond_dim: 4, input: x, output_dim: 5}\\n")
>>> chain = find_chain(spec)
>>> [(s.node, s.left, s.right, s.physical) for s in chain.sites]
[('A0', None, 'r', ('p',)), ('A1', 'l', 'r', ('p', 'o')), ('A2', 'l', None, ('p',))]
>>> chain.bond_dims(spec)
[4, 4]
>>> chain.resize(spec, [2, 3]).network.nodes["A1"].legs
{'l': 2, 'p': 2, 'r': 3, 'o': 5}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tngraph.compiler import compile as compile_spec
from tngraph.graph import ChainError, ChainSite, chain_sites
from tngraph.spec import load_spec
from tngraph.yamlio import dump_yaml

if TYPE_CHECKING:
    from torch import Tensor

    from tngraph.compiler import TNModule
    from tngraph.schema import Spec

__all__ = ["Chain", "ChainError", "ChainSite", "find_chain", "rebuild"]

@dataclass(frozen=True)
class Chain:
    """The sites of an open chain, first to last (see :func:`find_chain`)."""

    sites: tuple[ChainSite, ...]

    @property
    def nodes(self) -> list[str]:
        """Node names in chain order."""
        return [s.node for s in self.sites]

    def bond_dims(self, spec: Spec) -> list[int]:
        """The ``len(sites) - 1`` bond dimensions, as declared in ``spec``."""
        nodes = spec.network.nodes
        return [nodes[s.node].legs[s.right] for s in self.sites[:-1]]  # type: ignore[index]

    def physical_dims(self, spec: Spec) -> list[tuple[int, ...]]:
        """Per site, the dimensions of its physical legs (declared order)."""
        nodes = spec.network.nodes
        return [tuple(nodes[s.node].legs[leg] for leg in s.physical) for s in self.sites]

    def to_cores(self, tensors: Mapping[str, Tensor]) -> list[Tensor]:
        """The node tensors as TT cores ``(l, p, r)``: legs permuted to ``(left, *physical,
        right)``, physical legs flattened (``p = prod`` of their dims, 1 without any), ``l = 1``
        at the first site and ``r = 1`` at the last.

        The cores are views where possible (no copy); they keep autograd.
        """
        cores = []
        for site in self.sites:
            t = tensors[site.node]
            legs = list(site.legs)
            if len(legs) != t.dim():
                raise ChainError(f"tensor of node '{site.node}' has {t.dim()} axes but the "
                                 f"node has {len(legs)} legs ({', '.join(legs)})")
            order = ([legs.index(site.left)] if site.left else []) \
                + [legs.index(leg) for leg in site.physical] \
                + ([legs.index(site.right)] if site.right else [])
            t = t.permute(order) if order != list(range(t.dim())) else t
            left = t.shape[0] if site.left else 1
            right = t.shape[-1] if site.right else 1
            cores.append(t.reshape(left, -1, right))
        return cores

    def from_cores(self, cores: Sequence[Tensor], spec: Spec) -> dict[str, Tensor]:
        """Inverse of :meth:`to_cores`: node name -> tensor in the node's declared leg order.

        The cores may have other bond dimensions than ``spec`` declares (physical dimensions
        must match); the result then fits :meth:`resize` of ``spec`` to those bonds.
        """
        if len(cores) != len(self.sites):
            raise ChainError(f"the chain has {len(self.sites)} sites but {len(cores)} cores "
                             "were given")
        nodes = spec.network.nodes
        out: dict[str, Tensor] = {}
        for k, (site, core) in enumerate(zip(self.sites, cores)):
            phys = tuple(nodes[site.node].legs[leg] for leg in site.physical)
            if core.dim() != 3 or core.shape[1] != math.prod(phys) \
                    or (site.left is None and core.shape[0] != 1) \
                    or (site.right is None and core.shape[2] != 1):
                raise ChainError(f"core {k} of node '{site.node}' has shape "
                                 f"{tuple(core.shape)}; expected (l, {math.prod(phys)}, r)"
                                 + (" with l = 1" if site.left is None else "")
                                 + (" with r = 1" if site.right is None else ""))
            chain_legs = ([site.left] if site.left else []) + list(site.physical) \
                + ([site.right] if site.right else [])
            shape = ([core.shape[0]] if site.left else []) + list(phys) \
                + ([core.shape[2]] if site.right else [])
            t = core.reshape(shape)
            declared = list(nodes[site.node].legs)
            order = [chain_legs.index(leg) for leg in declared]
            out[site.node] = t.permute(order) if order != list(range(len(order))) else t
        return out

    def resize(self, spec: Spec, bond_dims: Sequence[int]) -> Spec:
        """``spec`` in raw form with bond ``k`` (between sites ``k`` and ``k+1``) resized to
        ``bond_dims[k]``; every other key (plan, train, inputs, outputs, inits) is kept.

        The result is loaded and validated like any spec; it has no template and no params.
        """
        dims = [int(b) for b in bond_dims]
        if len(dims) != len(self.sites) - 1 or any(b < 1 for b in dims):
            raise ChainError(f"resize needs {len(self.sites) - 1} bond dimensions >= 1, got "
                             f"{list(bond_dims)}")
        raw = spec.to_raw()
        nodes = raw["network"]["nodes"]
        for k, b in enumerate(dims):
            left, right = self.sites[k], self.sites[k + 1]
            nodes[left.node]["legs"][left.right] = b
            nodes[right.node]["legs"][right.left] = b
        return load_spec(dump_yaml(raw))

    def __post_init__(self) -> None:
        if not self.sites:
            raise ChainError("a chain needs at least one site")


def find_chain(spec: Spec) -> Chain:
    """The open chain formed by ``spec``'s tensor nodes.

    Node-node edges must form a path: every node bonded to at most two others, exactly one edge
    between neighbours, no ring, no branching, all nodes connected. Edges to data ports and
    open output legs are physical. The chain starts at the end of the path that comes first in
    the declared node order (``A0`` for an ``mps``, ``G0`` for a ``tt_linear``).

    Raises
    ------
    ChainError
        Saying what breaks the chain (ring, branch, double edge, trace, disconnected nodes).

    Examples
    --------
    >>> from tngraph.spec import load_spec
    >>> find_chain(load_spec("models/ring3.yaml"))      # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ChainError: network 'ring3' is a ring ...
    """
    return Chain(chain_sites(spec.network, f"network '{spec.name}'"))


def rebuild(module: TNModule, spec: Spec, tensors: Mapping[str, Tensor]) -> TNModule:
    """Compile ``spec`` like ``module`` (plan options, plan cache, device, dtype, training mode),
    load ``tensors`` (node name -> tensor in declared leg order) and ``module``'s bias, and
    return the new module.

    Examples
    --------
    >>> import tngraph
    >>> module = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 3, "
    ...                          "phys_dim: 2, bond_dim: 2}\\n", cache=False)
    >>> chain = find_chain(module.spec)
    >>> cores = chain.to_cores(module.tensors)
    >>> bigger = rebuild(module, chain.resize(module.spec, [2, 2]),
    ...                  chain.from_cores(cores, module.spec))
    >>> bool((bigger() - module()).abs().max() < 1e-6)
    True
    """
    import torch

    ref = next(iter(module.parameters()))
    options = module.plan.options.model_dump()
    # same graph, new dimensions: the old contraction order stays good for a chain, and
    # reusing it saves a full search at every change of bond dimensions; the order that ran
    # (the port-fused one where the plan chose it), not merely the lowest-FLOP one
    path = module.plan.executed_path if module.plan.tree is not None else None
    new = compile_spec(spec, cache_dir=getattr(module, "_cache_dir", None), path=path,
                       **options)
    new = new.to(device=ref.device, dtype=ref.dtype)
    missing = [n for n in new.tensors if n not in tensors]
    if missing:
        raise ChainError(f"rebuild: no tensor for node(s) {', '.join(missing)}")
    with torch.no_grad():
        for name, param in new.tensors.items():
            value = tensors[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ChainError(f"rebuild: tensor for node '{name}' has shape "
                                 f"{tuple(value.shape)} but the spec declares "
                                 f"{tuple(param.shape)}")
            param.copy_(value)
        if module.bias is not None and new.bias is not None \
                and new.bias.shape == module.bias.shape:
            new.bias.copy_(module.bias)
    new.train(module.training)
    return new
