"""Tensor-train (TT / MPS / MPO) decompositions of dense tensors, weights and state vectors.

The first module of the TT library (:mod:`tngraph.decompose` re-exports every public name).

Everything here is a small pure function on torch tensors (float32 or float64, CPU or GPU;
complex64 / complex128 too, except where a function says otherwise).

Core layout
-----------
A TT of a tensor with shape ``(n_0, ..., n_{d-1})`` is a list of ``d`` cores; core ``k`` has
shape ``(r_k, n_k, r_{k+1})`` with boundary ranks ``r_0 = r_d = 1`` kept as explicit size-1
axes, so that ``A[i_0, ..., i_{d-1}] = G_0[:, i_0, :] @ ... @ G_{d-1}[:, i_{d-1}, :]``. The
*ranks* of a TT are its inner ranks ``(r_1, ..., r_{d-1})`` (:func:`tt_ranks`). A TT-matrix
(MPO) core has shape ``(r_k, n_in_k, n_out_k, r_{k+1})``; every function that takes cores
(:func:`tt_to_dense`, :func:`tt_round`, :func:`tt_add`, :func:`tt_hadamard`, :func:`tt_dot`,
:func:`tt_norm`) also accepts cores with several mode axes between the two rank axes.

Truncation
----------
``eps`` is a relative Frobenius accuracy: :func:`tt_svd` and :func:`tt_round` truncate each of
the ``d - 1`` unfoldings at ``delta = eps / sqrt(d - 1) * ||A||_F`` (the smallest rank whose
discarded singular values have ``sqrt(sum sigma^2) <= delta``), which guarantees
``||A - TT||_F <= eps * ||A||_F`` (Oseledets 2011, Theorem 2.2). ``max_rank`` caps every rank.
``ranks`` asks for exact ranks; a rank above what an unfolding can have is rejected with a
:class:`DecompositionError` (use ``max_rank`` to cap instead). Without any of them the
decomposition keeps the *numerical* ranks (singular values above ``max(m, n) * machine eps *
sigma_max``), i.e. it is exact to rounding.

Examples
--------
>>> import torch
>>> from tngraph.decompose import tt_svd, tt_to_dense, tt_ranks
>>> a = torch.randn(3, 4, 5, 6, dtype=torch.float64)
>>> cores = tt_svd(a)
>>> tt_ranks(cores)
(3, 12, 6)
>>> bool(torch.allclose(tt_to_dense(cores), a))
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tngraph.compiler import TNModule
from tngraph.linalg import GUARDED, DecompositionError, Kernels, svd

__all__ = [
    "DecompositionError",
    "bond_spectra",
    "entanglement_entropy",
    "left_orthogonalize",
    "max_ranks",
    "qtt",
    "right_orthogonalize",
    "tt_add",
    "tt_dot",
    "tt_hadamard",
    "tt_linear_spec",
    "tt_linear_state_dict",
    "tt_matrix",
    "tt_matrix_to_dense",
    "tt_norm",
    "tt_ranks",
    "tt_round",
    "tt_svd",
    "tt_to_dense",
    "tt_values",
    "unfolding_ranks",
]


# ---------------------------------------------------------------------------------------------
# input checks


def _as_float_tensor(x: Any, what: str = "tensor", complex_ok: bool = True) -> torch.Tensor:
    """``x`` as a floating or complex torch tensor (integers -> float64); complex is refused
    unless ``complex_ok``."""
    if isinstance(x, (str, bytes, Mapping)) or x is None:
        raise DecompositionError(f"{what} must be a tensor (or nested lists of numbers), got "
                                 f"{type(x).__name__}", "pass a torch tensor or a NumPy array")
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise DecompositionError(f"{what} cannot be read as a tensor ({exc})",
                                 "pass a torch tensor, a NumPy array, or nested lists of "
                                 "numbers of one rectangular shape") from None
    if t.is_complex() and not complex_ok:
        raise DecompositionError(f"{what} is complex ({t.dtype}); only real tensors are "
                                 "supported here", "the TT-SVD, rounding, arithmetic, norms "
                                 "and entanglement take complex tensors; this one does not")
    if not t.is_floating_point() and not t.is_complex():
        t = t.to(torch.float64)
    return t.detach()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """SVD / QR run in float32, float64, complex64 or complex128 (half precision is promoted
    to float32)."""
    return dtype if dtype in (torch.float32, torch.float64, torch.complex64,
                              torch.complex128) else torch.float32


def _real(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of the same precision (singular values, norms, entropies)."""
    return dtype.to_real() if dtype.is_complex else dtype


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise DecompositionError(f"{what} has non-finite entries ({n_nan} NaN, {n_inf} inf)",
                                 "clean or mask the data before decomposing it")


def _fnorm(t: torch.Tensor) -> float:
    """Frobenius norm as a Python float, accumulated in float64 (no float32 overflow)."""
    wide = torch.complex128 if t.is_complex() else torch.float64
    return float(torch.linalg.vector_norm(t, dtype=wide))


def _truncation_rank(s: torch.Tensor, *, delta: float | None, cap: int | None,
                     rtol: float) -> int:
    """How many singular values (descending ``s``) to keep.

    With ``delta``: the smallest ``r`` with ``sqrt(sum(s[r:]**2)) <= delta``. Without: the
    numerical rank, ``#{s > rtol * s[0]}``. Then capped by ``cap`` and at least 1.
    """
    s = s.detach().to("cpu", torch.float64)
    if delta is not None:
        tail = torch.flip(torch.cumsum(torch.flip(s * s, [0]), 0), [0])  # tail[j] = sum s[j:]^2
        r = int((tail > delta * delta).sum())
    else:
        r = int((s > rtol * s[0]).sum()) if s.numel() else 0
    if cap is not None:
        r = min(r, cap)
    return max(r, 1)


def _is_number(x: Any) -> bool:
    """A finite real Python / NumPy number (not a bool)."""
    return (isinstance(x, (int, float, np.integer, np.floating))
            and not isinstance(x, (bool, np.bool_)) and math.isfinite(x))


