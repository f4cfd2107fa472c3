"""Planning: optimizer choice, costs, disk cache, memory limit, slicing, options."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import MODELS, ROOT, TETRA, assert_matches, dense_oracle, rand_network, random_inputs

import tngraph
import tngraph.plan as plan_mod
from tngraph.errors import PlanError
from tngraph.graph import einsum_problem
from tngraph.plan import list_path_finders, make_plan, parse_memory, plan_spec, step_flops
from tngraph.spec import PlanOptions, load_spec

SMALL_CLASSIFIER = """
tngraph: 1
name: small_classifier
network: {template: mps, sites: 6, phys_dim: 2, bond_dim: 3, input: x,
          feature_map: multilinear, output_dim: 4}
"""


def _spec(text: str) -> tngraph.Spec:
    return load_spec(text)


def _yaml_network(network: dict) -> str:
    return yaml.safe_dump({"tngraph": 1, "name": "net", "network": network}, sort_keys=False)


# -- optimizer choice and costs ------------------------------------------------------------


TINY = [pytest.param(TETRA, id="tetra"), pytest.param(str(ROOT / "models/ring3.yaml"), id="ring3")]
TINY += [pytest.param(_yaml_network(rand_network(n, seed, data=False)), id=f"rand{n}-{seed}")
         for n in range(2, 7) for seed in range(3)]


@pytest.mark.parametrize("source", TINY)
def test_auto_plans_tiny_networks_exactly(source: str) -> None:
    spec = _spec(source)
    plan = plan_spec(spec, cache=False)
    assert len(plan.problem.terms) <= 6
    assert plan.path_finder == "optimal"


@pytest.mark.parametrize("source", [pytest.param(TETRA, id="tetra")]
                         + [pytest.param(str(p), id=p.stem) for p in MODELS
                            if p.stem in ("ring3", "mps", "mpo", "tt_linear")])
def test_planned_flops_at_most_naive(source: str) -> None:
    plan = plan_spec(_spec(source), optimize="greedy", cache=False)
    assert 0 < plan.flops <= plan.naive_flops
    assert plan.speedup == pytest.approx(plan.naive_flops / plan.flops)


def test_costs_of_a_known_chain() -> None:
    """A[i,a] B[a,b] C[b,j], dims 2,3,4,5: the optimal order and its FLOPs, by hand."""
    text = _yaml_network({
        "nodes": {"A": {"legs": {"i": 2, "a": 3}}, "B": {"legs": {"a": 3, "b": 4}},
                  "C": {"legs": {"b": 4, "j": 5}}},
        "edges": [["A.a", "B.a"], ["B.b", "C.b"]], "outputs": ["A.i", "C.j"]})
    plan = plan_spec(_spec(text), cache=False)
    # (AB) first: 2*3*4*2 = 48 then (AB)C: 2*4*5*2 = 80; the other order costs 3*4*5*2+2*3*5*2
    assert plan.flops == 48 + 80
    assert plan.naive_flops == 2 * 3 * 4 * 5 * 3   # all indices, (3 - 1) products + 1 sum
    assert plan.largest_intermediate == 20          # C itself; AB has 8 entries
    assert [plan.slot_name(s.out) for s in plan.steps] == ["#1", "#2"]
    assert step_flops(("i", "a"), ("a", "b"), ("i", "b"), {"i": 2, "a": 3, "b": 4}) == 48
    assert step_flops(("i",), ("j",), ("i", "j"), {"i": 2, "j": 3}) == 6  # no sum: no factor 2


def test_single_tensor_has_no_steps() -> None:
    text = _yaml_network({"nodes": {"A": {"legs": {"i": 3, "t": 2, "u": 2}}},
                          "edges": [["A.t", "A.u"]], "outputs": ["A.i"]})
    plan = plan_spec(_spec(text), cache=False)
    assert plan.steps == () and plan.tree is None
    assert plan.leaf_inds == ((plan.problem.output[0],),)
    module = tngraph.compile(text, dtype="float64", cache=False)
    assert_matches(module(), dense_oracle(module))


@pytest.mark.parametrize("path_finder", ["greedy", "optimal", "auto", "hyper"])
def test_each_path_finder_gives_a_correct_plan(path_finder: str) -> None:
    module = tngraph.compile(str(ROOT / "models/ring3.yaml"), dtype="float64", cache=False,
                             optimize=path_finder, max_repeats=4, max_time=5)
    assert_matches(module(), dense_oracle(module))


def test_unknown_path_finder_lists_valid_names() -> None:
    with pytest.raises(PlanError) as info:
        plan_spec(_spec(TETRA), optimize="gredy", cache=False)
    message = str(info.value)
    assert "gredy" in message and "did you mean 'greedy'" in message
    assert "auto" in list_path_finders() and "greedy" in list_path_finders()


def test_invalid_plan_option_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="batch_size"):
        plan_spec(_spec(TETRA), batch_size=0)


def test_batch_size_changes_costs_not_results() -> None:
    spec = _spec(SMALL_CLASSIFIER)
    small = plan_spec(spec, batch_size=8, cache=False)
    large = plan_spec(spec, batch_size=64, cache=False)
    assert (small.batch_size, large.batch_size) == (8, 64)
    assert large.problem.size_dict[large.problem.batch] == 64
    assert small.flops < large.flops <= 8 * small.flops
    assert small.naive_flops * 8 == large.naive_flops
    # the small plan's own steps, re-costed at batch 64, scale by at most 8 and at least 1
    sizes = large.problem.size_dict
    recost = sum(step_flops(s.left_inds, s.right_inds, s.out_inds, sizes) for s in small.steps)
    assert small.flops < recost <= 8 * small.flops
    assert large.flops <= recost  # both plans are optimal for their own batch size
    modules = [tngraph.compile(SMALL_CLASSIFIER, dtype="float64", batch_size=b, cache=False)
               for b in (8, 64)]
    inputs = random_inputs(modules[0], 5)
    assert_matches(modules[0](**inputs), modules[1](**inputs).detach(), rtol=1e-12)


# -- cache -----------------------------------------------------------------------------------


def _fail(*args: object, **kwargs: object) -> None:
    raise AssertionError("searched although the plan is cached")


@pytest.mark.parametrize("optimize", ["optimal", "greedy"])
def test_cached_replan_does_not_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       optimize: str) -> None:
    spec = _spec(TETRA)
    first = plan_spec(spec, cache_dir=tmp_path, optimize=optimize, dtype="float64")
    assert not first.cache_hit
    assert len(list(tmp_path.glob("*.json"))) == 1
    monkeypatch.setattr(plan_mod, "_search", _fail)
    second = plan_spec(spec, cache_dir=tmp_path, optimize=optimize, dtype="float64")
    assert second.cache_hit
    assert second.steps == first.steps
    assert (second.flops, second.naive_flops, second.largest_intermediate) == \
        (first.flops, first.naive_flops, first.largest_intermediate)
    assert second.path_finder == first.path_finder
    module = tngraph.compile(spec, cache_dir=tmp_path, optimize=optimize, dtype="float64")
    assert module.plan.cache_hit
    assert_matches(module(), dense_oracle(module))


def test_cache_uses_env_dir_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TNGRAPH_CACHE_DIR", str(tmp_path))
    assert plan_mod.default_cache_dir() == tmp_path
    plan_spec(_spec(TETRA))
    assert len(list(tmp_path.glob("*.json"))) == 1
    assert plan_spec(_spec(TETRA)).cache_hit


def test_cache_false_bypasses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(TETRA)
    plan_spec(spec, cache_dir=tmp_path)
    calls: list[str] = []
    search = plan_mod._search

    def counting(*args: object, **kwargs: object) -> object:
        calls.append("search")
        return search(*args, **kwargs)

    monkeypatch.setattr(plan_mod, "_search", counting)
    plan = plan_spec(spec, cache_dir=tmp_path, cache=False)
    assert not plan.cache_hit and calls == ["search"]
    empty = tmp_path / "empty"
    plan_spec(spec, cache_dir=empty, cache=False)
    assert not empty.exists(), "cache=False must not write"


@pytest.mark.parametrize("content", ["{not json", "", '{"version": 999, "ssa_path": []}'])
def test_corrupt_cache_file_is_ignored(tmp_path: Path, content: str) -> None:
    spec = _spec(TETRA)
    first = plan_spec(spec, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text(content)
    again = plan_spec(spec, cache_dir=tmp_path)
    assert not again.cache_hit
    assert again.steps == first.steps
    assert json.loads(path.read_text())["ssa_path"], "the cache entry is rewritten"
    assert plan_spec(spec, cache_dir=tmp_path).cache_hit


@pytest.mark.parametrize("change", [{"batch_size": 32}, {"memory_limit": "1GiB"},
                                    {"optimize": "greedy"}, {"minimize": "size"}])
def test_cache_key_depends_on_what_changes_the_search(tmp_path: Path, change: dict) -> None:
    spec = _spec(SMALL_CLASSIFIER)
    plan_spec(spec, cache_dir=tmp_path)
    assert not plan_spec(spec, cache_dir=tmp_path, **change).cache_hit
    assert plan_spec(spec, cache_dir=tmp_path, **change).cache_hit


def test_cache_in_unwritable_place_does_not_break_planning(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    plan = plan_spec(_spec(TETRA), cache_dir=blocker / "sub")
    assert plan.steps and not plan.cache_hit


# -- memory limit and slicing --------------------------------------------------------------


def test_parameters_over_limit() -> None:
    spec = _spec(TETRA)
    plan = plan_spec(spec, memory_limit="1KiB", cache=False)
    assert any("parameters" in reason for reason in plan.over_limit)
    with pytest.raises(PlanError) as info:
        tngraph.compile(spec, memory_limit="1KiB", cache=False)
    assert "memory limit" in str(info.value)
    assert info.value.report is not None and "OVER LIMIT" in info.value.report
    assert "tetra" in info.value.report


def test_within_limit_has_no_complaint() -> None:
    plan = plan_spec(_spec(TETRA), dtype="float64", cache=False)
    assert plan.over_limit == () and plan.sliced_inds == () and plan.n_slices == 1
    assert plan.largest_intermediate == 4096
    assert plan.memory_limit == 4 * 2**30 and plan.itemsize == 8


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_slicing_fixes_an_intermediate_over_limit(dtype: str) -> None:
    itemsize = {"float64": 8, "float32": 4}[dtype]
    limit = 2048 * itemsize  # the parameters fit exactly; the 4096-entry intermediate does not
    spec = _spec(TETRA)
    plan = plan_spec(spec, dtype=dtype, memory_limit=limit, cache=False)
    assert plan.over_limit == ()
    assert plan.sliced_inds and plan.n_slices > 1
    assert set(plan.sliced_inds) <= set(plan.problem.size_dict)
    assert all(i not in step.left_inds + step.right_inds + step.out_inds
               for step in plan.steps for i in plan.sliced_inds)
    assert plan.largest_intermediate * plan.itemsize <= limit
    unsliced = plan_spec(spec, dtype=dtype, cache=False)
    assert plan.flops >= unsliced.flops
    assert any("sliced" in note for note in plan.notes)
    module = tngraph.compile(spec, dtype=dtype, memory_limit=limit, cache=False, seed=3)
    assert module.plan.n_slices > 1
    assert_matches(module(), dense_oracle(module), rtol=1e-10 if dtype == "float64" else 1e-5)


def test_sliced_plan_with_data_and_open_legs() -> None:
    """Slicing with a batch hyperedge and open legs: the slices are summed correctly."""
    text = TETRA.replace("D: {legs: {c:", "D: {legs: {o: 3, c:").replace(
        "[C.f, D.f]]", "[C.f, D.f], [x.p, A.q]]\n  outputs: [D.o]\n  inputs: {x: {legs: {p: 2}}}"
    ).replace("A: {legs: {a:", "A: {legs: {q: 2, a:")
    free = plan_spec(_spec(text), dtype="float64", batch_size=4, cache=False)
    limit = 8 * max(free.param_count, max(s.size for s in free.steps) // 2)
    module = tngraph.compile(text, dtype="float64", batch_size=4, memory_limit=limit,
                             cache=False)
    assert module.plan.n_slices > 1
    inputs = random_inputs(module, 4)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


def test_sliced_plan_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(TETRA)
    first = plan_spec(spec, dtype="float64", memory_limit="16KiB", cache_dir=tmp_path)
    monkeypatch.setattr(plan_mod, "_search", _fail)
    second = plan_spec(spec, dtype="float64", memory_limit="16KiB", cache_dir=tmp_path)
    assert second.cache_hit and second.sliced_inds == first.sliced_inds
    assert second.n_slices == first.n_slices > 1 and second.flops == first.flops


@pytest.mark.parametrize(("text", "expected"), [
    ("4GiB", 4 * 2**30), ("512MB", 512 * 10**6), ("1e9", 10**9), (1000, 1000),
    ("512 MiB", 512 * 2**20), ("2kb", 2000), ("1.5KiB", 1536), ("7", 7), ("3 B", 3),
])
def test_parse_memory_accepts(text: int | str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize("junk", ["lots", "", "GiB", "4 GiBs", "-1GiB", "0", 0, -5, "1e400",
                                  "0.5", "1.2.3MB", "e", True, "4 Gi B"])
def test_parse_memory_rejects(junk: int | str) -> None:
    with pytest.raises(PlanError):
        parse_memory(junk)


def test_bad_memory_limit_from_spec_is_a_plan_error() -> None:
    with pytest.raises(PlanError, match="memory limit"):
        tngraph.compile(TETRA, memory_limit="plenty", cache=False)


def test_make_plan_defaults() -> None:
    problem = einsum_problem(_spec(TETRA))
    plan = make_plan(problem, PlanOptions(cache=False))
    assert plan.param_count == 4 * 8**3
    assert plan.batch_size is None
    assert plan.itemsize == 4


@pytest.mark.parametrize(("block", "message", "column"), [
    ("{optimize: gredy}", "unknown path finder 'gredy'", 18),
    ("{memory_limit: 4GiBs}", "cannot read memory limit '4GiBs'", 22),
    ("{time_budget: 2 fortnights}", "cannot read time budget '2 fortnights'", 21),
    ("{time_budget: -5}", "time budget must be a positive, finite duration, got -5", 21),
])
def test_bad_plan_options_are_located(block: str, message: str, column: int) -> None:
    from tngraph.errors import SpecError
    from tngraph.plan import check_plan_options

    spec = tngraph.load_spec("tngraph: 1\nname: t\nnetwork: {template: mps, sites: 3, "
                             f"phys_dim: 2, bond_dim: 2}}\nplan: {block}\n")
    (problem,) = check_plan_options(spec)
    assert message in problem.message
    assert (problem.location.line, problem.location.column) == (4, column)
    with pytest.raises(SpecError):
        tngraph.compile(spec)


def test_overrides_with_a_loaded_spec_are_refused() -> None:
    spec = tngraph.load_spec(str(ROOT / "models/mps.yaml"))
    with pytest.raises(tngraph.CompileError, match="overrides are applied when a spec is loaded"):
        tngraph.compile(spec, {"bond_dim": 9})


def test_a_reused_path_plans_a_resized_network_without_search() -> None:
    """DMRG changes bond dimensions: the old contraction order is reused, and is correct."""
    from helpers import assert_matches, dense_oracle, random_inputs

    text = ("tngraph: 1\nname: t\nnetwork: {{template: mps, sites: 6, phys_dim: 2, "
            "bond_dim: {b}, input: x, feature_map: multilinear, output_dim: 3}}\n")
    small = tngraph.compile(text.format(b=3), cache=False, dtype="float64", batch_size=4)
    path = small.plan.tree.get_ssa_path()
    big = tngraph.compile(text.format(b=5), cache=False, dtype="float64", batch_size=4,
                          path=path)
    assert big.plan.path_finder == "reused" and big.plan.search_time < 1.0
    assert [tuple(p) for p in big.plan.tree.get_ssa_path()] == [tuple(p) for p in path]
    inputs = random_inputs(big, 4)
    assert_matches(big(**inputs), dense_oracle(big, inputs))
    other = tngraph.compile(text.replace("sites: 6", "sites: 5").format(b=3), cache=False,
                            path=path)       # another structure: searched as usual
    assert other.plan.path_finder != "reused"


# -- the port-fused path -------------------------------------------------------------------

LONG_CLASSIFIER = ("tngraph: 1\nname: c\nnetwork: {template: mps, sites: 24, phys_dim: 2, "
                   "bond_dim: 8, input: x, feature_map: multilinear, output_dim: 3}\n")


@pytest.fixture(scope="module")
def long_classifier_plan() -> plan_mod.Plan:
    return plan_spec(load_spec(LONG_CLASSIFIER), cache=False, max_repeats=16)


_PLAN_IN_A_PROCESS = """
import json, sys
from tngraph.plan import plan_spec
from tngraph.spec import load_spec
plan = plan_spec(load_spec(sys.argv[1]), cache=False, max_repeats=16)
print(json.dumps([plan.flops, plan.fused_flops, [(s.left, s.right) for s in plan.steps]]))
"""


def test_the_seed_fixes_the_search_across_processes() -> None:
    """Same spec, same seed, separate processes (so nothing carries over in memory): the same
    paths. cotengra's sampler keeps its own generator; left unseeded, about one process in
    five found another plan for this network (fused path 2.1x the lowest FLOPs, not 1.2x)."""
    runs = [subprocess.Popen([sys.executable, "-c", _PLAN_IN_A_PROCESS, LONG_CLASSIFIER],
                             stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = {run.communicate(timeout=300)[0] for run in runs}
    assert all(run.returncode == 0 for run in runs)
    assert len(outputs) == 1


def test_fused_path_runs_when_close_to_the_lowest_flops(
        long_classifier_plan: plan_mod.Plan) -> None:
    """Refinement lowers the FLOPs by contracting parameter-only blocks at the chain ends; the
    port-fused path it started from is kept, and runs while within FUSED_TOLERANCE."""
    plan = long_classifier_plan
    assert plan.fused_flops is not None and plan.fused_steps is not None
    assert plan.flops < plan.fused_flops <= plan_mod.FUSED_TOLERANCE * plan.flops
    assert plan.runs_fused
    executed = plan.executed()
    assert executed.flops == plan.fused_flops and executed.steps == plan.fused_steps
    assert len(executed.steps) == len(plan.steps)
    # the refined path multiplies feature vectors of several pixels together (data-only
    # steps) to meet a parameter-only block; the fused one never does
    ports = {k for k, t in enumerate(plan.problem.terms) if t.kind == "input"}
    data_only = set(ports)

    def data_steps(steps: tuple) -> int:
        seen, count = set(data_only), 0
        for step in steps:
            if step.left in seen and step.right in seen:
                seen.add(step.out)
                count += 1
        return count

    assert data_steps(plan.steps) > 0
    assert data_steps(executed.steps) == 0


def test_the_label_core_meets_its_pixel_first_and_the_chain_steps_stay_fused() -> None:
    """Ports first where fusing would write a node out much larger: the label core (l, p, r, o)
    meets the outer product of an environment and its own pixel; every other core meets its
    environment before its pixel, the fused order of a chain. Both orders compute the same."""
    text = LONG_CLASSIFIER.replace("output_dim: 3", "output_dim: 10")
    plan = plan_spec(load_spec(text), cache=False, max_repeats=16, batch_size=64).executed()
    terms = plan.problem.terms
    made_from: dict[int, set[int]] = {k: {k} for k in range(len(terms))}
    for step in plan.steps:
        made_from[step.out] = made_from[step.left] | made_from[step.right]
    pixel_first, node_first = [], []
    for k, term in enumerate(terms):
        if term.kind != "input":
            continue
        node = next(j for j, t in enumerate(terms) if t.name == f"A{term.copy}")
        step = next(s for s in plan.steps if k in (s.left, s.right))
        (pixel_first if node not in made_from[step.left] | made_from[step.right]
         else node_first).append(term.copy)
    assert pixel_first == [12]                     # the label core's site (24 sites: 12)
    assert len(node_first) == 23
    module = tngraph.compile(text, cache=False, dtype="float64", max_repeats=16)
    inputs = random_inputs(module, 3, seed=4)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


@pytest.mark.parametrize("margin", [plan_mod.PORTS_FIRST_MARGIN, 1e9])
def test_ports_first_only_beyond_the_margin(monkeypatch: pytest.MonkeyPatch,
                                            margin: float) -> None:
    """With an unreachable margin every port follows its node (the plain port-fused path)."""
    monkeypatch.setattr(plan_mod, "PORTS_FIRST_MARGIN", margin)
    text = LONG_CLASSIFIER.replace("output_dim: 3", "output_dim: 10")
    plan = plan_spec(load_spec(text), cache=False, max_repeats=16, batch_size=64).executed()
    label = next(k for k, t in enumerate(plan.problem.terms) if t.name == "A12")
    pixel = next(k for k, t in enumerate(plan.problem.terms) if t.name == "x[12]")
    step = next(s for s in plan.steps if label in (s.left, s.right))
    ports_first = step.left != pixel and step.right != pixel and any(
        pixel in (s.left, s.right) and s.out in (step.left, step.right) for s in plan.steps)
    assert ports_first == (margin < 1e9)


@pytest.mark.parametrize("run_path", ["auto", "min-flops", "fused"])
def test_every_run_path_computes_the_network(run_path: str) -> None:
    module = tngraph.compile(LONG_CLASSIFIER, cache=False, dtype="float64", max_repeats=16,
                             run_path=run_path)
    expected_fused = run_path != "min-flops"
    assert module.plan.runs_fused == expected_fused
    inputs = random_inputs(module, 3, seed=2)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


def test_min_flops_is_run_when_the_fused_path_costs_much_more() -> None:
    plan = plan_spec(_spec(SMALL_CLASSIFIER), cache=False)
    assert plan.fused_flops is not None and plan.fused_flops > 1.25 * plan.flops
    assert not plan.runs_fused and plan.executed() is plan
    forced = plan_spec(_spec(SMALL_CLASSIFIER), cache=False, run_path="fused")
    assert forced.runs_fused and forced.executed().flops == forced.fused_flops


def test_fused_path_is_cached(tmp_path: Path) -> None:
    first = plan_spec(load_spec(LONG_CLASSIFIER), cache_dir=tmp_path, max_repeats=16)
    again = plan_spec(load_spec(LONG_CLASSIFIER), cache_dir=tmp_path, max_repeats=16)
    assert again.cache_hit and not first.cache_hit
    assert again.fused_flops == first.fused_flops and again.fused_steps == first.fused_steps


@pytest.mark.parametrize("entry", [
    {"ssa_path": [[0, 99], [1, 2], [3, 4]]},          # a slot that does not exist
    {"ssa_path": "a path"},                             # valid JSON of the wrong shape
    {"ssa_path": [[0, 1]]},                             # a path of another network
    {"sliced_inds": ["no-such-index"]},
])
def test_a_cache_entry_that_does_not_fit_is_replanned_and_repaired(tmp_path: Path,
                                                                   entry: dict) -> None:
    from tngraph.plan import CACHE_VERSION

    first = plan_spec(_spec(TETRA), cache_dir=tmp_path)
    (cache_file,) = tmp_path.rglob("*.json")
    damaged = {**json.loads(cache_file.read_text()), "version": CACHE_VERSION, **entry}
    cache_file.write_text(json.dumps(damaged))
    again = plan_spec(_spec(TETRA), cache_dir=tmp_path)
    assert not again.cache_hit and again.flops == first.flops
    assert plan_spec(_spec(TETRA), cache_dir=tmp_path).cache_hit      # rewritten


# -- time estimate and budget -------------------------------------------------------------------

PEPS_SPEC = ("tngraph: 1\nname: grid\nnetwork: {{template: peps, rows: {n}, cols: {n}, "
             "phys_dim: 2, bond_dim: 16, open_phys: false}}\n"
             "plan: {{optimize: greedy, cache: false}}\n")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("2h", 7200.0), ("1.5d", 129600.0), ("90 s", 90.0), ("10min", 600.0),
    (5, 5.0), (0.25, 0.25), ("1y", 365.25 * 86400), (None, None), ("none", None),
])
def test_parse_duration_accepts(text: float | str | None, seconds: float | None) -> None:
    from tngraph.plan import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("junk", ["soon", "", "h", "0", 0, -1, "-2h", "inf", "nan", True,
                                  "1e400s", "3 weeks"])
def test_parse_duration_rejects(junk: float | str) -> None:
    from tngraph.plan import parse_duration

    with pytest.raises(PlanError, match="time budget"):
        parse_duration(junk)


def test_time_estimate_is_the_executed_flops_over_the_rate(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import math

    monkeypatch.setenv("TNGRAPH_FLOPS_PER_SECOND", "2.5e9")
    spec = load_spec(str(ROOT / "models/mps_classifier.yaml"))
    plan = plan_spec(spec, cache=False, optimize="greedy")
    assert plan.rate == 2.5e9 and plan.rate_source == "stated by TNGRAPH_FLOPS_PER_SECOND"
    assert plan.time_log10 == pytest.approx(math.log10(plan.executed().flops / 2.5e9))
    assert plan.time_budget == 3600 and plan.over_limit == ()


def test_a_plan_over_the_time_budget_is_refused_naming_the_estimate_and_the_option(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A 12 x 12 PEPS of bond 16, sliced to fit 4 GiB into about 10^30 slices: about 10^28
    years at 10 GFLOP/s. compile refuses it; a budget of none lets it plan."""
    monkeypatch.setenv("TNGRAPH_FLOPS_PER_SECOND", "1e10")
    spec = load_spec(PEPS_SPEC.format(n=12))
    plan = plan_spec(spec)
    (reason,) = plan.over_limit
    assert re.fullmatch(r"one contraction needs about 10\^\d+\.\d years \([\d.]+e\+\d+ FLOPs at "
                        r"10 GFLOP/s, stated by TNGRAPH_FLOPS_PER_SECOND\), over the time budget "
                        r"of 1 h \(plan\.time_budget\)", reason), reason
    with pytest.raises(PlanError, match=r"over the time budget of 1 h .*--time-budget"):
        tngraph.compile(spec)
    assert plan_spec(spec, time_budget="none").over_limit == ()
    assert plan_spec(spec, time_budget="1e40y").over_limit == ()


