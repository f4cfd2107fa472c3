"""Loading a spec: the front door from YAML text (or a file) to a validated :class:`Spec`.

``load_spec`` runs every stage::

    YAML text -> Document (values + positions) -> ${param} substitution -> template expansion
              -> pydantic models (tngraph.schema) -> semantic validation (tngraph.validate) -> Spec

Every template expands into the *raw* form (nodes, edges, inputs, outputs), which is what the rest
of tngraph sees and what ``tngraph expand`` prints. The models themselves live in
:mod:`tngraph.schema` and are importable from here too.

Examples
--------
>>> spec = load_spec('''
... tngraph: 1
... name: pair
... params: {chi: 3}
... network:
...   nodes:
...     A: {legs: {i: 2, a: "${chi}"}}
...     B: {legs: {a: "${chi}", j: 4}}
...   edges: [[A.a, B.a]]
...   outputs: [A.i, B.j]
... ''')
>>> spec.network.nodes["A"].legs
{'i': 2, 'a': 3}
"""

from __future__ import annotations

import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tngraph.errors import Problem, SpecError, did_you_mean
from tngraph.schema import (
    DEVICE_TYPES,
    FORMAT_VERSION,
    IDENTIFIER_RE,
    LEG_REF_RE,
    MAX_DIM,
    Count,
    Device,
    Dim,
    DistillOptions,
    InputSpec,
    LayerSpec,
    Named,
    NamedOptions,
    NetworkSpec,
    NodeSpec,
    ParamValue,
    PlanOptions,
    Spec,
    TrainOptions,
    check_device,
    pydantic_problems,
    validation_message,
)
from tngraph.templates import expand_template
from tngraph.validate import (
    check_distiller,
    check_named,
    check_optimizer,
    validate_layers,
    validate_network,
)
from tngraph.yamlio import (
    DocPath,
    Document,
    document_from_data,
    load_document,
    read_document,
)

__all__ = [
    "DEVICE_TYPES", "FORMAT_VERSION", "IDENTIFIER_RE", "LEG_REF_RE", "MAX_DIM", "Count", "Device",
    "Dim", "DistillOptions", "InputSpec", "LayerSpec", "Named", "NamedOptions", "NetworkSpec",
    "NodeSpec", "ParamValue", "PlanOptions", "Spec", "TrainOptions", "check_device", "check_named",
    "load_spec", "parse_override", "pydantic_problems", "validation_message",
]

_PARAM_RE = re.compile(r"\$\{([^}]*)\}")


# ---------------------------------------------------------------------------------------------
# parameters


def parse_override(text: str) -> tuple[str, ParamValue]:
    """Parse a ``--set key=value`` argument; the value is read as a YAML scalar.

    Examples
    --------
    >>> parse_override("bond_dim=8")
    ('bond_dim', 8)
    """
    if "=" not in text:
        raise SpecError(Problem(f"--set expects key=value, got {text!r}", None,
                                "for example: --set bond_dim=8"))
    key, _, raw = text.partition("=")
    key = key.strip()
    try:
        value = load_document(f"v: {raw}").data["v"] if raw.strip() else ""
    except SpecError:
        value = raw
    if isinstance(value, (dict, list)) or value is None:
        value = raw
    return key, value


