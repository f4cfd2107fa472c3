"""The spec schema (format version 1) as pydantic models, and their errors as located problems.

A :class:`Spec` is what :func:`tngraph.spec.load_spec` returns: parameters substituted,
templates expanded, every problem checked. Its parts are plain frozen models (the raw network
form: :class:`NetworkSpec` of :class:`NodeSpec` and :class:`InputSpec`; a pipeline of
:class:`LayerSpec`; the ``plan:``, ``train:`` and ``distill:`` blocks). This module imports no
other tngraph module but :mod:`tngraph.errors` and :mod:`tngraph.yamlio`.

Examples
--------
>>> net = NetworkSpec(nodes={"A": {"legs": {"i": 2, "a": 3}}, "B": {"legs": {"a": 3}}},
...                   edges=[["A.a", "B.a"]], outputs=["A.i"])
>>> leg_table(net)
{'A': {'i': 2, 'a': 3}, 'B': {'a': 3}}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
)

from tngraph.errors import Problem, did_you_mean
from tngraph.yamlio import DocPath, Document

FORMAT_VERSION = 1
#: Largest dimension of a single leg.
MAX_DIM = 2**31 - 1
#: the largest seed: torch's generators take 0 .. 2**63 - 1 (``train.seed``, ``--seed``,
#: ``compile(seed=)``)
MAX_SEED = 2**63 - 1
#: the most sites (nodes) a template builds: beyond it, expanding would exhaust the memory
MAX_SITES = 100_000

Dim = Annotated[int, Strict(), Field(gt=0, le=MAX_DIM)]
Count = Annotated[int, Strict(), Field(gt=0)]
ParamValue = int | float | str | bool

IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: ``node.leg`` or ``port[k].leg`` (a copy of a stacked input)
LEG_REF_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)\.([A-Za-z_][A-Za-z0-9_]*)$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NamedOptions(_Model):
    """A registered name with its options, written ``name`` or ``{name: ..., opt: ...}``."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def to_data(self) -> str | dict[str, Any]:
        return self.name if not self.options else {"name": self.name, **self.options}


def _named(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


Named = Annotated[NamedOptions, BeforeValidator(_named)]

#: the device kinds a run can train on (``--device``; ``cuda:N`` picks a GPU)
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
DEVICE_RE = re.compile(rf"^({'|'.join(DEVICE_TYPES)})(:\d+)?$")


def check_device(value: Any) -> Any:
    """``value`` if it names a device kind of :data:`DEVICE_TYPES` (availability is checked
    when a run starts), else ValueError."""
    if isinstance(value, str) and not DEVICE_RE.match(value):
        raise ValueError(f"unknown device {value!r}: expected one of {', '.join(DEVICE_TYPES)}, "
                         "optionally with an index (cuda:1)")
    return value


Device = Annotated[str, AfterValidator(check_device)]


class NodeSpec(_Model):
    """A tensor of the network: its legs (name -> dimension, in axis order) and initialiser.

    With ``same_as: OTHER`` the node has no parameter of its own: its tensor is node OTHER's
    (of the same shape), conjugated with ``conj: true`` (a no-op in a real network), so that
    ``<psi|psi>`` or ``<psi|O|psi>`` share one set of parameters.
    """

    legs: dict[str, Dim]
    init: Named | None = None
    same_as: str | None = None
    conj: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.legs.values())


class InputSpec(_Model):
    """A data port: a tensor fed at call time, with a leading batch axis.

    With ``stack: N`` the port is N independent copies (``x[0]`` ... ``x[N-1]``), fed together by
    one tensor of shape ``(batch, N, *legs)``: a product state, as in an MPS classifier. With a
    ``feature_map`` the port takes raw values (``(batch,)`` or ``(batch, N)``) and maps each
    value to a vector of the single leg's dimension.
    """

    legs: dict[str, Dim]
    stack: Count | None = None
    feature_map: Named | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.legs.values())

    def copies(self, name: str) -> list[str]:
        """Graph-node names of this port: ``[name]`` or ``[name[0], ..., name[N-1]]``."""
        if self.stack is None:
            return [name]
        return [f"{name}[{k}]" for k in range(self.stack)]


