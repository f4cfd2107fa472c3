"""Buffers for a training program's large intermediates, kept between calls on the CPU.

A training step of a TT-layer writes intermediates of many MB (4096 -> 4096 at rank 16, batch
256: 67 MB for the data-side half, and as much for its gradient). On the CPU, torch takes
memory that large fresh from the operating system at every call (glibc maps anything above
32 MB, and often smaller blocks, anew), and the first write to each page faults: measured on
one thread, filling 64 MB took 21.9 ms fresh against 2.8 ms in memory written before, and the
4096 layer's first matmul 35 against 20 ms. The CUDA caching allocator already keeps freed
memory; a :class:`BufferPool` does the same for a program's CPU intermediates.

A buffer is handed out again only when nothing else refers to its memory: the pool asks torch
how many tensors share the storage (``torch._C._storage_Use_Count``), so a buffer that an
autograd graph still holds (a forward whose backward has not run, ``retain_graph``, an output
kept by the caller) is never written while it is in use; the pool takes a new one instead. It
keeps a few buffers per shape and at most :data:`POOL_LIMIT_BYTES` in all (and a quarter of the
plan's memory limit); beyond that, and for small or non-CPU tensors, :meth:`BufferPool.take`
is ``torch.empty``. Only training runs use it: inference keeps nothing between calls but its
workspace.
"""

from __future__ import annotations

import math
import threading

import torch

#: tensors smaller than this come from ``torch.empty`` (the allocator's own free lists serve
#: them without faulting pages)
POOL_MIN_BYTES = 1 << 20

#: largest total a pool keeps between calls
POOL_LIMIT_BYTES = 1 << 30

#: a program's pool keeps at most this fraction (1 / share) of the plan's memory limit
POOL_SHARE_OF_LIMIT = 4

#: most buffers kept for one shape (a forward run again before the first backward, as in
#: gradient accumulation, needs a second one)
POOL_PER_SHAPE = 4

_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _storage_baseline() -> int | None:
    """The use count that :func:`torch._C._storage_Use_Count` reports for a storage that only
    its own Python object holds; None where torch lacks the function (then nothing is pooled)."""
    if _use_count is None:
        return None
    storage = torch.empty(1).untyped_storage()
    return int(_use_count(storage._cdata))


_BASELINE = _storage_baseline()


class BufferPool:
    """Uninitialised CPU tensors for one program's large intermediates, reused between calls.

    Examples
    --------
    >>> pool = BufferPool()
    >>> first = pool.take((512, 1024), torch.float32, torch.device("cpu"))
    >>> pointer = first.data_ptr()
    >>> second = pool.take((512, 1024), torch.float32, torch.device("cpu"))
    >>> second.data_ptr() == pointer        # the first is still alive: a new buffer
    False
    >>> del first, second
    >>> pool.take((512, 1024), torch.float32, torch.device("cpu")).data_ptr() == pointer
    True
    """

    def __init__(self, limit_bytes: int | None = None) -> None:
        self._free: dict[tuple[tuple[int, ...], torch.dtype], list[torch.UntypedStorage]] = {}
        self._bytes = 0
        self._limit = POOL_LIMIT_BYTES if limit_bytes is None else min(limit_bytes,
                                                                      POOL_LIMIT_BYTES)
        self._lock = threading.Lock()

    @staticmethod
    def wanted(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> bool:
        """Whether a tensor of this kind would be pooled (large, on the CPU, and torch can
        tell whether its memory is in use)."""
        return (_BASELINE is not None and device.type == "cpu"
                and math.prod(shape) * dtype.itemsize >= POOL_MIN_BYTES)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
        """A contiguous tensor of ``shape`` whose memory nothing else uses (its values are
        undefined, as ``torch.empty``'s)."""
        shape = tuple(shape)
        if not self.wanted(shape, dtype, device):
            return torch.empty(shape, dtype=dtype, device=device)
        key = (shape, dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        with self._lock:
            kept = self._free.setdefault(key, [])
            for storage in kept:
                if _use_count(storage._cdata) == _BASELINE:      # type: ignore[misc]
                    return _over(storage, shape, dtype)
            tensor = torch.empty(shape, dtype=dtype, device=device)
            if len(kept) < POOL_PER_SHAPE and self._bytes + nbytes <= self._limit:
                kept.append(tensor.untyped_storage())
                self._bytes += nbytes
            return tensor

    @property
    def nbytes(self) -> int:
        """Bytes the pool keeps."""
        return self._bytes

    def clear(self) -> None:
        """Let go of every buffer (those in use stay alive as long as their users)."""
        with self._lock:
            self._free.clear()
            self._bytes = 0


def _over(storage: torch.UntypedStorage, shape: tuple[int, ...],
          dtype: torch.dtype) -> torch.Tensor:
    """A new contiguous tensor (not a view) of ``shape`` over ``storage``."""
    tensor = torch.empty(0, dtype=dtype, device=storage.device)
    return tensor.set_(storage, 0, shape)
