"""Accuracy: the digits MPS classifier trained by tngraph, a hand-written model and TensorKrowch.

The same model on the same data with the same training recipe, three implementations:

* ``tngraph``      -- ``models/mps_classifier.yaml`` (``--set bond_dim=...``) compiled as
  :func:`tngraph.train.train` compiles it (plan for the training batch size, seeded
  initialisation); the loop below is ``train()``'s loop (checked at the start: a short run
  gives the same test loss as ``tngraph.train.train``);
* ``reference``    -- :class:`execution.MPSReference` (paired half-chains, fused ``[1, x]``),
  started from tngraph's initial cores: the same model, different kernels;
* ``tensorkrowch`` -- TensorKrowch's ``MPSLayer`` as set up in ``execution.py``
  (``init_method='randn_eye'``, ``std=1e-9``, traced, ``auto_stack``), fed ``[1, x]``; its label
  sits on an extra core between pixels 31 and 32 (65 cores), so it is a near, not identical,
  model, with its own initialisation.

Every run: seeded split of ``tngraph.data.load_dataset("digits", seed=s)`` (1258 train / 180
val / 359 test), ``torch.manual_seed(s)`` before the model is built, mini-batches of the spec's
batch size drawn by ``torch.randperm`` from a generator seeded ``s`` (the same batch order for
every implementation), ``torch.optim.Adam(fused=True)`` over one parameter buffer (what the
``adam`` strategy creates) with the spec's learning rate and cosine schedule, denormals flushed
as ``train()`` does; test accuracy after the last epoch. Runs are interleaved: for each seed
and bond, the implementations run one after the other in an order that rotates. Torch runs one
thread unless ``--threads`` says otherwise; results are deterministic for a given seed *and*
thread count (float32 rounding differs with the thread count, and training amplifies it: the
reference, same model and same start as tngraph, ends up to 1.4 points apart on some seeds).

Run ``python benchmarks/accuracy.py`` (full: bond 10 / 20 / 40 x seeds 0, 1, 2, about
10 minutes on a loaded 2-core machine) or ``--quick`` (bond 10, one seed, 3 epochs).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from common import (  # noqa: E402
    ROOT,
    fmt_rate,
    print_environment,
    progress,
    show,
    verdict,
)
from execution import MPSReference, _tk_features, tensorkrowch_layer  # noqa: E402

#: the spec whose network and ``train:`` block every implementation follows
SPEC = ROOT / "models" / "mps_classifier.yaml"
#: "accuracy differences between implementations are within seed noise (+-2 points)"
MAX_DIFF_POINTS = 2.0
IMPLEMENTATIONS = ("tngraph", "reference", "tensorkrowch")


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by all implementations (the spec's ``train:`` block)."""

    epochs: int
    batch_size: int
    lr: float
    schedule: str


@dataclass(frozen=True)
class Candidate:
    """One row group of the report: an implementation, possibly with its own learning rate."""

    impl: str
    lr: float | None = None         # None: the recipe's

    @property
    def label(self) -> str:
        """Row label: the implementation, and a tuned learning rate if any."""
        return self.impl if self.lr is None else f"{self.impl} lr {self.lr:g} (tuned)"


@dataclass(frozen=True)
class Run:
    """The outcome of one training run."""

    label: str
    bond: int
    seed: int
    params: int
    test_accuracy: float            # nan when the loss diverged
    test_loss: float
    train_loss: float               # mean over the last epoch trained
    seconds: float                  # wall time of the training loop
    cpu_seconds: float              # CPU time of this process over the loop
    samples: int                    # training examples processed
    setup_seconds: float            # building the model (compile / trace)
    diverged_epoch: int | None = None


# ---------------------------------------------------------------------------------------------
# models


def load_spec_for(bond: int, plan_options: dict[str, Any] | None = None) -> Any:
    """``models/mps_classifier.yaml`` with ``bond_dim`` set (as ``--set bond_dim=...``) and
    ``plan_options`` written into its ``plan:`` block (so that ``train()`` plans alike)."""
    from tngraph.spec import load_spec

    spec = load_spec(SPEC, {"bond_dim": bond})
    if plan_options:
        spec = spec.model_copy(update={"plan": spec.plan.model_copy(update=plan_options)})
    return spec


