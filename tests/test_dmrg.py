"""The ``dmrg`` optimizer strategy: sweep math on plain cores, the merged forward against the
compiled module, adaptive bond dimensions, exact resume, degenerate spectra, unsuitable
networks, the CLI."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tngraph
from tngraph.cli import main
from tngraph.optimizers import NonFiniteLoss, OptimizerContext, check_optimizer, get_optimizer
from tngraph.schema import NamedOptions
from tngraph.train import train
from tngraph_plugins.chain import ChainError
from tngraph_plugins.dmrg import (
    DMRG,
    DMRGError,
    DMRGOptions,
    DMRGStepper,
    left_environment,
    merge,
    merged_forward,
    next_bond,
    right_canonicalize,
    right_environment,
    robust_svd,
    split,
    truncation_rank,
)

MPS16 = """\
tngraph: 1
name: mps16
network: {{template: mps, sites: 16, phys_dim: 2, bond_dim: {bond}, input: x,
          feature_map: multilinear, output_dim: 10}}
plan: {{optimize: greedy}}
train:
  data: "csv:{csv}"
  epochs: 2
  batch_size: 64
  lr: 0.02
  optimizer: {{name: dmrg, max_rank: 8, steps_per_bond: 3}}
"""

#: a raw chain with copies fed out of order, outputs on two sites (declared before the data
#: leg on one of them) and listed in an order other than the chain's
RAW = """\
tngraph: 1
name: raw_chain
network:
  nodes:
    A: {legs: {p: 2, r: 3}}
    B: {legs: {o: 3, l: 3, p: 2, r: 2}}
    C: {legs: {l: 2, p: 2, r: 4}}
    D: {legs: {l: 4, q: 2, p: 2}}
  inputs:
    x: {legs: {p: 2}, stack: 4, feature_map: trig}
  edges:
    - [A.r, B.l]
    - [B.r, C.l]
    - [C.r, D.l]
    - ["x[2].p", A.p]
    - ["x[0].p", B.p]
    - ["x[3].p", C.p]
    - ["x[1].p", D.p]
  outputs: [D.q, B.o]
plan: {optimize: greedy}
"""


#: a tree, not a chain: C is bonded to A, B and D
STAR = """\
tngraph: 1
name: star
network:
  nodes:
    A: {legs: {a: 2, p: 2}}
    B: {legs: {b: 2, p: 2}}
    D: {legs: {d: 2, p: 2}}
    C: {legs: {a: 2, b: 2, d: 2, p: 2}}
  inputs: {x: {legs: {p: 2}, stack: 4}}
  edges: [[A.a, C.a], [B.b, C.b], [D.d, C.d], ["x[0].p", A.p], ["x[1].p", B.p],
          ["x[2].p", C.p], ["x[3].p", D.p]]
"""


@pytest.fixture(autouse=True)
def _small_ops_settings() -> object:
    """One thread (these tensors are tiny: a second thread only waits on a busy machine) and
    subnormals flushed to zero, as ``tngraph train`` does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    flushed = torch.set_flush_denormal(True)
    yield
    torch.set_num_threads(threads)
    if flushed:
        torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def digits16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits downsampled to 4x4 (2x2 means), as a CSV file."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16) / 16.0
    path = tmp_path_factory.mktemp("data") / "digits16.csv"
    header = ",".join(f"x{k}" for k in range(16)) + ",label"
    rows = [",".join(f"{v:.5f}" for v in row) + f",{y}" for row, y in zip(x, bunch.target)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _data16() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16) / 16.0
    return torch.tensor(x, dtype=torch.float32), torch.tensor(bunch.target)


def _stepper(spec: str, lr: float = 0.02, **options: object) -> DMRGStepper:
    module = tngraph.compile(spec, cache=False)
    return DMRG.create(module, DMRGOptions(**options), OptimizerContext(lr=lr))


def _mps16(bond: int, csv: Path | str = "unused.csv") -> str:
    return MPS16.format(bond=bond, csv=csv)


# ---------------------------------------------------------------------------------------------
# math on plain cores


def _random_cores(dims: list[int], outs: list[int], d: int = 2) -> list[torch.Tensor]:
    bonds = [1, *dims, 1]
    return [torch.randn(bonds[k], d, outs[k], bonds[k + 1], dtype=torch.float64)
            for k in range(len(outs))]


def _dense_forward(cores: list[torch.Tensor], phis: torch.Tensor) -> torch.Tensor:
    """Outputs (b, K_0 * ... * K_{n-1}) by one einsum over every core and data vector."""
    letters = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    bonds = [next(letters) for _ in range(len(cores) + 1)]
    operands, terms, out = [], [], []
    for k, core in enumerate(cores):
        p, o = next(letters), next(letters)
        operands += [core, phis[k]]
        terms += [f"{bonds[k]}{p}{o}{bonds[k + 1]}", f"z{p}"]
        out.append(o)
    eq = ",".join(terms) + "->z" + "".join(out)
    return torch.einsum(eq, *operands).reshape(phis.shape[1], -1)


