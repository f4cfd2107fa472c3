"""Gradient-based attributions of a compiled network or pipeline (``tngraph explain``).

:func:`explain` returns, for a batch ``x``, one attribution per input feature, shaped like ``x``:

* ``gradient`` (saliency): ``d score / d x``;
* ``smoothgrad``: the mean gradient over ``noise_samples`` noisy copies ``x + N(0, sigma^2)``,
  ``sigma = noise * (max(x) - min(x))`` per example (Smilkov et al. 2017);
* ``integrated-gradients``: ``(x - b) * mean_k grad(b + (k - 1/2)/steps * (x - b))`` for a
  baseline ``b`` (``0``, a number, ``mean``: the mean training example, or a tensor): the
  midpoint rule, whose attributions sum to ``f(x) - f(b)`` with an error that falls as
  ``1 / steps^2`` (Sundararajan et al. 2017);
* ``gradcam``: at a conv layer's output ``A`` (channels ``c``), ``relu(sum_c w_c A_c)`` with
  ``w_c`` the spatial mean of ``d score / d A_c``, upsampled (bilinear) to the input image and
  repeated over its channels (Selvaraju et al. 2017). A pure tensor network has no conv layer:
  it is refused, naming the methods that work.

The score is the output for one class per example: ``target="predicted"`` (the arg-max),
``"true"`` (the labels ``y``), or a class id; a network with one output uses that output. The
module runs in eval mode (batch norm's running statistics, no dropout); its own mode is restored.

:func:`explain_run` explains examples of a trained run's split and writes
``attributions.png``, ``attributions.safetensors`` and ``summary.json``; with ``compare`` it also
explains the same examples with another run and measures how alike the two maps are
(:func:`similarity`: the mean per-example Spearman rank correlation of ``|attribution|`` and the
top-k overlap).

Examples
--------
>>> import torch, tngraph
>>> module = tngraph.compile("models/mps_classifier.yaml", {"bond_dim": 2}, cache=False)
>>> x = torch.rand(3, 64)
>>> explain(module, x, method="gradient").shape
torch.Size([3, 64])
>>> ig = explain(module, x, method="integrated-gradients", steps=8, target=2)
>>> f = lambda v: module(v)[:, 2]
>>> bool(torch.allclose(ig.sum(1), f(x) - f(torch.zeros_like(x)), rtol=0.05, atol=1e-6))
True
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tngraph.compiler import Pipeline, TNModule
from tngraph.errors import TNGraphError, did_you_mean
from tngraph.files import atomic_write
from tngraph.inspect_run import LoadedRun, load_run
from tngraph.train import class_scores

__all__ = ["METHODS", "ExplainError", "conv_layers", "explain", "explain_run",
           "plot_attributions", "similarity"]

METHODS = ("gradient", "smoothgrad", "integrated-gradients", "gradcam")
#: the methods that need no conv layer
_GRADIENT_METHODS = METHODS[:3]
_ALIASES = {"saliency": "gradient", "ig": "integrated-gradients",
            "integrated_gradients": "integrated-gradients", "grad-cam": "gradcam"}
TARGETS = ("predicted", "true")


class ExplainError(TNGraphError):
    """A bad explanation request (CLI exit code 2); the hint says what to do."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


# ---------------------------------------------------------------------------------------------
# checks


def check_method(method: object) -> str:
    """The canonical name of ``method`` (aliases: ``saliency``, ``ig``), or an ExplainError.

    >>> check_method("ig")
    'integrated-gradients'
    """
    if isinstance(method, str):
        name = _ALIASES.get(method.lower(), method.lower())
        if name in METHODS:
            return name
    raise ExplainError(f"unknown --method {method!r}",
                       did_you_mean(str(method), METHODS))


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExplainError(f"{what} must be a whole number >= 1, got {value!r}")
    return value


