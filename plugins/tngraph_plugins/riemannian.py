"""Optimizers on the manifold of fixed-rank tensor trains: ``riemannian`` and ``tangent``.

Both treat the network's parameter tensors as one tensor train ``X`` (its tensor nodes must form
an open chain, :func:`tngraph_plugins.chain.find_chain`) and move it along the manifold
``M_r`` of tensors with TT-ranks ``r`` (seed 003, section 4.3; Steinlechner 2016; Novikov,
Rakhuba and Oseledets 2021).

``riemannian``
    Riemannian gradient descent with fixed ranks::

        xi = P_T(X) grad L(X)                     (projection onto the tangent space)
        X <- round(X - lr * xi, ranks r)          (retraction by TT-rounding)

    with optional heavy-ball ``momentum`` (the previous direction is carried to the new tangent
    space by projection, the usual vector transport).
``tangent``
    Tangent-space gradient optimisation (seed 003 section 4.2; Sun et al. 2020): the network is
    one state ``psi`` of fixed norm (``radius``, default the norm at the start); the gradient is
    projected onto the tangent space and made orthogonal to ``psi``
    (``g_perp = g - <g, psi^> psi^``) and the state turns by the angle ``theta = lr`` towards
    ``-g_perp`` (``eta = tan(theta)``)::

        psi <- radius * normalise(round(cos(theta) psi^ - sin(theta) g_perp / |g_perp|))

Why one implementation and two names: the tangent-space step of Sun et al. is the Riemannian
gradient step on a smaller manifold, the fixed-rank TTs *of fixed norm* (``M_r`` intersected
with a sphere). Its tangent space is ``T_X M_r`` minus the radial direction, and ``X`` lies in
``T_X M_r``, so ``g_perp`` is the Riemannian gradient with its component along ``X`` removed,
which touches only the last core's component. The gradient, projection, rounding and resume
code is therefore shared (:class:`ManifoldStepper`, ``sphere=True``). ``tangent`` is its own
registered name because its step differs in kind: ``lr`` is an angle, the step length does not
depend on the gradient's size, and the norm of the network is fixed (an option of
``riemannian`` would have to change the meaning of ``lr`` and forbid ``momentum``). Sun et al.
update one core at a time in a sweep; here every core moves at once, along the exact tangent
direction of the whole state, which needs no sweep and keeps the ranks exactly.

How the Riemannian gradient is computed
---------------------------------------
``X`` is kept left-orthogonal, ``X = U_1 ... U_{d-1} S`` (the norm in ``S``); ``V_2 ... V_d``
are the right-orthogonal cores of the same ``X``. A tangent vector is
``dX = sum_k U_<k dG_k V_>k`` with the gauge ``U_k^T dG_k = 0`` for ``k < d``. The *doubled-rank
network* has the block cores ``C_1 = [U_1, dG_1]``, ``C_k = [[U_k, dG_k], [0, V_k]]``,
``C_d = [[S + dG_d], [V_d]]``; it computes ``X + dX``. One forward and backward pass of it at
``dG = 0`` gives ``dL/d dG_k = U_<k^T (grad L) V_>k^T``, and the gauge projection of those is
exactly the projection of the Euclidean gradient onto the tangent space (Novikov et al. 2021).
The doubled network (bonds ``2 r``) is compiled once, at the start. The retraction rounds the
block TT of ``X - lr xi`` (ranks ``2 r``) back to exactly ``r`` by a QR sweep and a sweep of
SVDs (:mod:`tngraph.linalg`'s guarded ``svd`` / ``qr`` where the plain calls fail); keeping ``r``
singular vectors even when some singular values are zero keeps the cores orthonormal, so a
degenerate start (zero cores, a rank-deficient ``X``) gives no NaN.

Ranks: a declared bond larger than the TT can use (``min(prod n_<=k, prod n_>k)``, e.g. the
first bonds of an MPS with ``bond_dim: 20``) is reduced to that bound at the start, without
changing the network's function (the module is rebuilt with the smaller bonds; checkpoints
record them). ``max_rank`` lowers every rank further (rounding, which changes the function).
Parameters outside the chain (a ``bias``) take plain gradient steps of size ``lr``.

Examples
--------
>>> RIEMANNIAN.options(momentum=0.5).momentum
0.5
>>> TANGENT.options().radius is None
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from tngraph import decompose
from tngraph.compiler import Pipeline
from tngraph.linalg import Kernels, one_cpu_thread, with_fallback
from tngraph.optimizers import NonFiniteLoss, OptimizerContext
from tngraph_plugins.chain import ChainError, find_chain, rebuild
from tngraph_plugins.layerwise import LayerwiseStepper, OpenStep, for_pipeline, single_network_only
from tngraph_plugins.strategies import RIEMANNIAN, TANGENT, RiemannianOptions, TangentOptions

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tngraph.compiler import TNModule
    from tngraph_plugins.chain import Chain

__all__ = [
    "RIEMANNIAN",
    "TANGENT",
    "ManifoldStepper",
    "RiemannianOptions",
    "TangentOptions",
    "create_riemannian",
    "create_tangent",
    "feasible_ranks",
    "left_orthogonalize",
    "project",
    "right_cores",
    "round_to_ranks",
    "tangent_cores",
]


# ---------------------------------------------------------------------------------------------
# tensor-train linear algebra on cores (l, n, r)


def feasible_ranks(phys: Sequence[int], ranks: Sequence[int],
                   max_rank: int | None = None) -> list[int]:
    """``ranks`` capped by what a TT of these mode sizes can have (and by ``max_rank``).

    Examples
    --------
    >>> feasible_ranks([2, 2, 2, 2, 2], [20, 20, 20, 20])
    [2, 4, 4, 2]
    >>> feasible_ranks([16, 16, 16, 16], [8, 8, 8], max_rank=4)
    [4, 4, 4]
    """
    bounds = decompose.max_ranks(list(phys)) if len(phys) > 1 else ()
    out = [min(int(r), int(b)) for r, b in zip(ranks, bounds)]
    return [min(r, max_rank) for r in out] if max_rank is not None else out


def _round_sweep(cores: Sequence[torch.Tensor], ranks: Sequence[int], *, kernels: Kernels
                 ) -> list[torch.Tensor]:
    flat = decompose.right_orthogonalize(cores, kernels=kernels)
    for k in range(len(flat) - 1):
        c = flat[k]
        u, s, vh = kernels.svd(c.reshape(-1, c.shape[-1]))
        r = int(ranks[k])
        flat[k] = u[:, :r].reshape(c.shape[0], c.shape[1], r)
        nxt = flat[k + 1]
        flat[k + 1] = ((s[:r, None] * vh[:r]) @ nxt.reshape(nxt.shape[0], -1)).reshape(
            r, nxt.shape[1], nxt.shape[2])
    return flat


def left_orthogonalize(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The same TT with cores ``0..d-2`` left-orthonormal (QR sweep), the norm in the last core.

    Ranks are kept (Householder QR gives orthonormal factors even for rank-deficient cores).

    Examples
    --------
    >>> import torch
    >>> from tngraph.decompose import tt_to_dense
    >>> cores = [torch.randn(1, 3, 2, dtype=torch.float64), torch.randn(2, 3, 1,
    ...                                                               dtype=torch.float64)]
    >>> u = left_orthogonalize(cores)
    >>> m = u[0].reshape(3, 2)
    >>> bool(torch.allclose(m.T @ m, torch.eye(2, dtype=torch.float64)))
    True
    >>> bool(torch.allclose(tt_to_dense(u), tt_to_dense(cores)))
    True
    """
    return with_fallback(decompose.left_orthogonalize, cores)


