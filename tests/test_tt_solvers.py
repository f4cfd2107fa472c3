"""tngraph.decompose.solvers: tt_matvec, tt_eigh (two-site DMRG) and tt_solve, checked against
dense products, eigvalsh / a sparse eigensolver and dense solves at small sizes."""

from __future__ import annotations

import math

import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from tngraph.decompose import (
    DecompositionError,
    heisenberg_mpo,
    laplacian_mpo,
    tt_add,
    tt_eigh,
    tt_matrix,
    tt_matrix_to_dense,
    tt_matvec,
    tt_ranks,
    tt_solve,
    tt_svd,
    tt_to_dense,
)

F64 = torch.float64


def test_laplacian_mpo_is_the_kronecker_sum_of_second_differences() -> None:
    n, h = 4, 1.0 / 5
    lap = (2 * torch.eye(n, dtype=F64) - torch.diag(torch.ones(n - 1, dtype=F64), 1)
           - torch.diag(torch.ones(n - 1, dtype=F64), -1)) / h ** 2
    eye = torch.eye(n, dtype=F64)
    expected = (torch.kron(torch.kron(lap, eye), eye) + torch.kron(torch.kron(eye, lap), eye)
                + torch.kron(torch.kron(eye, eye), lap))
    torch.testing.assert_close(tt_matrix_to_dense(laplacian_mpo(3, n)), expected)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: heisenberg_mpo(1), r"n \(the number of spins\) must be an integer >= 2, got 1"),
    (lambda: laplacian_mpo(1, 4), r"d \(the number of axes\) must be an integer >= 2"),
    (lambda: laplacian_mpo(3, 0), r"n \(the interior points per axis\) must be an integer >= 1"),
])
def test_operator_sizes_are_checked(call, message: str) -> None:
    with pytest.raises(DecompositionError, match=message):
        call()


