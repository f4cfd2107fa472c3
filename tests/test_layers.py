"""Layer types: inferred shapes and parameter counts equal what the built torch modules do."""

from __future__ import annotations

import math

import pytest
import torch

from tngraph.errors import PluginError
from tngraph.layers import (
    LAYERS,
    LayerError,
    LayerType,
    NoOptions,
    get_layer,
    infer_shape,
    list_layers,
    register_layer,
)

CASES = [
    ("linear", {"out_features": 7}, (5,)),
    ("linear", {"out_features": 3, "bias": False}, (4, 6)),
    ("conv2d", {"out_channels": 4, "kernel_size": 3}, (2, 9, 7)),
    ("conv2d", {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}, (1, 8, 8)),
    ("maxpool", {"kernel_size": 2}, (3, 8, 6)),
    ("avgpool", {"kernel_size": 3, "stride": 1, "padding": 1}, (3, 5, 5)),
    ("batchnorm", {}, (6,)),
    ("batchnorm", {"affine": False}, (3, 4, 4)),
    ("dropout", {"p": 0.3}, (10,)),
    ("flatten", {}, (2, 3, 4)),
    ("reshape", {"shape": [4, -1]}, (2, 3, 4)),
    ("permute", {"dims": [2, 0, 1]}, (2, 3, 4)),
    ("feature_map", {"map": "multilinear"}, (5,)),
    ("feature_map", {"map": {"name": "poly", "degree": 3}}, (2, 3)),
    ("softmax", {}, (10,)),
    ("log_softmax", {"dim": 0}, (4, 3)),
    ("relu", {}, (3, 2)),
    ("tanh", {}, (3,)),
    ("sigmoid", {}, (3,)),
    ("gelu", {}, (3,)),
]


@pytest.mark.parametrize(("name", "options", "shape"), CASES,
                         ids=[f"{c[0]}-{k}" for k, c in enumerate(CASES)])
def test_shape_and_params_match_the_torch_module(name: str, options: dict,
                                                 shape: tuple[int, ...]) -> None:
    layer = get_layer(name)
    validated = layer.options.model_validate(options)
    module = layer.build(validated, shape).eval()
    out = module(torch.rand(2, *shape))
    assert tuple(out.shape) == (2, *infer_shape(name, options, shape))
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert layer.params(validated, shape) == trainable
    assert layer.flops(validated, shape, tuple(out.shape[1:])) >= 0


def test_softmax_is_over_the_example_axis_not_the_batch() -> None:
    module = get_layer("softmax").build(get_layer("softmax").options(dim=0), (4,))
    out = module(torch.rand(3, 4))
    torch.testing.assert_close(out.sum(1), torch.ones(3))


def test_linear_flops_count_multiply_and_add() -> None:
    layer = get_layer("linear")
    assert layer.flops(layer.options(out_features=3), (5,), (3,)) == 2 * 5 * 3


@pytest.mark.parametrize(("name", "options", "shape", "message"), [
    ("conv2d", {"out_channels": 2, "kernel_size": 3}, (64,), "conv2d expects (channels, height"),
    ("conv2d", {"out_channels": 2, "kernel_size": 5}, (1, 3, 3), "kernel 5 does not fit"),
    ("maxpool", {"kernel_size": 2}, (4, 4), "maxpool expects"),
    ("reshape", {"shape": [5, -1]}, (12,), "12 entries per example do not fit"),
    ("reshape", {"shape": [5, 3]}, (12,), "holds 15 entries but each example has 12"),
    ("reshape", {"shape": [-1, -1]}, (12,), "invalid shape"),
    ("permute", {"dims": [0, 0]}, (2, 3), "not a permutation"),
    ("batchnorm", {}, (2, 3), "batchnorm expects"),
    ("softmax", {"dim": 2}, (3,), "no axis 2"),
    ("feature_map", {"map": "sine"}, (3,), "unknown feature map 'sine'"),
    ("feature_map", {"map": {"name": "poly", "degree": 0}}, (3,), "integer degree >= 1"),
    ("linear", {"out_features": 3}, (), "at least one axis"),
])
def test_shape_problems_are_layer_errors(name: str, options: dict, shape: tuple[int, ...],
                                         message: str) -> None:
    with pytest.raises(LayerError, match=message.replace("(", r"\(")):
        infer_shape(name, options, shape)


def test_registry_lists_network_and_refuses_duplicates() -> None:
    assert "network" in list_layers() and "conv2d" in list_layers()
    with pytest.raises(PluginError, match="already registered"):
        register_layer(get_layer("relu"))
    with pytest.raises(PluginError, match="reserved"):
        register_layer(LayerType("network", "", NoOptions, lambda o, s: s, lambda o, s: None))
    with pytest.raises(PluginError, match="did you mean 'conv2d'"):
        get_layer("conv2")


def test_a_registered_layer_is_usable_from_a_spec() -> None:
    import tngraph

    square = LayerType("square_test", "x^2", NoOptions, lambda o, s: s,
                       lambda o, s: _Square(), flops=lambda o, s, out: math.prod(s))
    LAYERS.register(square.name, square)
    try:
        pipe = tngraph.compile("tngraph: 1\nname: p\ninput_shape: [3]\nlayers: [square_test]\n")
        torch.testing.assert_close(pipe(torch.tensor([[1.0, 2.0, 3.0]])),
                                   torch.tensor([[1.0, 4.0, 9.0]]))
    finally:
        LAYERS._entries.pop(square.name)
        LAYERS._info.pop(square.name)


class _Square(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x