def conv_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The conv layers GradCAM can read, by name (a pipeline's layer names; the module names
    of any other ``nn.Module``), in forward order."""
    named = (module.layers.items() if isinstance(module, Pipeline)
             else module.named_modules())
    return {name: m for name, m in named if isinstance(m, (nn.Conv2d, nn.Conv1d))}


def _layer(module: nn.Module, name: str | None, where: str = "") -> tuple[str, nn.Module]:
    """GradCAM's conv layer ``name`` of ``module`` (default: the last); ``where`` says which
    module it is in an error (`` (--compare RUN)``)."""
    convs = conv_layers(module)
    if not convs:
        what = (f"network '{module.spec.name}'{where} is a pure tensor network"
                if isinstance(module, TNModule) else
                f"pipeline '{module.spec.name}'{where} has no conv2d layer"
                if isinstance(module, Pipeline) else f"{type(module).__name__} has no conv layer")
        raise ExplainError(f"gradcam needs a conv layer, and {what}",
                           f"use --method {', '.join(_GRADIENT_METHODS)}: they work on any "
                           "network")
    if name is None:
        return next(reversed(convs.items()))
    if name in convs:
        return name, convs[name]
    layers = (list(module.layers) if isinstance(module, Pipeline)
              else [n for n, _ in module.named_modules() if n])
    what = "is not a conv layer" if name in layers else "is not a layer of the model"
    raise ExplainError(f"--layer '{name}' {what}; gradcam reads a conv layer's output",
                       did_you_mean(name, convs))


# ---------------------------------------------------------------------------------------------
# scores and gradients


def _outputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's outputs ``(batch, outputs)`` as real scores: a complex network's by the
    Born rule, ``log |out|^2`` (:func:`tngraph.train.class_scores`, what it was trained on)."""
    return class_scores(module(x).reshape(x.shape[0], -1))


def _scores(module: nn.Module, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    out = _outputs(module, x)
    if target is None:
        return out[:, 0]
    return out.gather(1, target[:, None])[:, 0]


def resolve_target(module: nn.Module, x: torch.Tensor, target: object,
                   y: torch.Tensor | None = None) -> torch.Tensor | None:
    """Class ids ``(batch,)`` to explain (None: a network with one output).

    ``target``: ``"predicted"``, ``"true"`` (needs ``y``), a class id, or a tensor of ids.
    """
    with torch.no_grad():
        outputs = module(x[:1]).reshape(1, -1).shape[1]
    if outputs == 1:
        return None
    if isinstance(target, torch.Tensor):
        ids = target.to(torch.long).reshape(-1)
    elif target == "predicted":
        with torch.no_grad():
            ids = torch.cat([_outputs(module, x[k:k + 256]).argmax(1)
                             for k in range(0, x.shape[0], 256)])
    elif target == "true":
        if y is None:
            raise ExplainError("target 'true' needs the labels y", "pass y=labels, or "
                               "target='predicted'")
        ids = y.to(torch.long).reshape(-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        ids = torch.full((x.shape[0],), target, dtype=torch.long)
    else:
        raise ExplainError(f"--target must be predicted, true or a class id, got {target!r}")
    if ids.shape[0] != x.shape[0] or (ids.numel() and not 0 <= int(ids.min())
                                      <= int(ids.max()) < outputs):
        raise ExplainError(f"--target {target if not isinstance(target, torch.Tensor) else 'ids'}"
                           f": class ids must be 0 .. {outputs - 1}, one per example",
                           f"the model has {outputs} outputs")
    return ids.to(x.device)


def _gradient(module: nn.Module, x: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_scores(module, x, target).sum(), x)
    return grad


def _smoothgrad(module: nn.Module, x: torch.Tensor, target: torch.Tensor | None, *,
                noise: float, noise_samples: int, generator: torch.Generator) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1)
    sigma = (noise * (flat.max(1).values - flat.min(1).values)).reshape(
        -1, *([1] * (x.dim() - 1)))
    total = torch.zeros_like(x)
    for _ in range(noise_samples):
        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        total += _gradient(module, x + sigma * eps, target)
    return total / noise_samples


def _integrated(module: nn.Module, x: torch.Tensor, target: torch.Tensor | None, *,
                baseline: torch.Tensor, steps: int, chunk: int) -> torch.Tensor:
    n = x.shape[0]
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x)
    per = max(1, chunk // max(n, 1))                  # path points per forward pass
    for start in range(0, steps, per):
        a = alphas[start:start + per]
        points = baseline + a.reshape(-1, *([1] * x.dim())) * (x - baseline)  # (k, n, ...)
        grads = _gradient(module, points.reshape(-1, *x.shape[1:]),
                          None if target is None else target.repeat(len(a)))
        total += grads.reshape(len(a), *x.shape).sum(0)
    return (x - baseline) * total / steps


def _image_shape(module: nn.Module, conv_name: str, x: torch.Tensor) -> tuple[int, ...]:
    """The ``(channels, height, width)`` the input is seen as before the first conv layer."""
    if isinstance(module, Pipeline):
        shape = tuple(module.input_shape)
        for name, layer_shape in module.shapes.items():
            if isinstance(module.layers[name], (nn.Conv2d, nn.Conv1d)):
                break
            shape = layer_shape
    else:
        shape = tuple(x.shape[1:])
    if len(shape) not in (2, 3) or math.prod(shape) != math.prod(x.shape[1:]):
        raise ExplainError(f"gradcam maps the output of '{conv_name}' back to the input image, "
                           f"but the input reaches the conv layers as {shape}, not as a "
                           "reshaped image", f"use --method {', '.join(_GRADIENT_METHODS)}")
    return shape


def _gradcam(module: nn.Module, x: torch.Tensor, target: torch.Tensor | None, *,
             layer: str | None) -> torch.Tensor:
    name, conv = _layer(module, layer)
    image = _image_shape(module, name, x)
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        scores = _scores(module, x.detach(), target)
    finally:
        handle.remove()
    (activation,) = seen
    (grad,) = torch.autograd.grad(scores.sum(), activation)
    spatial = tuple(range(2, activation.dim()))
    weights = grad.mean(dim=spatial, keepdim=True)
    cam = torch.relu((weights * activation).sum(1, keepdim=True)).detach()
    size = image[-2:] if len(image) == 3 else image[-1:]
    mode = "bilinear" if cam.dim() == 4 else "linear"
    cam = torch.nn.functional.interpolate(cam, size=size, mode=mode, align_corners=False)
    channels = image[0] if len(image) == 3 else 1
    return cam.expand(-1, channels, *size).reshape(x.shape)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def _progress(total: int, label: str) -> Any:
    """A rich progress bar on a terminal (none under ``TNGRAPH_NO_PROGRESS``), as training's."""
    if not sys.stderr.isatty() or os.environ.get("TNGRAPH_NO_PROGRESS"):
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=Console(stderr=True), transient=True)
    progress.start()
    progress.add_task(label, total=total)
    return progress


