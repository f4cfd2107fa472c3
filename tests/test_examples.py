"""The example scripts still run (a few epochs; no numbers asserted beyond sanity)."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import ROOT


def test_seed004_regression_runs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("seed004", ROOT / "examples" /
                                                  "seed004_regression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "dense least squares" in out and "TT-SVD of the LS weight" in out
    dense_r2 = float(out.splitlines()[1].split()[-2])
    assert dense_r2 > 0.999                 # 4096 features, 256 samples: an exact fit
