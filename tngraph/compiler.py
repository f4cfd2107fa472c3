"""Planned networks as ``torch.nn.Module`` objects (the only core module that imports torch).

``compile(spec)`` loads and validates a spec, plans it (:mod:`tngraph.plan`) and returns a
:class:`TNModule`: every node's tensor by name (``module.tensors["A3"]``, legs in declared
order), stored in execution layout (the cores of stacked kernels as one ``nn.Parameter`` each,
see :class:`NodeTensors`), a forward pass that runs the plan's pairwise steps, autograd,
``.to(device)``, ``.double()`` and a per-node ``state_dict()`` like any torch module.

Examples
--------
>>> import tngraph
>>> module = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 4, "
...                          "phys_dim: 2, bond_dim: 3}\\n", cache=False)
>>> tuple(module().shape)
(2, 2, 2, 2)
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tngraph.errors import CompileError, PlanError, SpecError
from tngraph.executor import (
    NodeValues,
    Placement,
    StackLayout,
    build_program,
    einsum_program,
    member_view,
    pack,
    stack_layouts,
    traced,
)
from tngraph.graph import EinsumProblem, chain_sites, einsum_problem, parameter_count
from tngraph.initializers import initial_value, node_initializer
from tngraph.kinds import NETWORK, get_feature_map, get_layer
from tngraph.layer_modules import FeatureMapLayer, Permute, Reshape
from tngraph.layers import summarize_layers
from tngraph.plan import Plan, equation, make_plan, plan_spec
from tngraph.report import format_pipeline_report, format_report
from tngraph.schema import MAX_SEED, ParamValue, Spec
from tngraph.spec import load_spec
from tngraph.validate import complex_layer_problems

__all__ = ["Compiled", "FeatureMapLayer", "Permute", "Pipeline", "Reshape", "TNModule",
           "compile", "compile_pipeline", "frozen"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16, "complex64": torch.complex64,
           "complex128": torch.complex128}


def _check_seed(seed: Any) -> int | None:
    """``seed`` if it is ``None`` or an integer in ``0 .. 2**63 - 1``, else a CompileError."""
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) \
            and 0 <= seed <= MAX_SEED:
        return int(seed)
    raise CompileError(f"seed must be an integer from 0 to 2**63 - 1 (or None), got {seed!r}; "
                       "for example seed=0")


def _check_path(path: Any, n_leaves: int) -> list[tuple[int, int]] | None:
    """``path=`` as SSA pairs, checked: ids ``0..n_leaves-1`` are the network's tensors (data
    ports included), ``n_leaves + k`` the result of step ``k``. A well-formed path of another
    length is returned as it is: it is of another structure, and the planner searches as usual.
    """
    if path is None:
        return None
    hint = ("pass the SSA path of a network of the same structure, e.g. "
            "old.plan.tree.get_ssa_path()")
    if isinstance(path, (str, bytes, Mapping)) or not isinstance(path, Sequence):
        raise PlanError(f"path must be a list of pairs of tensor ids (an SSA contraction "
                        f"path), got {type(path).__name__}; {hint}")
    pairs: list[tuple[int, int]] = []
    for k, pair in enumerate(path):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2 \
                or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                           and i >= 0 for i in pair):
            raise PlanError(f"path step {k} is {pair!r}; each step must be a pair of "
                            f"non-negative ints (the two tensors it contracts); {hint}")
        pairs.append((int(pair[0]), int(pair[1])))
    if len(pairs) != max(n_leaves - 1, 0):
        return pairs
    alive = set(range(n_leaves))
    for k, (a, b) in enumerate(pairs):
        if a == b or a not in alive or b not in alive:
            free = ", ".join(map(str, sorted(alive)))
            raise PlanError(f"path step {k} contracts ({a}, {b}), but only ids {free} are "
                            f"left at that step (0..{n_leaves - 1} are the network's "
                            f"{n_leaves} tensors, {n_leaves}+k the result of step k); {hint}")
        alive -= {a, b}
        alive.add(n_leaves + k)
    return pairs


def _as_data(x: Any, dtype: torch.dtype, what: str) -> torch.Tensor:
    """``x`` (a tensor, array or nested lists of numbers) as a tensor (of ``dtype`` when it is
    not one yet), or a CompileError saying what it is instead: complex data need a complex
    ``dtype`` (a complex network); real data suit every network."""
    if not isinstance(x, torch.Tensor):
        if x is None or isinstance(x, (str, bytes, Mapping)):
            raise CompileError(f"{what} must be a tensor (batch first), got "
                               f"{type(x).__name__}; pass a torch tensor or a NumPy array")
        try:
            x = torch.as_tensor(x, dtype=dtype)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise CompileError(f"{what} cannot be read as a tensor ({exc}); pass a torch "
                               "tensor, a NumPy array, or nested lists of numbers of one "
                               "rectangular shape") from None
    if x.is_complex() and not dtype.is_complex:
        raise CompileError(f"{what} is complex ({x.dtype}) but the network is real "
                           f"({str(dtype).removeprefix('torch.')}): compile it with "
                           "dtype='complex64' or 'complex128' (plan.dtype, --dtype), or pass "
                           "x.real or x.abs()")
    return x


#: one call at a time keeps its data ports' features between calls (see TNModule._port_data);
#: a concurrent one (another thread, a module called inside another's call) allocates them
_FEATURES_LOCK = threading.Lock()
#: most feature tensors a module keeps (one per port, input shape, dtype, device and mode)
KEPT_FEATURES = 8

#: largest dense weight (entries) the ``dense`` execution may build
DENSE_MAX_ENTRIES = 1 << 26
#: what the execution choice (``auto``) counts for one kernel call, in floating-point
#: operations: a few microseconds of dispatch at a few GFLOP/s
KERNEL_COST = 50_000
#: what the execution choice counts for one FLOP of the pairwise steps (of the network, or of
#: building the dense weight), in FLOPs of one large matmul: batched, permuted, smaller
#: products run somewhat slower ...
STEP_FLOP_COST = 1.2
#: ... and for each entry a step writes: a step that writes much and computes little is bound
#: by memory. Fitted on TT-layers (1024 -> 1024 and 4096 -> 4096, ranks 4-16, batch 64/256,
#: one CPU thread): the modelled costs order network and dense as their measured times do,
#: e.g. 1024 -> 1024 rank 8, batch 64: network 1.04 ms, dense 2.03 ms (a model of 4 per FLOP
#: and nothing per entry chose dense there). Refitted (2.0 -> 1.2 per FLOP) once 'bcast'
#: kernels stopped copying the TT-layers' large intermediate: at rank 16, batch 64 the network
#: now takes 1.6 / 5.1 ms (forward / training) against dense 2.5 / 6.4 ms, and 2.0 chose
#: dense; rank 16, batch 256 stays dense (5.0 / 11.3 ms against 6.0 / 13.6 ms). Rank 8,
#: batch 256 now runs the network: 3.8 against 4.8 ms forward, 13.3 against 11.8 ms training.
STEP_WRITE_COST = 64.0


def steps_cost(plan: Plan) -> float:
    """The execution choice's cost of a plan's pairwise steps, in FLOPs of one large matmul:
    their FLOPs (:data:`STEP_FLOP_COST` each), the entries they write (:data:`STEP_WRITE_COST`
    each) and :data:`KERNEL_COST` per kernel.

    Examples
    --------
    >>> import tngraph
    >>> plan = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: tt_linear, "
    ...                        "in_shape: [4, 4], out_shape: [4, 4], ranks: 2}\\n",
    ...                        cache=False).plan
    >>> steps_cost(plan) == (1.2 * plan.flops + 64 * sum(s.size for s in plan.steps)
    ...                      + 50_000 * len(plan.steps))
    True
    """
    written = sum(step.size for step in plan.steps)
    return STEP_FLOP_COST * plan.flops + STEP_WRITE_COST * written \
        + KERNEL_COST * len(plan.steps)


def _first_tensor(tensors: Sequence[Any]) -> torch.Tensor | None:
    """A tensor of the network for one call (its dtype and device): the first stacked storage
    or lone parameter of a :class:`NodeValues`, the first of a plain list; None if it has none.
    (Cheaper than ``next(module.parameters())``, which walks the module tree.)"""
    if isinstance(tensors, NodeValues):
        candidates: Iterable[Any] = (*tensors.stacks, *tensors.lone)
    else:
        candidates = tensors
    return next((t for t in candidates if t is not None), None)


class _DenseWeight:
    """Execution ``dense``: contract every parameter into one weight ``W`` (output legs x data
    legs, as ``nn.Linear`` stores it), then run one ``F.linear`` with the data. For a TT-layer
    that is "rebuild W, then x @ W.T + b".

    The weight is rebuilt at every call: nothing derived from the parameters is kept, since a
    weight can change in ways no cache sees (``p.data.copy_(...)``).
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
        """``W`` (output entries x data entries) from the current parameters."""
        return self.program.run(tensors, []).reshape(self.cols, self.rows)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["program"]              # generated code: rebuilt from the plan
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.program = build_program(self.plan)

    def cost(self, batch: int) -> float:
        """The execution choice's cost of one call at ``batch``: building ``W`` (pairwise
        steps, :func:`steps_cost`), then the matmul (its FLOPs, one kernel)."""
        return steps_cost(self.plan) + 2.0 * batch * self.rows * self.cols + KERNEL_COST

    def __call__(self, tensors: list[torch.Tensor], data: torch.Tensor,
                 bias: torch.Tensor | None, frozen: dict[Any, Any] | None = None
                 ) -> torch.Tensor:
        batch = data.shape[0]
        if frozen is not None:                 # inside tngraph.frozen(...): built once
            weight = frozen.get("dense")
            if weight is None:
                weight = frozen["dense"] = self.weight(tensors)
        else:
            weight = self.weight(tensors)
        y = torch.nn.functional.linear(data.reshape(batch, self.rows), weight,
                                       None if bias is None else bias.reshape(self.cols))
        return y.reshape(batch, *self.out_shape)