def _check_edge(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(value) < 2:
        raise ValueError(f"an edge joins two or more legs, got {len(value)}: write it as "
                         "[NODE.LEG, NODE.LEG], e.g. [A.r, B.l] (three or more ends make a "
                         "hyperedge)")
    return value


#: an entry of ``edges``: two leg references (a bond), or three or more (a *hyperedge*: one
#: index shared by every listed leg)
Edge = Annotated[tuple[str, ...], AfterValidator(_check_edge)]


class NetworkSpec(_Model):
    """The raw network: what every template expands into.

    An entry of ``edges`` with three or more ends is a hyperedge: one index shared by all its
    legs (of equal dimension), summed over unless one of its legs is listed in ``outputs``.
    """

    nodes: dict[str, NodeSpec]
    edges: list[Edge] = []
    inputs: dict[str, InputSpec] = {}
    outputs: list[str] = []
    bias: bool = False
    flatten_outputs: bool = False


class LayerSpec(_Model):
    """One layer of a pipeline (``layers:``): its type, name and options.

    ``network`` layers carry a tensor network (raw form; ``template`` keeps the call as
    written); other types keep their options (validated by :mod:`tngraph.layers`) in
    :attr:`options`.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str
    #: unique in the spec; default ``<type><position>`` (``conv2d0``, ``relu1``, ...)
    name: str = ""
    network: NetworkSpec | None = None
    template: dict[str, Any] | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


Optimize = str


class PlanOptions(_Model):
    """How to search for a contraction order (the spec's ``plan:`` block).

    ``optimize`` names the path finder: ``auto`` (exact for small networks, cotengra's
    HyperOptimizer otherwise), ``hyper``, ``greedy``, ``optimal``, or any other cotengra /
    opt_einsum path finder. ``execution`` was called ``strategy`` before; that key is still
    read (:data:`PLAN_ALIASES`).

    Examples
    --------
    >>> PlanOptions().updated({"strategy": "dense", "dtype": None}).execution
    'dense'
    """

    optimize: Optimize = "auto"
    max_repeats: Count = 128
    max_time: float | None = Field(default=30.0, gt=0)
    minimize: Literal["flops", "size", "write", "combo"] = "combo"
    batch_size: Count = 256
    memory_limit: int | str = "4GiB"
    #: the longest estimated time of one contraction (one batch) a plan may need: seconds or
    #: ``30s``, ``2h``, ``1d``; ``null`` for no budget (see ``tngraph.plan.parse_duration``)
    time_budget: float | str | None = "1h"
    #: of the parameters and the computation; in ``complex64`` / ``complex128`` the parameters
    #: are complex, data may be real or complex, and FLOPs count 4 real ones per complex one
    dtype: Literal["float32", "float64", "float16", "bfloat16", "complex64",
                   "complex128"] = "float32"
    cache: bool = True
    seed: int | None = 0
    #: how a network with one data port runs: ``network`` (the planned steps), ``dense``
    #: (contract the parameters into one weight, then one matmul with the data), or ``auto``
    #: (decided from the plan's costs when the module is compiled: never timed)
    execution: Literal["auto", "network", "dense"] = Field(
        default="auto", validation_alias=AliasChoices("execution", "strategy"))
    #: which contraction path the ``network`` execution runs: ``min-flops`` (the planned path,
    #: the cheapest found under ``minimize``), ``fused`` (the path of the search over tensors
    #: with their data ports folded in, before local refinement: every port enters right after
    #: its tensor, so repeated structure runs as few, large kernels), or ``auto`` (``fused``
    #: when it costs at most :data:`tngraph.plan.FUSED_TOLERANCE` times the planned path's
    #: FLOPs, else ``min-flops``)
    run_path: Literal["auto", "min-flops", "fused"] = "auto"

    def updated(self, changes: Mapping[str, Any]) -> PlanOptions:
        """These options with ``changes`` applied (``None`` values ignored, earlier key names
        read), validated (raises ValidationError)."""
        data = self.model_dump()
        for key, value in changes.items():
            if value is not None:
                data[PLAN_ALIASES.get(key, key)] = value
        return PlanOptions.model_validate(data)


#: earlier names of ``plan:`` keys, still read in specs and keyword arguments
PLAN_ALIASES = {"strategy": "execution"}


class TrainOptions(_Model):
    """Defaults of ``tngraph train`` (the spec's ``train:`` block); CLI flags override them."""

    data: str = "digits"
    epochs: Count = 20
    batch_size: Count = 64
    lr: float = Field(default=5e-3, gt=0, allow_inf_nan=False)
    #: a registered optimizer strategy (``tngraph plugins list``), ``name`` or
    #: ``{name: ..., option: value}``: ``adam``, ``sgd``, ``dmrg``, ``riemannian``, ...
    optimizer: Named = NamedOptions(name="adam")
    #: learning rate over the run: ``cosine`` decays it to 0 by the last epoch
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    #: of the weights, the data split and the batch order (torch's generators take 0 .. 2^63-1)
    seed: int = Field(default=0, ge=0, lt=MAX_SEED + 1)
    #: ``cpu``, ``cuda`` (``cuda:N``), ``mps`` or ``xpu``; checked for availability when a run
    #: starts (:func:`tngraph.train.resolve_device`)
    device: Device = "cpu"
    #: clip the gradients' global norm to this before each step (optimizers over torch.optim)
    grad_clip: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: the weights the test split measures: those of the ``best`` validation epoch (kept as
    #: ``best.safetensors``) or of the ``last`` one
    test_on: Literal["best", "last"] = "best"


class DistillOptions(_Model):
    """Defaults of ``tngraph distill`` for this spec as the student (the ``distill:`` block)."""

    #: a teacher run directory, or a spec file that is trained first (relative to the working
    #: directory); ``--teacher`` overrides it
    teacher: str | None = None
    #: a registered distillation strategy, ``response`` or ``{name: layer, ...}``
    strategy: Named = NamedOptions(name="response")


class Spec(_Model):
    """A loaded, substituted, expanded and validated spec."""

    tngraph: Literal[1]
    name: str
    description: str = ""
    params: dict[str, ParamValue] = {}
    #: a single tensor network; ``None`` in a pipeline spec (then ``layers`` is set)
    network: NetworkSpec | None = None
    #: one example's shape as the data provides it (pipeline specs)
    input_shape: tuple[Count, ...] | None = None
    #: a pipeline of layers (feature maps, tensor networks, torch layers) instead of ``network``
    layers: tuple[LayerSpec, ...] | None = None
    plan: PlanOptions = PlanOptions()
    train: TrainOptions = TrainOptions()
    distill: DistillOptions = DistillOptions()
    #: ``None`` for a raw network; else the template call as written (after substitution)
    template: dict[str, Any] | None = None
    #: where the spec came from, for error locations (not part of the model's equality)
    source: Any = Field(default=None, exclude=True, repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Spec):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k)
                   for k in type(self).model_fields if k != "source")

    __hash__ = None  # type: ignore[assignment]  # holds dicts

    @property
    def is_pipeline(self) -> bool:
        """True for a ``layers:`` spec, False for a single ``network:``."""
        return self.layers is not None

    def network_spec(self, layer: str) -> Spec:
        """A ``network`` layer of a pipeline as a spec of its own (named ``SPEC.LAYER``), with
        this spec's plan and train options: what the planner and compiler take."""
        for item in self.layers or ():
            if item.name == layer and item.network is not None:
                return Spec(tngraph=FORMAT_VERSION, name=f"{self.name}.{layer}",
                            network=item.network, plan=self.plan, train=self.train,
                            template=item.template, source=self.source)
        valid = [i.name for i in self.layers or () if i.network is not None]
        raise KeyError(f"no network layer '{layer}'; network layers: {', '.join(valid)}")

    def to_raw(self) -> dict[str, Any]:
        """The canonical raw form: no params, no template, all values written out."""
        out: dict[str, Any] = {"tngraph": FORMAT_VERSION, "name": self.name}
        if self.description:
            out["description"] = self.description
        if self.layers is not None:
            out["input_shape"] = list(self.input_shape or ())
            out["layers"] = [
                {"type": item.type, "name": item.name,
                 **({"network": _network_raw(item.network)} if item.network is not None
                    else {}), **item.options}
                for item in self.layers]
        else:
            assert self.network is not None
            out["network"] = _network_raw(self.network)
        plan = self.plan.model_dump(exclude_defaults=True)
        if plan:
            out["plan"] = plan
        train = self.train.model_dump(exclude_defaults=True)
        if train:
            out["train"] = train
        distill = self.distill.model_dump(exclude_defaults=True)
        if distill:
            out["distill"] = distill
        return out


def _network_raw(net: NetworkSpec) -> dict[str, Any]:
    """The raw mapping of one network (what ``tngraph expand`` prints under ``network:``)."""
    network: dict[str, Any] = {"nodes": {}}
    for name, node in net.nodes.items():
        entry: dict[str, Any] = {"legs": dict(node.legs)}
        if node.init is not None:
            entry["init"] = node.init.to_data()
        if node.same_as is not None:
            entry["same_as"] = node.same_as
        if node.conj:
            entry["conj"] = True
        network["nodes"][name] = entry
    if net.inputs:
        network["inputs"] = {}
        for name, port in net.inputs.items():
            entry = {"legs": dict(port.legs)}
            if port.stack is not None:
                entry["stack"] = port.stack
            if port.feature_map is not None:
                entry["feature_map"] = port.feature_map.to_data()
            network["inputs"][name] = entry
    network["edges"] = [list(e) for e in net.edges]
    network["outputs"] = list(net.outputs)
    if net.bias:
        network["bias"] = True
    if net.flatten_outputs:
        network["flatten_outputs"] = True
    return network


def leg_table(network: NetworkSpec) -> dict[str, dict[str, int]]:
    """Graph-node name -> {leg: dim} for tensors and (every copy of) data ports."""
    table: dict[str, dict[str, int]] = {name: dict(node.legs) for name, node in
                                        network.nodes.items()}
    for name, port in network.inputs.items():
        for copy in port.copies(name):
            table[copy] = dict(port.legs)
    return table


# ---------------------------------------------------------------------------------------------
# pydantic errors -> located problems


def _model_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model that ``loc`` points into, for did-you-mean hints."""
    current: Any = model
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if fields is None:
            return []
        if part in fields:
            annotation = fields[part].annotation
            args = getattr(annotation, "__args__", ()) or ()
            nested = [a for a in (annotation, *args)
                      if isinstance(a, type) and issubclass(a, BaseModel)]
            dict_values = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            current = nested[0] if nested else (dict_values[0] if dict_values else None)
        # a dict key (node name): stay on the value model
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def validation_message(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A pydantic error as one line, ``key: what is wrong, got VALUE; ...`` (for values that
    come from flags, where no spec location exists); with ``model``, an unknown key comes with
    the valid ones.

    Examples
    --------
    >>> try:
    ...     TrainOptions(epochs=0)
    ... except ValidationError as exc:
    ...     print(validation_message(exc))
    epochs: Input should be greater than 0, got 0
    """
    parts = []
    for err in exc.errors():
        where = ".".join(map(str, err["loc"]))
        if err["type"] == "value_error":          # a validator's own message names the value
            parts.append(f"{where}: {err['ctx']['error']}")
        elif err["type"] == "extra_forbidden" and model is not None:
            key = str(err["loc"][-1])
            parts.append(f"unknown option '{key}'; "
                         + did_you_mean(key, _model_fields(model, err["loc"][:-1])))
        else:
            parts.append(f"{where}: {err['msg']}, got {err.get('input')!r}")
    return "; ".join(parts)


def pydantic_problems(exc: ValidationError, model: type[BaseModel], doc: Document,
                      prefix: DocPath = (), what: str = "") -> list[Problem]:
    """Turn a pydantic ValidationError into located :class:`Problem` objects."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function")))
        kind = err["type"]
        dotted = ".".join(str(p) for p in (*prefix, *loc))
        if kind == "extra_forbidden":
            key = str(loc[-1])
            valid = _model_fields(model, loc[:-1])
            where = ".".join(str(p) for p in (*prefix, *loc[:-1])) or what or "the spec"
            problems.append(Problem(f"unknown key '{key}' in {where}",
                                    doc.locate(prefix + loc, key=True), did_you_mean(key, valid)))
        elif kind == "missing" and isinstance(loc[-1], int):   # a too short pair (an edge)
            where = ".".join(str(p) for p in (*prefix, *loc[:-1]))
            problems.append(Problem(f"{where}: an edge joins exactly two legs",
                                    doc.locate(prefix + loc[:-1]),
                                    "write it as [NODE.LEG, NODE.LEG], e.g. [A.r, B.l]"))
        elif kind == "missing":
            where = ".".join(str(p) for p in (*prefix, *loc[:-1])) or "the spec"
            if what:
                where = f"{where} ({what})"
            problems.append(Problem(f"missing required key '{loc[-1]}' in {where}",
                                    doc.locate(prefix + loc[:-1])))
        elif kind == "literal_error" and loc == ("tngraph",):
            problems.append(Problem(
                f"unsupported format version {err.get('input')!r}", doc.locate(prefix + loc),
                f"this tngraph reads format version {FORMAT_VERSION}: write 'tngraph: 1'"))
        elif kind == "value_error":         # a validator's own message names the value
            problems.append(Problem(f"{dotted}: {err['ctx']['error']}", doc.locate(prefix + loc)))
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            message = err["msg"]
            hint = None
            if loc and loc[-1] != "legs" and "legs" in loc and kind in (
                    "greater_than", "int_type", "less_than_equal"):
                message = f"dimension of leg must be a positive integer (up to {MAX_DIM})"
                hint = "dimensions are whole numbers such as 2 or ${bond_dim}"
            problems.append(Problem(f"{dotted}: {message}, got {shown}",
                                    doc.locate(prefix + loc), hint))
    return problems
