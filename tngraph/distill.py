"""Knowledge distillation: train a student network on what a trained teacher predicts
(``tngraph distill``).

``distill(student, teacher, strategy=...)`` is a training run (same progress, metrics,
checkpoints, plots and ``--resume`` as :func:`tngraph.train.train`) whose loss comes from a
registered *distillation strategy*:

- ``response``: KL(teacher || student) of temperature-softened class distributions, times T²,
  mixed with cross-entropy on the labels (weight ``alpha``); for regression, the squared error to
  the teacher's outputs mixed with the one to the targets.
- ``layer``: first fits a chosen part of the student (its layers up to ``student_layer``) to a
  chosen intermediate layer of the teacher (through a learned linear projection where the sizes
  differ, mean squared error), then continues with ``response``.

The teacher is a finished run directory (``spec.yaml`` + ``model.safetensors``) or a spec file,
which is trained first (into ``RUN/teacher``). Strategies register through the
``tngraph.distillers`` entry-point group (built-ins in ``plugins/tngraph_plugins``); the
strategy record and the registry are defined in :mod:`tngraph.kinds`, and a spec's
``distill.strategy`` is checked there, without this module.

Examples
--------
>>> "response" in DISTILLERS and "layer" in DISTILLERS
True
>>> result = distill("models/mps_classifier.yaml", teacher="runs/cnn",   # doctest: +SKIP
...                  strategy="response", epochs=10)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from tngraph.compiler import Compiled
from tngraph.compiler import compile as compile_spec
from tngraph.errors import TNGraphError
from tngraph.kinds import (
    DISTILLERS,
    DistillStrategy,
    get_distiller,
    list_distillers,
    register_distiller,
)
from tngraph.schema import NamedOptions, ParamValue, Spec, TrainOptions, validation_message
from tngraph.spec import load_spec
from tngraph.train import (
    MANIFEST_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    Objective,
    TrainResult,
    check_arguments,
    check_out_dir,
    check_split,
    current_launch,
    load_weights,
    new_run_dir,
    read_config,
    resolve_device,
    tested_weights,
    train,
    training_options,
)
from tngraph.validate import check_distiller

__all__ = [
    "DISTILLERS", "DistillError", "DistillStrategy", "check_distiller", "distill",
    "get_distiller", "list_distillers", "load_teacher", "register_distiller", "teacher_outputs",
]


class DistillError(TNGraphError):
    """A distillation cannot start (teacher missing or incompatible, bad layer names, ...)."""


# ---------------------------------------------------------------------------------------------
# teachers


def load_teacher(teacher: str | Path, *, run_dir: Path, data: str | None = None,
                 device: str = "cpu", echo: Callable[[str], None] = print,
                 seed: int | None = None,
                 train_options: Mapping[str, Any] | None = None) -> tuple[Compiled, Path]:
    """The teacher as a frozen module in eval mode, and the run directory it came from.

    ``teacher`` is a run directory written by ``tngraph train`` (``spec.yaml`` +
    ``model.safetensors``), or a spec file, which is trained first into ``run_dir/teacher``
    (on ``data`` and with ``seed`` when given -- the student's, so that the teacher never trains
    on the student's test split -- else its own ``train:`` values; ``train_options`` such as
    ``epochs`` override its spec's). A teacher whose training stopped is resumed there.
    """
    path = Path(teacher)
    extra = {k: v for k, v in (train_options or {}).items() if v is not None}
    if path.is_dir():
        if not (path / "spec.yaml").is_file() or not (path / MODEL_FILE).is_file():
            raise DistillError(f"teacher {path} is a folder without spec.yaml and {MODEL_FILE}; "
                               "give a run directory written by tngraph train, or a spec file")
        teacher_run = path
    elif path.is_file():
        teacher_run = run_dir / "teacher"
        if (teacher_run / MANIFEST_FILE).is_file() and not (teacher_run / SUMMARY_FILE).is_file():
            echo(f"resuming the teacher's training in {teacher_run}")
            train(resume=teacher_run, echo=echo, device=device, **extra)
        elif not (teacher_run / SUMMARY_FILE).is_file():
            echo(f"training the teacher {path} into {teacher_run}")
            train(path, run_dir=teacher_run, echo=echo, device=device,
                  **({"data": data} if data else {}), **({"seed": seed} if seed is not None
                                                         else {}), **extra)
    else:
        raise DistillError(f"teacher {path} does not exist; give a run directory written by "
                           "tngraph train, or a spec file to train first")
    weights, spec_source = tested_weights(teacher_run)   # best.safetensors of a new run
    spec = load_spec(spec_source)
    module = compile_spec(spec)
    load_weights(module, weights)
    module = module.to(device).eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module, teacher_run.resolve()


def teacher_outputs(teacher: Compiled, x: torch.Tensor) -> torch.Tensor:
    """The teacher's outputs for a batch, ``(batch, -1)``, without gradients."""
    with torch.no_grad():
        out = teacher(x)
    return out.reshape(out.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# the run


def distill(student: str | Path | Spec | None = None, teacher: str | Path | None = None,
            overrides: Mapping[str, ParamValue] | None = None, *,
            strategy: str | Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
            resume: str | Path | None = None, echo: Callable[[str], None] | None = print,
            teacher_epochs: int | None = None, **options: Any) -> TrainResult:
    """Distil ``teacher`` into ``student``; the run is a :func:`tngraph.train.train` run.

    Parameters
    ----------
    student
        Student spec (path, YAML text or Spec); not needed with ``resume``.
    teacher
        Teacher run directory or spec file (trained first); default: the student spec's
        ``distill.teacher``.
    overrides
        ``--set`` values of the student spec.
    strategy
        A registered strategy name or ``{name: ..., option: ...}``; default: the spec's
        ``distill.strategy`` (``response``).
    teacher_epochs
        Epochs of a teacher given as a spec (default: its spec's ``train.epochs``).
    run_dir, resume, echo, **options
        As for :func:`tngraph.train.train`.
    """
    check_arguments({"teacher": teacher, "run_dir": run_dir, "resume": resume}, echo,
                    DistillError)
    _check_strategy(strategy)
    say = echo or (lambda _line: None)
    if resume is not None:
        run = Path(resume)
        stopped = (f"{run} stopped while its teacher trained (in {run / 'teacher'}), before "
                   "the student's run began; run the same tngraph distill command again with "
                   f"--out {run}: the teacher's training goes on where it stopped"
                   if (run / "teacher").is_dir() else f"cannot resume {run}: no config.json "
                   "there; expected a run directory written by tngraph distill")
        config = read_config(run, missing=stopped, error=DistillError)
        recorded = config.get("objective") or {}
        if recorded.get("kind") != "distill":
            raise DistillError(f"{run} is not a distillation run; resume it with tngraph train")
        teacher = recorded["teacher"]
        named = NamedOptions.model_validate(recorded["strategy"])
        spec = None
    else:
        if student is None:
            raise DistillError("nothing to distil: give a student spec, or resume=RUN_DIR")
        spec = student if isinstance(student, Spec) else load_spec(student, overrides)
        try:
            named = spec.distill.strategy if strategy is None else NamedOptions.model_validate(
                {"name": strategy} if isinstance(strategy, str) else dict(strategy))
        except ValidationError as exc:
            raise DistillError(f"invalid distillation strategy {strategy!r}: "
                               f"{validation_message(exc)}; give a name ('response') or "
                               "{'name': 'response', 'temperature': 2}") from None
        teacher = teacher if teacher is not None else spec.distill.teacher
        if teacher is None:
            raise DistillError("no teacher: give --teacher RUN_DIR|SPEC or distill.teacher in "
                               "the student spec")
        run = Path(run_dir) if run_dir is not None else new_run_dir(f"{spec.name}-distill")
    problems = check_distiller(named, None, ("distill", "strategy"))
    if problems:
        raise DistillError("; ".join(p.message for p in problems))
    chosen = get_distiller(named.name)
    strategy_options = chosen.options.model_validate(named.options)
    launch = current_launch()
    defaults = spec.train.model_dump() if spec is not None else config["train"]
    # each torchrun process on the GPU of its LOCAL_RANK; checked before anything is written
    device = str(resolve_device(options.get("device") or defaults["device"], launch))
    # the student's split: a teacher trained on its test examples would leak their labels
    data = options.get("data") or defaults["data"]
    seed = options["seed"] if options.get("seed") is not None else defaults["seed"]
    if Path(teacher).is_dir():
        check_split(Path(teacher), data, seed, f"the teacher {teacher}")
        if teacher_epochs is not None and Path(teacher).resolve() != (run / "teacher").resolve():
            raise DistillError(f"--teacher-epochs is for a teacher given as a spec; {teacher} "
                               "is a trained run: drop --teacher-epochs")
    # the training options too are checked before a folder is made
    training_options(defaults, {k: v for k, v in options.items()
                                   if k in TrainOptions.model_fields and v is not None})
    if resume is None:
        check_out_dir(run)                  # before a teacher is trained into it
    run.mkdir(parents=True, exist_ok=True)
    teacher_module, teacher_run = load_teacher(
        teacher, run_dir=run, data=data, device=device, seed=seed,
        echo=say if launch.main else (lambda _line: None),
        train_options={"epochs": teacher_epochs})

    # the student module is built inside the run: the strategy's objective is made from it there
    bound: dict[str, Objective] = {}

    def bind(module: Any) -> None:
        bound["objective"] = chosen.objective(module, teacher_module, strategy_options)

    def loss(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return bound["objective"].loss(x, y, out)

    def prepare(module: Any, dataset: Any, train_options: Any, log: Callable[[str], None]) -> None:
        _check_outputs(module, teacher_module, dataset)
        inner = bound["objective"].prepare
        if inner is not None:
            inner(module, dataset, train_options, log)

    objective = Objective(loss=loss, prepare=prepare, bind=bind, config={
        "kind": "distill", "teacher": str(teacher_run),
        "strategy": {"name": named.name, **named.options}})
    if resume is not None:
        return train(resume=run, objective=objective, echo=echo, **options)
    return train(spec, run_dir=run, objective=objective, echo=echo, **options)


def _check_strategy(strategy: Any) -> None:
    if strategy is not None and not isinstance(strategy, (str, Mapping)):
        raise DistillError(f"strategy must be a name or a mapping {{'name': ..., option: ...}}, "
                           f"got {type(strategy).__name__}; for example strategy='response'")


def _check_outputs(student: Any, teacher: Any, dataset: Any) -> None:
    x, _ = dataset.split("val")
    probe = x[:2].to(next(teacher.parameters()).device)
    with torch.no_grad():
        t = teacher(probe)
    s_out = student.output_shape if hasattr(student, "output_shape") else \
        student._out_legs_shape
    if math.prod(t.shape[1:]) != math.prod(s_out):
        raise DistillError(f"the teacher has {math.prod(t.shape[1:])} outputs per example but "
                           f"the student {math.prod(s_out)}; they must predict the same targets")