def _renumbered(layout: StackLayout) -> StackLayout:
    """``layout`` with its members numbered ``0, 1, ...``: to pack a list of the members'
    tensors, in stacked order."""
    return StackLayout(tuple((k, op) for k, (_, op) in enumerate(layout.members)))


class NodeTensors(nn.Module):
    """``module.tensors``: every node's tensor by name, legs in the node's declared order.

    The tensors are stored in execution layout: the cores that the program runs as one stacked
    kernel (the half-chains of an MPS) are one ``nn.Parameter`` each, laid out as the kernel
    reads them (``stack:0``, ``stack:1``, ... in ``named_parameters()``), so that a call needs no
    gather and no scatter and an optimizer steps a few tensors; every other node is an
    ``nn.Parameter`` of its own, under its name. ``tensors["A3"]`` is the node's tensor either
    way: that parameter, or a view of its storage (write it in place, e.g. ``copy_`` under
    ``torch.no_grad()``). ``state_dict()`` has one entry per node (``tensors.A3``), so
    checkpoints load whatever the layout; :meth:`grads` gives the gradients per node.

    Examples
    --------
    >>> import tngraph
    >>> m = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 16, "
    ...                     "phys_dim: 2, bond_dim: 3, input: x, feature_map: multilinear}\\n",
    ...                     cache=False)
    >>> tuple(m.tensors["A3"].shape), len(list(m.parameters())) < len(m.tensors)
    ((3, 2, 3), True)
    >>> list(m.state_dict())[:3]
    ['tensors.A0', 'tensors.A1', 'tensors.A2']
    """

    def __init__(self, names: Sequence[str], values: Sequence[torch.Tensor],
                 placement: Placement, derived: Mapping[str, tuple[str, bool]] | None = None):
        super().__init__()
        self._names = tuple(names)
        self._index = {name: i for i, name in enumerate(self._names)}
        self.placement = placement
        #: nodes that reuse another node's tensor: name -> (that node, conjugated); they are
        #: lone in the placement but hold no parameter (resolved at every call)
        self._derived = dict(derived or {})
        self._lone_names = tuple(n for n, p in zip(self._names, placement.lone)
                                 if p is not None)
        self._lone_keys = tuple(n for n in self._lone_names if n not in self._derived)
        self._stack_keys = tuple(f"stack:{k}" for k in range(len(placement.layouts)))
        for name in self._lone_keys:
            self.register_parameter(name, nn.Parameter(values[self._index[name]]))
        for key, layout in zip(self._stack_keys, placement.layouts):
            self.register_parameter(key, nn.Parameter(pack(values, layout)))
        self._register_state_dict_hook(NodeTensors._per_node_state)
        self._register_load_state_dict_pre_hook(NodeTensors._stacked_state, with_module=True)
        #: stacked nodes' tensors set by name (``torch.func.functional_call(module,
        #: {"tensors.A3": t}, ...)`` sets the attribute ``A3`` for the call): node -> tensor
        self._overrides: dict[str, torch.Tensor] = {}
        #: stacked nodes' views kept between calls without autograd (see NodeValues)
        self._kept_views: dict[int, tuple[Any, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """What pickling and ``copy.deepcopy`` keep: everything but the views kept between
        calls (made anew from the copy's own storages)."""
        state = dict(self.__dict__)
        state["_kept_views"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_kept_views", {})

    # -- the tensors ---------------------------------------------------------------------------
    def values_for_call(self) -> NodeValues:
        """The tensors in declared (= term) order, for one call: lone parameters as they are,
        stacked nodes as views made on first use (see :class:`NodeValues`)."""
        params = self._parameters
        stacks = [params[k] for k in self._stack_keys]
        if self._overrides:      # a storage with a node set by name is packed anew for the call
            current = NodeValues(self.placement, (), stacks)
            for k, layout in enumerate(self.placement.layouts):
                names = [self._names[i] for i, _ in layout.members]
                if any(name in self._overrides for name in names):
                    members = [self._overrides.get(name, current[i])
                               for name, (i, _) in zip(names, layout.members)]
                    stacks[k] = pack(members, _renumbered(layout))
        # without autograd, the stacked nodes' views are kept between calls (see NodeValues)
        kept = None if (torch.is_grad_enabled() or self._overrides
                        or torch.compiler.is_compiling()) else self._kept_views
        return self._resolved(NodeValues(self.placement, self._lone_list(params), stacks,
                                         kept))

    def _lone_list(self, sources: Mapping[str, Any]) -> list[Any]:
        """The lone tensors in placement order, from ``sources`` by parameter name (None where
        missing), with a None placeholder for each derived node (see :meth:`_resolved`)."""
        return [None if n in self._derived else sources.get(n) for n in self._lone_names]

    def _resolved(self, values: NodeValues) -> NodeValues:
        """``values`` with each derived node's entry set: its source's tensor, conjugated where
        the spec says ``conj: true`` (a lazy view; a no-op for real tensors)."""
        for name, (source, conj) in self._derived.items():
            value = values[self._index[source]]
            if value is not None and conj:
                value = value.conj()
            values.lone[self.placement.lone[self._index[name]]] = value  # type: ignore[index]
        return values

    def views(self, sources: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """Node name -> tensor, from ``sources``: a tensor per parameter name of this module
        (``'A3'``, ``'stack:0'``, as in ``named_parameters()``), shaped like that parameter
        (its gradient, say); None where a source is missing or None. Default: the parameters.
        """
        if sources is None:
            values = self.values_for_call()
        else:
            lone = self._lone_list(sources)          # derived nodes stay None: not their own
            stacks = [sources.get(k) for k in self._stack_keys]
            values = NodeValues(self.placement, lone, stacks)
        out: dict[str, Any] = {}
        for i, name in enumerate(self._names):
            stacked = self.placement.stacked[i]
            missing = stacked is not None and values.stacks[stacked[0]] is None
            out[name] = None if missing else values[i]
        return out

    def grads(self) -> dict[str, torch.Tensor | None]:
        """Node name -> the gradient of its tensor (a view of its storage's ``.grad``), or None
        where there is none: after ``loss.backward()``, what ``tensors[name].grad`` was when
        every node was a parameter of its own."""
        return self.views({k: p.grad for k, p in self._parameters.items()})

    def parameter_of(self, name: str) -> str:
        """The name (in this module) of the parameter that holds node ``name``: the node's own
        name, or its stacked storage's (``'stack:0'``), e.g. to freeze it."""
        if name in self._derived:
            return self.parameter_of(self._derived[name][0])
        stacked = self.placement.stacked[self._index[name]]
        return name if stacked is None else self._stack_keys[stacked[0]]

    def stacked(self, name: str) -> bool:
        """Whether node ``name`` lives in a stacked parameter (its tensor is a view)."""
        return self.placement.stacked[self._index[name]] is not None

    def __getitem__(self, name: str) -> torch.Tensor:
        index = self._index.get(name) if isinstance(name, str) else None
        if index is None:
            raise KeyError(name)
        return self.values_for_call()[index]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        if name not in self._index:
            raise CompileError(f"network has no node {name!r}; nodes: "
                               f"{', '.join(self._names)}")
        if name in self._derived:
            source = self._derived[name][0]
            raise CompileError(f"node {name!r} reuses node {source!r}'s tensor (same_as); it "
                               f"has none of its own: set module.tensors[{source!r}]")
        if self.stacked(name):
            raise CompileError(f"node {name!r} is stored in a stacked parameter (execution "
                               "layout); write its values in place: with torch.no_grad(): "
                               f"module.tensors[{name!r}].copy_(value)")
        param = value if isinstance(value, nn.Parameter) else nn.Parameter(value)
        self.register_parameter(name, param)

    def __setattr__(self, name: str, value: Any) -> None:
        index = self.__dict__.get("_index", {}).get(name)
        if index is not None and self.placement.stacked[index] is not None:
            if isinstance(value, nn.Parameter) or not isinstance(value, torch.Tensor):
                self[name] = value                         # (refused with the fix)
            self._overrides[name] = value
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__.get("_overrides")
        if overrides and name in overrides:
            return overrides[name]
        return super().__getattr__(name)

    def __delattr__(self, name: str) -> None:
        overrides = self.__dict__.get("_overrides")
        if overrides and name in overrides:
            del overrides[name]
            return
        super().__delattr__(name)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def keys(self) -> list[str]:
        return list(self._names)

    def values(self) -> list[torch.Tensor]:
        return list(self.values_for_call())

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self._names, self.values_for_call()))

    # -- state_dict: one entry per node, whatever the layout -------------------------------------
    @staticmethod
    def _per_node_state(module: NodeTensors, state: dict[str, Any], prefix: str,
                        local_metadata: Any) -> None:
        own = {key: state.pop(prefix + key) for key in module._parameters
               if prefix + key in state}
        if len(own) != len(module._parameters):     # (not ours to rewrite)
            state.update((prefix + key, value) for key, value in own.items())
            return
        values = NodeValues(module.placement, module._lone_list(own),
                            [own[k] for k in module._stack_keys])
        for name, value in zip(module._names, values):
            if name in module._derived:            # no tensor of its own: not in the state
                continue
            if module.stacked(name) and not value.requires_grad:    # (keep_vars keeps views)
                value = value.clone(memory_format=torch.contiguous_format)
            state[prefix + name] = value

    @staticmethod
    def _stacked_state(module: NodeTensors, state: dict[str, Any], prefix: str,
                       local_metadata: Any, strict: bool, missing_keys: list[str],
                       unexpected_keys: list[str], error_msgs: list[str]) -> None:
        """Per-node entries of stacked nodes packed into their storage's entry (a node left
        out keeps its value and is reported missing)."""
        for key, layout in zip(module._stack_keys, module.placement.layouts):
            if prefix + key in state:
                continue
            current = module._parameters[key]
            members = []
            for position, (index, _) in enumerate(layout.members):
                name = module._names[index]
                now = member_view(current, layout, position, module.placement.shapes[index])
                given = state.pop(prefix + name, None)
                if given is None:
                    missing_keys.append(prefix + name)
                    given = now
                elif not isinstance(given, torch.Tensor) or given.shape != now.shape:
                    shape = tuple(given.shape) if isinstance(given, torch.Tensor) else given
                    error_msgs.append(f"size mismatch for {prefix}{name}: copying a param with "
                                      f"shape {shape} from checkpoint, the shape in current "
                                      f"model is {tuple(now.shape)}.")
                    given = now
                members.append(given.detach().to(dtype=current.dtype, device=current.device))
            state[prefix + key] = pack(members, _renumbered(layout))

    def extra_repr(self) -> str:
        stacked = sum(p is not None for p in self.placement.stacked)
        return (f"nodes={len(self._names)}, stacked={stacked} in "
                f"{len(self.placement.layouts)} parameter(s)")


class TNModule(nn.Module):
    """A compiled tensor network.

    Attributes
    ----------
    spec : Spec
        The expanded, validated spec.
    plan : Plan
        The contraction plan (``plan.tree`` is cotengra's ContractionTree).
    tensors : NodeTensors
        Node name -> tensor, axes in the node's declared leg order (stored in execution
        layout: a lone parameter, or a view of the stacked parameter that holds it).
    bias : nn.Parameter or None
        Added to the result when the network declares ``bias: true``.
    """

    def __init__(self, spec: Spec, plan: Plan, *, seed: int | None = None,
                 cache_dir: str | Path | None = None):
        super().__init__()
        seed = _check_seed(seed)
        self.spec = spec
        self.plan = plan
        dtype = _DTYPES[plan.options.dtype]
        generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        values = []
        derived = {name: (node.same_as, node.conj) for name, node in spec.network.nodes.items()
                   if node.same_as is not None}
        for node in spec.network.nodes.values():
            if node.same_as is not None:          # no tensor of its own: a placeholder
                values.append(torch.zeros(node.shape, dtype=dtype))
                continue
            init, options = node_initializer(spec.network, node)   # (graph-aware: norm)
            value = initial_value(init, node.shape, tuple(node.legs), options, generator,
                                  plan.options.dtype)
            values.append(value.to(dtype))
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
        self._dense_applies = _DenseWeight.applies(plan)
        self._dense = _DenseWeight(plan, cache_dir) if self._dense_applies and \
            plan.options.execution != "network" else None
        #: how a batched call runs, ``network`` or ``dense``: ``plan.execution``, with ``auto``
        #: decided here from the plan (deterministic: the same plan always runs the same way)
        self.execution = self._choose_execution()
        self._ports = list(spec.network.inputs.items())
        #: node name -> tensor (legs in declared order), stored in execution layout: the cores
        #: of the default program's stacked kernels as one parameter each (see NodeTensors)
        layouts = [] if self.execution == "dense" else stack_layouts(
            plan.executed(), ones, plan.batch_size)
        names = list(spec.network.nodes)
        if derived:          # a node that reuses another's tensor is resolved, never stored
            shared = {names.index(n) for n in derived}
            layouts = [lay for lay in layouts if not shared & {i for i, _ in lay.members}]
        self.tensors = NodeTensors(names, values,
                                   Placement.of([v.shape for v in values], layouts), derived)
        #: the plan as batch-agnostic einsums, what torch.compile traces
        self._traceable = einsum_program(plan)
        #: values derived from the parameters, kept only inside ``tngraph.frozen(...)``
        self._frozen: dict[Any, Any] | None = None
        #: the data ports' features kept between calls without autograd (see _port_data)
        self._kept_features: dict[Any, torch.Tensor] = {}

    def _choose_execution(self) -> str:
        """``auto``: ``dense`` when building one weight and one matmul cost less than the
        network's steps at the plan's batch size (:func:`steps_cost`)."""
        chosen = self.plan.options.execution
        if chosen != "auto":
            return chosen
        if self._dense is None:
            return "network"
        network = steps_cost(self.plan.executed())
        return "dense" if self._dense.cost(self.plan.batch_size or 1) < network else "network"

    def __getstate__(self) -> dict[str, Any]:
        """What pickling keeps: everything but the generated programs (rebuilt on use) and the
        features kept between calls."""
        state = dict(self.__dict__)
        state["_programs"] = {}
        state["_frozen"] = None
        state["_kept_features"] = {}
        return state

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
        if torch.compiler.is_compiling():   # nothing is built while a compiler traces
            result = self._traceable.run(tensors, ports)
        else:
            frozen = self._frozen_cache()
            store = None if frozen is None else frozen.setdefault(("program", batch), {})
            # one store per batch size: each size has its own program and gathers; with a
            # batch axis the bias goes in (a training run adds it in its last matmul)
            if batch is not None:
                return self._program(batch).run(tensors, ports, store, self.bias)
            result = self._program(batch).run(tensors, ports, store)
        return result if self.bias is None else result + self.bias

    def _execute(self, tensors: list[torch.Tensor], ports: list[torch.Tensor],
                 batch: int | None) -> torch.Tensor:
        """Run the chosen execution (:attr:`execution`), bias included."""
        if self.execution == "network" or batch is None:
            return self._network(tensors, ports, batch)
        if self._dense is None:
            raise CompileError("execution 'dense' needs exactly one data port (not stacked) "
                               "and a dense weight within the memory limit")
        return self._dense(tensors, ports[0], self.bias, self._frozen_cache())

    def _frozen_cache(self) -> dict[Any, Any] | None:
        """Where derived values may be kept: inside ``tngraph.frozen(...)`` and without autograd
        (a value built under ``no_grad`` has no graph to differentiate), else nowhere."""
        if self._frozen is None or torch.is_grad_enabled():
            return None
        return self._frozen

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

    def _port_data(self, name: str, port: Any, x: Any, ref: torch.Tensor | None = None,
                   kept: dict[Any, torch.Tensor] | None = None) -> torch.Tensor:
        """Check, cast and shape one data port's value, applying its feature map: a stacked port
        becomes ``(N, batch, *legs)`` (copy-major, as the executor gathers copies), another
        ``(batch, *legs)``. ``ref``: a tensor of the network (dtype and device), by default its
        first parameter. ``kept``: where a feature map with ``apply_into`` keeps its features
        between calls (a call without autograd; the caller holds ``_FEATURES_LOCK``)."""
        if ref is None:
            ref = next(self.tensors.parameters(), None)
        dtype = ref.dtype if ref is not None else _DTYPES[self.plan.options.dtype]
        fmap_spec = port.feature_map
        # a tensor of the network's real dtype needs no conversion and has no complex values
        # to refuse (the common call: checked in a few attribute reads)
        if not (isinstance(x, torch.Tensor) and x.dtype == dtype and not dtype.is_complex):
            x = _as_data(x, dtype, f"input '{name}'")
            if x.is_complex() and fmap_spec is not None:
                raise CompileError(f"input '{name}' is complex ({x.dtype}), but its feature "
                                   f"map '{fmap_spec.name}' takes real values; pass x.real, "
                                   "or feed the port without a feature map")
            x = x.to(dtype)
        if ref is not None and x.device != ref.device:
            raise CompileError(f"input '{name}' is on {x.device} but the network is on "
                               f"{ref.device}; move one with .to(...)")
        shape = x.shape
        n = port.stack
        if not shape:
            raise CompileError(f"input '{name}' needs a leading batch axis, got a scalar")
        batch = shape[0]
        if batch == 0:
            raise CompileError(f"input '{name}' has an empty batch (shape {tuple(shape)}); "
                               "pass at least one example")
        legs = port.shape
        expected = (1 if fmap_spec is not None else math.prod(legs)) * (n or 1)
        if math.prod(shape[1:]) != expected:
            want = (["batch"] + ([str(n)] if n else [])
                    + ([] if fmap_spec is not None else [str(d) for d in legs]))
            raise CompileError(
                f"input '{name}' expects shape ({', '.join(want)}) or any shape with "
                f"{expected} entries per sample, got {tuple(shape)}")
        if fmap_spec is not None:
            fmap = get_feature_map(fmap_spec.name)
            # copy-major: map (n, batch) values to (n, batch, dim) in one contiguous tensor
            if n:
                x = (x if len(shape) == 2 else x.reshape(batch, n)).t()
            else:
                x = x if len(shape) == 1 else x.reshape(batch)
            if not dtype.is_complex:
                if kept is None or fmap.apply_into is None:
                    return fmap.apply(x, fmap_spec.options)
                key = (name, x.shape, dtype, x.device, torch.is_inference_mode_enabled())
                features = kept.get(key)
                if features is None:
                    if len(kept) >= KEPT_FEATURES:
                        kept.clear()
                    features = kept[key] = fmap.apply(x, fmap_spec.options)
                else:
                    fmap.apply_into(x, fmap_spec.options, features)
                return features
            # a complex network maps real values, then takes the vectors as complex
            return fmap.apply(x.real, fmap_spec.options).to(dtype)
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
        # the parameters as registered now (which sees any replaced by assignment or by
        # torch.func.functional_call): lone ones, stacked storages, nodes' views on demand
        tensors = self.tensors.values_for_call()
        if torch.compiler.is_compiling():
            tensors = list(tensors)          # (a plain list for the einsum program)
        ports: list[torch.Tensor] = []
        batch = None
        ref = _first_tensor(tensors) if self._ports else None
        # without autograd, the features of a batch go into tensors kept between calls (see
        # _port_data), one call at a time: another thread meanwhile allocates as before
        keep = (bool(self._ports) and not torch.is_grad_enabled() and not traced()
                and _FEATURES_LOCK.acquire(blocking=False))
        try:
            kept = self._kept_features if keep else None
            for name, port in self._ports:
                data = self._port_data(name, port, given[name], ref, kept)
                size = data.shape[1] if port.stack else data.shape[0]
                if batch is None:
                    batch = size
                elif size != batch:
                    raise CompileError(f"inputs have different batch sizes ({batch} and "
                                       f"{size} for '{name}')")
                ports.append(data)
            result = self._execute(tensors, ports, batch)
            if kept and any(result.untyped_storage().data_ptr()
                            == t.untyped_storage().data_ptr() for t in kept.values()):
                result = result.clone()           # never hand out a kept tensor's memory
        finally:
            if keep:
                _FEATURES_LOCK.release()
        if self.spec.network.flatten_outputs:
            result = result.reshape(result.shape[0], -1) if batch is not None \
                else result.reshape(-1)
        return result

    # -- information -------------------------------------------------------------------------
    def cores(self) -> list[torch.Tensor]:
        """The nodes of a chain network (an MPS, a TT-layer / MPO) as TT cores, first to last,
        in the layout of :mod:`tngraph.decompose`: ``(r, n, r')`` for one physical leg,
        ``(r, n_in, n_out, r')`` for two (physical legs in declared order), boundary ranks 1.

        The cores are views of the parameters where the layout allows (they keep autograd;
        ``[c.detach() for c in module.cores()]`` for values).

        Raises
        ------
        CompileError
            The nodes do not form an open chain (a ring, a tree, a grid, a hyperedge).

        Examples
        --------
        >>> m = compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 3, "
        ...             "phys_dim: 2, bond_dim: 4}\\n", cache=False)
        >>> [tuple(c.shape) for c in m.cores()]
        [(1, 2, 4), (4, 2, 4), (4, 2, 1)]
        """
        out = []
        for site in chain_sites(self.spec.network, f"network '{self.spec.name}'"):
            t = self.tensors[site.node]
            legs = list(self.spec.network.nodes[site.node].legs)
            chain = [*([site.left] if site.left else []), *site.physical,
                     *([site.right] if site.right else [])]
            order = [legs.index(leg) for leg in chain]
            t = t.permute(order) if order != list(range(t.dim())) else t
            if site.left is None:
                t = t.unsqueeze(0)
            if site.right is None:
                t = t.unsqueeze(-1)
            out.append(t)
        return out

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
        entries = math.prod(problem.size_dict[i] for i in out)
        if entries > DENSE_MAX_ENTRIES:
            raise CompileError(
                f"the dense tensor of '{self.spec.name}' has {entries:.3g} entries "
                f"({len(out)} axes: every data-port leg and output), beyond "
                f"{DENSE_MAX_ENTRIES:,}; dense() is a testing aid for small networks: call the "
                "module on data instead")
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

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the layers on ``x``, one batch of examples: ``pipeline(x)``."""
        if kwargs.keys() - {"x"} or len(args) + len(kwargs) != 1:
            given = [type(a).__name__ for a in args] + [f"{k}=" for k in kwargs]
            raise CompileError(f"pipeline '{self.spec.name}' takes one input, a batch x, got "
                               f"{len(given)} ({', '.join(given) or 'none'}); call "
                               "pipeline(x)")
        (x,) = args or kwargs.values()
        ref = next(iter(self.parameters()), None)
        x = _as_data(x, ref.dtype if ref is not None else torch.float32, "the input")
        if x.dim() < 1:
            raise CompileError(f"pipeline '{self.spec.name}' needs a leading batch axis")
        if x.shape[0] == 0:
            raise CompileError(f"pipeline '{self.spec.name}' got an empty batch (shape "
                               f"{tuple(x.shape)}); pass at least one example")
        per_example = math.prod(self.input_shape)
        if math.prod(x.shape[1:]) != per_example:
            raise CompileError(
                f"pipeline '{self.spec.name}' takes examples of shape {self.input_shape} "
                f"({per_example} entries), got {tuple(x.shape)}")
        if ref is not None:
            if x.device != ref.device:
                raise CompileError(f"input is on {x.device} but the pipeline is on "
                                   f"{ref.device}; move one with .to(...)")
            # complex pipelines: real data stay real up to the first layer with (complex)
            # parameters; networks map real data themselves (validate.complex_layer_problems)
            x = x.to(ref.real.dtype if ref.is_complex() and not x.is_complex() else ref.dtype)
        x = x.reshape(x.shape[0], *self.input_shape)
        for layer in self.layers.values():
            if not x.is_complex() and not isinstance(layer, TNModule) and any(
                    p.is_complex() for p in layer.parameters()):
                x = x.to(next(p for p in layer.parameters() if p.is_complex()).dtype)
            x = layer(x)
        return x

    def report(self, fmt: str = "text") -> str:
        """The pipeline's cost report (see :func:`tngraph.report.format_pipeline_report`)."""
        plans = {name: m.plan for name, m in self.networks().items()}
        return format_pipeline_report(self.spec, plans, fmt=fmt)


#: what :func:`compile` returns: one network, or a pipeline of layers
Compiled = TNModule | Pipeline


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Inference with the parameters promised not to change: inside the block, calls under
    ``torch.no_grad`` build what they derive from the parameters (the ``dense`` weight of a
    TT-layer, the stacked cores of a chain) once and reuse it. Outside it nothing is kept, and
    any change to a weight (``p.data.copy_`` included) is seen at the next call. Like
    ``torch.nn.utils.parametrize.cached``, changing a parameter inside the block is the
    caller's error: it is not seen until the block ends.

    Examples
    --------
    >>> layer = compile("models/tt_linear.yaml")                 # doctest: +SKIP
    >>> with torch.no_grad(), frozen(layer):                     # doctest: +SKIP
    ...     outputs = [layer(batch) for batch in batches]        # W built once
    """
    if not isinstance(module, nn.Module):
        raise CompileError(f"frozen() takes a compiled module (tngraph.compile(...)), got "
                           f"{type(module).__name__}")
    networks = [m for m in module.modules() if isinstance(m, TNModule)]
    previous = [m._frozen for m in networks]
    for m in networks:
        if m._frozen is None:
            m._frozen = {}
    try:
        yield module
    finally:
        for m, before in zip(networks, previous):
            m._frozen = before


def compile_pipeline(spec: Spec, *, cache_dir: str | Path | None = None, seed: int | None = None,
                     **plan_options: Any) -> Pipeline:
    """Compile a ``layers:`` spec: plan and compile every network layer, build the others.

    Parameters are those of :func:`compile`; layer ``k`` is initialised from ``seed + k``
    (without touching torch's global random state).
    """
    if spec.layers is None:
        raise CompileError(f"spec '{spec.name}' is a single network, not a pipeline (no "
                           "'layers:'); compile it with compile(spec)")
    seed = _check_seed(seed)
    base = seed if seed is not None else 0
    modules: dict[str, nn.Module] = {}
    summaries = summarize_layers(spec)
    shapes = {s.name: s.shape for s in summaries}
    shape = tuple(spec.input_shape or ())
    dtype_name = plan_options.get("dtype") or spec.plan.dtype
    dtype = _DTYPES[dtype_name]
    problems = complex_layer_problems(spec, dtype_name, spec.source)   # (--dtype, with_plan)
    if problems:
        raise SpecError(problems)
    for k, (layer, summary) in enumerate(zip(spec.layers, summaries)):
        layer_seed = (base + k) % (MAX_SEED + 1)     # (seeds wrap around at the top)
        if layer.type == NETWORK:
            modules[layer.name] = compile(spec.network_spec(layer.name), cache_dir=cache_dir,
                                          seed=layer_seed, **plan_options)
        else:
            layer_type = get_layer(layer.type)
            options = layer_type.options.model_validate(layer.options)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(layer_seed)
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
    _check_seed(seed)
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise PlanError(f"cache_dir must be a folder path (str or Path), got "
                        f"{type(cache_dir).__name__}")
    spec = source if isinstance(source, Spec) else load_spec(source, overrides)
    if spec.is_pipeline:
        if path is not None:
            raise PlanError(f"path= reuses the contraction path of one network, but "
                            f"'{spec.name}' is a pipeline of layers; compile without path=")
        return compile_pipeline(spec, cache_dir=cache_dir, seed=seed,  # type: ignore[return-value]
                                **plan_options)
    if path is not None:
        path = _check_path(path, len(einsum_problem(spec).terms))
    plan = plan_spec(spec, cache_dir=cache_dir, path=path, **plan_options)
    if plan.over_limit:
        raise PlanError("; ".join(plan.over_limit)
                        + " (raise plan.memory_limit / plan.time_budget, on the command line "
                        "--memory-limit / --time-budget, or shrink the network)",
                        report=format_report(plan, spec))
    return TNModule(spec, plan, seed=seed, cache_dir=cache_dir)
