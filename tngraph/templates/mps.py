"""``mps``: a matrix product state (tensor train) of ``sites`` cores ``A0 ... A{n-1}``.

Core ``Ak`` has legs ``l`` (bond to A{k-1}), ``p`` (physical), ``r`` (bond to A{k+1}); the ends of
an open chain lack ``l`` / ``r``. Options:

``sites``, ``phys_dim``, ``bond_dim``
    Chain length, physical and bond dimension.
``boundary``
    ``open`` (default) or ``periodic`` (A{n-1}.r joins A0.l).
``output_dim``, ``output_site``
    Add an open leg ``o`` of this dimension at ``output_site`` (default: the middle), e.g. the
    class label of an MPS classifier.
``input``
    Name of a stacked data port (``stack: sites``) that feeds every physical leg; without it the
    physical legs are open outputs.
``feature_map``
    Feature map of that data port (``multilinear``, ``trig``, ``poly``, ...).
``init``
    Initialiser of the cores; default ``identity`` (near-identity chain, stable for long chains
    with data inputs) when ``input`` is given, else ``normal``. The identity follows the feature
    map: on its constant component for maps with a leading 1 (``multilinear``, ``poly``, raw
    data); for unit-norm maps of dimension 2 (``trig``) ``{name: identity, rotation: p}``,
    every core a rotation, so that the chain keeps unit norm at any length (bond dimension at
    least 2), turning the other way on odd sites (``sign: -1``); otherwise spread over every
    feature value (``spread: [p]``).

Examples
--------
>>> nodes = expand(MPSOptions(sites=3, phys_dim=2, bond_dim=4, input="x",
...                           feature_map="trig"))["nodes"]
>>> nodes["A0"]["init"], nodes["A1"]["init"]
({'name': 'identity', 'rotation': 'p'}, {'name': 'identity', 'rotation': 'p', 'sign': -1})
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tngraph.errors import PluginError
from tngraph.kinds import Template, TemplateError, TemplateOptions, get_feature_map
from tngraph.schema import MAX_SITES


class MPSOptions(TemplateOptions):
    sites: int = Field(gt=0, le=MAX_SITES)
    phys_dim: int = Field(gt=0)
    bond_dim: int = Field(gt=0)
    boundary: Literal["open", "periodic"] = "open"
    output_dim: int | None = Field(default=None, gt=0)
    output_site: int | None = None
    input: str | None = None
    feature_map: str | dict[str, Any] | None = None
    init: str | dict[str, Any] | None = None


def chain_nodes(prefix: str, n: int, bond: int, periodic: bool,
                site_legs: dict[str, int]) -> tuple[dict[str, dict], list[list[str]]]:
    """Nodes ``prefix0..prefix{n-1}`` with legs l, *site_legs, r and the bond edges between them."""
    nodes: dict[str, dict] = {}
    edges: list[list[str]] = []
    for k in range(n):
        legs: dict[str, int] = {}
        if periodic or k > 0:
            legs["l"] = bond
        legs.update(site_legs)
        if periodic or k < n - 1:
            legs["r"] = bond
        nodes[f"{prefix}{k}"] = {"legs": legs}
    for k in range(n - 1):
        edges.append([f"{prefix}{k}.r", f"{prefix}{k + 1}.l"])
    if periodic:
        edges.append([f"{prefix}{n - 1}.r", f"{prefix}0.l"])
    return nodes, edges


def _feature_kind(feature_map: str | dict[str, Any] | None) -> str:
    """``"constant"`` for no feature map (raw data), for maps whose first component is 1 and
    for unknown names (reported by validation); ``"unit"`` for unit-norm maps; else ``"other"``.
    """
    if feature_map is None:
        return "constant"
    name = feature_map if isinstance(feature_map, str) else feature_map.get("name", "")
    try:
        fmap = get_feature_map(str(name))
    except PluginError:
        return "constant"
    if fmap.leading_one:
        return "constant"
    return "unit" if fmap.unit_norm else "other"


def default_init(o: MPSOptions, site: int = 0) -> str | dict[str, Any]:
    """The initialiser of core ``A{site}`` when ``init`` is not given (see the module docstring).

    For a unit-norm map the sites alternate the direction of their rotation (``sign: -1`` on
    odd sites): neighbouring inputs of equal value cancel, so that a blank or evenly lit stretch
    of the chain stays at the identity and the starting function varies with the differences
    between neighbours rather than with the running sum of all inputs.

    Examples
    --------
    >>> default_init(MPSOptions(sites=4, phys_dim=2, bond_dim=3, input="x"))
    'identity'
    >>> default_init(MPSOptions(sites=4, phys_dim=2, bond_dim=3))
    'normal'
    >>> default_init(MPSOptions(sites=4, phys_dim=2, bond_dim=3, input="x", feature_map="trig"),
    ...              site=1)
    {'name': 'identity', 'rotation': 'p', 'sign': -1}
    """
    if o.init is not None:
        return o.init
    if not o.input:
        return "normal"
    kind = _feature_kind(o.feature_map)
    if kind == "constant":
        return "identity"
    if kind == "unit" and o.phys_dim == 2 and o.bond_dim >= 2:
        # |phi(x)| = 1: slices I and +-J make every site matrix a rotation (norm-preserving)
        if site % 2:
            return {"name": "identity", "rotation": "p", "sign": -1}
        return {"name": "identity", "rotation": "p"}
    # no constant component to carry the identity: spread it over every feature value
    return {"name": "identity", "spread": ["p"]}


def expand(o: MPSOptions) -> dict[str, Any]:
    periodic = o.boundary == "periodic"
    nodes, edges = chain_nodes("A", o.sites, o.bond_dim, periodic, {"p": o.phys_dim})
    outputs: list[str] = []
    site = label_site(nodes, "A", o.sites, o.output_dim, o.output_site, "chain")
    if o.feature_map is not None and o.input is None:
        raise TemplateError("feature_map needs input (the data port it applies to)",
                            "feature_map", "add input: x")
    for k in range(o.sites):
        nodes[f"A{k}"]["init"] = default_init(o, k)
    network: dict[str, Any] = {"nodes": nodes}
    feed_sites(network, edges, outputs, "A", o.sites, o.phys_dim, o.input, o.feature_map)
    if site is not None:
        outputs.append(f"A{site}.o")
    network["edges"] = edges
    network["outputs"] = outputs
    return network


def label_site(nodes: dict[str, Any], prefix: str, sites: int, output_dim: int | None,
               output_site: int | None, shape: str) -> int | None:
    """Give node ``{prefix}{site}`` the label leg ``o`` of ``output_dim`` (the middle site
    unless ``output_site`` says which) and return the site; None without ``output_dim``.

    Raises
    ------
    TemplateError
        ``output_site`` outside the ``shape`` (chain, ring), or given without ``output_dim``.
    """
    if output_dim is None:
        if output_site is not None:
            raise TemplateError("output_site needs output_dim", "output_site",
                                "set output_dim, e.g. the number of classes")
        return None
    site = sites // 2 if output_site is None else output_site
    if not 0 <= site < sites:
        raise TemplateError(f"output_site {site} is outside the {shape} (0..{sites - 1})",
                            "output_site")
    nodes[f"{prefix}{site}"]["legs"]["o"] = output_dim
    return site


def feed_sites(network: dict[str, Any], edges: list[list[str]], outputs: list[str],
               prefix: str, sites: int, phys_dim: int, port: str | None,
               feature_map: Any = None) -> None:
    """Join leg ``p`` of the nodes ``{prefix}0 .. {prefix}{sites-1}`` to copy ``k`` of one
    stacked data port ``port`` (through ``feature_map``), or, without a port, list them as
    open ``outputs``: the physical legs of a chain or ring of sites.

    >>> network, edges, outputs = {}, [], []
    >>> feed_sites(network, edges, outputs, "A", 2, 2, "x", "multilinear")
    >>> network["inputs"]
    {'x': {'legs': {'p': 2}, 'stack': 2, 'feature_map': 'multilinear'}}
    >>> edges
    [['x[0].p', 'A0.p'], ['x[1].p', 'A1.p']]
    """
    if port is None:
        outputs += [f"{prefix}{k}.p" for k in range(sites)]
        return
    spec: dict[str, Any] = {"legs": {"p": phys_dim}, "stack": sites}
    if feature_map is not None:
        spec["feature_map"] = feature_map
    network["inputs"] = {port: spec}
    edges += [[f"{port}[{k}].p", f"{prefix}{k}.p"] for k in range(sites)]


TEMPLATE = Template("mps", MPSOptions, expand, "matrix product state / tensor train")
