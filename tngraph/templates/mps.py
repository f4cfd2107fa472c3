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
    with data inputs) when ``input`` is given, else ``normal``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from tngraph.templates import Template, TemplateError, TemplateOptions


class MPSOptions(TemplateOptions):
    sites: int = Field(gt=0)
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


def _has_constant_feature(feature_map: str | dict[str, Any] | None) -> bool:
    """True for no feature map (raw data) and for maps whose first component is 1."""
    if feature_map is None:
        return True
    from tngraph.errors import PluginError
    from tngraph.featuremaps import get_feature_map

    name = feature_map if isinstance(feature_map, str) else feature_map.get("name", "")
    try:
        return get_feature_map(str(name)).leading_one
    except PluginError:
        return True   # unknown names are reported by validation


def expand(o: MPSOptions) -> dict[str, Any]:
    periodic = o.boundary == "periodic"
    nodes, edges = chain_nodes("A", o.sites, o.bond_dim, periodic, {"p": o.phys_dim})
    outputs: list[str] = []
    site = None
    if o.output_dim is not None:
        site = o.sites // 2 if o.output_site is None else o.output_site
        if not 0 <= site < o.sites:
            raise TemplateError(f"output_site {site} is outside the chain (0..{o.sites - 1})",
                                "output_site")
        nodes[f"A{site}"]["legs"]["o"] = o.output_dim
    elif o.output_site is not None:
        raise TemplateError("output_site needs output_dim", "output_site",
                            "set output_dim, e.g. the number of classes")
    if o.feature_map is not None and o.input is None:
        raise TemplateError("feature_map needs input (the data port it applies to)",
                            "feature_map", "add input: x")
    init = o.init if o.init is not None else ("identity" if o.input else "normal")
    if o.init is None and o.input and not _has_constant_feature(o.feature_map):
        # no constant component to carry the identity: spread it over every feature value
        init = {"name": "identity", "spread": ["p"]}
    for node in nodes.values():
        node["init"] = init
    network: dict[str, Any] = {"nodes": nodes}
    if o.input is not None:
        port: dict[str, Any] = {"legs": {"p": o.phys_dim}, "stack": o.sites}
        if o.feature_map is not None:
            port["feature_map"] = o.feature_map
        network["inputs"] = {o.input: port}
        edges += [[f"{o.input}[{k}].p", f"A{k}.p"] for k in range(o.sites)]
    else:
        outputs += [f"A{k}.p" for k in range(o.sites)]
    if site is not None:
        outputs.append(f"A{site}.o")
    network["edges"] = edges
    network["outputs"] = outputs
    return network


TEMPLATE = Template("mps", MPSOptions, expand, "matrix product state / tensor train")
