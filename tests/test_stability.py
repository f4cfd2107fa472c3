"""Numerical stability of long MPS chains in float32 from the default initialisation (issue 3).

Theory checked here. With a unit-norm feature map (``trig``: |phi(x)| = 1) the ``mps`` template
initialises every core with ``identity`` ``rotation: p``: the physical slices are ``I`` and an
antisymmetric orthogonal ``J`` (``-J`` on odd sites), so the site matrix
``M(x) = cos(pi x/2) I +- sin(pi x/2) J`` is a rotation by ``+-pi x/2`` in every pair of bond
coordinates. Without noise an open chain with a label leg of K classes (on an even site)
outputs ``out_k = cos(theta + pi k/K)`` with ``theta = sum_i (-1)^i pi x_i/2``, so
``|out| = sqrt(K/2)`` exactly, at any length. The noise (std ``sigma = 0.01`` per entry)
perturbs every site by a relative ``sigma |phi| sqrt(D)`` at most about (``D`` the bond
dimension), a random walk in log space over ``n`` sites: the tests allow the per-sample output
norm ``3 sigma |phi|max sqrt(n D)`` of slack in log space around the noise-free value (``1`` for
``multilinear``, whose chain starts at the identity on the constant component, ``|phi| <= sqrt 2``).

The previous ``trig`` default (the identity on both feature values, ``spread: [p]``) multiplies
the chain by ``cos + sin``, in [1, sqrt 2]: on uniform inputs 784 sites overflow float32 (inf /
NaN outputs and gradients) and 64 sites reach ~1e7, far outside these bounds.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import tngraph
from tngraph.errors import PluginError
from tngraph.featuremaps import (
    FEATURE_MAPS,
    FeatureMap,
    get_feature_map,
    list_feature_maps,
)
from tngraph.initializers import get_initializer, identity, rotation_generator
from tngraph.templates.mps import MPSOptions, default_init

CLASSES = 10
SIGMA = 0.01        # the default noise of the identity initialiser
PHI_MAX = {"trig": 1.0, "multilinear": math.sqrt(2.0)}
NOISE_FREE = {"trig": math.sqrt(CLASSES / 2), "multilinear": 1.0}


def _spec(sites: int, bond: int, feature_map: str, init: str = "") -> str:
    extra = f", init: {init}" if init else ""
    return (f"tngraph: 1\nname: long\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
            f"bond_dim: {bond}, input: x, feature_map: {feature_map}, "
            f"output_dim: {CLASSES}{extra}}}\n")


@functools.cache
def _compile(sites: int, bond: int, feature_map: str, init: str = "",
             batch: int = 8) -> tngraph.TNModule:
    # one module per configuration (both input kinds use it; _check_module zeroes gradients);
    # the plan cache (private to the test session) shares one plan per (sites, bond)
    return tngraph.compile(_spec(sites, bond, feature_map, init), dtype="float32",
                           optimize="greedy", batch_size=batch)


def _uniform(batch: int, sites: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, sites, generator=torch.Generator().manual_seed(seed))


def _mnist_like(batch: int, sites: int, seed: int) -> torch.Tensor:
    """About 80 % of pixels exactly 0, 12 % bright (0.9 .. 1), 8 % in between, like MNIST."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.rand(batch, sites, generator=g)
    value = torch.rand(batch, sites, generator=g)
    return torch.where(kind < 0.8, 0.0, torch.where(kind < 0.92, 0.9 + 0.1 * value, value))


INPUTS = {"uniform": _uniform, "mnist-like": _mnist_like}


def _bounds(feature_map: str, sites: int, bond: int) -> tuple[float, float]:
    """Per-sample output norm bounds: the noise-free value, times exp(+-3 sigma |phi| sqrt(nD))."""
    slack = 3 * SIGMA * PHI_MAX[feature_map] * math.sqrt(sites * bond)
    centre = NOISE_FREE[feature_map]
    return centre * math.exp(-slack), centre * math.exp(slack)


