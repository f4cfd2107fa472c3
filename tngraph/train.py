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

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), a run is data-parallel with no change to the spec:
each process trains the same network under ``DistributedDataParallel`` on its share of every
mini-batch (the global batch stays ``batch_size``), epoch metrics are summed over the processes,
and only rank 0 evaluates, writes files and prints (see :class:`Launch`, docs/training.md).

Examples
--------
>>> result = train("models/mps_classifier.yaml", run_dir="runs/demo", epochs=2)  # doctest: +SKIP
>>> result.test["accuracy"]                                                     # doctest: +SKIP
0.93
"""

from __future__ import annotations

import atexit
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
    TorchStepper,
    check_optimizer,
    get_optimizer,
    learning_rate,
)
from tngraph.plan import check_plan_options
from tngraph.spec import (
    ParamValue,
    PlanOptions,
    Spec,
    TrainOptions,
    check_device,
    load_spec,
    validation_message,
)
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
                    generator: torch.Generator, **extra: Any) -> None:
    """Weights as safetensors (spec in the metadata) and the training state, each atomic.

    ``spec.yaml`` is rewritten when the strategy changed the network's shapes (``dmrg``), so
    that a resumed run compiles the network the weights belong to. ``extra`` entries go into
    ``state.pt`` too (a data-parallel run adds every rank's random state).
    """
    module = stepper.module
    spec_text = dump_yaml(module.spec.to_raw())
    spec_file = run_dir / "spec.yaml"
    if not spec_file.is_file() or spec_file.read_text() != spec_text:
        atomic_write(spec_file, lambda tmp: Path(tmp).write_text(spec_text))
    save_weights(module, run_dir / MODEL_FILE, epoch=str(epoch))
    state = {"epoch": epoch, "stepper": stepper.state_dict(),
             "generator": generator.get_state(), **random_state(_device_of(module)), **extra}
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def _device_of(module: torch.nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random state for a checkpoint: the CPU generator's (``torch_rng``), and
    on a GPU also that device's (``cuda_rng``: dropout there draws from it).

    Examples
    --------
    >>> sorted(random_state(torch.device("cpu")))
    ['torch_rng']
    """
    state = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Set the generators that :func:`random_state` read (a GPU's only when ``state`` has it
    and the run is on a GPU again)."""
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


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
# data-parallel runs (torchrun)


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a ``torchrun`` launch (rank 0 of 1 outside one).

    Attributes
    ----------
    rank
        Global rank (``RANK``); rank 0 evaluates, writes the run's files and prints.
    world_size
        Number of processes (``WORLD_SIZE``); above 1 the run is data-parallel.
    local_rank
        Rank on this machine (``LOCAL_RANK``): the GPU a ``--device cuda`` process uses.

    Examples
    --------
    >>> Launch().distributed, Launch(rank=1, world_size=2).main
    (False, False)
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True when more than one process trains (a data-parallel run)."""
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on rank 0, the process that evaluates, writes files and prints."""
        return self.rank == 0


def current_launch() -> Launch:
    """The :class:`Launch` of this process: from an initialised default process group, else
    from ``torchrun``'s environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
    ``MASTER_PORT``); a plain process is ``Launch()``.

    Raises
    ------
    TrainingError
        ``WORLD_SIZE`` > 1 with the rest of the environment missing or malformed.
    """
    env = os.environ
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
        return Launch(rank, torch.distributed.get_world_size(),
                      int(env.get("LOCAL_RANK", rank)))
    try:
        world_size = int(env.get("WORLD_SIZE") or 1)
        if world_size <= 1:
            return Launch()
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                   if not env.get(k)]
        if missing:
            raise TrainingError(
                f"WORLD_SIZE={world_size} but {', '.join(missing)} not set; launch data-parallel "
                "runs with torchrun (python -m torch.distributed.run --nproc_per_node N ...)")
        launch = Launch(int(env["RANK"]), world_size, int(env["LOCAL_RANK"]))
    except ValueError as exc:
        raise TrainingError(f"malformed torchrun environment: {exc}") from None
    if not 0 <= launch.rank < world_size:
        raise TrainingError(f"RANK={launch.rank} is outside 0..{world_size - 1}")
    return launch


def resolve_device(name: str, launch: Launch | None = None) -> torch.device:
    """The device a run trains on, checked to exist on this machine.

    Parameters
    ----------
    name
        ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``xpu`` (``--device``, ``train.device``).
    launch
        In a data-parallel launch every process takes the GPU of its ``LOCAL_RANK``
        (``cuda`` and ``cuda:N`` alike).

    Raises
    ------
    TrainingError
        An unknown device, or one this machine does not have (what it has is named).

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    try:
        check_device(name)
    except ValueError as exc:
        raise TrainingError(f"--device {name}: {exc}") from None
    device = torch.device(name)
    if device.type == "cpu":
        return device
    module = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if module is None or not module.is_available():
        raise TrainingError(f"--device {name}: {device.type.upper()} is not available on this "
                            "machine; use --device cpu")
    count = torch.mps.device_count() if device.type == "mps" else module.device_count()
    if launch is not None and launch.distributed:
        if launch.local_rank >= count:
            raise TrainingError(f"--device {name}: LOCAL_RANK {launch.local_rank} but only "
                                f"{count} GPU(s) on this machine; start at most one process "
                                "per GPU")
        return torch.device(device.type, launch.local_rank)
    if device.index is not None and device.index >= count:
        raise TrainingError(f"--device {name}: this machine has {count} {device.type} "
                            f"device(s), numbered from 0")
    return device


