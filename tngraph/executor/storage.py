"""Parameters in execution layout: the cores of stacked groups kept as one tensor each.

A program runs equal kernels of a wave as one stacked kernel, whose parameter operand is the
members' cores stacked in the order and layout the kernel reads them (for an MPS, the left and
right half-chains' cores interleaved, the right ones transposed). Gathering that operand from
one tensor per node at every call costs a copy forward, a scatter backward, and an optimizer
step over as many tensors as there are nodes. Instead, the compiler stores each such operand
as it is read: one :class:`StackLayout` per stacked operand, one tensor per layout
(:func:`pack`). A node's tensor, legs in its declared order, is then a view of that storage
(:func:`member_view`), and :class:`NodeValues` hands the program both: the storages, which a
program whose gathers match a layout reads as they are, and each node's view, made on demand
for any other read (another batch size's program, the ``dense`` weight, ``torch.compile``'s
einsum program).

Examples
--------
>>> import torch
>>> from tngraph.executor.kernels import Operand
>>> layout = StackLayout(((0, Operand(None, (1, 2, 3), False)),     # a as it is
...                       (1, Operand((1, 0), (1, 2, 3), False)),     # b permuted
...                       (2, Operand(None, (1, 3, 2), True))))       # c transposed
>>> a, b, c = torch.randn(2, 3), torch.randn(3, 2), torch.randn(3, 2)
>>> storage = pack([a, b, c], layout)
>>> tuple(storage.shape)                   # three members, each read as (1, 2, 3)
(3, 1, 2, 3)
>>> torch.equal(member_view(storage, layout, 1, (3, 2)), b)
True
>>> member_view(storage, layout, 2, (3, 2)).data_ptr() == storage[2].data_ptr()
True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tngraph.executor.kernels import Operand, _logical, inverse_permutation


@dataclass(frozen=True)
class StackLayout:
    """How the cores of one stacked operand are stored: ``members`` are ``(tensor index,
    operand)`` in stacked order, each member read as the operand's logical ``(nb, x, y)``
    block (:func:`~tngraph.executor.kernels._logical`); the storage is ``(len(members), nb, x,
    y)``, contiguous."""

    members: tuple[tuple[int, Operand], ...]

    @property
    def block(self) -> tuple[int, int, int]:
        """The logical ``(nb, x, y)`` shape of one member."""
        return _logical(self.members[0][1])

    @property
    def shape(self) -> tuple[int, ...]:
        """The storage's shape."""
        return (len(self.members), *self.block)


def logical_block(tensor: torch.Tensor, op: Operand) -> torch.Tensor:
    """``tensor`` (legs in declared order) as ``op`` reads it: permuted, viewed as ``op``'s
    ``(nb, x, y)``, transposed where ``op`` is."""
    t = tensor.permute(op.perm) if op.perm is not None else tensor
    t = t.reshape(op.shape3)
    return t.transpose(1, 2) if op.transposed else t


def pack(tensors: Sequence[torch.Tensor], layout: StackLayout) -> torch.Tensor:
    """The storage of ``layout`` from the members' tensors (``tensors[i]`` is tensor ``i``, legs
    in declared order): ``(len(members), nb, x, y)``, contiguous."""
    return torch.stack([logical_block(tensors[i], op) for i, op in layout.members])


def member_view(storage: torch.Tensor, layout: StackLayout, position: int,
                shape: Sequence[int]) -> torch.Tensor:
    """Member ``position`` of ``storage`` as its node's tensor, legs in declared order
    (``shape``): a view, whose writes are the storage's."""
    op = layout.members[position][1]
    block = storage[position]
    if op.transposed:
        block = block.transpose(1, 2)
    permuted = [shape[d] for d in op.perm] if op.perm is not None else list(shape)
    view = block.view(permuted)          # splits the (nb, x, y) axes only: always a view
    return view if op.perm is None else view.permute(inverse_permutation(op.perm))


