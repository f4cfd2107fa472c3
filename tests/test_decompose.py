"""tngraph.decompose: TT-SVD, rounding, TT arithmetic, TT-matrices for tt_linear, MPS/QTT."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from helpers import CUDA

import tngraph
from tngraph.decompose import (
    DecompositionError,
    bond_spectra,
    entanglement_entropy,
    max_ranks,
    qtt,
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
    unfolding_ranks,
)
from tngraph.errors import TNGraphError

F64 = torch.float64
DTYPE_DEVICES = [
    (torch.float64, "cpu"),
    (torch.float32, "cpu"),
    pytest.param(torch.float64, "cuda", marks=CUDA),
    pytest.param(torch.float32, "cuda", marks=CUDA),
]


def fnorm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.to(F64)))


def rel_err(cores: list[torch.Tensor], a: torch.Tensor) -> float:
    return fnorm(tt_to_dense(cores).to(F64) - a.to(F64)) / fnorm(a)


def random_tt(shape: tuple[int, ...], ranks: tuple[int, ...], seed: int,
              dtype: torch.dtype = F64) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rs = (1, *ranks, 1)
    return [torch.randn(rs[k], n, rs[k + 1], generator=gen, dtype=dtype)
            for k, n in enumerate(shape)]


def random_shape(seed: int, max_size: int = 3000) -> tuple[int, ...]:
    rng = random.Random(seed)
    while True:
        shape = tuple(rng.randint(1, 6) for _ in range(rng.randint(1, 6)))
        if math.prod(shape) <= max_size:
            return shape


def random_case(seed: int) -> torch.Tensor:
    """A random tensor of a random shape: dense noise (seeds even) or a low-rank TT (odd)."""
    shape = random_shape(seed)
    if seed % 2 == 0:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=gen, dtype=F64)
    rng = random.Random(seed)
    ranks = tuple(min(rng.randint(1, 4), b) for b in max_ranks(shape))
    return tt_to_dense(random_tt(shape, ranks, seed))


# ---------------------------------------------------------------------------------------------
# seed 001: a 12x30 weight reshaped to 3x4x5x6


@pytest.fixture(scope="module")
def seed001() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(12345)
    w = torch.from_numpy(rng.standard_normal((3 * 4, 5 * 6)))
    b = torch.from_numpy(rng.standard_normal(3 * 4))
    x = torch.from_numpy(rng.standard_normal((16, 5 * 6)))
    return {"w": w, "b": b, "x": x}


def test_seed001_exact_at_unfolding_ranks(seed001):
    W = seed001["w"].reshape(3, 4, 5, 6)
    assert unfolding_ranks(W) == max_ranks(W.shape) == (3, 12, 6)
    cores = tt_svd(W, ranks=[3, 12, 6])
    assert [tuple(c.shape) for c in cores] == [(1, 3, 3), (3, 4, 12), (12, 5, 6), (6, 6, 1)]
    assert sum(c.numel() for c in cores) + 12 == 561           # the seed's parameter count
    assert rel_err(cores, W) < 1e-14
    assert tt_ranks(tt_svd(W)) == (3, 12, 6)                   # default: numerical ranks
    # the TT-layer forward of the seed: einsum over the cores == x @ w.T + b
    x, b = seed001["x"], seed001["b"]
    y = torch.einsum("Nkl,aic,cjd,dke,elz->Nij", x.reshape(16, 5, 6), *cores) + b.reshape(3, 4)
    torch.testing.assert_close(y.reshape(16, 12), x @ seed001["w"].T + b, rtol=0, atol=1e-12)


def test_seed001_error_grows_as_middle_rank_drops(seed001):
    w = seed001["w"]
    W = w.reshape(3, 4, 5, 6)
    sigma = torch.linalg.svdvals(w)                            # unfolding 2 of W is w itself
    errors = []
    for r in range(12, 1, -1):
        err = fnorm(tt_to_dense(tt_svd(W, ranks=[3, r, 6])) - W)
        # bonds 1 and 3 are exact, so the error is the discarded tail of w's spectrum
        assert err == pytest.approx(fnorm(sigma[r:]), rel=1e-10, abs=1e-12)
        errors.append(err)
    assert errors[0] < 1e-12
    assert all(a < b for a, b in zip(errors, errors[1:])), errors
    assert errors[1] == pytest.approx(2.448922, abs=1e-6)     # rank 11: sigma_12 of w


def test_seed001_tt_matrix_loads_into_tt_linear(seed001):
    w, b, x = seed001["w"], seed001["b"], seed001["x"]
    cores = tt_matrix(w, in_shape=[5, 6], out_shape=[3, 4])   # exact: unfolding rank 15
    assert tt_ranks(cores) == (15,)
    spec = tt_linear_spec(cores)
    assert "ranks: [15]" in spec
    module = tngraph.compile(spec, dtype="float64", cache=False)
    module.load_state_dict(tt_linear_state_dict(cores, b))
    torch.testing.assert_close(module(x), x @ w.T + b, rtol=0, atol=1e-12)
    torch.testing.assert_close(module.dense(), w.T.reshape(5, 6, 3, 4), rtol=0, atol=1e-12)


@pytest.mark.parametrize("in_shape, out_shape, trunc", [
    ([6], [4], {}),
    ([5, 6], [3, 4], {"ranks": [6]}),
    ([4, 2, 3], [2, 3, 2], {"eps": 1e-1}),
    ([4, 2, 3], [2, 3, 2], {"eps": 1e-6}),
    ([2, 1, 4], [3, 2, 1], {"max_rank": 2}),
])
def test_tt_matrix_roundtrip_through_compile(in_shape, out_shape, trunc):
    gen = torch.Generator().manual_seed(len(in_shape) + len(trunc))
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    w = torch.randn(n_out, n_in, generator=gen, dtype=F64)
    b = torch.randn(n_out, generator=gen, dtype=F64)
    x = torch.randn(9, n_in, generator=gen, dtype=F64)
    cores = tt_matrix(w, in_shape, out_shape, **trunc)
    assert [tuple(c.shape[1:3]) for c in cores] == list(zip(in_shape, out_shape))
    w_tt = tt_matrix_to_dense(cores)
    if "eps" in trunc:
        assert fnorm(w_tt - w) <= trunc["eps"] * fnorm(w) * (1 + 1e-9)
    if "ranks" in trunc:
        assert list(tt_ranks(cores)) == trunc["ranks"]
    if "max_rank" in trunc:
        assert max(tt_ranks(cores)) <= trunc["max_rank"]
    module = tngraph.compile(tt_linear_spec(cores), dtype="float64", cache=False)
    module.load_state_dict(tt_linear_state_dict(cores, b))
    with torch.no_grad():
        y = module(x)
    torch.testing.assert_close(y, x @ w_tt.T + b, rtol=0, atol=1e-11)
    # and the stated accuracy against the original layer
    bound = fnorm(w_tt - w) * float(torch.linalg.matrix_norm(x, ord=2))
    assert fnorm(y - (x @ w.T + b)) <= bound * (1 + 1e-9) + 1e-11


def test_tt_linear_state_dict_without_bias():
    w = torch.randn(6, 8, dtype=F64)
    cores = tt_matrix(w, [2, 4], [3, 2], ranks=[4])
    state = tt_linear_state_dict(cores)
    assert set(state) == {"tensors.G0", "tensors.G1"}
    assert tuple(state["tensors.G0"].shape) == (2, 3, 4)      # (i, o, r)
    assert tuple(state["tensors.G1"].shape) == (4, 4, 2)      # (l, i, o)
    module = tngraph.compile(tt_linear_spec(cores, bias=False), dtype="float64", cache=False)
    module.load_state_dict(state)
    x = torch.randn(3, 8, dtype=F64)
    torch.testing.assert_close(module(x), x @ tt_matrix_to_dense(cores).T, rtol=0, atol=1e-12)
    with pytest.raises(DecompositionError, match="bias has 5 values"):
        tt_linear_state_dict(cores, torch.zeros(5))


def test_tt_matrix_rejects_bad_shapes():
    with pytest.raises(DecompositionError, match=r"need \(12, 30\)"):
        tt_matrix(torch.zeros(30, 12), [5, 6], [3, 4])
    with pytest.raises(DecompositionError, match="same number of factors"):
        tt_matrix(torch.zeros(12, 30), [30], [3, 4])
    with pytest.raises(DecompositionError, match="TT-matrix cores"):
        tt_matrix_to_dense(tt_svd(torch.zeros(2, 3)))


# ---------------------------------------------------------------------------------------------
# property tests: random tensors of random shapes


@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-6])
@pytest.mark.parametrize("seed", range(8))
def test_tt_svd_eps_bound_and_ranks(seed, eps):
    a = random_case(seed)
    cores = tt_svd(a, eps=eps)
    assert rel_err(cores, a) <= eps * (1 + 1e-9) + 1e-13
    ranks = tt_ranks(cores)
    assert all(r <= b for r, b in zip(ranks, max_ranks(a.shape)))
    assert all(r <= u for r, u in zip(ranks, unfolding_ranks(a)))
    for c in cores[:-1]:                                       # left-orthonormal cores
        m = c.reshape(-1, c.shape[-1])
        torch.testing.assert_close(m.T @ m, torch.eye(m.shape[1], dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", range(8))
def test_tt_svd_exact_at_unfolding_ranks(seed):
    a = random_case(seed)
    ranks = unfolding_ranks(a)
    cores = tt_svd(a, ranks=list(ranks))
    assert tt_ranks(cores) == ranks
    assert rel_err(cores, a) < 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_round_of_sum_is_twice_at_same_ranks(seed):
    a = tt_svd(random_case(seed + 100), eps=1e-1)
    rounded = tt_round(tt_add(a, a), eps=1e-10)
    assert tt_ranks(rounded) == tt_ranks(a)
    dense = tt_to_dense(a)
    assert fnorm(tt_to_dense(rounded) - 2 * dense) <= 1e-9 * fnorm(dense)


@pytest.mark.parametrize("eps", [1e-1, 1e-3, 1e-6])
@pytest.mark.parametrize("seed", range(4))
def test_tt_round_eps_bound(seed, eps):
    shape = random_shape(seed + 200, max_size=2000)
    rng = random.Random(seed)
    ranks = tuple(rng.randint(1, 7) for _ in range(len(shape) - 1))
    cores = random_tt(shape, ranks, seed)                      # redundant ranks on purpose
    a = tt_to_dense(cores)
    rounded = tt_round(cores, eps=eps)
    assert rel_err(rounded, a) <= eps * (1 + 1e-9) + 1e-13
    assert all(r <= b for r, b in zip(tt_ranks(rounded), max_ranks(shape)))
    assert all(r <= b for r, b in zip(tt_ranks(rounded), ranks))


def test_tt_round_max_rank_and_matrix_cores():
    cores = random_tt((3, 4, 5, 2), (6, 7, 2), seed=1)
    assert max(tt_ranks(tt_round(cores, max_rank=2))) == 2
    mpo = tt_matrix(torch.randn(24, 24, dtype=F64), [2, 3, 4], [4, 3, 2])
    doubled = tt_round(tt_add(mpo, mpo))
    assert all(c.dim() == 4 for c in doubled)
    assert tt_ranks(doubled) == tt_ranks(mpo)
    torch.testing.assert_close(tt_matrix_to_dense(doubled), 2 * tt_matrix_to_dense(mpo))


# ---------------------------------------------------------------------------------------------
# arithmetic


@pytest.mark.parametrize("shape, ra, rb", [
    ((4,), (), ()),
    ((3, 4), (2,), (3,)),
    ((2, 3, 1, 4), (2, 3, 2), (1, 2, 1)),
])
def test_add_and_hadamard(shape, ra, rb):
    a, b = random_tt(shape, ra, seed=1), random_tt(shape, rb, seed=2)
    da, db = tt_to_dense(a), tt_to_dense(b)
    s, h = tt_add(a, b), tt_hadamard(a, b)
    assert tt_ranks(s) == tuple(x + y for x, y in zip(ra, rb))
    assert tt_ranks(h) == tuple(x * y for x, y in zip(ra, rb))
    torch.testing.assert_close(tt_to_dense(s), da + db)
    torch.testing.assert_close(tt_to_dense(h), da * db)
    torch.testing.assert_close(tt_dot(a, b), (da * db).sum())
    torch.testing.assert_close(tt_norm(a), torch.linalg.vector_norm(da))


def test_arithmetic_rejects_mismatched_trains():
    a = random_tt((2, 3), (2,), seed=0)
    with pytest.raises(DecompositionError, match="different mode shapes"):
        tt_add(a, random_tt((3, 2), (2,), seed=0))
    with pytest.raises(DecompositionError, match="dtype/device"):
        tt_hadamard(a, [c.float() for c in a])
    with pytest.raises(DecompositionError, match="ends with rank"):
        tt_to_dense([torch.ones(1, 2, 3), torch.ones(2, 2, 1)])
    with pytest.raises(DecompositionError, match="start and end with rank 1"):
        tt_to_dense([torch.ones(2, 2, 2)])


# ---------------------------------------------------------------------------------------------
# ranks: clipping and rejection


def test_max_rank_clips():
    a = torch.randn(4, 4, 4, 4, dtype=F64)
    assert tt_ranks(tt_svd(a, max_rank=3)) == (3, 3, 3)
    assert tt_ranks(tt_svd(a, max_rank=100)) == (4, 16, 4)
    assert tt_ranks(tt_svd(a, eps=1e-12, max_rank=5)) == (4, 5, 4)


@pytest.mark.parametrize("ranks, message", [
    ([3, 13, 6], r"bond 1: rank 13 > 12 \(the rank of unfolding"),
    ([4, 12, 6], r"bond 0: rank 4 > 3"),
    (7, r"bond 0: rank 7 > 3.*bond 2: rank 7 > 6"),
    ([1, 5, 6], r"bond 1: rank 5 > ranks\[0\] \* n_1 = 4"),
])
def test_ranks_above_unfolding_ranks_are_rejected(ranks, message):
    with pytest.raises(DecompositionError, match=message) as info:
        tt_svd(torch.randn(3, 4, 5, 6), ranks=ranks)
    assert isinstance(info.value, TNGraphError)
    assert "hint: the largest ranks of shape (3, 4, 5, 6) are [3, 12, 6]" in str(info.value)


@pytest.mark.parametrize("ranks, message", [
    ([3, 12], r"ranks needs 3 values"),
    ([3, 0, 6], r"integers >= 1"),
])
def test_malformed_ranks(ranks, message):
    with pytest.raises(DecompositionError, match=message):
        tt_svd(torch.randn(3, 4, 5, 6), ranks=ranks)


@pytest.mark.parametrize("kwargs, message", [
    ({"ranks": [2], "eps": 0.1}, "not both"),
    ({"eps": -1.0}, "eps must be"),
    ({"eps": float("nan")}, "eps must be"),
    ({"max_rank": 0}, "max_rank must be"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(DecompositionError, match=message):
        tt_svd(torch.randn(3, 4), **kwargs)


def test_scalar_rejected_and_complex_decomposed_and_applied():
    with pytest.raises(DecompositionError, match="at least one axis"):
        tt_svd(torch.tensor(1.0))
    matrix = torch.randn(2, 2, dtype=torch.complex64)
    cores = tt_svd(matrix)                                        # complex: decomposed
    assert cores[0].dtype == torch.complex64
    operator = torch.eye(4, dtype=torch.complex64) * (1 + 2j)
    applied = tngraph.decompose.tt_matvec(tt_matrix(operator, [2, 2], [2, 2]), cores)
    assert applied[0].dtype == torch.complex64
    torch.testing.assert_close(tngraph.decompose.tt_to_dense(applied).reshape(4),
                               (1 + 2j) * matrix.reshape(4))


# ---------------------------------------------------------------------------------------------
# small d, size-1 modes, dtypes, devices


@pytest.mark.parametrize("shape", [(5,), (1,), (3, 4), (1, 3, 1, 2), (2, 1), (1, 1, 1)])
def test_small_d_and_size_one_modes(shape):
    a = torch.randn(shape, dtype=F64) + 1.0
    for cores in (tt_svd(a), tt_svd(a, eps=1e-3), tt_svd(a, max_rank=1)):
        assert len(cores) == len(shape)
        assert cores[0].shape[0] == cores[-1].shape[-1] == 1
    assert rel_err(tt_svd(a), a) < 1e-14
    assert rel_err(tt_svd(a, eps=1e-3), a) <= 1e-3
    assert rel_err(tt_round(tt_add(tt_svd(a), tt_svd(a)), eps=1e-12), 2 * a) < 1e-12


@pytest.mark.parametrize("dtype, device", DTYPE_DEVICES)
def test_dtypes_and_devices(dtype, device):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(4, 5, 6, 3, generator=gen, dtype=dtype).to(device)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for eps in (1e-1, 1e-3):
        cores = tt_svd(a, eps=eps)
        assert all(c.dtype == dtype and c.device.type == device for c in cores)
        assert rel_err(cores, a) <= eps + tol
        rounded = tt_round(tt_add(cores, cores), eps=eps)
        assert all(c.dtype == dtype and c.device.type == device for c in rounded)
        assert rel_err(rounded, 2 * tt_to_dense(cores)) <= eps + tol
    assert rel_err(tt_svd(a), a) < 10 * tol
    w = a.reshape(20, 18)
    mpo = tt_matrix(w, [3, 6], [4, 5])
    assert mpo[0].device.type == device
    assert fnorm(tt_matrix_to_dense(mpo) - w) < 10 * tol * fnorm(w)
    ent = entanglement_entropy(tt_svd(a))
    assert ent.dtype == dtype and bool(torch.isfinite(ent).all())


# ---------------------------------------------------------------------------------------------
# degenerate spectra, non-finite input, SVD failures


@pytest.mark.parametrize("tensor", [
    torch.zeros(3, 4, 5, dtype=F64),
    torch.eye(8, dtype=F64).reshape(2, 2, 2, 2, 2, 2),                   # flat spectrum
    torch.outer(torch.arange(1.0, 7.0), torch.ones(6)).to(F64).reshape(2, 3, 6),   # rank 1
    torch.ones(2, 2, 2, 2, dtype=torch.float32),
], ids=["zeros", "identity", "rank1", "ones32"])
def test_degenerate_spectra_give_finite_results(tensor):
    for cores in (tt_svd(tensor), tt_svd(tensor, eps=1e-2), tt_svd(tensor, max_rank=1)):
        assert all(bool(torch.isfinite(c).all()) for c in cores)
    cores = tt_svd(tensor)
    torch.testing.assert_close(tt_to_dense(cores), tensor, rtol=0, atol=1e-6)
    rounded = tt_round(tt_add(cores, cores), eps=1e-6)
    assert all(bool(torch.isfinite(c).all()) for c in rounded)
    torch.testing.assert_close(tt_to_dense(rounded), 2 * tensor, rtol=0, atol=1e-5)
    if fnorm(tensor) > 0:
        assert bool(torch.isfinite(entanglement_entropy(cores)).all())
    assert tt_ranks(tt_svd(torch.zeros(3, 4, 5))) == (1, 1)


def test_zero_state_entropy_is_an_error():
    with pytest.raises(DecompositionError, match="zero norm"):
        entanglement_entropy(tt_svd(torch.zeros(2, 2, 2)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(bad):
    a = torch.randn(3, 4, 5)
    a[1, 2, 3] = bad
    with pytest.raises(DecompositionError, match="non-finite"):
        tt_svd(a)
    with pytest.raises(DecompositionError, match="non-finite"):
        tt_matrix(a.reshape(12, 5), [5], [12])
    cores = tt_svd(torch.randn(3, 4, 5))
    cores[1][0, 0, 0] = bad
    with pytest.raises(DecompositionError, match=r"cores\[1\] has non-finite"):
        tt_round(cores)


def test_svd_failure_falls_back_to_float64_cpu(monkeypatch):
    real = torch.linalg.svd
    calls = {"n": 0}

    def flaky(matrix, *args, **kwargs):
        calls["n"] += 1
        if matrix.dtype == torch.float32:
            raise torch.linalg.LinAlgError("simulated convergence failure")
        return real(matrix, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    a = torch.randn(3, 4, 5)
    with pytest.warns(RuntimeWarning, match="retrying in float64 on the CPU"):
        cores = tt_svd(a)
    assert all(c.dtype == torch.float32 for c in cores)
    assert rel_err(cores, a) < 1e-5


def test_svd_that_always_fails_is_a_clear_error(monkeypatch):
    def broken(matrix, *args, **kwargs):
        raise torch.linalg.LinAlgError("simulated")

    monkeypatch.setattr(torch.linalg, "svd", broken)
    with pytest.warns(RuntimeWarning), \
            pytest.raises(DecompositionError, match="failed even in float64"):
        tt_svd(torch.randn(3, 4))


# ---------------------------------------------------------------------------------------------
# states as MPS, QTT, entanglement


def basis_state(bits: str) -> torch.Tensor:
    v = torch.zeros(2 ** len(bits), dtype=F64)
    v[int(bits, 2)] = 1.0
    return v


def test_product_state_has_rank_one_and_no_entanglement():
    zero = basis_state("000000")
    cores = tt_svd(zero.reshape([2] * 6))
    assert tt_ranks(cores) == (1,) * 5
    assert tt_ranks(qtt(zero)) == (1,) * 5
    torch.testing.assert_close(tt_to_dense(cores).reshape(-1), zero)
    torch.testing.assert_close(entanglement_entropy(cores), torch.zeros(5, dtype=F64))
    plus = torch.full((2 ** 6,), 2 ** -3, dtype=F64)            # |+>^6: also a product state
    torch.testing.assert_close(entanglement_entropy(qtt(plus)), torch.zeros(5, dtype=F64),
                               rtol=0, atol=1e-12)


def test_ghz_has_rank_two_and_ln2_entropy():
    ghz = (basis_state("000000") + basis_state("111111")) / math.sqrt(2)
    cores = qtt(ghz)
    assert tt_ranks(cores) == (2,) * 5
    torch.testing.assert_close(tt_to_dense(cores).reshape(-1), ghz)
    ln2 = torch.full((5,), math.log(2), dtype=F64)
    torch.testing.assert_close(entanglement_entropy(cores), ln2)
    # unnormalised and in a redundant (rank 4) representation: same entropy
    padded = tt_add(cores, cores)
    torch.testing.assert_close(entanglement_entropy(padded), ln2)


@pytest.mark.parametrize("seed", range(3))
def test_bond_spectra_match_dense_unfoldings(seed):
    gen = torch.Generator().manual_seed(seed)
    state = torch.randn(2 ** 7, generator=gen, dtype=F64)
    cores = qtt(state, max_rank=4)                             # truncated: a real MPS
    dense = tt_to_dense(cores)
    for k, s in enumerate(bond_spectra(cores)):
        ref = torch.linalg.svdvals(dense.reshape(2 ** (k + 1), -1))
        torch.testing.assert_close(s, ref[:len(s)], rtol=0, atol=1e-12)
        assert float(ref[len(s):].abs().sum()) < 1e-11
    ent = entanglement_entropy(cores)
    assert bool((ent <= torch.log(torch.tensor(tt_ranks(cores), dtype=F64)) + 1e-12).all())


@pytest.mark.parametrize("f, max_qtt_rank", [
    (lambda x: torch.sin(10 * x + 0.3), 2),
    (lambda x: torch.exp(-3 * x), 1),
    (lambda x: 2 - x + 3 * x ** 2, 3),                         # degree-2 polynomial
])
def test_qtt_ranks_of_sampled_functions(f, max_qtt_rank):
    x = torch.linspace(0, 1, 2 ** 10, dtype=F64)
    values = f(x)
    cores = qtt(values, eps=1e-10)
    assert len(cores) == 10
    assert max(tt_ranks(cores)) <= max_qtt_rank
    assert fnorm(tt_to_dense(cores).reshape(-1) - values) <= 1e-10 * fnorm(values)


def test_qtt_rejects_wrong_length():
    with pytest.raises(DecompositionError, match="base\\*\\*d values"):
        qtt(torch.randn(1000))
    assert len(qtt(torch.randn(3 ** 4), base=3)) == 4