def _ensure_group(launch: Launch) -> None:
    """Initialise the default process group of a torchrun launch: gloo for CPU tensors, and
    NCCL for CUDA tensors where CUDA and NCCL are available.

    The group lives until the process exits (destroyed then, by an ``atexit`` hook), so that
    one process can run several trainings (``tngraph distill`` trains the teacher first): under
    torchrun a group initialised again after ``destroy_process_group`` fails to connect (gloo,
    torch 2.13).
    """
    dist = torch.distributed
    if not dist.is_available():
        raise TrainingError(f"WORLD_SIZE={launch.world_size}: this torch build has no "
                            "torch.distributed; run in one process")
    if dist.is_initialized():
        return
    nccl = torch.cuda.is_available() and dist.is_nccl_available()
    if nccl and launch.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(launch.local_rank)
    if not dist.is_gloo_available():
        if not nccl:
            raise TrainingError("torch.distributed has neither gloo nor NCCL here; run in one "
                                "process")
        backend = "nccl"
    else:
        backend = "cpu:gloo,cuda:nccl" if nccl else "gloo"
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size)
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _collective_device() -> torch.device:
    backend = str(torch.distributed.get_backend()).lower()
    if "gloo" in backend:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def _broadcast(value: Any, launch: Launch) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object; identity outside a launch)."""
    if not launch.distributed:
        return value
    box = [value if launch.main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _sum_over_ranks(values: list[float], launch: Launch) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64)."""
    if not launch.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def _share_buffers(module: torch.nn.Module, launch: Launch) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: each rank's last
    forward pass updated its own, and rank 0's are the ones evaluated and saved."""
    if launch.distributed:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _rank_seed(seed: int, rank: int) -> int:
    """The global torch seed of rank ``rank`` > 0 (dropout masks differ between ranks)."""
    return (seed * 1_000_003 + rank * 0x9E3779B9) % (1 << 63)


def shard_batches(n: int, batch_size: int, generator: torch.Generator,
                  launch: Launch) -> list[tuple[torch.Tensor, float]]:
    """This rank's share of one epoch's mini-batches, as ``(indices, loss weight)`` pairs.

    Every rank draws the same permutation from ``generator`` (one ``randperm`` per epoch, as a
    single process does) and cuts it into global batches of ``batch_size``; each global batch
    is split into ``world_size`` near-equal contiguous parts (sizes differ by at most one) and
    this rank takes part ``rank``. The weight ``n_rank * world_size / n_batch`` makes the
    average of the ranks' gradients the gradient of the whole global batch. A last global
    batch smaller than ``world_size`` is dropped, so every rank takes the same number of steps.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> [(len(i), w) for i, w in shard_batches(10, 4, g, Launch(1, 2, 1))]
    [(2, 1.0), (2, 1.0), (1, 1.0)]
    """
    batches = list(_batches(n, batch_size, generator))
    if not launch.distributed:
        return [(b, 1.0) for b in batches]
    out = []
    for batch in batches:
        if batch.numel() < launch.world_size:
            continue
        part = batch.tensor_split(launch.world_size)[launch.rank]
        out.append((part, part.numel() * launch.world_size / batch.numel()))
    return out


