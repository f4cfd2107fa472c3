"""``tngraph draw`` and ``compile --draw``: layouts by structure, the contraction tree, files,
pipelines (one row per network layer) and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tngraph import cli
from tngraph.draw import DrawError, draw_spec, layout_kind, network_positions, tree_layout
from tngraph.plan import plan_spec
from tngraph.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
Capture = pytest.CaptureFixture[str]

STAR = """tngraph: 1
name: star
network:
  nodes:
    C: {legs: {a: 2, b: 2, c: 2}}
    A: {legs: {a: 2, i: 3}}
    B: {legs: {b: 2, j: 3}}
    D: {legs: {c: 2, k: 3, d: 2}}
    E: {legs: {d: 2, m: 3}}
  edges: [[C.a, A.a], [C.b, B.b], [C.c, D.c], [D.d, E.d]]
  outputs: [A.i, B.j, D.k, E.m]
"""
#: a 4-cycle with a chord: no chain, ring, grid or tree
OTHER = """tngraph: 1
name: other
network:
  nodes:
    A: {legs: {ab: 2, ad: 2, ac: 2}}
    B: {legs: {ab: 2, bc: 2}}
    C: {legs: {bc: 2, cd: 2, ac: 2}}
    D: {legs: {cd: 2, ad: 2}}
  edges: [[A.ab, B.ab], [B.bc, C.bc], [C.cd, D.cd], [D.ad, A.ad], [A.ac, C.ac]]
