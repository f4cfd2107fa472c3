"""The error and the records every part of a training run shares.

Notes
-----
The lowest module of :mod:`tngraph.train`: the others import from it, it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tngraph.errors import TNGraphError


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
class TrainResult:
    """The outcome of a run: its directory, per-epoch history and final test metrics."""

    run_dir: Path
    metric: str                         # "accuracy" or "r2"
    history: tuple[EpochMetrics, ...]
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