def _shard_sizes(n: int, batch_size: int, world_size: int) -> set[int]:
    """Every per-rank batch size a data-parallel epoch can produce (on any rank)."""
    sizes = set()
    for total in {min(batch_size, n), n % batch_size}:
        if total >= world_size:
            sizes |= {-(-total // world_size), total // world_size}
    return sizes


def _agree_on_strategies(module: torch.nn.Module, x: torch.Tensor, sizes: set[int],
                         device: torch.device, launch: Launch) -> None:
    """Make every rank run the same contraction strategy: rank 0 times ``plan.strategy: auto``
    at each per-rank training batch size (a forward pass, as its first training step would),
    and every rank adopts its choices. The warm-up leaves the random state and the buffers
    (BatchNorm statistics) as they were."""
    from tngraph.compiler import TNModule

    networks = [m for m in module.modules() if isinstance(m, TNModule)]
    if not any(m.plan.options.strategy == "auto" and getattr(m, "_dense_applies", True)
               for m in networks):
        return
    choices = None
    if launch.main:
        saved = {k: b.detach().clone() for k, b in module.named_buffers()}
        was_training = module.training
        module.train()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for size in sorted(sizes):
                module(x[:size].to(device))
        with torch.no_grad():
            for k, b in module.named_buffers():
                b.copy_(saved[k])
        module.train(was_training)
        choices = [dict(m.strategy_choice) for m in networks]
    for m, chosen in zip(networks, _broadcast(choices, launch)):
        m.strategy_choice.update(chosen)


class DataParallelStepper:
    """A :class:`~tngraph.optimizers.TorchStepper` whose forward pass runs through
    ``DistributedDataParallel``: gradients are averaged over the ranks during ``backward``, so
    every rank applies the same update to the same parameters.

    A non-finite loss on any rank stops every rank at the same step (one small all-reduce per
    step), before any gradient is exchanged.
    """

    def __init__(self, inner: TorchStepper, device: torch.device):
        from torch.nn.parallel import DistributedDataParallel

        self.inner = inner
        self.ddp = DistributedDataParallel(
            inner.module, device_ids=[device.index] if device.type == "cuda" else None)

    @property
    def module(self) -> torch.nn.Module:
        return self.inner.module

    def step(self, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.ddp(x)
        loss = objective(out)
        finite = bool(torch.isfinite(loss.detach()))
        flag = torch.tensor([0.0 if finite else 1.0], device=loss.device)
        torch.distributed.all_reduce(flag)
        if float(flag) > 0:
            raise NonFiniteLoss(float(loss.detach()) if not finite else float("nan"))
        self.inner.zero_grad()
        loss.backward()
        self.inner.update()
        return loss.detach(), out.detach()

    def set_lr(self, lr: float) -> None:
        self.inner.set_lr(lr)

    def end_epoch(self) -> None:
        self.inner.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def _data_parallel(stepper: Stepper, train_options: TrainOptions, x_train: torch.Tensor,
                   device: torch.device, launch: Launch) -> DataParallelStepper:
    """Wrap a torch-optimizer stepper for a data-parallel run (strategy choices agreed,
    BatchNorm synchronised on CUDA)."""
    _agree_on_strategies(stepper.module, x_train,
                         _shard_sizes(x_train.shape[0], train_options.batch_size,
                                      launch.world_size), device, launch)
    if device.type == "cuda":
        # statistics over the global batch; the new modules keep the same parameters and
        # buffers, so the optimizer is unaffected (SyncBatchNorm needs CUDA: CPU runs keep
        # per-rank statistics)
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(stepper.module)
    assert isinstance(stepper, TorchStepper)
    stepper.track_submodules()
    return DataParallelStepper(stepper, device)


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
        raise TrainingError(f"invalid training option: {validation_message(exc)}") from None


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
    from pydantic import ValidationError

    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    if not changes:
        return spec
    try:
        plan = PlanOptions.model_validate({**spec.plan.model_dump(), **changes})
    except ValidationError as exc:
        raise TrainingError(f"invalid plan option: {validation_message(exc)}") from None
    planned = spec.model_copy(update={"plan": plan})
    problems = check_plan_options(planned)
    if problems:
        raise TrainingError("; ".join(p.message + (f" ({p.hint})" if p.hint else "")
                                      for p in problems))
    return planned


def run_train_config(run_dir: Path) -> dict[str, Any]:
    """The training options a run recorded (``config.json``'s ``train`` block: dataset, seed,
    device, ...); empty for a folder that holds no run, or an unreadable file."""
    config = run_dir / "config.json"
    try:
        return dict(json.loads(config.read_text()).get("train") or {}) if config.is_file() \
            else {}
    except (ValueError, AttributeError, TypeError):
        return {}


def check_split(run_dir: Path, data: str, seed: int, what: str) -> None:
    """Refuse a model trained in ``run_dir`` (its ``config.json``) on the same dataset as this
    run but with another seed: this run's test split would hold examples that model was trained
    on. (Another dataset is a transfer, any seed goes; a folder that is not a run has nothing
    to check.)

    Raises
    ------
    TrainingError
        Naming the ``--seed`` that keeps the split.
    """
    recorded = run_train_config(run_dir)
    if recorded.get("data") == data and recorded.get("seed", seed) != seed:
        raise TrainingError(
            f"{what} was trained on {data} with seed {recorded['seed']} "
            f"({run_dir / 'config.json'}); with seed "
            f"{seed} this run's test split would hold examples it was trained on; add --seed "
            f"{recorded['seed']}")


def _new_run_dir(name: str) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3``, ... if taken); in a torchrun launch,
    rank 0's choice on every rank."""
    launch = current_launch()
    if launch.distributed:
        _ensure_group(launch)
        return Path(_broadcast(str(_fresh_run_dir(name)) if launch.main else None, launch))
    return _fresh_run_dir(name)


def _fresh_run_dir(name: str) -> Path:
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
    options = {k: v for k, v in options.items() if v is not None}
    launch = current_launch()
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
        for key in ("data", "seed"):       # they make the split: the test set would change
            was, now = config["train"].get(key), getattr(train_options, key)
            if was is not None and now != was:
                raise TrainingError(f"{run} was trained with {key} {was!r}; a resumed run keeps "
                                    f"its {key} (another one changes the data split, so test "
                                    f"examples would be trained on); drop --{key} {now}, or "
                                    "train a new run from the spec")
        spec = with_plan(spec, plan)
    else:
        if source is None:
            raise TrainingError("nothing to train: give a spec, or resume=RUN_DIR")
        spec = source if isinstance(source, Spec) else load_spec(source, overrides)
        spec = with_plan(spec, plan)
        train_options = _options(spec.train.model_dump(), options)
        run = Path(run_dir) if run_dir is not None else _new_run_dir(spec.name)
        if (run / METRICS_FILE).exists():
            raise TrainingError(f"{run} already holds a run; resume it with --resume {run}, "
                                "or choose another --out")
        if init is not None:
            check_split(Path(init).parent, train_options.data, train_options.seed,
                        f"--init {init}")
    device = resolve_device(train_options.device, launch)   # before anything is written
    # Long products of near-identity cores drive some gradients (and Adam's moments) into
    # subnormal floats, which x86 CPUs process a hundred times slower: flush them to zero.
    flushed = torch.set_flush_denormal(True)
    try:
        return _run(spec, train_options, device, run, resume is not None, echo, init,
                    objective, launch, cache_dir)
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _run(spec: Spec, train_options: TrainOptions, device: torch.device, run: Path,
         resuming: bool, echo: Callable[[str], None] | None, init: str | Path | None = None,
         objective: Objective | None = None, launch: Launch = Launch(),
         cache_dir: str | Path | None = None) -> TrainResult:
    torch.manual_seed(train_options.seed)
    dataset = load_dataset(train_options.data, seed=train_options.seed)
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
    # the plan is made for what one process contracts: its share of the global batch
    module = compile_spec(spec, batch_size=-(-train_options.batch_size // world),
                          seed=train_options.seed, cache_dir=cache_dir).to(device)
    if launch.distributed and launch.main:
        torch.distributed.barrier()
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
        # on the CPU whatever device wrote it (optimizers move their state to the parameters)
        state = torch.load(run / STATE_FILE, weights_only=False, map_location="cpu")
        stepper.load_state_dict(state["stepper"])
        generator.set_state(state["generator"])
        restore_random_state(state, device)
        first_epoch = int(state["epoch"]) + 1
        history = [EpochMetrics(**json.loads(line))
                   for line in (run / METRICS_FILE).read_text().splitlines() if line.strip()]
        history = [h for h in history if h.epoch < first_epoch]
    if launch.distributed:
        stepper = _data_parallel(stepper, train_options, x_train, device, launch)
        ranks_rng = state.get("rng_ranks") or [
            {"torch_rng": rng} for rng in state.get("torch_rng_ranks", ())]   # older runs
        if len(ranks_rng) == world:
            restore_random_state(ranks_rng[launch.rank], device)
        elif not launch.main:
            torch.manual_seed(_rank_seed(train_options.seed + first_epoch, launch.rank))
    if not resuming and launch.main:
        # made once the data, network and optimizer are known good: a refused run leaves none
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(
            {"train": train_options.model_dump(), "dataset": dataset.name,
             "sizes": dataset.sizes, "task": dataset.task,
             **({"objective": dict(objective.config)} if objective else {})}, indent=2))
        (run / METRICS_FILE).write_text("")
    if not resuming:
        _checkpoint(run, stepper, 0, generator, launch)   # last good, so far

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
        total, correct, seen = _sum_over_ranks([total, correct, seen], launch)
        _share_buffers(module, launch)
        record = None
        if launch.main:     # rank 0 alone evaluates (the parameters are the same everywhere)
            val = evaluate(module, dataset, "val")
            train_metric = correct / seen if dataset.task == "classification" else float("nan")
            record = EpochMetrics(epoch, total / seen, train_metric, val["loss"], val[metric],
                                  seconds, seen / seconds)
        record = _broadcast(record, launch)
        history.append(record)
        _checkpoint(run, stepper, epoch, generator, launch)
        if launch.main:
            with open(run / METRICS_FILE, "a") as fh:
                fh.write(json.dumps(asdict(record)) + "\n")
        facts = "".join(f"  {k} {_fact(v)}" for k, v in stepper.describe().items())
        say(f"epoch {epoch:3d}  loss {record.train_loss:.4f}  val loss {record.val_loss:.4f}  "
            f"val {metric} {record.val_metric:.4f}  {record.samples_per_s:,.0f} samples/s"
            + facts)
    test, seconds = _broadcast((evaluate(module, dataset, "test"),
                                time.perf_counter() - start_all) if launch.main else None, launch)
    result = TrainResult(run, metric, tuple(history), test, seconds)
    if launch.main:
        plot_curves(result, run / PLOT_FILE)
        (run / "summary.json").write_text(json.dumps(
            {"test": test, "epochs": len(history), "seconds": result.seconds,
             "processes": world,
             "optimizer": {"name": train_options.optimizer.name, **stepper.describe()}},
            indent=2))
    say(summary_table(result))
    if launch.distributed:
        torch.distributed.barrier()     # no rank leaves before rank 0 has written everything
    return result


def _plain_torch_stepper(stepper: Stepper) -> bool:
    """A :class:`TorchStepper` whose step is forward, backward, ``optimizer.step()``: what
    :class:`DataParallelStepper` repeats with the forward pass under DDP."""
    return isinstance(stepper, TorchStepper) and type(stepper).step is TorchStepper.step


def _weighted(loss_of: Callable[[torch.Tensor], torch.Tensor], weight: float
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: loss_of(out) * weight


def _checkpoint(run: Path, stepper: Stepper, epoch: int, generator: torch.Generator,
                launch: Launch) -> None:
    """:func:`save_checkpoint` by rank 0, with every rank's random state in a launch."""
    extra = {}
    if launch.distributed:
        states: list[Any] = [None] * launch.world_size
        torch.distributed.all_gather_object(states, random_state(_device_of(stepper.module)))
        extra["rng_ranks"] = states
    if launch.main:
        save_checkpoint(run, stepper, epoch, generator, **extra)


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
