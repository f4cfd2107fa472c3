"""Training and evaluation of a compiled network on a dataset (``tngraph train`` / ``eval``).

``train(spec, data=...)`` compiles the spec, checks that its data port and outputs fit the
dataset, and runs epochs of mini-batch training: cross-entropy and accuracy for
classification, mean squared error and R² for regression. Every epoch appends a line to
``metrics.jsonl`` in the run directory and writes a checkpoint atomically (a crash never leaves a
half-written file): ``model.safetensors`` (weights, with the expanded spec in its metadata),
``state.pt`` (optimizer strategy state, epoch, random state), beside ``spec.yaml`` and
``config.json``; at the end, ``curves.png`` plots loss and metric per epoch.
``resume=RUN_DIR`` continues exactly where a run stopped. A loss that becomes NaN or infinite
stops the run with a clear message; the last good checkpoint stays.

Examples
--------
>>> result = train("models/mps_classifier.yaml", run_dir="runs/demo", epochs=2)  # doctest: +SKIP
>>> result.test["accuracy"]                                                     # doctest: +SKIP
0.93
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tngraph.compiler import Compiled, Pipeline
from tngraph.compiler import compile as compile_spec
from tngraph.data import Dataset, load_dataset
from tngraph.errors import TNGraphError
from tngraph.files import atomic_write
from tngraph.optimizers import (
    NonFiniteLoss,
    OptimizerContext,
    Stepper,
    check_optimizer,
    get_optimizer,
    learning_rate,
)
from tngraph.spec import ParamValue, Spec, TrainOptions, load_spec
from tngraph.yamlio import dump_yaml

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


class TrainingError(TNGraphError):
    """A run cannot start or cannot go on (mismatched data, diverging loss, bad run dir)."""


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured (one line of ``metrics.jsonl``)."""

    epoch: int
    train_loss: float
    train_metric: float
    val_loss: float
    val_metric: float
    seconds: float
    samples_per_s: float


@dataclass(frozen=True)
class Objective:
    """What a run minimises, when it is not the plain loss on the labels (distillation).

    Attributes
    ----------
    loss
        ``loss(x, y, out) -> scalar`` for one mini-batch (``out``: the model's outputs).
    prepare
        Called once before the first epoch of a fresh run, after the weights are initialised:
        ``prepare(module, dataset, train_options, echo)`` (e.g. layer-wise pre-fitting).
    bind
        Called with the compiled module of every run, fresh or resumed, before ``prepare``.
    config
        Recorded in ``config.json`` under ``"objective"`` (what ``--resume`` needs to rebuild it).
    """

    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    prepare: Callable[..., None] | None = None
    bind: Callable[[Any], None] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    """The outcome of a run: its directory, per-epoch history and final test metrics."""

    run_dir: Path
    metric: str                         # "accuracy" or "r2"
    history: tuple[EpochMetrics, ...]
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# compatibility of a network with a dataset


def check_fit(module: Compiled, dataset: Dataset) -> None:
    """Raise TrainingError unless ``module`` maps one example of ``dataset`` to a prediction."""
    spec = module.spec
    if isinstance(module, Pipeline):
        per_sample = math.prod(module.input_shape)
        if per_sample != dataset.n_features:
            raise TrainingError(
                f"pipeline '{spec.name}' takes examples of shape {list(module.input_shape)} "
                f"({per_sample} values) but dataset '{dataset.name}' has "
                f"{dataset.n_features} features (shape "
                f"{'x'.join(map(str, dataset.feature_shape))}); set input_shape to match")
        _check_outputs(spec.name, math.prod(module.output_shape), dataset)
        return
    ports = list(spec.network.inputs.items())
    if len(ports) != 1:
        raise TrainingError(
            f"network '{spec.name}' has {len(ports)} data inputs; training feeds exactly one "
            "(declare one port under network.inputs, e.g. a template's 'input: x')")
    name, port = ports[0]
    per_sample = (port.stack or 1) * (1 if port.feature_map is not None else math.prod(port.shape))
    if per_sample != dataset.n_features:
        raise TrainingError(
            f"input '{name}' of '{spec.name}' takes {per_sample} values per example but "
            f"dataset '{dataset.name}' has {dataset.n_features} features "
            f"(shape {'x'.join(map(str, dataset.feature_shape))}); "
            "resize the network (e.g. --set sites=...) or choose another dataset")
    _check_outputs(spec.name, math.prod(module._out_legs_shape), dataset)


