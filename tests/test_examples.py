"""The example scripts still run (a few epochs; no numbers asserted beyond sanity)."""

from __future__ import annotations

import pytest
from helpers import load_script


def test_seed004_regression_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("examples/seed004_regression.py", "seed004")
    assert module.main(["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "dense least squares" in out and "TT-SVD of the LS weight" in out
    dense_r2 = float(out.splitlines()[1].split()[-2])
    assert dense_r2 > 0.999                 # 4096 features, 256 samples: an exact fit


def test_seed000_distillation_runs(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("examples/seed000_distillation.py", "seed000")
    args = ["--bonds", "2", "--seeds", "0", "--epochs", "1", "--teacher-epochs", "1",
            "--out", str(tmp_path)]
    assert module.main(args) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.strip().startswith("2 |")]
    assert len(row) == 1 and row[0].count("±") == 3
    assert (tmp_path / "results.json").is_file()
    assert module.main(args) == 0          # finished runs are reused, not trained again


def test_digits_models_runs(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("examples/digits_models.py", "digits_models")
    assert module.main(["--models", "mlp", "--seeds", "0", "--epochs", "1",
                        "--out", str(tmp_path)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("mlp")]
    assert "85,002" in row and "±" in row


def test_tt_embedding_fit_runs(capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("examples/tt_embedding_fit.py", "tt_embedding_fit")
    assert module.main(["--quick"]) == 0
    rows = {line[:46].strip(): line[46:].split() for line in capsys.readouterr().out.splitlines()}
    params, _, _, held, clean = rows["TT embedding, rank 4"]
    assert params == "640" and float(held) < 0.15 and float(clean) < 0.05  # down to the noise
    assert rows["TT embedding, rank 2"][0] == "192"
    assert float(rows["dense nn.Embedding"][3]) > 1.0        # unseen rows are never fitted
