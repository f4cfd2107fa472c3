"""``dmrg``: two-site sweeps over an MPS-like chain with adaptive bond dimensions.

The optimizer of Stoudenmire & Schwab (2016), "Supervised learning with quantum-inspired tensor
networks", as a training strategy. The chain is kept in mixed canonical form with its
orthogonality centre inside the current *bond* ``(j, j+1)``. Each training step (one
mini-batch):

1. merges the two cores of the bond into one tensor ``B[l, p_j, o_j, p_j+1, o_j+1, r]``;
2. computes the outputs from ``B``, the left environment (sites ``< j``) and the right
   environment (sites ``> j+1``) of the batch, each data vector given by the port's feature map,
   and takes one gradient step on ``B`` (the loop's learning rate; ``inner: adam`` or ``sgd``);
3. splits ``B`` again by an SVD truncated to ``max_rank`` singular values and to the relative
   discarded weight ``cutoff`` (``sum(dropped s^2) <= cutoff * sum(s^2)``), with the singular
   values on the side the sweep moves to, so that the orthogonality centre moves with it.

After ``steps_per_bond`` steps the sweep moves to the next bond: left to right, then right to
left, and so on. The bond dimension between the two cores is whatever the truncation keeps, so
it grows where the data needs it (up to ``max_rank``) and shrinks where it does not. Output legs
(the class label ``o`` of a classifier) stay on their own site: they belong to ``B`` when ``B``
holds that site, else to the environment on their side.

The stepper trains its own copy of the cores with its own forward (environments and the merged
tensor: no network is recompiled per bond). ``stepper.module`` -- what evaluation and checkpoints
use -- is brought up to date at ``end_epoch`` and whenever it is read: its tensors are
overwritten, or, when bond dimensions changed, the module is rebuilt from the resized spec
(:func:`tngraph_plugins.chain.rebuild`), so that the checkpoint's ``spec.yaml`` carries the
adapted dimensions and a resumed run continues exactly (the stepper's state holds the sweep
position and direction, the step counter and, within a bond, the inner optimizer's moments).

Networks: an open chain of tensor nodes (:func:`tngraph_plugins.chain.find_chain`), at least two
sites, one data port whose copies feed one physical leg of every site (``stack: sites``), any
other physical legs open outputs. Anything else raises :class:`DMRGError` (exit code 2 from the
CLI). A network ``bias`` is kept fixed.

Examples
--------
>>> DMRG.options(max_rank=16).steps_per_bond
1
>>> next_bond(2, 1, 3)          # at the last bond of a chain of 4 sites: turn around
(1, -1)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from torch import nn

from tngraph.compiler import Pipeline, TNModule
from tngraph.linalg import DecompositionError, one_cpu_thread, svd
from tngraph.optimizers import NonFiniteLoss, OptimizerContext
from tngraph_plugins.chain import Chain, ChainError, find_chain, rebuild
from tngraph_plugins.layerwise import LayerwiseStepper, OpenStep, for_pipeline, single_network_only
from tngraph_plugins.strategies import DMRG, DMRGOptions

if TYPE_CHECKING:
    import torch

    from tngraph.schema import Spec

__all__ = ["DMRG", "DMRGError", "DMRGOptions", "DMRGStepper", "ChainLayout", "chain_layout",
           "create_stepper", "left_environment", "merge", "merged_forward", "next_bond",
           "right_canonicalize", "right_environment", "robust_svd", "split", "truncation_rank"]

_PORT_COPY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[(\d+)\]\.([A-Za-z_][A-Za-z0-9_]*)$")
_SUPPORTED = ("dmrg trains an open MPS-like chain with one data-port copy per site, e.g. "
              "template mps with input and boundary: open")
#: Adam's constants for ``inner: adam`` (moments are reset at every bond)
_BETAS = (0.9, 0.999)
_EPS = 1e-8


class DMRGError(ChainError):
    """The network cannot be trained by ``dmrg`` (not an MPS-like chain fed site by site), or a
    decomposition failed beyond repair."""


# ---------------------------------------------------------------------------------------------
# the chain as the stepper sees it


@dataclass(frozen=True)
class ChainLayout:
    """How a chain network maps onto DMRG cores ``(l, d, K, r)``.

    Core ``k`` has its left bond ``l``, its data leg ``d`` (fed by copy ``copies[k]`` of
    ``port``), its output legs flattened into ``K`` (1 without any) and its right bond ``r``.

    Attributes
    ----------
    chain
        The chain (:func:`tngraph_plugins.chain.find_chain`).
    port
        Name of the data port.
    copies
        Per site, the copy of the port that feeds it.
    data_legs
        Per site, its leg joined to the port.
    out_legs
        Per site, its open output legs (declared order).
    out_dims
        Per site, the dimensions of ``out_legs``.
    out_order
        Permutation from the output axes in chain order to ``spec.network.outputs`` order.
    """

    chain: Chain
    port: str
    copies: tuple[int, ...]
    data_legs: tuple[str, ...]
    out_legs: tuple[tuple[str, ...], ...]
    out_dims: tuple[tuple[int, ...], ...]
    out_order: tuple[int, ...]

    @property
    def n(self) -> int:
        """Number of sites."""
        return len(self.copies)

    def _physical_permutation(self, k: int) -> list[int]:
        """Positions, among site ``k``'s physical legs, of its data leg then its outputs."""
        physical = list(self.chain.sites[k].physical)
        return [physical.index(self.data_legs[k])] + [physical.index(o)
                                                      for o in self.out_legs[k]]

    def to_dmrg(self, cores: Sequence[torch.Tensor], spec: Spec) -> list[torch.Tensor]:
        """Chain cores ``(l, prod(physical), r)`` -> DMRG cores ``(l, d, K, r)``."""
        phys = self.chain.physical_dims(spec)
        out = []
        for k, core in enumerate(cores):
            perm = self._physical_permutation(k)
            t = core.reshape(core.shape[0], *phys[k], core.shape[-1])
            t = t.permute(0, *(p + 1 for p in perm), t.dim() - 1)
            k_dim = 1
            for dim in self.out_dims[k]:
                k_dim *= dim
            out.append(t.reshape(core.shape[0], t.shape[1], k_dim, core.shape[-1]))
        return out

    def to_chain(self, cores: Sequence[torch.Tensor], spec: Spec) -> list[torch.Tensor]:
        """DMRG cores ``(l, d, K, r)`` -> chain cores ``(l, prod(physical), r)``."""
        phys = self.chain.physical_dims(spec)
        out = []
        for k, core in enumerate(cores):
            perm = self._physical_permutation(k)
            l_dim, d, _, r_dim = core.shape
            t = core.reshape(l_dim, d, *self.out_dims[k], r_dim)
            inverse = [perm.index(p) for p in range(len(perm))]
            t = t.permute(0, *(p + 1 for p in inverse), t.dim() - 1)
            out.append(t.reshape(l_dim, -1, r_dim))
            assert out[-1].shape[1] == _prod(phys[k])
        return out


