"""The ``tngraph`` command line: ``validate``, ``compile``, ``expand``, ``train``, ``distill``,
``eval``, ``tensorize``, ``explain``, ``inspect``, ``draw``, ``plugins list``, ``templates``.

``main(argv) -> int`` never raises: user errors print ``FILE:LINE:COL: error: ...`` to stderr and
return 2; internal errors return 1 (with a traceback only under ``--debug``).

Examples
--------
>>> main(["validate", "models/mps.yaml"])            # doctest: +SKIP
models/mps.yaml: ok (mps, mps: 10 nodes, 9 edges, 0 inputs, 272 parameters)
0
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tngraph import __version__, kinds
from tngraph.errors import Problem, SpecError, TNGraphError
from tngraph.graph import parameter_count
from tngraph.layers import summarize_layers
from tngraph.schema import MAX_SEED
from tngraph.spec import load_spec, parse_override
from tngraph.templates import TEMPLATES
from tngraph.validate import complex_layer_problems
from tngraph.yamlio import dump_yaml

EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="spec file (YAML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a parameter (repeatable)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_plan_options(parser: argparse.ArgumentParser, training: bool = False) -> None:
    """The ``plan:`` overrides. In train / distill (``training``) ``--batch-size`` is the
    training batch (which is then also the plan's) and ``--strategy`` the distiller: there the
    execution is ``--execution`` (or its earlier spelling ``--plan-strategy``; both accepted
    everywhere)."""
    group = parser.add_argument_group("planning (override the spec's plan: block)")
    group.add_argument("--optimize", help="path finder: auto (default), hyper, greedy, optimal, "
                       "...")
    group.add_argument("--max-time", type=float, help="seconds for the plan search")
    group.add_argument("--max-repeats", type=int, help="trials of the hyper-optimizing path finder")
    group.add_argument("--minimize", choices=["flops", "size", "write", "combo"])
    group.add_argument("--memory-limit", help="e.g. 4GiB, 512MB (intermediates and parameters)")
    group.add_argument("--time-budget", help="the longest estimated time of one contraction a "
                       "plan may need: e.g. 30s, 2h, 1d, or none (default 1h)")
    if not training:
        group.add_argument("--batch-size", type=int,
                           help="batch size the plan and costs are for")
    group.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16",
                                           "complex64", "complex128"])
    group.add_argument(*(["--execution", "--plan-strategy"] if training
                         else ["--execution", "--strategy", "--plan-strategy"]),
                       dest="execution", choices=["auto", "network", "dense"],
                       help="execution of one-port networks (default auto: from the plan's costs)")
    group.add_argument("--run-path", choices=["auto", "min-flops", "fused"],
                       help="contraction path that runs (default auto: the port-fused one while "
                            "within 1.25x of the lowest FLOPs)")
    group.add_argument("--no-cache", action="store_true", help="search again, ignore the cache")
    group.add_argument("--cache-dir", help="plan cache directory")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """Flags shared by ``train`` and ``distill``."""
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a parameter (repeatable)")
    p.add_argument("--data", help="dataset: digits (default), mnist:PATH, fashion-mnist:PATH, "
                                  "csv:PATH?label=COL, synthetic-regression")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--optimizer", metavar="NAME[?KEY=VALUE&...]",
                   help="optimizer strategy and options, e.g. sgd, adam?amsgrad=true, "
                        "dmrg?max_rank=32 (tngraph plugins list shows them)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float, metavar="NORM",
                   help="clip the gradients' global norm to NORM before each step (adam, sgd)")
    p.add_argument("--test-on", choices=["best", "last"],
                   help="test the weights of the best validation epoch (default; kept as "
                        "best.safetensors) or of the last one")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the spec's "
                                    "train.device)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/NAME-DATE-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run where it stopped")
    p.add_argument("--init", metavar="WEIGHTS",
                   help="start from these weights (model.safetensors), e.g. to fine-tune a "
                        "tensorized model")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    _add_plan_options(p, training=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tngraph",
        description="Declare tensor networks in YAML, plan them with cotengra, run them in torch.")
    parser.add_argument("--version", action="version", version=f"tngraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="check a spec; list every problem at once")
    _add_common(p)

    p = sub.add_parser("compile", help="plan a spec and print its cost report")
    _add_common(p)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--save", metavar="FILE", help="write initial weights (.safetensors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weight initialisation")
    p.add_argument("--draw", metavar="FILE", help="also draw the network(s) and contraction "
                                                  "tree(s) into FILE.png or FILE.svg")
    _add_plan_options(p)

    p = sub.add_parser("expand", help="print the raw canonical YAML of a spec")
    _add_common(p)

    p = sub.add_parser("train", help="train a spec's network on a dataset")
    p.add_argument("spec", nargs="?", help="spec file (YAML); not needed with --resume")
    _add_train_flags(p)

    p = sub.add_parser("distill", help="train a student spec on a trained teacher's outputs")
    p.add_argument("spec", nargs="?", help="student spec (YAML); not needed with --resume")
    p.add_argument("--teacher", metavar="RUN_DIR|SPEC",
                   help="teacher run directory, or a spec to train first (default: the "
                        "student spec's distill.teacher)")
    p.add_argument("--teacher-epochs", type=int, metavar="N",
                   help="epochs of a teacher given as a spec (default: its spec's train.epochs)")
    p.add_argument("--strategy", metavar="NAME[?KEY=VALUE&...]",
                   help="distillation strategy and options, e.g. response?temperature=2, "
                        "layer?student_layer=mps1&teacher_layer=act2 (default: response)")
    _add_train_flags(p)

    p = sub.add_parser("eval", help="test metrics of a trained checkpoint")
    p.add_argument("spec", metavar="RUN|SPEC",
                   help="a run directory (its spec.yaml, model.safetensors, data and seed), or "
                        "a spec file with --checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a parameter of a spec file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--checkpoint", help="model.safetensors of a run (default with a run "
                                        "directory: its own)")
    p.add_argument("--data", help="dataset (default: that of the run the weights come from, "
                                  "else the spec's train.data)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--seed", type=int, help="seed of the dataset split (default: the run's, "
                                            "else the spec's)")
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: the spec's train.device)")

    p = sub.add_parser("tensorize", help="replace dense linear layers of a trained pipeline "
                                         "by TT-layers (TT-SVD of their weights)")
    p.add_argument("spec", metavar="MODEL", help="a run directory (spec.yaml + "
                                                 "model.safetensors) or a spec file")
    p.add_argument("--checkpoint", metavar="FILE", help="weights (model.safetensors); needed "
                                                        "with a spec file")
    p.add_argument("--layers", metavar="NAME[,NAME]", help="the linear layers to replace")
    p.add_argument("--rank", type=int, help="TT-rank of every bond (clipped where a bond "
                                            "allows less); with --eps: a cap")
    p.add_argument("--eps", type=float, help="relative accuracy instead: smallest ranks with "
                                             "||W - W_tt|| <= EPS ||W||")
    p.add_argument("--in-shape", metavar="N,N,...", help="factors of the input size (default: "
                                                         "balanced, see docs/decompose.md)")
    p.add_argument("--out-shape", metavar="N,N,...", help="factors of the output size")
    p.add_argument("--cores", type=int, help="number of factors of chosen shapes (default: 4, "
                                             "fewer for sizes with fewer prime factors)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <run>-tt)")
    p.add_argument("--data", metavar="NAME", help="also report test accuracy / R2 before and "
                                                  "after on this dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a parameter of a spec file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("explain", help="attribution maps of a trained run (saliency, "
                                       "SmoothGrad, Integrated Gradients, GradCAM)")
    p.add_argument("spec", metavar="RUN", help="a run directory written by tngraph train")
    p.add_argument("--method", default="gradient",
                   help="gradient (default), smoothgrad, integrated-gradients, gradcam")
    p.add_argument("--layer", metavar="NAME", help="gradcam's conv layer (default: the last)")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--samples", type=int, default=16, metavar="N",
                   help="explain the split's first N examples (default 16)")
    p.add_argument("--target", default="predicted", metavar="predicted|true|CLASS",
                   help="the class whose score is explained (default: the predicted one)")
    p.add_argument("--compare", metavar="OTHER_RUN",
                   help="also explain the same examples with another run; measure how alike")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <run>-explain)")
    p.add_argument("--noise", type=float, default=0.15,
                   help="smoothgrad: noise level, a fraction of each example's range (0.15)")
    p.add_argument("--noise-samples", type=int, default=16,
                   help="smoothgrad: noisy copies per example (16)")
    p.add_argument("--baseline", default="0", help="integrated-gradients: a number (default "
                                                   "0) or 'mean' (the mean training example)")
    p.add_argument("--steps", type=int, default=32,
                   help="integrated-gradients: points on the path (32)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per backward pass")
    p.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("inspect", help="bond spectra and entanglement entropy of a trained "
                                       "run's chains (MPS, TT-layers, rings)")
    p.add_argument("spec", metavar="RUN", help="a run directory written by tngraph train")
    p.add_argument("--eps", type=float, default=0.01,
                   help="relative truncation error: report the bond dimensions it allows "
                        "(default 0.01)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <run>-inspect)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the run's)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("draw", help="draw a network and its contraction tree (PNG or SVG)")
    p.add_argument("spec", metavar="SPEC|RUN", help="a spec file or a run directory")
    p.add_argument("--what", choices=["network", "tree", "both"], default="both")
    p.add_argument("--out", metavar="FILE", help="FILE.png or FILE.svg (default NAME.png)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a parameter of a spec file")
    p.add_argument("--cache-dir", help="plan cache directory")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("plugins", help="list templates, feature maps, initialisers, datasets")
    p.add_argument("action", choices=["list"], help="what to do (list)")
    p.add_argument("--debug", action="store_true")

    p = sub.add_parser("templates", help="list the registered templates")
    p.add_argument("--debug", action="store_true")
    return parser


def _overrides(items: Sequence[str]) -> dict[str, Any]:
    return dict(parse_override(item) for item in items)


def _plan_kwargs(args: argparse.Namespace, training: bool = False) -> dict[str, Any]:
    """The plan flags given (None: not given); ``training``: of train / distill, whose
    ``--batch-size`` is the training batch."""
    return {
        "optimize": args.optimize, "max_time": args.max_time, "max_repeats": args.max_repeats,
        "minimize": args.minimize, "memory_limit": args.memory_limit,
        "time_budget": args.time_budget,
        **({} if training else {"batch_size": args.batch_size}),
        "dtype": args.dtype, "execution": args.execution, "run_path": args.run_path,
        "cache": False if args.no_cache else None,
    }


def _cmd_validate(args: argparse.Namespace) -> int:
    from tngraph.plan import check_plan_options

    spec = load_spec(Path(args.spec), _overrides(args.overrides))
    problems = check_plan_options(spec)
    if problems:
        raise SpecError(problems)
    if spec.is_pipeline:
        layers = summarize_layers(spec)
        networks = sum(layer.type == "network" for layer in layers)
        print(f"{args.spec}: ok ({spec.name}, pipeline: {len(layers)} layers, {networks} "
              f"networks, {list(spec.input_shape or ())} -> {list(layers[-1].shape)}, "
              f"{sum(layer.params for layer in layers):,} parameters)")
        return EXIT_OK
    net = spec.network
    kind = (spec.template or {}).get("template", "raw")
    print(f"{args.spec}: ok ({spec.name}, {kind}: {len(net.nodes)} nodes, {len(net.edges)} "
          f"edges, {len(net.inputs)} inputs, {parameter_count(spec):,} parameters)")
    return EXIT_OK


def _cmd_compile(args: argparse.Namespace) -> int:
    from tngraph.plan import plan_spec
    from tngraph.report import format_pipeline_report, format_report

    spec = load_spec(Path(args.spec), _overrides(args.overrides))
    if spec.is_pipeline:
        if args.dtype:                      # layers that take real values after a complex one
            problems = complex_layer_problems(spec, args.dtype, spec.source)
            if problems:
                raise SpecError(problems)
        plans = {layer.name: plan_spec(spec.network_spec(layer.name), cache_dir=args.cache_dir,
                                       **_plan_kwargs(args))
                 for layer in spec.layers or () if layer.network is not None}
        print(format_pipeline_report(spec, plans, fmt=args.format), end="")
        over = [(name, reason) for name, plan in plans.items() for reason in plan.over_limit]
    else:
        plan = plan_spec(spec, cache_dir=args.cache_dir, **_plan_kwargs(args))
        print(format_report(plan, spec, fmt=args.format), end="")
        over = [(spec.name, reason) for reason in plan.over_limit]
    if args.draw:
        from tngraph.draw import draw_spec

        draw_spec(spec, args.draw, plans=plans if spec.is_pipeline else {spec.name: plan})
        print(f"drawn: {args.draw}", file=sys.stderr)
    if over:
        for name, reason in over:
            where = f" (layer {name.rpartition('.')[2]})" if spec.is_pipeline else ""
            flag = "--time-budget" if "time budget" in reason else "--memory-limit"
            print(f"{args.spec}: error: {reason}{where}\n  hint: raise {flag}, shrink "
                  "the network, or lower --batch-size", file=sys.stderr)
        return EXIT_USER
    if args.save:
        from tngraph.compiler import TNModule
        from tngraph.compiler import compile as compile_spec
        from tngraph.train import save_weights

        path = Path(args.save)
        if not path.parent.exists():
            raise TNGraphError(f"cannot write {path}: folder {path.parent} does not exist")
        module = (compile_spec(spec, cache_dir=args.cache_dir, seed=args.seed,
                               **_plan_kwargs(args))
                  if spec.is_pipeline else TNModule(spec, plan, seed=args.seed))
        save_weights(module, path)
        print(f"weights written to {args.save}", file=sys.stderr)
    return EXIT_OK


def _cmd_expand(args: argparse.Namespace) -> int:
    spec = load_spec(Path(args.spec), _overrides(args.overrides))
    print(dump_yaml(spec.to_raw()), end="")
    return EXIT_OK


def _named_option(text: str | None) -> dict[str, Any] | None:
    """``NAME?KEY=VALUE&...`` (a registered strategy with options) as ``{name: ..., ...}``."""
    if text is None:
        return None
    from tngraph.data import parse_dataset_spec

    parsed = parse_dataset_spec(text)
    if parsed.path is not None:
        raise SpecError(Problem(f"'{text}': expected NAME or NAME?KEY=VALUE&..., not a path",
                                None))
    return {"name": parsed.name, **parsed.options}


def _cmd_train(args: argparse.Namespace) -> int:
    from tngraph.train import TrainingError, train

    if args.spec is None and args.resume is None:
        raise TrainingError("give a spec to train, or --resume RUN_DIR")
    if args.spec is not None and args.resume is not None:
        raise TrainingError(f"--resume {args.resume} continues that run with its own spec.yaml; "
                            f"drop {args.spec}, or train it as a new run without --resume")
    train(args.spec if args.resume is None else None, _overrides(args.overrides),
          run_dir=args.out, resume=args.resume, init=args.init, data=args.data,
          epochs=args.epochs,
          batch_size=args.batch_size, lr=args.lr, optimizer=_named_option(args.optimizer),
          weight_decay=args.weight_decay, device=args.device, seed=args.seed,
          grad_clip=args.grad_clip, test_on=args.test_on,
          plan=_plan_kwargs(args, training=True), cache_dir=args.cache_dir)
    return EXIT_OK


def _cmd_distill(args: argparse.Namespace) -> int:
    from tngraph.distill import DistillError, distill

    if args.spec is None and args.resume is None:
        raise DistillError("give a student spec to distil into, or --resume RUN_DIR")
    if args.spec is not None and args.resume is not None:
        raise DistillError(f"--resume {args.resume} continues that run with its own "
                           f"spec.yaml; drop {args.spec}, or distil it as a new run without "
                           "--resume")
    if args.init is not None:
        raise DistillError("--init is for tngraph train; a distillation starts from the "
                           "student spec's initialisation")
    distill(args.spec if args.resume is None else None, args.teacher,
            _overrides(args.overrides), strategy=_named_option(args.strategy),
            run_dir=args.out, resume=args.resume, data=args.data, epochs=args.epochs,
            teacher_epochs=args.teacher_epochs,
            batch_size=args.batch_size, lr=args.lr, optimizer=_named_option(args.optimizer),
            weight_decay=args.weight_decay, device=args.device, seed=args.seed,
            grad_clip=args.grad_clip, test_on=args.test_on,
            plan=_plan_kwargs(args, training=True), cache_dir=args.cache_dir)
    return EXIT_OK


def _cmd_eval(args: argparse.Namespace) -> int:
    from tngraph.inspect_run import load_trained
    from tngraph.train import TrainingError, evaluate, read_config, tested_weights

    path, checkpoint = Path(args.spec), args.checkpoint
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise TrainingError(f"--seed must be an integer from 0 to 2**63 - 1, got {args.seed}; "
                            "leave it out to use the seed the weights were trained with")
    if path.is_dir():
        if not (path / "spec.yaml").is_file():
            raise TrainingError(f"{path} is a folder without spec.yaml; give a run directory "
                                "written by tngraph train, or a spec file with --checkpoint")
        if not (args.data and args.seed is not None):
            try:                            # the run's split: its recorded data and seed
                read_config(path)
            except TrainingError as exc:
                raise TrainingError(
                    f"cannot tell which split {path} was trained on ({exc}); give --data and "
                    "--seed of that run, or its test split may hold training examples") from None
        if checkpoint is None:              # the weights the run was tested with
            tested, path = tested_weights(path)
            checkpoint = str(tested)
        else:
            path = path / "spec.yaml"
    elif checkpoint is None:
        raise TrainingError("which weights? give --checkpoint RUN/model.safetensors, or the run "
                            "directory itself instead of the spec")
    # the dataset the weights were trained on (its run's config.json, or their metadata): the
    # split of its data and seed, the device
    loaded = load_trained(path, checkpoint, overrides=_overrides(args.overrides), data=args.data,
                          seed=args.seed, device=args.device)
    module, dataset = loaded.module, loaded.dataset
    if dataset.sizes[args.split] == 0:
        raise TrainingError(f"{dataset.name} has no {args.split} split (its fraction is 0); "
                            "choose another --split, or --data with a fraction above 0")
    metrics = evaluate(module, dataset, args.split)
    print(f"{checkpoint}: {dataset.name} {args.split} ({dataset.sizes[args.split]} "
          "examples): " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return EXIT_OK


def _cmd_tensorize(args: argparse.Namespace) -> int:
    from tngraph.data import load_dataset
    from tngraph.tensorize import (
        check_out_dir,
        default_out_dir,
        evaluate_state,
        format_table,
        load_model,
        parse_shape,
        tensorize_spec,
        with_run_split,
        write_tensorized,
    )

    model = load_model(args.spec, args.checkpoint, _overrides(args.overrides))
    names = [n.strip() for n in (args.layers or "").split(",") if n.strip()]
    in_shape = parse_shape(args.in_shape, "--in-shape")
    out_shape = parse_shape(args.out_shape, "--out-shape")
    shapes = ({n: (in_shape, out_shape) for n in names}
              if in_shape is not None or out_shape is not None else None)
    result = tensorize_spec(model.spec, model.state_dict, names, rank=args.rank, eps=args.eps,
                            shapes=shapes, cores=args.cores)
    # fine-tuning (train NEW/spec.yaml --init ...) on the split the weights were trained on
    result = result._replace(spec=with_run_split(result.spec, model.train_config))
    out = check_out_dir(args.out if args.out else default_out_dir(model))
    metrics = None
    if args.data:
        dataset = load_dataset(args.data, seed=int(model.train_config.get(
            "seed", model.spec.train.seed)))
        before = evaluate_state(model.spec, model.state_dict, dataset)
        after = evaluate_state(result.spec, result.state_dict, dataset)
        metric = "accuracy" if "accuracy" in before else "r2"
        metrics = {"dataset": dataset.name, "split": "test", "metric": metric,
                   "before": before[metric], "after": after[metric]}
    paths = write_tensorized(result, out, metrics)
    print(format_table(result.rows, metrics, title=f"tngraph tensorize: {args.spec}"))
    for row in result.rows:
        for note in row.notes:
            print(f"note: {note}", file=sys.stderr)
    print(f"written: {paths['spec']}, {paths['weights']}\n"
          f"fine-tune: tngraph train {paths['spec']} --init {paths['weights']} --epochs 5")
    return EXIT_OK


def _cmd_explain(args: argparse.Namespace) -> int:
    from tngraph.attribution import explain_run

    summary, out = explain_run(
        args.spec, method=args.method, layer=args.layer, split=args.split, samples=args.samples,
        target=args.target, compare=args.compare, out=args.out, noise=args.noise,
        noise_samples=args.noise_samples, baseline=args.baseline, steps=args.steps,
        batch_size=args.batch_size, device=args.device)
    print(f"{args.spec}: {summary['method']} on {summary['samples']} {summary['split']} "
          f"examples -> {out}/ (attributions.png, attributions.safetensors, summary.json)")
    if "compare" in summary:
        c = summary["compare"]
        rho = "n/a (constant maps)" if c["spearman"] is None else f"{c['spearman']:.3f}"
        print(f"compared with {args.compare}: Spearman {rho} (mean per example), "
              f"top-{c['top_k']} overlap {c['top_k_overlap']:.3f}")
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from tngraph.inspect_run import format_inspect, inspect_run

    report, out = inspect_run(args.spec, eps=args.eps, out=args.out, device=args.device)
    print(format_inspect(report))
    print(f"written: {out}/inspect.json, {out}/spectra.png")
    return EXIT_OK


def _cmd_draw(args: argparse.Namespace) -> int:
    from tngraph.draw import draw

    path = draw(args.spec, args.out, what=args.what, overrides=_overrides(args.overrides),
                cache_dir=args.cache_dir)
    print(f"drawn: {path}")
    return EXIT_OK


def _cmd_plugins(args: argparse.Namespace) -> int:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE)
    for col in ("name", "kind", "distribution", "version", "status"):
        table.add_column(col)
    for registry in kinds.registries():
        for info in registry.info():
            status = f"BROKEN: {info.error}" if info.error else "ok"
            table.add_row(info.name, info.kind, info.distribution, info.version, status)
    Console(width=120, no_color=True, color_system=None, highlight=False).print(table)
    return EXIT_OK


def _cmd_templates(args: argparse.Namespace) -> int:
    for info in TEMPLATES.info():
        if info.error:
            print(f"{info.name:12s} BROKEN ({info.distribution}): {info.error}")
        else:
            template = TEMPLATES.get(info.name)
            print(f"{info.name:12s} {template.description}  "
                  f"[options: {', '.join(template.options.model_fields)}]")
    return EXIT_OK


_COMMANDS = {"validate": _cmd_validate, "compile": _cmd_compile, "expand": _cmd_expand,
             "train": _cmd_train, "distill": _cmd_distill, "eval": _cmd_eval,
             "plugins": _cmd_plugins, "templates": _cmd_templates,
             "tensorize": _cmd_tensorize, "explain": _cmd_explain, "inspect": _cmd_inspect,
             "draw": _cmd_draw}


def _secondary_rank() -> bool:
    """True in the processes of a torchrun launch other than rank 0."""
    import os

    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1 and int(os.environ.get("RANK")
                                                                   or 0) > 0
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or usage errors (2)
        return int(exc.code or 0)
    debug = getattr(args, "debug", False)
    try:
        return _COMMANDS[args.command](args)
    except SpecError as exc:
        if not _secondary_rank():
            print(exc.format(), file=sys.stderr)
        return EXIT_USER
    except TNGraphError as exc:
        if _secondary_rank():    # under torchrun the same user error is reported once
            return EXIT_USER
        report = getattr(exc, "report", None)
        if report:
            print(report, end="")
        where = f"{args.spec}: " if getattr(args, "spec", None) else ""
        print(Problem(f"{where}{exc}").format() if not where else f"{where}error: {exc}",
              file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_USER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except MemoryError as exc:
        detail = f" ({exc})" if str(exc) else ""
        print(f"tngraph: error: out of memory{detail}; lower --batch-size, the dataset's size "
              "or the network's dimensions, or plan with a smaller --memory-limit",
              file=sys.stderr)
        return EXIT_USER
    except Exception as exc:  # noqa: BLE001 - internal error: exit 1, no traceback by default
        print(f"tngraph: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        else:
            print("  (run again with --debug for the traceback, and please report it)",
                  file=sys.stderr)
        return EXIT_INTERNAL


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    main_entry()
