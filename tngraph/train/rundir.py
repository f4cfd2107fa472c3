"""The run directory: its file names, weights and checkpoints, ``config.json``, and the choice
of a new directory.

A run directory holds ``spec.yaml`` (the expanded spec), ``config.json`` (the training options,
dataset and objective: :func:`read_config` is the one reader), ``model.safetensors`` (weights,
the spec in its metadata), ``state.pt`` (optimizer strategy state, epoch, random state),
``metrics.jsonl`` (one line per epoch), ``curves.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tngraph.compiler import Compiled
from tngraph.errors import TNGraphError
from tngraph.files import atomic_write
from tngraph.optimizers import Stepper
from tngraph.train.base import EpochMetrics, TrainingError
from tngraph.train.distributed import _broadcast, _ensure_group, current_launch
from tngraph.yamlio import dump_yaml

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"
CONFIG_FILE = "config.json"
SPEC_FILE = "spec.yaml"


# ---------------------------------------------------------------------------------------------
# weights and checkpoints


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
    spec_file = run_dir / SPEC_FILE
    if not spec_file.is_file() or spec_file.read_text() != spec_text:
        atomic_write(spec_file, lambda tmp: Path(tmp).write_text(spec_text))
    save_weights(module, run_dir / MODEL_FILE, epoch=str(epoch))
    state = {"epoch": epoch, "stepper": stepper.state_dict(),
             "generator": generator.get_state(), **random_state(_device_of(module)), **extra}
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


#: what may already be in a new run's folder: the teacher ``tngraph distill`` trained there
FOREIGN_OK = frozenset({"teacher"})


def check_out_dir(run_dir: Path) -> None:
    """Refuse to start a run in a folder that holds anything but what tngraph put there for it
    (a file that is a folder, or a folder with the user's own files: they would be overwritten).

    Examples
    --------
    >>> check_out_dir(Path("no/such/folder/yet"))
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out {run_dir} is a file, not a folder; choose a new folder")
    if not run_dir.is_dir():
        return
    found = sorted(p.name for p in run_dir.iterdir() if p.name not in FOREIGN_OK)
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        unfinished = (" (a run stopped before its first epoch ended leaves these: delete the "
                      "folder to start again)" if (run_dir / CONFIG_FILE).exists() else "")
        raise TrainingError(f"{run_dir} is not empty ({shown}){unfinished}; a run writes "
                            "spec.yaml, config.json and model.safetensors there, which would "
                            "replace files of the same name: choose a new or empty --out")


def metrics_line(record: EpochMetrics) -> str:
    """One epoch of ``metrics.jsonl``: strict JSON, a value that is not a finite number (the R²
    of constant targets) written as ``null``.

    Examples
    --------
    >>> from tngraph.train.base import EpochMetrics
    >>> metrics_line(EpochMetrics(1, 0.5, float("nan"), 0.4, 0.9, 1.0, 64.0))
    '{"epoch": 1, "train_loss": 0.5, "train_metric": null, "val_loss": 0.4, "val_metric": 0.9, \
"seconds": 1.0, "samples_per_s": 64.0}'
    """
    values = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
              for k, v in asdict(record).items()}
    return json.dumps(values, allow_nan=False)


def metrics_record(line: str) -> EpochMetrics:
    """One line of ``metrics.jsonl`` read back (``null`` as NaN); see :func:`metrics_line`."""
    values = json.loads(line)
    return EpochMetrics(**{k: float("nan") if v is None else v for k, v in values.items()})


def read_state(run_dir: Path) -> dict[str, Any]:
    """The training state a run checkpointed (``state.pt``), read onto the CPU whatever device
    wrote it (optimizers move their state to the parameters).

    Read with ``weights_only=True``: tensors, numbers, strings and containers only, so a
    crafted file cannot run code. A damaged or foreign file is a :class:`TrainingError`
    naming the fix.
    """
    path = run_dir / STATE_FILE
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(
            f"cannot read {path}: it is damaged or not a training state tngraph wrote "
            f"({reason[:200]}); restore it, or train a new run from {run_dir / SPEC_FILE}"
        ) from None
    if not isinstance(state, dict) or "stepper" not in state or "epoch" not in state:
        raise TrainingError(f"cannot read {path}: it holds no training state tngraph wrote; "
                            f"restore it, or train a new run from {run_dir / SPEC_FILE}")
    return state


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
# config.json


def read_config(run_dir: str | Path, missing: str | None = None,
                error: type[TNGraphError] = TrainingError) -> dict[str, Any]:
    """What a run recorded in its ``config.json``: ``train`` (the training options), ``dataset``,
    ``sizes``, ``task`` and, for a distillation, ``objective``.

    The one place that opens and parses a run's ``config.json``.

    Parameters
    ----------
    run_dir
        The run directory.
    missing
        The message when ``run_dir`` holds no ``config.json`` (default: names the file and
        what is expected instead).
    error
        The error raised (``tngraph distill`` passes its own).

    Raises
    ------
    TrainingError
        (or ``error``) No ``config.json``, or one that is not a JSON object (damaged).

    Examples
    --------
    >>> read_config("runs/demo")["train"]["epochs"]                 # doctest: +SKIP
    2
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise error(missing or f"no {CONFIG_FILE} in {run_dir}; expected a run directory "
                               "written by tngraph train")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:       # not JSON, or not UTF-8
        problem = str(exc)
    else:
        if isinstance(config, dict):
            return config
        problem = f"it holds a JSON {type(config).__name__}, not an object"
    raise error(f"cannot read {path}: {problem}; it is not the {CONFIG_FILE} tngraph train "
                "writes: restore it, or train a new run from the spec")


def write_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Write ``config.json`` (what :func:`read_config` reads) into ``run_dir``."""
    (run_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))


def run_train_config(run_dir: Path) -> dict[str, Any]:
    """The training options a run recorded (``config.json``'s ``train`` block: dataset, seed,
    device, ...); empty for a folder that holds no run, or an unreadable file."""
    try:
        return dict(read_config(run_dir).get("train") or {})
    except (TrainingError, ValueError, TypeError):
        return {}


# ---------------------------------------------------------------------------------------------
# a new run directory


def new_run_dir(name: str) -> Path:
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

