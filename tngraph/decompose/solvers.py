"""Linear algebra with TT-matrices (MPO): products, the lowest eigenpair, SPD linear systems.

A TT-matrix ``A`` has cores ``(r_k, n_in_k, n_out_k, r_{k+1})`` (the layout of
:func:`~tngraph.decompose.tt.tt_matrix`): ``A[(o_0..o_{d-1}), (i_0..i_{d-1})] = A_0[:, i_0, o_0, :]
@ ... @ A_{d-1}[:, i_{d-1}, o_{d-1}, :]``, and it maps a TT vector with cores ``(s_k, n_in_k,
s_{k+1})`` to one with cores ``(r_k s_k, n_out_k, r_{k+1} s_{k+1})`` (:func:`tt_matvec`).

:func:`tt_eigh` and :func:`tt_solve` are two-site DMRG sweeps (White 1992; Holtz, Rohwedder,
Schneider 2012; Oseledets, Dolgov 2012). The vector is kept in mixed canonical form: the cores
left of the pair ``k, k+1`` are left-orthonormal, those right of it right-orthonormal, so the
pair's local problem is the restriction of the global one to an orthonormal basis. Environments
(the operator and the right-hand side contracted with the orthonormal cores) make each local
product cost ``O(r^3 n^2 R + r^2 n^3 R^2)`` for vector rank ``r`` and operator rank ``R``. The
local problem is solved by Lanczos (eigenvalue) or conjugate gradients (SPD system), started from
the current pair, or densely when it has at most 256 unknowns; the new pair is split by a
truncated SVD (at most ``max_rank`` values, relative truncation ``eps``) and the sweep moves on.
One sweep is one pass in one direction.

Complex operators and vectors (complex64 / complex128) are accepted: :func:`tt_eigh` and
:func:`tt_solve` take a Hermitian ``A`` (``A = A^H``, checked in TT format), the environments
contract the conjugate of the bra (the vector), the local solvers use Hermitian inner products,
and eigenvalues and residuals are real.

Examples
--------
>>> import torch
>>> from tngraph.decompose import tt_matrix, tt_matrix_to_dense
>>> gen = torch.Generator().manual_seed(0)
>>> m = torch.randn(16, 16, generator=gen, dtype=torch.float64)
>>> a = tt_matrix(m + m.T, [4, 4], [4, 4])                    # symmetric, 2 sites
>>> value, vector = tt_eigh(a, max_rank=4)
>>> abs(value - float(torch.linalg.eigvalsh(m + m.T)[0])) < 1e-10
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.decompose.tt import (
    _check_cores,
    _is_count,
    _is_number,
    _real,
    _truncation_rank,
    right_orthogonalize,
    tt_add,
    tt_norm,
    tt_ranks,
    tt_round,
)
from tngraph.linalg import DecompositionError, one_cpu_thread, svd

__all__ = ["EighResult", "SolveResult", "tt_eigh", "tt_matvec", "tt_solve"]

#: local problems with at most this many unknowns are solved densely
DENSE_LIMIT = 256
#: Krylov vectors of one Lanczos run (then it restarts from its Ritz vector)
KRYLOV_SIZE = 24
#: a TT-matrix whose ||A - A^H|| exceeds this fraction of ||A|| is refused as not symmetric
#: (Hermitian); single precision allows ``100 * finfo(float32).eps`` instead (about 1e-5)
SYMMETRY_RTOL = 1e-8
#: tt_solve stops after two sweeps in a row that leave the best residual above this fraction
#: of itself (the rank cap, not the sweeps, limits the accuracy)
STALL_FACTOR = 0.9


@dataclass(frozen=True)
class EighResult:
    """The lowest eigenpair found by :func:`tt_eigh`; unpacks as ``eigenvalue, vector``.

    Attributes
    ----------
    eigenvalue
        The lowest eigenvalue: the Rayleigh quotient ``<x|A|x>`` of the returned ``vector``
        (an upper bound of the exact one).
    vector
        The eigenvector's TT cores ``(r_k, n_k, r_{k+1})``, unit norm.
    energies
        The local eigenvalue at the end of each sweep (one pass in one direction), before
        its truncation: a convergence plot.
    converged
        Whether the last sweep changed the eigenvalue by at most ``tol * max(1, |eigenvalue|)``.
    """

    eigenvalue: float
    vector: list[torch.Tensor]
    energies: tuple[float, ...]
    converged: bool

    def __iter__(self):
        return iter((self.eigenvalue, self.vector))

    @property
    def ranks(self) -> tuple[int, ...]:
        """The eigenvector's TT-ranks."""
        return tt_ranks(self.vector)

    @property
    def sweeps(self) -> int:
        return len(self.energies)