def _baseline(baseline: object, x: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(x.dtype).to(x.device)
        if math.prod(b.shape) == math.prod(x.shape[1:]):
            return b.reshape(1, *x.shape[1:])
        if b.shape == x.shape:
            return b
        raise ExplainError(f"the baseline has shape {tuple(b.shape)}; expected one example "
                           f"{tuple(x.shape[1:])} or the batch's shape {tuple(x.shape)}")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool) \
            and math.isfinite(baseline):
        return torch.full((1, *x.shape[1:]), float(baseline), dtype=x.dtype, device=x.device)
    raise ExplainError(f"--baseline must be a number, 'mean' or a tensor, got {baseline!r}")


def explain(module: nn.Module, x: torch.Tensor, method: str = "gradient", *,
            target: object = "predicted", y: torch.Tensor | None = None,
            layer: str | None = None, noise: float = 0.15, noise_samples: int = 16,
            baseline: object = 0.0, steps: int = 32, batch_size: int = 64, seed: int = 0,
            progress: bool = False) -> torch.Tensor:
    """Attributions of ``module``'s score on each example of ``x``, shaped like ``x``.

    Parameters
    ----------
    module
        A compiled network or pipeline (any ``nn.Module`` from a batch to ``(batch, outputs)``).
    x
        A batch of examples (any shape the module takes).
    method
        ``gradient``, ``smoothgrad``, ``integrated-gradients`` or ``gradcam``.
    target
        ``"predicted"``, ``"true"`` (with ``y``), a class id, or a tensor of ids.
    layer
        GradCAM's conv layer (default: the last one).
    noise, noise_samples
        SmoothGrad's noise level (a fraction of each example's value range) and copies.
    baseline, steps
        Integrated Gradients' baseline (a number, or a tensor of one example or the batch's
        shape) and number of path points.
    batch_size
        Examples per backward pass (Integrated Gradients packs path points into it).
    seed
        Seeds SmoothGrad's noise.
    progress
        Show a progress bar on a terminal.

    Examples
    --------
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> x = torch.ones(1, 3)
    >>> bool(torch.equal(explain(lin, x, target=1), lin.weight[1:].detach()))
    True
    """
    name = check_method(method)
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    if x.dim() < 1 or x.shape[0] == 0:
        raise ExplainError(f"x must be a batch of at least one example, got shape "
                           f"{tuple(x.shape)}")
    batch_size = _positive_int(batch_size, "batch_size")
    if name == "smoothgrad":
        noise_samples = _positive_int(noise_samples, "--noise-samples")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or \
                not 0 <= noise < math.inf:
            raise ExplainError(f"--noise must be a number >= 0, got {noise!r}",
                               "SmoothGrad's paper uses 0.1 to 0.2 of the input range")
    if name == "integrated-gradients":
        steps = _positive_int(steps, "--steps")
    ref = next(module.parameters(), None)
    if ref is not None:
        x = x.to(ref.device)
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty_like(x)
    chunks = range(0, x.shape[0], batch_size)
    bar = _progress(len(chunks), name) if progress else None
    with _eval_mode(module):
        if name == "gradcam":
            _layer(module, layer)                          # refuse before any work
        ids = resolve_target(module, x, target, y)
        base = _baseline(baseline, x) if name == "integrated-gradients" else None
        try:
            for start in chunks:
                xb = x[start:start + batch_size]
                tb = None if ids is None else ids[start:start + batch_size]
                if name == "gradient":
                    out[start:start + len(xb)] = _gradient(module, xb, tb)
                elif name == "smoothgrad":
                    out[start:start + len(xb)] = _smoothgrad(
                        module, xb, tb, noise=float(noise), noise_samples=noise_samples,
                        generator=generator)
                elif name == "integrated-gradients":
                    assert base is not None
                    bb = base if base.shape[0] == 1 else base[start:start + batch_size]
                    out[start:start + len(xb)] = _integrated(module, xb, tb, baseline=bb,
                                                             steps=steps, chunk=batch_size)
                else:
                    out[start:start + len(xb)] = _gradcam(module, xb, tb, layer=layer)
                if bar is not None:
                    bar.update(bar.task_ids[0], advance=1)
        finally:
            if bar is not None:
                bar.stop()
    return out.detach()