def build(impl: str, spec: Any, recipe: Recipe, seed: int
          ) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The model of ``impl`` and the map from flattened pixels ``(B, sites)`` to its input.

    ``torch.manual_seed(seed)`` is called first, as ``tngraph.train.train`` does before it
    compiles; tngraph compiles for the training batch size with ``seed`` as train() does.
    """
    from tngraph.compiler import compile as compile_spec

    torch.manual_seed(seed)
    sites, bond = len(spec.network.nodes), int(spec.params["bond_dim"])
    if impl == "tensorkrowch":
        layer = tensorkrowch_layer(sites, bond, 10, recipe.batch_size)
        if layer is None:
            raise RuntimeError("tensorkrowch is not installed")
        return layer, _tk_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = compile_spec(spec, batch_size=recipe.batch_size, seed=seed)
    if impl == "tngraph":
        return module, _identity
    if impl == "reference":
        reference = MPSReference(sites, bond).load_from(module.tensors)
        probe = torch.rand(4, sites, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want, got = module(probe), reference(probe)
        err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
        if not err <= 1e-4:
            raise AssertionError(f"reference differs from tngraph at the start (rel {err:.1e})")
        return reference, _identity
    raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLEMENTATIONS)}")


def _identity(x: torch.Tensor) -> torch.Tensor:
    """tngraph and the reference take the flattened pixels as they are."""
    return x


# ---------------------------------------------------------------------------------------------
# the loop (tngraph.train.train's, without per-epoch validation and checkpoints)


@torch.no_grad()
def evaluate(model: nn.Module, to_input: Callable[[torch.Tensor], torch.Tensor],
             x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """``(loss, accuracy)`` of ``model`` on ``(x, y)``, in batches as ``train.evaluate``."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(to_input(xb)).reshape(xb.shape[0], -1)
        total += float(F.cross_entropy(out, yb)) * xb.shape[0]
        correct += int((out.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(x.shape[0], 1)
    return total / n, correct / n


def fit(model: nn.Module, to_input: Callable[[torch.Tensor], torch.Tensor], dataset: Any,
        recipe: Recipe, seed: int, lr: float | None = None) -> dict[str, Any]:
    """Train ``model`` on ``dataset``'s train split as ``tngraph.train.train`` would; return
    timings, the last epoch's training loss and the test loss / accuracy."""
    from tngraph.optimizers import TorchStepper, learning_rate

    base_lr = recipe.lr if lr is None else lr
    x_train, y_train = dataset.split("train")
    x_train = x_train.reshape(x_train.shape[0], -1)
    x_test, y_test = dataset.split("test")
    x_test = x_test.reshape(x_test.shape[0], -1)
    params = list(model.parameters())
    # what the ``adam`` strategy creates: fused Adam over one parameter buffer
    stepper = TorchStepper(model, torch.optim.Adam(model.parameters(), lr=base_lr, fused=True))
    generator = torch.Generator().manual_seed(seed)
    flushed = torch.set_flush_denormal(True)
    diverged: int | None = None
    train_loss, samples = float("nan"), 0
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        for epoch in range(1, recipe.epochs + 1):
            stepper.set_lr(learning_rate(base_lr, epoch, recipe.epochs, recipe.schedule))
            total, correct, seen = 0.0, 0, 0
            for index in torch.randperm(x_train.shape[0], generator=generator).split(
                    recipe.batch_size):
                xb, yb = x_train[index], y_train[index]
                out = model(to_input(xb)).reshape(xb.shape[0], -1)
                loss = F.cross_entropy(out, yb)
                if not torch.isfinite(loss):
                    diverged = epoch
                    break
                stepper.zero_grad()
                loss.backward()
                stepper.update()
                total += loss.item() * xb.shape[0]
                seen += xb.shape[0]
                correct += int((out.detach().argmax(1) == yb).sum())
            samples += seen
            if diverged is not None:
                break
            train_loss = total / seen
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    if diverged is None:
        test_loss, test_accuracy = evaluate(model, to_input, x_test, y_test)
    else:
        test_loss, test_accuracy = float("nan"), float("nan")
    return {"test_accuracy": test_accuracy, "test_loss": test_loss, "train_loss": train_loss,
            "seconds": seconds, "cpu_seconds": cpu_seconds, "samples": samples,
            "params": sum(p.numel() for p in params), "diverged_epoch": diverged}


def run_one(candidate: Candidate, bond: int, seed: int, recipe: Recipe,
            plan_options: dict[str, Any]) -> Run:
    """Build and train one candidate at one bond dimension and seed."""
    from tngraph.data import load_dataset

    spec = load_spec_for(bond, plan_options)
    dataset = load_dataset(spec.train.data, seed=seed)
    start = time.perf_counter()
    model, to_input = build(candidate.impl, spec, recipe, seed)
    setup = time.perf_counter() - start
    out = fit(model, to_input, dataset, recipe, seed, candidate.lr)
    return Run(candidate.label, bond, seed, setup_seconds=setup, **out)


def check_against_train(recipe: Recipe, seed: int, plan_options: dict[str, Any]) -> str:
    """One line: does this loop give ``tngraph.train.train``'s result (2 epochs, bond 10)?"""
    from tngraph.train import train

    short = Recipe(min(2, recipe.epochs), recipe.batch_size, recipe.lr, recipe.schedule)
    try:
        ours = run_one(Candidate("tngraph"), 10, seed, short, plan_options)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = train(load_spec_for(10, plan_options), run_dir=Path(tmp) / "run",
                           echo=None, epochs=short.epochs, seed=seed)
    except Exception as exc:  # noqa: BLE001 - a report line, not a crash
        return f"loop check: could not run tngraph.train.train ({type(exc).__name__}: {exc})"
    loss, acc = theirs.test.get("loss", float("nan")), theirs.test.get("accuracy", float("nan"))
    same = math.isclose(ours.test_loss, loss, rel_tol=1e-4, abs_tol=1e-6)
    return (f"loop check ({short.epochs} epochs, bond 10, seed {seed}): this loop test loss "
            f"{ours.test_loss:.6f} acc {ours.test_accuracy:.4f}; tngraph.train.train test loss "
            f"{loss:.6f} acc {acc:.4f}: {'same' if same else 'DIFFERENT'}")


# ---------------------------------------------------------------------------------------------
# report


def _pct(values: Sequence[float]) -> str:
    """``mean ± sample std`` in percent of the finite values; diverged runs counted."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "diverged"
    mean = statistics.fmean(finite) * 100
    std = statistics.stdev(finite) * 100 if len(finite) > 1 else float("nan")
    text = f"{mean:.1f} ± {std:.1f}" if math.isfinite(std) else f"{mean:.1f}"
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)} diverged)"
    return text


def _mean(values: Sequence[float]) -> float:
    """Mean of the finite values (nan if none)."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else float("nan")


def _span(values: Sequence[float]) -> str:
    """``mean (min-max)``, or the value alone for one run."""
    mean = _mean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({min(values):.1f}-{max(values):.1f})"


def report(runs: Sequence[Run], labels: Sequence[str], bonds: Sequence[int],
           seeds: Sequence[int], recipe: Recipe, threads: int,
           loads: tuple[str, str], check: str | None) -> None:
    """Print the accuracy table and the differences from tngraph."""
    rows, diffs = [], []
    for bond in bonds:
        by_label = {label: sorted((r for r in runs if r.label == label and r.bond == bond),
                                  key=lambda r: r.seed) for label in labels}
        base = {r.seed: r.test_accuracy for r in by_label.get("tngraph", [])}
        base_std = (statistics.stdev(base.values()) * 100 if len(base) > 1
                    else float("nan"))
        for label in labels:
            group = by_label[label]
            if not group:
                continue
            accs = [r.test_accuracy for r in group]
            per_seed = " / ".join("div" if not math.isfinite(a) else f"{a * 100:.1f}"
                                  for a in accs)
            rate = _mean([r.samples / r.seconds for r in group if r.seconds > 0])
            rows.append([f"chi {bond}", label, group[0].params, _pct(accs), per_seed,
                         f"{_mean([r.train_loss for r in group]):.2g}",
                         _span([r.seconds for r in group]),
                         _span([r.cpu_seconds for r in group]), fmt_rate(rate),
                         f"{_mean([r.setup_seconds for r in group]):.2f}"])
            if label == "tngraph" or not base:
                continue
            pairs = [(r.test_accuracy - base[r.seed]) * 100 for r in group
                     if r.seed in base and math.isfinite(r.test_accuracy)]
            if not pairs:
                diffs.append([f"chi {bond}", label, "-", "-", "-", "FAIL"])
                continue
            mean_diff = statistics.fmean(pairs)
            diffs.append([f"chi {bond}", label, f"{mean_diff:+.1f}",
                          " / ".join(f"{d:+.1f}" for d in pairs),
                          "-" if not math.isfinite(base_std) else f"{base_std:.1f}",
                          verdict(abs(mean_diff) <= MAX_DIFF_POINTS
                                  and len(pairs) == len(group))])
    seeds_text = ", ".join(map(str, seeds))
    notes = [
        f"recipe: the train block of models/mps_classifier.yaml: {recipe.epochs} epochs, "
        f"batch {recipe.batch_size}, Adam (fused) lr {recipe.lr:g}, {recipe.schedule} "
        "schedule;",
        "  same split, initial seed and batch order for every implementation at a seed; test "
        "accuracy after the last epoch.",
        "acc = mean ± sample std over the seeds; train loss = mean of the last epoch's "
        "training loss; wall / CPU s = the training",
        "  loop per run, mean (min-max), no per-epoch validation; samples/s = training "
        "examples / wall s; setup = compile or trace.",
        f"torch threads {threads} (interop {torch.get_num_interop_threads()}); load average "
        f"{loads[0]} at the start, {loads[1]} at the end: wall times are",
        "  affected by other processes on this machine (CPU s less so); the accuracies are "
        "not: a run is deterministic given",
        "  the seed and the thread count (float32 rounding changes with the thread count, and "
        "40 epochs amplify it to O(1)",
        "  logit differences: compare the reference rows, the same model from the same start).",
        "reference = execution.MPSReference started from tngraph's initial cores (the same "
        "model, other kernels);",
        "tensorkrowch = MPSLayer(n_features=65, out_position=32, init_method='randn_eye', "
        "std=1e-9), traced, auto_stack,",
        "  input stack([1, x]): the label sits on its own core between pixels 31 and 32, with "
        "TensorKrowch's initialisation.",
    ]
    if check:
        notes.append(check)
    show(f"MPS classifier on digits (64 sites, [1, x], 10 labels): test accuracy % over "
         f"seeds {seeds_text}",
         ["bond", "implementation", "params", "test acc %", "per seed", "train loss",
          "wall s/run", "CPU s/run", "samples/s", "setup s"], rows, notes)
    if diffs:
        show("Test accuracy minus tngraph's, same seed (percentage points)",
             ["bond", "implementation", "mean diff", "per seed", "tngraph seed std",
              f"|mean| <= {MAX_DIFF_POINTS:g}"], diffs,
             ["target (issue 3): differences between implementations within seed noise, "
              f"+-{MAX_DIFF_POINTS:g} points; a diverged run fails it."])


def _load() -> str:
    """The 1-minute load average, formatted."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print the report (exit status 0: it is a report)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="bond 10, one seed, 3 epochs (a smoke test, < 30 s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: steadier on a shared machine)")
    parser.add_argument("--bonds", type=int, nargs="+", default=None,
                        help="bond dimensions (default 10 20 40)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the spec's epochs")
    parser.add_argument("--only", choices=IMPLEMENTATIONS, nargs="+", default=None,
                        help="implementations to run (default: all; tensorkrowch if installed)")
    parser.add_argument("--tk-lr", type=float, nargs="+", default=(),
                        help="also train TensorKrowch with these learning rates (tuned rows)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the check of the loop against tngraph.train.train")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_environment("tngraph accuracy" + (" (--quick)" if args.quick else ""))
    spec = load_spec_for(10)
    recipe = Recipe(spec.train.epochs, spec.train.batch_size, spec.train.lr,
                    spec.train.schedule)
    if args.quick:
        recipe = Recipe(3, recipe.batch_size, recipe.lr, recipe.schedule)
    if args.epochs:
        recipe = Recipe(args.epochs, recipe.batch_size, recipe.lr, recipe.schedule)
    bonds = args.bonds or ([10] if args.quick else [10, 20, 40])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    plan_options: dict[str, Any] = {"max_repeats": 16} if args.quick else {}
    impls = list(args.only or IMPLEMENTATIONS)
    skipped = ""
    if "tensorkrowch" in impls and tensorkrowch_layer(4, 2, 10, 1) is None:
        impls.remove("tensorkrowch")
        skipped = "tensorkrowch not installed: skipped"
    candidates = [Candidate(i) for i in impls]
    if "tensorkrowch" in impls:
        candidates += [Candidate("tensorkrowch", lr) for lr in args.tk_lr]
    start, loads = time.perf_counter(), _load()
    check = None
    if not args.no_check and "tngraph" in impls:
        progress("checking the loop against tngraph.train.train")
        check = check_against_train(recipe, seeds[0], plan_options)
        progress(check)
    runs: list[Run] = []
    k = 0
    for seed in seeds:
        for bond in bonds:
            order = candidates[k % len(candidates):] + candidates[:k % len(candidates)]
            k += 1
            for cand in order:
                run = run_one(cand, bond, seed, recipe, plan_options)
                runs.append(run)
                acc = ("diverged at epoch " + str(run.diverged_epoch)
                       if run.diverged_epoch is not None
                       else f"test acc {run.test_accuracy * 100:.1f}%")
                progress(f"seed {seed} chi {bond} {cand.label}: {acc}, {run.seconds:.1f} s "
                         f"wall, {run.cpu_seconds:.1f} s CPU (load {_load()})")
    report(runs, [c.label for c in candidates], bonds, seeds, recipe, torch.get_num_threads(),
           (loads, _load()), check)
    if skipped:
        print(skipped)
    print(f"total {time.perf_counter() - start:.0f} s (exit status 0: this is a report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
