"""Seed 004's experiment: a 4096 -> 16 TT-layer (8^4 -> 2^4, TT-rank 8) fitted to a linear
regression problem, three ways, with tngraph.

1. dense least squares (the reference fit, 100 % of the parameters);
2. the TT-layer trained from random initialisation with full-batch Adam (lr 5e-2), as in the seed;
3. the TT-layer initialised by TT-SVD of the least-squares weight (``tngraph.decompose``), before
   and after the same fine-tuning.

As in the seed, the data are sklearn's ``make_regression`` (256 samples, 4096 features, 128
informative, 16 targets), standardised, and R² is measured on the data the model was fitted to.

Run: ``python examples/seed004_regression.py [--epochs N] [--seed S]``; prints a table.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import make_regression
from sklearn.metrics import r2_score

import tngraph
from tngraph.decompose import tt_linear_state_dict, tt_matrix

SPEC = """
tngraph: 1
name: seed004
network: {template: tt_linear, in_shape: [8, 8, 8, 8], out_shape: [2, 2, 2, 2], ranks: 8,
          bias: false}
plan: {batch_size: 256}
"""


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_regression(n_samples=256, n_features=4096, n_informative=128, n_targets=16,
                           random_state=seed)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean(0)) / y.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    return float(r2_score(y.numpy().reshape(-1), pred.detach().numpy().reshape(-1)))


def fit(module: tngraph.TNModule, x: torch.Tensor, y: torch.Tensor, epochs: int) -> float:
    """Full-batch Adam on the mean squared error, as in the seed; returns seconds."""
    optimizer = torch.optim.Adam(module.parameters(), lr=5e-2)
    start = time.perf_counter()
    for _ in range(epochs):
        loss = torch.nn.functional.mse_loss(module(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    x, y = data(args.seed)

    weight = torch.linalg.lstsq(x.double(), y.double()).solution.T.float()   # (16, 4096)
    rows = [("dense least squares", 4096 * 16, r2(y, x @ weight.T), 0.0)]

    random_init = tngraph.compile(SPEC, seed=args.seed)
    params = sum(p.numel() for p in random_init.parameters())
    seconds = fit(random_init, x, y, args.epochs)
    rows.append((f"TT rank 8, random init, Adam {args.epochs} epochs", params,
                 r2(y, random_init(x)), seconds))

    svd_init = tngraph.compile(SPEC, seed=args.seed)
    cores = tt_matrix(weight, [8, 8, 8, 8], [2, 2, 2, 2], ranks=8)
    svd_init.load_state_dict(tt_linear_state_dict(cores))
    rows.append(("TT rank 8, TT-SVD of the LS weight", params, r2(y, svd_init(x)), 0.0))
    seconds = fit(svd_init, x, y, args.epochs)
    rows.append((f"  ... then Adam {args.epochs} epochs", params, r2(y, svd_init(x)), seconds))

    print(f"{'model':48s} {'parameters':>10s} {'% dense':>8s} {'R2':>8s} {'seconds':>8s}")
    for name, n, score, secs in rows:
        print(f"{name:48s} {n:10d} {100 * n / (4096 * 16):7.1f}% {score:8.4f} {secs:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
