"""Maximum-volume submatrices: the row choice behind cross approximation.

A rank-``r`` matrix is recovered from ``r`` of its columns ``C``, ``r`` of its rows ``R`` and
their intersection ``Â``: ``A = C Â^{-1} R`` (skeleton decomposition). Among all choices, the
rows and columns whose intersection has (nearly) maximal ``|det Â|`` give a quasi-optimal
approximation even when ``A`` is only approximately of rank ``r``: ``||A - C Â^{-1} R||_C <=
(r + 1) sigma_{r+1}`` (Goreinov, Tyrtyshnikov 2001). :func:`tt_cross` chooses its samples this
way.

* :func:`maxvol` -- ``r`` rows of a tall ``(n, r)`` matrix whose square submatrix is dominant:
  every coefficient of ``A Â^{-1}`` is at most ``tol`` in modulus (Goreinov, Oseledets,
  Savostyanov, Tyrtyshnikov, Zamarashkin 2010). Start rows from LU with partial pivoting, then
  row swaps with rank-1 updates, ``O(n r)`` each.
* :func:`rect_maxvol` -- ``k >= r`` rows (a rectangular submatrix): the rows of ``maxvol`` plus,
  one at a time, the row whose coefficients ``A pinv(Â)`` have the largest norm (Mikhalev,
  Oseledets 2018). The extra rows are how :func:`tt_cross` grows its ranks.

Examples
--------
>>> import torch
>>> a = torch.tensor([[1.0, 0.0], [0.0, 0.5], [3.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
>>> rows, coefficients = maxvol(a)
>>> sorted(rows.tolist())
[2, 3]
>>> bool(torch.allclose(coefficients @ a[rows], a))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tngraph.decompose.tt import _is_count, _is_number
from tngraph.linalg import DecompositionError

__all__ = ["maxvol", "rect_maxvol"]


def _tall_matrix(matrix: Any, what: str = "matrix") -> torch.Tensor:
    """``matrix`` as a finite float64 ``(n, r)`` tensor with ``n >= r >= 1`` (a copy)."""
    if isinstance(matrix, (str, bytes)) or matrix is None:
        raise DecompositionError(f"{what} must be a 2-d tensor, got {type(matrix).__name__}",
                                 "pass a torch tensor or a NumPy array of shape (n, r)")
    try:
        t = matrix if isinstance(matrix, torch.Tensor) else torch.as_tensor(np.asarray(matrix))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DecompositionError(f"{what} cannot be read as a tensor ({exc})",
                                 "pass a torch tensor or a NumPy array of shape (n, r)") from None
    if t.is_complex() or t.dtype == torch.bool:
        raise DecompositionError(f"{what} must be real, got {t.dtype}",
                                 "pass the real matrix (maxvol of complex matrices is not "
                                 "supported)")
    if t.dim() != 2 or t.shape[1] < 1 or t.shape[0] < t.shape[1]:
        raise DecompositionError(f"{what} has shape {tuple(t.shape)}; maxvol needs a tall "
                                 "matrix (n, r) with n >= r >= 1",
                                 "for the columns of a wide matrix, pass its transpose")
    t = t.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise DecompositionError(f"{what} has non-finite entries",
                                 "clean the matrix (NaN / inf) before choosing rows")
    return t.clone()


def _check_tol(tol: Any, what: str, least: float) -> float:
    if not _is_number(tol) or tol < least:
        raise DecompositionError(f"{what} must be a finite number >= {least}, got {tol!r}",
                                 f"for example {what}=1.05")
    return float(tol)


def _check_iters(max_iters: Any) -> int:
    if not _is_count(max_iters) or max_iters < 0:
        raise DecompositionError(f"max_iters must be an integer >= 0, got {max_iters!r}",
                                 "for example max_iters=100")
    return int(max_iters)


def _lu_rows(a: torch.Tensor) -> torch.Tensor:
    """The ``r`` pivot rows of LU with partial pivoting of a tall ``(n, r)`` matrix."""
    _, pivots, _ = torch.linalg.lu_factor_ex(a)         # a zero pivot is checked below
    order = np.arange(a.shape[0])
    for k, p in enumerate(pivots.tolist()):         # LAPACK's sequential swaps, 1-based
        order[k], order[p - 1] = order[p - 1], order[k]
    return torch.as_tensor(order[: a.shape[1]].copy())


def _dominant_rows(a: torch.Tensor, tol: float, max_iters: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """maxvol on a checked float64 matrix: ``(rows, a @ inv(a[rows]))``."""
    rows = _lu_rows(a)
    square = a[rows]
    condition = float(torch.linalg.cond(square))
    if not condition < 1e14:                                  # also NaN / inf
        raise DecompositionError(f"the matrix of shape {tuple(a.shape)} has rank < "
                                 f"{a.shape[1]}: no {a.shape[1]} rows span a nonsingular "
                                 "submatrix",
                                 "orthonormalise its columns first (q, _ = torch.linalg.qr(a); "
                                 "maxvol(q)) or drop dependent columns")
    coefficients = torch.linalg.solve(square.T, a.T).T       # a @ inv(a[rows])
    for _ in range(max_iters):
        flat = int(torch.argmax(coefficients.abs()))
        i, j = divmod(flat, a.shape[1])
        pivot = float(coefficients[i, j])
        if abs(pivot) <= tol:
            break
        # swap row j of the submatrix for row i: a rank-1 update of a @ inv(a[rows])
        column = coefficients[:, j].clone()
        row = coefficients[i].clone()
        row[j] -= 1.0
        coefficients -= torch.outer(column, row / pivot)
        rows[j] = i
    return rows, coefficients


def maxvol(matrix: Any, *, tol: float = 1.05, max_iters: int = 100
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``r`` rows of a tall ``(n, r)`` matrix whose square submatrix has (nearly) maximal
    volume.

    Parameters
    ----------
    matrix
        A real ``(n, r)`` matrix of full column rank, ``n >= r`` (orthonormalise it first if its
        columns may be dependent).
    tol
        Stop when every coefficient of ``A @ inv(A[rows])`` is at most ``tol`` in modulus
        (``>= 1``; 1.05 is the usual choice, 1.0 iterates to a local maximum).
    max_iters
        At most this many row swaps.

    Returns
    -------
    rows : torch.LongTensor
        ``r`` distinct row indices.
    coefficients : torch.Tensor
        ``A @ inv(A[rows])`` in float64, shape ``(n, r)``: the identity on ``rows`` and
        entries of modulus ``<= tol`` (unless ``max_iters`` ran out) elsewhere.

    Raises
    ------
    DecompositionError
        Not a tall real finite matrix, a bad ``tol`` / ``max_iters``, or a matrix whose columns
        are dependent.

    Examples
    --------
    >>> import torch
    >>> q, _ = torch.linalg.qr(torch.randn(50, 3, dtype=torch.float64))
    >>> rows, c = maxvol(q)
    >>> bool(c.abs().max() <= 1.05) and bool(torch.allclose(c[rows], torch.eye(3).double()))
    True
    """
    a = _tall_matrix(matrix)
    return _dominant_rows(a, _check_tol(tol, "tol", 1.0), _check_iters(max_iters))


