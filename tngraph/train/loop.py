"""The training loop: :func:`train` (a new or resumed run), its options and the stepper of its
optimizer strategy, one epoch after another with a checkpoint after each.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from tngraph.compiler import compile as compile_spec
from tngraph.data import load_dataset
from tngraph.errors import TNGraphError
from tngraph.files import FolderLock, WriteError, atomic_write
from tngraph.optimizers import (
    NonFiniteLoss,
    OptimizerContext,
    Stepper,
    check_optimizer,
    get_optimizer,
    learning_rate,
)
from tngraph.plan import check_plan_options
from tngraph.spec import (
    ParamValue,
    Spec,
    TrainOptions,
    load_spec,
    validation_message,
)
from tngraph.train.base import EpochMetrics, TrainingError, TrainResult, best_epoch
from tngraph.train.distributed import (
    Launch,
    _broadcast,
    _data_parallel,
    _ensure_group,
    _plain_torch_stepper,
    _rank_seed,
    _share_buffers,
    _sum_over_ranks,
    _weighted,
    current_launch,
    resolve_device,
    shard_batches,
)
from tngraph.train.evaluation import (
    Objective,
    RegressionFit,
    _flat,
    batch_loss,
    check_fit,
    class_scores,
    evaluate,
)
from tngraph.train.plots import _fact, plot_curves, summary_table
from tngraph.train.rundir import (
    BEST_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PLOT_FILE,
    SPEC_FILE,
    STATE_FILE,
    SUMMARY_FILE,
    _device_of,
    check_out_dir,
    data_drift,
    load_weights,
    new_run_dir,
    provenance,
    random_state,
    read_config,
    read_history,
    read_manifest,
    read_state,
    recorded_data,
    recover,
    restore_random_state,
    save_checkpoint,
    strict_json,
    tested_weights,
    unfinished_run,
    write_config,
)

#: the launch of a process outside torchrun (``_run``'s default)
_ONE_PROCESS = Launch()


def make_stepper(module: torch.nn.Module, options: TrainOptions, task: str) -> Stepper:
    """The stepper of ``options.optimizer`` (a registered strategy) for ``module``."""
    problems = check_optimizer(options.optimizer, None, ("train", "optimizer"))
    if problems:
        raise TrainingError("; ".join(p.message for p in problems))
    strategy = get_optimizer(options.optimizer.name)
    strategy_options = strategy.options.model_validate(options.optimizer.options)
    context = OptimizerContext(lr=options.lr, weight_decay=options.weight_decay, task=task)
    stepper = strategy.create(module, strategy_options, context)
    if options.grad_clip is not None:
        if not hasattr(stepper, "max_grad_norm"):
            raise TrainingError(
                f"grad_clip {options.grad_clip:g}: optimizer '{options.optimizer.name}' does "
                "not step along gradients that could be clipped (its stepper has no "
                "max_grad_norm); use it with an optimizer over torch.optim (adam, sgd), or "
                "drop grad_clip")
        stepper.max_grad_norm = options.grad_clip
    return stepper


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


#: the largest ``epochs`` / ``batch_size`` (torch counts in int64)
MAX_COUNT = 2**63 - 1


def training_options(base: Mapping[str, Any], changes: Mapping[str, Any]) -> TrainOptions:
    """``base`` training options updated by ``changes``; a bad value is a TrainingError."""
    try:
        options = TrainOptions.model_validate({**base, **changes})
    except ValidationError as exc:
        raise TrainingError(f"invalid training option: {validation_message(exc)}") from None
    for key in ("epochs", "batch_size"):
        if getattr(options, key) > MAX_COUNT:
            raise TrainingError(f"invalid training option: {key}: Input should be at most "
                                f"2**63 - 1, got {getattr(options, key)}")
    return options


def check_arguments(paths: Mapping[str, Any], echo: Any,
                    error: type[TNGraphError] = TrainingError) -> None:
    """Path arguments (``None`` or ``str`` / ``os.PathLike``) and ``echo`` (``None`` or a
    callable) of a training-like entry point, checked before anything runs; a wrong type is an
    ``error``."""
    for name, value in paths.items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise error(f"{name} must be a path (str or Path), got {type(value).__name__}")
    if echo is not None and not callable(echo):
        raise error(f"echo must be a function of one line (e.g. print) or None, got "
                    f"{type(echo).__name__}")


def _check_arguments(paths: Mapping[str, Any], plan: Any, echo: Any, objective: Any) -> None:
    """The types of :func:`train`'s arguments, checked before anything runs."""
    check_arguments(paths, echo)
    if plan is not None and not isinstance(plan, Mapping):
        raise TrainingError(f"plan must be a mapping of plan: options, got "
                            f"{type(plan).__name__}; for example plan={{'dtype': 'float64'}}")
    if objective is not None and not isinstance(objective, Objective):
        raise TrainingError(f"objective must be a tngraph.train.Objective, got "
                            f"{type(objective).__name__}")


