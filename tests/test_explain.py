"""Attributions (``tngraph.explain``, ``tngraph explain``) against hand computations.

The CLI tests train two tiny runs on a small CSV written here (a CNN over 4x4 images and an
MPS over the same 16 features), so that they take seconds; the no-signal test trains a small
MPS on a synthetic task in the test itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import tngraph
from tngraph import cli
from tngraph.attribution import ExplainError, explain, resolve_target, similarity

Capture = pytest.CaptureFixture[str]

TINY_CNN = """tngraph: 1
name: tiny_cnn
input_shape: [16]
layers:
  - {type: reshape, name: image, shape: [1, 4, 4]}
  - {type: conv2d, name: conv1, out_channels: 2, kernel_size: 3, padding: 1}
  - {type: relu, name: act1}
  - {type: conv2d, name: conv2, out_channels: 3, kernel_size: 3, padding: 1}
  - {type: tanh, name: act2}
  - {type: flatten, name: features}
  - {type: linear, name: fc, out_features: 3}
train: {epochs: 1, batch_size: 32, lr: 0.01}
"""


def _mps(sites: int, outputs: int, bond: int = 2) -> str:
    return (f"tngraph: 1\nname: tiny_mps\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
            f"bond_dim: {bond}, input: x, feature_map: multilinear, output_dim: {outputs}}}\n"
            "train: {epochs: 1, batch_size: 32, lr: 0.01}\n")


@pytest.fixture(scope="module")
def cnn() -> tngraph.Pipeline:
    torch.manual_seed(0)
    return tngraph.compile(TINY_CNN, dtype="float64", cache=False, seed=1).eval()


@pytest.fixture(scope="module")
def mps() -> tngraph.TNModule:
    return tngraph.compile(_mps(6, 3, 3), dtype="float64", cache=False, seed=2)


def _hand_gradient(module: torch.nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """Each example's gradient of output ``k``, one autograd call per example."""
    rows = []
    for row in x:
        row = row.clone().requires_grad_(True)
        module(row[None])[0, k].backward()
        rows.append(row.grad)
    return torch.stack(rows)


# -- the methods, by hand -----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["cnn", "mps"])
def test_gradient_is_autograd(which: str, request: pytest.FixtureRequest) -> None:
    module = request.getfixturevalue(which)
    x = torch.rand(5, 16 if which == "cnn" else 6, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(3))
    got = explain(module, x, "gradient", target=1, batch_size=2)
    torch.testing.assert_close(got, _hand_gradient(module, x, 1))


def test_predicted_and_true_targets(mps: tngraph.TNModule) -> None:
    x = torch.rand(4, 6, dtype=torch.float64)
    predicted = mps(x).argmax(1)
    by_hand = torch.stack([_hand_gradient(mps, x[k:k + 1], int(c))[0]
                           for k, c in enumerate(predicted)])
    torch.testing.assert_close(explain(mps, x), by_hand)
    torch.testing.assert_close(explain(mps, x, target="true", y=predicted), by_hand)


@pytest.mark.parametrize("steps", [2, 8, 32])
def test_integrated_gradients_completeness_shrinks_with_steps(mps: tngraph.TNModule,
                                                              steps: int) -> None:
    """Midpoint rule on a smooth score: |sum(attr) - (f(x) - f(b))| <= C / steps^2."""
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    base = torch.full((6,), 0.25, dtype=torch.float64)
    attr = explain(mps, x, "integrated-gradients", target=0, steps=steps, baseline=base)
    with torch.no_grad():
        delta = mps(x)[:, 0] - mps(base.expand_as(x))[:, 0]
    gap = float((attr.sum(1) - delta).abs().max())
    scale = float(delta.abs().max())
    assert gap <= 0.5 * scale / steps ** 2, (gap, scale)