@pytest.fixture(autouse=True)
def one_thread():
    """The dense oracles (eigvalsh of 1024 x 1024, ...) on one thread: on a shared 2-core
    machine a second thread made them 10x slower; the sweeps use one thread anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def heisenberg_sparse(n: int) -> sp.csr_matrix:
    """The same Hamiltonian from Kronecker products (an independent oracle)."""
    sx = sp.csr_matrix([[0, 0.5], [0.5, 0]])
    sy_sq = sp.csr_matrix([[0, -0.5], [0.5, 0]])          # S^y = i * this
    sz = sp.csr_matrix([[0.5, 0], [0, -0.5]])

    def at(op: sp.csr_matrix, i: int) -> sp.csr_matrix:
        return sp.kron(sp.kron(sp.identity(2 ** i), op), sp.identity(2 ** (n - i - 1)))

    h = sp.csr_matrix((2 ** n, 2 ** n))
    for i in range(n - 1):
        h = h + at(sx, i) @ at(sx, i + 1) - at(sy_sq, i) @ at(sy_sq, i + 1) \
            + at(sz, i) @ at(sz, i + 1)
    return h.tocsr()


def random_symmetric_tt_matrix(shape: list[int], seed: int) -> tuple[list[torch.Tensor],
                                                                      torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = math.prod(shape)
    m = torch.randn(size, size, generator=gen, dtype=F64)
    dense = m + m.T
    return tt_matrix(dense, shape, shape), dense


def random_hermitian_tt_matrix(shape: list[int], rank: int, dtype: torch.dtype, seed: int
                               ) -> list[torch.Tensor]:
    """``B + B^H`` for random TT-matrix cores ``B`` of rank ``rank`` (ranks 2 * rank): the
    adjoint swaps the (n_in, n_out) axes of each core and conjugates it."""
    gen = torch.Generator().manual_seed(seed)
    bounds = [1] + [rank] * (len(shape) - 1) + [1]
    wide = torch.complex128 if dtype.is_complex else F64
    b = [torch.randn(bounds[k], n, n, bounds[k + 1], generator=gen, dtype=wide).to(dtype)
         for k, n in enumerate(shape)]
    return tt_add(b, [c.transpose(1, 2).conj() for c in b])


# ---------------------------------------------------------------------------------------------
# tt_matvec


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matvec_is_the_dense_product(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 60, generator=gen, dtype=F64)          # 60 -> 24
    a = tt_matrix(w, in_shape=[3, 4, 5], out_shape=[2, 3, 4], max_rank=7)
    x = torch.randn(3, 4, 5, generator=gen, dtype=F64)
    y = tt_matvec(a, tt_svd(x))
    assert [tuple(c.shape)[1] for c in y] == [2, 3, 4]
    expected = tt_matrix_to_dense(a) @ x.reshape(-1)
    assert torch.allclose(tt_to_dense(y).reshape(-1), expected)
    assert tt_ranks(y) == tuple(ra * rx for ra, rx in zip(tt_ranks(a), tt_ranks(tt_svd(x))))


def test_matvec_rounds_when_asked() -> None:
    a = laplacian_mpo(4, 5)
    x = tt_svd(torch.randn(5, 5, 5, 5, generator=torch.Generator().manual_seed(3), dtype=F64),
               max_rank=3)
    exact = tt_to_dense(tt_matvec(a, x))
    rounded = tt_matvec(a, x, eps=1e-3)
    capped = tt_matvec(a, x, max_rank=2)
    assert max(tt_ranks(capped)) == 2 and max(tt_ranks(rounded)) <= 6
    assert float((tt_to_dense(rounded) - exact).norm() / exact.norm()) <= 1e-3


C128 = torch.complex128


@pytest.mark.parametrize(("op_dtype", "vec_dtype"), [
    (C128, C128), (C128, F64), (F64, C128), (torch.complex64, torch.complex64)])
def test_matvec_complex_is_the_dense_product(op_dtype: torch.dtype, vec_dtype: torch.dtype
                                             ) -> None:
    """No conjugation; a real side meets a complex one of the same precision."""
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(24, 60, generator=gen, dtype=C128)                     # 60 -> 24
    w = (w if op_dtype.is_complex else w.real).to(op_dtype)
    a = tt_matrix(w, in_shape=[3, 4, 5], out_shape=[2, 3, 4], max_rank=7)
    x = torch.randn(3, 4, 5, generator=gen, dtype=C128)
    x = (x if vec_dtype.is_complex else x.real).to(vec_dtype)
    y = tt_matvec(a, tt_svd(x))
    expected = tt_matrix_to_dense(a).to(y[0].dtype) @ x.reshape(-1).to(y[0].dtype)
    assert y[0].dtype == torch.promote_types(op_dtype, vec_dtype)
    rtol = 1e-5 if op_dtype == torch.complex64 else 1e-12
    assert float((tt_to_dense(y).reshape(-1) - expected).norm() / expected.norm()) < rtol
    rounded = tt_matvec(a, tt_svd(x), max_rank=3)
    assert max(tt_ranks(rounded)) == 3 and rounded[0].is_complex()
    other = F64 if op_dtype == torch.complex64 else torch.float32     # another precision
    with pytest.raises(DecompositionError, match=f"vector_cores is {other}"):
        tt_matvec(a, [c.real.to(other) for c in tt_svd(x)])


@pytest.mark.parametrize(("make", "match"), [
    (lambda a, x: tt_matvec(a, x[:2]), "vector_cores has modes"),
    (lambda a, x: tt_matvec(a, [c.float() for c in x]), "vector_cores is torch.float32"),
    (lambda a, x: tt_matvec(x, x), r"matrix_cores must have shape \(r, n_in, n_out, r'\)"),
    (lambda a, x: tt_matvec(a, [c[:, :2] for c in x]), r"vector_cores has modes \[2, 2, 2\]"),
    (lambda a, x: tt_matvec(a, [c[..., None] for c in x]),
     r"vector_cores must have shape \(r, n, r'\)"),
    (lambda a, x: tt_matvec([a[0] * math.nan, *a[1:]], x), "matrix_cores.0. has non-finite"),
])
def test_matvec_errors(make, match: str) -> None:
    a = laplacian_mpo(3, 3)
    x = tt_svd(torch.ones(3, 3, 3, dtype=F64))
    with pytest.raises(DecompositionError, match=match):
        make(a, x)


# ---------------------------------------------------------------------------------------------
# tt_eigh


def test_eigh_heisenberg_10_sites_against_dense_eigvalsh() -> None:
    mpo = heisenberg_mpo(10)
    dense = tt_matrix_to_dense(mpo)
    assert torch.allclose(dense, torch.from_numpy(heisenberg_sparse(10).toarray()))
    exact = float(torch.linalg.eigvalsh(dense)[0])
    result = tt_eigh(mpo, max_rank=32, tol=1e-12)
    assert result.converged and abs(result.eigenvalue - exact) < 1e-9
    value, vector = result                                   # unpacks as a pair
    v = tt_to_dense(vector).reshape(-1)
    assert float(v.norm()) == pytest.approx(1.0)
    assert float((dense @ v - value * v).norm()) < 1e-5
    # the energies fall sweep by sweep (up to the local solver's accuracy)
    assert all(b <= a + 1e-9 for a, b in zip(result.energies, result.energies[1:]))


def test_eigh_heisenberg_12_sites_against_a_sparse_solver() -> None:
    exact = float(spla.eigsh(heisenberg_sparse(12), k=1, which="SA", tol=1e-12)[0][0])
    result = tt_eigh(heisenberg_mpo(12), max_rank=24, tol=1e-10)
    assert abs(result.eigenvalue - exact) < 1e-7 and max(result.ranks) <= 24
    assert result.eigenvalue >= exact - 1e-10                # variational: an upper bound


@pytest.mark.parametrize(("shape", "seed"), [([4, 4], 0), ([2, 3, 4], 1), ([3, 3, 3], 2)])
def test_eigh_random_symmetric_matrix(shape: list[int], seed: int) -> None:
    cores, dense = random_symmetric_tt_matrix(shape, seed)
    exact = float(torch.linalg.eigvalsh(dense)[0])
    value, vector = tt_eigh(cores, max_rank=64, tol=1e-12)
    assert value == pytest.approx(exact, abs=1e-9)
    v = tt_to_dense(vector).reshape(-1)
    assert float((dense @ v - value * v).norm()) < 1e-5 * abs(value)


@pytest.mark.parametrize("local", ["dense", "lanczos"])
@pytest.mark.parametrize(("dtype", "shape", "seed"), [
    (F64, [2, 3, 2, 3, 2], 5), (C128, [2, 3, 2, 3, 2], 6), (C128, [2, 2, 2, 2, 2, 2], 7),
    (torch.complex64, [3, 2, 2, 3], 8)])
def test_eigh_random_hermitian_tt_matrix(dtype: torch.dtype, shape: list[int], seed: int,
                                         local: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """B + B^H of bond 2-3 against eigvalsh of its dense matrix; the eigenvector's Rayleigh
    quotient and residual. max_rank covers the exact ranks: the error is the sweeps'."""
    from tngraph.decompose import solvers

    if local == "lanczos":
        monkeypatch.setattr(solvers, "DENSE_LIMIT", 0)        # every pair through Lanczos
    single = dtype == torch.complex64
    cores = random_hermitian_tt_matrix(shape, 2 + seed % 2, dtype, seed)
    dense = tt_matrix_to_dense(cores).to(C128)                  # the oracle in double
    assert torch.allclose(dense, dense.mH, atol=1e-5 if single else 1e-12)
    exact = float(torch.linalg.eigvalsh(dense)[0])
    result = tt_eigh(cores, max_rank=12, tol=1e-7 if single else 1e-12)
    value, vector = result
    assert isinstance(value, float) and vector[0].dtype == dtype
    scale = float(torch.linalg.matrix_norm(dense, ord=2))
    assert abs(value - exact) <= (1e-4 if single else 1e-10) * scale
    v = tt_to_dense(vector).reshape(-1).to(dense.dtype)
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-5 if single else 1e-12)
    rayleigh = torch.vdot(v, dense @ v)
    assert abs(float(rayleigh.imag)) <= 1e-5 * scale and \
        float(rayleigh.real) == pytest.approx(value, abs=(1e-4 if single else 1e-10) * scale)
    assert float((dense @ v - value * v).norm()) <= (1e-2 if single else 1e-5) * scale


