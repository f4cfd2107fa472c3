"""Manifold optimizers ``riemannian`` and ``tangent`` (plugins/tngraph_plugins/riemannian.py).

The key check is that the Riemannian gradient (one backward pass of the doubled-rank network)
equals the orthogonal projection of the Euclidean gradient onto the tangent space of the
fixed-rank manifold, computed by brute force: the tangent space is the range of the Jacobian of
``cores -> dense tensor``.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

import tngraph
from tngraph.cli import main
from tngraph.decompose import tt_ranks, tt_to_dense
from tngraph.errors import SpecError
from tngraph.optimizers import NonFiniteLoss, OptimizerContext, get_optimizer
from tngraph.spec import load_spec
from tngraph.train import TrainingError, train
from tngraph_plugins.chain import ChainError
from tngraph_plugins.riemannian import (
    ManifoldStepper,
    left_orthogonalize,
    project,
    right_cores,
    round_to_ranks,
    tangent_cores,
)

#: a tiny MPS with data on every site and a label leg on site 1 (physical legs p and o merged)
TINY = ("tngraph: 1\nname: tiny\nnetwork: {template: mps, sites: 4, phys_dim: 3, bond_dim: 2, "
        "input: x, output_dim: 2, output_site: 1}\n")
#: a small TT-layer 64 -> 8 with bias
TT = ("tngraph: 1\nname: tt\nnetwork: {{template: tt_linear, in_shape: [4, 4, 4], "
      "out_shape: [2, 2, 2], ranks: 3, bias: true{init}}}\n")
#: a small MPS classifier: 8 sites, feature map [1, x], 3 classes
CLASSIFIER = ("tngraph: 1\nname: cls\nnetwork: {template: mps, sites: 8, phys_dim: 2, "
              "bond_dim: 4, input: x, feature_map: multilinear, output_dim: 3}\n")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread (OpenMP workers on a shared machine cost more than the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compile(text: str, dtype: str = "float64") -> tngraph.TNModule:
    return tngraph.compile(text, cache=False, dtype=dtype, strategy="network")


def _stepper(name: str, module: tngraph.TNModule, lr: float, **options) -> ManifoldStepper:
    strategy = get_optimizer(name)
    return strategy.create(module, strategy.options(**options), OptimizerContext(lr=lr))


def _tiny_problem() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(6, 2, generator=g, dtype=torch.float64)
    return x, y


def _dense_loss(dense: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The tiny network's loss computed from its dense parameter tensor, independently of the
    compiled module: site 1's mode is (p, o) flattened, p-major."""
    w = dense.reshape(3, 3, 2, 3, 3)
    out = torch.einsum("abocd,na,nb,nc,nd->no", w, x[:, 0], x[:, 1], x[:, 2], x[:, 3])
    return ((out - y) ** 2).mean()


def _contract(cores: list[torch.Tensor]) -> torch.Tensor:
    """Cores -> dense tensor with autograd (``tt_to_dense`` detaches its input)."""
    out = cores[0].reshape(-1, cores[0].shape[-1])
    for c in cores[1:]:
        out = (out @ c.reshape(c.shape[0], -1)).reshape(-1, c.shape[-1])
    return out.reshape(-1)