@pytest.mark.parametrize("outs", [[1, 1, 3, 1, 1], [2, 1, 1, 1, 3], [1, 1, 1, 1, 1]])
def test_merged_forward_equals_dense_contraction_at_every_bond(outs: list[int]) -> None:
    torch.manual_seed(0)
    cores = _random_cores([3, 4, 2, 3], outs)
    phis = torch.rand(5, 7, 2, dtype=torch.float64)
    expected = _dense_forward(cores, phis)
    for j in range(4):
        got = merged_forward(left_environment(cores, phis, j), merge(cores[j], cores[j + 1]),
                             right_environment(cores, phis, j + 2), phis[j], phis[j + 1])
        torch.testing.assert_close(got, expected)


def test_split_inverts_merge_and_canonical_form_keeps_the_function() -> None:
    torch.manual_seed(1)
    cores = _random_cores([3, 5, 2], [1, 4, 1, 1])
    phis = torch.rand(4, 6, 2, dtype=torch.float64)
    canonical = right_canonicalize(cores)
    torch.testing.assert_close(_dense_forward(canonical, phis), _dense_forward(cores, phis))
    for core in canonical[1:]:
        m = core.reshape(core.shape[0], -1)
        torch.testing.assert_close(m @ m.T, torch.eye(m.shape[0], dtype=torch.float64))
    merged = merge(canonical[1], canonical[2])
    for absorb in ("left", "right"):
        a, b = split(merged, 100, 0.0, absorb)
        torch.testing.assert_close(merge(a, b), merged)
        iso = a.reshape(-1, a.shape[3]) if absorb == "right" else b.reshape(b.shape[0], -1).T
        torch.testing.assert_close(iso.T @ iso, torch.eye(iso.shape[1], dtype=torch.float64))


def test_truncation_keeps_max_rank_and_cutoff() -> None:
    s = torch.tensor([1.0, 0.5, 0.1, 0.01, 0.0])
    assert truncation_rank(s, 10, 0.0) == 4                  # zeros always dropped
    assert truncation_rank(s, 10, 1e-3) == 3                  # 0.01^2 / 1.2601 < 1e-3
    assert truncation_rank(s, 2, 0.0) == 2
    assert truncation_rank(torch.zeros(3), 5, 1e-10) == 1
    a, b = split(torch.randn(3, 2, 1, 2, 4, 5), 2, 0.0)
    assert a.shape == (3, 2, 1, 2) and b.shape == (2, 2, 4, 5)


def test_sweep_turns_at_both_ends() -> None:
    path, bond, direction = [], 0, 1
    for _ in range(8):
        path.append(bond)
        bond, direction = next_bond(bond, direction, 4)
    assert path == [0, 1, 2, 3, 2, 1, 0, 1]


# ---------------------------------------------------------------------------------------------
# degenerate spectra