def with_plan(spec: Spec, changes: Mapping[str, Any] | None) -> Spec:
    """``spec`` with its ``plan:`` block updated by ``changes`` (None values ignored).

    Raises
    ------
    TrainingError
        A value the plan block does not accept (every such value named).

    Examples
    --------
    >>> with_plan(load_spec("models/mps.yaml"), {"dtype": "float64"}).plan.dtype
    'float64'
    """
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    if not changes:
        return spec
    try:
        plan = spec.plan.updated(changes)
    except ValidationError as exc:
        raise TrainingError(f"invalid plan option: {validation_message(exc)}") from None
    planned = spec.model_copy(update={"plan": plan})
    problems = check_plan_options(planned)
    if problems:
        raise TrainingError("; ".join(p.message + (f" ({p.hint})" if p.hint else "")
                                      for p in problems))
    return planned


def check_split(source: str | Path, data: str, seed: int, what: str,
                dataset: Any = None) -> None:
    """Refuse a model trained (``source``: its run directory, or a weights file, whose metadata
    says) on the same dataset as this run but with another seed, or on rows that have changed
    since (``dataset`` given): this run's test split would hold examples that model was trained
    on. (Another dataset is a transfer, any seed goes; a source that records nothing has
    nothing to check.)

    Raises
    ------
    TrainingError
        Naming the ``--seed`` that keeps the split, or what changed in the data.
    """
    recorded = recorded_data(source)
    if recorded.get("data") != data:
        return
    if recorded.get("seed", seed) != seed:
        raise TrainingError(
            f"{what} was trained on {data} with seed {recorded['seed']} "
            f"({recorded['where']}); with seed "
            f"{seed} this run's test split would hold examples it was trained on; add --seed "
            f"{recorded['seed']}")
    drift = data_drift(recorded, dataset) if dataset is not None else None
    if drift:
        raise TrainingError(
            f"{what} was trained on {data} ({recorded['where']}), but {drift}: the dataset "
            "changed since, and this run's test split may hold examples it was trained on; "
            "restore the data it was trained on, or start from scratch")


