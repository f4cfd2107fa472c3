"""Golden error tests: one spec per user mistake in ``tests/specs/bad/``.

Each file starts with one ``# expect: LINE:COL: TEXT`` comment per problem it holds (the file
name is implied). ``TEXT`` must occur in the problem's message and hint, read as
``message  hint: hint``; `` ... `` separates pieces that must occur in that order. Every
expected problem must be reported, in one run, and no others. ``# set: KEY=VALUE`` lines are
passed as parameter overrides (``--set``).

Specs given as Python dicts are in ``tests/specs/bad_dict/*.pydata``: a Python literal (read
with ``ast.literal_eval``) after ``# expect: KEY.PATH: TEXT`` lines, located by key path
(``network.edges[0][1]``; an empty path for the whole spec).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tngraph import cli
from tngraph.errors import Problem, SpecError, format_key_path
from tngraph.spec import load_spec, parse_override

BAD_DIR = Path(__file__).parent / "specs" / "bad"
BAD_SPECS = sorted(BAD_DIR.glob("*.yaml"))
_EXPECT_RE = re.compile(r"^# expect: (\d+):(\d+): (.+)$")


@dataclass(frozen=True)
class Expected:
    line: int
    column: int
    text: str

    def matches(self, problem: Problem, filename: str) -> bool:
        loc = problem.location
        if loc is None or (loc.filename, loc.line, loc.column) != (
                filename, self.line, self.column):
            return False
        rendered = problem.message + (f"  hint: {problem.hint}" if problem.hint else "")
        position = 0
        for piece in self.text.split(" ... "):
            position = rendered.find(piece, position)
            if position < 0:
                return False
            position += len(piece)
        return True


def read_header(path: Path) -> tuple[list[Expected], list[str]]:
    """The ``# expect:`` and ``# set:`` comment lines at the top of a golden file."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    expected: list[Expected] = []
    overrides: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        match = _EXPECT_RE.match(line)
        if match:
            expected.append(Expected(int(match[1]), int(match[2]), match[3].strip()))
        elif line.startswith("# set: "):
            overrides.append(line[len("# set: "):].strip())
    return expected, overrides


def test_golden_directory_is_populated() -> None:
    assert len(BAD_SPECS) >= 40


@pytest.mark.parametrize("path", BAD_SPECS, ids=[p.name for p in BAD_SPECS])
def test_header_is_well_formed(path: Path) -> None:
    first_line = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert _EXPECT_RE.match(first_line), f"{path.name}: first line must be '# expect: L:C: ...'"


@pytest.mark.parametrize("path", BAD_SPECS, ids=[p.name for p in BAD_SPECS])
def test_load_spec_reports_every_problem(path: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)   # a spec that managed to run a command would write here
    expected, overrides = read_header(path)
    with pytest.raises(SpecError) as info:
        load_spec(path, dict(parse_override(item) for item in overrides))
    problems = list(info.value.problems)
    rendered = "\n".join(p.format() for p in problems)
    assert len(problems) == len(expected), rendered
    for want in expected:
        hits = [p for p in problems if want.matches(p, str(path))]
        assert hits, f"expected {want.line}:{want.column}: {want.text!r}; got\n{rendered}"
        problems.remove(hits[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", BAD_SPECS, ids=[p.name for p in BAD_SPECS])
def test_cli_validate_exit_code_2_without_traceback(path: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    expected, overrides = read_header(path)
    argv = ["validate", str(path)]
    for item in overrides:
        argv += ["--set", item]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    for want in expected:
        assert f"{path}:{want.line}:{want.column}: error: " in err, err
    assert err.count(": error: ") == len(expected), err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# specs given as dicts: located by key path

BAD_DICTS = sorted((Path(__file__).parent / "specs" / "bad_dict").glob("*.pydata"))
_EXPECT_PATH_RE = re.compile(r"^# expect: ([^:]*): (.+)$")


def test_dict_golden_directory_is_populated() -> None:
    assert len(BAD_DICTS) >= 8


@pytest.mark.parametrize("path", BAD_DICTS, ids=[p.stem for p in BAD_DICTS])
def test_dict_spec_reports_every_problem_by_key_path(path: Path) -> None:
    lines = path.read_text().splitlines()
    expected = [_EXPECT_PATH_RE.match(line) for line in lines if line.startswith("#")]
    assert expected and all(expected), f"{path.name}: header lines are '# expect: PATH: TEXT'"
    data = ast.literal_eval("\n".join(line for line in lines if not line.startswith("#")))
    with pytest.raises(SpecError) as info:
        load_spec(data)
    problems = list(info.value.problems)
    rendered = "\n".join(p.format() for p in problems)
    assert len(problems) == len(expected), rendered
    for match in expected:
        key_path, text = match[1].strip(), match[2].strip()
        want = Expected(0, 0, text)
        hits = [p for p in problems if p.location is not None and p.location.path is not None
                and format_key_path(p.location.path) == key_path
                and want.matches(p, "<dict>")]
        assert hits, f"expected {key_path}: {text!r}; got\n{rendered}"
        problems.remove(hits[0])
        where = f"<dict>: {key_path}: " if key_path else "<dict>: "
        assert hits[0].format().startswith(f"{where}error: "), hits[0].format()