def test_rank_deficient_merged_tensor_splits_without_nan() -> None:
    u = torch.linalg.qr(torch.randn(12, 3, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(20, 3, dtype=torch.float64))[0]
    matrix = u[:, :2] @ v[:, :2].T * 2.0            # rank 2, two equal singular values
    merged = matrix.reshape(3, 2, 2, 2, 5, 2).to(torch.float32)
    a, b = split(merged, 8, 1e-10)
    assert a.shape[3] == 2 and torch.isfinite(a).all() and torch.isfinite(b).all()
    torch.testing.assert_close(merge(a, b), merged, atol=1e-6, rtol=1e-5)
    a, b = split(torch.zeros(2, 2, 1, 2, 1, 2), 8, 1e-10)          # all zero: one zero bond
    assert a.shape[3] == 1 and not a.isnan().any() and not b.isnan().any()


def test_failing_svd_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = torch.linalg.svd

    def flaky(a: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise torch.linalg.LinAlgError("did not converge")
        if len(calls) == 2:
            u, s, vh = real(a, *args, **kwargs)
            return u, s * float("nan"), vh
        return real(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", flaky)
    matrix = torch.ones(6, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="retrying through the other orientation"):
        u, s, vh = robust_svd(matrix)
    assert len(calls) == 3 and torch.isfinite(s).all()
    torch.testing.assert_close((u * s) @ vh, matrix)
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: (_ for _ in ()).throw(
        torch.linalg.LinAlgError("no")))
    with pytest.warns(RuntimeWarning), \
            pytest.raises(DMRGError, match="SVD of a \\(6, 4\\) merged tensor failed"):
        robust_svd(matrix)


def test_degenerate_chain_trains_without_nan() -> None:
    """An all-constant chain (every merged tensor of rank 1, repeated zero singular values)."""
    stepper = _stepper(_mps16(4).replace("output_dim: 10}", "output_dim: 10, init: ones}"),
                       max_rank=8)
    x, y = _data16()
    for k in range(10):
        stepper.step(x[:32], lambda o: F.cross_entropy(o / 1e4, y[:32]))
        assert all(torch.isfinite(c).all() for c in stepper.cores), k
    assert all(torch.isfinite(p).all() for p in stepper.module.parameters())


# ---------------------------------------------------------------------------------------------
# the stepper on compiled networks


@pytest.mark.parametrize("spec", [_mps16(3), RAW], ids=["mps16", "raw"])
def test_merged_forward_equals_compiled_module(spec: str) -> None:
    torch.manual_seed(0)
    stepper = _stepper(spec, lr=0.05, max_rank=6)
    n = stepper.layout.n
    x = torch.rand(9, n)
    y = torch.randint(0, 2, (9,))
    torch.testing.assert_close(stepper.forward(x), stepper.module(x).detach())
    for k in range(2 * n - 2):   # a full sweep there and back: every bond, both directions
        stepper.step(x, lambda o: F.cross_entropy(o.reshape(9, -1), y))
        if k % 4 and k != 2 * n - 3:
            continue
        torch.testing.assert_close(stepper.forward(x), stepper.module(x).detach(),
                                   atol=2e-5, rtol=1e-4)
        assert stepper.module.spec.network.nodes[stepper.layout.chain.nodes[1]].legs[
            stepper.layout.chain.sites[1].left] == stepper.bond_dims()[0]


def test_loss_decreases_and_bond_dims_grow_within_max_rank() -> None:
    x, y = _data16()
    stepper = _stepper(_mps16(2), lr=0.02, max_rank=8)
    assert stepper.bond_dims() == [2] * 15

    def full_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(stepper.module(x), y))

    before = full_loss()
    seen = []
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):                           # two sweeps there and back
        index = torch.randint(0, x.shape[0], (64,), generator=generator)
        stepper.step(x[index], lambda o, index=index: F.cross_entropy(o, y[index]))
        seen.append(max(stepper.bond_dims()))
    after = full_loss()
    assert after < 0.7 * before, (before, after)
    assert max(seen) <= 8 and max(stepper.bond_dims()) > 2
    spec_dims = stepper.layout.chain.bond_dims(stepper.module.spec)
    assert spec_dims == stepper.bond_dims()
    assert stepper.describe()["bond_dims"] == spec_dims


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_one_step_lowers_the_batch_loss(inner: str) -> None:
    x, y = _data16()
    module = tngraph.compile(_mps16(3), cache=False)
    stepper = DMRG.create(module, DMRGOptions(inner=inner, steps_per_bond=3),
                          OptimizerContext(lr=1e-3, weight_decay=1e-4))
    losses = [float(stepper.step(x[:64], lambda o: F.cross_entropy(o, y[:64]))[0])
              for _ in range(3)]
    assert losses[2] < losses[1] < losses[0], losses
    assert stepper.bond == 1 and stepper.state_dict()["moments"] is None


def test_a_start_above_max_rank_is_truncated_at_the_first_step() -> None:
    x, y = _data16()
    stepper = _stepper(_mps16(12), max_rank=4)
    stepper.step(x[:16], lambda o: F.cross_entropy(o, y[:16]))
    assert max(stepper.bond_dims()) <= 4
    assert max(stepper.layout.chain.bond_dims(stepper.module.spec)) <= 4


def test_non_finite_loss_changes_nothing() -> None:
    stepper = _stepper(_mps16(2))
    x, _ = _data16()
    stepper.step(x[:8], lambda o: o.sum() * 0)
    cores = [c.clone() for c in stepper.cores]
    state = stepper.state_dict()
    with pytest.raises(NonFiniteLoss):
        stepper.step(x[:8], lambda o: o.sum() * float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(cores, stepper.cores))
    assert stepper.state_dict() == state