def train(source: str | Path | Spec | None = None,
          overrides: Mapping[str, ParamValue] | None = None, *,
          run_dir: str | Path | None = None, resume: str | Path | None = None,
          init: str | Path | None = None, objective: Objective | None = None,
          plan: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None,
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
    plan
        Overrides of the spec's ``plan:`` block (``optimize``, ``dtype``, ``memory_limit``,
        ``strategy``, ...; None values ignored), kept in the run's ``spec.yaml``. The plan's
        batch size is always the training batch per process.
    cache_dir
        Plan cache directory (default ``$TNGRAPH_CACHE_DIR`` or ``~/.cache/tngraph/plans``).
    echo
        Receives one line per epoch and the summary (``None``: silent).
    **options
        Overrides of the spec's ``train:`` block: ``data``, ``epochs``, ``batch_size``, ``lr``,
        ``optimizer``, ``weight_decay``, ``seed``, ``device``.

    Notes
    -----
    Under ``torchrun`` with more than one process the run is data-parallel (see
    :func:`shard_batches` and docs/training.md); every rank returns the same result.
    """
    _check_arguments({"run_dir": run_dir, "resume": resume, "init": init,
                      "cache_dir": cache_dir}, plan, echo, objective)
    options = {k: v for k, v in options.items() if v is not None}
    launch = current_launch()
    if resume is not None and init is not None:
        raise TrainingError("--init starts a new run from given weights; --resume continues a "
                            "run with its own: give one of them")
    with ExitStack() as held:               # the run folder's lock, while this run writes it
        if resume is not None:
            run = Path(resume)
            spec, train_options = _resumed(run, options, objective, launch, held)
            spec = with_plan(spec, plan)
        else:
            if source is None:
                raise TrainingError("nothing to train: give a spec, or resume=RUN_DIR")
            spec = source if isinstance(source, Spec) else load_spec(source, overrides)
            spec = with_plan(spec, plan)
            train_options = training_options(spec.train.model_dump(), options)
            run = Path(run_dir) if run_dir is not None else None
            if run is not None:
                check_out_dir(run)          # early; again under the lock when it is made
            if init is not None:
                check_split(init, train_options.data, train_options.seed, f"--init {init}")
        device = resolve_device(train_options.device, launch)   # before anything is written
        # Long products of near-identity cores drive some gradients (and Adam's moments) into
        # subnormal floats, which x86 CPUs process a hundred times slower: flush them to zero.
        flushed = torch.set_flush_denormal(True)
        try:
            return _run(spec, train_options, device, run, resume is not None, echo, init,
                        objective, launch, cache_dir, held)
        finally:
            if flushed:
                torch.set_flush_denormal(False)


def _lock(run: Path, launch: Launch, held: ExitStack, command: str) -> None:
    """Take ``run``'s lock for this run (rank 0 of a launch; the others follow it)."""
    if launch.main:
        held.enter_context(FolderLock(run, command))


def _resumed(run: Path, options: Mapping[str, Any], objective: Objective | None,
             launch: Launch, held: ExitStack) -> tuple[Spec, TrainOptions]:
    """Lock and recover the run folder ``run`` and read what it recorded: its spec and the
    training options updated by ``options`` (those that would change its split refused)."""
    if not run.is_dir():
        raise TrainingError(f"cannot resume {run}: no such folder; expected a run directory "
                            "written by tngraph train")
    _lock(run, launch, held, "tngraph train --resume")
    if launch.distributed:
        _ensure_group(launch)
    manifest = recover(run) if launch.main else read_manifest(run)
    if launch.distributed:
        torch.distributed.barrier()         # rank 0 has recovered the folder
    if manifest is None and unfinished_run(run):
        try:
            objective_recorded = read_config(run).get("objective")
        except TrainingError:               # no config.json yet
            objective_recorded = None
        command = "tngraph distill" if objective_recorded else "tngraph train"
        raise TrainingError(
            f"{run} stopped before its first checkpoint was complete, so there is nothing to "
            f"resume; start it again: {command} SPEC --out {run} (that folder is reused)")
    config = read_config(run, missing=f"cannot resume {run}: no {CONFIG_FILE} there; expected "
                                      "a run directory written by tngraph train")
    if manifest is None and not (run / STATE_FILE).is_file():
        raise TrainingError(f"cannot resume {run}: it holds no checkpoint ({MANIFEST_FILE}); "
                            "expected a run directory written by tngraph train")
    if not (run / SPEC_FILE).is_file():
        raise TrainingError(f"cannot resume {run}: no {SPEC_FILE} there; expected a run "
                            "directory written by tngraph train")
    spec = load_spec(run / SPEC_FILE)
    if config.get("objective") and objective is None:
        raise TrainingError(f"{run} is a {config['objective'].get('kind', 'special')} run; "
                            f"resume it with tngraph distill --resume {run}")
    if not isinstance(config.get("train"), dict):
        raise TrainingError(f"cannot read {run / CONFIG_FILE}: it has no training options; "
                            "it is not the config.json tngraph train writes")
    train_options = training_options(config["train"], options)
    for key in ("data", "seed"):       # they make the split: the test set would change
        was, now = config["train"].get(key), getattr(train_options, key)
        if was is not None and now != was:
            raise TrainingError(f"{run} was trained with {key} {was!r}; a resumed run keeps "
                                f"its {key} (another one changes the data split, so test "
                                f"examples would be trained on); drop --{key} {now}, or "
                                "train a new run from the spec")
    was = training_options(config["train"], {}).optimizer.name
    if train_options.optimizer.name != was:
        raise TrainingError(
            f"{run} was trained with optimizer '{was}'; a resumed run continues its "
            f"optimizer state, which '{train_options.optimizer.name}' cannot take: drop "
            f"--optimizer {train_options.optimizer.name}, or start a new run from its "
            f"weights (tngraph train SPEC --init {run / MODEL_FILE} --optimizer "
            f"{train_options.optimizer.name})")
    return spec, train_options


