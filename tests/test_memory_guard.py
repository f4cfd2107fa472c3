"""The memory guard bounds the peak of live intermediates, measured: every tensor an operation
creates is counted from its creation until its storage is freed (a dispatch mode that sees all
of torch's allocations on the CPU), and the peak is compared with the plan's memory limit."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from helpers import node_grads
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import tngraph
from tngraph.executor import build_program
from tngraph.executor.schedule import plan_schedule, schedule_peak
from tngraph.plan import parse_memory


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that operations create while they are alive (views of
    the ``existing`` tensors, e.g. a module's parameters, are not new storage)."""

    def __init__(self, existing: Any = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen: dict[int, int] = {}
        self.existing = {t.untyped_storage().data_ptr() for t in existing}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self.seen or key in self.existing:
                continue                    # a view of a counted or an existing storage
            self.seen[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, size)
        return out

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self.seen.pop(key, None)


def peps(rows: int, bond: int) -> str:
    return (f"tngraph: 1\nname: grid\nnetwork: {{template: peps, rows: {rows}, cols: {rows}, "
            f"phys_dim: 2, bond_dim: {bond}, open_phys: false}}\n")


def test_the_counter_sees_frees() -> None:
    with LiveBytes() as counter:
        a = torch.ones(1000)
        b = a * 2
        del b
        c = a * 3
    assert counter.peak == 8000 and counter.live == 8000 and c.sum() == 3000


@pytest.mark.parametrize(("rows", "bond", "limit"), [
    (6, 8, "8MiB"),        # sliced into 8; run in the plan's order, one slice at a time
    (6, 8, "30MiB"),       # unsliced, but side-by-side steps would not fit: plan order
    (6, 8, "4GiB"),        # fits anyway: stacked groups run
])
def test_measured_peak_of_a_call_is_within_the_memory_limit(rows: int, bond: int,
                                                            limit: str) -> None:
    module = tngraph.compile(peps(rows, bond), memory_limit=limit, cache=False,
                             optimize="greedy")
    reference = tngraph.compile(peps(rows, bond), cache=False, optimize="greedy",
                                dtype="float64")
    reference.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    with torch.no_grad(), LiveBytes(module.parameters()) as counter:
        value = module()
    assert counter.peak <= parse_memory(limit), (counter.peak, module.plan.n_slices)
    assert value.item() == pytest.approx(reference().item(), rel=1e-4)


def test_side_by_side_steps_that_would_exceed_the_limit_run_in_plan_order() -> None:
    """At 30 MiB the plan fits unsliced, but the stacked schedule's peak does not."""
    grouped = tngraph.compile(peps(6, 8), cache=False, optimize="greedy").plan
    tight = tngraph.compile(peps(6, 8), memory_limit="30MiB", cache=False,
                            optimize="greedy").plan
    assert tight.n_slices == 1
    assert schedule_peak(plan_schedule(grouped)) * 4 > parse_memory("30MiB")
    assert any(len(g.kernels) > 1 for g in build_program(grouped).groups)
    assert all(len(g.kernels) == 1 for g in build_program(tight).groups)
    assert schedule_peak(plan_schedule(tight)) * 4 <= parse_memory("30MiB")


def test_a_sliced_call_under_autograd_holds_one_slice_and_is_twice_differentiable() -> None:
    """Each slice is checkpointed: the forward pass keeps no slice's graph, the backward pass
    recomputes one slice at a time; first and second derivatives match the unsliced module."""
    text = peps(4, 6)
    sliced = tngraph.compile(text, memory_limit="57KiB", cache=False, optimize="greedy",
                             dtype="float64")
    full = tngraph.compile(text, cache=False, optimize="greedy", dtype="float64")
    full.load_state_dict(sliced.state_dict())
    assert sliced.plan.n_slices > 1 and full.plan.n_slices == 1
    with LiveBytes(sliced.parameters()) as counter:
        value = sliced()
    assert counter.peak <= parse_memory("57KiB")
    # per node: the sliced module runs every step alone (one parameter per node), the full one
    # stores stacked cores together
    grads = node_grads(sliced, value, create_graph=True)
    expected = node_grads(full, full(), create_graph=True)
    assert list(grads) == list(expected)
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name])
    second = node_grads(sliced, sum((g ** 2).sum() for g in grads.values()))
    want2 = node_grads(full, sum((g ** 2).sum() for g in expected.values()))
    for name in second:
        torch.testing.assert_close(second[name], want2[name])


def test_generated_code_frees_each_intermediate_after_its_last_use() -> None:
    program = build_program(tngraph.compile(peps(3, 2), cache=False, optimize="greedy").plan)
    lines = program.source_code.splitlines()
    assigned = {line.split("=")[0].strip() for line in lines if " = " in line}
    deleted = {name.strip() for line in lines if line.strip().startswith("del ")
               for name in line.strip()[4:].split(",")}
    returned = lines[-1].split()[-1]
    assert assigned - {returned} <= deleted