# ---------------------------------------------------------------------------------------------
# comparing maps


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks of each row's entries, ties averaged (as Spearman's correlation needs)."""
    from scipy.stats import rankdata

    return rankdata(values, axis=1)


def similarity(a: torch.Tensor, b: torch.Tensor, *, k: int | None = None) -> dict[str, Any]:
    """How alike two batches of attribution maps are, per example, on ``|attribution|``.

    Returns ``spearman`` (the mean over examples of the Spearman rank correlation; examples
    where either map is constant are left out and counted in ``constant``),
    ``spearman_per_example``, ``top_k`` and ``top_k_overlap`` (the mean share of the ``k``
    largest features of one map that are among the ``k`` largest of the other; default ``k``:
    a tenth of the features).

    Examples
    --------
    >>> import torch
    >>> a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> similarity(a, -2 * a, k=2)["spearman"], similarity(a, a.flip(1), k=2)["top_k_overlap"]
    (1.0, 0.0)
    """
    if a.shape != b.shape:
        raise ExplainError(f"the maps have shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                           "compare maps of the same examples")
    x = a.detach().abs().reshape(a.shape[0], -1).double().cpu().numpy()
    z = b.detach().abs().reshape(b.shape[0], -1).double().cpu().numpy()
    features = x.shape[1]
    k = max(1, features // 10) if k is None else min(_positive_int(k, "k"), features)
    rx, rz = _ranks(x), _ranks(z)
    per: list[float | None] = []
    for u, v in zip(rx, rz):
        su, sv = u.std(), v.std()
        per.append(None if su == 0 or sv == 0 else
                   float(((u - u.mean()) * (v - v.mean())).mean() / (su * sv)))
    valid = [p for p in per if p is not None]
    top_a = np.argsort(-x, axis=1, kind="stable")[:, :k]
    top_b = np.argsort(-z, axis=1, kind="stable")[:, :k]
    overlap = [len(set(p) & set(q)) / k for p, q in zip(top_a, top_b)]
    return {"spearman": round(float(np.mean(valid)), 12) if valid else None,
            "spearman_per_example": per, "constant": len(per) - len(valid), "top_k": k,
            "top_k_overlap": float(np.mean(overlap))}


# ---------------------------------------------------------------------------------------------
# a trained run


def _as_image(example: np.ndarray) -> tuple[np.ndarray, bool]:
    """An example as something imshow can show: ``(H, W)`` or ``(H, W, 3)`` (RGB)."""
    if example.ndim == 3 and example.shape[0] == 3:
        return np.transpose(example, (1, 2, 0)), True
    if example.ndim == 3:
        return example.mean(0), False
    if example.ndim == 2:
        return example, False
    side = math.isqrt(example.size)
    if side * side == example.size:
        return example.reshape(side, side), False
    return example.reshape(1, -1), False


def _heat(attribution: np.ndarray) -> np.ndarray:
    values = np.abs(attribution)
    if values.ndim == 3:
        values = values.sum(0)
    image, _ = _as_image(values)
    top = image.max()
    return image / top if top > 0 else image


def plot_attributions(x: torch.Tensor, maps: Mapping[str, torch.Tensor], path: Path, *,
                      labels: Sequence[str] | None = None, rows: int = 8) -> None:
    """A grid: one row per example (at most ``rows``), the input then ``|attribution|`` of each
    entry of ``maps`` (title -> maps shaped like ``x``), each scaled to its own maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(rows, x.shape[0])
    cols = 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(1.8 * cols, 1.8 * n), squeeze=False)
    xs = x.detach().cpu().numpy()
    for r in range(n):
        image, rgb = _as_image(xs[r])
        axes[r][0].imshow(np.clip(image, 0, 1) if rgb else image, cmap=None if rgb else "gray")
        if labels is not None:
            axes[r][0].set_ylabel(labels[r], fontsize=7)
        for c, (title, values) in enumerate(maps.items(), start=1):
            axes[r][c].imshow(_heat(values[r].detach().cpu().numpy()), cmap="inferno",
                              vmin=0, vmax=1)
            if r == 0:
                axes[r][c].set_title(title, fontsize=7)
        if r == 0:
            axes[r][0].set_title("input", fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _run_baseline(baseline: str | float, run: LoadedRun) -> object:
    if baseline == "mean":
        return run.dataset.x_train.mean(0)
    if isinstance(baseline, str):
        try:
            return float(baseline)
        except ValueError:
            raise ExplainError(f"--baseline must be a number or 'mean', got {baseline!r}",
                               "e.g. --baseline 0 (black), or --baseline mean (the mean "
                               "training example)") from None
    return baseline


def _parse_target(target: str | int) -> str | int:
    if isinstance(target, int) or target in TARGETS:
        return target
    try:
        return int(target)
    except ValueError:
        raise ExplainError(f"--target must be predicted, true or a class id, got {target!r}",
                           did_you_mean(str(target), TARGETS)) from None


def _compared(run: LoadedRun, other: str | Path | None, device: str | None
              ) -> LoadedRun | None:
    if other is None:
        return None
    if not Path(other).is_dir():
        raise ExplainError(f"--compare {other}: no such run directory",
                           "give another run trained on the same dataset, e.g. "
                           "runs/cnn_tt-20250101-120000")
    if Path(other).resolve() == run.path.resolve():
        raise ExplainError(f"--compare {other} is the run being explained",
                           "compare with another run trained on the same dataset")
    loaded = load_run(other, device=device)
    if (loaded.data, loaded.seed) != (run.data, run.seed):
        raise ExplainError(
            f"--compare {other} was trained on {loaded.data} (seed {loaded.seed}) but "
            f"{run.path} on {run.data} (seed {run.seed}): their splits hold other examples",
            "compare two runs trained with the same --data and --seed")
    return loaded


def explain_run(run: str | Path, *, method: str = "gradient", layer: str | None = None,
                split: str = "test", samples: int = 16, target: str | int = "predicted",
                compare: str | Path | None = None, out: str | Path | None = None,
                noise: float = 0.15, noise_samples: int = 16, baseline: str | float = 0.0,
                steps: int = 32, batch_size: int = 64, device: str | None = None,
                progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Explain the first ``samples`` examples of a trained run's ``split``; write
    ``attributions.png``, ``attributions.safetensors`` (``attributions``, ``inputs``,
    ``targets``, with ``compare``: ``compare_attributions``) and ``summary.json`` into ``out``
    (default ``<run>-explain``). Returns the summary and the folder.

    Examples
    --------
    >>> summary, folder = explain_run("runs/cnn", method="gradcam",      # doctest: +SKIP
    ...                               compare="runs/cnn_tt")
    >>> summary["compare"]["spearman"]                                   # doctest: +SKIP
    0.41
    """
    name = check_method(method)
    wanted = _parse_target(target)
    samples = _positive_int(samples, "--samples")
    loaded = load_run(run, device=device)
    if name == "gradcam":
        _layer(loaded.module, layer)
    other = _compared(loaded, compare, device)
    # the other run's conv layer: the one of the same name, else its last
    other_layer = layer if other is not None and layer in conv_layers(other.module) else None
    if other is not None and name == "gradcam":
        _layer(other.module, other_layer, f" (--compare {compare})")
    folder = Path(out) if out is not None else loaded.path.with_name(loaded.path.name
                                                                     + "-explain")
    if folder.exists() and not folder.is_dir():
        raise ExplainError(f"--out {folder} is a file", "give a folder (it is created)")
    dataset = loaded.dataset
    if split not in dataset.sizes or dataset.sizes[split] == 0:
        raise ExplainError(f"{dataset.name} has no {split} split",
                           "choose --split train, val or test (one the run's dataset has)")
    x, y = dataset.split(split)
    x, y = x[:samples], y[:samples]
    if wanted == "true" and dataset.task != "classification":
        raise ExplainError("--target true needs a classification dataset",
                           "leave --target out to explain the output")
    options = {"target": wanted, "y": y if dataset.task == "classification" else None,
               "noise": noise, "noise_samples": noise_samples, "steps": steps,
               "batch_size": batch_size, "progress": progress}
    maps = {loaded.path.name: explain(loaded.module, x, name, layer=layer,
                                      baseline=_run_baseline(baseline, loaded), **options)}
    if other is not None:
        maps[other.path.name] = explain(other.module, x, name, layer=other_layer,
                                        baseline=_run_baseline(baseline, other), **options)
    attributions = maps[loaded.path.name]
    with torch.no_grad():
        outputs = _outputs(loaded.module, x.to(attributions.device))
    ids = resolve_target(loaded.module, x.to(attributions.device), wanted, options["y"])
    summary: dict[str, Any] = {
        "run": str(loaded.path), "checkpoint": str(loaded.checkpoint), "method": name,
        "split": split, "samples": int(x.shape[0]), "target": wanted,
        "input_shape": list(x.shape[1:]),
        "labels": y.tolist() if dataset.task == "classification" else None,
        "targets": None if ids is None else ids.tolist(),
        "options": {"layer": _layer(loaded.module, layer)[0] if name == "gradcam" else None,
                    "noise": noise if name == "smoothgrad" else None,
                    "noise_samples": noise_samples if name == "smoothgrad" else None,
                    "baseline": (_run_baseline(baseline, loaded) if baseline != "mean" else
                                 "mean") if name == "integrated-gradients" else None,
                    "steps": steps if name == "integrated-gradients" else None},
        "mean_abs_attribution": attributions.abs().mean(0).reshape(-1).tolist(),
    }
    if dataset.task == "classification":
        summary["accuracy"] = float((outputs.argmax(1).cpu() == y).float().mean())
    if name == "integrated-gradients":
        base = _baseline(_run_baseline(baseline, loaded), x)
        with torch.no_grad():
            def score(v: torch.Tensor) -> torch.Tensor:
                return _scores(loaded.module, v.to(attributions.device), ids)
            gap = attributions.reshape(x.shape[0], -1).sum(1) - (
                score(x) - score(base.expand_as(x)))
        summary["completeness_gap"] = float(gap.abs().max())
    if other is not None:
        summary["compare"] = {"run": str(other.path), "checkpoint": str(other.checkpoint),
                              "mean_abs_attribution": maps[other.path.name].abs().mean(0)
                              .reshape(-1).tolist(),
                              **similarity(attributions, maps[other.path.name])}
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder, x, maps, ids, summary, dataset)
    return summary, folder


def _write(folder: Path, x: torch.Tensor, maps: Mapping[str, torch.Tensor],
           ids: torch.Tensor | None, summary: Mapping[str, Any], dataset: Any) -> None:
    from safetensors.torch import save

    first, *rest = maps.values()
    tensors = {"attributions": first.contiguous().cpu(), "inputs": x.contiguous().cpu()}
    if ids is not None:
        tensors["targets"] = ids.cpu()
    if rest:
        tensors["compare_attributions"] = rest[0].contiguous().cpu()
    atomic_write(folder / "attributions.safetensors",
                 save(tensors, metadata={"method": str(summary["method"]),
                                         "run": str(summary["run"])}))
    atomic_write(folder / "summary.json", json.dumps(summary, indent=2).encode())
    names = dataset.class_names or [str(k) for k in range(dataset.n_classes or 0)]
    labels = None if ids is None else [
        f"true {names[int(t)]}, target {names[int(i)]}"
        for t, i in zip(summary["labels"] or ids.tolist(), ids.tolist())]
    titles = {f"{name} ({summary['method']})": values for name, values in maps.items()}
    plot_attributions(x, titles, folder / "attributions.png", labels=labels)
