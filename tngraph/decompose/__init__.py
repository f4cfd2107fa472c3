"""The TT library: tensor trains (TT / MPS / MPO) from dense tensors, black-box functions and
high-dimensional linear algebra.

Layer L4. Every name is importable from ``tngraph.decompose``; the modules are:

* :mod:`~tngraph.decompose.tt` -- TT-SVD, rounding, arithmetic, orthogonalisation sweeps, QTT,
  TT-matrices (MPO) and ``tt_linear``, entanglement, values at multi-indices;
* :mod:`~tngraph.decompose.maxvol` -- maximum-volume rows (``maxvol``, ``rect_maxvol``);
* :mod:`~tngraph.decompose.cross` -- TT-cross of a black-box function (``tt_cross``);
* :mod:`~tngraph.decompose.solvers` -- TT-matrix times TT (``tt_matvec``), the lowest eigenpair
  (``tt_eigh``, two-site DMRG) and SPD linear systems (``tt_solve``);
* :mod:`~tngraph.decompose.operators` -- classic operators as TT-matrices (``heisenberg_mpo``,
  ``laplacian_mpo``).

See docs/decompose.md.

Examples
--------
>>> import torch
>>> from tngraph.decompose import tt_cross
>>> result = tt_cross(lambda idx: (idx + 1.0).prod(1), [5] * 6, eps=1e-10, seed=0)
>>> result.ranks, result.error < 1e-10
((1, 1, 1, 1, 1), True)
"""

from tngraph.decompose.cross import CrossResult, tt_cross
from tngraph.decompose.maxvol import maxvol, rect_maxvol
from tngraph.decompose.operators import heisenberg_mpo, laplacian_mpo
from tngraph.decompose.solvers import EighResult, SolveResult, tt_eigh, tt_matvec, tt_solve
from tngraph.decompose.tt import (
    DecompositionError,
    bond_spectra,
    entanglement_entropy,
    left_orthogonalize,
    max_ranks,
    mps_spec,
    mps_state_dict,
    qtt,
    right_orthogonalize,
    tt_add,
    tt_dot,
    tt_hadamard,
    tt_linear_spec,
    tt_linear_state_dict,
    tt_matrix,
    tt_matrix_to_dense,
    tt_norm,
    tt_ranks,
    tt_round,
    tt_svd,
    tt_to_dense,
    tt_values,
    unfolding_ranks,
)

__all__ = [
    "CrossResult",
    "DecompositionError",
    "EighResult",
    "SolveResult",
    "bond_spectra",
    "entanglement_entropy",
    "heisenberg_mpo",
    "laplacian_mpo",
    "left_orthogonalize",
    "max_ranks",
    "mps_spec",
    "mps_state_dict",
    "maxvol",
    "qtt",
    "rect_maxvol",
    "right_orthogonalize",
    "tt_add",
    "tt_cross",
    "tt_dot",
    "tt_eigh",
    "tt_hadamard",
    "tt_linear_spec",
    "tt_linear_state_dict",
    "tt_matrix",
    "tt_matrix_to_dense",
    "tt_matvec",
    "tt_norm",
    "tt_ranks",
    "tt_round",
    "tt_solve",
    "tt_svd",
    "tt_to_dense",
    "tt_values",
    "unfolding_ranks",
]
