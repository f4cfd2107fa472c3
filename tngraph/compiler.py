"""Planned networks as ``torch.nn.Module`` objects (the only core module that imports torch).

``compile(spec)`` loads and validates a spec, plans it (:mod:`tngraph.plan`) and returns a
:class:`TNModule`: one ``nn.Parameter`` per node (``module.tensors["A3"]``, legs in declared
order), a forward pass that runs the plan's pairwise steps, autograd, ``.to(device)``,
``.double()`` and ``state_dict()`` like any torch module.

Examples
--------
>>> import tngraph
>>> module = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 4, "
...                          "phys_dim: 2, bond_dim: 3}\\n", cache=False)
>>> tuple(module().shape)
(2, 2, 2, 2)
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tngraph.errors import CompileError, PlanError
from tngraph.executor import build_program, weights_key
from tngraph.graph import EinsumProblem, parameter_count
from tngraph.kinds import NETWORK, get_feature_map, get_initializer, get_layer
from tngraph.layer_modules import FeatureMapLayer, Permute, Reshape
from tngraph.layers import summarize_layers
from tngraph.plan import Plan, equation, make_plan, plan_spec
from tngraph.report import format_pipeline_report, format_report
from tngraph.schema import ParamValue, Spec
from tngraph.spec import load_spec

__all__ = ["Compiled", "FeatureMapLayer", "Permute", "Pipeline", "Reshape", "TNModule",
           "compile", "compile_pipeline", "synchronize"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


#: largest dense weight (entries) the ``dense`` execution may build
DENSE_MAX_ENTRIES = 1 << 26


class _DenseWeight:
    """Strategy ``dense``: contract every parameter into one weight ``W`` (output legs x data
    legs, as ``nn.Linear`` stores it), then run one ``F.linear`` with the data. For a TT-layer
    that is "rebuild W, then x @ W.T + b".

    Under ``torch.no_grad`` the weight is kept until a parameter may have changed
    (:func:`tngraph.executor.weights_key`), so inference costs one matmul.
    """

    def __init__(self, plan: Plan, cache_dir: str | Path | None):
        problem = plan.problem
        n = sum(t.kind == "tensor" for t in problem.terms)
        (port_inds,) = [tuple(i for i in inds if i != problem.batch)
                        for t, inds in zip(problem.terms, problem.inputs) if t.kind == "input"]
        out_inds = tuple(i for i in problem.output if i != problem.batch)
        weight_problem = EinsumProblem(problem.terms[:n], problem.inputs[:n],
                                       out_inds + port_inds, problem.size_dict,
                                       problem.index_names, None)
        options = plan.options.model_copy(update={"optimize": "auto"})
        self.plan = make_plan(weight_problem, options, cache_dir=cache_dir)
        self.program = build_program(self.plan)
        self.rows = math.prod(problem.size_dict[i] for i in port_inds)
        self.cols = math.prod(problem.size_dict[i] for i in out_inds)
        self.out_shape = tuple(problem.size_dict[i] for i in out_inds)
        self._cached: tuple[Any, torch.Tensor] | None = None

    @staticmethod
    def applies(plan: Plan) -> bool:
        problem = plan.problem
        ports = [(t, inds) for t, inds in zip(problem.terms, problem.inputs)
                 if t.kind == "input"]
        if len(ports) != 1 or ports[0][0].copy is not None:
            return False
        legs = [i for i in ports[0][1] if i != problem.batch]
        if len(set(legs)) != len(legs) or set(legs) & set(problem.output):
            return False
        entries = math.prod(problem.size_dict[i] for i in problem.output if i != problem.batch)
        entries *= math.prod(problem.size_dict[i] for i in legs)
        return entries <= min(DENSE_MAX_ENTRIES, plan.memory_limit // plan.itemsize)

    def weight(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if torch.is_grad_enabled():
            self._cached = None
            return self.program.run(tensors, []).reshape(self.cols, self.rows)
        version = weights_key(tensors)
        if self._cached is None or self._cached[0] != version:
            self._cached = (version, self.program.run(tensors, []).reshape(self.cols,
                                                                           self.rows))
        return self._cached[1]

    def __call__(self, tensors: list[torch.Tensor], data: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
        batch = data.shape[0]
        y = torch.nn.functional.linear(data.reshape(batch, self.rows), self.weight(tensors),
                                       None if bias is None else bias.reshape(self.cols))
        return y.reshape(batch, *self.out_shape)


class TNModule(nn.Module):
    """A compiled tensor network.

    Attributes
    ----------
    spec : Spec
        The expanded, validated spec.
    plan : Plan
        The contraction plan (``plan.tree`` is cotengra's ContractionTree).
    tensors : nn.ParameterDict
        Node name -> parameter, axes in the node's declared leg order.
    bias : nn.Parameter or None
        Added to the result when the network declares ``bias: true``.
    """

    def __init__(self, spec: Spec, plan: Plan, *, seed: int | None = None,
                 cache_dir: str | Path | None = None):
        super().__init__()
        self.spec = spec
        self.plan = plan
        dtype = _DTYPES[plan.options.dtype]
        generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        params = {}
        for name, node in spec.network.nodes.items():
            init = node.init
            fn = get_initializer(init.name if init is not None else "normal")
            value = fn(node.shape, tuple(node.legs), init.options if init else {}, generator)
            params[name] = nn.Parameter(value.to(dtype))
        # an OrderedDict keeps the declared node order (a plain dict would be sorted by name)
        self.tensors = nn.ParameterDict(OrderedDict(params))
        problem = plan.problem
        self._out_legs_shape = tuple(problem.size_dict[i] for i in problem.output
                                     if i != problem.batch)
        if spec.network.bias:
            self.bias = nn.Parameter(torch.zeros(self._out_legs_shape, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        ones = set()
        for k, term in enumerate(problem.terms):
            port = spec.network.inputs.get(term.port) if term.kind == "input" else None
            if port is not None and port.feature_map is not None and \
                    get_feature_map(port.feature_map.name).leading_one:
                ones.add(k)
        self._ones = ones
        self._programs: dict[int | None, Any] = {}
        self._cache_dir = cache_dir
        self._dense: _DenseWeight | None = None
        self._dense_applies = _DenseWeight.applies(plan)
        #: (batch size, grad enabled) -> "network" | "dense", decided at the first such call
        self.execution_choice: dict[tuple[int | None, bool], str] = {}
        self._ports = list(spec.network.inputs.items())

    # -- call ------------------------------------------------------------------------------
    def _program(self, batch: int | None) -> Any:
        """The executable program for this batch size (built once per size, a few kept)."""
        program = self._programs.get(batch)
        if program is None:
            if len(self._programs) >= 8:
                self._programs.pop(next(iter(self._programs)))
            program = self._programs[batch] = build_program(self.plan.executed(), self._ones,
                                                            batch)
        return program

    def _network(self, tensors: list[torch.Tensor], ports: list[torch.Tensor],
                 batch: int | None) -> torch.Tensor:
        result = self._program(batch).run(tensors, ports)
        return result if self.bias is None else result + self.bias

    def _execute(self, tensors: list[torch.Tensor], ports: list[torch.Tensor],
                 batch: int | None) -> torch.Tensor:
        """Run the chosen execution (bias included); under ``auto``, time both (forward, and
        backward when training) the first time a batch size is seen, keep the faster."""
        execution = self.plan.options.execution
        if execution == "network" or batch is None or (
                execution == "auto" and not self._dense_applies):
            return self._network(tensors, ports, batch)
        if self._dense is None:
            if not self._dense_applies:
                raise CompileError("execution 'dense' needs exactly one data port (not stacked) "
                                   "and a dense weight within the memory limit")
            self._dense = _DenseWeight(self.plan, self._cache_dir)
        dense = self._dense
        runs = {"network": lambda: self._network(tensors, ports, batch),
                "dense": lambda: dense(tensors, ports[0], self.bias)}
        if execution == "dense":
            return runs["dense"]()
        key = (batch, torch.is_grad_enabled())
        choice = self.execution_choice.get(key)
        if choice is None:
            timings = {}
            trainable = [t for t in tensors if t.requires_grad]
            device = ports[0].device
            for name, run in runs.items():
                for repeat in range(4):   # the first run warms up (builds programs, caches)
                    synchronize(device)
                    start = time.perf_counter()
                    out = run()
                    if out.requires_grad and trainable:   # training: time the backward too
                        torch.autograd.grad(out.sum(), trainable, allow_unused=True)
                    synchronize(device)
                    if repeat:
                        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
            choice = self.execution_choice[key] = min(timings, key=timings.get)
        return runs[choice]()

    @property
    def input_names(self) -> list[str]:
        """Names of the data ports, in the order ``forward`` takes them positionally."""
        return [name for name, _ in self._ports]

    def _gather_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        names = self.input_names
        if len(args) > len(names):
            raise CompileError(f"network '{self.spec.name}' takes {len(names)} input(s) "
                               f"({', '.join(names) or 'none'}), got {len(args)} positional")
        given = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise CompileError(f"network '{self.spec.name}' has no input '{key}'; "
                                   f"inputs: {', '.join(names) or 'none'}")
            if key in given:
                raise CompileError(f"input '{key}' given twice")
            given[key] = value
        missing = [n for n in names if n not in given]
        if missing:
            raise CompileError(f"missing input(s) {', '.join(missing)} for network "
                               f"'{self.spec.name}'")
        return given

    def _port_data(self, name: str, port: Any, x: Any) -> torch.Tensor:
        """Check, cast and shape one data port's value, applying its feature map: a stacked port
        becomes ``(N, batch, *legs)`` (copy-major, as the executor gathers copies), another
        ``(batch, *legs)``."""
        ref = next(iter(self.tensors.values()), None)
        dtype = ref.dtype if ref is not None else _DTYPES[self.plan.options.dtype]
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=dtype)
        if ref is not None and x.device != ref.device:
            raise CompileError(f"input '{name}' is on {x.device} but the network is on "
                               f"{ref.device}; move one with .to(...)")
        x = x.to(dtype)
        legs = port.shape
        n = port.stack
        if x.dim() < 1:
            raise CompileError(f"input '{name}' needs a leading batch axis, got a scalar")
        batch = x.shape[0]
        per_copy = 1 if port.feature_map is not None else math.prod(legs)
        expected = per_copy * (n or 1)
        if math.prod(x.shape[1:]) != expected:
            want = (["batch"] + ([str(n)] if n else [])
                    + ([] if port.feature_map is not None else [str(d) for d in legs]))
            raise CompileError(
                f"input '{name}' expects shape ({', '.join(want)}) or any shape with "
                f"{expected} entries per sample, got {tuple(x.shape)}")
        if port.feature_map is not None:
            fmap = get_feature_map(port.feature_map.name)
            # copy-major: map (n, batch) values to (n, batch, dim) in one contiguous tensor
            x = x.reshape(batch, n).t() if n else x.reshape(batch)
            return fmap.apply(x, port.feature_map.options)
        if n:
            return x.reshape(batch, n, *legs).transpose(0, 1)
        return x.reshape(batch, *legs)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Contract the network.

        Without data ports: ``module()`` returns the tensor with axes in ``outputs`` order. With
        data ports: ``module(x)`` / ``module(x=..., y=...)`` returns ``(batch, *outputs)``
        (``(batch, prod(outputs))`` when the network flattens its outputs).
        """
        given = self._gather_inputs(args, kwargs)
        # ParameterDict's own lookup costs microseconds per entry: read its storage directly
        # (declared order, see __init__), which also sees parameters replaced by assignment
        tensors = list(self.tensors._parameters.values())
        ports: list[torch.Tensor] = []
        batch = None
        for name, port in self._ports:
            data = self._port_data(name, port, given[name])
            size = data.shape[1] if port.stack else data.shape[0]
            if batch is None:
                batch = size
            elif size != batch:
                raise CompileError(f"inputs have different batch sizes ({batch} and "
                                   f"{size} for '{name}')")
            ports.append(data)
        result = self._execute(tensors, ports, batch)
        if self.spec.network.flatten_outputs:
            result = result.reshape(result.shape[0], -1) if batch is not None \
                else result.reshape(-1)
        return result

    # -- information -------------------------------------------------------------------------
    def report(self, fmt: str = "text") -> str:
        """The cost report (see :func:`tngraph.report.format_report`)."""
        return format_report(self.plan, self.spec, fmt=fmt)

    def dense(self) -> torch.Tensor:
        """The whole network contracted to one tensor, data ports left open (testing aid).

        Axes: every data-port leg (copies in order), then the outputs. Exponential in size:
        only for small networks.
        """
        problem = self.plan.problem
        operands: list[Any] = []
        for t, inds in zip(problem.terms, problem.inputs):
            if t.kind == "tensor":
                operands += [self.tensors[t.name], list(inds)]
        port_inds = [i for t, inds in zip(problem.terms, problem.inputs) if t.kind == "input"
                     for i in inds if i != problem.batch]
        out = port_inds + [i for i in problem.output if i != problem.batch]
        return torch.einsum(equation(operands[1::2], out), *operands[0::2])

    def extra_repr(self) -> str:
        return (f"name={self.spec.name!r}, nodes={len(self.spec.network.nodes)}, "
                f"params={parameter_count(self.spec):,}, flops={self.plan.flops:.3g}")


class Pipeline(nn.Module):
    """A compiled pipeline spec: its layers in order, tensor networks as :class:`TNModule`.

    ``pipeline(x)`` takes ``(batch, *input_shape)`` (or any shape with as many entries per
    example) and returns ``(batch, *output_shape)``. ``pipeline.layers[NAME]`` is one layer;
    ``state_dict`` keys are ``layers.NAME.…`` (``layers.mps.tensors.A3``,
    ``layers.fc1.weight``).

    Attributes
    ----------
    spec : Spec
        The expanded, validated pipeline spec.
    shapes : dict
        Layer name -> one example's output shape.
    """

    def __init__(self, spec: Spec, layers: Mapping[str, nn.Module],
                 shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        self.spec = spec
        self.input_shape = tuple(spec.input_shape or ())
        self.layers = nn.ModuleDict(OrderedDict(layers))
        self.shapes = dict(shapes)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """One example's output shape."""
        return self.shapes[next(reversed(self.shapes))] if self.shapes else self.input_shape

    def networks(self) -> dict[str, TNModule]:
        """The tensor-network layers by name."""
        return {k: m for k, m in self.layers.items() if isinstance(m, TNModule)}

    def forward(self, x: Any) -> torch.Tensor:
        ref = next(iter(self.parameters()), None)
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=ref.dtype if ref is not None else torch.float32)
        if x.dim() < 1:
            raise CompileError(f"pipeline '{self.spec.name}' needs a leading batch axis")
        per_example = math.prod(self.input_shape)
        if math.prod(x.shape[1:]) != per_example:
            raise CompileError(
                f"pipeline '{self.spec.name}' takes examples of shape {self.input_shape} "
                f"({per_example} entries), got {tuple(x.shape)}")
        if ref is not None:
            if x.device != ref.device:
                raise CompileError(f"input is on {x.device} but the pipeline is on "
                                   f"{ref.device}; move one with .to(...)")
            x = x.to(ref.dtype)
        x = x.reshape(x.shape[0], *self.input_shape)
        for layer in self.layers.values():
            x = layer(x)
        return x

    def report(self, fmt: str = "text") -> str:
        """The pipeline's cost report (see :func:`tngraph.report.format_pipeline_report`)."""
        plans = {name: m.plan for name, m in self.networks().items()}
        return format_pipeline_report(self.spec, plans, fmt=fmt)


#: what :func:`compile` returns: one network, or a pipeline of layers
Compiled = TNModule | Pipeline


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run what was queued on it, so that a clock read after it
    measures the work (GPU kernels run asynchronously); nothing to wait for on the CPU.

    Examples
    --------
    >>> synchronize(torch.device("cpu"))
    """
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)       # torch.cuda, torch.mps, torch.xpu
    wait = getattr(backend, "synchronize", None)
    if wait is None:
        return
    if device.type == "mps":
        wait()                                        # one device, no argument
    else:
        wait(device)


def compile_pipeline(spec: Spec, *, cache_dir: str | Path | None = None, seed: int | None = None,
                     **plan_options: Any) -> Pipeline:
    """Compile a ``layers:`` spec: plan and compile every network layer, build the others.

    Parameters are those of :func:`compile`; layer ``k`` is initialised from ``seed + k``
    (without touching torch's global random state).
    """
    assert spec.layers is not None
    base = seed if seed is not None else 0
    modules: dict[str, nn.Module] = {}
    summaries = summarize_layers(spec)
    shapes = {s.name: s.shape for s in summaries}
    shape = tuple(spec.input_shape or ())
    dtype = _DTYPES[plan_options.get("dtype") or spec.plan.dtype]
    for k, (layer, summary) in enumerate(zip(spec.layers, summaries)):
        if layer.type == NETWORK:
            modules[layer.name] = compile(spec.network_spec(layer.name), cache_dir=cache_dir,
                                          seed=base + k, **plan_options)
        else:
            layer_type = get_layer(layer.type)
            options = layer_type.options.model_validate(layer.options)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(base + k)
                modules[layer.name] = layer_type.build(options, shape).to(dtype)
        shape = summary.shape
    return Pipeline(spec, modules, shapes)


def compile(source: str | Path | Spec, overrides: Mapping[str, ParamValue] | None = None, *,
            cache_dir: str | Path | None = None, seed: int | None = None,
            path: Any = None, **plan_options: Any) -> TNModule:
    """Load (if needed), plan and compile a spec into a :class:`TNModule` (a :class:`Pipeline`
    for a ``layers:`` spec).

    Parameters
    ----------
    source
        A spec file path, YAML text, or a loaded :class:`Spec`.
    overrides
        Parameter values (``--set``); only with a path or text.
    cache_dir
        Plan cache directory (default ``$TNGRAPH_CACHE_DIR`` or ``~/.cache/tngraph/plans``).
    seed
        Seed of the parameter initialisation (default 0: reproducible).
    path
        Reuse this contraction path instead of searching (a single network of the same
        structure, e.g. ``old.plan.tree.get_ssa_path()`` after its dimensions changed).
    **plan_options
        Overrides of the spec's ``plan:`` block, e.g. ``optimize="greedy"``, ``batch_size=64``,
        ``memory_limit="1GiB"``, ``cache=False``.

    Raises
    ------
    SpecError
        The spec is invalid (every problem, located).
    PlanError
        The plan exceeds the memory limit (``error.report`` holds the cost report).

    Examples
    --------
    >>> module = compile("models/tt_linear.yaml")              # doctest: +SKIP
    >>> module(torch.randn(32, 4096)).shape                    # doctest: +SKIP
    torch.Size([32, 16])
    """
    if isinstance(source, Spec) and overrides:
        raise CompileError("overrides are applied when a spec is loaded; pass the path or text "
                           "with them, or call load_spec(path, overrides) first")
    spec = source if isinstance(source, Spec) else load_spec(source, overrides)
    if spec.is_pipeline:
        return compile_pipeline(spec, cache_dir=cache_dir, seed=seed,  # type: ignore[return-value]
                                **plan_options)
    plan = plan_spec(spec, cache_dir=cache_dir, path=path, **plan_options)
    if plan.over_limit:
        raise PlanError("; ".join(plan.over_limit)
                        + " (raise it with --memory-limit / plan.memory_limit, or shrink the "
                        "network)", report=format_report(plan, spec))
    return TNModule(spec, plan, seed=seed, cache_dir=cache_dir)