def _substitute(value: Any, params: Mapping[str, ParamValue], path: DocPath,
                doc: Document, problems: list[Problem]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, params, path + (k,), doc, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, path + (i,), doc, problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(name: str) -> ParamValue | None:
        name = name.strip()
        if name in params:
            return params[name]
        problems.append(Problem(
            f"unresolved parameter '${{{name}}}'", doc.locate(path),
            f"define it under 'params:' or pass --set {name}=VALUE; "
            + did_you_mean(name, params),
        ))
        return None

    whole = _PARAM_RE.fullmatch(value)
    if whole:
        return lookup(whole.group(1))
    return _PARAM_RE.sub(lambda m: str(lookup(m.group(1))), value)


# ---------------------------------------------------------------------------------------------
# pydantic errors -> located problems


# ---------------------------------------------------------------------------------------------
# loading


def _source_document(source: str | Path | Document | Mapping[str, Any]) -> Document:
    if isinstance(source, Document):
        return source
    if isinstance(source, (Path, os.PathLike)):
        return read_document(Path(source))
    if isinstance(source, Mapping):
        return document_from_data(source)
    spec_data = getattr(source, "spec_data", None)
    if callable(spec_data) and not isinstance(source, (str, Spec)):
        # a builder (tngraph.builder.Network): its data, located by key path
        return document_from_data(spec_data(), f"<{type(source).__name__} "
                                               f"'{getattr(source, 'name', '?')}'>")
    if isinstance(source, Spec):
        raise SpecError(Problem(f"spec '{source.name}' is already loaded; load_spec takes a "
                                "path or YAML text", None,
                                "use the Spec as it is (compile(spec), expand(spec))"))
    if not isinstance(source, str):
        hint = ("decode it first: source.decode()" if isinstance(source, (bytes, bytearray))
                else "pass a path to a YAML file (str or Path), the YAML text, or a dict of "
                "the YAML structure")
        raise SpecError(Problem(f"a spec source must be a path or YAML text, got "
                                f"{type(source).__name__}", None, hint))
    if "\n" not in source:
        try:
            # an existing folder or device is read (and reported) as a file, not parsed as YAML
            is_path = source.endswith((".yaml", ".yml")) or (
                bool(source.strip()) and Path(source).exists())
        except (OSError, ValueError):   # e.g. one line of YAML too long for a file name
            is_path = False
        if is_path:
            return read_document(source)
    return load_document(source)


def _check_overrides(overrides: Any) -> None:
    """Overrides must map parameter names to numbers, strings or booleans."""
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        hint = ("parse '--set' text with parse_override: dict([parse_override('bond_dim=8')])"
                if isinstance(overrides, (str, list, tuple)) else "for example: {'bond_dim': 8}")
        raise SpecError(Problem(f"overrides must be a mapping of parameter names to values, "
                                f"got {type(overrides).__name__}", None, hint))
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise SpecError(Problem(f"override names must be strings, got {key!r}", None,
                                    "for example: {'bond_dim': 8}"))
        if not isinstance(value, (bool, numbers.Real, str)):
            raise SpecError(Problem(f"override '{key}' must be a number, string or boolean, "
                                    f"got {type(value).__name__}",
                                    None, f"for example: {{'{key}': 8}}"))


_TOP_KEYS = ("tngraph", "name", "description", "params", "network", "input_shape", "layers",
             "plan", "train", "distill")


def _expand_layers(data: Any, doc: Document, problems: list[Problem]) -> Any:
    """Layers as mappings with a default name, ``network`` templates expanded in place."""
    if not isinstance(data, list) or not data:
        problems.append(Problem("'layers' must be a non-empty list of layers",
                                doc.locate(("layers",)),
                                "for example: layers: [flatten, {type: linear, out_features: 10}]"))
        return data
    layers: list[Any] = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"type": item}
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            problems.append(Problem(f"layer {i} needs a 'type' (e.g. relu, linear, network)",
                                    doc.locate(("layers", i)),
                                    "write a layer as a name (- relu) or a mapping with 'type:'"))
            layers.append(item)
            continue
        item = {"name": f"{item['type']}{i}", **item}
        network = item.get("network")
        if item["type"] == "network" and isinstance(network, dict) and "template" in network:
            try:
                expanded = expand_template(network, doc, base=("layers", i, "network"))
            except SpecError as exc:
                problems.extend(exc.problems)
                expanded = None
            item = {**item, "network": expanded, "template": network}
        layers.append(item)
    return layers


