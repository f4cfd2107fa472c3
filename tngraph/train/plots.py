"""The end of a run on screen and on disk: the summary table and the loss / metric curves.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tngraph.files import atomic_write
from tngraph.train.base import TrainResult, best_epoch


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
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {result.run_dir}", box=box.SIMPLE, title_justify="left")
    for col in ("", "epoch", "train loss", "val loss", f"val {result.metric}"):
        table.add_column(col, justify="right")
    if result.history:
        chosen = best_epoch(result.history)
        best = next(h for h in result.history if h.epoch == chosen)
        for label, h in (("best", best), ("last", result.history[-1])):
            table.add_row(label, str(h.epoch), f"{h.train_loss:.4f}", f"{h.val_loss:.4f}",
                          f"{h.val_metric:.4f}")
    buf = io.StringIO()
    console = Console(file=buf, width=100, no_color=True, color_system=None)
    console.print(table)
    tests = ("  ".join(f"{k} {v:.4f}" for k, v in result.test.items())
             if any(v == v for v in result.test.values()) else "no test split")
    which, epoch = result.tested
    console.print(f"test ({which} epoch {epoch}): {tests}   ({result.seconds:.1f} s)")
    return buf.getvalue().rstrip()
