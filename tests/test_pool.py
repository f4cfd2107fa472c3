"""The training programs' buffer pool (tngraph.executor.pool): a buffer is handed out again only
when nothing else refers to its memory."""

from __future__ import annotations

import threading

import pytest
import torch

from tngraph.executor import pool as pool_module
from tngraph.executor.pool import POOL_MIN_BYTES, BufferPool

CPU = torch.device("cpu")
SHAPE = (POOL_MIN_BYTES // 4 // 64, 64)          # just large enough to be pooled (float32)


def test_a_released_buffer_is_reused_and_a_held_one_is_not() -> None:
    pool = BufferPool()
    first = pool.take(SHAPE, torch.float32, CPU)
    pointer = first.data_ptr()
    view = first[1:]                               # a view also holds the memory
    del first
    assert pool.take(SHAPE, torch.float32, CPU).data_ptr() != pointer
    del view
    again = pool.take(SHAPE, torch.float32, CPU)
    assert again.data_ptr() == pointer and again.shape == SHAPE and again.is_contiguous()
    assert again._base is None                    # a tensor of its own, not a view


def test_a_buffer_an_autograd_graph_saved_is_not_reused_until_the_graph_is_freed() -> None:
    pool = BufferPool()
    weight = torch.randn(SHAPE[1], 3, requires_grad=True)
    buffer = pool.take(SHAPE, torch.float32, CPU).fill_(1.0)
    pointer = buffer.data_ptr()
    out = (buffer @ weight).sum()                 # mm saves ``buffer`` for weight's gradient
    del buffer
    other = pool.take(SHAPE, torch.float32, CPU)
    assert other.data_ptr() != pointer
    other.fill_(7.0)
    out.backward()
    torch.testing.assert_close(weight.grad, torch.full_like(weight, float(SHAPE[0])))
    del out, other
    assert pool.take(SHAPE, torch.float32, CPU).data_ptr() == pointer


@pytest.mark.parametrize(("shape", "dtype", "device"), [
    ((4, 4), torch.float32, CPU),                  # small: the allocator serves it well
    (SHAPE, torch.float32, torch.device("meta")),  # not on the CPU
])
def test_small_and_non_cpu_tensors_are_not_pooled(shape: tuple[int, ...], dtype: torch.dtype,
                                                  device: torch.device) -> None:
    pool = BufferPool()
    got = pool.take(shape, dtype, device)
    assert got.shape == shape and got.device == device and pool.nbytes == 0


def test_the_pool_keeps_a_few_buffers_per_shape_and_stays_within_its_limit() -> None:
    nbytes = SHAPE[0] * SHAPE[1] * 4
    pool = BufferPool(limit_bytes=3 * nbytes)
    held = [pool.take(SHAPE, torch.float32, CPU) for _ in range(5)]
    assert len({t.data_ptr() for t in held}) == 5          # all in use: all different
    assert pool.nbytes == 3 * nbytes
    del held
    assert pool.take(SHAPE, torch.float64, CPU).dtype == torch.float64   # its own key
    pool.clear()
    assert pool.nbytes == 0


def test_without_torch_s_use_count_nothing_is_pooled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "_BASELINE", None)
    pool = BufferPool()
    pool.take(SHAPE, torch.float32, CPU)
    assert pool.nbytes == 0


def test_two_threads_never_share_a_buffer() -> None:
    pool = BufferPool()
    pointers: list[list[int]] = [[], []]
    clobbered: list[int] = []
    barrier = threading.Barrier(2)

    def work(k: int) -> None:
        barrier.wait()
        for _ in range(50):
            t = pool.take(SHAPE, torch.float32, CPU)
            t.fill_(float(k))
            pointers[k].append(t.data_ptr())
            if not bool((t == k).all()):            # somebody else wrote into it meanwhile
                clobbered.append(k)
            del t

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(pointers[0]) == len(pointers[1]) == 50 and not clobbered