def _brute_force_projection(cores: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """Orthogonal projection of ``z`` onto the range of the Jacobian of cores -> dense."""
    sizes = [c.numel() for c in cores]

    def dense(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        return _contract([p.reshape(c.shape) for p, c in zip(parts, cores)])

    jac = torch.autograd.functional.jacobian(dense, torch.cat([c.reshape(-1) for c in cores]))
    u, s, _ = torch.linalg.svd(jac, full_matrices=False)
    basis = u[:, s > 1e-10 * s[0]]
    flat = z.reshape(-1)
    return (basis @ (basis.T @ flat)).reshape(z.shape)


def test_riemannian_gradient_is_the_tangent_space_projection() -> None:
    module = _compile(TINY)
    stepper = ManifoldStepper(module, lr=0.1)
    x, y = _tiny_problem()
    loss, _, dg, v, _ = stepper.gradient(x, lambda out: ((out - y) ** 2).mean())
    riemannian = tt_to_dense(tangent_cores(stepper.cores, v, dg))

    dense = tt_to_dense(stepper.cores).requires_grad_(True)
    euclidean_loss = _dense_loss(dense, x, y)
    (z,) = torch.autograd.grad(euclidean_loss, dense)
    expected = _brute_force_projection(stepper.cores, z)

    assert float(loss) == pytest.approx(float(euclidean_loss.detach()), rel=1e-12)
    assert expected.abs().max() > 1e-3            # a non-trivial projection
    assert not torch.allclose(expected, z)         # ... that differs from the gradient
    torch.testing.assert_close(riemannian, expected, rtol=1e-9, atol=1e-11)
    # the reported norm is the tangent vector's norm (components are orthogonal)
    norm = math.sqrt(sum(float((g * g).sum()) for g in dg))
    assert norm == pytest.approx(float(expected.norm()), rel=1e-9)


def test_project_of_a_tt_matches_the_brute_force_projection() -> None:
    g = torch.Generator().manual_seed(3)
    cores = left_orthogonalize([torch.randn(1, 3, 2, generator=g, dtype=torch.float64),
                                torch.randn(2, 4, 3, generator=g, dtype=torch.float64),
                                torch.randn(3, 2, 1, generator=g, dtype=torch.float64)])
    z = [torch.randn(1, 3, 3, generator=g, dtype=torch.float64),
         torch.randn(3, 4, 2, generator=g, dtype=torch.float64),
         torch.randn(2, 2, 1, generator=g, dtype=torch.float64)]
    v = right_cores(cores)
    got = tt_to_dense(tangent_cores(cores, v, project(cores, v, z)))
    torch.testing.assert_close(got, _brute_force_projection(cores, tt_to_dense(z)))


@pytest.mark.parametrize("name", ["riemannian", "tangent"])
def test_a_small_step_follows_the_projected_gradient(name: str) -> None:
    module = _compile(TINY)
    lr = 1e-5
    stepper = _stepper(name, module, lr)
    x, y = _tiny_problem()
    objective = lambda out: ((out - y) ** 2).mean()  # noqa: E731
    before = tt_to_dense(stepper.cores)
    _, _, dg, v, _ = stepper.gradient(x, objective)
    xi = tt_to_dense(tangent_cores(stepper.cores, v, dg))
    stepper.step(x, objective)
    moved = (tt_to_dense(stepper.cores) - before) / lr
    if name == "tangent":   # lr is an angle: the direction is the normalised g_perp
        hat = before / before.norm()
        perp = xi - (xi * hat).sum() * hat
        expected = -before.norm() * perp / perp.norm()
    else:
        expected = -xi
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-3 * float(expected.norm()))
    if name == "tangent":
        assert float(tt_to_dense(stepper.cores).norm()) == pytest.approx(float(before.norm()),
                                                                         rel=1e-12)


def _regression(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(128, 64, generator=g, dtype=torch.float64)
    w = torch.randn(8, 64, generator=g, dtype=torch.float64) / 8
    return x, x @ w.T


@pytest.mark.parametrize(("name", "lr", "options"), [
    ("riemannian", 0.3, {}),
    ("riemannian", 0.2, {"momentum": 0.5}),
    ("tangent", 0.05, {}),
])
def test_loss_decreases_on_tt_regression_and_ranks_stay(name: str, lr: float,
                                                        options: dict) -> None:
    module = _compile(TT.format(init=""))
    x, y = _regression()
    stepper = _stepper(name, module, lr, **options)
    objective = lambda out: ((out - y) ** 2).mean()  # noqa: E731
    losses = [float(stepper.step(x, objective)[0]) for _ in range(60)]
    assert losses[-1] < 0.7 * losses[0], losses[::10]
    assert stepper.describe()["ranks"] == [3, 3]
    cores = [c.detach() for c in stepper.chain.to_cores(stepper.module.tensors)]
    assert tt_ranks(cores) == (3, 3)
    for k in range(len(cores) - 1):   # the ranks are the true ranks of X's unfoldings
        s = torch.linalg.svdvals(tt_to_dense(cores).reshape(8 ** (k + 1), -1))
        assert int((s > 1e-9 * s[0]).sum()) == 3
    assert stepper.module.bias is not None and stepper.module.bias.abs().sum() > 0


@pytest.mark.parametrize(("name", "lr"), [("riemannian", 0.5), ("tangent", 0.1)])
def test_loss_decreases_on_a_small_mps_classifier(name: str, lr: float) -> None:
    module = _compile(CLASSIFIER, dtype="float32")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 8, generator=g)
    y = (x[:, :3].sum(1) * 2).long().clamp(max=2)   # a label learnable from three pixels
    stepper = _stepper(name, module, lr)
    objective = lambda out: torch.nn.functional.cross_entropy(out, y)  # noqa: E731
    losses = [float(stepper.step(x, objective)[0]) for _ in range(40)]
    assert losses[-1] < 0.85 * losses[0], losses[::8]
    # the end bonds can hold only rank 2 (phys_dim 2): reduced at the start, then kept
    assert stepper.describe()["ranks"] == [2, 4, 4, 4, 4, 4, 2]
    assert stepper.module.tensors["A0"].shape == (2, 2)
    assert all(torch.isfinite(p).all() for p in stepper.module.parameters())


def test_ranks_are_kept_exactly_over_many_steps() -> None:
    module = _compile(TINY)
    stepper = ManifoldStepper(module, lr=0.5)
    x, y = _tiny_problem()
    for _ in range(200):
        stepper.step(x, lambda out: ((out - y) ** 2).mean())
    shapes = [tuple(t.shape) for t in stepper.module.tensors.values()]
    assert shapes == [(3, 2), (2, 3, 2, 2), (2, 3, 2), (2, 3)]
    cores = stepper.cores
    for c in cores[:-1]:   # left-orthogonal, the norm in the last core
        m = c.reshape(-1, c.shape[-1])
        torch.testing.assert_close(m.T @ m, torch.eye(m.shape[1], dtype=m.dtype))


def test_rank_reduction_at_the_start_keeps_the_function() -> None:
    text = ("tngraph: 1\nname: wide\nnetwork: {template: mps, sites: 5, phys_dim: 2, "
            "bond_dim: 8, input: x, output_dim: 2}\n")
    module = _compile(text)
    x = torch.rand(4, 5, 2, dtype=torch.float64)
    before = module(x)
    stepper = ManifoldStepper(module, lr=0.1)
    assert stepper.describe()["ranks"] == [2, 4, 4, 2]
    assert stepper.module is not module
    assert stepper.module.spec.network.nodes["A1"].legs["r"] == 4
    torch.testing.assert_close(stepper.module(x), before)
    capped = ManifoldStepper(_compile(text), lr=0.1, max_rank=3)
    assert capped.describe()["ranks"] == [2, 3, 3, 2]


@pytest.mark.parametrize("name", ["riemannian", "tangent"])
def test_degenerate_start_gives_no_nan(name: str) -> None:
    module = _compile(TT.format(init=", init: zeros"))
    x, y = _regression()
    stepper = _stepper(name, module, 0.3 if name == "riemannian" else 0.2)
    objective = lambda out: ((out - y) ** 2).mean()  # noqa: E731
    losses = [float(stepper.step(x, objective)[0]) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p).all() for p in stepper.module.parameters())
    assert losses[-1] < losses[0]
    assert stepper.describe()["ranks"] == [3, 3]
    # one zero core in a random network
    module = _compile(TT.format(init=""))
    with torch.no_grad():
        module.tensors["G1"].zero_()
    stepper = _stepper(name, module, 0.3 if name == "riemannian" else 0.2)
    losses = [float(stepper.step(x, objective)[0]) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_a_non_finite_loss_changes_nothing() -> None:
    module = _compile(TINY)
    stepper = ManifoldStepper(module, lr=0.1)
    x, _ = _tiny_problem()
    before = [t.detach().clone() for t in module.tensors.values()]
    with pytest.raises(NonFiniteLoss):
        stepper.step(x, lambda out: out.sum() * float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, module.tensors.values()))


