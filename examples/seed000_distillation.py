"""Seed 000's experiment with tngraph: an MPS classifier trained alone vs distilled from a dense
MLP teacher vs distilled from a CNN teacher, at several bond dimensions, mean ± std over seeds.

Everything goes through the public API (the same as ``tngraph train`` / ``tngraph distill``):

- teachers ``models/mlp.yaml`` and ``models/cnn_teacher.yaml``, trained once per seed;
- students ``models/mps_classifier.yaml`` at ``bond_dim`` 10 / 20 / 40 with their own training
  settings (40 epochs, Adam, lr 0.002, cosine schedule), either on the labels (``alone``) or with
  the ``response`` strategy (KL of softened outputs x T², plus ``alpha`` x cross-entropy).

Run: ``python examples/seed000_distillation.py [--data digits] [--bonds 10 20 40]
[--seeds 0 1 2] [--out runs/seed000]``; prints one table (test accuracy, mean ± std) and writes
``results.json`` in the output folder. A finished run is reused when the script is run again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from tngraph.distill import distill
from tngraph.train import train

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "models" / "mps_classifier.yaml"
TEACHERS = {"MLP": ROOT / "models" / "mlp.yaml", "CNN": ROOT / "models" / "cnn_teacher.yaml"}


def _done(run: Path) -> dict | None:
    summary = run / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def _test_accuracy(run: Path, make: Callable[[], object]) -> tuple[float, float]:
    """Test accuracy and seconds of a run, made by ``make()`` unless it finished before."""
    summary = _done(run)
    if summary is None:
        make()
        summary = _done(run)
    assert summary is not None
    return summary["test"]["accuracy"], summary["seconds"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--bonds", type=int, nargs="+", default=[10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="student epochs (default: the spec's)")
    parser.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: the spec's)")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--out", default="runs/seed000")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results: dict[str, dict] = {}
    start = time.perf_counter()
    extra = {"epochs": args.epochs} if args.epochs else {}
    strategy = {"name": "response", "temperature": args.temperature, "alpha": args.alpha}

    teachers: dict[str, dict[int, float]] = {}
    for name, spec in TEACHERS.items():
        for seed in args.seeds:
            run = out / f"teacher-{name}-s{seed}"
            acc, _ = _test_accuracy(run, lambda spec=spec, run=run, seed=seed: train(
                spec, run_dir=run, data=args.data, seed=seed, echo=None,
                **({"epochs": args.teacher_epochs} if args.teacher_epochs else {})))
            teachers.setdefault(name, {})[seed] = acc
    for bond in args.bonds:
        for label in ("alone", *TEACHERS):
            accs, secs = [], []
            for seed in args.seeds:
                run = out / f"mps-b{bond}-{label}-s{seed}"
                if label == "alone":
                    def make(run: Path = run, seed: int = seed, bond: int = bond) -> None:
                        train(STUDENT, {"bond_dim": bond}, run_dir=run, data=args.data,
                              seed=seed, echo=None, **extra)
                else:
                    def make(run: Path = run, seed: int = seed, label: str = label,
                             bond: int = bond) -> None:
                        distill(STUDENT, out / f"teacher-{label}-s{seed}", {"bond_dim": bond},
                                strategy=strategy, run_dir=run, data=args.data, seed=seed,
                                echo=None, **extra)
                acc, sec = _test_accuracy(run, make)
                accs.append(acc)
                secs.append(sec)
            results[f"{bond}/{label}"] = {"accuracy": accs, "seconds": secs}

    def fmt(values: list[float]) -> str:
        mean = statistics.mean(values) * 100
        std = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
        return f"{mean:5.1f} ± {std:3.1f}"

    print(f"data {args.data}, seeds {args.seeds}, response T={args.temperature} "
          f"alpha={args.alpha}; test accuracy %, mean ± std")
    print("teachers: " + ", ".join(f"{k} {fmt(list(v.values()))}" for k, v in teachers.items()))
    print(f"{'bond':>5} | {'MPS alone':>12} | {'MLP -> MPS':>12} | {'CNN -> MPS':>12} | "
          "s / run (alone, MLP, CNN)")
    for bond in args.bonds:
        cells = [results[f"{bond}/{label}"] for label in ("alone", *TEACHERS)]
        seconds = ", ".join(f"{statistics.mean(c['seconds']):.0f}" for c in cells)
        print(f"{bond:>5} | " + " | ".join(f"{fmt(c['accuracy']):>12}" for c in cells)
              + f" | {seconds}")
    (out / "results.json").write_text(json.dumps(
        {"teachers": teachers, "students": results, "data": args.data,
         "strategy": strategy}, indent=2))
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