def test_exact_resume(digits16: Path, tmp_path: Path) -> None:
    """2 epochs == 1 epoch + resume (20 batches per epoch, 3 steps per bond: the first epoch
    ends in the middle of a bond, with Adam moments in flight)."""
    spec = tngraph.load_spec(_mps16(2, digits16))
    whole = train(spec, run_dir=tmp_path / "whole", echo=None)
    train(spec, run_dir=tmp_path / "part", epochs=1, echo=None)
    state = torch.load(tmp_path / "part" / "state.pt", weights_only=False)["stepper"]
    assert state["count"] == 2 and state["moments"] is not None
    resumed = train(resume=tmp_path / "part", epochs=2, echo=None)

    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "spec.yaml").read_text() == \
        (tmp_path / "part" / "spec.yaml").read_text()
    last = [json.loads(p.read_text().splitlines()[-1]) for p in
            (tmp_path / "whole" / "metrics.jsonl", tmp_path / "part" / "metrics.jsonl")]
    for key in ("train_loss", "train_metric", "val_loss", "val_metric"):
        assert last[0][key] == pytest.approx(last[1][key], rel=1e-5)
    assert resumed.test == pytest.approx(whole.test, rel=1e-5)
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert summary["optimizer"]["name"] == "dmrg" and max(summary["optimizer"]["bond_dims"]) <= 8


# ---------------------------------------------------------------------------------------------
# unsuitable networks, options, CLI


@pytest.mark.parametrize(("spec", "error", "message"), [
    ("models/ring3.yaml", ChainError, "ring"),
    ("tngraph: 1\nname: open\nnetwork: {template: mps, sites: 4, phys_dim: 2, bond_dim: 2}\n",
     DMRGError, "0 data ports"),
    ("tngraph: 1\nname: one\nnetwork: {template: mps, sites: 1, phys_dim: 2, bond_dim: 2, "
     "input: x}\n", DMRGError, "at least two"),
    (STAR, ChainError, "not a chain"),
])
def test_unsuitable_networks_are_refused(spec: str, error: type, message: str) -> None:
    module = tngraph.compile(spec, cache=False)
    with pytest.raises(error, match=message):
        get_optimizer("dmrg").create(module, DMRGOptions(), OptimizerContext(lr=0.01))


def test_options_are_validated() -> None:
    assert DMRG.options().model_dump() == {"layers": None, "layer_lr": None, "max_rank": 32,
                                           "cutoff": 1e-10, "steps_per_bond": 1,
                                           "inner": "adam"}
    with pytest.raises(ValueError, match="steps_per_bond"):
        DMRGOptions(steps_per_bond=0)
    with pytest.raises(ValueError, match="extra"):
        DMRGOptions(rank=3)


def test_cli_refuses_a_ring_with_exit_code_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "ring.yaml"
    spec.write_text(textwrap.dedent("""\
        tngraph: 1
        name: ring
        network: {template: mps, sites: 4, phys_dim: 2, bond_dim: 2, input: x,
                  feature_map: multilinear, output_dim: 2, boundary: periodic}
        """))
    code = main(["train", str(spec), "--optimizer", "dmrg", "--data",
                 "synthetic-regression?n_features=4&n_targets=2", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "ring" in capsys.readouterr().err


def test_cli_trains_the_mps_classifier(tmp_path: Path) -> None:
    assert main(["train", "models/mps_classifier.yaml", "--optimizer", "dmrg?max_rank=20",
                 "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["optimizer"]["name"] == "dmrg"
    assert max(summary["optimizer"]["bond_dims"]) <= 20
    assert np.isfinite(summary["test"]["loss"])


def test_the_rank_cap_is_max_rank_and_reads_its_old_name() -> None:
    assert DMRG.options(max_bond=12).max_rank == 12
    assert not check_optimizer(NamedOptions(name="dmrg", max_bond=12), None, ())
    (problem,) = check_optimizer(NamedOptions(name="dmrg", max_bnd=12), None, ())
    assert "unknown option 'max_bnd'; did you mean 'max_rank'" in problem.message


def test_the_best_epoch_is_tested_in_its_own_network(digits16: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """dmrg changes the bond dimensions from epoch to epoch: when an earlier epoch is the best,
    its weights are tested (and evaluated by ``tngraph eval RUN``) in the network of that
    epoch, from their metadata, not in the final spec.yaml's."""
    import tngraph.train.loop as loop
    from tngraph.cli import main
    from tngraph.data import load_dataset
    from tngraph.train import evaluate, load_weights, tested_weights

    monkeypatch.setattr(loop, "best_epoch", lambda history: 1 if history else None)
    run = tmp_path / "run"
    result = train(tngraph.load_spec(_mps16(2, digits16)), run_dir=run, echo=None)
    assert result.tested == ("best", 1)
    path, text = tested_weights(run)
    assert path.name == "best.safetensors" and text is not None     # another network
    assert text != (run / "spec.yaml").read_text()
    module = tngraph.compile(tngraph.load_spec(text))
    load_weights(module, path)
    dataset = load_dataset(f"csv:{digits16}?label=label")
    assert evaluate(module, dataset, "test") == pytest.approx(result.test)
    assert main(["eval", str(run)]) == 0