@pytest.mark.parametrize(("name", "options"), [("riemannian", {"momentum": 0.5}),
                                               ("tangent", {})])
def test_state_dict_resumes_exactly(name: str, options: dict) -> None:
    x, y = _regression()
    objective = lambda out: ((out - y) ** 2).mean()  # noqa: E731
    first = _stepper(name, _compile(TT.format(init="")), 0.05, **options)
    for _ in range(5):
        first.step(x, objective)
    state = first.state_dict()
    weights = {k: v.clone() for k, v in first.module.state_dict().items()}
    expected = [float(first.step(x, objective)[0]) for _ in range(5)]

    module = _compile(TT.format(init=""))
    module.load_state_dict(weights)
    second = _stepper(name, module, 0.05, **options)
    second.load_state_dict(state)
    assert [float(second.step(x, objective)[0]) for _ in range(5)] == expected


def test_not_a_chain_is_a_clear_error() -> None:
    module = tngraph.compile("models/ring3.yaml", cache=False)
    with pytest.raises(ChainError, match="ring .*supported: an open chain"):
        _stepper("riemannian", module, 0.1)


TRAIN_SPEC = """\
tngraph: 1
name: ttreg
network: {{template: tt_linear, in_shape: [2, 2, 2, 2], out_shape: [2, 1, 1, 1], ranks: 2}}
plan: {{cache: false, strategy: network}}
train:
  data: synthetic-regression?n_samples=64&n_features=16&n_informative=8&n_targets=2
  epochs: {epochs}
  batch_size: 16
  lr: 0.1
  optimizer: {optimizer}
"""


