"""The objectives of the distillation strategies ``response`` and ``layer`` (see
:mod:`tngraph.distill`; declared in :mod:`tngraph_plugins.strategies`).

``response`` minimises ``(1 - alpha) * T^2 * KL(p_teacher^T || p_student^T) + alpha * CE(student,
labels)`` with ``p^T = softmax(logits / T)`` (Hinton et al. 2015). This is the standard
Kullback-Leibler divergence ``sum_i p_i (log p_i - log q_i)``; seed 000's formula (1), which
divides logarithms, is not a divergence. The factor T² keeps the gradient scale independent of
the temperature. For regression the teacher term is the mean squared error to the teacher's
outputs.

``layer`` first fits the student's layers up to ``student_layer`` to the teacher's output at
``teacher_layer`` (mean squared error, through a learned linear projection when the sizes differ
or ``projection: true``) for ``epochs`` epochs, then trains the whole student with ``response``.

Examples
--------
>>> import torch
>>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
>>> float(response_loss(s, t, torch.tensor([0]), temperature=1.0, alpha=0.0))  # doctest: +ELLIPSIS
0.462...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from tngraph.compiler import Pipeline
from tngraph.distill import DistillError, teacher_outputs
from tngraph.errors import did_you_mean
from tngraph.train import Objective, class_scores
from tngraph_plugins.strategies import LAYER, RESPONSE, LayerOptions, ResponseOptions

__all__ = ["LAYER", "RESPONSE", "LayerOptions", "ResponseOptions", "layer_objective",
           "response_loss", "response_objective"]


def response_loss(student: Any, teacher: Any, labels: Any, *, temperature: float,
                  alpha: float) -> Any:
    """The response-distillation loss of one batch (see the module docstring).

    ``labels`` of an integer dtype mean classification (logits in, KL + cross-entropy), others
    regression (squared errors). In classification a complex network's outputs give their
    class scores by the Born rule, ``log |out_c|^2`` (:func:`tngraph.train.class_scores`, as
    its training does).
    """
    s = student.reshape(student.shape[0], -1)
    t = teacher.reshape(teacher.shape[0], -1)
    if not labels.dtype.is_floating_point:
        s = class_scores(s)
        t = class_scores(t).to(s.dtype)
        log_p_teacher = F.log_softmax(t / temperature, dim=1)
        log_p_student = F.log_softmax(s / temperature, dim=1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        soft = kl * temperature ** 2
        hard = F.cross_entropy(s, labels) if alpha else s.new_zeros(())
    else:
        t = t.to(s.dtype)
        soft = F.mse_loss(s, t)
        hard = F.mse_loss(s, labels.reshape(s.shape).to(s.dtype)) if alpha else 0.0
    return (1 - alpha) * soft + alpha * hard


def response_objective(student: Any, teacher: Any, options: ResponseOptions) -> Any:
    def loss(x: Any, y: Any, out: Any) -> Any:
        return response_loss(out, teacher_outputs(teacher, x), y,
                             temperature=options.temperature, alpha=options.alpha)

    return Objective(loss=loss)


def _layers_until(model: Any, name: str, role: str) -> list[Any]:
    """The layers of a pipeline up to and including ``name``."""
    if not isinstance(model, Pipeline):
        raise DistillError(f"layer distillation needs the {role} to be a pipeline (a spec with "
                           f"layers:) to pick its layer '{name}' from; use strategy 'response'")
    names = list(model.layers)
    if name not in names:
        raise DistillError(f"the {role} has no layer '{name}'; {did_you_mean(name, names)}")
    return [model.layers[n] for n in names[: names.index(name) + 1]]


def _prefix(model: Any, layers: list[Any]) -> Callable[[Any], Any]:
    """The model's layers up to one, on flat inputs, giving flat real features (a complex
    layer's values as (real, imaginary) pairs)."""
    def run(x: Any) -> Any:
        h = x.reshape(x.shape[0], *model.input_shape)
        for layer in layers:
            h = layer(h)
        return _real_features(h)
    return run


def _real_features(h: Any) -> Any:
    """``h`` flattened per example, complex values as (real, imaginary) pairs."""
    if h.is_complex():
        h = torch.view_as_real(h)
    return h.reshape(h.shape[0], -1)


def layer_objective(student: Any, teacher: Any, options: LayerOptions) -> Any:
    student_part = _layers_until(student, options.student_layer, "student")
    if options.teacher_layer == "output":
        def teacher_part(x: Any) -> Any:
            return _real_features(teacher_outputs(teacher, x))
    else:
        teacher_part = _prefix(teacher, _layers_until(teacher, options.teacher_layer, "teacher"))

    def prepare(module: Any, dataset: Any, train_options: Any, echo: Callable[[str], None]
                ) -> None:
        run_student = _prefix(module, student_part)
        x, _ = dataset.split("train")
        device = next(module.parameters()).device
        probe = x[:2].to(device)
        with torch.no_grad():
            features = run_student(probe)
            t_size = teacher_part(probe).shape[1]
        s_size, dtype = features.shape[1], features.dtype     # (the student's real dtype)
        project = (torch.nn.Linear(s_size, t_size, dtype=dtype).to(device)
                   if options.projection or s_size != t_size else torch.nn.Identity())
        params = [p for layer in student_part for p in layer.parameters()]
        params += list(project.parameters())
        optimizer = torch.optim.Adam(params, lr=options.lr)
        generator = torch.Generator().manual_seed(train_options.seed)
        batch = train_options.batch_size
        for epoch in range(1, options.epochs + 1):
            order = torch.randperm(x.shape[0], generator=generator)
            total, count = 0.0, 0
            for index in order.split(batch):
                xb = x[index].to(device)
                with torch.no_grad():
                    target = teacher_part(xb)
                loss = F.mse_loss(project(run_student(xb)), target.to(dtype))
                if not torch.isfinite(loss):
                    raise DistillError(f"the layer fit diverged (loss {loss.item()}) at epoch "
                                       f"{epoch}; lower distill.strategy.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * xb.shape[0]
                count += xb.shape[0]
            echo(f"layer fit {epoch}/{options.epochs}: {options.student_layer} -> teacher "
                 f"{options.teacher_layer} ({s_size} -> {t_size}"
                 f"{', projected' if not isinstance(project, torch.nn.Identity) else ''}) "
                 f"mse {total / count:.4g}")
        if not math.isfinite(total):
            raise DistillError("the layer fit produced non-finite values")

    response = response_objective(student, teacher, options)
    return Objective(loss=response.loss, prepare=prepare)