def test_a_small_budget_refuses_a_small_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNGRAPH_FLOPS_PER_SECOND", "1e6")
    spec = load_spec(str(ROOT / "models/mps_classifier.yaml"))
    plan = plan_spec(spec, cache=False, optimize="greedy", time_budget="1ms")
    assert [r for r in plan.over_limit if "over the time budget of 1 ms" in r]
    assert plan_spec(spec, cache=False, optimize="greedy", time_budget="1h").over_limit == ()


TT_LAYER_4096 = """\
tngraph: 1
name: tt4096
network: {template: tt_linear, in_shape: [8, 8, 8, 8], out_shape: [8, 8, 8, 8], ranks: 4,
          input: x}
plan: {batch_size: 256, cache: false}
"""


@pytest.mark.parametrize("path_finder", ["optimal", "dp", "auto"])
def test_the_exact_search_minimises_the_plans_objective(path_finder: str) -> None:
    """A 4096 -> 4096 TT-layer at rank 4: minimising FLOPs sends the data through the cores one
    by one (6.7e8 FLOPs, three 4.2 M-entry intermediates); ``combo`` (FLOPs and entries
    written) first contracts the cores in pairs (1.07e9 FLOPs, one such intermediate), which
    runs about twice as fast. Both searches find the cheapest tree under their objective."""
    spec = load_spec(TT_LAYER_4096)
    plans = {minimize: plan_spec(spec, optimize=path_finder, minimize=minimize)
             for minimize in ("flops", "combo")}
    assert plans["flops"].flops == 671_088_640
    # two core pairs (2 * 8**4 * 4 * 4 each), then x with each pair (2 * 256 * 64**3 * 4 each)
    assert plans["combo"].flops == 2 * (2 * 8**4 * 16) + 2 * (2 * 256 * 64**3 * 4)
    assert max(s.size for s in plans["combo"].steps) == 4_194_304
    assert sum(s.size == 4_194_304 for s in plans["combo"].steps) == 1
    assert sum(s.size == 4_194_304 for s in plans["flops"].steps) == 3