def test_a_complex_network_is_explained_by_its_born_rule_scores() -> None:
    """A complex classifier's class score is log |out_c|^2 (what it trains on): the predicted
    class is its argmax, and the gradient is that score's (complex outputs once ended the
    explanation with an internal error)."""
    module = tngraph.compile(_mps(6, 3, 3), dtype="complex128", cache=False, seed=2)
    x = torch.rand(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        scores = module(x).abs().square().log()
    predicted = resolve_target(module, x, "predicted")
    assert torch.equal(predicted, scores.argmax(1))
    rows = []
    for row, k in zip(x, predicted):
        row = row.clone().requires_grad_(True)
        module(row[None])[0, k].abs().square().log().backward()
        rows.append(row.grad)
    got = explain(module, x)
    assert not got.is_complex()
    torch.testing.assert_close(got, torch.stack(rows))


def test_smoothgrad_without_noise_is_the_gradient(cnn: tngraph.Pipeline) -> None:
    x = torch.rand(3, 16, dtype=torch.float64)
    torch.testing.assert_close(explain(cnn, x, "smoothgrad", noise=0.0, noise_samples=3,
                                       target=2),
                               explain(cnn, x, "gradient", target=2))


def test_smoothgrad_is_the_mean_gradient_of_noisy_copies(cnn: tngraph.Pipeline) -> None:
    x = torch.rand(3, 16, dtype=torch.float64)
    got = explain(cnn, x, "smoothgrad", noise=0.2, noise_samples=2, target=0, seed=7)
    generator = torch.Generator().manual_seed(7)
    sigma = 0.2 * (x.max(1).values - x.min(1).values)[:, None]
    noisy = [x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)
             for _ in range(2)]
    by_hand = sum(_hand_gradient(cnn, v, 0) for v in noisy) / 2
    torch.testing.assert_close(got, by_hand)


