"""Networks from Python: a small builder that writes the spec's YAML structure.

A :class:`Network` collects nodes, data ports, edges and outputs (and the ``params:``,
``plan:`` and ``train:`` blocks) as the plain data of a spec, the same dict a YAML file holds.
:func:`tngraph.load_spec`, :func:`tngraph.compile` and :func:`tngraph.expand` take it like a file,
so a network built here is validated by the same rules, every problem at once, located by key
path (``<Network 'ring'>: network.edges[2]: error: ...``), and it compiles to the same plan as the
YAML it prints.

Node and port handles give their legs as attributes: ``A.a`` is the leg reference ``"A.a"``, and
``x[3].p`` the leg ``p`` of copy 3 of a stacked port. :meth:`Network.param` declares a parameter
and returns its ``${name}`` reference, so that overrides (``compile(net, {"chi": 8})``) work as
for a file. :meth:`Network.template` calls a registered template (``mps``, ``peps``, ``tree``,
...); :meth:`Network.from_spec` turns any spec (a template's expansion included) into a raw
network to extend.

Examples
--------
>>> from tngraph.spec import load_spec
>>> net = Network("ring3")
>>> chi = net.param("chi", 5)
>>> A = net.node("A", i=3, a=chi, c=2)
>>> B = net.node("B", a=chi, j=4, b=6)
>>> C = net.node("C", b=6, k=3, c=2, init="normal")
>>> net.edge(A.a, B.a).edge(B.b, C.b).edge(C.c, A.c).outputs(A.i, B.j, C.k)
Network('ring3', nodes=3, edges=3)
>>> load_spec(net).network.nodes["B"].legs
{'a': 5, 'j': 4, 'b': 6}
>>> load_spec(net, {"chi": 2}).network.nodes["A"].legs["a"]
2
>>> mps = Network.template("mps", "chain", sites=4, phys_dim=2, bond_dim=3)
>>> len(load_spec(mps).network.nodes)
4
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tngraph.errors import Problem, SpecError, did_you_mean
from tngraph.schema import FORMAT_VERSION, IDENTIFIER_RE, Spec
from tngraph.spec import load_spec

__all__ = ["Leg", "Network", "NodeRef", "PortRef"]


class Leg(str):
    """A leg reference, ``NODE.LEG`` or ``PORT[k].LEG``: a ``str``, usable wherever the spec
    takes one (edges, outputs)."""

    __slots__ = ()


class _MissingLeg(SpecError, AttributeError):
    """An unknown leg asked of a handle (an AttributeError too, so ``hasattr`` works)."""


class NodeRef:
    """A handle on a node (or data port) of a :class:`Network`: ``ref.LEG`` (or ``ref["LEG"]``)
    is the :class:`Leg` ``"NAME.LEG"``."""

    __slots__ = ("_legs", "_name")

    def __init__(self, name: str, legs: Mapping[str, Any]):
        self._name = name
        self._legs = legs

    def __str__(self) -> str:
        return self._name

    def __getattr__(self, leg: str) -> Leg:
        if leg.startswith("_"):
            raise AttributeError(leg)
        return self[leg]

    def __getitem__(self, leg: str) -> Leg:
        if leg not in self._legs:
            raise _MissingLeg(Problem(f"{self._name} has no leg '{leg}'", None,
                                      did_you_mean(str(leg), self._legs)))
        return Leg(f"{self._name}.{leg}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, legs={list(self._legs)})"

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._legs]


class PortRef(NodeRef):
    """A handle on a data port; ``port[k]`` is copy ``k`` of a stacked port (``x[3].p``)."""

    __slots__ = ("_stack",)

    def __init__(self, name: str, legs: Mapping[str, Any], stack: int | None):
        super().__init__(name, legs)
        self._stack = stack

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if self._stack is not None:
                raise _MissingLeg(Problem(
                    f"input '{self._name}' is stacked ({self._stack} copies): name a copy "
                    f"first", None, f"write {self._name}[k].{key}, k in 0..{self._stack - 1}"))
            return super().__getitem__(key)
        if self._stack is None or isinstance(key, bool) or not isinstance(key, int) \
                or not 0 <= key < self._stack:
            span = f"copies 0..{self._stack - 1}" if self._stack else "no copies (not stacked)"
            raise SpecError(Problem(f"input '{self._name}' has {span}, asked for [{key!r}]"))
        return NodeRef(f"{self._name}[{key}]", self._legs)

    def __getattr__(self, leg: str) -> Leg:
        if leg.startswith("_"):
            raise AttributeError(leg)
        return self[leg]


def _ref(value: Any, what: str) -> str:
    if isinstance(value, str):
        return str(value)
    raise SpecError(Problem(f"{what} must be a leg reference such as A.r or \"A.r\", got "
                            f"{type(value).__name__}", None,
                            "take it from a handle: A = net.node('A', r=4); A.r"))


class Network:
    """A spec under construction: a tensor network and its ``params``, ``plan`` and ``train``
    blocks, held as the plain data of the YAML structure (:meth:`spec_data`).

    Parameters
    ----------
    name
        The spec's name.
    description
        Its description.
    bias, flatten_outputs
        The network's ``bias`` and ``flatten_outputs`` flags.

    Every method that adds something returns the network (``net.edge(...).edge(...)``) but
    :meth:`node`, :meth:`input` and :meth:`param`, which return a handle or reference.
    """

    def __init__(self, name: str, *, description: str = "", bias: bool = False,
                 flatten_outputs: bool = False):
        if not isinstance(name, str):
            raise SpecError(Problem(f"a network's name must be a string, got "
                                    f"{type(name).__name__}", None, "Network('ring')"))
        self.name = name
        self.description = description
        #: the ``plan:``, ``train:`` and ``distill:`` blocks
        self._blocks: dict[str, dict[str, Any]] = {}
        self._params: dict[str, Any] = {}
        self._network: dict[str, Any] = {"nodes": {}, "inputs": {}, "edges": [], "outputs": []}
        self._template: dict[str, Any] | None = None
        self.bias = bias
        self.flatten_outputs = flatten_outputs

    # -- building ---------------------------------------------------------------------------

    def _raw(self, what: str) -> dict[str, Any]:
        if self._template is not None:
            raise SpecError(Problem(
                f"network '{self.name}' is a call of template "
                f"'{self._template['template']}': it has no {what} to add", None,
                "expand it first: Network.from_spec(net), then add to that"))
        return self._network

    def _new_name(self, name: str, kind: str) -> None:
        network = self._raw(f"{kind}s")
        if not isinstance(name, str) or not IDENTIFIER_RE.match(name):
            raise SpecError(Problem(f"{kind} name {name!r} is not an identifier", None,
                                    "use letters, digits and '_', not starting with a digit"))
        if name in network["nodes"] or name in network["inputs"]:
            raise SpecError(Problem(f"network '{self.name}' already has a node or input "
                                    f"'{name}'", None, "node and input names share one "
                                    "namespace; rename one"))

    def param(self, name: str, value: int | float | str | bool) -> str:
        """Declare the parameter ``name`` (``params:``) and return its reference
        ``"${name}"``, to use as a dimension or option value."""
        if not isinstance(name, str) or not IDENTIFIER_RE.match(name):
            raise SpecError(Problem(f"parameter name {name!r} is not an identifier"))
        self._params[name] = value
        return f"${{{name}}}"

    def node(self, name: str, legs: Mapping[str, Any] | None = None, /, *,
             init: str | Mapping[str, Any] | None = None, same_as: str | None = None,
             conj: bool = False, **more_legs: Any) -> NodeRef:
        """Add a tensor with legs ``legs`` / ``**more_legs`` (name -> dimension, in axis order)
        and an optional initialiser (``"normal"``, ``{"name": "normal", "std": 0.1}``, ...);
        with ``same_as="A"`` (and ``conj=True``) the node reuses node A's tensor (conjugated)
        and has no parameter of its own. A leg called ``init``, ``same_as`` or ``conj`` goes
        into ``legs``."""
        self._new_name(name, "node")
        all_legs = {**(legs or {}), **more_legs}
        entry: dict[str, Any] = {"legs": all_legs}
        if init is not None:
            entry["init"] = copy.deepcopy(init)
        if same_as is not None:
            entry["same_as"] = same_as
        if conj:
            entry["conj"] = True
        self._network["nodes"][name] = entry
        return NodeRef(name, all_legs)

    def input(self, name: str, legs: Mapping[str, Any] | None = None, /, *,
              stack: int | None = None, feature_map: str | Mapping[str, Any] | None = None,
              **more_legs: Any) -> PortRef:
        """Add a data port (fed at call time, with a leading batch axis): ``stack`` copies
        (``x[k]``) fed by one tensor, raw values mapped by ``feature_map``."""
        self._new_name(name, "input")
        all_legs = {**(legs or {}), **more_legs}
        entry: dict[str, Any] = {"legs": all_legs}
        if stack is not None:
            entry["stack"] = stack
        if feature_map is not None:
            entry["feature_map"] = copy.deepcopy(feature_map)
        self._network["inputs"][name] = entry
        return PortRef(name, all_legs, stack if isinstance(stack, int) else None)

    def edge(self, first: str, second: str, *more: str) -> Network:
        """Join two legs (``net.edge(A.r, B.l)``), or three or more in one hyperedge
        (``net.edge(A.c, B.c, C.c)``: one shared index); their dimensions must match."""
        self._raw("edges")["edges"].append([_ref(end, "an edge's end")
                                            for end in (first, second, *more)])
        return self

    def outputs(self, *legs: str) -> Network:
        """Append open legs to the outputs, in order (the result's axes after the batch)."""
        self._raw("outputs")["outputs"].extend(_ref(leg, "an output") for leg in legs)
        return self

    def plan(self, **options: Any) -> Network:
        """Set ``plan:`` options (``optimize="greedy"``, ``batch_size=64``, ...)."""
        return self._block("plan", options)

    def train(self, **options: Any) -> Network:
        """Set ``train:`` options (``epochs=5``, ``lr=1e-3``, ...)."""
        return self._block("train", options)

    def distill(self, **options: Any) -> Network:
        """Set ``distill:`` options (``teacher=...``, ``strategy=...``)."""
        return self._block("distill", options)

    def _block(self, key: str, options: Mapping[str, Any]) -> Network:
        self._blocks.setdefault(key, {}).update(copy.deepcopy(dict(options)))
        return self

    # -- templates and existing specs -------------------------------------------------------

    @classmethod
    def template(cls, template: str, name: str | None = None, *,
                 params: Mapping[str, Any] | None = None, description: str = "",
                 **options: Any) -> Network:
        """A network that calls the registered template ``template`` with ``options`` (values
        may be ``${param}`` references to ``params``), as ``network: {template: ...}`` does.

        Examples
        --------
        >>> net = Network.template("peps", "grid", rows=2, cols=2, bond_dim=2)
        >>> net.spec_data()["network"]
        {'template': 'peps', 'rows': 2, 'cols': 2, 'bond_dim': 2}
        """
        net = cls(name if name is not None else str(template), description=description)
        for key, value in (params or {}).items():
            net.param(key, value)
        net._template = {"template": template, **copy.deepcopy(options)}
        return net

    @classmethod
    def from_spec(cls, source: Any, overrides: Mapping[str, Any] | None = None) -> Network:
        """A raw network holding the (expanded) network of a spec, to extend: a path, YAML
        text, dict, loaded :class:`~tngraph.spec.Spec` or another :class:`Network`. Its
        parameters are substituted; its ``plan:`` / ``train:`` / ``distill:`` blocks are kept.

        Examples
        --------
        >>> net = Network.from_spec(Network.template("mps", sites=3, phys_dim=2, bond_dim=2))
        >>> A = net.node("E", p=2)
        >>> sorted(net.spec_data()["network"]["nodes"])
        ['A0', 'A1', 'A2', 'E']
        """
        spec = source if isinstance(source, Spec) else load_spec(
            Path(source) if isinstance(source, os.PathLike) else source, overrides)
        if spec.network is None:
            raise SpecError(Problem(f"spec '{spec.name}' is a pipeline of layers; a Network "
                                    "holds one tensor network", None,
                                    "take a network layer: Network.from_spec("
                                    "spec.network_spec(LAYER))"))
        raw = spec.to_raw()
        net = cls(spec.name, description=spec.description, bias=spec.network.bias,
                  flatten_outputs=spec.network.flatten_outputs)
        network = raw["network"]
        net._network = {"nodes": network["nodes"], "inputs": network.get("inputs", {}),
                        "edges": network["edges"], "outputs": network["outputs"]}
        for key in ("plan", "train", "distill"):
            if key in raw:
                net._blocks[key] = raw[key]
        return net

    # -- the result -------------------------------------------------------------------------

    def spec_data(self) -> dict[str, Any]:
        """The spec as plain data: the dict of the YAML structure, what ``load_spec`` reads."""
        data: dict[str, Any] = {"tngraph": FORMAT_VERSION, "name": self.name}
        if self.description:
            data["description"] = self.description
        if self._params:
            data["params"] = dict(self._params)
        if self._template is not None:
            network = copy.deepcopy(self._template)
        else:
            network = {k: copy.deepcopy(v) for k, v in self._network.items()
                       if v or k != "inputs"}
            if self.bias:
                network["bias"] = True
            if self.flatten_outputs:
                network["flatten_outputs"] = True
        data["network"] = network
        return {**data, **copy.deepcopy(self._blocks)}

    def spec(self, overrides: Mapping[str, Any] | None = None) -> Spec:
        """The loaded, validated :class:`~tngraph.spec.Spec` (every problem at once, located by
        key path)."""
        return load_spec(self, overrides)

    def __repr__(self) -> str:
        if self._template is not None:
            return f"Network({self.name!r}, template={self._template['template']!r})"
        return (f"Network({self.name!r}, nodes={len(self._network['nodes'])}, "
                f"edges={len(self._network['edges'])})")