def test_tree_cost_follows_the_objective() -> None:
    import cotengra as ctg

    sizes = {"a": 8, "b": 2, "c": 8, "d": 2}
    tree = ctg.ContractionTree.from_path([("a", "b"), ("b", "c"), ("c", "d")], ("a", "d"), sizes,
                                         path=[(0, 1), (0, 1)])
    flops, written = plan_mod.tree_cost(tree, "flops"), plan_mod.tree_cost(tree, "write")
    assert (flops, written) == (2 * 8 * 8 + 8 * 8 * 2, 8 * 8 + 8 * 2)
    assert plan_mod.tree_cost(tree, "size") == 64
    assert plan_mod.tree_cost(tree, "combo") == flops + plan_mod.COMBO_WRITE_COST * written


def _chain(sites: int, bond: int) -> str:
    return (f"tngraph: 1\nname: c\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
            f"bond_dim: {bond}, input: x, feature_map: multilinear, output_dim: 4}}\n")


@pytest.mark.parametrize(("source", "fused"), [
    # 12 sites at bond 3: the fused path has 1.27x the FLOPs of the combo plan and infers
    # 1.7x faster (164 against 272 us)
    (_chain(12, 3), True),
    # 64 sites: the fused path saves per-kernel overhead at 1.06x the FLOPs
    (_chain(64, 10), True),
    # the 6-site MPO fed by 6 ports: 1.84x the FLOPs, and slower fused (192 against 162 us)
    ((ROOT / "models" / "mpo.yaml").read_text(), False),
], ids=["mps-12-bond-3", "mps-64-bond-10", "mpo"])
def test_run_path_auto_runs_the_fused_path_within_the_tolerance(source: str, fused: bool) -> None:
    plan = plan_spec(load_spec(source), cache=False)
    assert plan.fused_flops is not None and plan.fused_flops > plan.flops
    assert plan.runs_fused is fused
    assert (plan.fused_flops <= plan_mod.FUSED_TOLERANCE * plan.flops) is fused