def _check_outputs(name: str, outputs: int, dataset: Dataset) -> None:
    if dataset.task == "classification" and outputs != dataset.n_classes:
        raise TrainingError(
            f"network '{name}' has {outputs} outputs per example but dataset "
            f"'{dataset.name}' has {dataset.n_classes} classes; set the output leg's dimension "
            f"to {dataset.n_classes} (e.g. output_dim: {dataset.n_classes})")
    target = math.prod(dataset.target_shape)
    if dataset.task == "regression" and outputs != target:
        raise TrainingError(
            f"network '{name}' has {outputs} outputs per example but dataset "
            f"'{dataset.name}' has {target} regression targets")


# ---------------------------------------------------------------------------------------------
# metrics


def _flat(out: torch.Tensor) -> torch.Tensor:
    return out.reshape(out.shape[0], -1)


def batch_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy (classification) or mean squared error (regression) of one batch."""
    out = _flat(out)
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y.reshape(out.shape))


@torch.no_grad()
def evaluate(module: Compiled, dataset: Dataset, split: str = "test",
             batch_size: int = 512) -> dict[str, float]:
    """Loss and accuracy (classification) or MSE and R² (regression) on one split.

    Examples
    --------
    >>> evaluate(module, load_dataset("digits"), "val")        # doctest: +SKIP
    {'loss': 0.12, 'accuracy': 0.97}
    """
    x, y = dataset.split(split)
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    total, correct, count = 0.0, 0, 0
    outs: list[torch.Tensor] = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size].to(device)
        yb = y[start:start + batch_size].to(device)
        out = _flat(module(xb))
        total += float(batch_loss(out, yb, dataset.task)) * xb.shape[0]
        count += xb.shape[0]
        if dataset.task == "classification":
            correct += int((out.argmax(1) == yb).sum())
        else:
            outs.append(out.float().cpu())
    module.train(was_training)
    metrics = {"loss": total / max(count, 1)}
    if dataset.task == "classification":
        metrics["accuracy"] = correct / max(count, 1)
    else:
        pred = torch.cat(outs) if outs else torch.zeros(0)
        target = y.reshape(pred.shape).float()
        residual = float(((pred - target) ** 2).sum())
        spread = float(((target - target.mean(0)) ** 2).sum())
        metrics["r2"] = 1.0 - residual / spread if spread > 0 else float("nan")
    return metrics


# ---------------------------------------------------------------------------------------------
# files


def save_weights(module: Compiled, path: Path, **metadata: str) -> None:
    """``module.state_dict()`` as safetensors, atomically, the expanded spec (and ``metadata``)
    in its header."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    header = {"tngraph_spec": dump_yaml(module.spec.to_raw()), **metadata}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def save_checkpoint(run_dir: Path, stepper: Stepper, epoch: int,
                    generator: torch.Generator) -> None:
    """Weights as safetensors (spec in the metadata) and the training state, each atomic.

    ``spec.yaml`` is rewritten when the strategy changed the network's shapes (``dmrg``), so
    that a resumed run compiles the network the weights belong to.
    """
    module = stepper.module
    spec_text = dump_yaml(module.spec.to_raw())
    spec_file = run_dir / "spec.yaml"
    if not spec_file.is_file() or spec_file.read_text() != spec_text:
        atomic_write(spec_file, lambda tmp: Path(tmp).write_text(spec_text))
    save_weights(module, run_dir / MODEL_FILE, epoch=str(epoch))
    state = {"epoch": epoch, "stepper": stepper.state_dict(),
             "generator": generator.get_state(), "torch_rng": torch.get_rng_state()}
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_weights(module: Compiled, path: str | Path) -> None:
    """Load a ``model.safetensors`` written by tngraph into ``module`` (shapes checked)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}; expected a model.safetensors file "
                            "written by tngraph train")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user error
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise TrainingError(
            f"checkpoint {path} does not fit network '{module.spec.name}': "
            f"missing {missing or 'none'}, unexpected {unexpected or 'none'}, "
            f"shape differs for {wrong or 'none'}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()})


# ---------------------------------------------------------------------------------------------
# the loop


def make_stepper(module: torch.nn.Module, options: TrainOptions, task: str) -> Stepper:
    """The stepper of ``options.optimizer`` (a registered strategy) for ``module``."""
    problems = check_optimizer(options.optimizer, None, ("train", "optimizer"))
    if problems:
        raise TrainingError("; ".join(p.message for p in problems))
    strategy = get_optimizer(options.optimizer.name)
    strategy_options = strategy.options.model_validate(options.optimizer.options)
    context = OptimizerContext(lr=options.lr, weight_decay=options.weight_decay, task=task)
    return strategy.create(module, strategy_options, context)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def _progress(total: int, label: str) -> Any:
    if not sys.stderr.isatty() or os.environ.get("TNGRAPH_NO_PROGRESS"):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                        transient=True)
    progress.start()
    progress.add_task(label, total=total, info="")
    return progress


def _options(base: Mapping[str, Any], changes: Mapping[str, Any]) -> TrainOptions:
    """``base`` training options updated by ``changes``; a bad value is a TrainingError."""
    from pydantic import ValidationError

    try:
        return TrainOptions.model_validate({**base, **changes})
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TrainingError(f"invalid training option: {bad}") from None


def _new_run_dir(name: str) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3``, ... if taken)."""
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run, k = base, 1
    while run.exists():
        k += 1
        run = base.with_name(f"{base.name}-{k}")
    return run


