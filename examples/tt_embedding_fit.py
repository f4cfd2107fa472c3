"""A TT embedding table (template ``tt_embedding``) fitted to a synthetic table, with tngraph.

The target is an embedding table of ``8·8·8·8 = 4096`` rows of ``2·2·2·2 = 16`` values: a random
TT-matrix of rank ``--true-rank`` (4), scaled to entries of unit standard deviation, plus
Gaussian noise of standard deviation ``--noise`` (0.1). A random quarter of the rows is held
out. TT embeddings of ranks 2, 4 and 8 are trained on the other rows (full batch, Adam, cosine
learning rate, mean squared error), each row looked up through the one-hot ports of its index's
digits (:func:`tngraph.templates.tt_embedding.one_hot_inputs`). Reported per model: its
parameters (and their share of the dense table's 65,536), the RMSE on the training rows and on
the held-out rows (against the noisy table), and the RMSE of every row against the clean table
(how much of the noise the fit removed). Two references: a dense ``torch.nn.Embedding`` trained
the same way (it fits every row it sees and knows nothing of the others), and the TT-SVD
(``tngraph.decompose``) of the whole noisy table at the same rank (it has seen every row). The
noise sets the floor: an exact recovery of the clean table has RMSE ``--noise`` on noisy rows.

Run: ``python examples/tt_embedding_fit.py [--ranks 2,4,8] [--steps N] [--seed S] [--quick]``;
prints a table. ``--quick`` (ranks 2 and 4, 60 steps) is what the tests run.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import tngraph
from tngraph.decompose import tt_matrix, tt_matrix_to_dense
from tngraph.templates.tt_embedding import one_hot_inputs

VOC = [8, 8, 8, 8]
DIM = [2, 2, 2, 2]


def target_table(seed: int, true_rank: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean and the noisy table, ``(prod(VOC), prod(DIM))``, float64, drawn from
    ``torch.Generator`` seeded ``seed`` (the clean one has entries of unit std)."""
    gen = torch.Generator().manual_seed(seed)
    ranks = [1] + [true_rank] * (len(VOC) - 1) + [1]
    cores = [torch.randn(ranks[k], VOC[k], DIM[k], ranks[k + 1], generator=gen,
                         dtype=torch.float64) for k in range(len(VOC))]
    clean = tt_matrix_to_dense(cores).T                   # (dim, voc) -> (voc, dim)
    clean = clean / clean.std()
    noisy = clean + noise * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    return clean, noisy


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def fit(model: torch.nn.Module, lookup, table: torch.Tensor, train: torch.Tensor,
        steps: int, lr: float) -> torch.Tensor:
    """Train ``model`` on the rows ``train`` of ``table`` (full batch); return every row of the
    fitted table. ``lookup(indices)`` runs the model on a tensor of row indices."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    target = table[train].float()
    for _ in range(steps):
        opt.zero_grad()
        loss = (lookup(train) - target).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return lookup(torch.arange(table.shape[0])).double()


def run(args: argparse.Namespace) -> list[tuple[str, int, float, float, float]]:
    """Every model's row: name, parameters, RMSE on the training rows and on the held-out rows
    (against the noisy table), RMSE of all rows against the clean table."""
    torch.manual_seed(args.seed)
    clean, noisy = target_table(args.seed, args.true_rank, args.noise)
    n = noisy.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 1))
    held, train = perm[: n // 4].sort().values, perm[n // 4:].sort().values
    onehots = one_hot_inputs(torch.arange(n), VOC)
    rows: list[tuple[str, int, float, float, float]] = []
    for rank in args.ranks:
        spec = {"tngraph": 1, "name": f"tt_embedding_r{rank}",
                "network": {"template": "tt_embedding", "voc_shape": VOC, "dim_shape": DIM,
                            "ranks": rank}}
        module = tngraph.compile(spec, seed=args.seed, optimize="greedy", cache=False,
                                 batch_size=len(train))
        def lookup(idx: torch.Tensor, module: torch.nn.Module = module) -> torch.Tensor:
            return module(**{k: v[idx] for k, v in onehots.items()})

        fitted = fit(module, lookup, noisy, train, args.steps, args.lr)
        params = sum(p.numel() for p in module.parameters())
        rows.append((f"TT embedding, rank {rank}", params, rmse(fitted[train], noisy[train]),
                     rmse(fitted[held], noisy[held]), rmse(fitted, clean)))
        svd = tt_matrix_to_dense(tt_matrix(noisy.T, VOC, DIM, ranks=rank)).T
        rows.append((f"  TT-SVD of the whole noisy table, rank {rank}", params,
                     rmse(svd[train], noisy[train]), rmse(svd[held], noisy[held]),
                     rmse(svd, clean)))
    dense = torch.nn.Embedding(n, math.prod(DIM))
    fitted = fit(dense, dense, noisy, train, args.steps, args.lr)
    rows.append(("dense nn.Embedding", n * math.prod(DIM), rmse(fitted[train], noisy[train]),
                 rmse(fitted[held], noisy[held]), rmse(fitted, clean)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2,4,8", help="comma-separated TT-ranks")
    parser.add_argument("--steps", type=int, default=600, help="full-batch Adam steps")
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--true-rank", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="ranks 2,4 and 60 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.ranks, args.steps = "2,4", 60
    args.ranks = [int(r) for r in args.ranks.split(",")]
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)       # small products: one thread is as fast, and steady when shared
    try:
        rows = run(args)
    finally:
        torch.set_num_threads(threads)
    dense = math.prod(VOC) * math.prod(DIM)
    print(f"{'model':46s} {'parameters':>10s} {'% dense':>8s} {'train RMSE':>10s} "
          f"{'held-out RMSE':>13s} {'clean RMSE':>10s}")
    for name, params, train, held, clean in rows:
        print(f"{name:46s} {params:10,d} {100 * params / dense:7.2f}% {train:10.4f} "
              f"{held:13.4f} {clean:10.4f}")
    print(f"noise floor (RMSE of the clean table against the noisy one): {args.noise:.4f}; "
          f"seed {args.seed}, {args.steps} steps, {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
