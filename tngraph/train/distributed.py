"""Data-parallel runs under ``torchrun``: the launch, devices, process groups, collectives and
the sharding of mini-batches over the ranks.

Notes
-----
Outside a launch (``WORLD_SIZE`` unset or 1) every helper here is the identity of one process:
:func:`shard_batches` gives the whole batches, :func:`_broadcast` returns its value.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from tngraph.optimizers import NonFiniteLoss, Stepper, TorchStepper
from tngraph.spec import TrainOptions, check_device
from tngraph.train.base import TrainingError


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


class DataParallelStepper:
    """A :class:`~tngraph.optimizers.TorchStepper` whose forward pass runs through
    ``DistributedDataParallel``: gradients are averaged over the ranks during ``backward``, so
    every rank applies the same update to the same parameters.

    A non-finite loss on any rank stops every rank at the same step (one small all-reduce per
    step), before any gradient is exchanged.
    """

    def __init__(self, inner: TorchStepper, device: torch.device):
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
    """Wrap a torch-optimizer stepper for a data-parallel run (BatchNorm synchronised on
    CUDA). Every rank runs the same execution: it is decided from the plan alone."""
    if device.type == "cuda":
        # statistics over the global batch; the new modules keep the same parameters and
        # buffers, so the optimizer is unaffected (SyncBatchNorm needs CUDA: CPU runs keep
        # per-rank statistics)
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(stepper.module)
    assert isinstance(stepper, TorchStepper)
    return DataParallelStepper(stepper, device)


# ---------------------------------------------------------------------------------------------
# the loop


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    yield from order.split(batch_size)


def _plain_torch_stepper(stepper: Stepper) -> bool:
    """A :class:`TorchStepper` whose step is forward, backward, ``optimizer.step()``: what
    :class:`DataParallelStepper` repeats with the forward pass under DDP."""
    return isinstance(stepper, TorchStepper) and type(stepper).step is TorchStepper.step


def _weighted(loss_of: Callable[[torch.Tensor], torch.Tensor], weight: float
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: loss_of(out) * weight

