"""Adam against the manifold optimizers ``riemannian`` and ``tangent`` on two problems:

1. the MPS classifier (``models/mps_classifier.yaml``) on scikit-learn's 8x8 digits, through
   ``tngraph.train`` (test accuracy after the last epoch, wall time of the training loop);
2. seed 004's regression (``examples/seed004_regression.py``): a 4096 -> 16 TT-layer of rank 8,
   full-batch steps on 256 samples, R^2 on the fitted data as the seed measures it.

Every run uses one CPU thread (``torch.set_num_threads(1)``) so that timings are comparable on a
shared machine. Prints markdown tables (the ones in ``docs/optimizers.md``).

Run: ``python examples/manifold_optimizers.py [--seeds 0 1 2] [--epochs 10] [--steps 2000]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import tngraph
from tngraph.optimizers import OptimizerContext, get_optimizer, learning_rate
from tngraph.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed004_regression import SPEC, data, r2  # noqa: E402

#: (optimizer, options, lr) per method on the classifier: Adam at the spec's lr 0.002
CLASSIFIER_METHODS = [("adam", {}, 0.002), ("adam", {}, 0.01), ("riemannian", {}, 0.003),
                      ("tangent", {}, 0.1)]
#: on the regression: Adam as in the seed (constant lr 5e-2)
REGRESSION_METHODS = [("adam", {}, 0.05, "constant"), ("riemannian", {}, 2.0, "cosine"),
                      ("riemannian", {"momentum": 0.9}, 0.5, "cosine"),
                      ("tangent", {}, 0.05, "cosine")]


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _label(name: str, options: dict) -> str:
    return name + "".join(f" {k}={v}" for k, v in options.items())


def classifier(seeds: list[int], epochs: int, bonds: list[int], out: Path) -> None:
    print(f"\n### MPS classifier, digits, {epochs} epochs, cosine schedule, batch 64\n")
    print("| optimizer | lr | bond | test accuracy % (mean ± sd) | per seed | seconds per run "
          "| parameters | ranks (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for bond in bonds:
        for name, options, lr in CLASSIFIER_METHODS:
            accs, secs = [], []
            for seed in seeds:
                run = out / f"{name}-{lr}-{bond}-{seed}"
                result = train("models/mps_classifier.yaml", {"bond_dim": bond}, run_dir=run,
                               echo=None, epochs=epochs, lr=lr, seed=seed,
                               optimizer={"name": name, **options})
                accs.append(100 * result.test["accuracy"])
                secs.append(result.seconds)
            module = tngraph.compile(run / "spec.yaml")
            ranks = find_bonds(module)
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(f"| {_label(name, options)} | {lr} | {bond} | {statistics.mean(accs):.1f} ± "
                  f"{sd:.1f} | {', '.join(f'{a:.1f}' for a in accs)} | "
                  f"{statistics.mean(secs):.1f} | {_params(module):,} | {max(ranks)} |")


def find_bonds(module: tngraph.TNModule) -> list[int]:
    from tngraph_plugins.chain import find_chain

    return find_chain(module.spec).bond_dims(module.spec)


def regression(seeds: list[int], steps: int) -> None:
    print(f"\n### Seed 004 regression, TT rank 8, {steps} full-batch steps\n")
    print("| optimizer | lr (schedule) | R² per seed | seconds per run | parameters | ranks |")
    print("|---|---|---|---|---|---|")
    for name, options, lr, schedule in REGRESSION_METHODS:
        scores, secs = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            x, y = data(seed)
            module = tngraph.compile(SPEC, seed=seed)
            strategy = get_optimizer(name)
            stepper = strategy.create(module, strategy.options(**options),
                                      OptimizerContext(lr=lr, task="regression"))
            start = time.perf_counter()
            for step in range(1, steps + 1):
                stepper.set_lr(learning_rate(lr, step, steps, schedule))
                stepper.step(x, lambda out, y=y: torch.nn.functional.mse_loss(out, y))
            secs.append(time.perf_counter() - start)
            with torch.no_grad():
                scores.append(r2(y, stepper.module(x)))
        ranks = find_bonds(stepper.module)
        print(f"| {_label(name, options)} | {lr} ({schedule}) | "
              f"{', '.join(f'{s:.4f}' for s in scores)} | {statistics.mean(secs):.1f} | "
              f"{_params(stepper.module):,} | {ranks} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--bonds", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--only", choices=["classifier", "regression"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TNGRAPH_NO_PROGRESS", "1")
    with tempfile.TemporaryDirectory(prefix="tngraph-optimizers-") as tmp:
        if args.only != "regression":
            classifier(args.seeds, args.epochs, args.bonds, Path(tmp))
        if args.only != "classifier":
            regression(args.seeds, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