def _prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def chain_layout(spec: Spec) -> ChainLayout:
    """The :class:`ChainLayout` of ``spec``; :class:`DMRGError` (or ``ChainError``) says why a
    network does not fit.

    Examples
    --------
    >>> from tngraph.spec import load_spec
    >>> spec = load_spec("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 3, "
    ...                  "phys_dim: 2, bond_dim: 4, input: x, output_dim: 5}\\n")
    >>> layout = chain_layout(spec)
    >>> layout.copies, layout.out_legs
    ((0, 1, 2), ((), ('o',), ()))
    """
    chain = find_chain(spec)
    net = spec.network
    where = f"network '{spec.name}'"
    if len(chain.sites) < 2:
        raise DMRGError(f"{where} has one tensor node; a two-site sweep needs at least two "
                        f"({_SUPPORTED})")
    if len(net.inputs) != 1:
        raise DMRGError(f"{where} has {len(net.inputs)} data ports; {_SUPPORTED}")
    (port_name, port), = net.inputs.items()
    if port.stack is None or len(port.legs) != 1:
        raise DMRGError(f"{where}: data port '{port_name}' must be stacked (one copy per site) "
                        f"with a single leg; {_SUPPORTED}")
    joined: dict[str, str] = {}
    for edge in net.edges:
        if len(edge) != 2:
            raise DMRGError(f"{where}: hyperedge [{', '.join(edge)}] joins {len(edge)} legs; "
                            f"{_SUPPORTED}")
        a, b = edge
        joined[a] = b
        joined[b] = a
    outputs = list(net.outputs)
    copies: list[int] = []
    data_legs: list[str] = []
    out_legs: list[tuple[str, ...]] = []
    out_dims: list[tuple[int, ...]] = []
    for site in chain.sites:
        data: list[tuple[str, int]] = []
        outs: list[str] = []
        for leg in site.physical:
            ref = f"{site.node}.{leg}"
            other = joined.get(ref)
            match = _PORT_COPY.match(other) if other is not None else None
            if match is not None and match.group(1) == port_name:
                data.append((leg, int(match.group(2))))
            elif other is None and ref in outputs:
                outs.append(leg)
            else:
                raise DMRGError(f"{where}: leg {ref} is neither fed by a copy of data port "
                                f"'{port_name}' nor an open output; {_SUPPORTED}")
        if len(data) != 1:
            raise DMRGError(f"{where}: node '{site.node}' has {len(data)} legs fed by data port "
                            f"'{port_name}'; {_SUPPORTED}")
        copies.append(data[0][1])
        data_legs.append(data[0][0])
        out_legs.append(tuple(outs))
        out_dims.append(tuple(net.nodes[site.node].legs[o] for o in outs))
    if sorted(copies) != list(range(port.stack)):
        raise DMRGError(f"{where}: the {port.stack} copies of data port '{port_name}' do not "
                        f"feed the {len(chain.sites)} sites one each; {_SUPPORTED}")
    chain_refs = [f"{s.node}.{o}" for s, outs in zip(chain.sites, out_legs) for o in outs]
    if sorted(chain_refs) != sorted(outputs):
        raise DMRGError(f"{where}: outputs {outputs} are not all legs of the chain's sites; "
                        f"{_SUPPORTED}")
    order = tuple(chain_refs.index(ref) for ref in outputs)
    return ChainLayout(chain, port_name, tuple(copies), tuple(data_legs), tuple(out_legs),
                       tuple(out_dims), order)


