"""The run directory: its file names, its lock, weights and checkpoints committed as one unit,
``config.json``, and the choice of a new directory.

A run directory holds ``spec.yaml`` (the expanded spec), ``config.json`` (the training options,
dataset, its fingerprint and objective: :func:`read_config` is the one reader),
``model.safetensors`` (weights; the spec, dataset and seed in its metadata), ``state.pt``
(optimizer strategy state, epoch, random state), ``metrics.jsonl`` (one line per epoch),
``checkpoint.json`` (the manifest), ``curves.png`` and ``summary.json``.

A checkpoint is a transaction (:func:`commit_checkpoint`): the weights, the state, the metrics
lines and the spec are first written beside their final names (``.NAME.epoch-N.staged``) and
flushed to the disk; then ``checkpoint.json`` -- the epoch and each file's SHA-256 -- is
atomically replaced, which commits the epoch; then the staged files are renamed over the final
ones. A stop at any point leaves the last committed epoch recoverable: :func:`recover` finishes
the renames of a committed epoch, refuses files that match no manifest, and removes what an
uncommitted one left. While a run writes, it holds the folder's lock (:class:`FolderLock`).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tngraph.compiler import Compiled
from tngraph.errors import TNGraphError
from tngraph.files import (
    FolderLock,
    WriteError,
    atomic_write,
    fsync_folder,
    sha256_file,
    write_durably,
)
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
SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "checkpoint.json"
BEST_FILE = "best.safetensors"
LOCK_FILE = FolderLock.NAME
#: the run-folder layout this version writes (``config.json``'s ``run_format``): 2 = with a
#: checkpoint manifest; runs without the key are older ones, whose files are read as they are
RUN_FORMAT = 2
#: the files of one checkpoint, in the order they are staged
CHECKPOINT_FILES = (MODEL_FILE, STATE_FILE, METRICS_FILE, SPEC_FILE)
#: every file a run writes (their staged and temporary copies are ``.NAME.*``)
RUN_FILES = (*CHECKPOINT_FILES, BEST_FILE, CONFIG_FILE, MANIFEST_FILE, SUMMARY_FILE, PLOT_FILE)


def is_leftover(name: str) -> bool:
    """Whether ``name`` is a staged or temporary copy of a run file (a stopped write's).

    Examples
    --------
    >>> is_leftover(".state.pt.epoch-3.staged"), is_leftover(".notes.txt.tmp")
    (True, False)
    """
    return name.endswith((".staged", ".tmp")) and any(
        name.startswith(f".{run_file}.") for run_file in RUN_FILES)


# ---------------------------------------------------------------------------------------------
# weights and checkpoints


#: the header key listing the entries stored as (..., 2) real pairs: safetensors has no complex
#: dtype, so a complex tensor is written as ``torch.view_as_real`` and read back as complex
COMPLEX_KEY = "tngraph_complex"


def weights_bytes(module: Compiled, **metadata: str) -> bytes:
    """``module.state_dict()`` as a safetensors file's bytes, the expanded spec (and
    ``metadata``) in its header; complex entries as real pairs (:data:`COMPLEX_KEY`)."""
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    pairs = sorted(k for k, v in tensors.items() if v.is_complex())
    tensors.update((k, torch.view_as_real(tensors[k]).contiguous()) for k in pairs)
    header = {"tngraph_spec": dump_yaml(module.spec.to_raw()), **metadata}
    if pairs:
        header[COMPLEX_KEY] = json.dumps(pairs)
    return save(tensors, metadata=header)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file tngraph wrote, complex entries as complex tensors.

    Raises
    ------
    TrainingError
        No such file, or not a readable safetensors file (naming the cause).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no checkpoint at {path}; expected a model.safetensors file "
                            "written by tngraph train")
    try:
        tensors = load_file(str(path))
        pairs = json.loads(weights_metadata(path).get(COMPLEX_KEY, "[]"))
        for key in pairs:
            tensors[key] = torch.view_as_complex(tensors[key].contiguous())
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user error
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from None
    return tensors


def save_weights(module: Compiled, path: Path, **metadata: str) -> None:
    """``module.state_dict()`` as safetensors, atomically, the expanded spec (and ``metadata``)
    in its header.

    Raises
    ------
    WriteError
        The file cannot be written (naming it and the cause).
    """
    atomic_write(Path(path), weights_bytes(module, **metadata))


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file tngraph wrote (empty if it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: load_weights names the problem
        return {}


def _staged(run_dir: Path, name: str, epoch: int) -> Path:
    return run_dir / f".{name}.epoch-{epoch}.staged"


def commit_checkpoint(run_dir: Path, epoch: int, files: Mapping[str, bytes],
                      kept: tuple[str, ...] = ()) -> None:
    """Write ``files`` (name to bytes) into ``run_dir`` as the checkpoint of ``epoch``, as one
    unit: staged and flushed, committed by replacing ``checkpoint.json``, then renamed into
    place (see the module docstring). The files named in ``kept`` stay as the previous
    checkpoint committed them (and in the manifest), when it has them.

    Raises
    ------
    WriteError
        A file cannot be written; the previous checkpoint stays the committed one, and
        what this one staged is removed.
    """
    previous = read_manifest(run_dir) or {"files": {}}
    entries = {name: previous["files"][name] for name in kept if name in previous["files"]}
    try:
        for name, data in files.items():
            write_durably(_staged(run_dir, name, epoch), data)
            entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        manifest = {"run_format": RUN_FORMAT, "epoch": epoch, "files": entries}
        atomic_write(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
    except BaseException:
        if not _committed(run_dir, epoch, entries):     # else recover() completes it
            for name in files:
                _staged(run_dir, name, epoch).unlink(missing_ok=True)
        raise
    for name in files:                      # committed: from here on, recover() completes it
        os.replace(_staged(run_dir, name, epoch), run_dir / name)
    fsync_folder(run_dir)


def _committed(run_dir: Path, epoch: int, entries: Mapping[str, Any]) -> bool:
    try:
        manifest = read_manifest(run_dir)
    except TrainingError:
        return False
    return manifest is not None and manifest["epoch"] == epoch and manifest["files"] == entries


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The committed checkpoint of a run (``checkpoint.json``), or None if it has none yet.

    Raises
    ------
    TrainingError
        A manifest that is not one tngraph wrote (damaged).
    """
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        epoch, files = manifest["epoch"], manifest["files"]
        if not (isinstance(epoch, int) and isinstance(files, dict) and all(
                isinstance(e, dict) and isinstance(e.get("sha256"), str)
                for e in files.values())):
            raise TypeError("fields of the wrong type")
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(
            f"cannot read {path}: it is damaged ({type(exc).__name__}: {exc}); it names the "
            f"last complete checkpoint: restore it, or train a new run from "
            f"{Path(run_dir) / SPEC_FILE}") from None
    return manifest