def _check_module(module: tngraph.TNModule, x: torch.Tensor, feature_map: str, sites: int,
                  bond: int) -> None:
    module.zero_grad()
    out = module(x)
    labels = torch.arange(x.shape[0]) % CLASSES
    torch.nn.functional.cross_entropy(out, labels).backward()
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    norms = out.detach().norm(dim=1)
    low, high = _bounds(feature_map, sites, bond)
    assert low < float(norms.min()) and float(norms.max()) < high, \
        (float(norms.min()), float(norms.max()), low, high)
    # every class gets its own output value
    assert (out.detach().std(dim=1) > 1e-3).all()
    names = list(module.tensors)
    grads = module.tensors.grads()
    for name in names:
        grad = grads[name]
        assert grad is not None and torch.isfinite(grad).all(), name
        assert float(grad.abs().max()) > 1e-6, f"{name}: all-zero gradient"
    # boundary, label and middle cores specifically (the assertions above cover all cores)
    for name in (names[0], names[-1], f"A{sites // 2}", f"A{sites // 4}"):
        assert float(grads[name].norm()) > 1e-4, name


# ---------------------------------------------------------------------------------------------
# the feature map flag


def test_unit_norm_flag_matches_the_maps() -> None:
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    for name in list_feature_maps():
        fmap = get_feature_map(name)
        phi = fmap.apply(x, {})
        assert fmap.unit_norm == bool(torch.allclose(phi.norm(dim=-1), torch.ones_like(x))), name
    assert get_feature_map("trig").unit_norm
    assert not get_feature_map("multilinear").unit_norm
    assert not get_feature_map("poly").unit_norm


# ---------------------------------------------------------------------------------------------
# the rotation initialiser


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7])
def test_rotation_generator_is_antisymmetric_and_orthogonal_on_pairs(n: int) -> None:
    j = rotation_generator(n)
    torch.testing.assert_close(j.T, -j)
    paired = torch.ones(n, dtype=torch.float64)
    if n % 2:
        paired[-1] = 0.0      # the unpaired coordinate: J is 0 there
    torch.testing.assert_close(j.T @ j, torch.diag(paired))


@pytest.mark.parametrize("bond", [2, 5, 10, 20])
def test_rotation_cores_make_orthogonal_site_matrices(bond: int) -> None:
    core = identity((bond, 2, bond), ("l", "p", "r"), {"rotation": "p", "std": 0.0},
                    torch.Generator().manual_seed(0))
    torch.testing.assert_close(core[:, 0, :], torch.eye(bond, dtype=torch.float64))
    torch.testing.assert_close(core[:, 1, :], rotation_generator(bond))
    for x in torch.linspace(0, 1, 11, dtype=torch.float64):
        phi = get_feature_map("trig").apply(x.reshape(1), {})[0]
        m = torch.einsum("p,lpr->lr", phi, core)
        gram = m.T @ m
        eye = torch.eye(bond, dtype=torch.float64)
        if bond % 2:
            # the unpaired coordinate is scaled by cos(pi x/2) <= 1: never grows
            eye[-1, -1] = math.cos(math.pi * float(x) / 2) ** 2
        torch.testing.assert_close(gram, eye)


