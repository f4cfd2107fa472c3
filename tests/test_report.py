"""Cost reports: text rows and JSON fields, consistent with the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT, TETRA

import tngraph
from tngraph.errors import PlanError
from tngraph.plan import plan_spec
from tngraph.report import format_report, report_data
from tngraph.spec import load_spec

TT = ROOT / "models/tt_linear.yaml"


@pytest.fixture(scope="module")
def tt() -> tuple[tngraph.Spec, object]:
    spec = load_spec(TT, {"rank": 3})
    return spec, plan_spec(spec, batch_size=32, optimize="greedy", cache=False)


def test_json_fields_consistent_with_plan(tt: tuple) -> None:
    spec, plan = tt
    data = json.loads(format_report(plan, spec, fmt="json"))
    assert data == json.loads(json.dumps(report_data(plan, spec)))
    assert data["name"] == "tt_linear" and data["template"] == "tt_linear"
    assert data["params"] == 8 * 2 * 3 + 2 * (3 * 8 * 2 * 3) + 3 * 8 * 2 + 16
    assert data["flops"] == plan.flops == sum(s["flops"] for s in data["steps"])
    assert data["naive_flops"] == plan.naive_flops
    assert data["speedup"] == pytest.approx(plan.naive_flops / plan.flops)
    assert data["batch_size"] == 32
    assert data["dense_size"] == 4096 * 16
    assert data["compression"] == pytest.approx(4096 * 16 / data["params"])
    li = data["largest_intermediate"]
    assert li["elements"] == plan.largest_intermediate
    assert li["bytes"] == plan.largest_intermediate * 4
    assert li["elements"] >= max(s["size"] for s in data["steps"])
    assert data["path_finder"] == "greedy" and data["cache_hit"] is False
    assert data["over_limit"] == [] and data["sliced"] == {"indices": [], "slices": 1}
    assert data["inputs"] == {"x": {"legs": {"i0": 8, "i1": 8, "i2": 8, "i3": 8},
                                    "stack": None, "feature_map": None}}
    assert data["outputs"] == ["G0.o", "G1.o", "G2.o", "G3.o"]
    assert data["nodes"] == 4 and data["edges"] == 3 + 4
    assert data["estimated_time"] == {
        "text": plan.estimated_time, "log10_seconds": pytest.approx(plan.time_log10),
        "flops_per_second": 1e10, "rate_source": "stated by TNGRAPH_FLOPS_PER_SECOND"}
    assert data["time_budget"] == 3600


def test_intermediates_are_not_named_like_nodes() -> None:
    """Nodes called T1, T2, T3: the report's intermediates are #1, #2, never a node's name."""
    spec = load_spec("tngraph: 1\nname: t\nnetwork:\n  nodes:\n"
                     "    T1: {legs: {a: 2, b: 3}}\n    T2: {legs: {b: 3, c: 4}}\n"
                     "    T3: {legs: {c: 4, d: 2}}\n"
                     "  edges: [[T1.b, T2.b], [T2.c, T3.c]]\n  outputs: [T1.a, T3.d]\n")
    plan = plan_spec(spec, optimize="optimal", cache=False)
    steps = report_data(plan, spec)["steps"]
    assert [s["result"] for s in steps] == ["#1", "#2"]
    assert {steps[1]["left"], steps[1]["right"]} & {"#1"}
    assert {s["left"] for s in steps} | {s["right"] for s in steps} == {"T1", "T2", "T3", "#1"}


def test_json_steps(tt: tuple) -> None:
    spec, plan = tt
    steps = json.loads(format_report(plan, spec, fmt="json"))["steps"]
    assert len(steps) == len(plan.steps) == len(plan.problem.terms) - 1
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    names = {t.name for t in plan.problem.terms}
    made: set[str] = set()
    for s, step in zip(steps, plan.steps, strict=True):
        assert {s["left"], s["right"]} <= names | made        # operands exist before use
        made.add(s["result"])
        assert s["result"] == f"#{s['step']}"
        assert s["flops"] == step.flops and s["size"] == step.size
        assert s["equation"] == plan.step_equation(step)
        lhs, rhs = s["equation"].split("->")
        left, right = lhs.split(",")
        assert (len(left), len(right), len(rhs)) == (len(step.left_inds),
                                                       len(step.right_inds),
                                                       len(step.out_inds))
        assert len(s["legs"]) == len(rhs)
        assert not set(s["contracted"]) & set(s["legs"])
    assert set(steps[-1]["legs"]) == {"batch", "G0.o", "G1.o", "G2.o", "G3.o"}
    contracted = {c for s in steps for c in s["contracted"]}
    assert {"G0.r", "G1.r", "G2.r", "x.i0", "x.i3"} <= contracted


def test_text_report_rows(tt: tuple) -> None:
    spec, plan = tt
    text = format_report(plan, spec)
    for row in ("tngraph cost report: tt_linear (template tt_linear)", "nodes / edges",
                "4 / 7", "parameters", f"{plan.param_count:,}", "FLOPs (planned)",
                "FLOPs (naive single einsum)", "speed-up over naive", "largest intermediate",
                "memory limit", "4.0 GiB", "slicing", "none", "path finder", "greedy",
                "plan cache", "miss", "contraction steps", "x(i0=8, i1=8, i2=8, i3=8)",
                "batch size (costs are per batch)", "time budget                        1 h",
                f"estimated time (one contraction)   {plan.estimated_time}\n",
                "arithmetic rate                    10 GFLOP/s (stated by "
                "TNGRAPH_FLOPS_PER_SECOND)"):
        assert row in text, row
    assert "OVER LIMIT" not in text
    step_rows = [line for line in text.splitlines() if line.strip().startswith(("1 ", "2 "))]
    assert len(step_rows) >= 2
    assert all(line == line.rstrip() for line in text.splitlines())


def test_text_report_of_sliced_and_over_limit_plans() -> None:
    spec = load_spec(TETRA)
    sliced = plan_spec(spec, dtype="float64", memory_limit="16KiB", cache=False)
    text = format_report(sliced, spec)
    assert f"{sliced.n_slices} slices over" in text and "note: sliced over" in text
    data = report_data(sliced, spec)
    assert data["sliced"]["slices"] == sliced.n_slices > 1
    names = [sliced.problem.index_names[i] for i in sliced.sliced_inds]
    assert data["sliced"]["indices"] == names and all("." in name for name in names)
    over = plan_spec(spec, memory_limit="1KiB", cache=False)
    text = format_report(over, spec)
    assert "OVER LIMIT" in text and "parameters" in text
    assert report_data(over, spec)["over_limit"] == list(over.over_limit)


def test_scalar_network_report() -> None:
    spec = load_spec(TETRA)
    text = format_report(plan_spec(spec, cache=False), spec)
    assert "(scalar)" in text and "data inputs" in text and "none" in text


def test_module_report_and_unknown_format() -> None:
    module = tngraph.compile(ROOT / "models/ring3.yaml", cache=False)
    assert json.loads(module.report("json"))["params"] == module.plan.param_count == 186
    assert "ring3" in module.report()
    with pytest.raises(PlanError, match="valid: json, text"):
        format_report(module.plan, module.spec, fmt="xml")


def test_cache_hit_shows_in_report(tmp_path: Path) -> None:
    spec = load_spec(TETRA)
    plan_spec(spec, cache_dir=tmp_path)
    again = plan_spec(spec, cache_dir=tmp_path)
    assert report_data(again, spec)["cache_hit"] is True
    assert "hit" in format_report(again, spec)


def test_report_names_the_executed_path() -> None:
    from tngraph.plan import plan_spec
    from tngraph.spec import load_spec

    text = ("tngraph: 1\nname: c\nnetwork: {template: mps, sites: 24, phys_dim: 2, "
            "bond_dim: 8, input: x, feature_map: multilinear, output_dim: 3}\n")
    spec = load_spec(text)
    plan = plan_spec(spec, cache=False, max_repeats=16)
    data = report_data(plan, spec)
    assert data["path"] == "fused" and data["executed_flops"] == plan.fused_flops
    assert sum(s["flops"] for s in data["steps"]) == plan.fused_flops   # the steps that run
    assert "FLOPs (executed path)" in format_report(plan, spec)
    lowest = plan_spec(spec, cache=False, max_repeats=16, run_path="min-flops")
    data = report_data(lowest, spec)
    assert data["path"] == "min-flops" and data["executed_flops"] == data["flops"]
    assert "FLOPs (executed path)" not in format_report(lowest, spec)


def test_reports_of_chains_beyond_a_floats_range() -> None:
    """A 784-site (MNIST-length) classifier: its naive FLOPs and speed-up overflow a float;
    both reports still come out, in exact integers."""
    import json
    import math

    from tngraph.plan import plan_spec
    from tngraph.report import format_report
    from tngraph.spec import load_spec

    spec = load_spec("tngraph: 1\nname: long\nnetwork: {template: mps, sites: 784, phys_dim: 2, "
                     "bond_dim: 4, input: x, feature_map: multilinear, output_dim: 10}\n"
                     "plan: {optimize: greedy, cache: false, batch_size: 8}\n")
    plan = plan_spec(spec)
    assert plan.naive_flops > 10 ** 400
    text = format_report(plan, spec)
    naive = next(line for line in text.splitlines() if "FLOPs (naive single einsum)" in line)
    assert naive.endswith(f"(10^{math.log10(plan.naive_flops):.2f})")
    assert "speed-up over naive" in text
    data = json.loads(format_report(plan, spec, fmt="json"))
    assert data["speedup"] == plan.naive_flops // plan.flops


def test_report_of_a_network_over_the_time_budget_with_steps_beyond_52_indices() -> None:
    """A 12 x 12 PEPS with open physical legs: its last steps carry more indices than an einsum
    has letters (their equations are written in the spec's names), its largest intermediate
    is 10^43 entries, and its time is estimated in powers of ten of years."""
    spec = load_spec("tngraph: 1\nname: grid\nnetwork: {template: peps, rows: 12, cols: 12, "
                     "phys_dim: 2, bond_dim: 16}\nplan: {optimize: greedy, cache: false}\n")
    plan = plan_spec(spec)
    data = report_data(plan, spec)
    assert any("[" in step["equation"] and "P11_11.p" in step["equation"]
               for step in data["steps"])
    text = format_report(plan, spec)
    assert "years OVER BUDGET\n" in text
    assert "largest intermediate               2.230e+43 (10^43.35) elements, 8.11e+31 TiB" in text
    assert any("over the time budget" in r for r in plan.over_limit)
    assert any("largest intermediate needs" in r and "TiB" in r for r in plan.over_limit)