@dataclass(frozen=True)
class SolveResult:
    """The solution found by :func:`tt_solve`; unpacks as ``solution, residual``.

    Attributes
    ----------
    solution
        The TT cores ``(r_k, n_k, r_{k+1})`` of ``x``.
    residual
        ``||A x - b||_F / ||b||_F``, computed exactly in TT format.
    residuals
        The relative residual after each sweep (one pass in one direction).
    converged
        Whether ``residual <= tol``.
    """

    solution: list[torch.Tensor]
    residual: float
    residuals: tuple[float, ...]
    converged: bool

    def __iter__(self):
        return iter((self.solution, self.residual))

    @property
    def ranks(self) -> tuple[int, ...]:
        """The solution's TT-ranks."""
        return tt_ranks(self.solution)

    @property
    def sweeps(self) -> int:
        return len(self.residuals)


# ---------------------------------------------------------------------------------------------
# checks


def _operator(matrix_cores: Sequence[Any], *, square: bool) -> list[torch.Tensor]:
    cores = _check_cores(matrix_cores, "matrix_cores")
    if any(c.dim() != 4 for c in cores):
        raise DecompositionError("matrix_cores must have shape (r, n_in, n_out, r'), got "
                                 f"{[tuple(c.shape) for c in cores]}",
                                 "make them with tt_matrix(weight, in_shape, out_shape), or "
                                 "by hand with the input mode before the output mode")
    for k, c in enumerate(cores):
        if not bool(torch.isfinite(c).all()):
            raise DecompositionError(f"matrix_cores[{k}] has non-finite entries",
                                     "clean the operator's cores (NaN / inf)")
        if square and c.shape[1] != c.shape[2]:
            raise DecompositionError(f"matrix_cores[{k}] maps {c.shape[1]} to {c.shape[2]} "
                                     "values; the operator must be square at every site",
                                     "n_in_k == n_out_k for every core")
    return cores


def _vector(cores: Sequence[Any], what: str, operator: list[torch.Tensor]) -> list[torch.Tensor]:
    """Check a TT vector against the operator: same modes, dtype and device, except that a real
    one meets a complex one of the same precision (the caller promotes, :func:`_promote`)."""
    checked = _check_cores(cores, what)
    if any(c.dim() != 3 for c in checked):
        raise DecompositionError(f"{what} must have shape (r, n, r'), got "
                                 f"{[tuple(c.shape) for c in checked]}",
                                 "make them with tt_svd(tensor)")
    modes = [int(c.shape[1]) for c in checked]
    expected = [int(c.shape[1]) for c in operator]
    if modes != expected:
        raise DecompositionError(f"{what} has modes {modes} but the operator takes {expected}",
                                 "the vector's n_k must be the operator's n_in_k")
    mixed = _real(checked[0].dtype) == _real(operator[0].dtype)      # float64 with complex128
    if not mixed or checked[0].device != operator[0].device:
        raise DecompositionError(f"{what} is {checked[0].dtype} on {checked[0].device} but "
                                 f"the operator is {operator[0].dtype} on {operator[0].device}",
                                 f"convert them: [c.to(matrix_cores[0]) for c in {what}]")
    for k, c in enumerate(checked):
        if not bool(torch.isfinite(c).all()):
            raise DecompositionError(f"{what}[{k}] has non-finite entries",
                                     "clean the cores (NaN / inf)")
    return checked


