"""The error and the records every part of a training run shares.

Notes
-----
The lowest module of :mod:`tngraph.train`: the others import from it, it imports none of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    #: which weights ``test`` measured: ``("best", epoch)`` or ``("last", epoch)``
    tested: tuple[str, int] = ("last", 0)


def best_epoch(history: Sequence[EpochMetrics]) -> int | None:
    """The epoch of the highest validation metric (the first of equals; a metric that is not a
    number counts as the lowest; with none at all, as without a validation split, the last
    epoch), or None for no epochs.

    Examples
    --------
    >>> best_epoch([EpochMetrics(e, 1.0, 0.5, 1.0, m, 1.0, 1.0)
    ...             for e, m in [(1, 0.5), (2, 0.8), (3, 0.8), (4, float("nan"))]])
    2
    """
    if history and not any(math.isfinite(r.val_metric) for r in history):
        return history[-1].epoch            # no validation: the last epoch is the best known
    best = None
    for record in history:
        value = record.val_metric if math.isfinite(record.val_metric) else -math.inf
        if best is None or value > best[1]:
            best = (record.epoch, value)
    return None if best is None else best[0]
