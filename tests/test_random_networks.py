"""Seeded random networks: compiled forward == dense oracle, gradients, plan consistency."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_matches, dense_oracle, rand_network, rand_spec, random_inputs

import tngraph
from tngraph.plan import step_flops

BATCH = 3
CASES = [(n, seed) for n in range(1, 9) for seed in range(37)]          # 296 cases
AUTO_CASES = [(n, seed) for n in range(1, 9) for seed in range(37, 41)]  # 32 with "auto"


def _compile(n: int, seed: int, **options: object) -> tngraph.TNModule:
    options = {"optimize": "greedy", "dtype": "float64", "batch_size": BATCH, "cache": False,
               **options}
    return tngraph.compile(rand_spec(n, seed), seed=seed, **options)


def test_generator_covers_the_features() -> None:
    """The random specs do contain the shapes the oracle tests claim to cover."""
    nets = [rand_network(n, seed) for n, seed in CASES]

    def edges_of(net: dict) -> list[tuple[str, str]]:
        return [(a.split(".")[0], b.split(".")[0]) for a, b in net["edges"]]

    assert any(a == b for net in nets for a, b in edges_of(net)), "no trace"
    assert any(len(edges_of(net)) > len(set(map(frozenset, edges_of(net)))) for net in nets)
    assert any(not net["outputs"] and "inputs" not in net for net in nets), "no scalar"
    assert any("inputs" in net and "stack" in net["inputs"]["x"] for net in nets)
    assert any("inputs" in net and "feature_map" in net["inputs"]["x"] for net in nets)
    assert any(not node["legs"] for net in nets for node in net["nodes"].values())
    dims = {d for net in nets for node in net["nodes"].values() for d in node["legs"].values()}
    assert dims == {1, 2, 3, 4}
    assert rand_spec(5, 3) == rand_spec(5, 3), "not reproducible"


@pytest.mark.parametrize(("n", "seed"), CASES)
def test_forward_matches_oracle(n: int, seed: int) -> None:
    module = _compile(n, seed)
    inputs = random_inputs(module, BATCH, seed)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


@pytest.mark.parametrize(("n", "seed"), AUTO_CASES)
def test_forward_matches_oracle_auto(n: int, seed: int) -> None:
    module = _compile(n, seed, optimize="auto")
    inputs = random_inputs(module, BATCH, seed)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


@pytest.mark.parametrize(("n", "seed"), [(n, seed) for n in range(1, 9) for seed in range(6)])
def test_gradients_exist_and_are_finite(n: int, seed: int) -> None:
    module = _compile(n, seed)
    inputs = random_inputs(module, BATCH, seed)
    module(**inputs).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None, name
        assert param.grad.shape == param.shape, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(("n", "seed"), [(n, seed) for n in range(3, 9) for seed in range(8)])
def test_sliced_plans_match_oracle(n: int, seed: int) -> None:
    """A memory limit of three times the parameters or the largest leaf: plans may need
    slicing to fit the intermediates alive at once (with a copy of each step's operands), or,
    where no slicing can, are refused saying so."""
    text = rand_spec(n, seed, data=True)
    free = tngraph.compile(text, optimize="greedy", dtype="float64", batch_size=64, cache=False)
    plan = free.plan
    sizes = plan.problem.size_dict
    floor = 3 * max([plan.param_count, math.prod(sizes[i] for i in plan.problem.output)]
                    + [math.prod(sizes[i] for i in leaf) for leaf in plan.leaf_inds])
    try:
        module = tngraph.compile(text, optimize="greedy", dtype="float64", batch_size=64,
                                 cache=False, memory_limit=8 * floor, seed=seed)
    except tngraph.PlanError as exc:
        assert plan.peak_intermediate > floor
        assert "at the peak" in str(exc) and "slicing cannot reduce it" in str(exc)
        return
    assert module.plan.largest_intermediate <= floor
    assert module.plan.peak_intermediate <= floor
    if module.plan.sliced_inds:
        assert module.plan.n_slices > 1
    inputs = random_inputs(module, 5, seed)
    assert_matches(module(**inputs), dense_oracle(module, inputs))


@pytest.mark.parametrize(("n", "seed"), CASES[::4])
def test_plan_steps_are_a_valid_contraction(n: int, seed: int) -> None:
    """Replaying the steps on index sets gives the output; costs follow the FLOP convention."""
    plan = _compile(n, seed).plan
    problem = plan.problem
    slots = [tuple(leaf) for leaf in plan.leaf_inds]
    alive = set(range(len(slots)))
    total = 0
    for step in plan.steps:
        assert step.left in alive and step.right in alive and step.left != step.right
        assert (step.left_inds, step.right_inds) == (slots[step.left], slots[step.right])
        assert step.out == len(slots)
        later = {i for k in alive - {step.left, step.right} for i in slots[k]}
        needed = (set(step.left_inds) | set(step.right_inds)) & (later | set(problem.output))
        assert set(step.out_inds) == needed
        assert step.flops == step_flops(step.left_inds, step.right_inds, step.out_inds,
                                        problem.size_dict)
        assert step.size == math.prod(problem.size_dict[i] for i in step.out_inds)
        total += step.flops
        slots.append(step.out_inds)
        alive -= {step.left, step.right}
        alive.add(step.out)
    assert len(alive) == 1
    assert sorted(plan.final_inds) == sorted(problem.output)
    # traces inside single tensors are taken first: one pass over each traced tensor
    total += sum(math.prod(problem.size_dict[i] for i in set(raw))
                 for raw, leaf in zip(problem.inputs, plan.leaf_inds) if tuple(raw) != leaf)
    assert plan.flops == total


@pytest.mark.parametrize(("n", "seed"), [(n, seed) for n in range(2, 9) for seed in range(14)])
def test_inference_workspace_matches_oracle(n: int, seed: int) -> None:
    """Without autograd, stacked steps write into a workspace kept between calls: results
    still match the oracle, and a result handed out is not overwritten by the next call."""
    module = _compile(n, seed)
    first_inputs = random_inputs(module, BATCH, seed)
    second_inputs = random_inputs(module, BATCH, seed + 1000)
    with torch.no_grad():
        first = module(**first_inputs)
        kept = first.clone()
        second = module(**second_inputs)
        again = module(**first_inputs)
    assert_matches(first, kept)
    assert_matches(again, dense_oracle(module, first_inputs))
    assert_matches(second, dense_oracle(module, second_inputs))