# ---------------------------------------------------------------------------------------------
# the math, on plain lists of cores (l, d, K, r)


def next_bond(bond: int, direction: int, n_bonds: int) -> tuple[int, int]:
    """The bond after ``bond`` and the sweep direction there (+1 right, -1 left).

    Examples
    --------
    >>> next_bond(0, 1, 3), next_bond(0, -1, 3), next_bond(0, 1, 1)
    ((1, 1), (1, 1), (0, -1))
    """
    nxt = bond + direction
    if 0 <= nxt < n_bonds:
        return nxt, direction
    direction = -direction
    nxt = bond + direction
    return (nxt if 0 <= nxt < n_bonds else bond), direction


def truncation_rank(s: torch.Tensor, max_rank: int, cutoff: float) -> int:
    """How many of the descending singular values ``s`` to keep: the fewest whose dropped tail
    has ``sum(s^2) <= cutoff * sum(all s^2)``, at most ``max_rank``, at least 1 (zero singular
    values are always dropped).

    Examples
    --------
    >>> import torch
    >>> s = torch.tensor([3.0, 2.0, 1e-3, 0.0])
    >>> truncation_rank(s, 10, 1e-10), truncation_rank(s, 10, 1e-6), truncation_rank(s, 1, 0.0)
    (3, 2, 1)
    """
    import torch

    w = s.detach().to(torch.float64) ** 2
    total = float(w.sum())
    if not total > 0:
        return 1
    tail = torch.flip(torch.cumsum(torch.flip(w, [0]), 0), [0])   # tail[i] = sum w[i:]
    keep = int((tail > cutoff * total).sum())
    return max(1, min(keep, max_rank))