"""


@pytest.mark.parametrize(("source", "overrides", "kind"), [
    (MODELS / "mps.yaml", {}, "chain"), (MODELS / "tt_linear.yaml", {}, "chain"),
    (MODELS / "ring3.yaml", {}, "ring"), (MODELS / "peps.yaml", {"rows": 2, "cols": 3}, "grid"),
    (STAR, {}, "tree"), (OTHER, {}, "other"),
])
def test_layout_follows_the_structure(source: object, overrides: dict, kind: str) -> None:
    assert layout_kind(load_spec(source, overrides).network) == kind


def test_a_chain_is_drawn_in_a_line_and_a_grid_as_a_grid() -> None:
    chain = network_positions(load_spec(MODELS / "mps.yaml").network)
    assert {y for _, y in chain.values()} == {0.0}
    assert [chain[f"A{k}"][0] for k in range(10)] == [2.0 * k for k in range(10)]
    grid = network_positions(load_spec(MODELS / "peps.yaml", {"rows": 2, "cols": 3}).network)
    assert grid["P1_2"] == (4.0, -2.0) and grid["P0_0"] == (0.0, 0.0)


def test_a_long_chain_turns_back_in_rows() -> None:
    pos = network_positions(load_spec(MODELS / "mps_classifier.yaml").network)
    assert pos["A15"] == (30.0, 0.0) and pos["A16"] == (30.0, -3.0) and pos["A31"] == (0.0, -3.0)


def test_a_tree_has_its_centre_on_top() -> None:
    pos = network_positions(load_spec(STAR).network)
    assert pos["C"][1] == max(y for _, y in pos.values())
    assert pos["E"][1] < pos["D"][1] < pos["C"][1]


def test_the_contraction_tree_layout() -> None:
    spec = load_spec(MODELS / "ring3.yaml")
    plan = plan_spec(spec, optimize="optimal", cache=False)
    pos, edges = tree_layout(plan)
    steps = plan.executed().steps
    assert len(edges) == 2 * len(steps)
    assert all(pos[slot][1] == 0.0 for slot in range(len(plan.problem.terms)))
    for child, parent in edges:
        assert pos[parent][1] > pos[child][1]
    assert pos[steps[-1].out][1] == max(y for _, y in pos.values())


def _svg(path: Path) -> str:
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    return text


def test_draw_both_panels_names_legs_steps_and_the_largest(tmp_path: Path) -> None:
    spec = load_spec(MODELS / "ring3.yaml")
    plan = plan_spec(spec, optimize="optimal", cache=False)
    text = _svg(draw_spec(spec, tmp_path / "ring3.svg", plans={"ring3": plan}))
    for shown in ("a-a (5)", "A.i (3)", "#1", "#2", "largest intermediate",
                  "contraction tree, 2 steps", "FLOPs of the step", "i=3 a=5 c=2"):
        assert shown in text, shown
    largest = max(plan.executed().steps, key=lambda s: s.size)
    assert f"{plan.slot_name(largest.out)}: {largest.size:,} entries" in text


def test_a_pipeline_gets_one_row_per_network_layer(tmp_path: Path) -> None:
    spec = load_spec(MODELS / "two_mps.yaml", {"bond_dim": 2, "hidden": 4})
    text = _svg(draw_spec(spec, tmp_path / "two.svg", what="network"))
    assert "two_mps.mps1: 64 tensors (chain), 64 data inputs" in text
    assert "two_mps.mps2: 4 tensors (chain), 4 data inputs" in text
    assert "contraction tree" not in text


def test_png(tmp_path: Path) -> None:
    path = draw_spec(load_spec(MODELS / "mps.yaml"), tmp_path / "m.png", what="tree")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compile_draw_writes_beside_the_report(tmp_path: Path, capsys: Capture) -> None:
    out = tmp_path / "tt.svg"
    code = cli.main(["compile", str(MODELS / "tt_linear.yaml"), "--optimize", "greedy",
                     "--cache-dir", str(tmp_path / "cache"), "--draw", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0 and "tngraph cost report: tt_linear" in stdout
    assert err == f"drawn: {out}\n" and "#3" in _svg(out)


def test_draw_a_run_draws_its_spec(tmp_path: Path, capsys: Capture) -> None:
    rng = np.random.default_rng(0)
    rows = [",".join(f"{v:.3f}" for v in r) + f",{int(r[0] > .5)}" for r in rng.random((30, 3))]
    (tmp_path / "d.csv").write_text("a,b,c,label\n" + "\n".join(rows) + "\n")
    (tmp_path / "m.yaml").write_text(
        "tngraph: 1\nname: small\nnetwork: {template: mps, sites: 3, phys_dim: 2, bond_dim: 2, "
        "input: x, feature_map: multilinear, output_dim: 2}\ntrain: {epochs: 1}\n")
    assert cli.main(["train", str(tmp_path / "m.yaml"), "--data", f"csv:{tmp_path / 'd.csv'}",
                     "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    code = cli.main(["draw", str(tmp_path / "run"), "--out", str(tmp_path / "run.svg"),
                     "--what", "network"])
    assert (code, capsys.readouterr().out) == (0, f"drawn: {tmp_path / 'run.svg'}\n")
    assert "small: 3 tensors (chain), 3 data inputs" in _svg(tmp_path / "run.svg")


@pytest.mark.parametrize(("argv", "expected"), [
    (["{models}/ring3.yaml", "--out", "{tmp}/ring3.pdf"],
     "{models}/ring3.yaml: error: cannot draw into {tmp}/ring3.pdf: the file type is taken "
     "from its name\n  hint: name it .png or .svg\n"),
    (["{models}/ring3.yaml", "--out", "{tmp}/no/ring3.png"],
     "{models}/ring3.yaml: error: cannot write {tmp}/no/ring3.png: folder {tmp}/no does not "
     "exist\n  hint: create the folder first, or give another --out\n"),
    (["{models}/mlp.yaml", "--out", "{tmp}/mlp.png"],
     "{models}/mlp.yaml: error: pipeline 'mlp' has no tensor-network layer to draw\n"
     "  hint: draw shows the networks of a spec (network: or layers of type network)\n"),
    (["{tmp}", "--out", "{tmp}/x.png"],
     "{tmp}: error: {tmp} is a folder without spec.yaml\n"
     "  hint: give a spec file or a run directory written by tngraph train\n"),
], ids=["suffix", "folder", "no-network", "not-a-run"])
def test_draw_user_errors(tmp_path: Path, capsys: Capture, argv: list[str], expected: str
                          ) -> None:
    names = {"models": MODELS, "tmp": tmp_path}
    code = cli.main(["draw", *[a.format(**names) for a in argv]])
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", expected.format(**names))


def test_an_unknown_what_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DrawError, match=r"unknown --what 'netwrok'\n  hint: did you mean "
                                        r"'network'\?"):
        draw_spec(load_spec(MODELS / "mps.yaml"), tmp_path / "x.png", what="netwrok")


def test_a_hypergraph_is_drawn_and_its_chains_are_not_inspected(tmp_path: Path) -> None:
    """A hyperedge (one index shared by three tensors) draws as a star, laid out as 'other';
    inspect and the chain strategies refuse it by name."""
    from tngraph.graph import ChainError, chain_sites

    text = ("tngraph: 1\nname: hyper\nnetwork:\n  nodes:\n    A: {legs: {i: 3, h: 4}}\n"
            "    B: {legs: {h: 4, j: 2}}\n    C: {legs: {h: 4, k: 5}}\n"
            "  edges: [[A.h, B.h, C.h]]\n  outputs: [A.i, B.j, C.k]\n")
    path = tmp_path / "hyper.yaml"
    path.write_text(text)
    assert layout_kind(load_spec(path).network) == "other"
    assert cli.main(["draw", str(path), "--out", str(tmp_path / "h.png")]) == 0
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ChainError, match=r"hyperedge \[A.h, B.h, C.h\] joins several nodes"):
        chain_sites(load_spec(path).network)