def _new_run_folder(run: Path | None, name: str, launch: Launch, held: ExitStack) -> Path:
    """Make (``run`` None: a fresh ``runs/NAME-...``) and lock the folder of a new run; a run
    stopped there before its first checkpoint leaves files that are removed."""
    if run is None:
        run = new_run_dir(name)             # created atomically; in a launch, rank 0's
    elif launch.main:
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot create {run}: {os.strerror(exc.errno or 0)}") from None
    if launch.main:
        _lock(run, launch, held, "tngraph train")
        check_out_dir(run, locked=True)     # again: another process may have been quicker
        if unfinished_run(run):
            recover(run)
            for left in (run / SPEC_FILE, run / CONFIG_FILE):    # config.json marks it ours
                if left.exists():
                    left.unlink()
    return run


def _run(spec: Spec, train_options: TrainOptions, device: torch.device, run: Path | None,
         resuming: bool, echo: Callable[[str], None] | None, init: str | Path | None = None,
         objective: Objective | None = None, launch: Launch = _ONE_PROCESS,
         cache_dir: str | Path | None = None, held: ExitStack | None = None) -> TrainResult:
    held = held if held is not None else ExitStack()
    torch.manual_seed(train_options.seed)
    dataset = load_dataset(train_options.data, seed=train_options.seed)
    recorded = read_config(run) if resuming else None
    if recorded is not None:
        drift = data_drift(recorded, dataset)
        if drift:
            raise TrainingError(
                f"{run} was trained on {train_options.data}, but {drift}: the dataset changed "
                "since it was trained, so a resumed run would train and test on other "
                "examples; restore that data, or train a new run from its spec")
    elif init is not None:
        check_split(init, train_options.data, train_options.seed, f"--init {init}", dataset)
    world = launch.world_size
    if launch.distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if train_options.batch_size < world:
            raise TrainingError(f"batch_size {train_options.batch_size} is split over {world} "
                                f"processes; raise it to at least {world}")
    say = (echo or (lambda _line: None)) if launch.main else (lambda _line: None)
    if launch.distributed:
        _ensure_group(launch)
        # every rank has checked the run dir before rank 0 goes on (and writes); rank 0 plans
        # first, the others then read its plans from the plan cache: the same contraction
        # trees everywhere, whatever the plan search's randomness
        if not launch.main:
            torch.distributed.barrier()
    # the plan is made for what one process contracts: its share of the global batch, which
    # is never more than the training set (--batch-size 10^8 planned for 10^8 examples)
    largest = min(train_options.batch_size, dataset.split("train")[0].shape[0])
    module = compile_spec(spec, batch_size=max(-(-largest // world), 1),
                          seed=train_options.seed, cache_dir=cache_dir).to(device)
    if launch.distributed and launch.main:
        torch.distributed.barrier()
    check_fit(module, dataset)
    generator = torch.Generator().manual_seed(train_options.seed)
    first_epoch = 1
    history: list[EpochMetrics] = []
    if resuming:                            # recover() has checked it against the manifest
        load_weights(module, run / MODEL_FILE)
    elif init is not None:
        load_weights(module, init)
    if objective is not None and objective.bind is not None:
        objective.bind(module)
    if not resuming and objective is not None and objective.prepare is not None:
        objective.prepare(module, dataset, train_options, say)
    stepper = make_stepper(module, train_options, dataset.task)
    if launch.distributed and not _plain_torch_stepper(stepper):
        raise TrainingError(
            f"optimizer '{train_options.optimizer.name}' cannot run data-parallel (torchrun, "
            f"WORLD_SIZE={world}): only optimizers over torch.optim (adam, sgd) do; its "
            "updates are not averaged gradients. Run it in one process, or choose "
            "--optimizer adam / sgd")
    x_train, y_train = dataset.split("train")
    state: dict[str, Any] = {}
    if resuming:
        state = read_state(run)
        stepper.load_state_dict(state["stepper"])
        generator.set_state(state["generator"])
        restore_random_state(state, device)
        first_epoch = int(state["epoch"]) + 1
        history = [h for h in read_history(run) if h.epoch < first_epoch]
    if launch.distributed:
        stepper = _data_parallel(stepper, train_options, x_train, device, launch)
        ranks_rng = state.get("rng_ranks") or [
            {"torch_rng": rng} for rng in state.get("torch_rng_ranks", ())]   # older runs
        if len(ranks_rng) == world:
            restore_random_state(ranks_rng[launch.rank], device)
        elif not launch.main:
            torch.manual_seed(_rank_seed(train_options.seed + first_epoch, launch.rank))
    if recorded is not None:
        config = recorded
    else:
        config = {"train": train_options.model_dump(), "dataset": dataset.name,
                  "sizes": dataset.sizes, "fingerprint": dataset.fingerprint(),
                  "task": dataset.task,
                  **({"objective": dict(objective.config)} if objective else {})}
        # made once the data, network and optimizer are known good: a refused run leaves none
        run = _new_run_folder(run, spec.name, launch, held)
        if launch.main:
            write_config(run, config)
    origin = provenance(config)
    if not resuming:
        _checkpoint(run, stepper, 0, generator, launch, history, origin)   # last good so far

    metric = "accuracy" if dataset.task == "classification" else "r2"
    start_all = time.perf_counter()
    if first_epoch == 1:
        say(dataset.summary())
    if launch.distributed:
        per_rank = -(-train_options.batch_size // world)
        say(f"data-parallel: {world} processes ({torch.distributed.get_backend()}), each "
            f"takes ~{per_rank} of every batch of {train_options.batch_size}")
    for epoch in range(first_epoch, train_options.epochs + 1):
        start = time.perf_counter()
        stepper.set_lr(learning_rate(train_options.lr, epoch, train_options.epochs,
                                     train_options.schedule))
        stepper.module.train()
        total, correct, seen = 0.0, 0, 0
        fit = RegressionFit() if dataset.task == "regression" else None
        batches = shard_batches(x_train.shape[0], train_options.batch_size, generator, launch)
        progress = (_progress(len(batches), f"epoch {epoch}/{train_options.epochs}")
                    if launch.main else None)
        try:
            for step, (index, weight) in enumerate(batches, 1):
                xb, yb = x_train[index].to(device), y_train[index].to(device)
                loss_of: Callable[[torch.Tensor], torch.Tensor] = (
                    (lambda out, xb=xb, yb=yb: objective.loss(xb, yb, out)) if objective
                    else (lambda out, yb=yb: batch_loss(out, yb, dataset.task)))
                if weight != 1.0:    # uneven shares of a batch over the ranks
                    loss_of = _weighted(loss_of, weight)
                try:
                    loss, out = stepper.step(xb, loss_of)
                    if weight != 1.0:
                        loss = loss / weight
                except NonFiniteLoss as exc:
                    raise TrainingError(
                        f"the loss became {exc.value} at epoch {epoch}, step {step}; training "
                        f"stopped, the last good checkpoint (epoch {epoch - 1}) is kept in {run}; "
                        "lower the learning rate (--lr) or check the data") from None
                out = _flat(out)
                total += loss.item() * xb.shape[0]
                seen += xb.shape[0]
                if dataset.task == "classification":
                    correct += int((class_scores(out.detach()).argmax(1) == yb).sum())
                else:
                    fit.add(out.detach(), yb)
                if progress is not None:
                    progress.update(progress.task_ids[0], advance=1,
                                    info=f"loss {total / seen:.4f}")
        finally:
            if progress is not None:
                progress.stop()
        stepper.end_epoch()
        module = stepper.module
        seconds = time.perf_counter() - start
        total, correct, seen, *sums = _sum_over_ranks(
            [total, correct, seen, *(fit.sums() if fit is not None else ())], launch)
        _share_buffers(module, launch)
        record = None
        if launch.main:     # rank 0 alone evaluates (the parameters are the same everywhere)
            val = evaluate(module, dataset, "val")
            train_metric = correct / seen if fit is None else fit.r2(sums)
            record = EpochMetrics(epoch, total / seen, train_metric, val["loss"], val[metric],
                                  seconds, seen / seconds)
        record = _broadcast(record, launch)
        history.append(record)
        _checkpoint(run, stepper, epoch, generator, launch, history, origin,
                    best=best_epoch(history) == epoch)
        facts = "".join(f"  {k} {_fact(v)}" for k, v in stepper.describe().items())
        val_part = (f"val loss {record.val_loss:.4f}  val {metric} {record.val_metric:.4f}"
                    if dataset.sizes["val"] else "no validation split")
        say(f"epoch {epoch:3d}  loss {record.train_loss:.4f}  {val_part}  "
            f"{record.samples_per_s:,.0f} samples/s" + facts)
    tested = (best_epoch(history) if train_options.test_on == "best" else None) or (
        history[-1].epoch if history else 0)
    test, seconds = _broadcast((evaluate(_tested_module(run, module, tested, history, cache_dir),
                                         dataset, "test"),
                                time.perf_counter() - start_all) if launch.main else None, launch)
    result = TrainResult(run, metric, tuple(history), test, seconds,
                         tested=(train_options.test_on, tested))
    if launch.main:
        plot_curves(result, run / PLOT_FILE)
        atomic_write(run / SUMMARY_FILE, json.dumps(strict_json(
            {"test": test, "tested": {"weights": result.tested[0], "epoch": tested,
                                      "file": BEST_FILE if result.tested[0] == "best"
                                      else MODEL_FILE},
             "epochs": len(history), "seconds": result.seconds,
             "processes": world,
             "optimizer": {"name": train_options.optimizer.name, **stepper.describe()}}),
            indent=2, allow_nan=False).encode())
    say(summary_table(result))
    if launch.distributed:
        torch.distributed.barrier()     # no rank leaves before rank 0 has written everything
    return result


def _tested_module(run: Path, module: Any, epoch: int, history: list[EpochMetrics],
                   cache_dir: str | Path | None) -> Any:
    """The module the test split measures: ``module`` itself when ``epoch`` is its last,
    else the weights of ``best.safetensors`` (epoch ``epoch``) in a module of their spec."""
    if not history or epoch == history[-1].epoch:
        return module
    path, spec_source = tested_weights(run)
    best = (compile_spec(load_spec(spec_source), cache_dir=cache_dir)
            if isinstance(spec_source, str) else copy.deepcopy(module))
    load_weights(best, path)
    return best.to(_device_of(module))


def _checkpoint(run: Path, stepper: Stepper, epoch: int, generator: torch.Generator,
                launch: Launch, history: list[EpochMetrics], origin: Mapping[str, str],
                best: bool = False) -> None:
    """:func:`save_checkpoint` by rank 0, with every rank's random state in a launch; a failed
    write names the last complete checkpoint."""
    extra = {}
    if launch.distributed:
        states: list[Any] = [None] * launch.world_size
        torch.distributed.all_gather_object(states, random_state(_device_of(stepper.module)))
        extra["rng_ranks"] = states
    if not launch.main:
        return
    try:
        save_checkpoint(run, stepper, epoch, generator, history, origin, best, **extra)
    except WriteError as exc:
        if epoch == 0:
            raise TrainingError(f"{exc}; no checkpoint was written, the run did not start: "
                                f"make room and start it again with --out {run}") from None
        raise TrainingError(f"{exc}; the last complete checkpoint is epoch {epoch - 1}: make "
                            f"room and resume it with tngraph train --resume {run}") from None