def _is_count(x: Any) -> bool:
    """An integer (Python or NumPy, not a bool)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_eps(eps: float | None) -> None:
    if eps is not None and not (_is_number(eps) and eps >= 0):
        raise DecompositionError(f"eps must be a finite number >= 0, got {eps!r}",
                                 "eps is a relative accuracy, e.g. 1e-3")


def _check_max_rank(max_rank: int | None) -> None:
    if max_rank is not None and (not _is_count(max_rank) or max_rank < 1):
        raise DecompositionError(f"max_rank must be an integer >= 1, got {max_rank!r}")


def max_ranks(shape: Sequence[int]) -> tuple[int, ...]:
    """The largest possible TT-ranks of a tensor of this shape: ``min(prod(n[:k]), prod(n[k:]))``.

    >>> max_ranks((3, 4, 5, 6))
    (3, 12, 6)
    """
    if isinstance(shape, torch.Tensor) or not isinstance(shape, Sequence) \
            or not all(_is_count(n) and n >= 0 for n in shape):
        raise DecompositionError(f"shape must be a list of non-negative ints, got {shape!r}",
                                 "for example: max_ranks((3, 4, 5))")
    shape = [int(n) for n in shape]
    return tuple(min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape)))


def unfolding_ranks(tensor: Any, rtol: float | None = None) -> tuple[int, ...]:
    """Numerical ranks of the unfoldings ``A(i_0..i_{k-1}; i_k..i_{d-1})``, ``k = 1..d-1``.

    These are the exact TT-ranks (Oseledets 2011, Theorem 2.1). ``rtol`` defaults to
    ``max(m, n) * machine eps`` (as ``torch.linalg.matrix_rank``).

    >>> import torch
    >>> ghz = torch.zeros(2, 2, 2, dtype=torch.float64)
    >>> ghz[0, 0, 0] = ghz[1, 1, 1] = 2 ** -0.5
    >>> unfolding_ranks(ghz)
    (2, 2)
    """
    t = _as_float_tensor(tensor)
    if t.numel() == 0:
        raise DecompositionError(f"unfolding_ranks needs a non-empty tensor, got shape "
                                 f"{tuple(t.shape)}", "every axis must have at least one entry")
    if rtol is not None and not (_is_number(rtol) and rtol >= 0):
        raise DecompositionError(f"rtol must be a finite number >= 0, got {rtol!r}",
                                 "rtol is relative to the largest singular value, e.g. 1e-10")
    _check_finite(t, "tensor")
    t = t.to(_compute_dtype(t.dtype))
    out = []
    for k in range(1, t.dim()):
        m = math.prod(t.shape[:k])
        mat = t.reshape(m, -1)
        s = svd(mat)[1]
        tol = (float(rtol) if rtol is not None else max(mat.shape) * torch.finfo(t.dtype).eps)
        out.append(int((s > tol * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0)
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# cores


def _check_cores(cores: Sequence[Any], what: str = "cores", complex_ok: bool = True
                 ) -> list[torch.Tensor]:
    """Validate a TT: a non-empty list of tensors ``(r, *modes, r')`` with chained ranks (real,
    or complex unless ``complex_ok`` is false)."""
    if isinstance(cores, (torch.Tensor, str, bytes)) or not isinstance(cores, Sequence) \
            or not cores:
        raise DecompositionError(f"{what} must be a non-empty list of core tensors, got "
                                 f"{type(cores).__name__}",
                                 "make cores with tt_svd(tensor) or tt_matrix(weight, ...)")
    out = [_as_float_tensor(c, f"{what}[{k}]", complex_ok) for k, c in enumerate(cores)]
    for k, c in enumerate(out):
        if c.dim() < 3:
            raise DecompositionError(f"{what}[{k}] has shape {tuple(c.shape)}; a core needs "
                                     "(rank, mode..., rank) axes",
                                     "boundary ranks are explicit size-1 axes: (1, n, r)")
        if c.numel() == 0:
            raise DecompositionError(f"{what}[{k}] has shape {tuple(c.shape)}, with an empty "
                                     "axis; every rank and mode must be at least 1")
        if c.dtype != out[0].dtype or c.device != out[0].device:
            raise DecompositionError(f"{what}[{k}] is {c.dtype} on {c.device} but {what}[0] "
                                     f"is {out[0].dtype} on {out[0].device}")
    if out[0].shape[0] != 1 or out[-1].shape[-1] != 1:
        raise DecompositionError(f"{what} must start and end with rank 1, got "
                                 f"{out[0].shape[0]} and {out[-1].shape[-1]}",
                                 "a ring (periodic TT) is not supported here")
    for k in range(1, len(out)):
        if out[k - 1].shape[-1] != out[k].shape[0]:
            raise DecompositionError(f"{what}[{k - 1}] ends with rank {out[k - 1].shape[-1]} "
                                     f"but {what}[{k}] starts with rank {out[k].shape[0]}")
    return out


def _check_flat_cores(cores: Sequence[Any]) -> list[torch.Tensor]:
    """Validate a TT of 3-axis cores ``(r, n, r')``; tensors given are kept as they are (with
    their autograd history), anything else is converted."""
    checked = _check_cores(cores)
    if any(c.dim() != 3 for c in checked):
        raise DecompositionError(f"cores must have shape (r, n, r'), got "
                                 f"{[tuple(c.shape) for c in checked]}",
                                 "merge the mode axes first: c.reshape(c.shape[0], -1, "
                                 "c.shape[-1])")
    return [c if isinstance(c, torch.Tensor) and (c.is_floating_point() or c.is_complex())
            else checked[k]
            for k, c in enumerate(cores)]


def tt_ranks(cores: Sequence[torch.Tensor]) -> tuple[int, ...]:
    """The inner ranks ``(r_1, ..., r_{d-1})`` of a TT (``()`` for ``d = 1``)."""
    cores = _check_cores(cores)
    return tuple(int(c.shape[-1]) for c in cores[:-1])


def _mode_shapes(cores: Sequence[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(c.shape[1:-1]) for c in cores]


def _flat(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Cores ``(r, *modes, r')`` -> ``(r, prod(modes), r')``."""
    return [c.reshape(c.shape[0], -1, c.shape[-1]) for c in cores]


