"""TNModule: autograd, devices and dtypes, state dicts, inputs, layouts, feature maps."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import DEVICES, ROOT, TETRA, assert_matches, dense_oracle, random_inputs, randomize
from torch.func import functional_call

import tngraph
from tngraph.errors import CompileError

RING3 = str(ROOT / "models/ring3.yaml")

#: two data ports (y is stacked), an open leg and a bias
TWO_PORTS = """
tngraph: 1
name: two_ports
network:
  nodes:
    A: {legs: {p: 3, a: 2, o: 4}}
    B: {legs: {a: 2, q0: 2, q1: 2}}
  inputs:
    x: {legs: {p: 3}}
    y: {legs: {q: 2}, stack: 2}
  edges: [[x.p, A.p], [A.a, B.a], ["y[0].q", B.q0], ["y[1].q", B.q1]]
  outputs: [A.o]
  bias: true
"""


def _mps(feature_map: str, phys_dim: int = 2, sites: int = 5) -> str:
    return f"""
tngraph: 1
name: mps_{sites}
network: {{template: mps, sites: {sites}, phys_dim: {phys_dim}, bond_dim: 3, input: x,
          feature_map: {feature_map}, output_dim: 3, init: normal}}
"""


def _two_ports(**options: object) -> tngraph.TNModule:
    module = tngraph.compile(TWO_PORTS, dtype="float64", cache=False, **options)
    randomize(module, seed=1)  # the bias starts at zero: make it count
    return module


# -- autograd --------------------------------------------------------------------------------


def test_gradients_match_finite_differences() -> None:
    module = _two_ports()
    names = [name for name, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())
    inputs = random_inputs(module, 2, seed=4)
    x = inputs["x"].clone().requires_grad_(True)

    def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, values)), (x, inputs["y"]))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_gradients_match_finite_differences_with_feature_map() -> None:
    module = tngraph.compile(_mps("trig", sites=3), dtype="float64", cache=False)
    names = [name for name, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())
    x = random_inputs(module, 2, seed=5)["x"].requires_grad_(True)

    def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return functional_call(module, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_sliced_module_gradients_match_unsliced() -> None:
    free = tngraph.compile(TETRA, dtype="float64", cache=False)
    sliced = tngraph.compile(TETRA, dtype="float64", cache=False, memory_limit="16KiB")
    assert sliced.plan.n_slices > 1
    for m in (free, sliced):
        m().pow(2).sum().backward()
    for name, p in free.named_parameters():
        torch.testing.assert_close(dict(sliced.named_parameters())[name].grad, p.grad)


# -- dtype, device, state ------------------------------------------------------------------


def test_double_and_to_cpu() -> None:
    module = tngraph.compile(TWO_PORTS, cache=False)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    inputs = random_inputs(module, 3)
    assert module(**inputs).dtype == torch.float32
    module = module.double().to("cpu")
    assert all(p.dtype == torch.float64 for p in module.parameters())
    out = module(**inputs)
    assert out.dtype == torch.float64 and out.device.type == "cpu"
    assert_matches(out, dense_oracle(module, inputs))


@pytest.mark.parametrize("device", DEVICES)
def test_oracle_on_device(device: str) -> None:
    module = tngraph.compile(_mps("multilinear"), dtype="float64", cache=False).to(device)
    inputs = {k: v.to(device) for k, v in random_inputs(module, 4).items()}
    out = module(**inputs)
    assert out.device.type == device
    assert_matches(out, dense_oracle(module, inputs))


def test_numpy_and_float32_inputs_are_cast() -> None:
    module = tngraph.compile(_mps("multilinear"), dtype="float64", cache=False)
    x = random_inputs(module, 2)["x"]
    assert_matches(module(x.numpy()), dense_oracle(module, {"x": x}))
    assert_matches(module(x.float()), dense_oracle(module, {"x": x.float()}))


def test_list_inputs_keep_float64_precision() -> None:
    module = tngraph.compile(_mps("multilinear"), dtype="float64", cache=False)
    x = random_inputs(module, 2)["x"]
    assert_matches(module(x.tolist()), dense_oracle(module, {"x": x}))


def test_state_dict_keys_and_round_trip() -> None:
    a = _two_ports(seed=0)
    assert set(a.state_dict()) == {"tensors.A", "tensors.B", "bias"}
    ring = tngraph.compile(RING3, cache=False)
    assert set(ring.state_dict()) == {"tensors.A", "tensors.B", "tensors.C"}
    assert ring.bias is None
    b = tngraph.compile(TWO_PORTS, dtype="float64", cache=False, seed=7)
    inputs = random_inputs(a, 3)
    assert not torch.allclose(a(**inputs), b(**inputs))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(**inputs), b(**inputs), rtol=0, atol=0)


def test_seed_reproducible_and_distinct() -> None:
    first, second, other = (tngraph.compile(RING3, cache=False, seed=s) for s in (1, 1, 2))
    torch.testing.assert_close(first(), second(), rtol=0, atol=0)
    assert not torch.allclose(first(), other())


@pytest.mark.parametrize(("node", "shape"), [("A", (3, 5, 2)), ("B", (5, 4, 6)),
                                             ("C", (6, 3, 2))])
def test_tensor_shapes_follow_declared_leg_order(node: str, shape: tuple[int, ...]) -> None:
    module = tngraph.compile(RING3, cache=False)
    assert tuple(module.tensors[node].shape) == shape


def test_ring3_by_hand() -> None:
    """ring3's result written out as an einsum over the declared leg orders."""
    module = tngraph.compile(RING3, dtype="float64", cache=False)
    t = module.tensors
    expected = torch.einsum("iac,ajb,bkc->ijk", t["A"], t["B"], t["C"])
    torch.testing.assert_close(module(), expected)


