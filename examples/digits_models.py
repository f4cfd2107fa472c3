"""Train every shipped classifier spec on digits over several seeds and print one table:
test accuracy (mean ± std), parameters, and wall time per run.

Run: ``python examples/digits_models.py [--models two_mps cnn_tt ...] [--seeds 0 1 2]
[--out runs/digits-models]``. Finished runs are reused when the script runs again.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import tngraph
from tngraph.train import train

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["mps_classifier", "two_mps", "cnn_mps", "cnn_teacher", "cnn_tt", "mlp", "mlp_tt"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="default: each spec's own")
    parser.add_argument("--out", default="runs/digits-models")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        spec_path = ROOT / "models" / f"{name}.yaml"
        accs, secs = [], []
        for seed in args.seeds:
            run = Path(args.out) / f"{name}-s{seed}"
            if not (run / "summary.json").is_file():
                train(spec_path, run_dir=run, seed=seed, echo=None,
                      **({"epochs": args.epochs} if args.epochs else {}))
            summary = json.loads((run / "summary.json").read_text())
            accs.append(summary["test"]["accuracy"] * 100)
            secs.append(summary["seconds"])
        params = sum(p.numel() for p in tngraph.compile(spec_path).parameters())
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append((name, params, statistics.mean(accs), std, statistics.mean(secs)))
    print(f"{'model':16s} {'parameters':>10s} {'test accuracy %':>16s} {'s / run':>8s}")
    for name, params, mean, std, sec in rows:
        print(f"{name:16s} {params:10,d} {mean:9.1f} ± {std:3.1f} {sec:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
