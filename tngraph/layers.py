"""Layers of a pipeline spec: shapes, parameter and FLOP counts, and their torch modules.

A spec can chain layers instead of declaring one network::

    input_shape: [64]                    # one example's shape, as the data provides it
    layers:
      - {type: reshape, shape: [1, 8, 8]}
      - {type: conv2d, out_channels: 8, kernel_size: 3, padding: 1}
      - relu                             # a bare name: a layer without options
      - {type: maxpool, kernel_size: 2}
      - flatten
      - {type: network, name: mps, network: {template: mps, ...}}   # any tensor network

Every layer type is a :class:`LayerType`: a pydantic model of its options, a pure shape function
(one example's shape in, out; problems raise :class:`LayerError` and are located in the spec),
parameter and FLOP counts for the cost report, and a ``build`` that makes the torch module (torch
is imported only there; the builds that need tngraph's own modules are deferred references to
:mod:`tngraph.layer_modules`). ``network`` layers are tensor networks (planned and compiled like a
whole spec); the others are registered in :data:`~tngraph.kinds.LAYERS` through the entry-point
group ``tngraph.layers``, the built-ins as well, so a plugin can add its own. This module does not
import torch.

Examples
--------
>>> infer_shape("conv2d", {"out_channels": 4, "kernel_size": 3, "padding": 1}, (1, 8, 8))
(4, 8, 8)
>>> infer_shape("maxpool", {"kernel_size": 2}, (4, 8, 8))
(4, 4, 4)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tngraph.errors import PluginError
from tngraph.graph import parameter_count
from tngraph.kinds import (
    LAYERS,
    NETWORK,
    LayerError,
    LayerType,
    Shape,
    get_feature_map,
    get_layer,
    list_layers,
    register_layer,
)
from tngraph.registry import Deferred
from tngraph.schema import NetworkSpec

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LAYERS", "NETWORK", "LayerError", "LayerSummary", "LayerType", "NoOptions", "get_layer",
    "infer_shape", "layer_options", "list_layers", "network_input_size", "network_shape",
    "register_layer", "summarize_layers",
]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(_Options):
    """A layer without options."""


# -- shapes -------------------------------------------------------------------------------------


def _dims(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")" if shape else "a scalar"


def _need_rank(name: str, shape: Shape, rank: int, what: str) -> None:
    if len(shape) != rank:
        raise LayerError(f"{name} expects {what} per example, got shape {_dims(shape)}",
                         "add a {type: reshape, shape: [...]} layer before it")


def _pooled(size: int, kernel: int, stride: int, padding: int, name: str) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise LayerError(f"kernel {kernel} does not fit an axis of size {size} "
                         f"(padding {padding})", "use a smaller kernel_size or more padding")
    return out


# -- options and types ---------------------------------------------------------------------------


class LinearOptions(_Options):
    """``linear``: ``y = x W^T + b`` over the last axis."""

    out_features: int = Field(gt=0)
    bias: bool = True


def _linear_shape(o: LinearOptions, s: Shape) -> Shape:
    if not s:
        raise LayerError("linear expects at least one axis per example, got a scalar")
    return (*s[:-1], o.out_features)


def _linear_build(o: LinearOptions, s: Shape) -> nn.Module:
    from torch import nn

    return nn.Linear(s[-1], o.out_features, bias=o.bias)


LINEAR = LayerType(
    "linear", "dense layer over the last axis (torch.nn.Linear)", LinearOptions, _linear_shape,
    _linear_build, params=lambda o, s: s[-1] * o.out_features + (o.out_features if o.bias else 0),
    flops=lambda o, s, out: 2 * math.prod(s) * o.out_features)


class Conv2dOptions(_Options):
    """``conv2d`` on ``(channels, height, width)`` examples."""

    out_channels: int = Field(gt=0)
    kernel_size: int = Field(gt=0)
    stride: int = Field(default=1, gt=0)
    padding: int = Field(default=0, ge=0)
    bias: bool = True


def _conv_shape(o: Conv2dOptions, s: Shape) -> Shape:
    _need_rank("conv2d", s, 3, "(channels, height, width)")
    return (o.out_channels,
            *(_pooled(n, o.kernel_size, o.stride, o.padding, "conv2d") for n in s[1:]))


def _conv_build(o: Conv2dOptions, s: Shape) -> nn.Module:
    from torch import nn

    return nn.Conv2d(s[0], o.out_channels, o.kernel_size, stride=o.stride, padding=o.padding,
                     bias=o.bias)


CONV2D = LayerType(
    "conv2d", "2-d convolution (torch.nn.Conv2d)", Conv2dOptions, _conv_shape, _conv_build,
    params=lambda o, s: s[0] * o.out_channels * o.kernel_size ** 2
    + (o.out_channels if o.bias else 0),
    flops=lambda o, s, out: 2 * s[0] * o.kernel_size ** 2 * math.prod(out))


class PoolOptions(_Options):
    """``maxpool`` / ``avgpool`` on ``(channels, height, width)`` examples."""

    kernel_size: int = Field(gt=0)
    #: default: the kernel size (non-overlapping windows)
    stride: int | None = Field(default=None, gt=0)
    padding: int = Field(default=0, ge=0)


def _pool_shape(name: str) -> Callable[[PoolOptions, Shape], Shape]:
    def shape(o: PoolOptions, s: Shape) -> Shape:
        _need_rank(name, s, 3, "(channels, height, width)")
        stride = o.stride or o.kernel_size
        return (s[0], *(_pooled(n, o.kernel_size, stride, o.padding, name) for n in s[1:]))
    return shape


def _pool_build(kind: str) -> Callable[[PoolOptions, Shape], nn.Module]:
    def build(o: PoolOptions, s: Shape) -> nn.Module:
        from torch import nn

        cls = nn.MaxPool2d if kind == "max" else nn.AvgPool2d
        return cls(o.kernel_size, stride=o.stride or o.kernel_size, padding=o.padding)
    return build


MAXPOOL = LayerType("maxpool", "2-d max pooling", PoolOptions, _pool_shape("maxpool"),
                    _pool_build("max"))
AVGPOOL = LayerType("avgpool", "2-d average pooling", PoolOptions, _pool_shape("avgpool"),
                    _pool_build("avg"))


class BatchNormOptions(_Options):
    """``batchnorm``: over channels of ``(C, H, W)`` examples, or features of ``(F,)``."""

    momentum: float = Field(default=0.1, gt=0, le=1)
    eps: float = Field(default=1e-5, gt=0)
    affine: bool = True


def _bn_shape(o: BatchNormOptions, s: Shape) -> Shape:
    if len(s) not in (1, 3):
        raise LayerError(f"batchnorm expects (features,) or (channels, height, width) per "
                         f"example, got shape {_dims(s)}", "flatten or reshape before it")
    return s


def _bn_build(o: BatchNormOptions, s: Shape) -> nn.Module:
    from torch import nn

    cls = nn.BatchNorm1d if len(s) == 1 else nn.BatchNorm2d
    return cls(s[0], eps=o.eps, momentum=o.momentum, affine=o.affine)


BATCHNORM = LayerType("batchnorm", "batch normalisation (1-d features or 2-d channels)",
                      BatchNormOptions, _bn_shape, _bn_build,
                      params=lambda o, s: 2 * s[0] if o.affine else 0,
                      flops=lambda o, s, out: 2 * math.prod(s))


class DropoutOptions(_Options):
    """``dropout``: zero entries with probability ``p`` while training."""

    p: float = Field(default=0.5, ge=0, lt=1)


DROPOUT = LayerType("dropout", "dropout while training", DropoutOptions, lambda o, s: s,
                    lambda o, s: __import__("torch").nn.Dropout(o.p))


def _activation(name: str, cls_name: str, description: str) -> LayerType:
    def build(o: NoOptions, s: Shape) -> nn.Module:
        from torch import nn

        return getattr(nn, cls_name)()
    return LayerType(name, description, NoOptions, lambda o, s: s, build)


class SoftmaxOptions(_Options):
    """``softmax`` / ``log_softmax`` over one axis of the example (default the last)."""

    dim: int = -1


def _softmax_shape(o: SoftmaxOptions, s: Shape) -> Shape:
    if not -len(s) <= o.dim < len(s):
        raise LayerError(f"no axis {o.dim} in examples of shape {_dims(s)}")
    return s


def _softmax_build(log: bool) -> Callable[[SoftmaxOptions, Shape], nn.Module]:
    def build(o: SoftmaxOptions, s: Shape) -> nn.Module:
        from torch import nn

        axis = o.dim if o.dim < 0 else o.dim + 1     # past the batch axis
        return nn.LogSoftmax(axis) if log else nn.Softmax(axis)
    return build


SOFTMAX = LayerType("softmax", "softmax over one axis", SoftmaxOptions, _softmax_shape,
                    _softmax_build(False), flops=lambda o, s, out: 3 * math.prod(out))
LOG_SOFTMAX = LayerType("log_softmax", "log-softmax over one axis", SoftmaxOptions,
                        _softmax_shape, _softmax_build(True),
                        flops=lambda o, s, out: 3 * math.prod(out))


FLATTEN = LayerType("flatten", "one axis per example", NoOptions, lambda o, s: (math.prod(s),),
                    Deferred("tngraph.layer_modules:build_flatten"), flops=lambda o, s, out: 0)


class ReshapeOptions(_Options):
    """``reshape`` one example (the batch axis stays); one entry may be -1."""

    shape: tuple[int, ...]


def reshape_shape(o: ReshapeOptions, s: Shape) -> Shape:
    """One example's shape after a ``reshape`` layer (its ``-1`` resolved)."""
    size = math.prod(s)
    if any(d == 0 or d < -1 for d in o.shape) or list(o.shape).count(-1) > 1:
        raise LayerError(f"invalid shape {list(o.shape)}",
                         "use positive sizes and at most one -1")
    known = math.prod(d for d in o.shape if d != -1)
    if -1 in o.shape:
        if size % known:
            raise LayerError(f"{size} entries per example do not fit shape "
                             f"{list(o.shape)}")
        return tuple(size // known if d == -1 else d for d in o.shape)
    if known != size:
        raise LayerError(f"shape {list(o.shape)} holds {known} entries but each example "
                         f"has {size} (shape {_dims(s)})")
    return tuple(o.shape)


RESHAPE = LayerType("reshape", "reshape each example", ReshapeOptions, reshape_shape,
                    Deferred("tngraph.layer_modules:build_reshape"), flops=lambda o, s, out: 0)


class PermuteOptions(_Options):
    """``permute`` the axes of one example (e.g. channels last: ``[1, 2, 0]``)."""

    dims: tuple[int, ...]


def _permute_shape(o: PermuteOptions, s: Shape) -> Shape:
    if sorted(o.dims) != list(range(len(s))):
        raise LayerError(f"dims {list(o.dims)} is not a permutation of the "
                         f"{len(s)} axes of shape {_dims(s)}")
    return tuple(s[d] for d in o.dims)


PERMUTE = LayerType("permute", "permute the axes of each example", PermuteOptions,
                    _permute_shape, Deferred("tngraph.layer_modules:build_permute"),
                    flops=lambda o, s, out: 0)


class FeatureMapOptions(_Options):
    """``feature_map``: map every entry ``x`` to a vector ``phi(x)`` (a new last axis)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    #: a registered feature map, ``trig`` or ``{name: poly, degree: 3}``
    map: Any


def feature_map_of(o: FeatureMapOptions) -> tuple[Any, dict[str, Any]]:
    """The feature map a ``feature_map`` layer names, and its options (LayerError if invalid)."""
    value = o.map
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, options = value["name"], {k: v for k, v in value.items() if k != "name"}
    else:
        raise LayerError(f"'map' must be a name or {{name: ..., option: ...}}, "
                         f"got {value!r}", "for example map: trig")
    try:
        fmap = get_feature_map(name)
        fmap.check_options(options)
        fmap.dim(options)
    except PluginError as exc:
        raise LayerError(str(exc)) from None
    return fmap, options


def _fmap_shape(o: FeatureMapOptions, s: Shape) -> Shape:
    fmap, options = feature_map_of(o)
    return (*s, fmap.dim(options))


FEATURE_MAP = LayerType("feature_map", "local feature map phi(x) of every entry (new last axis)",
                        FeatureMapOptions, _fmap_shape,
                        Deferred("tngraph.layer_modules:build_feature_map"))


RELU = _activation("relu", "ReLU", "max(x, 0)")
TANH = _activation("tanh", "Tanh", "tanh(x)")
SIGMOID = _activation("sigmoid", "Sigmoid", "1 / (1 + exp(-x)), into (0, 1)")
GELU = _activation("gelu", "GELU", "Gaussian error linear unit")


def layer_options(name: str, options: dict[str, Any]) -> BaseModel:
    """Validated options of a layer of type ``name`` (raises ValidationError / PluginError)."""
    return get_layer(name).options.model_validate(options)


def infer_shape(name: str, options: dict[str, Any], in_shape: Shape) -> Shape:
    """One example's output shape of a (non-network) layer.

    Examples
    --------
    >>> infer_shape("feature_map", {"map": "multilinear"}, (16,))
    (16, 2)
    """
    layer = get_layer(name)
    try:
        validated = layer.options.model_validate(options)
    except ValidationError as exc:
        raise LayerError(f"{name}: {exc.errors()[0]['msg']}") from None
    return layer.shape(validated, in_shape)


def network_input_size(network: NetworkSpec) -> int:
    """Entries per example that a network's single data port reads."""
    ((_, port),) = network.inputs.items()
    per_copy = 1 if port.feature_map is not None else math.prod(port.legs.values())
    return (port.stack or 1) * per_copy


def network_shape(network: NetworkSpec, in_shape: Shape) -> Shape:
    """One example's output shape of a ``network`` layer fed ``in_shape`` examples.

    Examples
    --------
    >>> net = NetworkSpec(nodes={"W": {"legs": {"i": 6, "o": 3}}}, inputs={"x": {"legs": {"i": 6}}},
    ...                   edges=[["x.i", "W.i"]], outputs=["W.o"])
    >>> network_shape(net, (2, 3))
    (3,)
    """
    if len(network.inputs) != 1:
        raise LayerError(f"a network layer reads exactly one data port, this one declares "
                         f"{len(network.inputs)}",
                         "declare one port under inputs: (a template's 'input: x')")
    need = network_input_size(network)
    if need != math.prod(in_shape):
        raise LayerError(f"the network reads {need} entries per example but receives shape "
                         f"{_dims(in_shape)} ({math.prod(in_shape)} entries)",
                         "resize the network (sites, in_shape, stack) or reshape before it")
    dims = _output_dims(network)
    return (math.prod(dims),) if network.flatten_outputs else dims


def _output_dims(network: NetworkSpec) -> Shape:
    dims = []
    for ref in network.outputs:
        node, leg = ref.split(".")
        dims.append(network.nodes[node].legs[leg])
    return tuple(dims)



@dataclass(frozen=True)
class LayerSummary:
    """One layer of a validated pipeline: its output shape (one example), parameters, and FLOPs
    per example (``None`` for networks: that needs their plan)."""

    name: str
    type: str
    shape: Shape
    params: int
    flops: float | None


def summarize_layers(spec: Any) -> list[LayerSummary]:
    """Shapes, parameters and FLOPs of every layer of a (validated) pipeline spec.

    Examples
    --------
    >>> from tngraph.spec import load_spec
    >>> spec = load_spec("tngraph: 1\\nname: p\\ninput_shape: [6]\\n"
    ...                  "layers: [{type: linear, out_features: 3}, relu]\\n")
    >>> [(s.name, s.shape, s.params) for s in summarize_layers(spec)]
    [('linear0', (3,), 21), ('relu1', (3,), 0)]
    """
    out: list[LayerSummary] = []
    shape: Shape = tuple(spec.input_shape or ())
    for layer in spec.layers or ():
        if layer.type == NETWORK:
            new = network_shape(layer.network, shape)
            params = parameter_count(spec.network_spec(layer.name))   # bias included
            flops = None
        else:
            layer_type = get_layer(layer.type)
            options = layer_type.options.model_validate(layer.options)
            new = tuple(layer_type.shape(options, shape))
            params = layer_type.params(options, shape)
            flops = layer_type.flops(options, shape, new)
        out.append(LayerSummary(layer.name, layer.type, new, params, flops))
        shape = new
    return out
