"""Golden outputs of the CLI: what ``tngraph validate``, ``expand``, ``compile`` and
``templates`` print for the shipped models, byte for byte (``tests/golden/cli/``).

The cost reports are planned with the exact ``optimal`` path finder and without the cache, and
their two timing rows (``plan search time``, ``plan cache``) are masked, so the outputs do not
depend on the machine. After an intended change of output, rewrite the files with
``TNGRAPH_UPDATE_GOLDEN=1 python -m pytest tests/test_cli_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tngraph.cli import main

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "cli"
MODELS = sorted(p.name for p in (ROOT / "models").glob("*.yaml"))
#: small networks whose exact plan is quick and unique
COMPILED = ["mps.yaml", "mpo.yaml", "ring3.yaml", "tt_linear.yaml", "mps_classifier.yaml",
            "two_mps.yaml"]
_TIMING = re.compile(r"^(  (?:plan search time|plan cache)\s+).*$", re.MULTILINE)

CASES = ([(f"validate-{m}", ["validate", f"models/{m}"]) for m in MODELS]
         + [(f"expand-{m}", ["expand", f"models/{m}"]) for m in MODELS]
         + [(f"compile-{m}", ["compile", f"models/{m}", "--optimize", "optimal", "--no-cache"])
            for m in COMPILED]
         + [("templates", ["templates"]),
            ("compile-unknown-path-finder", ["compile", "models/ring3.yaml", "--optimize",
                                             "gredy"])])


@pytest.mark.parametrize(("name", "argv"), CASES, ids=[name for name, _ in CASES])
def test_cli_output_matches_golden(name: str, argv: list[str], capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    code = main(argv)
    captured = capsys.readouterr()
    stdout = _TIMING.sub(r"\1<timing>", captured.out)
    text = f"exit {code}\n--- stdout\n{stdout}--- stderr\n{captured.err}"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("TNGRAPH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"no golden output {path}: run with TNGRAPH_UPDATE_GOLDEN=1"
    assert text == path.read_text()