def test_trains_from_a_spec_and_resumes_exactly(tmp_path: Path) -> None:
    spec = TRAIN_SPEC.format(epochs=3, optimizer="{name: riemannian, momentum: 0.3}")
    full = train(spec, run_dir=tmp_path / "full", echo=None)
    part = train(TRAIN_SPEC.format(epochs=1, optimizer="{name: riemannian, momentum: 0.3}"),
                 run_dir=tmp_path / "part", echo=None)
    assert part.history[0].train_loss == full.history[0].train_loss
    resumed = train(resume=tmp_path / "part", epochs=3, echo=None)
    for a, b in zip(full.history, resumed.history):
        assert (a.train_loss, a.val_loss) == (b.train_loss, b.val_loss)
    assert full.history[-1].train_loss < full.history[0].train_loss
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["optimizer"]["name"] == "riemannian"
    assert summary["optimizer"]["ranks"] == [2, 2, 2]


def test_cli_train_with_tangent(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(TRAIN_SPEC.format(epochs=1, optimizer="adam"))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--optimizer", "tangent?radius=2", "--out", str(run)]) == 0
    assert '"radius": 2' in (run / "config.json").read_text()
    assert json.loads((run / "summary.json").read_text())["optimizer"]["radius"] == 2.0


def test_bad_options_are_located_in_the_spec() -> None:
    with pytest.raises(SpecError) as info:
        load_spec(TRAIN_SPEC.format(epochs=1, optimizer="{name: riemannian, momentum: 1.5}"))
    assert "train.optimizer.momentum" in str(info.value) and ":10:" in str(info.value)
    with pytest.raises(SpecError, match="unknown key 'sphere'"):
        load_spec(TRAIN_SPEC.format(epochs=1, optimizer="{name: tangent, sphere: true}"))


def test_training_a_ring_stops_with_the_chain_message(tmp_path: Path) -> None:
    spec = tmp_path / "ring.yaml"
    spec.write_text(textwrap.dedent("""\
        tngraph: 1
        name: ring
        network: {template: mps, sites: 4, phys_dim: 2, bond_dim: 2, boundary: periodic,
                  input: x, output_dim: 2}
        plan: {cache: false}
        train: {data: "synthetic-regression?n_samples=32&n_features=4&n_targets=2",
                epochs: 1, optimizer: riemannian}
        """))
    with pytest.raises((ChainError, TrainingError), match="ring"):
        train(str(spec), run_dir=tmp_path / "r", echo=None)


def test_round_to_ranks_keeps_ranks_of_a_zero_tt() -> None:
    cores = [torch.zeros(1, 3, 4), torch.zeros(4, 3, 4), torch.zeros(4, 3, 1)]
    out = round_to_ranks(cores, [2, 2])
    assert tt_ranks(out) == (2, 2)
    assert all(torch.isfinite(c).all() for c in out)
    m = out[0].reshape(3, 2)
    torch.testing.assert_close(m.T @ m, torch.eye(2))