def robust_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float64 that never returns NaN: :func:`tngraph.linalg.svd` with every
    fallback, the jittered one included (it splits exactly degenerate spectra). Raises
    :class:`DMRGError` if every attempt fails or the matrix itself is not finite.

    Examples
    --------
    >>> import torch
    >>> u, s, vh = robust_svd(torch.ones(4, 3))           # rank 1, two zero singular values
    >>> [round(float(x), 6) for x in s]
    [3.464102, 0.0, 0.0]
    """
    import torch

    m = matrix.detach().to(torch.float64)
    if not bool(torch.isfinite(m).all()):
        raise DMRGError(f"cannot split a {tuple(m.shape)} merged tensor with non-finite "
                        "entries; lower the learning rate (--lr)")
    try:
        return svd(m, what="merged tensor", jitter=True)
    except DecompositionError as exc:
        raise DMRGError(exc.message) from exc


def merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two neighbouring cores ``(l, d, K, m)``, ``(m, d', K', r)`` -> ``B (l, d, K, d', K', r)``.

    Examples
    --------
    >>> import torch
    >>> merge(torch.ones(1, 2, 1, 3), torch.ones(3, 2, 5, 4)).shape
    torch.Size([1, 2, 1, 2, 5, 4])
    """
    l_dim, d, k, m = a.shape
    _, d2, k2, r_dim = b.shape
    return (a.reshape(-1, m) @ b.reshape(m, -1)).reshape(l_dim, d, k, d2, k2, r_dim)


