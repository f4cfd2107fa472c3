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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tngraph.errors import CompileError, PlanError
from tngraph.executor import build_program, equation
from tngraph.featuremaps import get_feature_map
from tngraph.graph import parameter_count
from tngraph.initializers import get_initializer
from tngraph.plan import Plan, plan_spec
from tngraph.spec import ParamValue, Spec, load_spec

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


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

    def __init__(self, spec: Spec, plan: Plan, *, seed: int | None = None):
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
        self.tensors = nn.ParameterDict(params)
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
        self._tensor_names = [t.name for t in problem.terms if t.kind == "tensor"]
        self._ports = list(spec.network.inputs.items())

    # -- call ------------------------------------------------------------------------------
    def _program(self, batch: int | None) -> Any:
        """The executable program for this batch size (built once per size, a few kept)."""
        program = self._programs.get(batch)
        if program is None:
            if len(self._programs) >= 8:
                self._programs.pop(next(iter(self._programs)))
            program = self._programs[batch] = build_program(self.plan, self._ones, batch)
        return program

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
        tensors = [self.tensors[n] for n in self._tensor_names]
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
        result = self._program(batch).run(tensors, ports)
        if self.bias is not None:
            result = result + self.bias
        if self.spec.network.flatten_outputs:
            result = result.reshape(result.shape[0], -1) if batch is not None \
                else result.reshape(-1)
        return result

    # -- information -------------------------------------------------------------------------
    def report(self, fmt: str = "text") -> str:
        """The cost report (see :func:`tngraph.report.format_report`)."""
        from tngraph.report import format_report

        return format_report(self.plan, self.spec, fmt=fmt)

    def dense(self) -> torch.Tensor:
        """The whole network contracted to one tensor, data ports left open (testing aid).

        Axes: every data-port leg (copies in order), then the outputs. Exponential in size:
        only for small networks.
        """
        problem = self.plan.problem
        operands: list[Any] = []
        for name, t, inds in zip([t.name for t in problem.terms], problem.terms, problem.inputs):
            if t.kind == "tensor":
                operands += [self.tensors[name], list(inds)]
        port_inds = [i for t, inds in zip(problem.terms, problem.inputs) if t.kind == "input"
                     for i in inds if i != problem.batch]
        out = port_inds + [i for i in problem.output if i != problem.batch]
        return _einsum_named(operands, out, problem.size_dict)

    def extra_repr(self) -> str:
        return (f"name={self.spec.name!r}, nodes={len(self.spec.network.nodes)}, "
                f"params={parameter_count(self.spec):,}, flops={self.plan.flops:.3g}")


def _einsum_named(operands: list[Any], out: list[str], sizes: Mapping[str, int]) -> torch.Tensor:
    tensors = operands[0::2]
    index_lists = operands[1::2]
    return torch.einsum(equation(index_lists, out), *tensors)


def compile(source: str | Path | Spec, overrides: Mapping[str, ParamValue] | None = None, *,
            cache_dir: str | Path | None = None, seed: int | None = None,
            **plan_options: Any) -> TNModule:
    """Load (if needed), plan and compile a spec into a :class:`TNModule`.

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
    spec = source if isinstance(source, Spec) else load_spec(source, overrides)
    plan = plan_spec(spec, cache_dir=cache_dir, **plan_options)
    if plan.over_limit:
        from tngraph.report import format_report

        raise PlanError("; ".join(plan.over_limit)
                        + " (raise it with --memory-limit / plan.memory_limit, or shrink the "
                        "network)", report=format_report(plan, spec))
    return TNModule(spec, plan, seed=seed)
