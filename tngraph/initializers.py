"""Initialisers of network tensors (registry ``initializer``), chosen per node by ``init:``.

An initialiser is ``fn(shape, legs, options, generator) -> torch.Tensor`` (float64 on the CPU;
the module casts it). Built-ins:

* ``norm`` (the default): zero-mean Gaussian whose ``std`` is chosen from the whole graph so
  that the network's output has about unit variance for inputs like the data, whatever its
  shape (chains, rings, trees, grids): see :func:`norm_scales`;
* ``normal``: zero-mean Gaussian, ``std`` option, default ``1/sqrt(largest leg dimension)``;
* ``uniform``: ``U(-a, a)``, ``a`` option (default as ``normal``'s std times sqrt(3));
* ``zeros``, ``ones``;
* ``identity``: for MPS-like cores with legs ``l`` and ``r``: the identity from l to r at index
  0 of the remaining legs (or on every value of the ``spread`` legs), plus ``std`` noise
  (default 1e-2), so a chain of such cores starts as a near-identity map; with
  ``rotation: p``, the slices of ``p`` are ``I`` and an antisymmetric orthogonal ``J``, so
  that a unit-norm feature vector turns every core into a rotation (see :func:`identity`).

This module does not import torch at import time. :func:`node_initializers` says which
initialiser, with which options, each node of a network gets (the compiler calls it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tngraph.errors import PluginError
from tngraph.kinds import (
    INITIALIZERS,
    Initializer,
    get_feature_map,
    get_initializer,
    list_initializers,
    register_initializer,
)
from tngraph.schema import InputSpec, NetworkSpec, NodeSpec

__all__ = ["COMPLEX", "COMPLEX_AWARE", "DEFAULT_INITIALIZER", "INITIALIZERS",
           "RAW_SECOND_MOMENT", "Initializer", "initial_value",
           "get_initializer", "identity", "list_initializers", "node_initializer",
           "node_initializers", "norm",
           "norm_scales", "normal", "ones", "port_second_moment", "register_initializer",
           "rotation_generator", "uniform", "zeros"]

#: the initialiser of a node without ``init:``
DEFAULT_INITIALIZER = "norm"
#: E[x^2] of one raw data value as :func:`norm_scales` assumes it: values uniform on [0, 1]
#: (pixels, or features scaled to [0, 1])
RAW_SECOND_MOMENT = 1.0 / 3.0


def _default_std(shape: Sequence[int]) -> float:
    return 1.0 / math.sqrt(max(shape)) if shape else 1.0


#: the option the built-in initialisers read to draw complex values (set by
#: :func:`initial_value` for complex networks; not a spec option)
COMPLEX = "complex"
#: initialisers that draw complex values themselves (any other is drawn real, then cast)
COMPLEX_AWARE = ("norm", "normal", "uniform", "identity", "zeros", "ones")


def _gaussian(shape: Sequence[int], std: float, generator: Any,
              options: Mapping[str, Any]) -> Any:
    """Zero-mean Gaussian noise of ``E|z|^2 = std^2``: real (float64), or with
    ``options[COMPLEX]`` circular complex (complex128; real and imaginary parts of variance
    ``std^2 / 2`` each)."""
    import torch

    real = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
    if not options.get(COMPLEX):
        return real * std
    imag = torch.randn(tuple(shape), generator=generator, dtype=torch.float64)
    return torch.complex(real, imag) * (std / math.sqrt(2))


def initial_value(name: str, shape: Sequence[int], legs: Sequence[str],
                  options: Mapping[str, Any], generator: Any, dtype: str = "float64") -> Any:
    """A node's initial tensor from initialiser ``name``, for a network of ``dtype``.

    For a complex dtype the built-in initialisers (:data:`COMPLEX_AWARE`) draw complex noise of
    the same ``E|z|^2`` as the real one (so :func:`norm_scales` holds for ``E|T|^2``); their
    deterministic parts (identity, product state, ones) stay real. Another initialiser's real
    values are cast, with zero imaginary part. The result is float64 or complex128 (the module
    casts it).

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> initial_value("normal", (2, 2), ("a", "b"), {}, g, "complex64").dtype
    torch.complex128
    """
    complex_ = dtype.startswith("complex")
    if complex_ and name in COMPLEX_AWARE:
        options = {**options, COMPLEX: True}
    value = get_initializer(name)(tuple(shape), tuple(legs), options, generator)
    if complex_ and not value.is_complex():
        value = value.to(dtype=value.dtype.to_complex())
    return value


def normal(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
            generator: Any) -> Any:

    std = float(options.get("std", _default_std(shape)))
    mean = float(options.get("mean", 0.0))
    return _gaussian(shape, std, generator, options) + mean


def uniform(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
             generator: Any) -> Any:
    import torch

    a = float(options.get("a", _default_std(shape) * math.sqrt(3)))
    value = (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1) * a
    if options.get(COMPLEX):     # real and imaginary parts each U(-a, a) / sqrt(2)
        imag = (torch.rand(tuple(shape), generator=generator, dtype=torch.float64) * 2 - 1) * a
        value = torch.complex(value, imag) / math.sqrt(2)
    return value


def zeros(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
           generator: Any) -> Any:
    import torch

    return torch.zeros(tuple(shape), dtype=torch.float64)


def ones(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
          generator: Any) -> Any:
    import torch

    return torch.ones(tuple(shape), dtype=torch.float64)


def norm(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
         generator: Any) -> Any:
    """Gaussian noise of ``std`` times ``gain`` (default 1) plus, with ``product: true``, the
    core of a product state: 1 where every leg is at index 0, except the ``open`` legs (the
    outputs), which take every value. ``std`` and ``product`` are chosen from the whole
    network by :func:`node_initializers`; called alone, ``std`` defaults to ``normal``'s.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> float(norm((400, 400), ("a", "b"), {"std": 0.5, "gain": 2.0}, g).std()) // 0.01 / 100
    1.0
    >>> norm((2, 3), ("p", "o"), {"std": 0.0, "product": True, "open": ["o"]}, g).abs()
    tensor([[1., 1., 1.],
            [0., 0., 0.]], dtype=torch.float64)
    """

    std = float(options.get("std", _default_std(shape))) * float(options.get("gain", 1.0))
    tensor = _gaussian(shape, std, generator, options)
    if options.get("product"):
        open_legs = set(options.get("open", ()))
        tensor[tuple(slice(None) if leg in open_legs else 0 for leg in legs)] += 1.0
    return tensor


def port_second_moment(port: InputSpec) -> float:
    """``E |v|^2`` of one copy of a data port's vector for data like the training data, taken
    as values uniform on [0, 1]: the feature map's mean squared norm over [0, 1] (``[1, x]``:
    4/3, ``trig``: 1, ``poly`` of degree 2: 1 + 1/3 + 1/5), or for raw values
    :data:`RAW_SECOND_MOMENT` times the number of values.

    Examples
    --------
    >>> round(port_second_moment(InputSpec(legs={"p": 2}, feature_map="multilinear")), 4)
    1.3333
    >>> round(port_second_moment(InputSpec(legs={"i": 4, "j": 3})), 4)
    4.0
    """
    if port.feature_map is None:
        return RAW_SECOND_MOMENT * math.prod(port.shape)
    import torch

    fmap = get_feature_map(port.feature_map.name)
    x = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    vectors = fmap.apply(x, port.feature_map.options).to(torch.float64)
    squares = (vectors ** 2).sum(-1)
    # the trapezoid rule: exact for the polynomial maps up to O(1/n^2)
    return float((squares[1:] + squares[:-1]).mean() / 2)


def norm_scales(network: NetworkSpec) -> dict[str, float]:
    """The ``std`` of each node that makes the network's output have about unit variance.

    For tensors with independent zero-mean entries of variance ``s_v^2``, the second moment of
    one output entry, for a fixed input, is exactly

    ``E[T^2] = prod_v s_v^2 * prod_{edges between tensors} D_e * prod_{ports} |v_p|^2``

    (``E[A[e] A[e']] = s^2 delta(e, e')`` makes both copies of every summed index equal, so each
    bond adds its dimension ``D_e``, and every bond to a data port adds that port's squared norm;
    open legs add nothing). A feature map ``[1, x]`` is not zero-mean, but only its squared norm
    enters, because the tensors are zero-mean. Over the data, ``|v_p|^2`` is replaced by its
    mean, :func:`port_second_moment`. Setting ``E[T^2] = 1`` fixes only the product of the
    variances; each node takes its local share, so that every partial contraction stays near
    unit scale too: ``s_v^2 = prod 1 / D_e^(1/k_e)`` over the bonds of ``v`` (a bond with ``k_e``
    tensor ends, 2 for an ordinary bond, gives each end its ``k_e``-th root), times
    ``1 / m_p`` for each data leg joined to ``v`` (``m_p`` the port's second moment, split
    evenly over the port's legs as a geometric share). Nodes that another initialiser sets
    are given a scale all the same (it is not used).

    Examples
    --------
    A ring of three cores, bond 4, each fed by a ``[1, x]`` port (second moment 4/3):
    ``s^2 = 1/4 * 3/4``.

    >>> ring = NetworkSpec(
    ...     nodes={k: {"legs": {"l": 4, "p": 2, "r": 4}} for k in "ABC"},
    ...     inputs={"x": {"legs": {"p": 2}, "stack": 3, "feature_map": "multilinear"}},
    ...     edges=[["A.r", "B.l"], ["B.r", "C.l"], ["C.r", "A.l"],
    ...            ["x[0].p", "A.p"], ["x[1].p", "B.p"], ["x[2].p", "C.p"]])
    >>> round(norm_scales(ring)["A"] ** 2, 6)
    0.1875
    """
    ports: dict[str, tuple[InputSpec, float]] = {}
    for name, port in network.inputs.items():
        moment = port_second_moment(port)
        for copy in port.copies(name):
            ports[copy] = (port, moment)
    log_var = dict.fromkeys(network.nodes, 0.0)
    for edge in network.edges:
        ends = [ref.rpartition(".") for ref in edge]
        cores = [node for node, _, _ in ends if node in network.nodes]
        fed = [(node, leg) for node, _, leg in ends if node in ports]
        if not cores:
            continue
        if fed:        # a data leg: its port's share of the second moment, to its tensor(s)
            port, moment = ports[fed[0][0]]
            share = math.log(moment) / len(port.legs)
            for node in cores:
                log_var[node] -= share / len(cores)
            continue
        node, _, leg = ends[0]
        dim = (network.nodes[node].legs if node in network.nodes else {}).get(leg, 1)
        for node in cores:
            log_var[node] -= math.log(dim) / len(cores)
    return {node: math.exp(value / 2) for node, value in log_var.items()}


def _product_scales(network: NetworkSpec) -> dict[str, float]:
    """Noise ``std`` of each node around a product state, so that the noise's first-order
    terms add up to unit variance (see :func:`node_initializers`)."""
    moments: dict[str, float] = {}
    for name, port in network.inputs.items():
        moment = port_second_moment(port)
        for copy in port.copies(name):
            moments[copy] = moment
    fed = dict.fromkeys(network.nodes, 1.0)
    for edge in network.edges:
        nodes = [ref.rpartition(".")[0] for ref in edge]
        for node in nodes:
            if node in fed:
                for other in nodes:
                    fed[node] *= moments.get(other, 1.0)
    return {node: 1.0 / math.sqrt(len(fed) * moment) for node, moment in fed.items()}


def _product_state(network: NetworkSpec) -> bool:
    """Every data port has a feature map with a leading 1 (and there is one)."""
    return bool(network.inputs) and all(
        port.feature_map is not None and get_feature_map(port.feature_map.name).leading_one
        for port in network.inputs.values())


def node_initializers(network: NetworkSpec) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each node's initialiser name and options: its ``init:`` as written, or
    :data:`DEFAULT_INITIALIZER`; ``norm`` gets its options from the graph, unless the spec sets
    ``std``:

    * a network fed only through feature maps with a leading 1 (``[1, x]``, ``poly``) starts
      near a product state: every core is 1 at index 0 of its legs (the constant component of
      every feature vector, so the state contracts to exactly 1 for every input; every value of
      an output leg, so every class starts equal) plus noise of std ``1 / sqrt(N m_v)``, ``N``
      the number of nodes and ``m_v`` the product of the second moments of the ports joined to
      node ``v``. The noise's first-order terms (one noisy core, the rest at the product state)
      then add up to unit variance, and the network starts as a sum of local linear models of
      its inputs, from which training grows the bonds' correlations. (With zero-mean cores the
      output's *mean* square is right but its typical value collapses on deep graphs: a
      product of many independent factors is log-normal, and a 63-node tree starts at logits of
      about 1e-3 and does not train.)
    * any other network (no ports, raw data, ``trig``) starts zero-mean, of std
      :func:`norm_scales`: unit output variance.

    Examples
    --------
    >>> net = NetworkSpec(nodes={"A": {"legs": {"i": 2, "a": 9}},
    ...                          "B": {"legs": {"a": 9}, "init": "ones"}},
    ...                   edges=[["A.a", "B.a"]], outputs=["A.i"])
    >>> node_initializers(net)
    {'A': ('norm', {'std': 0.5773502691896257}), 'B': ('ones', {})}
    """
    scales: dict[str, float] | None = None
    product = None
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    open_legs: dict[str, list[str]] = {}
    for ref in network.outputs:
        node, _, leg = ref.rpartition(".")
        open_legs.setdefault(node, []).append(leg)
    for name, node in network.nodes.items():
        init_name = node.init.name if node.init is not None else DEFAULT_INITIALIZER
        options = dict(node.init.options) if node.init is not None else {}
        if init_name == "norm" and "std" not in options:
            if product is None:
                product = _product_state(network)
            if scales is None:
                scales = _product_scales(network) if product else norm_scales(network)
            options["std"] = scales[name]
            if product:
                options.update(product=True, open=open_legs.get(name, []))
        out[name] = (init_name, options)
    return out


#: the last network :func:`node_initializer` resolved: (network, id(node) -> initialiser)
_RESOLVED: list[tuple[NetworkSpec, dict[int, tuple[str, dict[str, Any]]]]] = []


def node_initializer(network: NetworkSpec, node: NodeSpec) -> tuple[str, dict[str, Any]]:
    """:func:`node_initializers` of ``network`` for its node ``node`` (the object held in
    ``network.nodes``); the whole network is resolved once, on its first node.

    Examples
    --------
    >>> net = NetworkSpec(nodes={"A": {"legs": {"i": 4}}}, outputs=["A.i"])
    >>> node_initializer(net, net.nodes["A"])
    ('norm', {'std': 1.0})
    """
    entry = _RESOLVED[0] if _RESOLVED else None
    if entry is None or entry[0] is not network:
        inits = node_initializers(network)
        entry = (network, {id(n): inits[k] for k, n in network.nodes.items()})
        _RESOLVED[:] = [entry]         # (a local entry: safe when threads compile at once)
    return entry[1][id(node)]


def rotation_generator(n: int) -> Any:
    """The ``n x n`` antisymmetric matrix ``J`` with blocks ``[[0, -1], [1, 0]]`` on its diagonal.

    ``J^T = -J`` and ``J^T J = I`` on the ``2 * (n // 2)`` paired coordinates, so
    ``cos(t) I + sin(t) J`` is the rotation by ``t`` in every pair, exactly orthogonal for every
    ``t``. For odd ``n`` the last coordinate is unpaired: ``J`` is 0 there.

    Examples
    --------
    >>> rotation_generator(3)
    tensor([[ 0., -1.,  0.],
            [ 1.,  0.,  0.],
            [ 0.,  0.,  0.]], dtype=torch.float64)
    """
    import torch

    j = torch.zeros(n, n, dtype=torch.float64)
    pairs = torch.arange(0, n - 1, 2)
    j[pairs + 1, pairs] = 1.0
    j[pairs, pairs + 1] = -1.0
    return j


def _rotation_core(shape: Sequence[int], legs: Sequence[str], leg: str, sign: Any = 1) -> Any:
    """The noise-free core of ``identity`` with ``rotation: leg`` (see there)."""
    import torch


    if sign not in (1, -1) or isinstance(sign, bool):
        raise PluginError(f"initializer 'identity': sign must be 1 or -1, got {sign!r}")
    if leg not in legs:
        raise PluginError(f"initializer 'identity': rotation leg '{leg}' is not a leg of the "
                          f"node (legs: {', '.join(legs)})")
    rot = legs.index(leg)
    if shape[rot] != 2:
        raise PluginError(f"initializer 'identity': rotation leg '{leg}' must have dimension 2 "
                          f"(cos, sin), got {shape[rot]}")
    left = legs.index("l") if "l" in legs else None
    right = legs.index("r") if "r" in legs else None
    rows = shape[left] if left is not None else 1
    cols = shape[right] if right is not None else 1
    n = max(rows, cols)
    eye = torch.eye(n, dtype=torch.float64)
    j = rotation_generator(n) * sign
    others = [a for a in range(len(legs)) if a not in (left, right, rot)]
    count = math.prod(shape[a] for a in others)
    angles = torch.arange(count, dtype=torch.float64) * (math.pi / count)
    # one rotation per value of the remaining legs (the class label): R_k = rotation by pi k/K
    # slices M_p R_k with M_0 = I, M_1 = J: R_k = cos I + sin J and J R_k = cos J + sin J^2,
    # where J^2 = -1 on the paired coordinates (0 on an unpaired one); shape (2, K, n, n)
    cos, sin = angles.cos()[:, None, None], angles.sin()[:, None, None]
    j2 = -torch.diag((j != 0).any(dim=0).to(torch.float64))
    slices = torch.stack([cos * eye + sin * j, cos * j + sin * j2])
    # a missing bond keeps the bond's first coordinate: row 0 (no l) / column 0 (no r)
    core = slices[:, :, :rows, :cols] if left is not None else slices[:, :, :1, :cols]
    core = core.reshape(2, *(shape[a] for a in others), rows, cols)
    axes = [rot, *others, left, right]
    kept = [k for k, a in enumerate(axes) if a is not None]
    core = core.reshape([core.shape[k] for k in kept])
    order = [a for a in axes if a is not None]
    return core.permute([order.index(a) for a in range(len(legs))])


def identity(shape: Sequence[int], legs: Sequence[str], options: Mapping[str, Any],
              generator: Any) -> Any:
    """Near-identity core: ``T[l, ..., r] = delta(l, r) * [other legs at index 0] + noise``.

    For chains (MPS-like cores with legs ``l`` and ``r``) that start as a near-identity map.
    A core with only ``l`` (only ``r``) gets 1 at that leg's index 0. The noise is Gaussian of
    ``std`` (default 1e-2).

    ``spread: [p, ...]``
        The identity is laid on every value of those legs instead of the first: for feature
        maps without a constant component, so that every input value passes the chain on.
        ``cos + sin`` is 1 at x = 0 and x = 1 but up to sqrt(2) between, so a long chain on
        mid-range inputs grows (up to 2**(n/2) over n sites).
    ``rotation: p``
        For unit-norm feature maps of dimension 2 (``trig``): the two slices of leg ``p`` are
        ``I`` and ``J`` (:func:`rotation_generator`), so that the site matrix
        ``M(x) = cos(pi x/2) I + sin(pi x/2) J`` is the rotation by ``pi x/2`` in every pair of
        bond coordinates, exactly orthogonal: a chain of any length keeps unit norm. The
        remaining legs (the label ``o`` of a classifier), ``K`` values in all, give value ``k``
        the extra rotation ``R_k`` by ``pi k / K``: the slice at ``(p, k)`` is ``M_p R_k``. A
        core without ``l`` keeps row 0 of those matrices, one without ``r`` column 0, so that
        an open chain computes ``out_k = e0^T M(x1) ... R_k ... M(xn) e0 = cos(theta + pi k/K)``
        with ``theta = sum(pi x_i / 2)``: for ``K >= 2`` the output vector has norm
        ``sqrt(K / 2)`` for every input (without noise), and every class a different value. An
        odd bond dimension leaves one coordinate unpaired, where the site matrix is
        ``cos(pi x/2) <= 1``: that coordinate is not fed by the boundary cores (only noise
        reaches it) and never grows.
    ``sign: -1``
        With ``rotation``: ``J`` is replaced by ``-J = J^T`` (antisymmetric and orthogonal all
        the same), so every rotation, ``R_k`` included, turns the other way. The ``mps``
        template alternates the sign along the chain, so that
        ``theta = sum((-1)^i pi x_i / 2)``: equal neighbouring inputs cancel.

    Examples
    --------
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> core = identity((4, 2, 4), ("l", "p", "r"), {"rotation": "p", "std": 0.0}, g)
    >>> torch.equal(core[:, 0, :], torch.eye(4, dtype=torch.float64))
    True
    >>> torch.equal(core[:, 1, :], rotation_generator(4))
    True
    >>> m = 0.6 * core[:, 0, :] + 0.8 * core[:, 1, :]       # M(x) for phi(x) = [0.6, 0.8]
    >>> torch.allclose(m @ m.T, torch.eye(4, dtype=torch.float64))
    True
    >>> identity((2, 3), ("l", "r"), {"std": 0.0}, g).abs()
    tensor([[1., 0., 0.],
            [0., 1., 0.]], dtype=torch.float64)
    """
    import torch


    std = float(options.get("std", 1e-2))
    tensor = _gaussian(shape, std, generator, options)
    legs = list(legs)
    if options.get("rotation") is not None:
        if options.get("spread"):
            raise PluginError("initializer 'identity': use either 'rotation' or 'spread'")
        return tensor + _rotation_core(shape, legs, str(options["rotation"]),
                                       options.get("sign", 1))
    spread = [legs.index(leg) for leg in options.get("spread", ()) if leg in legs]
    left = legs.index("l") if "l" in legs else None
    right = legs.index("r") if "r" in legs else None
    index: list[Any] = [0] * len(shape)
    if left is not None and right is not None:
        n = min(shape[left], shape[right])
        diag = torch.arange(n)
        index[left] = diag
        index[right] = diag
    elif left is not None:
        index[left] = 0
    elif right is not None:
        index[right] = 0
    weight = 1.0
    for axis in spread:
        index[axis] = slice(None)
    if spread and left is not None and right is not None:
        # advanced indices (the diagonal) separated by slices: assign through a view per value
        for values in itertools.product(*(range(shape[a]) for a in spread)):
            spot = list(index)
            for axis, value in zip(spread, values):
                spot[axis] = value
            tensor[tuple(spot)] += weight
        return tensor
    tensor[tuple(index)] += weight
    return tensor


# the options each built-in reads (validation rejects others); a plugin may set ``.options``
normal.options = ("std", "mean")        # type: ignore[attr-defined]
norm.options = ("std", "gain", "product", "open")   # type: ignore[attr-defined]
uniform.options = ("a",)                # type: ignore[attr-defined]
zeros.options = ()                      # type: ignore[attr-defined]
ones.options = ()                       # type: ignore[attr-defined]
identity.options = ("std", "spread", "rotation", "sign")   # type: ignore[attr-defined]
