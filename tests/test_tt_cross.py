"""tngraph.decompose.maxvol and tngraph.decompose.cross: maximum-volume rows and TT-cross,
checked against dense tensors and brute force at small sizes, with counted evaluations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from tngraph.decompose import (
    DecompositionError,
    maxvol,
    rect_maxvol,
    tt_cross,
    tt_svd,
    tt_to_dense,
    tt_values,
)

F64 = torch.float64


def random_tt(shape: list[int], rank: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    return [torch.randn(ranks[k], n, ranks[k + 1], generator=gen, dtype=F64)
            for k, n in enumerate(shape)]


class Counting:
    """A black-box function that records every multi-index it is asked for."""

    def __init__(self, fn):
        self.fn = fn
        self.seen: list[torch.Tensor] = []

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        assert idx.dtype == torch.long and idx.dim() == 2
        self.seen.append(idx.clone())
        return self.fn(idx)

    @property
    def points(self) -> int:
        return sum(len(i) for i in self.seen)

    @property
    def distinct(self) -> int:
        return len({tuple(row) for i in self.seen for row in i.tolist()})


def inverse_sum(idx: torch.Tensor) -> torch.Tensor:
    """1 / (1 + x_1 + ... + x_d) on [0, 1]^d: smooth, full TT-rank with fast decay."""
    return 1.0 / (1.0 + idx.double().sum(1) / 7.0)


# ---------------------------------------------------------------------------------------------
# maxvol


def volume(a: torch.Tensor, rows: list[int]) -> float:
    return abs(float(torch.linalg.det(a[rows])))


@pytest.mark.parametrize(("n", "r", "seed"), [(6, 2, 0), (7, 3, 1), (8, 1, 2), (5, 5, 3)])
def test_maxvol_is_a_local_maximum_of_the_volume(n: int, r: int, seed: int) -> None:
    """With tol=1 no single row swap increases |det|, and the coefficients are A inv(A[rows])."""
    a = torch.randn(n, r, generator=torch.Generator().manual_seed(seed), dtype=F64)
    rows, coefficients = maxvol(a, tol=1.0)
    chosen = rows.tolist()
    assert len(set(chosen)) == r
    assert torch.allclose(coefficients, a @ torch.linalg.inv(a[rows]))
    assert float(coefficients.abs().max()) <= 1.0 + 1e-12
    best = volume(a, chosen)
    for j, i in itertools.product(range(r), set(range(n)) - set(chosen)):
        assert volume(a, chosen[:j] + [i] + chosen[j + 1:]) <= best * (1 + 1e-12)
    # dominance bounds the loss against the global maximum: |det| >= max / r^(r/2)
    top = max(volume(a, list(c)) for c in itertools.combinations(range(n), r))
    assert best >= top / r ** (r / 2) - 1e-12


def test_maxvol_tol_stops_the_swaps_early() -> None:
    a = torch.randn(200, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    _, loose = maxvol(a, tol=3.0)
    _, tight = maxvol(a, tol=1.0)
    assert float(loose.abs().max()) <= 3.0 and float(tight.abs().max()) <= 1.0 + 1e-12


@pytest.mark.parametrize(("low", "high", "tol"), [(5, 5, 1.1), (3, 9, 1.5), (4, 12, 1.0)])
def test_rect_maxvol_rows_and_coefficients(low: int, high: int, tol: float) -> None:
    a = torch.randn(12, 3, generator=torch.Generator().manual_seed(low), dtype=F64)
    rows, coefficients = rect_maxvol(a, tol=tol, min_rows=low, max_rows=high)
    k = len(rows)
    assert low <= k <= high and len(set(rows.tolist())) == k
    assert torch.allclose(coefficients, a @ torch.linalg.pinv(a[rows]))
    assert torch.allclose(coefficients @ a[rows], a)
    norms = coefficients.norm(dim=1)
    if k < high:                       # stopped by tol: every row of C within it
        assert float(norms.max()) <= tol + 1e-12
    if high == 12:                     # every row chosen: C is the identity's rows
        assert float(norms.max()) <= 1 + 1e-12


@pytest.mark.parametrize(("call", "match"), [
    (lambda: maxvol(torch.randn(2, 3)), r"shape \(2, 3\); maxvol needs a tall matrix"),
    (lambda: maxvol(torch.ones(5, 2)), "has rank < 2"),
    (lambda: maxvol(torch.randn(5, 2), tol=0.5), "tol must be a finite number >= 1.0"),
    (lambda: maxvol(torch.tensor([[1.0], [float("nan")]])), "non-finite entries"),
    (lambda: maxvol("abc"), "must be a 2-d tensor, got str"),
    (lambda: maxvol(torch.randn(5, 2), max_iters=-1), "max_iters must be an integer >= 0"),
    (lambda: rect_maxvol(torch.randn(5, 2), min_rows=4, max_rows=3),
     "min_rows = 4 exceeds max_rows = 3"),
    (lambda: rect_maxvol(torch.randn(5, 2), max_rows=6),
     "max_rows must be an integer between r = 2 and n = 5"),
])
def test_maxvol_errors(call, match: str) -> None:
    with pytest.raises(DecompositionError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# tt_values


def test_tt_values_are_the_dense_entries() -> None:
    a = torch.randn(3, 4, 5, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    idx = torch.cartesian_prod(*[torch.arange(n) for n in a.shape])
    assert torch.allclose(tt_values(tt_svd(a), idx), a.reshape(-1))
    assert torch.allclose(tt_values(tt_svd(a), idx.numpy()), a.reshape(-1))


@pytest.mark.parametrize(("indices", "match"), [
    (torch.tensor([[0, 4]]), r"row 0 = \[0, 4\] lies outside the shape \(3, 4\)"),
    (torch.zeros(2, 3, dtype=torch.long), r"integer tensor of shape \(m, 2\)"),
    (torch.zeros(2, 2), r"integer tensor of shape \(m, 2\), got torch.float32"),
    (None, "indices must be an integer"),
])
def test_tt_values_errors(indices, match: str) -> None:
    with pytest.raises(DecompositionError, match=match):
        tt_values(tt_svd(torch.randn(3, 4)), indices)


# ---------------------------------------------------------------------------------------------
# tt_cross


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_recovers_a_low_rank_tensor_from_O_dnr2_values(rank: int, seed: int) -> None:
    shape = [5] * 6
    cores = random_tt(shape, rank, seed)
    fn = Counting(lambda idx: tt_values(cores, idx))
    result = tt_cross(fn, shape, eps=1e-12, seed=seed, n_test=200)
    dense = tt_to_dense(cores)
    assert float((tt_to_dense(result.cores) - dense).norm() / dense.norm()) < 1e-10
    assert result.ranks == (rank,) * 5 and result.stop == "eps" and result.error < 1e-12
    # every value counted, none asked for twice, the cross itself O(d n r^2)
    assert fn.points == fn.distinct == result.evals
    d, n = len(shape), shape[0]
    assert result.evals - 200 <= 2 * d * n * rank ** 2
    assert result.evals < math.prod(shape) / 20


def test_cross_stops_when_the_ranks_are_resolved() -> None:
    """Without eps, a rank-2 tensor is found and the sweeps end by themselves, below the cap."""
    cores = random_tt([4] * 7, 2, 3)
    result = tt_cross(lambda idx: tt_values(cores, idx), [4] * 7, max_rank=6, seed=0)
    assert result.stop == "converged" and result.ranks == (2,) * 6 and result.error < 1e-12


def test_cross_sum_of_sines_and_its_evaluation_count() -> None:
    """sin(x_1 + ... + x_8) (rank 2, rows of equal values everywhere) on a 10^8 grid."""
    fn = Counting(lambda idx: torch.sin(0.1 * idx.sum(1).double()))
    result = tt_cross(fn, [10] * 8, eps=1e-12, seed=0)
    assert result.ranks == (2,) * 7 and result.error < 1e-12
    assert fn.distinct == result.evals < 3000
    idx = torch.randint(0, 10, (500, 8), generator=torch.Generator().manual_seed(9))
    assert torch.allclose(tt_values(result.cores, idx), fn.fn(idx), atol=1e-12)


def test_cross_ranks_grow_until_the_cap_and_the_error_falls() -> None:
    shape = [6] * 5
    dense = inverse_sum(torch.cartesian_prod(*[torch.arange(n) for n in shape])).reshape(shape)
    errors = []
    for cap in (1, 2, 4):
        result = tt_cross(inverse_sum, shape, max_rank=cap, seed=0)
        assert max(result.ranks) == cap and result.stop in ("max_rank", "max_sweeps")
        true_error = float((tt_to_dense(result.cores) - dense).norm() / dense.norm())
        assert true_error < 3 * result.error + 1e-14      # the estimate is not optimistic
        errors.append(true_error)
    assert errors[0] > 10 * errors[1] > 100 * errors[2]


def test_cross_eps_is_met_on_the_dense_tensor() -> None:
    shape = [7] * 5
    dense = inverse_sum(torch.cartesian_prod(*[torch.arange(n) for n in shape])).reshape(shape)
    result = tt_cross(inverse_sum, shape, eps=1e-7, seed=1)
    assert result.stop == "eps" and result.error <= 1e-7
    assert float((tt_to_dense(result.cores) - dense).norm() / dense.norm()) < 1e-6
    assert list(result.errors)[-1] == pytest.approx(result.error, rel=0.5)


@pytest.mark.parametrize("budget", [400, 1000, 2500])
def test_cross_never_asks_for_more_than_max_evals(budget: int) -> None:
    fn = Counting(inverse_sum)
    result = tt_cross(fn, [8] * 6, max_evals=budget, seed=0)
    assert fn.points == result.evals <= budget
    assert result.stop == "max_evals" and result.evals > budget / 3
    # the returned TT is the best of those estimated
    assert result.error <= min(result.errors) * (1 + 1e-9)


def test_cross_is_deterministic_for_a_seed() -> None:
    runs = []
    for seed in (4, 4, 5):
        fn = Counting(inverse_sum)
        result = tt_cross(fn, [6] * 5, max_rank=3, seed=seed)
        runs.append((torch.cat(fn.seen), result))
    (calls_a, a), (calls_b, b), (calls_c, _) = runs
    assert torch.equal(calls_a, calls_b)
    assert all(torch.equal(x, y) for x, y in zip(a.cores, b.cores)) and a.errors == b.errors
    assert not (calls_a.shape == calls_c.shape and torch.equal(calls_a, calls_c))


@pytest.mark.parametrize("kind", ["numpy", "list", "column"])
def test_cross_accepts_arrays_and_lists(kind: str) -> None:
    def fn(idx: torch.Tensor):
        values = (idx.double() + 1).prod(1)
        if kind == "numpy":
            return values.numpy()
        return values.tolist() if kind == "list" else values[:, None]

    result = tt_cross(fn, [3, 4, 5], eps=1e-12, dtype=torch.float32)
    assert result.cores[0].dtype == torch.float32 and result.ranks == (1, 1)
    expected = torch.outer(torch.arange(1.0, 4), torch.arange(1.0, 5))[..., None] \
        * torch.arange(1.0, 6)
    assert torch.allclose(tt_to_dense(result.cores), expected)


def test_cross_of_one_mode_is_its_values() -> None:
    fn = Counting(lambda idx: idx[:, 0].double() ** 2)
    result = tt_cross(fn, [6], max_evals=6)
    assert result.evals == fn.points == 6 and result.error == 0.0
    assert tt_to_dense(result.cores).tolist() == [0.0, 1.0, 4.0, 9.0, 16.0, 25.0]


def ones(idx: torch.Tensor) -> torch.Tensor:
    return torch.ones(len(idx), dtype=F64)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: tt_cross(5, [3, 3], eps=0.1), "fn must be callable, got int"),
    (lambda: tt_cross(ones, [3, 0], eps=0.1), "shape must be a non-empty list of ints >= 1"),
    (lambda: tt_cross(ones, torch.tensor([3, 3]), eps=0.1), "shape must be a non-empty list"),
    (lambda: tt_cross(ones, [3, 3]), "needs a stopping rule: none of eps, max_rank"),
    (lambda: tt_cross(ones, [3, 3], eps=-1.0), "eps must be a finite number > 0"),
    (lambda: tt_cross(ones, [3, 3], max_rank=0), "max_rank must be an integer >= 1 or None"),
    (lambda: tt_cross(ones, [3, 3], max_rank=2.5), "max_rank must be an integer >= 1 or None"),
    (lambda: tt_cross(ones, [3, 3], eps=0.1, seed=-1), "seed must be an integer >= 0"),
    (lambda: tt_cross(ones, [3, 3], eps=0.1, rank_step=0), "rank_step must be an integer >= 1"),
    (lambda: tt_cross(ones, [3, 3], eps=0.1, dtype=torch.int64), "dtype must be torch.float32"),
    (lambda: tt_cross(ones, [3, 3], eps=0.1, n_test=0), "eps needs test points"),
    (lambda: tt_cross(ones, [9] * 6, max_evals=50),
     r"max_evals = 50 is too small: the first sweep needs up to \d+ values"),
    (lambda: tt_cross(ones, [7], max_evals=5), "too small for a 1-mode tensor of 7 values"),
    (lambda: tt_cross(lambda idx: torch.ones(len(idx) - 1), [3, 3], eps=0.1),
     r"fn returned \d+ values .* it must return one value per row"),
    (lambda: tt_cross(lambda idx: None, [3, 3], eps=0.1), "fn returned NoneType"),
    (lambda: tt_cross(lambda idx: torch.ones(len(idx), dtype=torch.complex64), [3, 3],
                      eps=0.1), "fn returned complex values"),
    (lambda: tt_cross(lambda idx: 1.0 / idx[:, 0].double(), [3, 3], eps=0.1),
     r"fn returned \d+ non-finite value\(s\) \(NaN or inf\) of \d+, the first at multi-index "
     r"\(0, "),
])
def test_cross_errors_name_the_fix(call, match: str) -> None:
    with pytest.raises(DecompositionError, match=match) as info:
        call()
    assert "hint:" in str(info.value) or "dtype" in match


def test_an_exception_of_fn_itself_propagates() -> None:
    def broken(idx: torch.Tensor) -> torch.Tensor:
        raise KeyError("simulator down")

    with pytest.raises(KeyError, match="simulator down"):
        tt_cross(broken, [3, 3], eps=0.1)


def test_cross_test_points_are_spread_over_the_grid() -> None:
    """The error estimate's points are uniform random multi-indices, drawn once, first."""
    fn = Counting(ones)
    tt_cross(fn, [50, 50, 50], max_rank=1, seed=0, n_test=1000)
    test = fn.seen[0]
    assert 990 <= len(test) <= 1000 and len(fn.seen) > 1     # a few repeats are asked once
    counts = np.bincount(test[:, 1].numpy(), minlength=50)
    assert counts.min() > 5 and counts.max() < 45