def split(merged: torch.Tensor, max_rank: int, cutoff: float, absorb: str = "right"
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`merge`, truncated (:func:`truncation_rank`); the singular values go
    into the ``absorb`` (``"left"`` / ``"right"``) core, the other one is an isometry.

    Examples
    --------
    >>> import torch
    >>> a, b = split(torch.ones(1, 2, 1, 2, 1, 3), 8, 1e-10)
    >>> a.shape, b.shape                  # an all-ones tensor has rank 1
    (torch.Size([1, 2, 1, 1]), torch.Size([1, 2, 1, 3]))
    """
    l_dim, d, k, d2, k2, r_dim = merged.shape
    u, s, vh = robust_svd(merged.reshape(l_dim * d * k, d2 * k2 * r_dim))
    keep = truncation_rank(s, max_rank, cutoff)
    u, s, vh = u[:, :keep], s[:keep], vh[:keep]
    if absorb == "right":
        vh = s[:, None] * vh
    else:
        u = u * s
    dtype = merged.dtype
    return (u.to(dtype).reshape(l_dim, d, k, keep), vh.to(dtype).reshape(keep, d2, k2, r_dim))


def right_canonicalize(cores: Sequence[torch.Tensor], max_rank: int | None = None,
                       cutoff: float = 0.0) -> list[torch.Tensor]:
    """The same chain with cores ``1 ... n-1`` right-orthonormal (rows of ``(l, d*K*r)``
    orthonormal), by SVDs from the right; the orthogonality centre is core 0. Every bond keeps
    at most ``max_rank`` singular values and drops a relative weight of at most ``cutoff``
    (:func:`truncation_rank`); with the defaults only exact zeros go, so a bond larger than
    its rank shrinks to it and the chain's function is unchanged.

    Examples
    --------
    >>> import torch
    >>> cores = [torch.randn(1, 2, 1, 5, dtype=torch.float64),
    ...          torch.randn(5, 2, 1, 1, dtype=torch.float64)]
    >>> new = right_canonicalize(cores)
    >>> new[1].shape                      # bond 5 > rank 2
    torch.Size([2, 2, 1, 1])
    >>> m = new[1].reshape(2, -1)
    >>> bool(torch.allclose(m @ m.T, torch.eye(2, dtype=torch.float64)))
    True
    """
    import torch

    out = list(cores)
    for k in range(len(out) - 1, 0, -1):
        core = out[k]
        l_dim, d, kk, r_dim = core.shape
        u, s, vh = robust_svd(core.reshape(l_dim, -1))          # float64
        keep = truncation_rank(s, max_rank if max_rank is not None else l_dim, cutoff)
        out[k] = vh[:keep].reshape(keep, d, kk, r_dim).to(core.dtype)
        prev = out[k - 1]
        pl, pd, pk, _ = prev.shape
        out[k - 1] = (prev.reshape(-1, l_dim).to(torch.float64) @ (u[:, :keep] * s[:keep])
                      ).reshape(pl, pd, pk, keep).to(prev.dtype)
    return out


def _absorb_left(env: torch.Tensor, core: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``env (b, X, l)`` through ``core (l, d, K, r)`` fed ``phi (b, d)``: ``(b, X*K, r)``."""
    b, x, l_dim = env.shape
    _, d, k, r_dim = core.shape
    t = (env.reshape(b * x, l_dim) @ core.reshape(l_dim, d * k * r_dim)).reshape(b, x, d, k * r_dim)
    t = (t * phi.reshape(b, 1, d, 1)).sum(2)
    return t.reshape(b, x * k, r_dim)


def _absorb_right(env: torch.Tensor, core: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """``env (b, r, Y)`` through ``core (l, d, K, r)`` fed ``phi (b, d)``: ``(b, l, K*Y)``."""
    b, r_dim, y = env.shape
    l_dim, d, k, _ = core.shape
    t = core.reshape(l_dim * d * k, r_dim) @ env.transpose(0, 1).reshape(r_dim, b * y)
    t = t.reshape(l_dim, d, k, b, y)
    t = (t * phi.t().reshape(1, d, 1, b, 1)).sum(1)           # (l, K, b, Y)
    return t.permute(2, 0, 1, 3).reshape(b, l_dim, k * y)


def left_environment(cores: Sequence[torch.Tensor], phis: torch.Tensor, stop: int
                     ) -> torch.Tensor:
    """Sites ``0 .. stop-1`` contracted with their data ``phis (n, b, d)``: ``(b, X, l)`` with
    ``X`` their output legs (in site order) and ``l`` the left bond of site ``stop``.

    Examples
    --------
    >>> import torch
    >>> cores = [torch.ones(1, 2, 1, 3), torch.ones(3, 2, 1, 1)]
    >>> left_environment(cores, torch.ones(2, 5, 2), 1).shape
    torch.Size([5, 1, 3])
    """
    env = phis.new_ones(phis.shape[1], 1, 1)
    for k in range(stop):
        env = _absorb_left(env, cores[k], phis[k])
    return env


def right_environment(cores: Sequence[torch.Tensor], phis: torch.Tensor, start: int
                      ) -> torch.Tensor:
    """Sites ``start .. n-1`` contracted with their data: ``(b, r, Y)`` with ``r`` the right
    bond of site ``start - 1`` and ``Y`` the sites' output legs (in site order)."""
    env = phis.new_ones(phis.shape[1], 1, 1)
    for k in range(len(cores) - 1, start - 1, -1):
        env = _absorb_right(env, cores[k], phis[k])
    return env


def merged_forward(left: torch.Tensor, merged: torch.Tensor, right: torch.Tensor,
                   phi_a: torch.Tensor, phi_b: torch.Tensor) -> torch.Tensor:
    """The chain's outputs ``(b, X*K*K'*Y)`` (output legs in site order, flattened) from the
    environments ``left (b, X, l)``, ``right (b, r, Y)``, the merged tensor
    ``(l, d, K, d', K', r)`` and the data ``phi_a (b, d)``, ``phi_b (b, d')`` of its two sites.

    Examples
    --------
    >>> import torch
    >>> b = torch.ones(1, 2, 3, 2, 1, 1)
    >>> merged_forward(torch.ones(4, 1, 1), b, torch.ones(4, 1, 1), torch.ones(4, 2),
    ...                torch.ones(4, 2)).shape
    torch.Size([4, 3])
    """
    bsz, x, l_dim = left.shape
    _, d, k, d2, k2, r_dim = merged.shape
    y = right.shape[2]
    t = (left.reshape(bsz * x, l_dim) @ merged.reshape(l_dim, -1)).reshape(bsz, x, d, -1)
    t = (t * phi_a.reshape(bsz, 1, d, 1)).sum(2).reshape(bsz, x * k, d2, k2 * r_dim)
    t = (t * phi_b.reshape(bsz, 1, d2, 1)).sum(2).reshape(bsz, x * k * k2, r_dim)
    return (t @ right).reshape(bsz, x * k * k2 * y)


# ---------------------------------------------------------------------------------------------
# the stepper

#: below this many multiply-adds per site (batch x core entries), a step runs on one CPU thread
SINGLE_THREAD_WORK = 1 << 22


def _threads_for(batch: int, cores: Sequence[torch.Tensor]) -> contextlib.AbstractContextManager:
    """One CPU thread while the step's operations are small: a step is a few hundred tiny
    matrix products (64 sites x a few), where a second thread costs more in hand-over than it
    saves (measured on the 64-site digits classifier on a busy 2-core machine: 93 ms per step
    with two threads, 8 ms with one). The thread count is restored afterwards."""
    if batch * max(c.numel() for c in cores) < SINGLE_THREAD_WORK:
        return one_cpu_thread(cores[0].device)
    return contextlib.nullcontext()


class DMRGStepper:
    """The :class:`~tngraph.optimizers.Stepper` of ``dmrg`` (see the module docstring).

    Examples
    --------
    >>> import torch, tngraph
    >>> module = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 4, "
    ...     "phys_dim: 2, bond_dim: 2, input: x, feature_map: multilinear, output_dim: 3}\\n",
    ...     cache=False)
    >>> stepper = DMRG.create(module, DMRGOptions(max_rank=4), OptimizerContext(lr=0.01))
    >>> y = torch.tensor([0, 1])
    >>> loss, out = stepper.step(torch.rand(2, 4),
    ...                          lambda o: torch.nn.functional.cross_entropy(o, y))
    >>> out.shape, stepper.state_dict()["bond"]
    (torch.Size([2, 3]), 1)
    """

    def __init__(self, module: TNModule, options: DMRGOptions, context: OptimizerContext):
        import torch

        if not isinstance(module, TNModule):
            name = getattr(getattr(module, "spec", None), "name", type(module).__name__)
            raise DMRGError(f"'{name}' is not a single compiled tensor network (a pipeline?); "
                            f"{_SUPPORTED}")
        self.options = options
        self.lr = context.lr
        self.weight_decay = context.weight_decay
        self._module = module
        self.layout = chain_layout(module.spec)
        with torch.no_grad():
            self.cores = [c.detach().clone() for c in self.layout.to_dmrg(
                self.layout.chain.to_cores(dict(module.tensors.items())), module.spec)]
        self.bond = 0
        self.direction = 1
        self.count = 0            # steps taken at the current bond
        self.canonical = False    # cores right-canonical with the centre in the current bond
        self.half_sweeps = 0
        self.updates = 0
        self._moments: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._dirty = False

    # -- the Stepper protocol ------------------------------------------------------------------
    @property
    def module(self) -> TNModule:
        """The compiled network holding exactly the stepper's cores (synchronised on access)."""
        if self._dirty:
            self._sync()
        return self._module

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def end_epoch(self) -> None:
        if self._dirty:
            self._sync()

    def describe(self) -> dict[str, Any]:
        return {"bond_dims": self.bond_dims(), "sweeps": self.half_sweeps / 2}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "bond": self.bond, "direction": self.direction, "count": self.count,
            "canonical": self.canonical, "half_sweeps": self.half_sweeps,
            "updates": self.updates, "bond_dims": self.bond_dims(), "moments": None}
        if self._moments is not None:
            t, m, v = self._moments
            state["moments"] = {"t": t, "m": m.detach().cpu().clone(),
                                "v": v.detach().cpu().clone()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dims = [int(d) for d in state.get("bond_dims", self.bond_dims())]
        if dims != self.bond_dims():
            raise DMRGError(f"the dmrg state was saved with bond dimensions {dims} but the "
                            f"network has {self.bond_dims()}; resume with the run's own "
                            "spec.yaml and model.safetensors")
        bond = int(state["bond"])
        if not 0 <= bond < self.layout.n - 1:
            raise DMRGError(f"the dmrg state is at bond {bond}, outside this chain of "
                            f"{self.layout.n} sites")
        if int(state["direction"]) not in (-1, 1):
            raise DMRGError(f"the dmrg state has sweep direction {state['direction']}; "
                            "expected 1 or -1")
        self.bond = bond
        self.direction = int(state["direction"])
        self.count = int(state["count"])
        self.canonical = bool(state["canonical"])
        self.half_sweeps = int(state.get("half_sweeps", 0))
        self.updates = int(state.get("updates", 0))
        moments = state.get("moments")
        if moments is None:
            self._moments = None
        else:
            ref = self.cores[0]
            self._moments = (int(moments["t"]), moments["m"].to(ref.device, ref.dtype),
                             moments["v"].to(ref.device, ref.dtype))

    def step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        with _threads_for(x.shape[0], self.cores):
            return self._step(x, objective)

    def _step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        cores, merged = self.begin()
        j = self.bond
        with torch.no_grad():
            phis = self.features(x)
            left = left_environment(cores, phis, j)
            right = right_environment(cores, phis, j + 2)
        with torch.enable_grad():
            out = self.shape_outputs(merged_forward(left, merged, right, phis[j], phis[j + 1]))
            loss = objective(out)
            if not bool(torch.isfinite(loss)):
                raise NonFiniteLoss(float(loss.detach()))
            (grad,) = torch.autograd.grad(loss, merged)
        self.finish(cores, merged, grad)
        return loss.detach(), out.detach()

    def begin(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The cores a step starts from (right-canonical before the first step; the stepper's
        own are not changed) and their merged tensor at the current bond, a leaf that requires
        its gradient."""
        import torch

        # the first step brings the chain into right-canonical form (centre at site 0, bonds
        # within max_rank), kept only if the step succeeds
        cores = self.cores if self.canonical else right_canonicalize(
            self.cores, self.options.max_rank, self.options.cutoff)
        j = self.bond
        with torch.no_grad():
            merged = merge(cores[j], cores[j + 1])
        return list(cores), merged.requires_grad_(True)

    def stand_in(self, cores: Sequence[torch.Tensor], merged: torch.Tensor) -> nn.Module:
        """A module computing the chain's outputs from its input through ``merged`` (from
        :meth:`begin`), with autograd to ``merged`` and to the input: it runs in the network's
        place in a pipeline for one step."""
        return _MergedChain(self, cores, merged)

    def finish(self, cores: Sequence[torch.Tensor], merged: torch.Tensor, grad: torch.Tensor
               ) -> None:
        """Step the merged tensor of :meth:`begin` along ``grad`` (the inner optimizer), split
        it and move on along the sweep. Raises :class:`NonFiniteLoss`, with nothing changed,
        when the new tensor is not finite."""
        import torch

        j = self.bond
        with torch.no_grad():
            new, moments = self._update(merged.detach(), grad)
            if not bool(torch.isfinite(new).all()):
                raise NonFiniteLoss(float("nan"))
            advance = self.count + 1 >= self.options.steps_per_bond
            nxt, direction = next_bond(j, self.direction, self.layout.n - 1) if advance \
                else (j, self.direction)
            absorb = "left" if nxt < j else "right"
            a, b = split(new, self.options.max_rank, self.options.cutoff, absorb)
        self.cores = list(cores)
        self.cores[j], self.cores[j + 1] = a, b
        self.canonical = True
        self.updates += 1
        self._dirty = True
        if advance:
            if direction != self.direction:
                self.half_sweeps += 1
            self.bond, self.direction, self.count, self._moments = nxt, direction, 0, None
        else:
            self.count += 1
            self._moments = moments

    # -- as a layer of a pipeline (tngraph_plugins.layerwise.LayerPart) ----------------------
    def open_step(self) -> OpenStep:
        """:meth:`begin`, and :meth:`stand_in` as the layer's stand-in for one step."""
        cores, merged = self.begin()
        return OpenStep(self.stand_in(cores, merged), [merged], (cores, merged))

    def check_step(self, token: Any, grads: Sequence[torch.Tensor | None]) -> Any:
        """The merged tensor's gradient (zero when it got none); raises
        :class:`NonFiniteLoss` when it is not finite."""
        import torch

        cores, merged = token
        (grad,) = grads
        if grad is None:
            grad = torch.zeros_like(merged)
        if not bool(torch.isfinite(grad).all()):
            raise NonFiniteLoss(float("nan"))
        return cores, merged, grad

    def commit_step(self, update: Any) -> None:
        """Take the step of :meth:`check_step` (:meth:`finish`)."""
        self.finish(*update)

    # -- helpers -------------------------------------------------------------------------------
    def bond_dims(self) -> list[int]:
        """The current bond dimensions (``n - 1`` of them)."""
        return [int(c.shape[3]) for c in self.cores[:-1]]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The data vectors of every site, ``(n, batch, d)`` (site order)."""
        import torch

        module = self._module
        port = module.spec.network.inputs[self.layout.port]
        data = module._port_data(self.layout.port, port, x)       # (copies, batch, d)
        copies = self.layout.copies
        if list(copies) != list(range(len(copies))):
            data = data[torch.tensor(copies, device=data.device)]
        return data.to(self.cores[0].dtype)

    def shape_outputs(self, flat: torch.Tensor) -> torch.Tensor:
        """Flat outputs in chain order -> the module's output layout (bias added)."""
        layout = self.layout
        dims = [d for site in layout.out_dims for d in site]
        batch = flat.shape[0]
        out = flat.reshape(batch, *dims)
        if layout.out_order != tuple(range(len(dims))):
            out = out.permute(0, *(o + 1 for o in layout.out_order))
        bias = self._module.bias
        if bias is not None:
            out = out + bias
        if self._module.spec.network.flatten_outputs:
            out = out.reshape(batch, -1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The chain's outputs for ``x`` through the merged tensor of the current bond (what
        :meth:`step` computes; equal to ``stepper.module(x)``)."""
        import torch

        j = self.bond
        with torch.no_grad():
            phis = self.features(x)
            flat = merged_forward(left_environment(self.cores, phis, j),
                                  merge(self.cores[j], self.cores[j + 1]),
                                  right_environment(self.cores, phis, j + 2), phis[j],
                                  phis[j + 1])
            return self.shape_outputs(flat)

    def _update(self, merged: torch.Tensor, grad: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[int, torch.Tensor, torch.Tensor] | None]:
        if self.weight_decay:
            grad = grad + self.weight_decay * merged
        if self.options.inner == "sgd":
            return merged - self.lr * grad, None
        if self._moments is None or self._moments[1].shape != merged.shape:
            t, m, v = 0, grad.new_zeros(grad.shape), grad.new_zeros(grad.shape)
        else:
            t, m, v = self._moments
        b1, b2 = _BETAS
        t += 1
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + _EPS)
        return merged - self.lr * step, (t, m, v)

    def _sync(self) -> None:
        """Write the cores into the module, rebuilding it when bond dimensions changed."""
        import torch

        layout, module = self.layout, self._module
        spec = module.spec
        tensors = layout.chain.from_cores(layout.to_chain(self.cores, spec), spec)
        if self.bond_dims() == layout.chain.bond_dims(spec):
            with torch.no_grad():
                for name, param in module.tensors.items():
                    param.copy_(tensors[name])
        else:
            new_spec = layout.chain.resize(spec, self.bond_dims())
            self._module = rebuild(module, new_spec, tensors)
        self._dirty = False


class _MergedChain(nn.Module):
    """The chain's outputs through the merged tensor of the current bond, with autograd to the
    merged tensor and to the input (see :meth:`DMRGStepper.stand_in`)."""

    def __init__(self, stepper: DMRGStepper, cores: Sequence[torch.Tensor],
                 merged: torch.Tensor):
        super().__init__()
        self.stepper, self.cores, self.merged = stepper, list(cores), merged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stepper, cores, j = self.stepper, self.cores, self.stepper.bond
        phis = stepper.features(x)
        left = left_environment(cores, phis, j)
        right = right_environment(cores, phis, j + 2)
        return stepper.shape_outputs(merged_forward(left, self.merged, right, phis[j],
                                                    phis[j + 1]))


def create_stepper(module: Any, options: DMRGOptions, context: OptimizerContext
                   ) -> DMRGStepper | LayerwiseStepper:
    """The stepper of ``dmrg`` (declared in :mod:`tngraph_plugins.strategies`): one
    :class:`DMRGStepper` for a network; for a pipeline, one per selected layer and Adam on the
    rest (:mod:`tngraph_plugins.layerwise`)."""
    if isinstance(module, Pipeline):
        return for_pipeline(module, options, context, "dmrg",
                            lambda layer: chain_layout(layer.spec),
                            lambda layer, lr: DMRGStepper(layer, options,
                                                          replace(context, lr=lr)))
    single_network_only(module, options, "dmrg")
    return DMRGStepper(module, options, context)