def rect_maxvol(matrix: Any, *, tol: float = 1.1, min_rows: int | None = None,
                max_rows: int | None = None, max_iters: int = 100
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``k >= r`` rows of a tall ``(n, r)`` matrix: :func:`maxvol`'s rows plus, one at a time,
    the row whose coefficients have the largest norm.

    The coefficients ``C = A @ pinv(A[rows])`` give every row of ``A`` as a least-squares
    combination of the chosen rows; rows are added until every row of ``C`` has norm at most
    ``tol`` (a rank-1 update of ``C`` per row), and at least ``min_rows``, at most
    ``max_rows`` of them.

    Parameters
    ----------
    matrix
        A real ``(n, r)`` matrix of full column rank, ``n >= r``.
    tol
        Row-norm bound of ``C`` (``>= 1``).
    min_rows, max_rows
        Bounds on ``k`` (defaults ``r`` and ``n``); ``r <= min_rows <= max_rows <= n``.
    max_iters
        Row swaps of the first, square step (:func:`maxvol`, its ``tol`` 1.05).

    Returns
    -------
    rows : torch.LongTensor
        ``k`` distinct row indices, the square ones first.
    coefficients : torch.Tensor
        ``A @ pinv(A[rows])`` in float64, shape ``(n, k)``.

    Examples
    --------
    >>> import torch
    >>> q, _ = torch.linalg.qr(torch.randn(40, 3, dtype=torch.float64))
    >>> rows, c = rect_maxvol(q, min_rows=5, max_rows=5)
    >>> len(set(rows.tolist())), tuple(c.shape)
    (5, (40, 5))
    >>> bool(torch.allclose(c @ q[rows], q))
    True
    """
    a = _tall_matrix(matrix)
    n, r = a.shape
    tol = _check_tol(tol, "tol", 1.0)
    low = r if min_rows is None else min_rows
    high = n if max_rows is None else max_rows
    for name, value in (("min_rows", low), ("max_rows", high)):
        if not _is_count(value) or not r <= value <= n:
            raise DecompositionError(f"{name} must be an integer between r = {r} and n = {n} "
                                     f"(the matrix has shape {(n, r)}), got {value!r}")
    if low > high:
        raise DecompositionError(f"min_rows = {low} exceeds max_rows = {high}",
                                 "min_rows <= max_rows")
    return _add_rows(*_dominant_rows(a, 1.05, _check_iters(max_iters)), tol=tol, low=int(low),
                     high=int(high))


def _add_rows(rows: torch.Tensor, coefficients: torch.Tensor, *, tol: float, low: int,
              high: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grow square maxvol ``rows`` to between ``low`` and ``high`` rows (see rect_maxvol)."""
    n = coefficients.shape[0]
    chosen = rows.tolist()
    norms = (coefficients * coefficients).sum(1)
    norms[rows] = -1.0
    while len(chosen) < min(high, n):
        i = int(torch.argmax(norms))
        if len(chosen) >= low and float(norms[i]) <= tol * tol:
            break
        row = coefficients[i].clone()
        scale = 1.0 + float(row @ row)
        along = coefficients @ row                               # C c_i^T
        coefficients = torch.cat([coefficients - torch.outer(along, row / scale),
                                  (along / scale)[:, None]], 1)
        norms -= along * along / scale
        chosen.append(i)
        norms[chosen] = -1.0
    return torch.as_tensor(chosen), coefficients