def _promote(operator: list[torch.Tensor], vector: list[torch.Tensor]
             ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Both in the complex dtype when one of them is complex (einsum does not promote)."""
    dtype = torch.promote_types(operator[0].dtype, vector[0].dtype)
    return [c.to(dtype) for c in operator], [c.to(dtype) for c in vector]


def _sweep_options(name: str, max_rank: Any, max_bond: Any, sweeps: Any, tol: Any, eps: Any,
                   seed: Any) -> int:
    if max_bond is not None:
        if max_rank is not None and max_rank != max_bond:
            raise DecompositionError(f"max_rank = {max_rank!r} and max_bond = {max_bond!r} "
                                     "disagree; max_bond is max_rank's earlier name",
                                     "pass max_rank only")
        max_rank = max_bond
    if max_rank is None:
        raise DecompositionError(f"{name} needs max_rank, the largest TT-rank of the vector",
                                 f"for example {name}(matrix_cores, max_rank=32)")
    for what, value, least in (("max_rank", max_rank, 1), ("sweeps", sweeps, 1),
                               ("seed", seed, 0)):
        if not _is_count(value) or value < least:
            raise DecompositionError(f"{what} must be an integer >= {least}, got {value!r}",
                                     "for example max_rank=32, sweeps=10, seed=0")
    for what, value in (("tol", tol), ("eps", eps)):
        if not (_is_number(value) and value >= 0):
            raise DecompositionError(f"{what} must be a finite number >= 0, got {value!r}",
                                     "for example tol=1e-10, eps=1e-12")
    return int(max_rank)


def _check_hermitian(cores: list[torch.Tensor]) -> None:
    """Refuse ``A`` unless ``||A - A^H|| <= rtol ||A||`` in TT format: ``A^H`` swaps the
    ``n_in`` and ``n_out`` axes of every core and conjugates it (a real ``A``: ``A^T``)."""
    adjoint = [c.transpose(1, 2).conj() for c in cores]
    negated = [-adjoint[0], *adjoint[1:]]
    asymmetry = float(tt_norm(tt_add(cores, negated)))
    norm = float(tt_norm(cores))
    rtol = max(SYMMETRY_RTOL, 100 * torch.finfo(_real(cores[0].dtype)).eps)
    if asymmetry > rtol * norm:
        if cores[0].is_complex():
            raise DecompositionError(
                f"the operator is not Hermitian: ||A - A^H|| / ||A|| = {asymmetry / norm:.2e} "
                f"(at most {rtol:.3g} accepted)",
                "make it Hermitian: tt_round(tt_add(A, [c.transpose(1, 2).conj() for c in A])) "
                "and halve one core; a complex symmetric A (A = A^T) is not Hermitian; or "
                "check the (n_in, n_out) order")
        raise DecompositionError(f"the operator is not symmetric: ||A - A^T|| / ||A|| = "
                                 f"{asymmetry / norm:.2e} (at most {rtol:.3g} accepted)",
                                 "symmetrise it: tt_round(tt_add(A, [c.transpose(1, 2) for c "
                                 "in A])) and halve one core, or check the (n_in, n_out) order")


# ---------------------------------------------------------------------------------------------
# products


def tt_matvec(matrix_cores: Sequence[torch.Tensor], vector_cores: Sequence[torch.Tensor], *,
              max_rank: int | None = None, eps: float | None = None) -> list[torch.Tensor]:
    """The TT of ``A x`` for a TT-matrix ``A`` (MPO) and a TT vector ``x`` (MPS).

    Each core is the product of the two cores over the input mode: ``(r s, n_out, r' s')``,
    so the ranks multiply. With ``max_rank`` or ``eps`` the product is rounded
    (:func:`~tngraph.decompose.tt.tt_round`, ``||Ax - round(Ax)|| <= eps ||Ax||``). Complex
    cores are multiplied as they are (no conjugation); a real vector meets a complex operator
    of the same precision (or the other way round) in the complex dtype.

    Parameters
    ----------
    matrix_cores
        ``(r_k, n_in_k, n_out_k, r_{k+1})`` cores.
    vector_cores
        ``(s_k, n_in_k, s_{k+1})`` cores, the same dtype and device (or the real / complex
        dtype of the same precision).
    max_rank, eps
        Optional rounding of the product.

    Returns
    -------
    list of torch.Tensor
        ``(t_k, n_out_k, t_{k+1})`` cores of ``A x``.

    Examples
    --------
    >>> import torch
    >>> from tngraph.decompose import tt_matrix, tt_matrix_to_dense, tt_svd, tt_to_dense
    >>> w = torch.randn(12, 20, dtype=torch.float64)
    >>> a = tt_matrix(w, in_shape=[4, 5], out_shape=[3, 4])
    >>> x = torch.randn(4, 5, dtype=torch.float64)
    >>> y = tt_matvec(a, tt_svd(x))
    >>> bool(torch.allclose(tt_to_dense(y).reshape(-1), w @ x.reshape(-1)))
    True
    >>> z = tt_matvec([c * 1j for c in a], tt_svd(x))                # complex128
    >>> bool(torch.allclose(tt_to_dense(z).reshape(-1), (w @ x.reshape(-1)) * 1j ** 2))
    True
    """
    operator = _operator(matrix_cores, square=False)
    vector = _vector(vector_cores, "vector_cores", operator)
    if len(vector) != len(operator):
        raise DecompositionError(f"vector_cores has {len(vector)} cores but matrix_cores "
                                 f"{len(operator)}", "one core per site in both")
    operator, vector = _promote(operator, vector)
    out = [torch.einsum("aiob,sit->asobt", a, x).reshape(
        a.shape[0] * x.shape[0], a.shape[2], a.shape[3] * x.shape[2])
        for a, x in zip(operator, vector)]
    if max_rank is not None or eps is not None:
        out = tt_round(out, eps=eps, max_rank=max_rank)
    return out


# ---------------------------------------------------------------------------------------------
# environments and local problems


def _left_env(env: torch.Tensor, bra: torch.Tensor, op: torch.Tensor, ket: torch.Tensor
              ) -> torch.Tensor:
    """``(x, a, s)`` -> ``(y, b, t)``: one more site of ``<bra| A |ket>`` from the left (the
    bra conjugated)."""
    t = torch.einsum("xas,sit->xait", env, ket)
    t = torch.einsum("xait,aiob->xtob", t, op)
    return torch.einsum("xtob,xoy->ybt", t, bra.conj())


def _right_env(env: torch.Tensor, bra: torch.Tensor, op: torch.Tensor, ket: torch.Tensor
               ) -> torch.Tensor:
    """``(y, b, t)`` -> ``(x, a, s)``: one more site of ``<bra| A |ket>`` from the right (the
    bra conjugated)."""
    t = torch.einsum("ybt,sit->ybsi", env, ket)
    t = torch.einsum("ybsi,aiob->yaso", t, op)
    return torch.einsum("yaso,xoy->xas", t, bra.conj())


def _left_rhs(env: torch.Tensor, bra: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(x, b)`` -> ``(y, c)``: one more site of ``<bra|rhs>`` from the left (the bra
    conjugated)."""
    t = torch.einsum("xb,boc->xoc", env, rhs)
    return torch.einsum("xoc,xoy->yc", t, bra.conj())


def _right_rhs(env: torch.Tensor, bra: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``(y, c)`` -> ``(x, b)``: one more site of ``<bra|rhs>`` from the right (the bra
    conjugated)."""
    t = torch.einsum("boc,yc->boy", rhs, env)
    return torch.einsum("xoy,boy->xb", bra.conj(), t)


def _pair_operator(op1: torch.Tensor, op2: torch.Tensor) -> torch.Tensor:
    """Two operator cores merged: ``(a, i, j, o, p, c)`` as an ``(a i j, o p c)`` matrix."""
    merged = torch.einsum("aiob,bjpc->aijopc", op1, op2)
    return merged.reshape(op1.shape[0] * op1.shape[1] * op2.shape[1], -1)


def _pair_apply(left: torch.Tensor, pair: torch.Tensor, right: torch.Tensor,
                theta: torch.Tensor) -> torch.Tensor:
    """The local operator on a two-site block ``theta`` ``(s, i, j, t)``: three matrix
    products with the environments ``left`` ``(x, a, s)``, ``right`` ``(y, c, t)`` and the
    merged operator ``pair`` (:func:`_pair_operator`)."""
    x, a, s = left.shape
    _, n1, n2, t = theta.shape
    y, c, _ = right.shape
    step = (left.reshape(x * a, s) @ theta.reshape(s, -1)).reshape(x, a * n1 * n2, t)
    step = step.transpose(1, 2).reshape(x * t, -1) @ pair               # (x t, o p c)
    step = step.reshape(x, t, -1, c).permute(0, 2, 3, 1).reshape(-1, c * t)
    return (step @ right.reshape(y, c * t).T).reshape(x, n1, n2, y)   # square sites


def _pair_dense(left: torch.Tensor, op1: torch.Tensor, op2: torch.Tensor, right: torch.Tensor
                ) -> torch.Tensor:
    """The local operator as a dense ``(dim, dim)`` matrix (rows: output, columns: input)."""
    t = torch.einsum("xas,aiob->xsiob", left, op1)
    t = torch.einsum("xsiob,bjpc->xsiojpc", t, op2)
    t = torch.einsum("xsiojpc,yct->xopysijt", t, right)
    dim = left.shape[0] * op1.shape[2] * op2.shape[2] * right.shape[0]
    return t.reshape(dim, dim)


def _lowest_eigenpair(apply: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                      residual_tol: float, max_restarts: int = 20
                      ) -> tuple[float, torch.Tensor]:
    """Lanczos with full reorthogonalisation from ``start``, restarted from its Ritz vector;
    stops when the Ritz residual ``|beta_j e_j^T s|`` is at most ``residual_tol * max(1,
    |value|)``. Hermitian inner products: for a Hermitian operator the tridiagonal matrix is
    real."""
    shape = start.shape
    v = start.reshape(-1)
    if not float(torch.linalg.vector_norm(v)) > 0:
        v = torch.ones_like(v)
    v = v / torch.linalg.vector_norm(v)
    size = min(KRYLOV_SIZE, v.numel())
    value = math.nan
    for _ in range(max_restarts):
        basis = torch.zeros(size, v.numel(), dtype=v.dtype, device=v.device)
        basis[0] = v
        tri = torch.zeros(size, size, dtype=torch.float64)
        done = False
        for j in range(size):
            w = apply(basis[j].reshape(shape)).reshape(-1)
            tri[j, j] = float(torch.vdot(basis[j], w).real)
            used = basis[: j + 1]
            w = w - used.T @ (used.conj() @ w)
            w = w - used.T @ (used.conj() @ w)                   # twice is enough
            beta = float(torch.linalg.vector_norm(w))
            values, vectors = torch.linalg.eigh(tri[: j + 1, : j + 1])
            value = float(values[0])
            residual = beta * abs(float(vectors[-1, 0]))
            done = residual <= residual_tol * max(1.0, abs(value))
            if done or j + 1 == size or beta <= 1e-14 * max(1.0, abs(value)):
                break
            tri[j, j + 1] = tri[j + 1, j] = beta
            basis[j + 1] = w / beta
        v = basis[: j + 1].T @ vectors[:, 0].to(v.dtype)
        v = v / torch.linalg.vector_norm(v)
        if done or beta <= 1e-14 * max(1.0, abs(value)):
            break
    return value, v.reshape(shape)


def _conjugate_gradients(apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor,
                         start: torch.Tensor, rtol: float, max_iters: int) -> torch.Tensor:
    """CG for a Hermitian (symmetric) positive definite local operator, with Hermitian inner
    products; refuses a non-positive curvature."""
    x = start.clone()
    r = rhs - apply(x)
    target = rtol * float(torch.linalg.vector_norm(rhs))
    p = r.clone()
    rr = _dot(r, r)
    for _ in range(max_iters):
        if math.sqrt(rr) <= target:
            break
        ap = apply(p)
        curvature = _dot(p, ap)
        if not curvature > 0:
            raise _NotPositive
        step = rr / curvature
        x = x + step * p
        r = r - step * ap
        new_rr = _dot(r, r)
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x


def _dot(u: torch.Tensor, v: torch.Tensor) -> float:
    """The real part of ``<u|v> = sum conj(u) v`` (real for ``u = v`` and for ``<p|A p>`` with a
    Hermitian ``A``)."""
    return float(torch.vdot(u.reshape(-1), v.reshape(-1)).real)


class _NotPositive(Exception):
    """A local operator of tt_solve has a direction of non-positive curvature."""


def _split(theta: torch.Tensor, max_rank: int, eps: float, center_left: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two cores from a two-site block: truncated SVD, the weight to the centre's side."""
    s_left, n1, n2, s_right = theta.shape
    u, s, vh = svd(theta.reshape(s_left * n1, n2 * s_right), what="two-site block")
    norm = float(torch.linalg.vector_norm(s))
    rank = _truncation_rank(s, delta=eps * norm, cap=max_rank, rtol=0.0)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if center_left:
        u = u * s
    else:
        vh = s[:, None] * vh
    return u.reshape(s_left, n1, rank), vh.reshape(rank, n2, s_right)


def _random_start(shape: list[int], rank: int, seed: int, like: torch.Tensor
                  ) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    bounds = [1]
    for k in range(1, len(shape)):
        bounds.append(min(rank, math.prod(shape[:k]), math.prod(shape[k:])))
    bounds.append(1)
    cores = [torch.randn(bounds[k], n, bounds[k + 1], generator=gen, dtype=torch.float64)
             for k, n in enumerate(shape)]
    cores = right_orthogonalize([c.to(like.dtype).to(like.device) for c in cores])
    cores[0] = cores[0] / torch.linalg.vector_norm(cores[0])
    return cores


class _Sweeper:
    """Mixed-canonical two-site sweeps over ``x``, with environments of ``<x|A|x>`` and, for a
    right-hand side, of ``<x|b>``."""

    def __init__(self, operator: list[torch.Tensor], x: list[torch.Tensor],
                 rhs: list[torch.Tensor] | None):
        self.op, self.x, self.rhs = operator, x, rhs
        d = len(x)
        self.pairs = [_pair_operator(operator[k], operator[k + 1]) for k in range(d - 1)]
        one = torch.ones(1, 1, 1, dtype=x[0].dtype, device=x[0].device)
        self.left: list[torch.Tensor | None] = [one] + [None] * d
        self.right: list[torch.Tensor | None] = [None] * d + [one]
        self.left_b: list[torch.Tensor | None] = [one[0]] + [None] * d
        self.right_b: list[torch.Tensor | None] = [None] * d + [one[0]]
        for k in range(d - 1, 1, -1):                 # x is right-orthonormal from site 1
            self._grow_right(k)

    def _grow_left(self, k: int) -> None:
        self.left[k + 1] = _left_env(self.left[k], self.x[k], self.op[k], self.x[k])
        if self.rhs is not None:
            self.left_b[k + 1] = _left_rhs(self.left_b[k], self.x[k], self.rhs[k])

    def _grow_right(self, k: int) -> None:
        self.right[k] = _right_env(self.right[k + 1], self.x[k], self.op[k], self.x[k])
        if self.rhs is not None:
            self.right_b[k] = _right_rhs(self.right_b[k + 1], self.x[k], self.rhs[k])

    def pair(self, k: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
        left, right = self.left[k], self.right[k + 2]
        pair = self.pairs[k]
        theta = torch.einsum("sir,rjt->sijt", self.x[k], self.x[k + 1])
        return (lambda block: _pair_apply(left, pair, right, block)), theta

    def pair_dense(self, k: int) -> torch.Tensor:
        return _pair_dense(self.left[k], self.op[k], self.op[k + 1], self.right[k + 2])

    def pair_rhs(self, k: int) -> torch.Tensor:
        t = torch.einsum("xb,boc->xoc", self.left_b[k], self.rhs[k])
        t = torch.einsum("xoc,cpd->xopd", t, self.rhs[k + 1])
        return torch.einsum("xopd,yd->xopy", t, self.right_b[k + 2])

    def update(self, k: int, theta: torch.Tensor, forward: bool, max_rank: int,
               eps: float) -> None:
        """Split the new block; the centre moves to ``k + 1`` (forward) or stays at ``k``."""
        self.x[k], self.x[k + 1] = _split(theta, max_rank, eps, center_left=not forward)
        if forward:
            self._grow_left(k)
        else:
            self._grow_right(k + 1)


def _pairs(d: int, forward: bool) -> range:
    return range(d - 1) if forward else range(d - 2, -1, -1)


# ---------------------------------------------------------------------------------------------
# eigenvalues


def tt_eigh(matrix_cores: Sequence[torch.Tensor], *, max_rank: int | None = None,
            sweeps: int = 20, tol: float = 1e-10, eps: float = 1e-12, seed: int = 0,
            max_bond: int | None = None) -> EighResult:
    """The lowest eigenpair of a symmetric (Hermitian) TT-matrix by two-site DMRG sweeps.

    Parameters
    ----------
    matrix_cores
        ``(r_k, n_k, n_k, r_{k+1})`` cores of a real symmetric or complex Hermitian operator
        (``A = A^H`` is checked in TT format), boundary ranks 1. A complex operator gives a
        complex eigenvector; the eigenvalue is real.
    max_rank
        Largest TT-rank (bond dimension) of the eigenvector; ``max_bond`` is read as an alias.
    sweeps
        At most this many sweeps (passes in one direction).
    tol
        Stop when a sweep changes the eigenvalue by at most ``tol * max(1, |eigenvalue|)``; the
        local Lanczos runs to a residual of ``sqrt(tol) / 10`` (its eigenvalue error is about
        the square).
    eps
        Relative truncation of each two-site block (discarded singular values' norm over the
        block's), besides ``max_rank``.
    seed
        Seeds the random start (rank ``min(max_rank, 4)``).

    Returns
    -------
    EighResult
        Unpacks as ``eigenvalue, vector``; ``.energies`` holds the eigenvalue after each sweep,
        ``.converged`` whether ``tol`` was met.

    Raises
    ------
    DecompositionError
        Bad cores (shape, non-square sites, non-finite entries), a non-symmetric
        (non-Hermitian) operator, bad options.

    Examples
    --------
    >>> import torch
    >>> from tngraph.decompose import tt_matrix_to_dense
    >>> eye, z = torch.eye(2, dtype=torch.float64), torch.diag(torch.tensor([1.0, -1.0]))
    >>> zz = [z.double().reshape(1, 2, 2, 1)] * 2 + [eye.reshape(1, 2, 2, 1)]   # Z Z I
    >>> result = tt_eigh(zz, max_rank=2)
    >>> result.eigenvalue, result.ranks
    (-1.0, (1, 1))
    >>> y = torch.tensor([[0, -1j], [1j, 0]], dtype=torch.complex128).reshape(1, 2, 2, 1)
    >>> round(tt_eigh([y, y.conj()], max_rank=2).eigenvalue, 12)    # Y (x) Y^T, Hermitian
    -1.0
    """
    max_rank = _sweep_options("tt_eigh", max_rank, max_bond, sweeps, tol, eps, seed)
    operator = _operator(matrix_cores, square=True)
    _check_hermitian(operator)
    with one_cpu_thread(operator[0].device):      # many small factorisations
        return _dmrg_eigh(operator, max_rank, sweeps, tol, eps, seed)


def _dmrg_eigh(operator: list[torch.Tensor], max_rank: int, sweeps: int, tol: float, eps: float,
               seed: int) -> EighResult:
    """tt_eigh on checked arguments."""
    shape = [int(c.shape[1]) for c in operator]
    d = len(shape)
    if d == 1:
        values, vectors = torch.linalg.eigh(operator[0][0, :, :, 0].T)   # (n_out, n_in)
        return EighResult(float(values[0]), [vectors[:, 0].reshape(1, -1, 1)],
                          (float(values[0]),), True)
    x = _random_start(shape, min(max_rank, 4), seed, operator[0])
    sweeper = _Sweeper(operator, x, None)
    residual_tol = max(math.sqrt(tol) / 10, 1e-13)
    energies: list[float] = []
    converged = False
    value = math.nan
    for sweep in range(sweeps):
        forward = sweep % 2 == 0
        for k in _pairs(d, forward):
            apply, theta = sweeper.pair(k)
            if theta.numel() <= DENSE_LIMIT:
                values, vectors = torch.linalg.eigh(sweeper.pair_dense(k))
                value, theta = float(values[0]), vectors[:, 0].reshape(theta.shape)
            else:
                value, theta = _lowest_eigenpair(apply, theta, residual_tol)
            sweeper.update(k, theta, forward, max_rank, eps)
        if energies and abs(energies[-1] - value) <= tol * max(1.0, abs(value)):
            converged = True
        energies.append(value)
        if converged:
            break
    vector = [c.contiguous() for c in sweeper.x]
    centre = d - 1 if len(energies) % 2 else 0          # where the last pass left the weight
    vector[centre] = vector[centre] / torch.linalg.vector_norm(vector[centre])
    return EighResult(_rayleigh_quotient(operator, vector), vector, tuple(energies), converged)


def _rayleigh_quotient(operator: list[torch.Tensor], vector: list[torch.Tensor]) -> float:
    """``<x|A|x>`` of a unit-norm TT ``x`` (the truncated state's own eigenvalue estimate)."""
    env = torch.ones(1, 1, 1, dtype=vector[0].dtype, device=vector[0].device)
    for op, core in zip(operator, vector):
        env = _left_env(env, core, op, core)
    return float(env.reshape(()).real)


# ---------------------------------------------------------------------------------------------
# linear systems


def tt_solve(matrix_cores: Sequence[torch.Tensor], rhs_cores: Sequence[torch.Tensor], *,
             max_rank: int | None = None, sweeps: int = 20, tol: float = 1e-10,
             eps: float = 1e-12, seed: int = 0, max_bond: int | None = None) -> SolveResult:
    """Solve ``A x = b`` for a symmetric (Hermitian) positive definite TT-matrix ``A`` by
    two-site DMRG.

    Each two-site step minimises the energy ``x^H A x - 2 Re(b^H x)`` over the pair, i.e.
    solves the local system (conjugate gradients with Hermitian inner products from the current
    pair, or Cholesky when small), and splits the pair by a truncated SVD.

    Parameters
    ----------
    matrix_cores
        ``(r_k, n_k, n_k, r_{k+1})`` cores of a real symmetric or complex Hermitian positive
        definite operator.
    rhs_cores
        ``(s_k, n_k, s_{k+1})`` cores of ``b``: the operator's dtype, or the real / complex
        dtype of the same precision (then both are taken complex).
    max_rank
        Largest TT-rank of ``x``; ``max_bond`` is read as an alias.
    sweeps
        At most this many sweeps (passes in one direction).
    tol
        Stop when ``||A x - b|| / ||b|| <= tol`` (checked after each sweep, exactly), or after
        two sweeps in a row that do not lower the best residual by 10 % (the rank cap limits
        it: raise ``max_rank``).
    eps
        Relative truncation of each two-site block, besides ``max_rank``.
    seed
        Seeds the random start (rank ``min(max_rank, 4)``).

    Returns
    -------
    SolveResult
        Unpacks as ``solution, residual``; ``.residuals`` per sweep, ``.converged``.

    Raises
    ------
    DecompositionError
        Bad cores or options, a non-symmetric (non-Hermitian) operator, or one found not
        positive definite.

    Examples
    --------
    >>> import torch
    >>> from tngraph.decompose import tt_svd, tt_to_dense
    >>> lap = torch.tensor([[2.0, -1, 0], [-1, 2, -1], [0, -1, 2]], dtype=torch.float64)
    >>> eye = torch.eye(3, dtype=torch.float64)
    >>> a = [torch.stack([lap, eye], -1)[None], torch.stack([eye, lap])[..., None]]  # L+L
    >>> b = tt_svd(torch.ones(3, 3, dtype=torch.float64))
    >>> x, residual = tt_solve(a, b, max_rank=3)
    >>> residual < 1e-10
    True
    """
    max_rank = _sweep_options("tt_solve", max_rank, max_bond, sweeps, tol, eps, seed)
    operator = _operator(matrix_cores, square=True)
    rhs = _vector(rhs_cores, "rhs_cores", operator)
    if len(rhs) != len(operator):
        raise DecompositionError(f"rhs_cores has {len(rhs)} cores but matrix_cores "
                                 f"{len(operator)}", "one core per site in both")
    _check_hermitian(operator)
    operator, rhs = _promote(operator, rhs)
    with one_cpu_thread(operator[0].device):      # many small factorisations
        return _dmrg_solve(operator, rhs, max_rank, sweeps, tol, eps, seed)


def _dmrg_solve(operator: list[torch.Tensor], rhs: list[torch.Tensor], max_rank: int,
                sweeps: int, tol: float, eps: float, seed: int) -> SolveResult:
    """tt_solve on checked arguments."""
    rhs_norm = float(tt_norm(rhs))
    shape = [int(c.shape[1]) for c in operator]
    d = len(shape)
    if rhs_norm == 0:
        zero = [torch.zeros(1, n, 1, dtype=rhs[0].dtype, device=rhs[0].device) for n in shape]
        return SolveResult(zero, 0.0, (0.0,), True)
    if d == 1:
        solution = torch.linalg.solve(operator[0][0, :, :, 0].T, rhs[0].reshape(-1))
        x = [solution.reshape(1, -1, 1)]
        residual = _residual(operator, x, rhs, rhs_norm)
        return SolveResult(x, residual, (residual,), residual <= tol)
    x = _random_start(shape, min(max_rank, 4), seed, operator[0])
    sweeper = _Sweeper(operator, x, rhs)
    residuals: list[float] = []
    residual = math.inf
    stalled = 0
    for sweep in range(sweeps):
        forward = sweep % 2 == 0
        for k in _pairs(d, forward):
            apply, theta = sweeper.pair(k)
            local_rhs = sweeper.pair_rhs(k)
            try:
                theta = _local_solve(sweeper, k, apply, local_rhs, theta, tol)
            except _NotPositive:
                raise DecompositionError("the operator is not positive definite: a local "
                                         f"system at sites {k}, {k + 1} has a direction of "
                                         "non-positive curvature",
                                         "tt_solve needs a symmetric positive definite A; "
                                         "for an indefinite one, shift it or solve the normal "
                                         "equations") from None
            sweeper.update(k, theta, forward, max_rank, eps)
        residual = _residual(operator, sweeper.x, rhs, rhs_norm)
        stalled = stalled + 1 if residuals and residual > STALL_FACTOR * min(residuals) else 0
        residuals.append(residual)
        if residual <= tol or stalled >= 2:
            break
    return SolveResult([c.contiguous() for c in sweeper.x], residual, tuple(residuals),
                       residual <= tol)


def _local_solve(sweeper: _Sweeper, k: int, apply: Callable[[torch.Tensor], torch.Tensor],
                 rhs: torch.Tensor, theta: torch.Tensor, tol: float) -> torch.Tensor:
    if theta.numel() <= DENSE_LIMIT:
        dense = sweeper.pair_dense(k)
        try:
            factor = torch.linalg.cholesky(dense)
        except RuntimeError:         # torch.linalg.LinAlgError: not positive definite
            raise _NotPositive from None
        return torch.cholesky_solve(rhs.reshape(-1, 1), factor).reshape(theta.shape)
    return _conjugate_gradients(apply, rhs, theta, rtol=max(tol / 10, 1e-14),
                                max_iters=max(200, int(math.sqrt(theta.numel())) * 4))


def _residual(operator: list[torch.Tensor], x: list[torch.Tensor], rhs: list[torch.Tensor],
              rhs_norm: float) -> float:
    """``||A x - b|| / ||b||`` in TT format (orthogonalisation, no cancellation of squares)."""
    ax = tt_matvec(operator, x)
    minus_b = [-rhs[0], *rhs[1:]]
    return float(tt_norm(tt_add(ax, minus_b))) / rhs_norm
