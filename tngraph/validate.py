"""Semantic checks of a raw network: every leg, every edge, every dimension.

``validate_network`` returns the list of every problem found (it never stops at the first), each
located in the spec file; :func:`tngraph.spec.load_spec` raises them together as one SpecError.

Rules (format version 1): names are identifiers; every leg is joined by exactly one edge or
listed in ``outputs``; both ends of an edge exist and have equal dimensions; an edge may join two
legs of one node (a trace) but not a leg to itself; an edge of three or more ends (a hyperedge)
lists each leg once, all of one dimension, and one of its legs may be listed in ``outputs`` to
keep its index open; data ports' legs follow the same rules;
feature maps and initialisers are registered names with valid options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from tngraph.errors import Location, PluginError, Problem, did_you_mean
from tngraph.kinds import (
    NETWORK,
    LayerError,
    get_distiller,
    get_feature_map,
    get_initializer,
    get_layer,
    get_optimizer,
    list_initializers,
    list_layers,
)
from tngraph.layers import network_shape
from tngraph.schema import (
    IDENTIFIER_RE,
    LEG_REF_RE,
    NamedOptions,
    NetworkSpec,
    Spec,
    leg_table,
    pydantic_problems,
    validation_message,
)
from tngraph.yamlio import DocPath, Document

__all__ = ["REAL_ONLY_LAYERS", "check_distiller", "check_named", "check_optimizer",
           "complex_layer_problems", "leg_table", "validate_layers", "validate_network"]


def validate_network(network: NetworkSpec, doc: Document | None = None,
                     fixed_path: DocPath | None = None,
                     base: DocPath = ("network",)) -> list[Problem]:
    """Every semantic problem of ``network``, located via ``doc``.

    Parameters
    ----------
    network
        The raw network (after template expansion).
    doc
        The source document, for locations; ``None`` gives unlocated problems.
    fixed_path
        Locate every problem at this path (used for template-generated networks, whose
        problems belong to the template call).
    base
        Where the network sits in the document (``("layers", 2, "network")`` in a pipeline).

    Examples
    --------
    >>> net = NetworkSpec(nodes={"A": {"legs": {"i": 2}}}, outputs=[])
    >>> [p.message for p in validate_network(net)]
    ['leg A.i is not joined by an edge and not listed in outputs']
    """
    problems: list[Problem] = []

    def at(path: DocPath, key: bool = False) -> Location | None:
        if doc is None:
            return None
        return doc.locate(fixed_path if fixed_path is not None else path, key=key)

    def add(message: str, path: DocPath, hint: str | None = None, key: bool = False) -> None:
        problems.append(Problem(message, at(path, key), hint))

    nodes_path = (*base, "nodes")
    inputs_path = (*base, "inputs")
    if not network.nodes:
        add("network has no nodes", nodes_path, "declare at least one tensor under 'nodes:'")

    # -- names ----------------------------------------------------------------------------
    for name, node in network.nodes.items():
        if not IDENTIFIER_RE.match(name):
            add(f"node name '{name}' is not an identifier", nodes_path + (name,),
                "use letters, digits and '_', not starting with a digit", key=True)
        for leg in node.legs:
            if not IDENTIFIER_RE.match(leg):
                add(f"leg name '{leg}' of node {name} is not an identifier",
                    nodes_path + (name, "legs", leg), "use letters, digits and '_'", key=True)
        if node.init is not None and node.init.name not in list_initializers():
            add(f"unknown initializer '{node.init.name}' for node {name}",
                nodes_path + (name, "init"), did_you_mean(node.init.name, list_initializers()))
        elif node.init is not None:
            allowed = getattr(get_initializer(node.init.name), "options", None)
            for option in node.init.options:
                if allowed is not None and option not in allowed:
                    add(f"initializer '{node.init.name}' has no option '{option}'",
                        nodes_path + (name, "init", option), did_you_mean(option, allowed),
                        key=True)
    for name, node in network.nodes.items():
        _check_same_as(name, node, network, nodes_path + (name,), add)
    for name, port in network.inputs.items():
        if not IDENTIFIER_RE.match(name):
            add(f"input name '{name}' is not an identifier", inputs_path + (name,),
                "use letters, digits and '_'", key=True)
        if name in network.nodes:
            add(f"input '{name}' has the same name as a node", inputs_path + (name,),
                "node and input names share one namespace; rename one", key=True)
        for leg in port.legs:
            if not IDENTIFIER_RE.match(leg):
                add(f"leg name '{leg}' of input {name} is not an identifier",
                    inputs_path + (name, "legs", leg), key=True)
        if not port.legs:
            add(f"input '{name}' has no legs", inputs_path + (name, "legs"),
                "a data port needs at least one leg to join the network")
        if port.feature_map is not None:
            _check_feature_map(name, port, inputs_path + (name, "feature_map"), add)

    # -- edges ----------------------------------------------------------------------------
    table = leg_table(network)
    used: dict[tuple[str, str], str] = {}

    def resolve(ref: str, path: DocPath) -> tuple[str, str] | None:
        match = LEG_REF_RE.match(ref) if isinstance(ref, str) else None
        if not match:
            add(f"'{ref}' is not a leg reference", path,
                "write NODE.LEG, e.g. A.r, or PORT[k].LEG for a copy of a stacked input")
            return None
        node, leg = match.groups()
        if node not in table:
            add(f"unknown node '{node}' in '{ref}'", path, did_you_mean(node, table))
            return None
        if leg not in table[node]:
            add(f"node {node} has no leg '{leg}'", path, did_you_mean(leg, table[node]))
            return None
        return node, leg

    edges_path = (*base, "edges")
    #: leg -> the hyperedge (its number) it belongs to, for outputs that keep one open
    hyper: dict[tuple[str, str], int] = {}
    for k, edge in enumerate(network.edges):
        path = edges_path + (k,)
        shown = f"edge {k + 1} [{', '.join(edge)}]"
        ends = [resolve(ref, path + (sub,)) for sub, ref in enumerate(edge)]
        for sub, (end, ref) in enumerate(zip(ends, edge)):
            if end is not None and end in used:
                add(f"leg {ref} is joined twice (also {used[end]})", path + (sub,),
                    "each leg is joined by exactly one edge or listed once in outputs")
        known = [(end, ref) for end, ref in zip(ends, edge) if end is not None]
        if len(edge) == 2 and len(known) == 2:
            (a, first), (b, second) = known
            if a == b:
                add(f"edge joins leg {first} to itself", path,
                    "an edge joins two different legs; to trace, join two legs of one node")
            elif table[a[0]][a[1]] != table[b[0]][b[1]]:
                add(f"edge joins {first} (dim {table[a[0]][a[1]]}) to {second} "
                    f"(dim {table[b[0]][b[1]]}); dimensions must match", path,
                    "give both legs the same dimension, e.g. the same ${param}")
        elif len(edge) > 2:
            seen: set[tuple[str, str]] = set()
            for sub, (end, ref) in enumerate(zip(ends, edge)):
                if end is not None and end in seen:
                    add(f"hyperedge {k + 1} lists leg {ref} twice", path + (sub,),
                        "list each leg of a hyperedge once")
                if end is not None:
                    seen.add(end)
            dims = {table[n][leg] for n, leg in seen}
            if len(dims) > 1:
                listing = ", ".join(f"{ref} (dim {table[end[0]][end[1]]})"
                                    for end, ref in known)
                add(f"hyperedge joins {listing}; dimensions must match", path,
                    "every leg of a hyperedge has the same dimension, e.g. the same ${param}")
            for end, _ in known:
                hyper.setdefault(end, k)
        for end, _ in known:
            used.setdefault(end, shown)

    outputs_path = (*base, "outputs")
    open_hyper: dict[int, str] = {}
    for k, ref in enumerate(network.outputs):
        end = resolve(ref, outputs_path + (k,))
        if end is None:
            continue
        edge_k = hyper.get(end)
        if edge_k is not None and used[end] != "outputs":
            if edge_k in open_hyper:
                add(f"output {ref} opens hyperedge {edge_k + 1} again (already open as "
                    f"{open_hyper[edge_k]})", outputs_path + (k,),
                    "a hyperedge's index stays open once: list one of its legs in outputs")
            open_hyper.setdefault(edge_k, ref)
            continue
        if end in used:
            add(f"output {ref} is already {'used by ' + used[end]}", outputs_path + (k,),
                "a leg is either joined by an edge or open (in outputs), not both; "
                "only a leg of a hyperedge (three or more ends) may be listed to keep its "
                "index open")
            continue
        used[end] = "outputs"

    # -- dangling legs --------------------------------------------------------------------
    for name, node in network.nodes.items():
        for leg in node.legs:
            if (name, leg) not in used:
                add(f"leg {name}.{leg} is not joined by an edge and not listed in outputs",
                    nodes_path + (name, "legs", leg),
                    f"join it with an edge, or add {name}.{leg} to outputs", key=True)
    for name, port in network.inputs.items():
        for copy in port.copies(name):
            for leg in port.legs:
                if (copy, leg) not in used:
                    add(f"leg {copy}.{leg} of input '{name}' is not joined by an edge and not "
                        "listed in outputs", inputs_path + (name, "legs", leg),
                        f"join it with an edge to a node's leg, e.g. [{copy}.{leg}, NODE.LEG]",
                        key=True)
    return problems


def _check_same_as(name: str, node: Any, network: NetworkSpec, path: DocPath,
                   add: Callable[..., None]) -> None:
    """A node that reuses another's tensor (``same_as``, ``conj``): the reference exists, is
    not itself a reference, has the same shape; the node has no ``init`` of its own."""
    if node.same_as is None:
        if node.conj:
            add(f"node {name} has conj: true but no same_as", (*path, "conj"),
                "conj conjugates the tensor of another node: write same_as: OTHER, "
                "conj: true (a node's own parameter needs no conjugation)")
        return
    ref = node.same_as
    source = network.nodes.get(ref)
    if source is None:
        add(f"node {name} has same_as '{ref}', which is not a node", (*path, "same_as"),
            did_you_mean(ref, [n for n in network.nodes if n != name]))
        return
    if ref == name:
        add(f"node {name} has same_as itself", (*path, "same_as"),
            "same_as names another node, whose tensor this one reuses")
        return
    if source.same_as is not None:
        add(f"node {name} has same_as '{ref}', which itself reuses '{source.same_as}'",
            (*path, "same_as"), f"refer to the node that holds the tensor: same_as: "
            f"{source.same_as}")
        return
    if source.shape != node.shape:
        add(f"node {name} (shape {list(node.shape)}) has same_as '{ref}' of shape "
            f"{list(source.shape)}; the shapes must be equal", (*path, "same_as"),
            f"give {name} the legs of {ref} in the same axis order, e.g. "
            f"legs: {{{', '.join(f'{k}: {v}' for k, v in source.legs.items())}}}")
    if node.init is not None:
        add(f"node {name} has same_as '{ref}' and an init; it has no tensor of its own",
            (*path, "init"), f"remove init (node {ref}'s init sets the shared tensor)", key=True)


def _check_feature_map(name: str, port, path: DocPath,
                       add: Callable[..., None]) -> None:
    try:
        fmap = get_feature_map(port.feature_map.name)
        fmap.check_options(port.feature_map.options)
        dim = fmap.dim(port.feature_map.options)
    except PluginError as exc:
        add(str(exc), path)
        return
    if len(port.legs) != 1:
        add(f"input '{name}' has a feature map, so it must have exactly one leg "
            f"(found {len(port.legs)})", path, f"write legs: {{p: {dim}}}")
        return
    (leg, leg_dim), = port.legs.items()
    if leg_dim != dim:
        add(f"feature map '{fmap.name}' makes vectors of dim {dim}, but leg {name}.{leg} has "
            f"dim {leg_dim}", path, f"set the leg's dimension to {dim}")


def validate_layers(spec: Spec, doc: Document | None = None) -> list[Problem]:
    """Every problem of a pipeline spec's layers: names, types, options, networks, and the shape
    each layer receives (inferred from ``input_shape`` through the layers before it).

    Examples
    --------
    >>> from tngraph.spec import load_spec
    >>> load_spec("tngraph: 1\\nname: p\\ninput_shape: [6]\\n"
    ...           "layers: [{type: linear, out_features: 3}, relu]\\n").layers[1].name
    'relu1'
    """
    problems: list[Problem] = []

    def at(path: DocPath, key: bool = False) -> Location | None:
        return doc.locate(path, key=key) if doc is not None else None

    seen: set[str] = set()
    shape = tuple(spec.input_shape) if spec.input_shape is not None else None
    for i, layer in enumerate(spec.layers or ()):
        path: DocPath = ("layers", i)
        label = f"layer '{layer.name}' ({layer.type})"
        if not IDENTIFIER_RE.match(layer.name):
            problems.append(Problem(f"layer name '{layer.name}' is not an identifier",
                                    at((*path, "name"))))
        elif layer.name in seen:
            problems.append(Problem(f"two layers are named '{layer.name}'", at((*path, "name")),
                                    "give every layer its own name"))
        seen.add(layer.name)
        if layer.type == NETWORK:
            before = len(problems)
            if layer.network is None:
                if layer.template is None:   # a failed template was reported already
                    problems.append(Problem(f"{label} needs 'network:' (raw or a template)",
                                            at(path)))
            else:
                for key in layer.options:
                    problems.append(Problem(f"unknown key '{key}' in {label}",
                                            at((*path, key), key=True),
                                            "a network layer takes type, name and network"))
                fixed = (*path, "network", "template") if layer.template is not None else None
                problems += validate_network(layer.network, doc, fixed_path=fixed,
                                             base=(*path, "network"))
            if len(problems) > before or shape is None or layer.network is None:
                shape = None
                continue
            try:
                shape = network_shape(layer.network, shape)
            except LayerError as exc:
                problems.append(Problem(f"{label}: {exc}", at((*path, "network")), exc.hint))
                shape = None
            continue
        if layer.network is not None or layer.template is not None:
            problems.append(Problem(f"'network:' belongs to layers of type network, not "
                                    f"{layer.type}", at((*path, "network"), key=True)))
        try:
            layer_type = get_layer(layer.type)
        except PluginError:
            problems.append(Problem(f"unknown layer type '{layer.type}'", at((*path, "type")),
                                    did_you_mean(layer.type, list_layers())))
            shape = None
            continue
        try:
            options = layer_type.options.model_validate(layer.options)
        except ValidationError as exc:
            problems += pydantic_problems(exc, layer_type.options, doc or Document({}), path,
                                          what=label)
            shape = None
            continue
        if shape is not None:
            try:
                shape = tuple(layer_type.shape(options, shape))
            except LayerError as exc:
                problems.append(Problem(f"{label}: {exc}", at(path), exc.hint))
                shape = None
    return problems + complex_layer_problems(spec, spec.plan.dtype, doc)


#: built-in layers whose torch kernels take real values only
REAL_ONLY_LAYERS = ("avgpool", "batchnorm", "dropout", "gelu", "log_softmax", "maxpool", "relu",
                    "softmax")
#: built-in layers without parameters that pass complex values through
_COMPLEX_PASS = ("feature_map", "flatten", "permute", "reshape", "sigmoid", "tanh")


def complex_layer_problems(spec: Spec, dtype: str, doc: Document | None = None) -> list[Problem]:
    """The layers of a pipeline computed in a complex ``dtype`` that cannot take its values.

    The data enter real and stay real through layers without parameters; the first network
    layer, or layer with parameters (``linear``, ``conv2d``, a plugin's), outputs complex
    values. After it, :data:`REAL_ONLY_LAYERS` (``relu``, ``batchnorm``, pooling, softmax, ...)
    and network layers whose data ports have a feature map (which maps real values) are
    problems, located at the layer.

    Examples
    --------
    >>> from tngraph.spec import load_spec
    >>> spec = load_spec("tngraph: 1\\nname: p\\ninput_shape: [6]\\n"
    ...                  "layers: [relu, {type: linear, out_features: 3}, relu]\\n")
    >>> [p.message.split(",")[0] for p in complex_layer_problems(spec, "complex64")]
    ["layer 'relu2' (relu) takes real values"]
    """
    if not dtype.startswith("complex") or not spec.layers:
        return []
    problems: list[Problem] = []
    hint = (f"after the first network or layer with parameters use layers that take complex "
            f"values: network (ports without feature_map), linear, conv2d, "
            f"{', '.join(_COMPLEX_PASS)}; or compute in a real dtype (plan.dtype, --dtype)")
    source: str | None = None          # the first layer whose output is complex
    for i, layer in enumerate(spec.layers):
        at = doc.locate(("layers", i, "type")) if doc is not None else None
        if layer.type == NETWORK:
            maps = [name for name, port in (layer.network.inputs.items() if layer.network
                                            else ()) if port.feature_map is not None]
            if source is not None and maps:
                problems.append(Problem(
                    f"network layer '{layer.name}' maps its input {maps[0]} with a feature map, "
                    f"which takes real values, but in a {dtype} pipeline it receives the complex "
                    f"output of layer '{source}'", at,
                    "put a feature_map layer before it and remove the port's feature_map; "
                    + hint))
            source = source or layer.name
        elif source is not None and layer.type in REAL_ONLY_LAYERS:
            problems.append(Problem(
                f"layer '{layer.name}' ({layer.type}) takes real values, but in a {dtype} "
                f"pipeline it receives the complex output of layer '{source}'", at, hint))
        elif source is None and layer.type not in REAL_ONLY_LAYERS + _COMPLEX_PASS:
            source = layer.name
    return problems


# ---------------------------------------------------------------------------------------------
# registered strategies: ``train.optimizer`` and ``distill.strategy``


def check_named(named: NamedOptions, get: Callable[[str], Any], kind: str,
                doc: Document | None, path: DocPath) -> list[Problem]:
    """Problems of a registered name with options (``train.optimizer``, ``distill.strategy``):
    an unknown name (``get`` raises PluginError, listing the valid ones), or options that the
    entry's ``options`` model refuses; located in ``doc`` where there is one, else one line
    (the value came from a flag)."""
    name_path = (*path, "name") if named.options else path
    try:
        entry = get(named.name)
    except PluginError as exc:
        return [Problem(str(exc), doc.locate(name_path) if doc is not None else None)]
    try:
        entry.options.model_validate(named.options)
    except ValidationError as exc:
        if doc is None:
            return [Problem(f"{kind} '{named.name}': {validation_message(exc, entry.options)}",
                            None)]
        return pydantic_problems(exc, entry.options, doc, path,
                                 what=f"options of {kind} '{named.name}'")
    return []


def check_optimizer(named: NamedOptions, doc: Document | None, path: DocPath) -> list[Problem]:
    """Problems of a ``train.optimizer`` entry (unknown name, bad options), located in ``doc``.

    The options are checked against the registered declaration's model: the strategy's
    implementation (and torch) is not imported.

    Examples
    --------
    >>> check_optimizer(NamedOptions(name="adam"), None, ("train", "optimizer"))
    []
    """
    return check_named(named, get_optimizer, "optimizer", doc, path)


def check_distiller(named: NamedOptions, doc: Document | None, path: DocPath) -> list[Problem]:
    """Problems of a ``distill.strategy`` entry (unknown name, bad options), located in ``doc``.

    Examples
    --------
    >>> [p.message for p in check_distiller(NamedOptions(name="respons"), None, ())]
    ["unknown distiller 'respons'; did you mean 'response'? valid: layer, response"]
    """
    return check_named(named, get_distiller, "distiller", doc, path)