def test_rotation_boundary_and_label_cores() -> None:
    g = torch.Generator().manual_seed(0)
    opts = {"rotation": "p", "std": 0.0}
    j = rotation_generator(4)
    eye = torch.eye(4, dtype=torch.float64)
    left = identity((2, 4), ("p", "r"), opts, g)            # row 0 of I and J
    torch.testing.assert_close(left, torch.stack([eye[0], j[0]]))
    right = identity((4, 2), ("l", "p"), opts, g)           # column 0 of I and J
    torch.testing.assert_close(right, torch.stack([eye[:, 0], j[:, 0]], dim=1))
    label = identity((4, 2, 4, 3), ("l", "p", "r", "o"), opts, g)
    for k in range(3):
        a = math.pi * k / 3
        turn = math.cos(a) * eye + math.sin(a) * j
        torch.testing.assert_close(label[:, 0, :, k], turn)
        torch.testing.assert_close(label[:, 1, :, k], j @ turn)
    # the same core whatever the leg order
    shuffled = identity((3, 4, 2, 4), ("o", "r", "p", "l"), opts, g)
    torch.testing.assert_close(shuffled, label.permute(3, 2, 1, 0))
    # a single core (no bond at all): the (0, 0) entries
    alone = identity((2, 3), ("p", "o"), opts, g)
    torch.testing.assert_close(alone[0], torch.cos(torch.arange(3) * math.pi / 3).double())


def test_negative_sign_turns_the_other_way() -> None:
    g = torch.Generator().manual_seed(0)
    plus = identity((4, 2, 4, 3), ("l", "p", "r", "o"), {"rotation": "p", "std": 0.0}, g)
    minus = identity((4, 2, 4, 3), ("l", "p", "r", "o"),
                     {"rotation": "p", "sign": -1, "std": 0.0}, g)
    torch.testing.assert_close(minus[:, 1, :, 0], -plus[:, 1, :, 0])
    # a site and its mirror undo each other: M_-(x) M_+(x) = I for the same input
    phi = torch.tensor([0.6, 0.8], dtype=torch.float64)
    m_plus = torch.einsum("p,lpr->lr", phi, plus[..., 0])
    m_minus = torch.einsum("p,lpr->lr", phi, minus[..., 0])
    torch.testing.assert_close(m_minus @ m_plus, torch.eye(4, dtype=torch.float64))


def test_rotation_noise_uses_the_std_convention() -> None:
    plain = identity((6, 2, 6), ("l", "p", "r"), {"rotation": "p", "std": 0.0},
                     torch.Generator().manual_seed(0))
    noisy = identity((6, 2, 6), ("l", "p", "r"), {"rotation": "p"},
                     torch.Generator().manual_seed(0))
    noise = noisy - plain
    assert 0.005 < float(noise.std()) < 0.015
    spread = identity((6, 2, 6), ("l", "p", "r"), {"spread": ["p"]},
                      torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise, spread - spread.round())  # the same draw as before


@pytest.mark.parametrize(("shape", "legs", "options", "message"), [
    ((3, 2, 3), ("l", "q", "r"), {"rotation": "p"}, "rotation leg 'p' is not a leg"),
    ((3, 3, 3), ("l", "p", "r"), {"rotation": "p"}, "must have dimension 2"),
    ((3, 2, 3), ("l", "p", "r"), {"rotation": "p", "spread": ["p"]}, "either 'rotation' or"),
    ((3, 2, 3), ("l", "p", "r"), {"rotation": "p", "sign": 2}, "sign must be 1 or -1"),
])
def test_rotation_errors(shape: tuple[int, ...], legs: tuple[str, ...], options: dict,
                         message: str) -> None:
    with pytest.raises(PluginError, match=message):
        identity(shape, legs, options, torch.Generator().manual_seed(0))


def test_rotation_is_a_declared_option() -> None:
    assert {"rotation", "sign"} <= set(get_initializer("identity").options)


# ---------------------------------------------------------------------------------------------
# the template's choice


def _options(**kwargs: object) -> MPSOptions:
    base: dict[str, object] = {"sites": 4, "phys_dim": 2, "bond_dim": 3, "input": "x"}
    return MPSOptions(**{**base, **kwargs})


