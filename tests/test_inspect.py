"""``tngraph inspect``: chains found in networks, their spectra against the SVD of the dense
tensor, the ranks a truncation error allows, the files and the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import tngraph
from tngraph import cli
from tngraph.inspect_run import InspectError, find_chain, inspect_module, truncation_rank

ROOT = Path(__file__).resolve().parent.parent
Capture = pytest.CaptureFixture[str]


def _dense_spectrum(dense: torch.Tensor, rows: int) -> list[float]:
    s = torch.linalg.svdvals(dense.double().reshape(rows, -1))
    return [float(v) for v in s if v > 1e-10 * s[0]]


def _nonzero(values: list[float]) -> list[float]:
    return [v for v in values if v > 1e-10 * values[0]]


@pytest.mark.parametrize(("model", "overrides", "rows"), [
    ("mps.yaml", {"sites": 4, "bond_dim": 3}, [2, 4, 8]),
    ("ring3.yaml", {}, [3, 12]),             # open legs A.i (3), B.j (4), C.k (3)
])
def test_spectra_are_the_singular_values_of_the_dense_tensor(model: str, overrides: dict,
                                                             rows: list[int]) -> None:
    module = tngraph.compile(ROOT / "models" / model, overrides, dtype="float64", cache=False,
                             seed=3)
    with torch.no_grad():
        dense = module()                      # no data ports: the whole tensor
    (chain,) = inspect_module(module)["chains"]
    assert len(chain["spectra"]) == len(rows)
    for spectrum, r in zip(chain["spectra"], rows):
        assert _nonzero(spectrum) == pytest.approx(_dense_spectrum(dense, r), rel=1e-9)
    for spectrum, entropy in zip(chain["spectra"], chain["entropy"]):
        p = np.array(spectrum) ** 2 / np.sum(np.array(spectrum) ** 2)
        assert entropy == pytest.approx(float(-(p[p > 0] * np.log(p[p > 0])).sum()))


def test_a_ring_is_cut_at_two_bonds() -> None:
    module = tngraph.compile(ROOT / "models" / "ring3.yaml", cache=False)
    (chain,) = inspect_module(module)["chains"]
    assert chain["kind"] == "ring" and chain["nodes"] == ["A", "B", "C"]
    assert chain["bonds"] == ["A-B +C-A", "B-C +C-A"]
    assert chain["bond_dims"] == [5 * 2, 6 * 2]              # chi * the closing bond (2)
    assert chain["max_entropy"] == pytest.approx([math.log(3), math.log(3)])


@pytest.mark.parametrize("eps", [1e-3, 0.05, 0.3])
def test_ranks_at_eps_keep_the_discarded_weight_within_eps(eps: float) -> None:
    module = tngraph.compile(ROOT / "models" / "mps.yaml", {"sites": 6, "bond_dim": 4},
                             cache=False, seed=1)
    (chain,) = inspect_module(module, eps=eps)["chains"]
    norm = math.sqrt(sum(v * v for v in chain["spectra"][0]))
    delta = eps / math.sqrt(len(chain["spectra"])) * norm
    for spectrum, rank in zip(chain["spectra"], chain["ranks_at_eps"]):
        assert math.sqrt(sum(v * v for v in spectrum[rank:])) <= delta
        assert rank == 1 or math.sqrt(sum(v * v for v in spectrum[rank - 1:])) > delta


@pytest.mark.parametrize(("spectrum", "delta", "rank"), [
    ([3.0, 2.0, 0.1, 0.01], 0.2, 2), ([3.0, 2.0], 0.0, 2), ([1.0, 1.0, 1.0], 10.0, 1),
    ([2.0, 0.3, 0.4], 0.5, 1),
])
def test_truncation_rank(spectrum: list[float], delta: float, rank: int) -> None:
    assert truncation_rank(spectrum, delta) == rank


def test_the_tt_layer_of_a_pipeline_is_a_chain_of_in_and_out_legs() -> None:
    module = tngraph.compile(ROOT / "models" / "cnn_tt.yaml", {"rank": 3}, cache=False)
    report = inspect_module(module)
    (chain,) = report["chains"]
    assert (chain["name"], chain["nodes"], chain["bond_dims"]) == ("fc1", ["G0", "G1", "G2"],
                                                                  [3, 3])
    network = module.layers["fc1"]
    found = find_chain(network.spec.network, dict(network.tensors), "fc1")
    assert found.legs == (("i", "o"), ("i", "o"), ("i", "o"))


def test_a_network_that_is_no_chain_is_refused_with_what_works() -> None:
    module = tngraph.compile(ROOT / "models" / "peps.yaml", {"rows": 2, "cols": 3},
                             cache=False)
    with pytest.raises(InspectError) as info:
        inspect_module(module)
    assert str(info.value) == (
        "no chain to inspect (peps: tensor P0_1 has 3 neighbours (a chain has at most 2))\n"
        "  hint: inspect reads MPS, TT-layers (MPOs) and tensor rings: networks whose tensors "
        "are joined in a line or a ring")


# -- tngraph inspect RUN ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(1)
    x = rng.random((60, 6))
    lines = ["a,b,c,d,e,f,label"] + [",".join(f"{v:.4f}" for v in row) + f",{int(row[0] > .5)}"
                                     for row in x]
    (root / "d.csv").write_text("\n".join(lines) + "\n")
    specs = {
        "mps": "network: {template: mps, sites: 6, phys_dim: 2, bond_dim: 3, input: x, "
               "feature_map: multilinear, output_dim: 2}",
        "linear": "input_shape: [6]\nlayers:\n  - {type: linear, name: fc, out_features: 2}",
    }
    found = {}
    for name, body in specs.items():
        (root / f"{name}.yaml").write_text(f"tngraph: 1\nname: {name}\n{body}\n"
                                           "train: {epochs: 1, batch_size: 16}\n")
        found[name] = root / name
        assert cli.main(["train", str(root / f"{name}.yaml"), "--data",
                         f"csv:{root / 'd.csv'}", "--out", str(found[name])]) == 0
    return found


def test_inspect_writes_json_and_png(runs: dict[str, Path], tmp_path: Path,
                                     capsys: Capture) -> None:
    code = cli.main(["inspect", str(runs["mps"]), "--eps", "0.1", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[:2] == [
        "mps (chain, 5 bonds)",
        "  bond    dim   entropy (nats)   of max   rank at eps 0.1"]
    record = json.loads((tmp_path / "inspect.json").read_text())
    (chain,) = record["chains"]
    assert record["eps"] == 0.1 and chain["bond_dims"] == [3] * 5
    assert len(chain["entropy"]) == 5 and all(r <= d for r, d in zip(chain["ranks_at_eps"],
                                                                     chain["bond_dims"]))
    assert (tmp_path / "spectra.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(("run", "argv", "expected"), [
    ("linear", [], "{run}: error: pipeline 'linear' has no tensor-network layer\n"
                   "  hint: inspect reads MPS, TT-layers (MPOs) and tensor rings: networks "
                   "whose tensors are joined in a line or a ring\n"),
    ("mps", ["--eps", "2"], "{run}: error: --eps must be a relative error between 0 and 1, "
                            "got 2.0\n  hint: e.g. --eps 0.01 for the bond dimensions that "
                            "keep 99% of the norm\n"),
], ids=["no-network", "eps"])
def test_inspect_user_errors(runs: dict[str, Path], capsys: Capture, tmp_path: Path, run: str,
                             argv: list[str], expected: str) -> None:
    code = cli.main(["inspect", str(runs[run]), "--out", str(tmp_path), *argv])
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", expected.format(run=runs[run]))
