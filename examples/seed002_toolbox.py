"""Seed 002 (Oseledets' TT toolbox): what the TT format is for, with ``tngraph.decompose``.

1. **TT-cross** of classic test functions on 10-dimensional grids (``n^10`` points, never
   formed): the ranks found, the evaluations asked for, and the relative error on 10,000
   independent random points.
2. **An eigenvalue problem** ``A(X) = lambda X``: the ground energy of the spin-1/2 Heisenberg
   chain, its Hamiltonian written by hand as a TT-matrix (MPO) of rank 5, by two-site DMRG
   (``tt_eigh``), checked against exact diagonalisation for 10 spins.
3. **A linear system** ``A(X) = F``: the d-dimensional Poisson problem ``-Laplace u = 1`` on the
   unit cube (Dirichlet, finite differences), the Laplacian a TT-matrix of rank 2, by ``tt_solve``,
   checked against a dense solve at a small size.

Run ``python examples/seed002_toolbox.py`` (a few seconds; ``--quick`` for a smoke test).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable

import torch

from tngraph.decompose import (
    heisenberg_mpo,
    laplacian_mpo,
    tt_cross,
    tt_eigh,
    tt_matrix_to_dense,
    tt_solve,
    tt_to_dense,
    tt_values,
)

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# 1. TT-cross


def grid_function(f: Callable[[torch.Tensor], torch.Tensor], low: float, high: float,
                  n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``f`` on the uniform grid of ``n`` points per axis of ``[low, high]^d``, by index."""
    return lambda idx: f(low + (high - low) * idx.to(F64) / (n - 1))


def ackley(x: torch.Tensor) -> torch.Tensor:
    return (-20 * torch.exp(-0.2 * torch.sqrt((x * x).mean(1)))
            - torch.exp(torch.cos(2 * math.pi * x).mean(1)) + 20 + math.e)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(1)


#: name -> (function of points, interval of each axis)
FUNCTIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float, float]] = {
    "sum of sines": (lambda x: torch.sin(x).sum(1), 0.0, math.pi),
    "Gaussian": (lambda x: torch.exp(-0.5 * (x * x).sum(1)), -3.0, 3.0),
    "1/(1+sum x)": (lambda x: 1.0 / (1.0 + x.sum(1)), 0.0, 1.0),
    "Rosenbrock": (rosenbrock, -2.0, 2.0),
    "Ackley": (ackley, -32.768, 32.768),
}


def cross_table(d: int, n: int, eps: float, max_rank: int) -> list[str]:
    lines = [f"TT-cross on {n}^{d} = {float(n) ** d:.2e}-point grids "
             f"(eps={eps:g}, max_rank={max_rank})",
             f"{'function':14s} {'max rank':>8s} {'evals':>8s} {'of grid':>9s} "
             f"{'estimate':>9s} {'error':>9s} {'seconds':>7s} stop"]
    check = torch.randint(0, n, (10_000, d), generator=torch.Generator().manual_seed(1))
    for name, (f, low, high) in FUNCTIONS.items():
        fn = grid_function(f, low, high, n)
        start = time.perf_counter()
        result = tt_cross(fn, [n] * d, eps=eps, max_rank=max_rank, seed=0)
        seconds = time.perf_counter() - start
        exact = fn(check)
        error = float((tt_values(result.cores, check) - exact).norm() / exact.norm())
        lines.append(f"{name:14s} {max(result.ranks):8d} {result.evals:8d} "
                     f"{result.evals / float(n) ** d:9.1e} {result.error:9.1e} {error:9.1e} "
                     f"{seconds:7.2f} {result.stop}")
    return lines


# ---------------------------------------------------------------------------------------------
# 2. Heisenberg chain


def heisenberg_lines(sizes: list[int], max_rank: int) -> list[str]:
    lines = [f"Heisenberg chain, ground energy by tt_eigh (two-site DMRG, max_rank={max_rank})",
             f"{'spins':>5s} {'energy':>18s} {'per spin':>10s} {'exact (dense)':>18s} "
             f"{'sweeps':>6s} {'seconds':>7s}"]
    for n in sizes:
        start = time.perf_counter()
        result = tt_eigh(heisenberg_mpo(n), max_rank=max_rank, tol=1e-10)
        seconds = time.perf_counter() - start
        exact = (f"{float(torch.linalg.eigvalsh(tt_matrix_to_dense(heisenberg_mpo(n)))[0]):18.12f}"
                 if n <= 10 else f"{'-':>18s}")
        lines.append(f"{n:5d} {result.eigenvalue:18.12f} {result.eigenvalue / n:10.6f} "
                     f"{exact} {result.sweeps:6d} {seconds:7.2f}")
    lines.append(f"  the infinite chain: 1/4 - ln 2 = {0.25 - math.log(2):.6f} per spin")
    return lines


# ---------------------------------------------------------------------------------------------
# 3. Poisson


def poisson_lines(cases: list[tuple[int, int]], max_rank: int) -> list[str]:
    lines = [f"Poisson -Laplace u = 1 on the unit cube, by tt_solve (max_rank={max_rank})",
             f"{'d':>3s} {'n':>3s} {'unknowns':>10s} {'residual':>9s} {'vs dense':>9s} "
             f"{'max rank':>8s} {'u(centre)':>10s} {'sweeps':>6s} {'seconds':>7s}"]
    for d, n in cases:
        ones = [torch.ones(1, n, 1, dtype=F64)] * d
        start = time.perf_counter()
        result = tt_solve(laplacian_mpo(d, n), ones, max_rank=max_rank, tol=1e-10)
        seconds = time.perf_counter() - start
        centre = float(tt_values(result.solution, torch.full((1, d), n // 2)))
        versus = "-"
        if n ** d <= 4096:
            dense = torch.linalg.solve(tt_matrix_to_dense(laplacian_mpo(d, n)),
                                       torch.ones(n ** d, dtype=F64))
            got = tt_to_dense(result.solution).reshape(-1)
            versus = f"{float((got - dense).norm() / dense.norm()):9.1e}"
        lines.append(f"{d:3d} {n:3d} {float(n) ** d:10.2e} {result.residual:9.1e} {versus:>9s} "
                     f"{max(result.ranks):8d} {centre:10.6f} {result.sweeps:6d} {seconds:7.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        tables = [cross_table(d=6, n=8, eps=1e-6, max_rank=6),
                  heisenberg_lines([8], max_rank=16),
                  poisson_lines([(3, 6)], max_rank=8)]
    else:
        tables = [cross_table(d=10, n=16, eps=1e-8, max_rank=16),
                  heisenberg_lines([10, 32], max_rank=32),
                  poisson_lines([(3, 12), (6, 16), (10, 16)], max_rank=12)]
    for table in tables:
        print("\n".join(table), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