def test_default_init_follows_the_feature_map(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_init(_options()) == "identity"
    assert default_init(_options(feature_map="multilinear")) == "identity"
    assert default_init(_options(feature_map={"name": "poly", "degree": 2}, phys_dim=3)) \
        == "identity"
    rotation = {"name": "identity", "rotation": "p"}
    assert default_init(_options(feature_map="trig")) == rotation
    assert default_init(_options(feature_map="trig"), site=2) == rotation
    assert default_init(_options(feature_map="trig"), site=3) == {**rotation, "sign": -1}
    assert default_init(_options(feature_map={"name": "trig", "scale": True})) == rotation
    # a 1-dimensional bond has no pair of coordinates to rotate: the spread identity
    assert default_init(_options(feature_map="trig", bond_dim=1)) \
        == {"name": "identity", "spread": ["p"]}
    assert default_init(_options(feature_map="trig", init="normal")) == "normal"
    assert default_init(_options(input=None)) == "normal"
    list_feature_maps()   # load the registry before patching it
    # neither a leading 1 nor unit norm, or unit norm in 3 dimensions: the spread identity
    odd = FeatureMap("halfs", lambda o: 2, lambda x, o: torch.stack([x, x], -1))
    sphere = FeatureMap("sphere", lambda o: 3, lambda x, o: x, unit_norm=True)
    monkeypatch.setitem(FEATURE_MAPS._entries, "halfs", odd)
    monkeypatch.setitem(FEATURE_MAPS._entries, "sphere", sphere)
    assert default_init(_options(feature_map="halfs")) == {"name": "identity", "spread": ["p"]}
    assert default_init(_options(feature_map="sphere", phys_dim=3)) \
        == {"name": "identity", "spread": ["p"]}


# ---------------------------------------------------------------------------------------------
# long chains in float32


@pytest.mark.parametrize(("sites", "bond"), [(784, 10), (784, 20), (64, 7)])
def test_noise_free_rotation_chain_is_exact(sites: int, bond: int) -> None:
    """Without noise: out_k = cos(theta + pi k / K) to float32 rounding, |out| = sqrt(K/2)
    (an odd bond too: its unpaired coordinate is never reached from the boundary cores)."""
    module = tngraph.compile(_spec(sites, bond, "trig"), dtype="float32", optimize="greedy",
                             batch_size=8)
    with torch.no_grad():      # the template's per-site initialisers, without their noise
        for name, node in module.spec.network.nodes.items():
            options = {**node.init.options, "std": 0.0}
            module.tensors[name].copy_(identity(node.shape, tuple(node.legs), options, None))
    x = torch.cat([_uniform(4, sites, 1), _mnist_like(4, sites, 2)])
    with torch.no_grad():
        out = module(x).double()
    signs = 1.0 - 2.0 * (torch.arange(sites) % 2).double()         # odd sites turn back
    theta = (x.double() * signs * (math.pi / 2)).sum(dim=1, keepdim=True)
    assert (sites // 2) % 2 == 0                                   # the label core turns +
    expected = torch.cos(theta + torch.arange(CLASSES) * (math.pi / CLASSES))
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(out.norm(dim=1), torch.full((8,), math.sqrt(CLASSES / 2),
                                                           dtype=torch.float64),
                               atol=1e-3, rtol=0)


@pytest.mark.parametrize("data", sorted(INPUTS))
@pytest.mark.parametrize("feature_map", ["trig", "multilinear"])
@pytest.mark.parametrize(("sites", "bond"), [(64, 10), (64, 20), (784, 10), (784, 20)])
def test_long_chains_are_stable_in_float32(sites: int, bond: int, feature_map: str,
                                           data: str) -> None:
    """Default init: finite outputs of the predicted size, finite non-zero gradients per core."""
    module = _compile(sites, bond, feature_map)
    _check_module(module, INPUTS[data](8, sites, seed=sites + bond), feature_map, sites, bond)


def test_digits_pixels_are_stable_in_float32() -> None:
    """Real 8x8 digits (half the pixels 0) through the 64-site trig classifier."""
    from tngraph.data import load_dataset

    x = load_dataset("digits").x_train[:32].reshape(32, 64).float()
    module = _compile(64, 20, "trig", batch=32)
    _check_module(module, x, "trig", 64, 20)