def test_eigh_refuses_a_non_hermitian_complex_operator() -> None:
    """A random complex operator, and a complex symmetric one (A = A^T, not A^H)."""
    cores = random_hermitian_tt_matrix([2, 3, 2], 2, C128, 0)
    for bad in (tt_matrix(torch.randn(12, 12, dtype=C128), [2, 3, 2], [2, 3, 2]),
                [cores[0] * 1j, *cores[1:]]):
        with pytest.raises(DecompositionError, match=r"the operator is not Hermitian: "
                           r"\|\|A - A\^H\|\| / \|\|A\|\| = ") as info:
            tt_eigh(bad, max_rank=4)
        assert "transpose(1, 2).conj()" in info.value.hint
    value, _ = tt_eigh(cores, max_rank=4)                    # the Hermitian one passes
    assert math.isfinite(value)


def test_eigh_max_bond_is_an_alias_and_the_seed_makes_it_reproducible() -> None:
    mpo = heisenberg_mpo(8)
    a = tt_eigh(mpo, max_rank=6, seed=3)
    b = tt_eigh(mpo, max_bond=6, seed=3)
    assert a.energies == b.energies and all(torch.equal(x, y) for x, y in zip(a.vector,
                                                                              b.vector))
    assert max(a.ranks) == 6