def _mismatch(run_dir: Path, name: str, manifest: Mapping[str, Any]) -> TrainingError:
    return TrainingError(
        f"{run_dir / name} does not match the checkpoint of epoch {manifest['epoch']} "
        f"({MANIFEST_FILE} holds its SHA-256): the file is damaged or was replaced; restore "
        f"it, or train a new run from {run_dir / SPEC_FILE}")


def verified_file(run_dir: Path, name: str) -> Path:
    """The file ``name`` of the run's committed checkpoint, checked against the manifest,
    without changing the folder (a reader beside a live run): the file itself, or its staged
    copy of a commit whose renames are not done yet. Older runs (no manifest) are trusted.

    Raises
    ------
    TrainingError
        Neither matches the manifest.
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None or name not in manifest["files"]:
        return run_dir / name
    want = manifest["files"][name]["sha256"]
    for path in (run_dir / name, _staged(run_dir, name, manifest["epoch"])):
        if path.is_file() and sha256_file(path) == want:
            return path
    raise _mismatch(run_dir, name, manifest)


def recover(run_dir: Path) -> dict[str, Any] | None:
    """Bring a run folder back to its committed checkpoint, under the run's lock: finish the
    renames of a committed epoch, and remove the staged and temporary files of an uncommitted
    one. Returns the manifest (None when no checkpoint was ever committed).

    Raises
    ------
    TrainingError
        A file matches neither the manifest nor its staged copy (damaged).
    """
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is not None:
        for name, entry in manifest["files"].items():
            final, staged = run_dir / name, _staged(run_dir, name, manifest["epoch"])
            if staged.is_file() and sha256_file(staged) == entry["sha256"]:
                os.replace(staged, final)
            elif not (final.is_file() and sha256_file(final) == entry["sha256"]):
                raise _mismatch(run_dir, name, manifest)
        fsync_folder(run_dir)
    for leftover in run_dir.iterdir():
        if is_leftover(leftover.name):
            leftover.unlink(missing_ok=True)
    return manifest


def state_bytes(stepper: Stepper, epoch: int, generator: torch.Generator,
                **extra: Any) -> bytes:
    """The training state of a checkpoint (``state.pt``): the epoch, the strategy's state and
    the random states; ``extra`` entries too (a data-parallel run adds every rank's)."""
    state = {"epoch": epoch, "stepper": stepper.state_dict(),
             "generator": generator.get_state(),
             **random_state(_device_of(stepper.module)), **extra}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_checkpoint(run_dir: Path, stepper: Stepper, epoch: int, generator: torch.Generator,
                    history: list[EpochMetrics] | tuple[EpochMetrics, ...] = (),
                    provenance: Mapping[str, str] | None = None, best: bool = False,
                    **extra: Any) -> None:
    """Commit the checkpoint of ``epoch`` (:func:`commit_checkpoint`): the weights (spec and
    ``provenance`` -- dataset, seed -- in their metadata), the training state, the metrics of
    epochs ``1..epoch`` (``history``) and the expanded spec (which ``dmrg`` changes: a resumed
    run compiles the network the weights belong to); with ``best`` (the best validation epoch
    so far) the weights as ``best.safetensors`` too, else the previous best is kept. ``extra``
    entries go into ``state.pt``.
    """
    module = stepper.module
    lines = "".join(metrics_line(record) + "\n" for record in history)
    weights = weights_bytes(module, epoch=str(epoch), **dict(provenance or {}))
    commit_checkpoint(run_dir, epoch, {
        MODEL_FILE: weights,
        STATE_FILE: state_bytes(stepper, epoch, generator, **extra),
        METRICS_FILE: lines.encode(),
        SPEC_FILE: dump_yaml(module.spec.to_raw()).encode(),
        **({BEST_FILE: weights} if best else {})}, kept=() if best else (BEST_FILE,))


def tested_weights(run_dir: str | Path) -> tuple[Path, Path | str]:
    """The weights file a run was tested with -- ``best.safetensors`` for a run that tests on
    its best validation epoch (``test_on: best``), else ``model.safetensors`` -- checked
    against the manifest, and the spec they belong to, for :func:`tngraph.load_spec`: the
    run's ``spec.yaml``, or the YAML text in their metadata where it differs (a ``dmrg`` run's
    best epoch can have other bond dimensions).

    Raises
    ------
    TrainingError
        The file does not match the run's manifest.
    """
    run_dir = Path(run_dir)
    chosen = MODEL_FILE
    if run_train_config(run_dir).get("test_on") == "best" and (run_dir / BEST_FILE).exists():
        chosen = BEST_FILE
    path = verified_file(run_dir, chosen)
    text = weights_metadata(path).get("tngraph_spec")
    spec_file = run_dir / SPEC_FILE
    if text is None or not spec_file.is_file() or spec_file.read_text() == text:
        return path, spec_file
    return path, text


#: what may already be in a new run's folder: the teacher ``tngraph distill`` trained there,
#: and the lock of the run that is starting
FOREIGN_OK = frozenset({"teacher", LOCK_FILE})
#: what a run leaves before its first checkpoint is committed (removed when it starts again)
_UNFINISHED = frozenset({CONFIG_FILE, SPEC_FILE})


def unfinished_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds no run but what one stopped before its first checkpoint was
    committed left (nothing, a lock, ``config.json`` of this format, ``spec.yaml``, staged and
    temporary files): such a run is started again by ``tngraph train SPEC --out RUN_DIR``.

    Examples
    --------
    >>> unfinished_run(Path("no/such/folder"))
    False
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or (run_dir / MANIFEST_FILE).exists():
        return False
    names = {p.name for p in run_dir.iterdir()
             if not is_leftover(p.name) and p.name not in FOREIGN_OK}
    if not names <= _UNFINISHED:
        return False
    if CONFIG_FILE not in names:            # a spec.yaml alone is the user's
        return not names
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("run_format") == RUN_FORMAT


def check_out_dir(run_dir: Path, *, locked: bool = False) -> None:
    """Refuse to start a run in a folder that holds anything but what tngraph put there for it
    (a file that is a folder, or a folder with the user's own files: they would be overwritten),
    or that a live run holds (``locked``: this process holds the lock itself). A run stopped
    before its first checkpoint may be started again in its folder.

    Examples
    --------
    >>> check_out_dir(Path("no/such/folder/yet"))
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out {run_dir} is a file, not a folder; choose a new folder")
    if not run_dir.is_dir():
        return
    if not locked:
        FolderLock(run_dir).check()         # a live run there is named as such
    if unfinished_run(run_dir):
        return
    found = sorted(p.name for p in run_dir.iterdir() if p.name not in FOREIGN_OK)
    if (run_dir / MANIFEST_FILE).is_file() or (run_dir / METRICS_FILE).is_file():
        raise TrainingError(f"{run_dir} already holds a run; resume it with --resume {run_dir}, "
                            "or choose another --out")
    if found:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise TrainingError(f"{run_dir} is not empty ({shown}); a run writes "
                            "spec.yaml, config.json and model.safetensors there, which would "
                            "replace files of the same name: choose a new or empty --out")


def strict_json(value: Any) -> Any:
    """``value`` with every float that is not a finite number replaced by None, in nested
    dicts, lists and tuples: what ``json.dumps(..., allow_nan=False)`` takes.

    Examples
    --------
    >>> strict_json({"test": {"loss": float("nan")}, "epochs": [1.5, float("inf")]})
    {'test': {'loss': None}, 'epochs': [1.5, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


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


def read_history(run_dir: Path) -> list[EpochMetrics]:
    """The epochs of ``metrics.jsonl``.

    Raises
    ------
    TrainingError
        A line that is not one tngraph wrote (damaged), naming the line.
    """
    path = Path(run_dir) / METRICS_FILE
    history = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            history.append(metrics_record(line))
        except (ValueError, TypeError) as exc:
            raise TrainingError(
                f"{path}:{number}: not a line of metrics tngraph wrote ({exc}); restore the "
                f"file, or train a new run from {Path(run_dir) / SPEC_FILE}") from None
    return history


def read_state(run_dir: Path) -> dict[str, Any]:
    """The training state a run checkpointed (``state.pt``), read onto the CPU whatever device
    wrote it (optimizers move their state to the parameters).

    Read with ``weights_only=True``: tensors, numbers, strings and containers only, so a
    crafted file cannot run code. A damaged or foreign file is a :class:`TrainingError`
    naming the fix. (Its checksum is :func:`recover`'s to check, which a resume runs first.)
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
    path = Path(path)
    tensors = read_weights(path)
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
    """Write ``config.json`` (what :func:`read_config` reads) into ``run_dir``, atomically,
    stamped with this version's ``run_format``."""
    record = {"run_format": RUN_FORMAT, **config}
    atomic_write(run_dir / CONFIG_FILE, json.dumps(record, indent=2).encode())


def run_train_config(run_dir: Path) -> dict[str, Any]:
    """The training options a run recorded (``config.json``'s ``train`` block: dataset, seed,
    device, ...); empty for a folder that holds no run, or an unreadable file."""
    try:
        return dict(read_config(run_dir).get("train") or {})
    except (TrainingError, ValueError, TypeError):
        return {}


# ---------------------------------------------------------------------------------------------
# the dataset a run was trained on


def provenance(config: Mapping[str, Any]) -> dict[str, str]:
    """What the weights of a run carry about their data (safetensors metadata: strings): the
    dataset, the seed of its split, the split sizes and fingerprint."""
    train = config.get("train") or {}
    return {"data": str(train.get("data")), "seed": str(train.get("seed")),
            "sizes": json.dumps(config.get("sizes")),
            "fingerprint": json.dumps(config.get("fingerprint"))}


def recorded_data(source: str | Path) -> dict[str, Any]:
    """The dataset a run or a weights file was trained on: ``data``, ``seed``, ``sizes`` and
    ``fingerprint`` (and the run's ``device``), from the run's ``config.json`` (``source`` a
    run directory, or a file in one) or else from a tngraph weights file's metadata (a
    checkpoint copied out of its run). Empty when neither says.

    Examples
    --------
    >>> recorded_data("no/such/run")
    {}
    """
    source = Path(source)
    folder = source if source.is_dir() else source.parent
    try:
        config = read_config(folder)
    except TrainingError:
        config = None
    if config is not None and isinstance(config.get("train"), dict):
        train = config["train"]
        return {"data": train.get("data"), "seed": train.get("seed"),
                "device": train.get("device"), "sizes": config.get("sizes"),
                "fingerprint": config.get("fingerprint"), "where": str(folder / CONFIG_FILE)}
    if not source.is_file():
        return {}
    meta = weights_metadata(source)
    if "data" not in meta or "seed" not in meta:
        return {}
    try:
        found = {"data": meta["data"], "seed": int(meta["seed"]),
                 "sizes": json.loads(meta.get("sizes", "null")),
                 "fingerprint": json.loads(meta.get("fingerprint", "null"))}
    except ValueError:
        return {}
    return {**found, "where": f"the metadata of {source}"}


def data_drift(recorded: Mapping[str, Any], dataset: Any) -> str | None:
    """What differs between the dataset a run recorded and ``dataset`` (None: nothing, or
    nothing recorded): the split sizes, or the rows of a split.

    Examples
    --------
    >>> from tngraph.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> data_drift({"sizes": {"train": 1000, "val": 180, "test": 359}}, ds)
    'the split sizes were train 1000, val 180, test 359 and are now train 1258, val 180, test 359'
    """
    sizes, prints = recorded.get("sizes"), recorded.get("fingerprint")
    if isinstance(sizes, dict) and sizes != dataset.sizes:
        def show(found: Mapping[str, Any]) -> str:
            return ", ".join(f"{k} {found.get(k)}" for k in ("train", "val", "test"))
        return f"the split sizes were {show(sizes)} and are now {show(dataset.sizes)}"
    if isinstance(prints, dict):
        now = dataset.fingerprint()
        changed = [k for k in ("train", "val", "test") if k in prints and prints[k] != now[k]]
        if changed:
            plural = "s" if len(changed) > 1 else ""
            return f"the rows of the {' and '.join(changed)} split{plural} differ (SHA-256)"
    return None


# ---------------------------------------------------------------------------------------------
# a new run directory


def new_run_dir(name: str) -> Path:
    """A new, empty ``runs/NAME-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... if taken), created
    atomically (two runs started in the same second get two folders); in a torchrun launch,
    rank 0's on every rank.

    Raises
    ------
    WriteError
        ``runs/`` cannot be written.
    """
    launch = current_launch()
    if launch.distributed:
        _ensure_group(launch)
        return Path(_broadcast(str(_fresh_run_dir(name)) if launch.main else None, launch))
    return _fresh_run_dir(name)


def _fresh_run_dir(name: str) -> Path:
    base = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for k in range(1, 10_000):
            run = base if k == 1 else base.with_name(f"{base.name}-{k}")
            try:
                run.mkdir()
            except FileExistsError:
                continue
            return run
    except OSError as exc:
        raise WriteError(f"cannot create a run folder in {base.parent.resolve()}: "
                         f"{os.strerror(exc.errno) if exc.errno else exc}; choose --out") from None
    raise WriteError(f"{base.parent.resolve()} holds 9,999 runs named {base.name}-*; "
                     "choose --out")
