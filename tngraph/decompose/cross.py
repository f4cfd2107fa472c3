"""TT-cross: a tensor train of a black-box function from a few of its values.

A tensor with TT-ranks ``<= r`` is recovered from ``O(d n r^2)`` of its entries, chosen actively
by maximum-volume submatrices (Oseledets, Tyrtyshnikov 2010; Savostyanov 2014). :func:`tt_cross`
never forms the full tensor: it asks ``fn`` for the values of *fibres* ``f(I_k, i_k, J_{k+1})``
(a left index set ``I_k`` of sites ``0..k-1``, every ``i_k``, a right set ``J_{k+1}`` of sites
``k+1..d-1``) and sweeps:

* left to right, site ``k``: the fibre matrix ``V`` (``r_k n_k x r_{k+1}``), its numerical rank
  ``r`` (SVD, relative tolerance 1e-12), the :func:`~tngraph.decompose.maxvol.maxvol` rows of
  the first ``r`` left singular vectors plus ``rank_step`` random rows more (rank growth, up to
  ``max_rank``). The rows are the next left set ``I_{k+1}`` (nested in ``I_k x
  n_k``), and the core is the interpolation ``U pinv(U[rows])``;
* right to left, the same on columns for the right sets.

After each sweep (one pass in one direction) the TT is a consistent interpolation; its relative
error is estimated on ``n_test`` random multi-indices drawn once at the start. Values are cached:
a multi-index is passed to ``fn`` once at most, and ``evals`` counts them all, the test points
included. With ``max_rank`` the sweeps oversample (ranks up to ``max_rank + rank_step``) and the
best interpolant is rounded to ``max_rank`` by TT-SVD, which is quasi-optimal at that rank: on
a 16^10 grid at rank 8 this is 10x more accurate than the rank-8 interpolant itself
(docs/performance.md, "TT toolbox").

Examples
--------
>>> import torch
>>> def f(idx):                          # sin(x_1 + ... + x_8): TT-rank 2
...     return torch.sin(0.1 * idx.sum(1).double())
>>> result = tt_cross(f, [10] * 8, eps=1e-12, seed=0)
>>> result.ranks, result.error < 1e-12, result.evals < 2000
((2, 2, 2, 2, 2, 2, 2), True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tngraph.decompose.maxvol import _dominant_rows
from tngraph.decompose.tt import (
    _is_count,
    _is_number,
    max_ranks,
    tt_ranks,
    tt_round,
    tt_values,
)
from tngraph.linalg import DecompositionError, one_cpu_thread, svd

__all__ = ["CrossResult", "tt_cross"]

#: singular values below this fraction of the largest one count as zero (the numerical rank)
RANK_RTOL = 1e-12
#: at the rank cap, a sweep that lowers the best error estimate by less than this factor stalls;
#: after this many stalled sweeps in a row tt_cross stops
STALL_FACTOR = 0.9
STALL_SWEEPS = 2


@dataclass(frozen=True)
class CrossResult:
    """What :func:`tt_cross` found.

    Attributes
    ----------
    cores
        The TT, ``d`` cores ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1`` (the layout of
        :func:`~tngraph.decompose.tt.tt_svd`), in the requested dtype, on the CPU.
    evals
        How many function values were asked for in all (distinct multi-indices, the test points
        included); never more than ``max_evals``.
    error
        The relative error estimate ``||f - tt||_2 / ||f||_2`` of the returned cores on the test
        points (NaN without test points).
    errors
        The estimate after each sweep (one pass in one direction).
    stop
        Why it stopped: ``"eps"`` (the estimate reached ``eps``), ``"converged"`` (every rank is
        below what the samples allow: the tensor is resolved), ``"max_rank"`` (at the rank cap
        the estimate no longer improves), ``"max_evals"`` (the next sweep would exceed the
        budget), ``"max_sweeps"``.
    """

    cores: list[torch.Tensor]
    evals: int
    error: float
    errors: tuple[float, ...] = field(default=())
    stop: str = ""

    @property
    def ranks(self) -> tuple[int, ...]:
        """The TT-ranks ``(r_1, ..., r_{d-1})``."""
        return tt_ranks(self.cores)

    @property
    def sweeps(self) -> int:
        """Completed sweeps (passes in one direction)."""
        return len(self.errors)


class _OutOfBudget(Exception):
    """The next batch of new points would exceed ``max_evals``."""


class _Sampler:
    """``fn`` behind a cache and a budget: each multi-index is asked for once at most."""

    def __init__(self, fn: Callable[[torch.Tensor], Any], shape: Sequence[int],
                 max_evals: int | None):
        self.fn = fn
        self.shape = list(shape)
        self.max_evals = max_evals
        self.evals = 0
        self.threads = torch.get_num_threads()
        width = len(self.shape) * 8
        self.key_dtype = np.dtype((np.void, width))
        self.keys = np.empty(0, dtype=self.key_dtype)            # sorted
        self.values = np.empty(0, dtype=np.float64)

    def _keys(self, idx: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(idx, dtype=np.int64).view(self.key_dtype).reshape(-1)

    def new_points(self, idx: np.ndarray) -> int:
        """How many of these multi-indices are not cached yet."""
        unique = np.unique(self._keys(idx))
        return int(unique.size - self._found(unique)[0].sum())

    def _found(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.keys, keys)
        inside = pos < self.keys.size
        found = np.zeros(keys.size, dtype=bool)
        found[inside] = self.keys[pos[inside]] == keys[inside]
        return found, pos

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        """The values at the rows of ``idx`` (an ``(m, d)`` int64 array) as float64."""
        keys = self._keys(idx)
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        found, pos = self._found(unique)
        new = np.flatnonzero(~found)
        if new.size:
            if self.max_evals is not None and self.evals + new.size > self.max_evals:
                raise _OutOfBudget
            points = idx[first[new]]
            got = self._ask(points)
            self.evals += new.size
            merged_keys = np.concatenate([self.keys, unique[new]])
            merged_values = np.concatenate([self.values, got])
            order = np.argsort(merged_keys, kind="stable")
            self.keys, self.values = merged_keys[order], merged_values[order]
            found, pos = self._found(unique)
        return torch.from_numpy(self.values[pos][inverse.reshape(-1)].copy())

    def _ask(self, points: np.ndarray) -> np.ndarray:
        m = points.shape[0]
        sweep_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)        # fn gets the caller's threads
        try:
            raw = self.fn(torch.from_numpy(np.ascontiguousarray(points)))
        finally:
            torch.set_num_threads(sweep_threads)
        if isinstance(raw, torch.Tensor):
            raw = raw.detach().to("cpu")
            if raw.dtype == torch.bfloat16:
                raw = raw.float()
        try:
            got = np.asarray(raw)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DecompositionError(f"fn returned {type(raw).__name__}, which is not an array "
                                     f"of numbers ({exc})", _FN_HINT) from None
        if got.dtype == object or got.dtype.kind not in "biufc":
            raise DecompositionError(f"fn returned {type(raw).__name__} of "
                                     f"{got.dtype if got.dtype != object else 'objects'} for "
                                     f"{m} multi-indices; it must return {m} numbers",
                                     _FN_HINT)
        if got.dtype.kind == "c":
            raise DecompositionError("fn returned complex values; tt_cross approximates real "
                                     "functions", "approximate the real and imaginary parts "
                                     "with two calls")
        if got.size != m:
            raise DecompositionError(f"fn returned {got.size} values (shape {got.shape}) for "
                                     f"{m} multi-indices; it must return one value per row of "
                                     "its (m, d) argument", _FN_HINT)
        got = got.reshape(-1).astype(np.float64)
        bad = ~np.isfinite(got)
        if bad.any():
            first = points[np.flatnonzero(bad)[0]].tolist()
            raise DecompositionError(f"fn returned {int(bad.sum())} non-finite value(s) (NaN or "
                                     f"inf) of {m}, the first at multi-index {tuple(first)}",
                                     "make the function finite on the whole grid (move the "
                                     "grid off a pole, clip or mask the values)")
        return got


_FN_HINT = ("fn takes a LongTensor of multi-indices of shape (m, d) and returns m values, "
            "e.g. lambda idx: torch.sin(idx.sum(1).double())")


def _grid(left: np.ndarray, n: int, right: np.ndarray) -> np.ndarray:
    """Every multi-index ``(left[a], i, right[b])``, ordered ``(a, i, b)``: ``(R n R', d)``."""
    count_left, count_right = left.shape[0], right.shape[0]
    a = np.repeat(left, n * count_right, axis=0)
    i = np.tile(np.repeat(np.arange(n, dtype=np.int64), count_right), count_left)[:, None]
    b = np.tile(right, (count_left * n, 1))
    return np.concatenate([a, i, b], axis=1)


def _choose_rows(fibre: torch.Tensor, cap: int, step: int, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of a fibre matrix for the next index set: ``(rows, interpolation, numerical rank)``.

    The numerical rank ``r`` (at most ``cap``) of ``fibre``, the :func:`maxvol` rows of its
    first ``r`` left singular vectors ``U``, and ``step`` random rows more (at most ``cap`` in
    all); the interpolation matrix is ``U pinv(U[rows])``. Random extra rows, not the largest
    coefficients of :func:`rect_maxvol`: a function of ``x_1 + ... + x_d`` has many rows of
    equal values, and the largest-coefficient row is then a copy of a chosen one, which adds
    no rank (the sweeps stalled at rank 1 on ``sin(x_1 + ... + x_8)``).
    """
    u, s, _ = svd(fibre, what="fibre matrix")
    top = float(s[0]) if s.numel() else 0.0
    rank = int((s > RANK_RTOL * top).sum()) if top > 0 else 1
    rank = max(1, min(rank, cap))
    basis = u[:, :rank].contiguous()
    rows, coefficients = _dominant_rows(basis, 1.05, 100)
    size = min(cap, rank + step, fibre.shape[0])
    if size > rank:
        others = np.setdiff1d(np.arange(fibre.shape[0]), rows.numpy())
        rows = torch.cat([rows, torch.as_tensor(rng.choice(others, size - rank, replace=False))])
        coefficients = basis @ torch.linalg.pinv(basis[rows])
    return rows, coefficients, rank


def _check_arguments(fn: Any, shape: Any, max_rank: Any, eps: Any, max_evals: Any, seed: Any,
                     dtype: Any, n_test: Any, rank_step: Any, max_sweeps: Any) -> list[int]:
    if not callable(fn):
        raise DecompositionError(f"fn must be callable, got {type(fn).__name__}", _FN_HINT)
    if isinstance(shape, (torch.Tensor, str, bytes)) or not isinstance(shape, Sequence) \
            or not shape or not all(_is_count(n) and n >= 1 for n in shape):
        raise DecompositionError(f"shape must be a non-empty list of ints >= 1, got {shape!r}",
                                 "for example shape=[10] * 8 (a 10-point grid in 8 dimensions)")
    checks = [("max_rank", max_rank, 1, "for example max_rank=8"),
              ("max_evals", max_evals, 1, "the most function values to ask for, e.g. 10**5"),
              ("seed", seed, 0, "for example seed=0"),
              ("n_test", n_test, 0, "random test points of the error estimate, e.g. 1000"),
              ("rank_step", rank_step, 1, "ranks grow by at most this per sweep, e.g. 1"),
              ("max_sweeps", max_sweeps, 1, "for example max_sweeps=50")]
    for name, value, least, hint in checks:
        optional = name in ("max_rank", "max_evals")
        if (value is not None or not optional) and (not _is_count(value) or value < least):
            raise DecompositionError(f"{name} must be an integer >= {least}"
                                     f"{' or None' if optional else ''}, got {value!r}", hint)
    if eps is not None and not (_is_number(eps) and eps > 0):
        raise DecompositionError(f"eps must be a finite number > 0, got {eps!r}",
                                 "eps is the relative error to reach, e.g. 1e-6")
    if dtype not in (torch.float32, torch.float64):
        raise DecompositionError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if eps is None and max_rank is None and max_evals is None:
        raise DecompositionError("tt_cross needs a stopping rule: none of eps, max_rank and "
                                 "max_evals is given", "pass eps=1e-6, max_rank=16 or "
                                 "max_evals=10**5 (or several)")
    return [int(n) for n in shape]


def tt_cross(fn: Callable[[torch.Tensor], Any], shape: Sequence[int], *,
             max_rank: int | None = None, eps: float | None = None,
             max_evals: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float64,
             n_test: int = 1000, rank_step: int = 1, max_sweeps: int = 50) -> CrossResult:
    """A TT of the tensor ``A[i] = fn(i)`` on the grid ``shape`` from few values (TT-cross).

    Parameters
    ----------
    fn
        Takes a LongTensor of multi-indices of shape ``(m, d)`` (on the CPU) and returns ``m``
        real values (a tensor, an array or a list). It is called in batches, on each
        multi-index once at most.
    shape
        The grid ``(n_0, ..., n_{d-1})``.
    max_rank
        Cap on every TT-rank of the result (the sweeps go ``rank_step`` beyond it, then round).
    eps
        Stop when the relative error estimate on the test points is ``<= eps``.
    max_evals
        ``fn`` is never asked for more values than this in all (test points included); the
        sweep that would exceed it is not started, and the best TT so far is returned.
    seed
        Seeds the test points and the first right index sets: the same seed, the same calls.
    dtype
        The cores' dtype (``torch.float64`` or ``torch.float32``); computed in float64.
    n_test
        Random multi-indices of the error estimate (at most a tenth of ``max_evals``); 0
        disables it (then ``eps`` cannot be used).
    rank_step
        Extra rows per bond and sweep beyond the numerical rank: how fast the ranks grow.
    max_sweeps
        At most this many sweeps (passes in one direction).

    Returns
    -------
    CrossResult
        ``.cores``, ``.evals``, ``.error`` (the estimate), ``.errors`` per sweep, ``.ranks``,
        ``.stop``. The cores are rounded to their numerical ranks, and to ``max_rank``.

    Raises
    ------
    DecompositionError
        Bad arguments, no stopping rule (none of ``eps``, ``max_rank``, ``max_evals``), a budget
        too small for one sweep, or ``fn`` returning the wrong number of values, complex,
        NaN or infinite values. An exception raised by ``fn`` itself propagates.

    Examples
    --------
    >>> import torch
    >>> from tngraph.decompose import tt_values
    >>> f = lambda idx: 1.0 / (1.0 + idx.sum(1).double())       # smooth, not low-rank
    >>> result = tt_cross(f, [8] * 6, eps=1e-6, seed=0)
    >>> result.stop, result.error <= 1e-6
    ('eps', True)
    >>> idx = torch.randint(0, 8, (100, 6), generator=torch.Generator().manual_seed(1))
    >>> bool(torch.allclose(tt_values(result.cores, idx), f(idx), rtol=1e-5))
    True
    """
    shape = _check_arguments(fn, shape, max_rank, eps, max_evals, seed, dtype, n_test,
                             rank_step, max_sweeps)
    sampler = _Sampler(fn, shape, max_evals)
    with one_cpu_thread(torch.device("cpu")):      # many small factorisations; fn gets all
        return _cross(sampler, shape, max_rank, eps, max_evals, seed, dtype, n_test,
                      rank_step, max_sweeps)


def _cross(sampler: _Sampler, shape: list[int], max_rank: int | None,
           eps: float | None, max_evals: int | None, seed: int, dtype: torch.dtype,
           n_test: int, rank_step: int, max_sweeps: int) -> CrossResult:
    """tt_cross on checked arguments."""
    d = len(shape)
    rng = np.random.default_rng(seed)
    n_test = int(n_test) if max_evals is None else min(int(n_test), int(max_evals) // 10)
    if eps is not None and n_test == 0:
        raise DecompositionError("eps needs test points to estimate the error, but n_test is 0"
                                 + (f" (at most max_evals // 10 = {max_evals // 10})"
                                    if max_evals is not None else ""),
                                 "raise n_test (or max_evals), or stop by max_rank / max_evals")
    if d == 1:
        return _one_mode(sampler, shape[0], dtype)
    bounds = max_ranks(shape)
    # the sweeps oversample: rank_step more than max_rank, rounded back to it at the end
    caps = [min(b, max_rank + rank_step) if max_rank is not None else b for b in bounds]
    first_cost, rank = 0, 1
    for k in range(d - 1):                                      # the first sweep's points
        first_cost += rank * shape[k]
        rank = min(caps[k], rank * shape[k], 1 + rank_step)
    first_cost += rank * shape[-1]
    if max_evals is not None and n_test + first_cost > max_evals:
        raise DecompositionError(f"max_evals = {max_evals} is too small: the first sweep needs "
                                 f"up to {first_cost} values and the error estimate "
                                 f"{n_test}", f"pass max_evals >= {n_test + first_cost}")
    test_idx = np.stack([rng.integers(0, n, n_test) for n in shape], axis=1)
    test_values = sampler(test_idx) if n_test else torch.zeros(0, dtype=torch.float64)
    test_norm = float(torch.linalg.vector_norm(test_values))

    def estimate(cores: list[torch.Tensor]) -> float:
        if not n_test:
            return math.nan
        diff = float(torch.linalg.vector_norm(tt_values(cores, torch.from_numpy(test_idx))
                                              - test_values))
        return diff / test_norm if test_norm > 0 else diff

    # index sets: left[k] (R, k) for sites 0..k-1, right[k] (R, d-k) for sites k..d-1
    start = np.stack([rng.integers(0, n) for n in shape])[None, :]
    left = [np.zeros((1, k), dtype=np.int64) for k in range(d + 1)]
    right = [np.ascontiguousarray(start[:, k:]) for k in range(d + 1)]
    cores: list[torch.Tensor] = [torch.zeros(0)] * d
    best: tuple[float, list[torch.Tensor]] | None = None
    latest: list[list[torch.Tensor]] = []        # the TT to fall back on inside a pass
    errors: list[float] = []
    resolved_before = False
    stalled = 0
    stop = "max_sweeps"
    for sweep in range(max_sweeps):
        try:
            resolved, center = _sweep(sampler, shape, left, right, cores, caps, rank_step,
                                      sweep % 2 == 0, latest, rng)
        except _OutOfBudget:
            stop = "max_evals"
            if latest:
                error = estimate(latest[0])
                if best is None or error < best[0]:
                    best = (error, latest[0])
            break
        latest[:] = [center]
        error = estimate(center)
        errors.append(error)
        stalled = 0 if best is None or error < best[0] * STALL_FACTOR else stalled + 1
        if best is None or not error >= best[0]:
            best = (error, center)
        if eps is not None and error <= eps:
            stop = "eps"
            break
        if resolved and resolved_before:
            stop = "converged"
            break
        resolved_before = resolved
        at_cap = all(c.shape[-1] >= caps[k] for k, c in enumerate(center[:-1]))
        if at_cap and max_rank is not None and stalled >= STALL_SWEEPS:
            stop = "max_rank"
            break
    if best is None:          # the budget ran out inside the first sweep
        raise DecompositionError(f"max_evals = {max_evals} ran out during the first sweep",
                                 f"pass max_evals >= {n_test + first_cost}")
    rounded = tt_round(best[1], max_rank=max_rank)
    error = estimate(rounded)
    return CrossResult([c.to(dtype).contiguous() for c in rounded], sampler.evals, error,
                       tuple(errors), stop)


def _sweep(sampler: _Sampler, shape: list[int], left: list[np.ndarray],
           right: list[np.ndarray], cores: list[torch.Tensor], caps: list[int], step: int,
           forward: bool, latest: list[list[torch.Tensor]], rng: np.random.Generator
           ) -> tuple[bool, list[torch.Tensor]]:
    """One pass; updates the index sets and ``cores`` in place.

    Returns whether every bond was resolved (numerical rank below the samples' count, or at
    the unfolding's bound) and the interpolation TT (interpolation cores and the last fibre).
    If ``latest`` holds a TT (every pass but the first), it is replaced after each fibre by the
    TT with that fibre at its centre: what is left when the budget runs out inside the pass.
    """
    d = len(shape)
    bounds = max_ranks(shape)
    resolved = True
    empty = np.zeros((1, 0), dtype=np.int64)
    for k in (range(d) if forward else range(d - 1, -1, -1)):
        points = _grid(left[k], shape[k], right[k + 1])
        values = sampler(points).reshape(left[k].shape[0], shape[k], right[k + 1].shape[0])
        if latest:
            latest[0] = [*cores[:k], values, *cores[k + 1:]]
        if k == (d - 1 if forward else 0):
            cores[k] = values
            break
        if forward:
            fibre = values.reshape(-1, values.shape[2])
            rows, coefficients, rank = _choose_rows(fibre, caps[k], step, rng)
            cores[k] = coefficients.reshape(values.shape[0], shape[k], -1)
            left[k + 1] = _grid(left[k], shape[k], empty)[rows.numpy()]
            samples, bond = values.shape[2], k
        else:
            fibre = values.reshape(values.shape[0], -1).T
            rows, coefficients, rank = _choose_rows(fibre, caps[k - 1], step, rng)
            cores[k] = coefficients.T.reshape(-1, shape[k], values.shape[2])
            right[k] = _grid(empty, shape[k], right[k + 1])[rows.numpy()]
            samples, bond = values.shape[0], k - 1
        if not (rank < samples or rank >= bounds[bond]):
            resolved = False
    return resolved, list(cores)


def _one_mode(sampler: _Sampler, n: int, dtype: torch.dtype) -> CrossResult:
    """``d = 1``: the tensor is its ``n`` values."""
    if sampler.max_evals is not None and n > sampler.max_evals:
        raise DecompositionError(f"max_evals = {sampler.max_evals} is too small for a "
                                 f"1-mode tensor of {n} values", f"pass max_evals >= {n}")
    values = sampler(np.arange(n, dtype=np.int64)[:, None])
    return CrossResult([values.reshape(1, n, 1).to(dtype)], sampler.evals, 0.0, (0.0,),
                       "converged")