def test_eigh_of_one_site_and_a_product_operator() -> None:
    m = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=F64)
    value, vector = tt_eigh([m.reshape(1, 2, 2, 1)], max_rank=1)
    assert value == pytest.approx(1.0) and tt_to_dense(vector).abs().tolist() == \
        pytest.approx([2 ** -0.5] * 2)
    z = torch.diag(torch.tensor([1.0, -1.0], dtype=F64)).reshape(1, 2, 2, 1)
    result = tt_eigh([z, z, z], max_rank=3)
    assert result.eigenvalue == pytest.approx(-1.0) and result.ranks == (1, 1)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: tt_eigh(heisenberg_mpo(4)), "tt_eigh needs max_rank"),
    (lambda: tt_eigh(heisenberg_mpo(4), max_rank=4, max_bond=8),
     "max_rank = 4 and max_bond = 8 disagree"),
    (lambda: tt_eigh(heisenberg_mpo(4), max_rank=0), "max_rank must be an integer >= 1"),
    (lambda: tt_eigh(heisenberg_mpo(4), max_rank=4, sweeps=0), "sweeps must be an integer"),
    (lambda: tt_eigh(heisenberg_mpo(4), max_rank=4, tol=-1.0), "tol must be a finite number"),
    (lambda: tt_eigh(heisenberg_mpo(4), max_rank=4, eps=math.nan), "eps must be a finite"),
    (lambda: tt_eigh(tt_matrix(torch.randn(9, 9), [3, 3], [3, 3]), max_rank=4),
     r"the operator is not symmetric: \|\|A - A\^T\|\| / \|\|A\|\| = "),
    (lambda: tt_eigh(tt_matrix(torch.randn(6, 9), [3, 3], [2, 3]), max_rank=4),
     "maps 3 to 2 values; the operator must be square"),
    (lambda: tt_eigh([torch.ones(2, 2, 2, 1)], max_rank=4), "must start and end with rank 1"),
])
def test_eigh_errors(call, match: str) -> None:
    with pytest.raises(DecompositionError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# tt_solve


@pytest.mark.parametrize(("d", "n"), [(3, 6), (4, 5)])
def test_solve_poisson_against_a_dense_solve(d: int, n: int) -> None:
    a = laplacian_mpo(d, n)
    gen = torch.Generator().manual_seed(d)
    rhs = [torch.rand(1, n, 1, generator=gen, dtype=F64) for _ in range(d)]   # rank-1 source
    result = tt_solve(a, rhs, max_rank=16, tol=1e-10)
    dense_a = tt_matrix_to_dense(a)
    b = tt_to_dense(rhs).reshape(-1)
    x = torch.linalg.solve(dense_a, b)
    got = tt_to_dense(result.solution).reshape(-1)
    assert result.converged and result.residual <= 1e-10
    assert float((got - x).norm() / x.norm()) < 1e-9
    # the reported residual is the dense one
    assert result.residual == pytest.approx(float((dense_a @ got - b).norm() / b.norm()),
                                            rel=1e-3, abs=1e-13)
    solution, residual = result
    assert residual == result.residuals[-1] and solution is result.solution


@pytest.mark.parametrize("local", ["cholesky", "cg"])
@pytest.mark.parametrize(("dtype", "rhs_dtype"), [
    (C128, C128), (F64, C128), (C128, F64), (torch.complex64, torch.complex64)])
def test_solve_hermitian_positive_definite_against_a_dense_solve(
        dtype: torch.dtype, rhs_dtype: torch.dtype, local: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A = H + shift I (H = B + B^H of bond 2, shifted to eigenvalues >= 1) and a rank-2 b."""
    from tngraph.decompose import solvers

    if local == "cg":
        monkeypatch.setattr(solvers, "DENSE_LIMIT", 0)        # every pair through CG
    single = dtype == torch.complex64
    shape = [2, 3, 2, 3, 2]
    h = random_hermitian_tt_matrix(shape, 2, dtype, 9)
    shift = 1.0 - float(torch.linalg.eigvalsh(tt_matrix_to_dense(h).to(C128))[0])
    eye = [torch.eye(n, dtype=dtype).reshape(1, n, n, 1) for n in shape]
    a = tt_add(h, [shift * eye[0], *eye[1:]])
    gen = torch.Generator().manual_seed(10)
    b = torch.randn(*shape, generator=gen, dtype=C128)
    b = tt_svd((b if rhs_dtype.is_complex else b.real).to(rhs_dtype), max_rank=2)
    result = tt_solve(a, b, max_rank=12, tol=1e-4 if single else 1e-11)
    assert isinstance(result.residual, float) and result.solution[0].dtype == \
        torch.promote_types(dtype, rhs_dtype)
    dense_a = tt_matrix_to_dense(a).to(C128)
    dense_b = tt_to_dense(b).reshape(-1).to(C128)
    x = torch.linalg.solve(dense_a, dense_b)
    got = tt_to_dense(result.solution).reshape(-1).to(C128)
    assert result.converged and result.residual <= (1e-4 if single else 1e-11)
    assert float((got - x).norm() / x.norm()) < (1e-3 if single else 1e-9)
    dense_residual = float((dense_a @ got - dense_b).norm() / dense_b.norm())
    assert result.residual == pytest.approx(dense_residual, rel=0.1, abs=2e-5 if single
                                            else 1e-13)      # single: at the rounding floor


def test_solve_magnetic_laplacian_in_several_sweeps() -> None:
    """The Laplacian with a complex hopping phase (Hermitian positive definite, TT-rank 2) in
    4 dimensions: local systems of 1296 unknowns (conjugate gradients), a rank-1 complex b."""
    d, n = 4, 6
    hop = torch.exp(torch.tensor(0.7j)) * torch.diag(torch.ones(n - 1, dtype=C128), 1)
    lap = (2 * torch.eye(n, dtype=C128) - hop - hop.mH) * (n + 1) ** 2
    eye, zero = torch.eye(n, dtype=C128), torch.zeros(n, n, dtype=C128)
    t = lap.T                                                   # cores are (n_in, n_out)
    a = [torch.stack([eye, t], -1)[None]] + \
        [torch.stack([torch.stack([eye, t], -1), torch.stack([zero, eye], -1)])] * (d - 2) + \
        [torch.stack([t, eye])[..., None]]
    dense_a = tt_matrix_to_dense(a)
    expected = sum(torch.kron(torch.kron(torch.eye(n ** k, dtype=C128), lap),
                              torch.eye(n ** (d - k - 1), dtype=C128)) for k in range(d))
    assert torch.allclose(dense_a, expected)
    gen = torch.Generator().manual_seed(12)
    rhs = [torch.randn(1, n, 1, generator=gen, dtype=C128) for _ in range(d)]
    result = tt_solve(a, rhs, max_rank=16, tol=1e-10)
    b = tt_to_dense(rhs).reshape(-1)
    x = torch.linalg.solve(dense_a, b)
    got = tt_to_dense(result.solution).reshape(-1)
    assert result.converged and result.residual <= 1e-10 and result.sweeps >= 2
    assert float((got - x).norm() / x.norm()) < 1e-9


def test_solve_refuses_non_hermitian_and_indefinite_complex_operators() -> None:
    h = random_hermitian_tt_matrix([2, 3, 2], 2, C128, 11)
    b = [torch.ones(1, n, 1, dtype=C128) for n in (2, 3, 2)]
    with pytest.raises(DecompositionError, match="the operator is not Hermitian"):
        tt_solve([h[0] * 1j, *h[1:]], b, max_rank=4)
    with pytest.raises(DecompositionError, match="the operator is not positive definite"):
        tt_solve(h, b, max_rank=4)                        # B + B^H: eigenvalues of both signs


def test_solve_stops_when_the_rank_cap_limits_the_residual() -> None:
    a = laplacian_mpo(5, 6)
    rhs = tt_svd(torch.randn(6, 6, 6, 6, 6, generator=torch.Generator().manual_seed(0),
                             dtype=F64), max_rank=3)
    result = tt_solve(a, rhs, max_rank=2, sweeps=30, tol=1e-12)
    assert not result.converged and result.sweeps < 30 and max(result.ranks) <= 2
    assert result.residual == pytest.approx(min(result.residuals), rel=0.5)


def test_solve_one_site_and_zero_rhs() -> None:
    m = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=F64)
    x, residual = tt_solve([m.reshape(1, 2, 2, 1)], [torch.ones(1, 2, 1, dtype=F64)],
                           max_rank=1)
    assert torch.allclose(tt_to_dense(x), torch.linalg.solve(m, torch.ones(2, dtype=F64)))
    zero = tt_solve(laplacian_mpo(3, 4), [torch.zeros(1, 4, 1, dtype=F64)] * 3, max_rank=2)
    assert zero.residual == 0.0 and float(tt_to_dense(zero.solution).abs().max()) == 0.0


@pytest.mark.parametrize(("call", "match"), [
    (lambda a, b: tt_solve([-a[0], *a[1:]], b, max_rank=4),
     "the operator is not positive definite"),
    (lambda a, b: tt_solve(a, b[:2], max_rank=4), "rhs_cores has modes"),
    (lambda a, b: tt_solve(a, b), "tt_solve needs max_rank"),
    (lambda a, b: tt_solve(a, [c.float() for c in b], max_rank=4), "rhs_cores is torch.float32"),
])
def test_solve_errors(call, match: str) -> None:
    a = laplacian_mpo(3, 4)
    b = [torch.ones(1, 4, 1, dtype=F64)] * 3
    with pytest.raises(DecompositionError, match=match):
        call(a, b)


def test_solve_refuses_an_indefinite_operator_in_a_large_local_system() -> None:
    """Local systems above the dense limit go through conjugate gradients, which refuses a
    direction of non-positive curvature."""
    n = 9                              # the first pair has 1 * 9 * 9 * 4 > 256 unknowns
    a = laplacian_mpo(3, n)
    eye = torch.eye(n, dtype=F64).reshape(1, n, n, 1)
    pad = torch.zeros(2, n, n, 1, dtype=F64)
    a[0] = torch.cat([a[0], -500 * eye], -1)                       # A - 500 I: indefinite
    a[1] = torch.cat([torch.cat([a[1], pad], -1),
                      torch.cat([torch.zeros(1, n, n, 2, dtype=F64), eye], -1)], 0)
    a[2] = torch.cat([a[2], eye], 0)
    eigenvalues = torch.linalg.eigvalsh(tt_matrix_to_dense(a))
    assert eigenvalues[0] < 0 < eigenvalues[-1]
    with pytest.raises(DecompositionError, match="not positive definite"):
        tt_solve(a, [torch.ones(1, n, 1, dtype=F64)] * 3, max_rank=8)


def test_seed002_toolbox_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/seed002_toolbox.py --quick: every table printed, the dense checks agree."""
    from helpers import load_script

    module = load_script("examples/seed002_toolbox.py", "seed002")
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out
    for name in ("sum of sines", "Gaussian", "1/(1+sum x)", "Rosenbrock", "Ackley",
                 "Heisenberg chain", "Poisson"):
        assert name in out
    poisson = out.splitlines()[-2].split()           # d n unknowns residual vs-dense ...
    assert float(poisson[3]) < 1e-10 and float(poisson[4]) < 1e-9


def test_tt_toolbox_benchmark_skips_a_missing_peer(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/tt_toolbox.py without teneva and quimb: their rows say so, tngraph's run."""
    import sys

    from helpers import load_script

    for name in ("teneva", "quimb", "quimb.tensor"):
        monkeypatch.setitem(sys.modules, name, None)        # makes the import fail
    module = load_script("benchmarks/tt_toolbox.py", "bench_tt_toolbox_nopeers")
    assert module.main(["--quick", "--threads", "1"]) == 0       # the fixture restores them
    out = capsys.readouterr().out
    assert "teneva not installed: skipped" in out and "quimb not installed: skipped" in out
    assert "0 of 0 comparisons pass" in out
    assert "-6.9117361" in out                       # tngraph's 16-site energy still printed