def load_spec(source: str | Path | Document,
              overrides: Mapping[str, ParamValue] | None = None) -> Spec:
    """Load, substitute, expand and validate a spec.

    Parameters
    ----------
    source
        A path to a YAML file, YAML text, a dict of the YAML structure (problems are then
        located by key path, ``<dict>: network.nodes.A.legs.i``), a builder
        (:class:`tngraph.builder.Network`), or an already parsed :class:`Document`.
    overrides
        Parameter values that replace those under ``params:`` (the CLI's ``--set``).

    Raises
    ------
    SpecError
        Listing every problem, each with ``file:line:col``.

    Examples
    --------
    >>> spec = load_spec("models/mps.yaml", {"bond_dim": 4})   # doctest: +SKIP
    >>> load_spec({"tngraph": 1, "name": "t", "network": {"nodes": {"A": {"legs": {"i": 2}}},
    ...            "outputs": ["A.i"]}}).network.nodes["A"].legs
    {'i': 2}
    """
    _check_overrides(overrides)
    doc = _source_document(source)
    data = doc.data
    problems: list[Problem] = []

    version = data.get("tngraph")
    if "tngraph" not in data:
        raise SpecError(Problem("missing 'tngraph: 1' (the format version)", doc.locate(()),
                                "start the spec with the line 'tngraph: 1'"))
    if type(version) is not int or version != FORMAT_VERSION:
        raise SpecError(Problem(f"unsupported format version {version!r}",
                                doc.locate(("tngraph",)),
                                f"this tngraph reads format version {FORMAT_VERSION}: "
                                "write 'tngraph: 1'"))
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(Problem(f"unknown key '{key}' at the top of the spec",
                                    doc.locate((key,), key=True), did_you_mean(key, _TOP_KEYS)))
    # Unknown top-level keys are left out and reported together with every later problem.
    n_unknown = len(problems)

    # -- params ---------------------------------------------------------------------------
    raw_params = data.get("params") or {}
    params: dict[str, ParamValue] = {}
    if not isinstance(raw_params, dict):
        problems.append(Problem("'params' must be a mapping of names to values",
                                doc.locate(("params",)), "for example: params: {bond_dim: 8}"))
        raw_params = {}
    for key, value in raw_params.items():
        if not IDENTIFIER_RE.match(key):
            problems.append(Problem(f"parameter name '{key}' is not an identifier",
                                    doc.locate(("params", key), key=True)))
        elif isinstance(value, (dict, list)) or value is None:
            problems.append(Problem(f"parameter '{key}' must be a number, string or boolean",
                                    doc.locate(("params", key))))
        elif isinstance(value, str) and "${" in value:
            problems.append(Problem(f"parameter '{key}' refers to another parameter",
                                    doc.locate(("params", key)), "write the value out"))
        else:
            params[key] = value
    for key, value in (overrides or {}).items():
        if key not in raw_params:
            where = doc.locate(("params",), key=True) if "params" in data else doc.locate(())
            problems.append(Problem(f"--set {key}: the spec has no parameter '{key}'", where,
                                    did_you_mean(key, raw_params)))
        else:
            params[key] = value
    if len(problems) > n_unknown:
        raise SpecError(problems)

    body = {k: v for k, v in data.items() if k != "params" and k in _TOP_KEYS}
    body = _substitute(body, params, (), doc, problems)
    if len(problems) > n_unknown:
        raise SpecError(problems)

    # -- network (raw or template) or a pipeline of layers -----------------------------------
    template_call: dict[str, Any] | None = None
    if "layers" in body:
        if "network" in body:
            problems.append(Problem(
                "a spec declares either 'network:' (one tensor network) or 'layers:' (a "
                "pipeline), not both", doc.locate(("network",), key=True),
                "move the network into the pipeline as {type: network, network: ...}"))
        if "input_shape" not in body:
            problems.append(Problem(
                "a pipeline needs 'input_shape:' (the shape of one example of the data)",
                doc.locate(("layers",), key=True), "for 8x8 digits: input_shape: [64]"))
        body = {**body, "layers": _expand_layers(body["layers"], doc, problems)}
    else:
        network_data = body.get("network")
        if "input_shape" in body:
            problems.append(Problem("'input_shape' belongs to pipeline specs (with 'layers:')",
                                    doc.locate(("input_shape",), key=True),
                                    "remove it: a network's data ports declare their legs"))
        if isinstance(network_data, dict) and "template" in network_data:
            template_call = network_data
            try:
                network_data = expand_template(network_data, doc)
            except SpecError as exc:
                raise SpecError([*problems, *exc.problems]) from None
            body = {**body, "network": network_data}
        elif network_data is None and "network" not in body:
            problems.append(Problem("missing required key 'network'", doc.locate(()),
                                    "add 'network:' with nodes/edges/outputs, or a 'template:'; "
                                    "or a pipeline with 'input_shape:' and 'layers:'"))
            raise SpecError(problems)
        elif network_data is None:
            problems.append(Problem("'network' is empty", doc.locate(("network",), key=True),
                                    "give it nodes, edges and outputs, or a 'template:'"))
            raise SpecError(problems)

    try:
        spec = Spec.model_validate({**body, "params": params, "template": template_call})
    except ValidationError as exc:
        raise SpecError([*problems, *pydantic_problems(exc, Spec, doc)]) from None
    spec = spec.model_copy(update={"source": doc})

    if spec.layers is not None:
        problems += validate_layers(spec, doc)   # with the template problems found above
    else:
        assert spec.network is not None
        where = ("network", "template") if template_call is not None else None
        problems += validate_network(spec.network, doc, fixed_path=where)
    problems += check_optimizer(spec.train.optimizer, doc, ("train", "optimizer"))
    if "distill" in body:
        problems += check_distiller(spec.distill.strategy, doc, ("distill", "strategy"))
    if problems:
        raise SpecError(problems)
    return spec