def _hand_cam(module: tngraph.Pipeline, x: torch.Tensor, k: int, at: str) -> torch.Tensor:
    """relu(sum_c mean(dS/dA_c) A_c) at layer ``at``'s output ``A``, by running the layers."""
    h = x.reshape(x.shape[0], *module.shapes["image"])
    names = list(module.layers)
    for name in names[1:names.index(at) + 1]:
        h = module.layers[name](h)
    a = h.detach().requires_grad_(True)
    out = a
    for name in names[names.index(at) + 1:]:
        out = module.layers[name](out)
    out[:, k].sum().backward()
    return torch.relu((a.grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()


@pytest.mark.parametrize("layer", [None, "conv1"])
def test_gradcam_by_hand(cnn: tngraph.Pipeline, layer: str | None) -> None:
    """conv1 and conv2 keep the 4x4 size: no upsampling; the default is the last conv."""
    x = torch.rand(3, 16, dtype=torch.float64)
    got = explain(cnn, x, "gradcam", target=1, layer=layer)
    torch.testing.assert_close(got, _hand_cam(cnn, x, 1, layer or "conv2").reshape(3, 16))


def test_gradcam_upsamples_to_the_image() -> None:
    """conv2 without padding gives 3x3 maps: bilinear to 4x4, repeated over 2 channels."""
    spec = TINY_CNN.replace("kernel_size: 3, padding: 1}\n  - {type: tanh",
                            "kernel_size: 2, padding: 0}\n  - {type: tanh")
    module = tngraph.compile(spec, dtype="float64", cache=False).eval()
    assert module.shapes["conv2"] == (3, 3, 3)
    x = torch.rand(2, 16, dtype=torch.float64)
    cam = _hand_cam(module, x, 0, "conv2")
    expected = torch.nn.functional.interpolate(cam, size=(4, 4), mode="bilinear",
                                               align_corners=False)
    torch.testing.assert_close(explain(module, x, "gradcam", target=0),
                               expected.reshape(2, 16))


def test_gradcam_on_a_tensor_network_says_which_methods_work(mps: tngraph.TNModule) -> None:
    with pytest.raises(ExplainError) as info:
        explain(mps, torch.rand(2, 6), "gradcam")
    assert str(info.value) == (
        "gradcam needs a conv layer, and network 'tiny_mps' is a pure tensor network\n"
        "  hint: use --method gradient, smoothgrad, integrated-gradients: they work on any "
        "network")


# -- similarity ---------------------------------------------------------------------------------

def test_similarity_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    b = torch.tensor([[1.0, 2.0, 4.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    result = similarity(a, -b, k=2)   # signs do not count: |attribution|
    # example 0: ranks 1234 vs 1243, 1 - 6 * 2 / (4 * 15) = 0.8; example 1: reversed, -1
    assert result["spearman_per_example"] == pytest.approx([0.8, -1.0])
    assert result["spearman"] == pytest.approx(-0.1)
    assert result["top_k_overlap"] == pytest.approx((2 / 2 + 0 / 2) / 2)
    assert similarity(a, a)["spearman"] == 1.0


def test_similarity_leaves_out_constant_maps() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    result = similarity(a, a + 1)
    assert result["constant"] == 1 and result["spearman"] == 1.0
    assert result["spearman_per_example"][1] is None


# -- a feature that carries no signal ranks last ---------------------------------------------------

@pytest.fixture(scope="module")
def trained_on_synthetic() -> tuple[tngraph.TNModule, torch.Tensor]:
    """y = [x0 + x1 - x2 > 0.5] over uniform x in [0, 1]^4; x3 is noise."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(256, 4, generator=generator)
    y = (x[:, 0] + x[:, 1] - x[:, 2] > 0.5).long()
    module = tngraph.compile(_mps(4, 2, 3), cache=False, seed=0)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()
    accuracy = float((module(x).argmax(1) == y).float().mean())
    assert accuracy > 0.9, accuracy
    return module, x[:64]


@pytest.mark.parametrize("method", ["gradient", "smoothgrad", "integrated-gradients"])
def test_a_feature_without_signal_ranks_below_the_others(
        trained_on_synthetic: tuple[tngraph.TNModule, torch.Tensor], method: str) -> None:
    module, x = trained_on_synthetic
    attr = explain(module, x, method, steps=16, noise_samples=8, baseline=0.5)
    importance = attr.abs().mean(0)
    assert int(importance.argmin()) == 3, importance.tolist()
    assert float(importance[3]) < 0.5 * float(importance[:3].min()), importance.tolist()


# -- tngraph explain RUN --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny runs on one CSV (16 features, 3 classes), and a third on another seed."""
    root = tmp_path_factory.mktemp("explain")
    rng = np.random.default_rng(0)
    x = rng.random((90, 16))
    y = (x[:, :4].sum(1) > 2).astype(int) + (x[:, 4] > 0.5)
    lines = [",".join([f"f{i}" for i in range(16)] + ["label"])]
    lines += [",".join(f"{v:.4f}" for v in row) + f",{label}" for row, label in zip(x, y)]
    (root / "d.csv").write_text("\n".join(lines) + "\n")
    (root / "cnn.yaml").write_text(TINY_CNN)
    (root / "mps.yaml").write_text(_mps(16, 3))
    data = f"csv:{root / 'd.csv'}"
    found = {}
    for name, spec, seed in (("cnn", "cnn.yaml", "0"), ("mps", "mps.yaml", "0"),
                             ("mps-seed1", "mps.yaml", "1")):
        found[name] = root / name
        assert cli.main(["train", str(root / spec), "--data", data, "--seed", seed, "--out",
                         str(found[name])]) == 0
    return found


def run(capsys: Capture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_explain_writes_the_maps_and_the_summary(runs: dict[str, Path], tmp_path: Path,
                                                  capsys: Capture) -> None:
    out = tmp_path / "smooth"
    code, stdout, _ = run(capsys, "explain", str(runs["cnn"]), "--method", "smoothgrad",
                          "--samples", "5", "--noise-samples", "4", "--compare",
                          str(runs["mps"]), "--out", str(out))
    assert code == 0
    assert stdout.startswith(f"{runs['cnn']}: smoothgrad on 5 test examples -> {out}/")
    assert "compared with" in stdout and "Spearman" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["method"], summary["samples"], summary["split"]) == ("smoothgrad", 5, "test")
    assert len(summary["mean_abs_attribution"]) == 16
    tensors = load_file(str(out / "attributions.safetensors"))
    assert tensors["attributions"].shape == tensors["inputs"].shape == (5, 16)
    expected = tensors["attributions"].abs().mean(0)
    assert summary["mean_abs_attribution"] == pytest.approx(expected.tolist())
    compared = summary["compare"]
    assert compared["top_k"] == 1 and 0 <= compared["top_k_overlap"] <= 1
    again = similarity(tensors["attributions"], tensors["compare_attributions"])
    assert compared["spearman"] == pytest.approx(again["spearman"])
    assert (out / "attributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_gradcam_and_integrated_gradients(runs: dict[str, Path], tmp_path: Path,
                                                  capsys: Capture) -> None:
    code, _, _ = run(capsys, "explain", str(runs["cnn"]), "--method", "gradcam", "--samples",
                     "3", "--target", "true", "--out", str(tmp_path / "cam"))
    summary = json.loads((tmp_path / "cam" / "summary.json").read_text())
    assert code == 0 and summary["options"]["layer"] == "conv2"
    assert summary["targets"] == summary["labels"]
    code, _, _ = run(capsys, "explain", str(runs["mps"]), "--method", "integrated-gradients",
                     "--steps", "16", "--baseline", "mean", "--samples", "3", "--target", "2",
                     "--out", str(tmp_path / "ig"))
    summary = json.loads((tmp_path / "ig" / "summary.json").read_text())
    assert code == 0 and summary["targets"] == [2, 2, 2]
    assert summary["completeness_gap"] < 1e-3


@pytest.mark.parametrize(("argv", "expected"), [
    (["--method", "gradiant"],
     "{cnn}: error: unknown --method 'gradiant'\n"
     "  hint: did you mean 'gradient'? valid: gradcam, gradient, integrated-gradients, "
     "smoothgrad\n"),
    (["--method", "gradcam", "--layer", "act1"],
     "{cnn}: error: --layer 'act1' is not a conv layer; gradcam reads a conv layer's output\n"
     "  hint: valid: conv1, conv2\n"),
    (["--method", "gradcam", "--layer", "conv3"],
     "{cnn}: error: --layer 'conv3' is not a layer of the model; gradcam reads a conv layer's "
     "output\n  hint: did you mean 'conv2'? valid: conv1, conv2\n"),
    (["--method", "gradcam", "--compare", "{mps}"],
     "{cnn}: error: gradcam needs a conv layer, and network 'tiny_mps' (--compare {mps}) is a "
     "pure tensor network\n  hint: use --method gradient, smoothgrad, integrated-gradients: "
     "they work on any network\n"),
    (["--compare", "{root}/nothing"],
     "{cnn}: error: --compare {root}/nothing: no such run directory\n"
     "  hint: give another run trained on the same dataset, e.g. "
     "runs/cnn_tt-20250101-120000\n"),
    (["--compare", "{cnn}"],
     "{cnn}: error: --compare {cnn} is the run being explained\n"
     "  hint: compare with another run trained on the same dataset\n"),
    (["--compare", "{mps1}"],
     "{cnn}: error: --compare {mps1} was trained on csv:{root}/d.csv (seed 1) but {cnn} on "
     "csv:{root}/d.csv (seed 0): their splits hold other examples\n"
     "  hint: compare two runs trained with the same --data and --seed\n"),
    (["--target", "best"],
     "{cnn}: error: --target must be predicted, true or a class id, got 'best'\n"
     "  hint: valid: predicted, true\n"),
], ids=["method", "layer-not-conv", "layer-unknown", "gradcam-tn", "compare-missing",
        "compare-itself", "compare-other-split", "target"])
def test_explain_user_errors(runs: dict[str, Path], capsys: Capture, argv: list[str],
                             expected: str) -> None:
    names = {"cnn": runs["cnn"], "mps": runs["mps"], "mps1": runs["mps-seed1"],
             "root": runs["cnn"].parent}
    code, out, err = run(capsys, "explain", str(runs["cnn"]),
                         *[a.format(**names) for a in argv])
    assert (code, out, err) == (2, "", expected.format(**names))


def test_explain_a_folder_that_is_no_run(tmp_path: Path, capsys: Capture) -> None:
    code, _, err = run(capsys, "explain", str(tmp_path))
    assert code == 2
    assert err == (f"{tmp_path}: error: {tmp_path} is a folder without spec.yaml; give a run "
                   "directory written by tngraph train\n")


def test_the_public_api_explains() -> None:
    linear = torch.nn.Linear(3, 2)
    got = tngraph.explain(linear, torch.ones(2, 3), method="integrated-gradients", target=1)
    torch.testing.assert_close(got, linear.weight[1].detach().expand(2, 3))