def train(source: str | Path | Spec | None = None,
          overrides: Mapping[str, ParamValue] | None = None, *,
          run_dir: str | Path | None = None, resume: str | Path | None = None,
          init: str | Path | None = None, objective: Objective | None = None,
          echo: Callable[[str], None] | None = print, **options: Any) -> TrainResult:
    """Train a spec's network on a dataset; see the module docstring for the files written.

    Parameters
    ----------
    source
        Spec path, YAML text or Spec (not needed with ``resume``).
    overrides
        ``--set`` parameter values.
    run_dir
        Where the run's files go (created; must not hold another run). Default
        ``runs/<spec name>-<date>-<time>``.
    resume
        A run directory to continue: its spec, config, weights and optimizer state are loaded
        and training goes on from the next epoch (``epochs`` may be raised).
    init
        A ``model.safetensors`` to start from (a new run that fine-tunes those weights, e.g.
        after ``tngraph tensorize``); shapes must fit the spec.
    objective
        What to minimise instead of the loss on the labels (:mod:`tngraph.distill` passes one).
    echo
        Receives one line per epoch and the summary (``None``: silent).
    **options
        Overrides of the spec's ``train:`` block: ``data``, ``epochs``, ``batch_size``, ``lr``,
        ``optimizer``, ``weight_decay``, ``seed``, ``device``.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if resume is not None and init is not None:
        raise TrainingError("--init starts a new run from given weights; --resume continues a "
                            "run with its own: give one of them")
    if resume is not None:
        run = Path(resume)
        if not (run / "config.json").is_file() or not (run / "spec.yaml").is_file():
            raise TrainingError(f"cannot resume {run}: no config.json / spec.yaml there; "
                                "expected a run directory written by tngraph train")
        spec = load_spec(run / "spec.yaml")
        config = json.loads((run / "config.json").read_text())
        if config.get("objective") and objective is None:
            raise TrainingError(f"{run} is a {config['objective'].get('kind', 'special')} run; "
                                f"resume it with tngraph distill --resume {run}")
        train_options = _options(config["train"], options)
    else:
        if source is None:
            raise TrainingError("nothing to train: give a spec, or resume=RUN_DIR")
        spec = source if isinstance(source, Spec) else load_spec(source, overrides)
        train_options = _options(spec.train.model_dump(), options)
        run = Path(run_dir) if run_dir is not None else _new_run_dir(spec.name)
        if (run / METRICS_FILE).exists():
            raise TrainingError(f"{run} already holds a run; resume it with --resume {run}, "
                                "or choose another --out")
    run.mkdir(parents=True, exist_ok=True)
    # Long products of near-identity cores drive some gradients (and Adam's moments) into
    # subnormal floats, which x86 CPUs process a hundred times slower: flush them to zero.
    flushed = torch.set_flush_denormal(True)
    try:
        return _run(spec, train_options, run, resume is not None, echo, init, objective)
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _run(spec: Spec, train_options: TrainOptions, run: Path, resuming: bool,
         echo: Callable[[str], None] | None, init: str | Path | None = None,
         objective: Objective | None = None) -> TrainResult:
    torch.manual_seed(train_options.seed)
    dataset = load_dataset(train_options.data, seed=train_options.seed)
    device = torch.device(train_options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: CUDA is not available on this machine")
    module = compile_spec(spec, batch_size=train_options.batch_size,
                          seed=train_options.seed).to(device)
    check_fit(module, dataset)
    generator = torch.Generator().manual_seed(train_options.seed)
    first_epoch = 1
    history: list[EpochMetrics] = []
    if resuming:
        load_weights(module, run / MODEL_FILE)
    elif init is not None:
        load_weights(module, init)
    if objective is not None and objective.bind is not None:
        objective.bind(module)
    if not resuming and objective is not None and objective.prepare is not None:
        objective.prepare(module, dataset, train_options, echo or (lambda _line: None))
    stepper = make_stepper(module, train_options, dataset.task)
    if resuming:
        state = torch.load(run / STATE_FILE, weights_only=False)
        stepper.load_state_dict(state["stepper"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        first_epoch = int(state["epoch"]) + 1
        history = [EpochMetrics(**json.loads(line))
                   for line in (run / METRICS_FILE).read_text().splitlines() if line.strip()]
        history = [h for h in history if h.epoch < first_epoch]
    else:
        (run / "config.json").write_text(json.dumps(
            {"train": train_options.model_dump(), "dataset": dataset.name,
             "sizes": dataset.sizes, "task": dataset.task,
             **({"objective": dict(objective.config)} if objective else {})}, indent=2))
        (run / METRICS_FILE).write_text("")
        save_checkpoint(run, stepper, 0, generator)   # last good, so far

    metric = "accuracy" if dataset.task == "classification" else "r2"
    x_train, y_train = dataset.split("train")
    start_all = time.perf_counter()
    say = echo or (lambda _line: None)
    if first_epoch == 1:
        say(dataset.summary())
    for epoch in range(first_epoch, train_options.epochs + 1):
        start = time.perf_counter()
        stepper.set_lr(learning_rate(train_options.lr, epoch, train_options.epochs,
                                     train_options.schedule))
        stepper.module.train()
        total, correct, seen = 0.0, 0, 0
        batches = list(_batches(x_train.shape[0], train_options.batch_size, generator))
        progress = _progress(len(batches), f"epoch {epoch}/{train_options.epochs}")
        try:
            for step, index in enumerate(batches, 1):
                xb, yb = x_train[index].to(device), y_train[index].to(device)
                try:
                    loss, out = stepper.step(xb, (
                        (lambda out, xb=xb, yb=yb: objective.loss(xb, yb, out)) if objective
                        else (lambda out, yb=yb: batch_loss(out, yb, dataset.task))))
                except NonFiniteLoss as exc:
                    raise TrainingError(
                        f"the loss became {exc.value} at epoch {epoch}, step {step}; training "
                        f"stopped, the last good checkpoint (epoch {epoch - 1}) is kept in {run}; "
                        "lower the learning rate (--lr) or check the data") from None
                out = _flat(out)
                total += loss.item() * xb.shape[0]
                seen += xb.shape[0]
                if dataset.task == "classification":
                    correct += int((out.detach().argmax(1) == yb).sum())
                if progress is not None:
                    progress.update(progress.task_ids[0], advance=1,
                                    info=f"loss {total / seen:.4f}")
        finally:
            if progress is not None:
                progress.stop()
        stepper.end_epoch()
        module = stepper.module
        seconds = time.perf_counter() - start
        val = evaluate(module, dataset, "val")
        train_metric = correct / seen if dataset.task == "classification" else float("nan")
        record = EpochMetrics(epoch, total / seen, train_metric, val["loss"], val[metric],
                              seconds, seen / seconds)
        history.append(record)
        save_checkpoint(run, stepper, epoch, generator)
        with open(run / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(asdict(record)) + "\n")
        facts = "".join(f"  {k} {_fact(v)}" for k, v in stepper.describe().items())
        say(f"epoch {epoch:3d}  loss {record.train_loss:.4f}  val loss {record.val_loss:.4f}  "
            f"val {metric} {record.val_metric:.4f}  {record.samples_per_s:,.0f} samples/s"
            + facts)
    test = evaluate(module, dataset, "test")
    result = TrainResult(run, metric, tuple(history), test, time.perf_counter() - start_all)
    plot_curves(result, run / PLOT_FILE)
    (run / "summary.json").write_text(json.dumps(
        {"test": test, "epochs": len(history), "seconds": result.seconds,
         "optimizer": {"name": train_options.optimizer.name, **stepper.describe()}}, indent=2))
    say(summary_table(result))
    return result


def _fact(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return f"max {max(value)} (of {len(value)})" if value else "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_curves(result: TrainResult, path: Path) -> None:
    """Loss (train, validation) and the validation metric per epoch, as a PNG (written
    atomically)."""
    import matplotlib

    matplotlib.use("Agg")    # no display needed
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in result.history]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.train_loss for h in result.history], label="train")
    ax_loss.plot(epochs, [h.val_loss for h in result.history], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    if result.metric == "accuracy":
        ax_metric.plot(epochs, [h.train_metric for h in result.history], label="train")
    ax_metric.plot(epochs, [h.val_metric for h in result.history], label="validation")
    ax_metric.set(xlabel="epoch", ylabel=result.metric, title=result.metric)
    ax_metric.legend()
    fig.suptitle(f"{result.run_dir.name}: test " + ", ".join(
        f"{k} {v:.4f}" for k, v in result.test.items()))
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def summary_table(result: TrainResult) -> str:
    """The end-of-run table (best and last epoch, test metrics) as text."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {result.run_dir}", box=box.SIMPLE, title_justify="left")
    for col in ("", "epoch", "train loss", "val loss", f"val {result.metric}"):
        table.add_column(col, justify="right")
    if result.history:
        best = max(result.history, key=lambda h: h.val_metric)
        for label, h in (("best", best), ("last", result.history[-1])):
            table.add_row(label, str(h.epoch), f"{h.train_loss:.4f}", f"{h.val_loss:.4f}",
                          f"{h.val_metric:.4f}")
    buf = io.StringIO()
    console = Console(file=buf, width=100, no_color=True, color_system=None)
    console.print(table)
    tests = "  ".join(f"{k} {v:.4f}" for k, v in result.test.items())
    console.print(f"test: {tests}   ({result.seconds:.1f} s)")
    return buf.getvalue().rstrip()