def _unflat(cores: Sequence[torch.Tensor], modes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    return [c.reshape(c.shape[0], *m, c.shape[-1]) for c, m in zip(cores, modes)]


def tt_to_dense(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Contract a TT into the dense tensor of shape ``(*modes_0, ..., *modes_{d-1})``.

    Exponential in ``d``: for checks and small tensors.

    >>> import torch
    >>> cores = [torch.ones(1, 2, 3), torch.ones(3, 4, 1)]
    >>> tt_to_dense(cores)[0, 0].item()
    3.0
    """
    cores = _check_cores(cores)
    modes = _mode_shapes(cores)
    flat = _flat(cores)
    out = flat[0].reshape(-1, flat[0].shape[-1])             # (n_0, r_1)
    for c in flat[1:]:
        out = (out @ c.reshape(c.shape[0], -1)).reshape(-1, c.shape[-1])
    return out.reshape(*[n for m in modes for n in m])


def tt_values(cores: Sequence[torch.Tensor], indices: Any) -> torch.Tensor:
    """The entries of a TT at ``m`` multi-indices, ``O(m d r^2)``, without the dense tensor.

    ``indices`` is an integer ``(m, d)`` tensor or array (one row per entry); returns the ``m``
    values ``G_0[:, i_0, :] @ ... @ G_{d-1}[:, i_{d-1}, :]`` in the cores' dtype.

    >>> import torch
    >>> a = torch.randn(3, 4, 5, dtype=torch.float64)
    >>> idx = torch.tensor([[0, 1, 2], [2, 3, 4]])
    >>> bool(torch.allclose(tt_values(tt_svd(a), idx), a[idx[:, 0], idx[:, 1], idx[:, 2]]))
    True
    """
    cores = _check_flat_cores(cores)
    shape = [int(c.shape[1]) for c in cores]
    if isinstance(indices, (str, bytes)) or indices is None:
        raise DecompositionError(f"indices must be an integer (m, d) tensor, got "
                                 f"{type(indices).__name__}", "for example torch.zeros(5, "
                                 f"{len(shape)}, dtype=torch.long)")
    try:
        idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, torch.Tensor)
                              else indices)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DecompositionError(f"indices cannot be read as a tensor ({exc})") from None
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool \
            or idx.dim() != 2 or idx.shape[1] != len(shape):
        raise DecompositionError(f"indices must be an integer tensor of shape (m, "
                                 f"{len(shape)}), got {idx.dtype} of shape {tuple(idx.shape)}",
                                 "one row per entry, one column per mode")
    idx = idx.to(device=cores[0].device, dtype=torch.long)
    bounds = torch.tensor(shape, device=idx.device)
    if idx.numel() and bool(((idx < 0) | (idx >= bounds)).any()):
        bad = int(((idx < 0) | (idx >= bounds)).any(1).nonzero()[0])
        raise DecompositionError(f"indices row {bad} = {idx[bad].tolist()} lies outside the "
                                 f"shape {tuple(shape)}", "indices count from 0")
    values = cores[0][0, idx[:, 0], :]                                  # (m, r_1)
    for k in range(1, len(cores)):
        values = torch.einsum("mr,rms->ms", values, cores[k][:, idx[:, k], :])
    return values[:, 0]


# ---------------------------------------------------------------------------------------------
# TT-SVD


def _resolve_ranks(ranks: int | Sequence[int] | None, shape: Sequence[int]) -> list[int] | None:
    if ranks is None:
        return None
    d = len(shape)
    if _is_count(ranks):
        rank_list = [ranks] * (d - 1)
    elif isinstance(ranks, Sequence) and not isinstance(ranks, (str, bytes)):
        rank_list = list(ranks)
    else:
        raise DecompositionError(f"ranks must be an int or a list of ints, got {ranks!r}",
                                 f"for example ranks=4, or ranks={[4] * (d - 1)}")
    if len(rank_list) != d - 1:
        raise DecompositionError(f"ranks needs {d - 1} values (one per bond of a {d}-mode "
                                 f"tensor of shape {tuple(shape)}), got {len(rank_list)}")
    bad = [r for r in rank_list if not _is_count(r) or r < 1]
    if bad:
        raise DecompositionError(f"ranks must be integers >= 1, got {rank_list}")
    bounds = max_ranks(shape)
    problems = []
    for k, r in enumerate(rank_list):
        chain = (rank_list[k - 1] if k else 1) * shape[k]
        if r > bounds[k]:
            problems.append(f"bond {k}: rank {r} > {bounds[k]} (the rank of unfolding "
                            f"{shape[:k + 1]} x {shape[k + 1:]})")
        elif r > chain:
            problems.append(f"bond {k}: rank {r} > ranks[{k - 1}] * n_{k} = {chain}")
    if problems:
        raise DecompositionError("ranks exceed what the unfoldings allow: " + "; ".join(problems),
                                 f"the largest ranks of shape {tuple(shape)} are "
                                 f"{list(bounds)}; pass max_rank={max(rank_list)} to cap the "
                                 "ranks instead")
    return rank_list


def tt_svd(tensor: Any, ranks: int | Sequence[int] | None = None, eps: float | None = None,
           max_rank: int | None = None) -> list[torch.Tensor]:
    """TT decomposition of a dense tensor by sequential SVDs (TT-SVD, Oseledets 2011, Alg. 1).

    Parameters
    ----------
    tensor
        A ``d``-mode real tensor (torch tensor or anything ``torch.as_tensor`` takes), ``d >= 1``.
    ranks
        Exact ranks ``(r_1, ..., r_{d-1})``, or one int for every bond. A rank above the rank
        bound of its unfolding (:func:`max_ranks`) or above ``r_{k-1} * n_k`` is rejected.
        Not combinable with ``eps`` / ``max_rank``.
    eps
        Relative accuracy: each unfolding is truncated at ``eps / sqrt(d-1) * ||A||_F`` so that
        ``||A - tt_to_dense(cores)||_F <= eps * ||A||_F``. ``eps=0`` truncates nothing.
    max_rank
        Cap on every rank (with ``eps``, or alone: cap the numerical ranks).

    Returns
    -------
    list of torch.Tensor
        ``d`` cores of shape ``(r_k, n_k, r_{k+1})``, ``r_0 = r_d = 1``, in the input's dtype
        and device. Cores ``0..d-2`` have orthonormal columns when reshaped to
        ``(r_k n_k, r_{k+1})``.

    Raises
    ------
    DecompositionError
        Bad ranks / eps / max_rank, a 0-d tensor, non-finite entries, or an SVD that fails even
        in float64 on the CPU.

    Examples
    --------
    >>> import torch
    >>> a = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    >>> [tuple(c.shape) for c in tt_svd(a, ranks=[3, 8, 6])]
    [(1, 3, 3), (3, 4, 8), (8, 5, 6), (6, 6, 1)]
    >>> cores = tt_svd(a, eps=0.3)
    >>> err = torch.linalg.norm(tt_to_dense(cores) - a) / torch.linalg.norm(a)
    >>> bool(err <= 0.3)
    True
    """
    t = _as_float_tensor(tensor)
    if t.dim() == 0:
        raise DecompositionError("tt_svd needs a tensor with at least one axis, got a scalar")
    if t.numel() == 0:
        raise DecompositionError(f"tt_svd needs a non-empty tensor, got shape {tuple(t.shape)}",
                                 "every axis must have at least one entry")
    if ranks is not None and (eps is not None or max_rank is not None):
        raise DecompositionError("pass either ranks, or eps and/or max_rank, not both",
                                 "ranks fixes every rank; eps/max_rank choose them")
    _check_eps(eps)
    _check_max_rank(max_rank)
    shape = tuple(int(n) for n in t.shape)
    rank_list = _resolve_ranks(ranks, shape)
    _check_finite(t, "tensor")
    out_dtype = t.dtype
    t = t.to(_compute_dtype(t.dtype))
    d = len(shape)
    if d == 1:
        return [t.reshape(1, shape[0], 1).to(out_dtype).clone()]
    delta = eps / math.sqrt(d - 1) * _fnorm(t) if eps is not None else None
    machine_eps = torch.finfo(t.dtype).eps
    cores: list[torch.Tensor] = []
    rest = t.reshape(1, -1)
    r_prev = 1
    for k in range(d - 1):
        mat = rest.reshape(r_prev * shape[k], -1)
        u, s, vh = svd(mat)
        if rank_list is not None:
            r = rank_list[k]
        else:
            r = _truncation_rank(s, delta=delta, cap=max_rank,
                                 rtol=max(mat.shape) * machine_eps)
        cores.append(u[:, :r].reshape(r_prev, shape[k], r))
        rest = s[:r, None] * vh[:r]
        r_prev = r
    cores.append(rest.reshape(r_prev, shape[-1], 1))
    return [c.to(out_dtype).contiguous() for c in cores]


def qtt(values: Any, ranks: int | Sequence[int] | None = None, eps: float | None = None,
        max_rank: int | None = None, base: int = 2) -> list[torch.Tensor]:
    """Quantized TT: reshape ``base**d`` values into ``base x ... x base`` and apply :func:`tt_svd`.

    For samples of a function on a uniform grid of ``2**d`` points this is the QTT format (the
    first mode is the most significant bit of the grid index); for a state vector of ``d``
    qubits it is its MPS. ``exp`` and ``sin`` have QTT-ranks 1 and 2.

    >>> import math, torch
    >>> x = torch.linspace(0, 1, 2 ** 10, dtype=torch.float64)
    >>> tt_ranks(qtt(torch.sin(7 * x), eps=1e-10))
    (2, 2, 2, 2, 2, 2, 2, 2, 2)
    """
    v = _as_float_tensor(values, "values").reshape(-1)
    if not _is_count(base) or base < 2:
        raise DecompositionError(f"base must be an integer >= 2, got {base!r}",
                                 "base 2 splits the values into binary modes")
    d = round(math.log(v.numel(), base)) if v.numel() > 0 else 0
    if d < 1 or base**d != v.numel():
        raise DecompositionError(f"qtt needs base**d values (base {base}), got {v.numel()}",
                                 f"sample the function on {base}**d points")
    return tt_svd(v.reshape([base] * d), ranks=ranks, eps=eps, max_rank=max_rank)


# ---------------------------------------------------------------------------------------------
# rounding, norms, arithmetic


def right_orthogonalize(cores: Sequence[torch.Tensor], *, kernels: Kernels = GUARDED
                        ) -> list[torch.Tensor]:
    """The same TT with cores ``1..d-1`` right-orthonormal (rows of ``(r, n r')``), the weight
    moved into core 0 (a QR sweep from the right; ranks are kept).

    Examples
    --------
    >>> a = right_orthogonalize(tt_svd(torch.randn(3, 4, 5, dtype=torch.float64)))
    >>> m = a[2].reshape(a[2].shape[0], -1)
    >>> bool(torch.allclose(m @ m.T, torch.eye(m.shape[0], dtype=torch.float64)))
    True
    """
    flat = _check_flat_cores(cores)
    for k in range(len(flat) - 1, 0, -1):
        c = flat[k]
        q, r = kernels.qr(c.reshape(c.shape[0], -1).T)       # c^T = q r  ->  c = r^T q^T
        flat[k] = q.T.reshape(q.shape[1], c.shape[1], c.shape[2])
        prev = flat[k - 1]
        flat[k - 1] = (prev.reshape(-1, prev.shape[-1]) @ r.T).reshape(
            prev.shape[0], prev.shape[1], r.shape[0])
    return flat


def left_orthogonalize(cores: Sequence[torch.Tensor], *, kernels: Kernels = GUARDED
                       ) -> list[torch.Tensor]:
    """The same TT with cores ``0..d-2`` left-orthonormal (columns of ``(r n, r')``), the weight
    (the norm) moved into the last core (a QR sweep from the left; ranks are kept: Householder
    QR gives orthonormal factors even for rank-deficient cores).

    Examples
    --------
    >>> a = left_orthogonalize(tt_svd(torch.randn(3, 4, 5, dtype=torch.float64)))
    >>> m = a[0].reshape(-1, a[0].shape[-1])
    >>> bool(torch.allclose(m.T @ m, torch.eye(m.shape[1], dtype=torch.float64)))
    True
    """
    flat = _check_flat_cores(cores)
    for k in range(len(flat) - 1):
        c = flat[k]
        q, r = kernels.qr(c.reshape(-1, c.shape[-1]))
        flat[k] = q.reshape(c.shape[0], c.shape[1], q.shape[1])
        nxt = flat[k + 1]
        flat[k + 1] = (r @ nxt.reshape(nxt.shape[0], -1)).reshape(r.shape[0], *nxt.shape[1:])
    return flat


def tt_round(cores: Sequence[torch.Tensor], eps: float | None = None,
             max_rank: int | None = None) -> list[torch.Tensor]:
    """Recompress a TT to lower ranks (TT-rounding, Oseledets 2011, Alg. 2), ``O(d n r^3)``.

    Right-to-left QR orthogonalisation, then a left-to-right sweep of truncated SVDs, each at
    ``delta = eps / sqrt(d-1) * ||A||_F``, so ``||A - round(A)||_F <= eps * ||A||_F``.
    ``max_rank`` caps every rank. Without either, redundant ranks are removed (numerical rank).
    TT-matrix cores (several mode axes) are accepted and keep their mode axes.

    >>> import torch
    >>> a = tt_svd(torch.randn(4, 5, 6, dtype=torch.float64))
    >>> tt_ranks(tt_round(tt_add(a, a)))                       # ranks 2r -> r
    (4, 6)
    """
    cores = _check_cores(cores)
    _check_eps(eps)
    _check_max_rank(max_rank)
    for k, c in enumerate(cores):
        _check_finite(c, f"cores[{k}]")
    modes = _mode_shapes(cores)
    out_dtype = cores[0].dtype
    flat = [c.to(_compute_dtype(out_dtype)) for c in _flat(cores)]
    d = len(flat)
    if d == 1:
        return [c.to(out_dtype).clone() for c in cores]
    flat = right_orthogonalize(flat)
    norm = _fnorm(flat[0])
    delta = eps / math.sqrt(d - 1) * norm if eps is not None else None
    machine_eps = torch.finfo(flat[0].dtype).eps
    for k in range(d - 1):
        c = flat[k]
        mat = c.reshape(-1, c.shape[-1])
        u, s, vh = svd(mat)
        r = _truncation_rank(s, delta=delta, cap=max_rank, rtol=max(mat.shape) * machine_eps)
        flat[k] = u[:, :r].reshape(c.shape[0], c.shape[1], r)
        nxt = flat[k + 1]
        flat[k + 1] = ((s[:r, None] * vh[:r]) @ nxt.reshape(nxt.shape[0], -1)).reshape(
            r, nxt.shape[1], nxt.shape[2])
    return [c.to(out_dtype).contiguous() for c in _unflat(flat, modes)]


def tt_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], *, conj: bool = True
           ) -> torch.Tensor:
    """Inner product ``<A, B> = sum conj(A) * B`` of two TTs of the same mode shapes (a 0-d
    tensor): for complex TTs the Hermitian product, conjugate-linear in ``A`` (``<psi|phi>``);
    ``conj=False`` gives the bilinear ``sum A * B``. For real TTs both are the same.

    >>> import torch
    >>> a = tt_svd(torch.randn(2, 3, 4, dtype=torch.complex128))
    >>> d = tt_to_dense(a)
    >>> bool(torch.isclose(tt_dot(a, a), (d.conj() * d).sum()))
    True
    >>> bool(torch.isclose(tt_dot(a, a, conj=False), (d * d).sum()))
    True
    """
    a, b = _check_pair(a, b)
    env = torch.ones(1, 1, dtype=a[0].dtype, device=a[0].device)
    for x, y in zip(_flat(a), _flat(b)):
        env = torch.einsum("ab,aic,bid->cd", env, x.conj() if conj else x, y)
    return env.reshape(())


def tt_norm(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Frobenius norm of a TT, by left-orthogonalisation (no cancellation), a 0-d tensor (real:
    of a complex TT, ``sqrt(<A, A>)`` with conjugation, in the real dtype of its precision)."""
    cores = _check_cores(cores)
    flat = left_orthogonalize([c.to(_compute_dtype(c.dtype)) for c in _flat(cores)])
    return torch.linalg.vector_norm(flat[-1]).to(_real(cores[0].dtype))


def _check_pair(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    a, b = _check_cores(a, "a"), _check_cores(b, "b")
    if _mode_shapes(a) != _mode_shapes(b):
        raise DecompositionError(f"the TTs have different mode shapes: {_mode_shapes(a)} and "
                                 f"{_mode_shapes(b)}")
    if a[0].dtype != b[0].dtype or a[0].device != b[0].device:
        raise DecompositionError(f"the TTs differ in dtype/device: {a[0].dtype} on "
                                 f"{a[0].device} and {b[0].dtype} on {b[0].device}",
                                 "convert one with [c.to(other[0]) for c in cores]")
    return a, b


def tt_add(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The TT of ``A + B``: block cores, ranks add (``r_k(A) + r_k(B)``); round it afterwards.

    >>> import torch
    >>> a = tt_svd(torch.randn(2, 3, 4))
    >>> tt_ranks(tt_add(a, a))
    (4, 8)
    """
    a, b = _check_pair(a, b)
    modes = _mode_shapes(a)
    fa, fb = _flat(a), _flat(b)
    d = len(fa)
    if d == 1:
        return [a[0] + b[0]]
    out = []
    for k, (x, y) in enumerate(zip(fa, fb)):
        if k == 0:
            out.append(torch.cat([x, y], dim=2))
        elif k == d - 1:
            out.append(torch.cat([x, y], dim=0))
        else:
            c = x.new_zeros(x.shape[0] + y.shape[0], x.shape[1], x.shape[2] + y.shape[2])
            c[:x.shape[0], :, :x.shape[2]] = x
            c[x.shape[0]:, :, x.shape[2]:] = y
            out.append(c)
    return _unflat(out, modes)


def tt_hadamard(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The TT of the elementwise product ``A * B``: Kronecker cores, ranks multiply.

    >>> import torch
    >>> a = tt_svd(torch.randn(2, 3, 4))
    >>> tt_ranks(tt_hadamard(a, a))
    (4, 16)
    """
    a, b = _check_pair(a, b)
    modes = _mode_shapes(a)
    out = [torch.einsum("aib,cid->acibd", x, y).reshape(x.shape[0] * y.shape[0], x.shape[1],
                                                        x.shape[2] * y.shape[2])
           for x, y in zip(_flat(a), _flat(b))]
    return _unflat(out, modes)


# ---------------------------------------------------------------------------------------------
# TT-matrices (MPO) and the tt_linear template


def _shape_list(shape: Sequence[int], what: str) -> list[int]:
    try:
        out = [int(n) for n in shape]
    except (TypeError, ValueError):
        raise DecompositionError(f"{what} must be a list of positive ints, got {shape!r}") \
            from None
    if not out or any(n < 1 for n in out):
        raise DecompositionError(f"{what} must be a non-empty list of positive ints, got {out}")
    return out


def tt_matrix(weight: Any, in_shape: Sequence[int], out_shape: Sequence[int],
              ranks: int | Sequence[int] | None = None, eps: float | None = None,
              max_rank: int | None = None) -> list[torch.Tensor]:
    """TT-matrix (MPO) cores of a dense weight ``W`` of shape ``(prod(out_shape), prod(in_shape))``.

    ``W[(o_0..o_{d-1}), (i_0..i_{d-1})] = G_0[:, i_0, o_0, :] @ ... @ G_{d-1}[:, i_{d-1},
    o_{d-1}, :]`` (row-major multi-indices, as ``W.reshape(*out_shape, *in_shape)``). Computed by
    :func:`tt_svd` of ``W`` with the modes paired as ``(i_k, o_k)``; ``ranks``, ``eps`` and
    ``max_rank`` mean the same as there (the rank bounds are those of the paired modes
    ``n_in_k * n_out_k``). ``eps`` bounds ``||W - W_tt||_F <= eps ||W||_F``.

    Returns cores of shape ``(r_k, n_in_k, n_out_k, r_{k+1})``; load them into a ``tt_linear``
    network with :func:`tt_linear_state_dict` (spec text: :func:`tt_linear_spec`).

    >>> import torch
    >>> w = torch.randn(12, 30, dtype=torch.float64)          # 30 -> 12
    >>> cores = tt_matrix(w, in_shape=[5, 6], out_shape=[3, 4])
    >>> [tuple(c.shape) for c in cores]
    [(1, 5, 3, 15), (15, 6, 4, 1)]
    >>> bool(torch.allclose(tt_matrix_to_dense(cores), w))
    True
    """
    w = _as_float_tensor(weight, "weight")
    ins, outs = _shape_list(in_shape, "in_shape"), _shape_list(out_shape, "out_shape")
    if len(ins) != len(outs):
        raise DecompositionError(f"in_shape has {len(ins)} factors but out_shape has "
                                 f"{len(outs)}", "factor both sizes into the same number of "
                                 "factors (use 1 for padding)")
    if tuple(w.shape) != (math.prod(outs), math.prod(ins)):
        raise DecompositionError(f"weight has shape {tuple(w.shape)} but in_shape {ins} and "
                                 f"out_shape {outs} need ({math.prod(outs)}, {math.prod(ins)})",
                                 "the weight is (out_features, in_features), as nn.Linear's")
    d = len(ins)
    perm = [p for k in range(d) for p in (d + k, k)]          # (i_0, o_0, i_1, o_1, ...)
    paired = w.reshape(*outs, *ins).permute(perm).reshape([i * o for i, o in zip(ins, outs)])
    cores = tt_svd(paired, ranks=ranks, eps=eps, max_rank=max_rank)
    return [c.reshape(c.shape[0], i, o, c.shape[-1]) for c, i, o in zip(cores, ins, outs)]


def _check_matrix_cores(cores: Sequence[Any]) -> list[torch.Tensor]:
    cores = _check_cores(cores)
    if any(c.dim() != 4 for c in cores):
        raise DecompositionError("TT-matrix cores must have shape (r, n_in, n_out, r'), got "
                                 f"{[tuple(c.shape) for c in cores]}",
                                 "make them with tt_matrix(weight, in_shape, out_shape, ...)")
    return cores


def tt_matrix_to_dense(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The dense ``W`` of shape ``(prod(out), prod(in))`` of TT-matrix cores (see tt_matrix)."""
    cores = _check_matrix_cores(cores)
    d = len(cores)
    ins = [c.shape[1] for c in cores]
    outs = [c.shape[2] for c in cores]
    full = tt_to_dense(cores)                                  # (i_0, o_0, i_1, o_1, ...)
    perm = [2 * k + 1 for k in range(d)] + [2 * k for k in range(d)]
    return full.permute(perm).reshape(math.prod(outs), math.prod(ins))


def tt_linear_state_dict(cores: Sequence[torch.Tensor], bias: Any = None
                         ) -> dict[str, torch.Tensor]:
    """A ``state_dict`` for a compiled ``tt_linear`` network of the same shapes and ranks.

    Squeezes the boundary ranks (core 0 has legs ``(i, o, r)``, the last ``(l, i, o)``, one
    core alone ``(i, o)``) and names them ``tensors.G{k}``. ``bias`` (``prod(out)`` values) is
    reshaped to ``out_shape`` and stored as ``bias``; leave it ``None`` for ``bias: false``.

    >>> import torch, tngraph
    >>> w, b = torch.randn(12, 30, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    >>> cores = tt_matrix(w, [5, 6], [3, 4])
    >>> module = tngraph.compile(tt_linear_spec(cores), dtype="float64", cache=False)
    >>> _ = module.load_state_dict(tt_linear_state_dict(cores, b))
    >>> x = torch.randn(7, 30, dtype=torch.float64)
    >>> bool(torch.allclose(module(x), x @ w.T + b))
    True
    """
    cores = _check_matrix_cores(cores)
    d = len(cores)
    state: dict[str, torch.Tensor] = {}
    for k, c in enumerate(cores):
        g = c
        if k == d - 1:
            g = g[..., 0]
        if k == 0:
            g = g[0]
        state[f"tensors.G{k}"] = g.detach().clone().contiguous()
    if bias is not None:
        b = _as_float_tensor(bias, "bias")
        outs = [c.shape[2] for c in cores]
        if b.numel() != math.prod(outs):
            raise DecompositionError(f"bias has {b.numel()} values but out_shape {outs} needs "
                                     f"{math.prod(outs)}")
        state["bias"] = b.reshape(outs).clone().to(cores[0].device)
    return state


def tt_linear_spec(cores: Sequence[torch.Tensor], *, bias: bool = True,
                   name: str = "tt_linear", input: str = "x",  # noqa: A002
                   extra: Mapping[str, Any] | None = None) -> str:
    """YAML text of a ``tt_linear`` spec whose shapes and ranks match TT-matrix ``cores``.

    ``extra`` adds top-level keys (e.g. ``{"plan": {"batch_size": 64}}``).

    >>> import torch
    >>> print(tt_linear_spec(tt_matrix(torch.randn(12, 30), [5, 6], [3, 4], ranks=[8])))
    tngraph: 1
    name: tt_linear
    network:
      template: tt_linear
      in_shape: [5, 6]
      out_shape: [3, 4]
      ranks: [8]
      bias: true
      input: x
    <BLANKLINE>
    """
    import yaml

    cores = _check_matrix_cores(cores)
    if not isinstance(name, str) or not name.strip():
        raise DecompositionError(f"name must be a non-empty string, got {name!r}",
                                 "for example name='tt_linear'")
    if not isinstance(input, str) or not input.isidentifier():
        raise DecompositionError(f"input must be an identifier (the data port's name), got "
                                 f"{input!r}", "for example input='x'")
    if not isinstance(bias, (bool, np.bool_)):
        raise DecompositionError(f"bias must be True or False, got {bias!r}")
    if extra is not None and not isinstance(extra, Mapping):
        raise DecompositionError(f"extra must be a mapping of top-level keys, got "
                                 f"{type(extra).__name__}",
                                 "for example extra={'plan': {'batch_size': 64}}")
    doc: dict[str, Any] = {"tngraph": 1, "name": name, "network": {
        "template": "tt_linear",
        "in_shape": [int(c.shape[1]) for c in cores],
        "out_shape": [int(c.shape[2]) for c in cores],
        "ranks": list(tt_ranks(cores)),
        "bias": bool(bias),
        "input": input,
    }}
    doc.update(extra or {})
    try:
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    except yaml.representer.RepresenterError as exc:
        raise DecompositionError(f"extra holds a value YAML cannot write: {exc.args[-1]!r}",
                                 "use plain numbers, strings, booleans, lists and "
                                 "mappings") from None


def mps_state_dict(cores: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of the network of :func:`mps_spec` (nodes ``A0 ... A{d-1}``, legs
    ``l, p, r``) from MPS cores ``(r, n, r')`` (the boundary axes of size 1 dropped), for
    ``module.load_state_dict(...)``: ``qtt()`` or ``tt_svd()`` cores load as they are.

    >>> import tngraph, torch
    >>> psi = torch.randn(2 ** 5, dtype=torch.float64)
    >>> cores = qtt(psi)
    >>> module = tngraph.compile(mps_spec(cores), dtype="float64", cache=False)
    >>> _ = module.load_state_dict(mps_state_dict(cores))
    >>> bool(torch.allclose(module().reshape(-1), psi))
    True
    """
    cores = _check_flat_cores(cores)
    state: dict[str, torch.Tensor] = {}
    for k, c in enumerate(cores):
        g = c[..., 0] if k == len(cores) - 1 else c
        state[f"tensors.A{k}"] = (g[0] if k == 0 else g).detach().clone().contiguous()
    return state


def mps_spec(cores: Sequence[torch.Tensor], *, name: str = "mps", input: str | None = None,
             feature_map: str | Mapping[str, Any] | None = None,
             extra: Mapping[str, Any] | None = None) -> str:
    """YAML text of an MPS spec whose shapes and ranks match MPS cores ``(r, n, r')``: the
    ``mps`` template where every rank and physical dimension is the same, else the same nodes
    (``A{k}`` with legs ``l, p, r``) in raw form with each bond's own rank. Load the values
    with :func:`mps_state_dict`.

    ``input`` (and ``feature_map``) feed every site from one stacked data port, as the ``mps``
    template does; without it the physical legs are the outputs. Complex cores set
    ``plan.dtype`` to their dtype. ``extra`` adds top-level keys.

    >>> import torch
    >>> print(mps_spec(qtt(torch.randn(8, dtype=torch.float64), max_rank=2)))
    tngraph: 1
    name: mps
    network: {template: mps, sites: 3, phys_dim: 2, bond_dim: 2}
    <BLANKLINE>
    """
    import yaml

    cores = _check_flat_cores(cores)
    d = len(cores)
    if not isinstance(name, str) or not name.strip():
        raise DecompositionError(f"name must be a non-empty string, got {name!r}",
                                 "for example name='mps'")
    if input is not None and (not isinstance(input, str) or not input.isidentifier()):
        raise DecompositionError(f"input must be an identifier (the data port's name), got "
                                 f"{input!r}", "for example input='x'")
    if feature_map is not None and input is None:
        raise DecompositionError("feature_map needs input (the data port it applies to)",
                                 "pass input='x' too")
    if extra is not None and not isinstance(extra, Mapping):
        raise DecompositionError(f"extra must be a mapping of top-level keys, got "
                                 f"{type(extra).__name__}",
                                 "for example extra={'plan': {'batch_size': 64}}")
    phys = [int(c.shape[1]) for c in cores]
    ranks = list(tt_ranks(cores))
    if input is not None and len(set(phys)) > 1:
        raise DecompositionError(f"one stacked data port feeds sites of one dimension, but the "
                                 f"cores' physical dimensions are {phys}",
                                 "leave input out: the physical legs are then the outputs")
    network: dict[str, Any]
    if len(set(phys)) == 1 and len(set(ranks)) <= 1:
        network = {"template": "mps", "sites": d, "phys_dim": phys[0],
                   "bond_dim": ranks[0] if ranks else 1}
        if input is not None:
            network["input"] = input
        if feature_map is not None:
            network["feature_map"] = feature_map
    else:
        nodes: dict[str, Any] = {}
        edges: list[list[str]] = []
        for k in range(d):
            legs = {**({"l": ranks[k - 1]} if k else {}), "p": phys[k],
                    **({"r": ranks[k]} if k < d - 1 else {})}
            nodes[f"A{k}"] = {"legs": legs}
            if k:
                edges.append([f"A{k - 1}.r", f"A{k}.l"])
        network = {"nodes": nodes}
        if input is not None:
            port: dict[str, Any] = {"legs": {"p": phys[0]}, "stack": d}
            if feature_map is not None:
                port["feature_map"] = feature_map
            network["inputs"] = {input: port}
            edges += [[f"{input}[{k}].p", f"A{k}.p"] for k in range(d)]
        network["edges"] = edges
        network["outputs"] = [] if input is not None else [f"A{k}.p" for k in range(d)]
    doc: dict[str, Any] = {"tngraph": 1, "name": name, "network": network}
    if cores[0].is_complex():
        doc["plan"] = {"dtype": str(cores[0].dtype).removeprefix("torch.")}
    doc.update(extra or {})
    try:
        return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    except yaml.representer.RepresenterError as exc:
        raise DecompositionError(f"extra holds a value YAML cannot write: {exc.args[-1]!r}",
                                 "use plain numbers, strings, booleans, lists and "
                                 "mappings") from None


def _chain_cores(cores: Sequence[torch.Tensor] | TNModule) -> Sequence[torch.Tensor]:
    """``cores`` as they are, or a compiled chain module's (:meth:`TNModule.cores`, detached)."""
    if isinstance(cores, TNModule):
        return [c.detach() for c in cores.cores()]
    return cores


# ---------------------------------------------------------------------------------------------
# entanglement


def bond_spectra(cores: Sequence[torch.Tensor] | TNModule) -> list[torch.Tensor]:
    """Singular values (descending) of the unfolding at each bond of a TT / MPS, given as
    cores or as a compiled chain module (an ``mps``, a ``tt_linear``: its
    :meth:`~tngraph.compiler.TNModule.cores`; physical legs of a site grouped as its mode).

    Entry ``k`` is the Schmidt spectrum between sites ``0..k`` and ``k+1..d-1``, computed in
    canonical form (left QR sweep, then right-to-left SVDs), ``O(d n r^3)``; it equals the
    singular values of ``tt_to_dense(cores).reshape(prod(n[:k+1]), -1)`` (zeros dropped beyond
    the bond dimension). Not normalised.

    >>> import torch
    >>> ghz = torch.zeros(8, dtype=torch.float64); ghz[0] = ghz[-1] = 2 ** -0.5
    >>> [s.tolist() for s in bond_spectra(qtt(ghz))]      # doctest: +ELLIPSIS
    [[0.707..., 0.707...], [0.707..., 0.707...]]
    """
    cores = _check_cores(_chain_cores(cores))
    for k, c in enumerate(cores):
        _check_finite(c, f"cores[{k}]")
    out_dtype = cores[0].dtype
    flat = left_orthogonalize([c.to(_compute_dtype(out_dtype)) for c in _flat(cores)])
    spectra: list[torch.Tensor] = [flat[0].new_zeros(0)] * (len(flat) - 1)
    for k in range(len(flat) - 1, 0, -1):
        c = flat[k]
        u, s, vh = svd(c.reshape(c.shape[0], -1))
        spectra[k - 1] = s.to(_real(out_dtype))
        flat[k] = vh.reshape(vh.shape[0], c.shape[1], c.shape[2])
        prev = flat[k - 1]
        flat[k - 1] = (prev.reshape(-1, prev.shape[-1]) @ (u * s)).reshape(
            prev.shape[0], prev.shape[1], s.shape[0])
    return spectra


def entanglement_entropy(cores: Sequence[torch.Tensor] | TNModule) -> torch.Tensor:
    """Von Neumann entropy (nats) at each bond: ``S_k = -sum p log p``, ``p = s^2 / sum s^2``,
    of TT / MPS cores or of a compiled chain module (as :func:`bond_spectra`).

    Returns a tensor of ``d - 1`` values: 0 for a product state, ``ln 2`` at every bond of a
    GHZ state, at most ``ln(bond dimension)``. The state need not be normalised; a zero state
    raises :class:`DecompositionError`.

    >>> import torch
    >>> ghz = torch.zeros(2 ** 4, dtype=torch.float64); ghz[0] = ghz[-1] = 1.0
    >>> entanglement_entropy(qtt(ghz))                           # ln 2 = 0.6931
    tensor([0.6931, 0.6931, 0.6931], dtype=torch.float64)
    """
    cores = _chain_cores(cores)
    spectra = bond_spectra(cores)
    values = []
    for k, s in enumerate(spectra):
        s2 = s.to(torch.float64) ** 2
        total = float(s2.sum())
        if not total > 0:
            raise DecompositionError(f"the state has zero norm (bond {k}); its entanglement "
                                     "entropy is undefined")
        p = s2 / total
        values.append((-torch.xlogy(p, p).sum()).clamp_min(0.0) + 0.0)  # no -0.0
    if not values:                                             # d = 1: no bonds
        first = _as_float_tensor(cores[0])
        return torch.zeros(0, dtype=_real(first.dtype), device=first.device)
    return torch.stack(values).to(spectra[0].dtype)