def test_parameters_are_leaves_of_the_right_dtype() -> None:
    module = tngraph.compile(RING3, cache=False, dtype="float64")
    assert all(p.is_leaf and p.requires_grad and p.dtype == torch.float64
               for p in module.parameters())
    assert isinstance(module, torch.nn.Module)
    assert "ring3" in repr(module)


# -- inputs ----------------------------------------------------------------------------------


def test_inputs_positional_and_named_agree() -> None:
    module = _two_ports()
    inputs = random_inputs(module, 3)
    x, y = inputs["x"], inputs["y"]
    assert module.input_names == ["x", "y"]
    expected = dense_oracle(module, inputs)
    assert_matches(module(x, y), expected)
    assert_matches(module(x=x, y=y), expected)
    assert_matches(module(y=y, x=x), expected)
    assert_matches(module(x, y=y), expected)
    assert tuple(module(x, y).shape) == (3, 4)


def test_input_flat_or_shaped() -> None:
    module = _two_ports()
    inputs = random_inputs(module, 3)
    flat = {"x": inputs["x"], "y": inputs["y"].reshape(3, 4)}
    torch.testing.assert_close(module(**flat), module(**inputs))


@pytest.mark.parametrize(("args", "kwargs", "needle"), [
    ((torch.rand(3, 4), torch.rand(3, 2, 2)), {}, "'x'"),          # x: 4 entries, wants 3
    ((torch.rand(3, 3), torch.rand(3, 2, 3)), {}, "'y'"),          # y: 6 entries, wants 4
    ((torch.rand(3, 3),), {"z": torch.rand(3, 2, 2)}, "'z'"),      # unknown name
    ((torch.rand(3, 3),), {}, "y"),                                # missing
    ((torch.rand(3, 3), torch.rand(3, 2, 2), torch.rand(3)), {}, "x, y"),  # too many
    ((torch.rand(3, 3), torch.rand(3, 2, 2)), {"x": torch.rand(3, 3)}, "'x'"),  # twice
    ((torch.rand(3, 3), torch.rand(2, 2, 2)), {}, "'y'"),          # batch sizes differ
    ((torch.tensor(1.0), torch.rand(3, 2, 2)), {}, "'x'"),         # no batch axis
])
def test_wrong_inputs_raise_compile_error(args: tuple, kwargs: dict, needle: str) -> None:
    module = _two_ports()
    with pytest.raises(CompileError) as info:
        module(*args, **kwargs)
    assert needle in str(info.value)


def test_network_without_inputs_rejects_data() -> None:
    module = tngraph.compile(RING3, cache=False)
    with pytest.raises(CompileError, match="none"):
        module(torch.rand(2, 3))
    with pytest.raises(CompileError, match="'x'"):
        module(x=torch.rand(2, 3))


# -- templates -------------------------------------------------------------------------------


def test_tt_linear_is_a_linear_map() -> None:
    module = tngraph.compile(str(ROOT / "models/tt_linear.yaml"), {"rank": 3}, dtype="float64",
                             cache=False, optimize="greedy")
    with torch.no_grad():
        module.bias.normal_()
    dense = module.dense()
    assert tuple(dense.shape) == (8, 8, 8, 8, 2, 2, 2, 2)
    weight = dense.reshape(4096, 16).T          # (out, in), as nn.Linear's weight
    x = torch.randn(5, 4096, dtype=torch.float64)
    expected = x @ weight.T + module.bias.reshape(16)
    out = module(x)
    assert tuple(out.shape) == (5, 16)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(module(x.reshape(5, 8, 8, 8, 8)), expected)
    assert_matches(out, dense_oracle(module, {"x": x}))


def test_tt_linear_weight_from_cores() -> None:
    """dense() of tt_linear equals the TT-matrix built core by core."""
    module = tngraph.compile(str(ROOT / "models/tt_linear.yaml"), {"rank": 2}, dtype="float64",
                             cache=False, optimize="greedy")
    g = module.tensors                             # G0[i,o,r] G1[l,i,o,r] G2[l,i,o,r] G3[l,i,o]
    w = torch.einsum("aAx,xbBy,ycCz,zdD->abcdABCD", g["G0"], g["G1"], g["G2"], g["G3"])
    torch.testing.assert_close(module.dense(), w)