def storage_mark(storage: torch.Tensor) -> tuple[Any, ...]:
    """What views of ``storage`` kept between calls depend on: its memory's address, its
    layout, dtype and device, and whether inference mode is on (views made there are inference
    tensors). Equal marks: the same memory in the same layout, so a kept view still aliases it
    (a kept view holds the memory, so no other tensor can take its address meanwhile)."""
    return (storage.data_ptr(), storage.storage_offset(), storage.shape, storage.stride(),
            storage.dtype, storage.device, torch.is_inference_mode_enabled())


@dataclass(frozen=True)
class Placement:
    """Where every tensor of a network is stored: ``lone[i]`` is the position of tensor ``i``
    among the separately stored tensors (None for a stacked one), ``stacked[i]`` its ``(layout
    number, position)`` (None for a lone one); ``shapes[i]`` its declared shape."""

    layouts: tuple[StackLayout, ...]
    lone: tuple[int | None, ...]
    stacked: tuple[tuple[int, int] | None, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, shapes: Sequence[Sequence[int]], layouts: Sequence[StackLayout]) -> Placement:
        """The placement of tensors of ``shapes`` given the stacked ``layouts`` (each tensor in
        at most one); the others are lone, in index order."""
        stacked: list[tuple[int, int] | None] = [None] * len(shapes)
        for k, layout in enumerate(layouts):
            for position, (index, op) in enumerate(layout.members):
                if stacked[index] is not None:
                    raise ValueError(f"tensor {index} is in two stacked layouts")
                if math.prod(op.shape3) != math.prod(shapes[index]):
                    raise ValueError(f"tensor {index} of shape {tuple(shapes[index])} cannot be "
                                     f"read as {op.shape3}")
                stacked[index] = (k, position)
        lone: list[int | None] = []
        count = 0
        for where in stacked:
            lone.append(None if where is not None else count)
            count += where is None
        return cls(tuple(layouts), tuple(lone), tuple(stacked),
                   tuple(tuple(int(n) for n in s) for s in shapes))

    @property
    def n_lone(self) -> int:
        return sum(p is not None for p in self.lone)


class NodeValues(Sequence[torch.Tensor]):
    """The network's tensors for one call: ``values[i]`` is tensor ``i`` (legs in declared
    order), a lone parameter as it is or a view of its storage made at first use; ``stacks``
    are the storages, ``stacks[k]`` of ``placement.layouts[k]``.

    ``kept``: where views are kept between calls (without autograd: a view made there carries
    no graph), each with its storage's address and layout, and taken again while the storage is
    the same memory in the same layout. A view aliases its storage, so it sees every in-place
    change; a storage re-seated or replaced (``p.data = t``, ``to()``, ``load_state_dict(...,
    assign=True)``) has another address or layout, and its views are made anew. (A kept view
    holds its memory, so no new tensor takes that address meanwhile.)
    """

    __slots__ = ("placement", "lone", "stacks", "_views", "_kept")

    def __init__(self, placement: Placement, lone: Sequence[torch.Tensor],
                 stacks: Sequence[torch.Tensor],
                 kept: dict[int, tuple[Any, torch.Tensor]] | None = None):
        self.placement = placement
        self.lone = lone
        self.stacks = stacks
        self._views: dict[int, torch.Tensor] = {}
        self._kept = kept

    def __len__(self) -> int:
        return len(self.placement.lone)

    def __getitem__(self, index: int) -> torch.Tensor:   # type: ignore[override]
        position = self.placement.lone[index]
        if position is not None:
            return self.lone[position]
        view = self._views.get(index)
        if view is None:
            k, member = self.placement.stacked[index]   # type: ignore[misc]
            storage = self.stacks[k]
            mark = None
            if self._kept is not None:
                mark = storage_mark(storage)
                found = self._kept.get(index)
                if found is not None and found[0] == mark:
                    self._views[index] = found[1]
                    return found[1]
            view = self._views[index] = member_view(
                storage, self.placement.layouts[k], member, self.placement.shapes[index])
            if self._kept is not None:
                self._kept[index] = (mark, view)
        return view

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[i] for i in range(len(self)))