def right_cores(cores: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """The right-orthonormal cores ``V_1 .. V_{d-1}`` of the same TT (``V[0]`` is ``None``):
    ``X = G_0 ... G_{k-1} S_k V_{k+1} ... V_{d-1}`` for a suitable ``S_k``.

    Examples
    --------
    >>> import torch
    >>> v = right_cores([torch.randn(1, 3, 2), torch.randn(2, 3, 1)])
    >>> m = v[1].reshape(2, 3)
    >>> bool(torch.allclose(m @ m.T, torch.eye(2), atol=1e-6))
    True
    """
    return [None, *with_fallback(decompose.right_orthogonalize, cores)[1:]]


def tangent_cores(u: Sequence[torch.Tensor], v: Sequence[torch.Tensor | None],
                  dg: Sequence[torch.Tensor], last: torch.Tensor | None = None
                  ) -> list[torch.Tensor]:
    """The block TT (ranks ``2 r``) of ``last-term + sum_k U_<k dG_k V_>k``.

    ``u`` are the left-orthonormal cores ``U_0 .. U_{d-2}`` (a last entry is ignored), ``v`` the
    right-orthonormal ``V_1 .. V_{d-1}``, ``dg`` the components. ``last`` is added to the last
    component: ``S`` gives ``X + dX``, ``None`` the tangent vector ``dX`` alone.

    Examples
    --------
    >>> import torch
    >>> from tngraph.decompose import tt_to_dense
    >>> x = left_orthogonalize([torch.randn(1, 2, 2, dtype=torch.float64),
    ...                         torch.randn(2, 2, 1, dtype=torch.float64)])
    >>> zero = [torch.zeros_like(c) for c in x]
    >>> blocks = tangent_cores(x, right_cores(x), zero, last=x[-1])
    >>> bool(torch.allclose(tt_to_dense(blocks), tt_to_dense(x)))
    True
    """
    import torch

    d = len(dg)
    last_block = dg[-1] if last is None else last + dg[-1]
    if d == 1:
        return [last_block]
    out = [torch.cat([u[0], dg[0]], dim=2)]
    for k in range(1, d - 1):
        uk, vk, gk = u[k], v[k], dg[k]
        top = torch.cat([uk, gk], dim=2)
        bottom = torch.cat([torch.zeros(vk.shape[0], uk.shape[1], uk.shape[2],  # type: ignore[union-attr]
                                        dtype=uk.dtype, device=uk.device), vk], dim=2)
        out.append(torch.cat([top, bottom], dim=0))
    out.append(torch.cat([last_block, v[-1]], dim=0))
    return out


def gauge_project(u: Sequence[torch.Tensor], dg: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Impose ``U_k^T dG_k = 0`` on components ``0..d-2`` (the last is left as it is)."""
    out = list(dg)
    for k in range(len(dg) - 1):
        uk = u[k].reshape(-1, u[k].shape[-1])
        g = dg[k].reshape(-1, dg[k].shape[-1])
        out[k] = (g - uk @ (uk.T @ g)).reshape(dg[k].shape)
    return out


def project(u: Sequence[torch.Tensor], v: Sequence[torch.Tensor | None],
            z: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Components (gauge-projected) of the projection of the TT ``z`` (any ranks, same mode
    sizes) onto the tangent space at ``X = U_0 .. U_{d-2} S`` with right cores ``v``.

    ``O(d n r r_z (r + r_z))``: left and right environments, no dense tensor.

    Examples
    --------
    >>> import torch
    >>> x = left_orthogonalize([torch.randn(1, 2, 2, dtype=torch.float64),
    ...                         torch.randn(2, 2, 1, dtype=torch.float64)])
    >>> dg = project(x, right_cores(x), x)          # X lies in its own tangent space
    >>> bool(torch.allclose(dg[0], torch.zeros_like(dg[0]))), bool(torch.allclose(dg[1], x[1]))
    (True, True)
    """
    import torch

    d = len(z)
    ref = z[0]
    lefts = [torch.ones(1, 1, dtype=ref.dtype, device=ref.device)]
    for k in range(d - 1):
        lefts.append(torch.einsum("ab,anc,bnd->cd", lefts[-1], u[k], z[k]))
    rights: list[torch.Tensor] = [torch.ones(1, 1, dtype=ref.dtype, device=ref.device)] * (d + 1)
    for k in range(d - 1, 0, -1):
        rights[k] = torch.einsum("anb,bc,dnc->ad", z[k], rights[k + 1], v[k])
    dg = [torch.einsum("ab,bnc,cd->and", lefts[k], z[k], rights[k + 1]) for k in range(d)]
    return gauge_project(u, dg)


def round_to_ranks(cores: Sequence[torch.Tensor], ranks: Sequence[int]) -> list[torch.Tensor]:
    """Round a TT to exactly ``ranks`` (quasi-optimal, as TT-rounding): QR sweep right to left,
    then truncated SVDs left to right keeping ``ranks[k]`` singular vectors each.

    The result is left-orthogonal with the norm in the last core. Unlike
    :func:`tngraph.decompose.tt_round` (which drops numerically zero singular values), a rank is
    never lowered below ``ranks[k]``: singular vectors of zero singular values are still
    orthonormal, so the cores stay well-defined. Each ``ranks[k]`` must not exceed the TT's
    bound (:func:`feasible_ranks`) nor the input's rank at that bond.

    Examples
    --------
    >>> import torch
    >>> from tngraph.decompose import tt_ranks
    >>> cores = [torch.randn(1, 3, 4), torch.randn(4, 3, 4), torch.randn(4, 3, 1)]
    >>> tt_ranks(round_to_ranks(cores, [2, 1]))
    (2, 1)
    """
    flat = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores]
    if len(flat) == 1:
        return list(flat)
    return [c.contiguous() for c in with_fallback(_round_sweep, flat, ranks)]


def _small_linalg(ref: torch.Tensor) -> AbstractContextManager:
    """One CPU thread for the per-core QRs and SVDs: the matrices are small (``r n x r``) and
    OpenMP workers cost more than the work (on a busy machine a 6x2 QR took 15 ms with two
    threads, 6 us with one). The thread count is restored afterwards; CUDA is left alone."""
    return one_cpu_thread(ref.device)


def _sq(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of squared entries over all ``cores`` (a 0-d tensor)."""
    return sum((c * c).sum() for c in cores)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# the stepper


class ManifoldStepper:
    """Riemannian gradient descent on fixed-rank TTs (``riemannian``), or on fixed-rank TTs of
    fixed norm with angle steps (``tangent``, ``sphere=True``); see the module docstring.

    Parameters
    ----------
    module
        A compiled network whose tensor nodes form an open chain.
    lr
        Step size (``riemannian``) or angle in radians (``tangent``).
    momentum, max_rank, weight_decay
        As in the options; ``weight_decay`` adds ``weight_decay * X`` to the gradient.
    sphere, radius
        ``tangent``: keep the norm at ``radius`` (default: the norm at the start).
    shared_extras
        The parameters outside the chain (a ``bias``) are the caller's: the doubled network
        uses the same parameter objects and the stepper does not step them (a layer of a
        pipeline, whose other parameters an optimizer of the pipeline steps).

    Examples
    --------
    >>> import tngraph, torch
    >>> module = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 4, "
    ...                          "phys_dim: 2, bond_dim: 2, input: x}\\n", cache=False)
    >>> stepper = ManifoldStepper(module, lr=0.1)
    >>> x, y = torch.rand(8, 4, 2), torch.rand(8)
    >>> first, _ = stepper.step(x, lambda out: ((out - y) ** 2).mean())
    >>> for _ in range(20):
    ...     loss, _ = stepper.step(x, lambda out: ((out - y) ** 2).mean())
    >>> bool(loss < first), stepper.describe()["ranks"]
    (True, [2, 2, 2])
    """

    def __init__(self, module: TNModule, lr: float, *, momentum: float = 0.0,
                 max_rank: int | None = None, weight_decay: float = 0.0,
                 sphere: bool = False, radius: float | None = None,
                 shared_extras: bool = False):
        import torch

        self.chain: Chain = find_chain(module.spec)
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.sphere = sphere
        spec = module.spec
        phys = [math.prod(p) for p in self.chain.physical_dims(spec)]
        declared = self.chain.bond_dims(spec)
        self.ranks = feasible_ranks(phys, declared, max_rank)
        with torch.no_grad():
            cores = [c.detach().clone() for c in self.chain.to_cores(module.tensors)]
            if self.ranks != declared:
                cores = round_to_ranks(cores, self.ranks)
            else:
                cores = left_orthogonalize(cores)
        if self.ranks != declared:
            spec = self.chain.resize(spec, self.ranks)
            module = rebuild(module, spec, self.chain.from_cores(cores, spec))
        self._module = module
        self.cores = cores
        norm = float(cores[-1].norm())   # left-orthogonal: the norm of X is the last core's
        self.radius = float(radius) if radius is not None else (norm if norm > 0 else 1.0)
        if sphere:
            self._rescale()
        self._write()
        doubled_spec = self.chain.resize(spec, [2 * r for r in self.ranks])
        with torch.no_grad():
            blocks = self._blocks([torch.zeros_like(c) for c in cores], right_cores(cores))
        self._doubled = rebuild(module, doubled_spec, self.chain.from_cores(blocks,
                                                                              doubled_spec))
        self._doubled.requires_grad_(True)
        outside = [(name, p) for name, p in module.named_parameters()
                   if not name.startswith("tensors.")]
        if shared_extras:       # the doubled network computes with the caller's parameters
            for name, p in outside:
                owner, _, attr = name.rpartition(".")
                setattr(self._doubled.get_submodule(owner), attr, p)
            outside = []
        #: parameters outside the chain (a bias) this stepper steps: (own, doubled's copy)
        doubled_params = dict(self._doubled.named_parameters())
        self._extra = [(p, doubled_params[name]) for name, p in outside]
        #: the last direction as a block TT (momentum), or None
        self.velocity: list[torch.Tensor] | None = None
        self.last_grad_norm = float("nan")
        self.steps = 0

    # -- state of X ----------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        return self._module

    def _rescale(self) -> None:
        norm = float(self.cores[-1].norm())
        if norm > 0 and math.isfinite(norm):
            self.cores[-1] = self.cores[-1] * (self.radius / norm)

    def _write(self) -> None:
        import torch

        tensors = self.chain.from_cores(self.cores, self._module.spec)
        with torch.no_grad():
            for name, value in tensors.items():
                self._module.tensors[name].copy_(value)

    def _blocks(self, dg: Sequence[torch.Tensor], v: Sequence[torch.Tensor | None],
                with_x: bool = True) -> list[torch.Tensor]:
        return tangent_cores(self.cores, v, dg, self.cores[-1] if with_x else None)

    # -- the step ------------------------------------------------------------------------
    @property
    def doubled(self) -> TNModule:
        """The doubled-rank network whose gradient at ``dG = 0`` gives the Riemannian gradient
        (set up for a step by :meth:`prepare`)."""
        return self._doubled

    def prepare(self) -> list[torch.Tensor | None]:
        """Write ``X``'s block TT at ``dG = 0`` (and the parameters outside the chain) into
        :attr:`doubled`, ready for one forward and backward pass; returns the right cores ``V``
        of ``X`` (for :meth:`components` and :meth:`apply`)."""
        import torch

        with _small_linalg(self.cores[0]):
            v = right_cores(self.cores)
        zero = [torch.zeros_like(c) for c in self.cores]
        with torch.no_grad():
            blocks = self.chain.from_cores(self._blocks(zero, v), self._doubled.spec)
            for name, value in blocks.items():
                self._doubled.tensors[name].copy_(value)
            for own, copy in self._extra:
                copy.copy_(own)
        return v

    def components(self, node_grads: Mapping[str, torch.Tensor | None]) -> list[torch.Tensor]:
        """The Riemannian gradient's components (gauge-projected, weight decay added) from the
        gradients of :attr:`doubled`'s nodes (node name -> gradient or None) after
        :meth:`prepare`. With ``sphere`` the radial part is not removed here."""
        import torch

        ref = self.cores[0]
        full = {n: (g if g is not None else torch.zeros(self._doubled.tensors[n].shape,
                                                        dtype=ref.dtype, device=ref.device))
                for n, g in node_grads.items()}
        big = self.chain.to_cores(full)
        d = len(big)
        dg = []
        for k, g in enumerate(big):
            r_left = self.cores[k].shape[0]
            r_right = self.cores[k].shape[2]
            if d == 1:
                dg.append(g)
            elif k == 0:
                dg.append(g[:, :, r_right:])
            elif k == d - 1:
                dg.append(g[:r_left])
            else:
                dg.append(g[:r_left, :, r_right:])
        with _small_linalg(self.cores[0]):
            dg = gauge_project(self.cores, [g.detach() for g in dg])
        if self.weight_decay:
            dg[-1] = dg[-1] + self.weight_decay * self.cores[-1]
        return dg

    def gradient(self, x: Any, objective: Callable[[torch.Tensor], torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor],
                            list[torch.Tensor | None], list[torch.Tensor | None]]:
        """Loss, outputs, the Riemannian gradient's components (gauge-projected), the right
        cores ``V`` of ``X``, and the gradients of the parameters outside the chain.

        Nothing is changed. With ``sphere`` the radial part is not removed here.
        """
        import torch

        v = self.prepare()
        # the parameters that hold the chain's nodes (stacked ones hold several)
        held = dict(self._doubled.tensors.named_parameters())
        params = list(held.values())
        extra = [copy for _, copy in self._extra]
        out = self._doubled(x) if self._doubled.input_names else self._doubled()
        loss = objective(out)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(float(loss.detach()))
        grads = torch.autograd.grad(loss, params + extra, allow_unused=True)
        dg = self.components(self._doubled.tensors.views(dict(zip(held, grads))))
        return loss.detach(), out.detach(), dg, v, list(grads[len(params):])

    def apply(self, dg: list[torch.Tensor], v: list[torch.Tensor | None]) -> None:
        """One step of ``X`` along the components ``dg`` (from :meth:`components`; ``v`` from
        :meth:`prepare`), written into :attr:`module`. Raises :class:`NonFiniteLoss`, with
        nothing changed, when the direction is not finite."""
        import torch

        with torch.no_grad(), _small_linalg(self.cores[0]):
            if self.sphere:
                self._sphere_step(dg, v)
            else:
                self._flat_step(dg, v)
        self._write()
        self.steps += 1

    def step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        loss, out, dg, v, extra_grads = self.gradient(x, objective)
        self.apply(dg, v)
        with torch.no_grad():
            for (own, _), g in zip(self._extra, extra_grads):
                if g is not None:
                    own.add_(g + self.weight_decay * own, alpha=-self.lr)
        return loss, out

    def _flat_step(self, dg: list[torch.Tensor], v: list[torch.Tensor | None]) -> None:
        if self.momentum and self.velocity is not None:
            moved = project(self.cores, v, self.velocity)
            dg = [g + self.momentum * m for g, m in zip(dg, moved)]
        norm_sq = float(_sq(dg))
        if not math.isfinite(norm_sq):
            raise NonFiniteLoss(norm_sq)
        self.last_grad_norm = math.sqrt(norm_sq)
        if self.momentum:
            self.velocity = self._blocks(dg, v, with_x=False)
        if norm_sq == 0:
            return
        new = self._blocks([-self.lr * g for g in dg], v)
        self.cores = round_to_ranks(new, self.ranks)

    def _sphere_step(self, dg: list[torch.Tensor], v: list[torch.Tensor | None]) -> None:
        s = self.cores[-1]
        s_sq = float((s * s).sum())
        if s_sq > 0:   # remove the radial component (X = U_<d S: only in the last core)
            dg[-1] = dg[-1] - (float((dg[-1] * s).sum()) / s_sq) * s
        norm_sq = float(_sq(dg))
        if not math.isfinite(norm_sq):
            raise NonFiniteLoss(norm_sq)
        self.last_grad_norm = math.sqrt(norm_sq)
        if norm_sq == 0:
            return
        theta = self.lr
        x_norm = math.sqrt(s_sq)
        scale = math.cos(theta) / x_norm if x_norm > 0 else 0.0
        # cos(theta) X^ - sin(theta) g^ as a block TT: S scaled, components scaled
        step = -math.sin(theta) / math.sqrt(norm_sq)
        blocks = tangent_cores(self.cores, v, [step * g for g in dg],
                               last=self.cores[-1] * scale)
        self.cores = round_to_ranks(blocks, self.ranks)
        self._rescale()

    # -- as a layer of a pipeline (tngraph_plugins.layerwise.LayerPart) ----------------------
    def open_step(self) -> OpenStep:
        """:meth:`prepare`, and the doubled network as the layer's stand-in for one step."""
        v = self.prepare()
        held = dict(self._doubled.tensors.named_parameters())
        return OpenStep(self._doubled, list(held.values()), (v, list(held)))

    def check_step(self, token: Any, grads: Sequence[torch.Tensor | None]) -> Any:
        """The step's components from the gradients of :meth:`open_step`'s tensors; raises
        :class:`NonFiniteLoss` when they are not finite."""
        import torch

        v, names = token
        dg = self.components(self._doubled.tensors.views(dict(zip(names, grads))))
        if not all(bool(torch.isfinite(g).all()) for g in dg):
            raise NonFiniteLoss(float("nan"))
        return dg, v

    def commit_step(self, update: Any) -> None:
        """Take the step of :meth:`check_step`."""
        self.apply(*update)

    # -- loop interface ------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        self.lr = float(lr)

    def end_epoch(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"cores": [c.detach().cpu().clone() for c in self.cores],
                "velocity": None if self.velocity is None
                else [c.detach().cpu().clone() for c in self.velocity],
                "radius": self.radius, "lr": self.lr, "steps": self.steps,
                "last_grad_norm": self.last_grad_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ref = self.cores[0]
        cores = [c.to(ref.device, ref.dtype) for c in state["cores"]]
        if [tuple(c.shape) for c in cores] != [tuple(c.shape) for c in self.cores]:
            raise ChainError("the saved optimizer state has cores of shapes "
                             f"{[tuple(c.shape) for c in cores]}, the network "
                             f"{[tuple(c.shape) for c in self.cores]}")
        self.cores = cores
        self.velocity = None if state["velocity"] is None \
            else [c.to(ref.device, ref.dtype) for c in state["velocity"]]
        self.radius = float(state["radius"])
        self.lr = float(state["lr"])
        self.steps = int(state["steps"])
        self.last_grad_norm = float(state["last_grad_norm"])
        self._write()

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"ranks": list(self.ranks)}
        if math.isfinite(self.last_grad_norm):
            facts["grad_norm"] = self.last_grad_norm
        if self.sphere:
            facts["radius"] = self.radius
        return facts


def create_riemannian(module: Any, options: RiemannianOptions,
                       context: OptimizerContext) -> ManifoldStepper | LayerwiseStepper:
    """The stepper of ``riemannian``: one :class:`ManifoldStepper` for a network; for a
    pipeline, one per selected layer and Adam on the rest (:mod:`tngraph_plugins.layerwise`)."""
    if isinstance(module, Pipeline):
        return for_pipeline(
            module, options, context, "riemannian", _fits,
            lambda layer, lr: ManifoldStepper(layer, lr, momentum=options.momentum,
                                              max_rank=options.max_rank,
                                              weight_decay=context.weight_decay,
                                              shared_extras=True))
    single_network_only(module, options, "riemannian")
    return ManifoldStepper(module, context.lr, momentum=options.momentum,
                           max_rank=options.max_rank, weight_decay=context.weight_decay)


def create_tangent(module: Any, options: TangentOptions,
                    context: OptimizerContext) -> ManifoldStepper | LayerwiseStepper:
    """The stepper of ``tangent`` (as :func:`create_riemannian`, on the sphere)."""
    if isinstance(module, Pipeline):
        return for_pipeline(
            module, options, context, "tangent", _fits,
            lambda layer, lr: ManifoldStepper(layer, lr, max_rank=options.max_rank,
                                              weight_decay=context.weight_decay, sphere=True,
                                              radius=options.radius, shared_extras=True))
    single_network_only(module, options, "tangent")
    return ManifoldStepper(module, context.lr, max_rank=options.max_rank,
                           weight_decay=context.weight_decay, sphere=True,
                           radius=options.radius)


def _fits(layer: TNModule) -> None:
    find_chain(layer.spec)