@pytest.mark.parametrize(("feature_map", "phys_dim"), [
    ("multilinear", 2), ("trig", 2), ("poly", 3), ("{name: poly, degree: 3}", 4),
    ("{name: multilinear, scale: true}", 2),
])
def test_mps_feature_maps_match_oracle(feature_map: str, phys_dim: int) -> None:
    module = tngraph.compile(_mps(feature_map, phys_dim), dtype="float64", cache=False)
    inputs = {"x": torch.rand(4, 5, dtype=torch.float64) * 2 - 0.5}  # some outside [0, 1]
    out = module(**inputs)
    assert tuple(out.shape) == (4, 3)
    assert_matches(out, dense_oracle(module, inputs))


_MAPS = ["multilinear", "trig", "{name: poly, degree: 3}", "{name: multilinear, scale: true}",
         "{name: trig, scale: true}"]


@pytest.mark.parametrize("feature_map", _MAPS)
def test_apply_into_writes_what_apply_returns(feature_map: str) -> None:
    """A kept features tensor rewritten by ``apply_into`` for new values equals ``apply``'s."""
    import yaml

    from tngraph.kinds import get_feature_map

    named = yaml.safe_load(feature_map)
    named = {"name": named} if isinstance(named, str) else named
    fmap, options = get_feature_map(named.pop("name")), named
    x, y = torch.rand(2, 7, 5, dtype=torch.float64) * 2 - 0.5
    out = fmap.apply(x, options)
    fmap.apply_into(y.t(), options, out.transpose(0, 1))          # into a strided view too
    torch.testing.assert_close(out, fmap.apply(y, options), rtol=0, atol=0)


@pytest.mark.parametrize("feature_map", _MAPS)
def test_inference_keeps_the_features_between_calls(feature_map: str) -> None:
    """Without autograd, a port's features are written into one tensor kept by the module:
    each call's result is its own input's; autograd calls, calls while another holds the
    features (another thread) and copies of the module keep none."""
    import copy
    import pickle

    from tngraph.compiler import _FEATURES_LOCK

    phys = 4 if "poly" in feature_map else 2
    module = tngraph.compile(_mps(feature_map, phys), dtype="float64", cache=False)
    randomize(module, seed=1, scale=0.5)
    xs = [torch.rand(4, 5, dtype=torch.float64) * 2 - 0.5 for _ in range(3)]
    with torch.no_grad():
        outs = [module(x) for x in xs]
        (kept,) = module._kept_features.values()
        assert module(xs[0]) is not kept
        (again,) = module._kept_features.values()
        assert again is kept                                          # the same tensor reused
        for x, out in zip(xs, outs):
            assert_matches(out, dense_oracle(module, {"x": x}))
        with _FEATURES_LOCK:                                          # held: allocates
            torch.testing.assert_close(module(xs[1]), outs[1], rtol=0, atol=0)
        with torch.inference_mode():                                  # a tensor of its own
            torch.testing.assert_close(module(xs[2]), outs[2], rtol=0, atol=0)
        assert len(module._kept_features) == 2
    assert not copy.deepcopy(module)._kept_features
    assert not pickle.loads(pickle.dumps(module))._kept_features
    fresh = tngraph.compile(_mps(feature_map, phys), dtype="float64", cache=False)
    fresh(xs[0]).sum().backward()
    assert not fresh._kept_features


def test_a_result_on_the_kept_features_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """A result that shares memory with the kept features is handed out as a copy (the next
    call rewrites them)."""
    module = tngraph.compile(_mps("multilinear"), dtype="float64", cache=False)
    monkeypatch.setattr(module, "_execute", lambda tensors, ports, batch: ports[0])
    x = torch.rand(4, 5, dtype=torch.float64)
    with torch.no_grad():
        first = module(x)
        module(x + 1)
    (kept,) = module._kept_features.values()
    assert first.untyped_storage().data_ptr() != kept.untyped_storage().data_ptr()
    torch.testing.assert_close(first[..., 1], x.t())


def test_feature_map_is_applied() -> None:
    """multilinear vs trig on the same weights give different results (the map matters)."""
    a = tngraph.compile(_mps("multilinear"), dtype="float64", cache=False)
    b = tngraph.compile(_mps("trig"), dtype="float64", cache=False)
    x = torch.rand(3, 5, dtype=torch.float64)
    assert not torch.allclose(a(x), b(x))


def test_dense_of_mps_state() -> None:
    module = tngraph.compile(str(ROOT / "models/mps.yaml"), {"sites": 4, "bond_dim": 2},
                             dtype="float64", cache=False)
    dense = module.dense()
    assert tuple(dense.shape) == (2,) * 4
    torch.testing.assert_close(dense, module())
    assert math.prod(dense.shape) == 16


def test_dense_of_a_large_network_names_its_size() -> None:
    module = tngraph.compile("models/mps_classifier.yaml", {"bond_dim": 2}, cache=False)
    with pytest.raises(tngraph.CompileError, match=r"has 1.84e\+20 entries \(65 axes"):
        module.dense()