# -- the chain sweep ---------------------------------------------------------------------------

@pytest.mark.parametrize(("leaves", "output", "expected"), [
    # ends first, towards the one tensor with an output leg (o)
    ([("b", "x"), ("b", "x", "y", "o"), ("b", "y")], ("b", "o"), [(2, 1), (0, 3)]),
    ([("b", "a"), ("b", "a", "c"), ("b", "c", "d", "o"), ("b", "d", "e"), ("b", "e")],
     ("b", "o"), [(0, 1), (4, 3), (6, 2), (5, 7)]),
    # the label at one end: one sweep
    ([("b", "a", "o"), ("b", "a", "c"), ("b", "c")], ("b", "o"), [(2, 1), (3, 0)]),
    # the chain listed out of order
    ([("b", "c"), ("b", "a", "o"), ("b", "a", "c")], ("b", "o"), [(0, 2), (3, 1)]),
])
def test_chains_are_swept_towards_their_output(leaves, output, expected) -> None:
    from tngraph.plan import chain_sweep_path

    assert chain_sweep_path(leaves, output, "b") == expected


@pytest.mark.parametrize(("leaves", "output"), [
    ([("b", "a"), ("b", "a", "o")], ("b", "o")),                               # two tensors
    ([("b", "a", "c"), ("b", "a", "d", "o"), ("b", "c", "d")], ("b", "o")),    # a ring
    ([("b", "a"), ("b", "c"), ("b", "a", "c", "d", "o"), ("b", "d")], ("b", "o")),  # a star
    ([("b", "a"), ("b", "a", "o"), ("b", "a")], ("b", "o")),                   # a hyperedge
    ([("p", "a"), ("a", "q", "c"), ("c", "r")], ("p", "q", "r")),              # outputs all along
    ([("b", "a"), ("b", "a"), ("b", "c", "o"), ("b", "c")], ("b", "o")),      # two pieces
])
def test_what_is_not_a_chain_is_searched(leaves, output) -> None:
    from tngraph.plan import chain_sweep_path

    assert chain_sweep_path(leaves, output, "b") is None


def test_a_long_classifier_is_swept_at_the_exact_optimum() -> None:
    """'auto' judges a 64-site classifier too hard for the exact search, and sweeps it. The
    contraction that runs costs what the exact search's does. The planned order is within 1 %:
    the centre joins the side after it first, which reads the label core as stored."""
    text = ("tngraph: 1\nname: c\nnetwork: {template: mps, sites: 64, phys_dim: 2, "
            "bond_dim: 20, input: x, feature_map: multilinear, output_dim: 10}\n")
    swept = plan_spec(_spec(text), cache=False)
    exact = plan_spec(_spec(text), optimize="optimal", cache=False)
    assert swept.path_finder == "chain-sweep"
    assert swept.executed().flops == exact.executed().flops
    assert swept.flops <= 1.01 * exact.flops
