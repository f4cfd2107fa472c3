"""Classic operators as TT-matrices (MPOs), in the layout of :func:`~tngraph.decompose.tt_matrix`:
cores ``(r, n_in, n_out, r')`` with boundary ranks 1, for the solvers (``tt_eigh``,
``tt_solve``) and their tests and benchmarks.

Examples
--------
>>> from tngraph.decompose import tt_matrix_to_dense
>>> tuple(tt_matrix_to_dense(laplacian_mpo(2, 3)).shape)
(9, 9)
"""

from __future__ import annotations

import torch

from tngraph.linalg import DecompositionError

__all__ = ["heisenberg_mpo", "laplacian_mpo"]


def _check_size(value: int, what: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DecompositionError(f"{what} must be an integer >= {least}, got {value!r}")


def heisenberg_mpo(n: int, coupling: float = 1.0, dtype: torch.dtype = torch.float64
                   ) -> list[torch.Tensor]:
    """``H = J sum_i S_i . S_{i+1}``, the spin-1/2 Heisenberg chain (open ends), as ``n``
    TT-matrix cores of rank 5.

    ``S.S = (S+ S- + S- S+) / 2 + Sz Sz``; the operator-valued 5 x 5 core is lower triangular:
    row 4 starts a term, column 0 ends it, and ``core[a, i, o, b] = W[a][b][o, i]``.

    >>> import torch
    >>> from tngraph.decompose import tt_matrix_to_dense
    >>> float(torch.linalg.eigvalsh(tt_matrix_to_dense(heisenberg_mpo(2)))[0])   # singlet
    -0.75
    """
    _check_size(n, "n (the number of spins)", 2)
    up = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=dtype)
    down, sz = up.T, torch.diag(torch.tensor([0.5, -0.5], dtype=dtype))
    eye, zero = torch.eye(2, dtype=dtype), torch.zeros(2, 2, dtype=dtype)
    w = [[eye, zero, zero, zero, zero],
         [up, zero, zero, zero, zero],
         [down, zero, zero, zero, zero],
         [sz, zero, zero, zero, zero],
         [zero, coupling / 2 * down, coupling / 2 * up, coupling * sz, eye]]
    core = torch.stack([torch.stack([w[a][b].T for b in range(5)], -1) for a in range(5)])
    return [core[4:5]] + [core] * (n - 2) + [core[..., 0:1]]


def laplacian_mpo(d: int, n: int, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    """``-Laplace`` with Dirichlet boundaries on ``n`` interior points per axis of the unit
    ``d``-cube (grid step ``1 / (n + 1)``): ``sum_k I x .. x L_k x .. x I`` as ``d`` TT-matrix
    cores of rank 2 (state 0: no ``L`` placed yet, state 1: ``L`` placed). Symmetric positive
    definite: what :func:`~tngraph.decompose.tt_solve` takes.

    >>> [tuple(c.shape) for c in laplacian_mpo(3, 4)]
    [(1, 4, 4, 2), (2, 4, 4, 2), (2, 4, 4, 1)]
    """
    _check_size(d, "d (the number of axes)", 2)
    _check_size(n, "n (the interior points per axis)", 1)
    h = 1.0 / (n + 1)
    lap = (2 * torch.eye(n, dtype=dtype) - torch.diag(torch.ones(n - 1, dtype=dtype), 1)
           - torch.diag(torch.ones(n - 1, dtype=dtype), -1)) / h ** 2
    eye, zero = torch.eye(n, dtype=dtype), torch.zeros(n, n, dtype=dtype)
    first = torch.stack([eye, lap], -1)[None]
    middle = torch.stack([torch.stack([eye, lap], -1), torch.stack([zero, eye], -1)])
    last = torch.stack([lap, eye])[..., None]
    return [first] + [middle] * (d - 2) + [last]
