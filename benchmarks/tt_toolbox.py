"""The TT toolbox of seed 002 against its anchors: TT-cross against teneva, DMRG against quimb.

Part 1, ``tngraph.decompose.tt_cross`` against ``teneva.cross`` at equal ranks. Five classic
functions on a ``16^10`` grid (``--quick``: ``8^6``), each run once per candidate:

* ``teneva``  -- ``teneva.cross(f, teneva.rand(n, r, seed=0), e=1e-8, nswp=20, dr_min=0,
  dr_max=0, cache={})``: fixed rank ``r`` from a random start, its own stop (relative change
  between sweeps below ``e``), a cache so that a repeated point is not counted twice;
* ``tngraph`` -- ``tt_cross(f, shape, max_rank=r, max_evals=<teneva's count>, seed=0)``: at
  most the same rank and never more evaluations than teneva used (its own 1,000 or
  ``max_evals // 10`` test points included).

Both errors are measured by this script on the same 10,000 random points; the verdict asks for
teneva's error (within 10 %, or both below 1e-12) at no more evaluations.

Part 2, ``tngraph.decompose.tt_eigh`` against quimb's ``DMRG2``: the ground energy of the open
spin-1/2 Heisenberg chain (the same Hamiltonian: quimb's ``MPO_ham_heis``, tngraph's MPO written
by hand) at the same bond dimension, truncation 1e-12, energy tolerance 1e-10, at most 20
sweeps. quimb is warmed up first (its numba kernels compile on the first call); seconds are the
median of ``--repeats`` runs. The verdict asks for quimb's energy to 1e-8 in no more time.

teneva and quimb are optional (``pip install tngraph[bench]``); without one its rows say
"not installed: skipped". ``--threads N`` sets torch's threads and, through threadpoolctl, the
BLAS threads of the peers (tngraph's sweeps run on one thread in any case).
Run ``python benchmarks/tt_toolbox.py`` (about a minute) or ``--quick`` (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from common import print_environment, progress, set_threads, show, verdict  # noqa: E402

from tngraph.decompose import heisenberg_mpo, tt_cross, tt_eigh, tt_values  # noqa: E402

F64 = torch.float64


def peer(name: str) -> Any | None:
    """The peer module, or None when it is not installed."""
    try:
        return __import__(name)
    except ImportError:
        return None


@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Limit NumPy's BLAS threads (the peers') when ``--threads`` is given."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threads and threadpool_limits is not None:
        with threadpool_limits(limits=threads):
            yield
    else:
        yield


# ---------------------------------------------------------------------------------------------
# part 1: TT-cross


def ackley(x: torch.Tensor) -> torch.Tensor:
    return (-20 * torch.exp(-0.2 * torch.sqrt((x * x).mean(1)))
            - torch.exp(torch.cos(2 * math.pi * x).mean(1)) + 20 + math.e)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(1)


#: name -> (function of points, interval of each axis, rank)
FUNCTIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], float, float, int]] = {
    "sum of sines": (lambda x: torch.sin(x).sum(1), 0.0, math.pi, 4),
    "Gaussian": (lambda x: torch.exp(-0.5 * (x * x).sum(1)), -3.0, 3.0, 4),
    "1/(1+sum x)": (lambda x: 1.0 / (1.0 + x.sum(1)), 0.0, 1.0, 6),
    "Rosenbrock": (rosenbrock, -2.0, 2.0, 4),
    "Ackley": (ackley, -32.768, 32.768, 8),
}


def on_grid(f: Callable[[torch.Tensor], torch.Tensor], low: float, high: float,
            n: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda idx: f(low + (high - low) * idx.to(F64) / (n - 1))


def cross_section(quick: bool, threads: int | None) -> list[bool]:
    d, n = (6, 8) if quick else (10, 16)
    teneva = peer("teneva")
    rng = np.random.default_rng(12345)
    check = torch.from_numpy(np.stack([rng.integers(0, n, 10_000) for _ in range(d)], 1))
    rows, verdicts = [], []
    for name, (f, low, high, rank) in FUNCTIONS.items():
        progress(f"cross: {name}")
        fn = on_grid(f, low, high, n)
        exact = fn(check)

        def error(cores: Sequence[torch.Tensor], exact: torch.Tensor = exact) -> float:
            return float((tt_values(cores, check) - exact).norm() / exact.norm())

        if teneva is None:
            budget = None
        else:
            info: dict[str, Any] = {}
            with blas_threads(threads):
                start = time.perf_counter()
                cores = teneva.cross(lambda idx, fn=fn: fn(torch.from_numpy(idx)).numpy(),
                                     teneva.rand([n] * d, rank, seed=0), e=1e-8, nswp=20,
                                     dr_min=0, dr_max=0, info=info, cache={})
                teneva_seconds = time.perf_counter() - start
            teneva_error = error([torch.from_numpy(np.asarray(c)) for c in cores])
            budget = int(info["m"])
        start = time.perf_counter()
        result = tt_cross(fn, [n] * d, max_rank=rank, max_evals=budget, seed=0)
        seconds = time.perf_counter() - start
        ours = error(result.cores)
        if teneva is None:
            rows.append([name, rank, "teneva not installed: skipped", "", "", f"{ours:.2e}",
                         result.evals, f"{seconds:.2f}", max(result.ranks), ""])
            continue
        ok = result.evals <= budget and (ours <= 1.1 * teneva_error or
                                        max(ours, teneva_error) < 1e-12)
        verdicts.append(ok)
        rows.append([name, rank, f"{teneva_error:.2e}", budget, f"{teneva_seconds:.2f}",
                     f"{ours:.2e}", result.evals, f"{seconds:.2f}", max(result.ranks),
                     verdict(ok)])
    show(f"TT-cross at equal ranks on {n}^{d} grids: relative error on 10,000 random points, "
         "evaluations, seconds",
         ["function", "rank", "teneva err", "evals", "s", "tngraph err", "evals", "s",
          "its rank", "no more evals, same err"], rows,
         ["teneva: cross(..., e=1e-8, nswp=20, dr_min=0, dr_max=0, cache={}) from "
          "teneva.rand(n, rank, seed=0); evals = info['m'] (cached repeats not counted)",
          "tngraph: tt_cross(..., max_rank=rank, max_evals=teneva's evals, seed=0); its evals "
          "include its own test points; 'its rank' = the largest rank it kept"])
    return verdicts


# ---------------------------------------------------------------------------------------------
# part 2: DMRG


def dmrg_section(quick: bool, threads: int | None, repeats: int) -> list[bool]:
    cases = [(16, 16)] if quick else [(32, 32), (64, 32), (64, 64)]
    quimb = peer("quimb.tensor")
    if quimb is not None:
        import quimb.tensor as qtn
        with blas_threads(threads):                      # compile quimb's kernels first
            qtn.DMRG2(qtn.MPO_ham_heis(8), bond_dims=[8], cutoffs=1e-12).solve(
                tol=1e-6, verbosity=0)
    rows, verdicts = [], []
    for sites, bond in cases:
        progress(f"dmrg: {sites} sites, bond {bond}")
        seconds, result = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            result = tt_eigh(heisenberg_mpo(sites), max_rank=bond, sweeps=20, tol=1e-10,
                             eps=1e-12)
            seconds.append(time.perf_counter() - start)
        ours = statistics.median(seconds)
        if quimb is None:
            rows.append([sites, bond, "quimb not installed: skipped", "", "",
                         f"{result.eigenvalue:.12f}", result.sweeps, f"{ours:.2f}", "", ""])
            continue
        peer_seconds, energy, peer_sweeps = [], math.nan, 0
        for _ in range(repeats):
            with blas_threads(threads):
                start = time.perf_counter()
                dmrg = qtn.DMRG2(qtn.MPO_ham_heis(sites), bond_dims=[bond], cutoffs=1e-12)
                dmrg.solve(tol=1e-10, max_sweeps=20, verbosity=0)
                peer_seconds.append(time.perf_counter() - start)
            energy, peer_sweeps = float(np.real(dmrg.energy)), len(dmrg.energies)
        theirs = statistics.median(peer_seconds)
        difference = result.eigenvalue - energy
        ok = difference <= 1e-8 and ours <= theirs
        verdicts.append(ok)
        rows.append([sites, bond, f"{energy:.12f}", peer_sweeps, f"{theirs:.2f}",
                     f"{result.eigenvalue:.12f}", result.sweeps, f"{ours:.2f}",
                     f"{difference:+.1e}", verdict(ok)])
    show("Heisenberg chain ground energy at equal bond dimension: quimb DMRG2 vs tt_eigh",
         ["sites", "bond", "quimb energy", "sweeps", "s", "tngraph energy", "sweeps", "s",
          "tngraph - quimb", "<= 1e-8, no slower"], rows,
         ["quimb: DMRG2(MPO_ham_heis(L), bond_dims=[bond], cutoffs=1e-12).solve(tol=1e-10, "
          "max_sweeps=20)",
          "tngraph: tt_eigh(mpo, max_rank=bond, sweeps=20, tol=1e-10, eps=1e-12); its energy is "
          "the Rayleigh quotient of the returned (truncated) state",
          f"seconds: median of {repeats} run(s), Hamiltonian construction included for both"])
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--only", choices=("cross", "dmrg"), default=None,
                        help="run one part only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads and the peers' BLAS threads")
    parser.add_argument("--repeats", type=int, default=None,
                        help="DMRG runs per candidate (default 3, --quick 1)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print_environment("tngraph TT toolbox" + (" (--quick)" if args.quick else ""))
    versions = []
    for name in ("teneva", "quimb"):
        module = peer(name)
        versions.append(f"{name} {getattr(module, '__version__', '?')}" if module
                        else f"{name} not installed")
    print("  ".join(versions), end="\n\n")
    start = time.perf_counter()
    verdicts = []
    if args.only in (None, "cross"):
        verdicts += cross_section(args.quick, args.threads)
    if args.only in (None, "dmrg"):
        repeats = args.repeats or (1 if args.quick else 3)
        verdicts += dmrg_section(args.quick, args.threads, repeats)
    print(f"{sum(verdicts)} of {len(verdicts)} comparisons pass; total "
          f"{time.perf_counter() - start:.0f} s (exit status 0: this is a report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
