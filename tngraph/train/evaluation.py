"""What a run minimises and measures: the fit of a network to a dataset, the loss of a batch,
the metrics of a split, and :class:`Objective` for a loss other than the one on the labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from tngraph.compiler import Compiled, Pipeline
from tngraph.data import Dataset
from tngraph.train.base import TrainingError


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


# ---------------------------------------------------------------------------------------------
# compatibility of a network with a dataset


def check_fit(module: Compiled, dataset: Dataset) -> None:
    """Raise TrainingError unless ``module`` maps one example of ``dataset`` to a prediction."""
    _check_real_outputs(module, dataset)
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
            f"resize the network to {dataset.n_features} values per example (the "
            f"shipped models/mps_classifier.yaml takes --set sites={dataset.n_features}) or "
            "choose another dataset")
    _check_outputs(spec.name, math.prod(module._out_legs_shape), dataset)


def _check_real_outputs(module: Compiled, dataset: Dataset) -> None:
    ref = next(module.parameters(), None)
    if dataset.task == "regression" and ref is not None and ref.is_complex():
        raise TrainingError(
            f"network '{module.spec.name}' is complex ({ref.dtype}) but dataset "
            f"'{dataset.name}' is a regression of real targets; train a real network "
            "(plan.dtype float32 / float64), or a classification, whose complex outputs are "
            "scored by the Born rule (log |out|^2)")


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


def class_scores(out: torch.Tensor) -> torch.Tensor:
    """The class scores (logits) of a batch of outputs ``(batch, classes)``: the outputs of a
    real network as they are; of a complex one, by the Born rule, ``log |out_c|^2`` (the class
    probabilities are then ``|out_c|^2`` normalised).

    >>> class_scores(torch.tensor([[1 + 1j, 0.5j]])).exp()
    tensor([[2.0000, 0.2500]])
    """
    if not out.is_complex():
        return out
    tiny = torch.finfo(out.real.dtype).tiny
    return torch.log(out.real.square() + out.imag.square() + tiny)


def batch_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy (classification: of :func:`class_scores`) or mean squared error
    (regression) of one batch."""
    out = _flat(out)
    if task == "classification":
        return F.cross_entropy(class_scores(out), y)
    return F.mse_loss(out, y.reshape(out.shape))


class RegressionFit:
    """R² of an epoch's training predictions, accumulated batch by batch (per target column:
    squared residuals, sums and sums of squares of the targets), so that data-parallel ranks can
    add their sums up (:meth:`sums`) before :meth:`r2`.

    Examples
    --------
    >>> fit = RegressionFit()
    >>> fit.add(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 4.0]))
    >>> round(fit.r2(fit.sums()), 4)
    0.7857
    """

    def __init__(self) -> None:
        self._residual = 0.0
        self._count = 0
        self._sum: torch.Tensor | None = None
        self._squares: torch.Tensor | None = None

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """One batch's predictions ``(batch, k)`` and targets."""
        pred = _flat(out).double()
        target = y.reshape(pred.shape).double()
        self._residual += float(((pred - target) ** 2).sum())
        self._count += pred.shape[0]
        total, squares = target.sum(0).cpu(), (target ** 2).sum(0).cpu()
        self._sum = total if self._sum is None else self._sum + total
        self._squares = squares if self._squares is None else self._squares + squares

    def sums(self) -> list[float]:
        """The sums, flat: residual, count, then per column the sum and the sum of squares."""
        if self._sum is None or self._squares is None:
            return [0.0, 0.0]
        return [self._residual, float(self._count), *self._sum.tolist(), *self._squares.tolist()]

    @staticmethod
    def r2(sums: list[float]) -> float:
        """``1 - residual / spread`` from (possibly rank-summed) :meth:`sums`; NaN without
        spread (constant targets, or no examples)."""
        residual, count, rest = sums[0], sums[1], sums[2:]
        if not count or not rest:
            return float("nan")
        k = len(rest) // 2
        spread = sum(sq - s * s / count for s, sq in zip(rest[:k], rest[k:]))
        return 1.0 - residual / spread if spread > 0 else float("nan")


@torch.no_grad()
def evaluate(module: Compiled, dataset: Dataset, split: str = "test",
             batch_size: int = 512) -> dict[str, float]:
    """Loss and accuracy (classification) or MSE and R² (regression) on one split; NaN for a
    split the dataset does not have (``val_fraction=0``).

    Examples
    --------
    >>> evaluate(module, load_dataset("digits"), "val")        # doctest: +SKIP
    {'loss': 0.12, 'accuracy': 0.97}
    """
    x, y = dataset.split(split)
    if x.shape[0] == 0:                     # no such split (a fraction of 0): absent, not 0.0
        return {"loss": math.nan, ("accuracy" if dataset.task == "classification" else "r2"):
                math.nan}
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
            correct += int((class_scores(out).argmax(1) == yb).sum())
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
