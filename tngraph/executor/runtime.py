"""Running a program: the :class:`Program` built from a schedule, and what it runs with.

:func:`build_program` schedules a plan (:mod:`tngraph.executor.schedule`) and builds its
:class:`Program`, which generates and compiles its source (:mod:`tngraph.executor.codegen`),
gathers the operands of stacked groups before each call, and runs inference calls in a
workspace kept between calls (one at a time: :data:`_WORKSPACE_LOCK`). Nothing derived from the
parameters is kept between calls: a weight can change in ways no cache can see (an in-place
edit of ``p.data`` keeps the parameter's version counter and data pointer).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.utils.checkpoint

from tngraph.executor.adjoint import AdjointProgram, adjoint_eligible, generate_adjoint
from tngraph.executor.chain import _ChainRun
from tngraph.executor.codegen import (
    GroupOp,
    WsEmpty,
    WsSpec,
    WsView,
    chain_runs,
    generate_source,
    group_ops,
)
from tngraph.executor.kernels import (
    Operand,
    _as3,
    _broadcast_operands,
    _BroadcastMatmul,
    _logical,
    _pooled_mm,
    _role_slot,
    _transforms_active,
    apply_positional,
    run_kernel,
)
from tngraph.executor.pool import POOL_SHARE_OF_LIMIT, BufferPool
from tngraph.executor.schedule import (
    Group,
    LeafSource,
    ParamGather,
    gather_params,
    plan_param_gather,
    plan_schedule,
)
from tngraph.executor.storage import NodeValues, Placement, StackLayout, storage_mark


def traced() -> bool:
    """Whether the call runs under ``torch.compile`` or a ``torch.func`` transform (``vmap``,
    ``grad``, ``jacrev``, ``jvp``, ...): then programs run as recorded torch ops only, without
    the fused chain Function and the inference workspace (``out=`` into kept buffers)."""
    return torch.compiler.is_compiling() or _transforms_active()


#: one inference call at a time uses its program's workspace; a concurrent one (another
#: thread) runs the allocating code instead
_WORKSPACE_LOCK = threading.Lock()


#: largest workspace (elements) kept between inference calls: the stacked intermediates of
#: one forward pass, reused instead of allocated at every step
WORKSPACE_LIMIT = 1 << 24


class PortGather(NamedTuple):
    """A class of port operands of stacked groups gathered together: all from data port
    ``port``, ``size`` members per group, viewed as ``operand``; with ``split``, the weights
    of a 'small' kernel handed over split into columns, and with ``skip_first`` the first
    column (all ones) not gathered."""

    port: int
    size: int
    operand: Operand
    split: bool
    skip_first: bool


@dataclass
class Program:
    """The plan as a list of kernel groups over numbered slots.

    ``run(tensors, ports)`` takes the parameter tensors (in term order) and the data ports, each
    ``(N, batch, *legs)`` for a stacked port (copy-major) or ``(batch, *legs)``; leaves are cut
    from them only where a kernel needs one alone, while operands of stacked groups are gathered
    for all groups at once (one ``stack`` of parameters per shape, one ``index_select`` per
    port).
    """

    n_leaves: int
    leaf_equations: list[str | None]
    groups: list[Group]
    final_perm: tuple[int, ...] | None
    result_slot: int
    sliced: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    sources: dict[int, LeafSource] = field(default_factory=dict)
    #: the final permutation with neighbouring axes merged
    #: (:func:`~tngraph.executor.schedule.merged_permutation`)
    final_merged: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None
    #: the plan's memory limit in entries: the inference workspace (kept between calls) is
    #: built only where it fits, besides :data:`WORKSPACE_LIMIT`
    memory_limit: int | None = None

    def __post_init__(self) -> None:
        # gather classes: operands of stacked groups fetched for all groups at once, keyed by
        # everything that lets their chunks come out of one tensor by a single unbind
        self._port_gathers: dict[PortGather, list[tuple[int, str]]] = {}
        split_weights: set[int] = set()     # groups whose 'b' weights arrive split
        for g, group in enumerate(self.groups):
            for role, flag in (("a", group.prefetch_a), ("b", group.prefetch_b)):
                if not flag:
                    continue
                slots = [_role_slot(k, role) for k in group.kernels]
                kinds = {self.sources[slot].kind for slot in slots}
                ports = {self.sources[slot].index for slot in slots}
                ops = [getattr(k, role) for k in group.kernels]
                size = len(group.kernels)
                if kinds == {"port"} and len(ports) == 1 and len(set(ops)) == 1 and all(
                        self.sources[slot].copy is not None for slot in slots) \
                        and ops[0].perm is None:
                    # the weights of a 'small' kernel are handed over already split
                    # (its first column is not gathered where it is known to be all ones)
                    weights = (role == "b" and group.kernels[0].mode == "small"
                               and _logical(group.kernels[0].a)[1] > 1)
                    skip = weights and all(k.ones_b for k in group.kernels)
                    port_key = PortGather(ports.pop(), size, ops[0], weights, skip)
                    self._port_gathers.setdefault(port_key, []).append((g, role))
                    if weights:
                        split_weights.add(g)
                elif kinds != {"tensor"}:           # (parameter gathers: below)
                    setattr(group, f"prefetch_{role}", False)
        self._param_gathers = tensor_gathers(self.groups, self.sources)
        #: per parameter gather class, its members: (tensor index, operand) in stacked order
        self._gather_members = {key: gather_members(self.groups, self.sources, reqs)
                                for key, reqs in self._param_gathers.items()}
        #: the placement bound (see :meth:`bind`), and per gather class the number of the
        #: stacked storage that holds it as it is read
        self._placement: Placement | None = None
        self._stack_of: dict[tuple[Any, ...], int] = {}
        #: per gather class read from a storage without autograd: (the storage's address and
        #: layout, its views), see :meth:`_stored_views`
        self._views: dict[tuple[Any, ...], tuple[Any, tuple[torch.Tensor, ...]]] = {}
        self._port_idx = {key: [self.sources[_role_slot(k, role)].copy for g, role in reqs
                                for k in self.groups[g].kernels]
                          for key, reqs in self._port_gathers.items()}
        # split weights: (gather number, position) of each group's weights in that gather's
        # columns; groups written out inline read them there (no per-group tuple at each call)
        self._weight_slots = {req: (n, i) for n, (key, reqs) in
                              enumerate(self._port_gathers.items()) if key.split
                              for i, req in enumerate(reqs)}
        # parameter operands: (gather number, position); per gather the positions that chain
        # runs read from its stacked tensor whole (see codegen.generate_source)
        self._core_slots = {req: (n, i) for n, reqs in enumerate(self._param_gathers.values())
                            for i, req in enumerate(reqs)}
        self._stacked_cores: dict[int, frozenset[int]] = {}
        #: per port gather of split weights, the (position, request) of the groups that read
        #: their weights as a tuple of their own (filled at the first call, once the sources,
        #: and so ``_inlined``, are all generated)
        self._split_reads: dict[int, list[tuple[int, tuple[int, str]]]] = {}
        self._inlined: set[int] = set()
        self._port_idx_tensor: dict[tuple[Any, ...], torch.Tensor] = {}
        self._gather_plans: dict[tuple[Any, ...], ParamGather] = {}
        # per group, what to do, decided once (see codegen.group_ops)
        self._ops: list[GroupOp] = group_ops(self.groups, split_weights)
        self._ws_specs: list[WsSpec] = []
        #: the training program's large intermediates, kept between calls (CPU only)
        self._pool = BufferPool(None if self.memory_limit is None
                                else self.memory_limit * 4 // POOL_SHARE_OF_LIMIT)

        self.source_code = self._generate_source()
        self._generated = self._compiled(self.source_code, "<tngraph program>")
        # recorded torch ops only (no fused chain runs): what torch.func transforms and
        # torch.compile trace (a custom Function with a hand-written backward is opaque to them)
        # (the same code unless the fused one has chain runs, 'bcast' or pooled steps)
        self.plain_source = self._generate_source(fused=False)
        self._generated_plain = self._generated if self.plain_source == self.source_code \
            else self._compiled(self.plain_source, "<tngraph program (plain)>")
        broadcast = any(k.mode == "bcast" for group in self.groups for k in group.kernels)
        # training: a program of lone matmul steps runs as one autograd node, forward and
        # backward both generated (see adjoint.py)
        self._adjoint: AdjointProgram | None = None
        if adjoint_eligible(self._ops, self.sources, self.leaf_equations, bool(self.sliced)):
            self.adjoint_source = generate_adjoint(
                self._ops, self.sources, result_slot=self.result_slot,
                final_perm=self.final_perm, final_merged=self.final_merged)
            self._adjoint = AdjointProgram(self.adjoint_source, self._run_plain, self._pool)
        # inference variant: stacked results written into a workspace kept between calls
        self._workspaces: dict[tuple[Any, ...], tuple[list[Any], set[int], GatherStore]] = {}
        self._generated_ws = None
        if not self.sliced:
            self.workspace_source = self._generate_source(workspace=True)
            size = sum(math.prod(spec.shape) for spec in self._ws_specs
                       if isinstance(spec, WsEmpty))
            # (also without workspace entries where a 'bcast' kernel reads its operand in place,
            # which it does only without autograd)
            if (self._ws_specs or broadcast) and size <= min(WORKSPACE_LIMIT,
                                                             self.memory_limit or size):
                self._generated_ws = self._compiled(self.workspace_source,
                                                    "<tngraph program (workspace)>")

    def _run_plain(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor]
                   ) -> torch.Tensor:
        """The recorded program (no prefetched operands: for lone-step programs only)."""
        return self._generated_plain(tensors, ports, {}, None)

    def _compiled(self, source: str, name: str) -> Any:
        """The ``contract`` function of generated ``source`` (with the constants it binds)."""
        namespace = {"torch": torch, "run_kernel": run_kernel, "_as3": _as3,
                     "_ChainRun": _ChainRun, "_BroadcastMatmul": _BroadcastMatmul,
                     "_broadcast_operands": _broadcast_operands,
                     "_pooled_mm": _pooled_mm, "apply_positional": apply_positional,
                     "pool": self._pool, **self._constants}
        exec(compile(source, name, "exec"), namespace)  # noqa: S102 - our own generated code
        return namespace["contract"]

    # -- code generation ----------------------------------------------------------------------
    def _generate_source(self, workspace: bool = False, fused: bool = True) -> str:
        """Straight-line Python for the whole contraction (see
        :func:`~tngraph.executor.codegen.generate_source`); with ``workspace``, the inference
        variant, whose workspace entries go to ``self._ws_specs``; without ``fused``, chain
        runs are written out as recorded ops. The constants it binds are
        kept in ``self._constants``; the caller keeps the text (``self.source_code``,
        ``self.workspace_source``) for inspection."""
        generated = generate_source(
            self._ops, self.sources, self.leaf_equations, sliced=bool(self.sliced),
            result_slot=self.result_slot, final_perm=self.final_perm,
            final_merged=self.final_merged, weight_slots=self._weight_slots,
            runs=self._chain_runs() if fused and not workspace else {}, workspace=workspace,
            core_slots=self._core_slots, fused=fused and not workspace)
        if workspace:
            self._ws_specs = list(generated.ws_specs)
        self._inlined |= generated.inlined
        for number, positions in generated.stacked_cores.items():
            self._stacked_cores[number] = self._stacked_cores.get(number, frozenset()) | positions
        self._constants = generated.constants
        return generated.text

    def _chain_runs(self) -> dict[int, list[int]]:
        """Runs of chain steps fused into one autograd node (see
        :func:`~tngraph.executor.codegen.chain_runs`): first group -> the run's groups."""
        return chain_runs(self._ops, self._weight_slots)

    def _workspace(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor]
                   ) -> tuple[list[Any], set[int], GatherStore]:
        """The workspace for this dtype and device (built at first use): its entries as the
        workspace source refers to them, the data pointers of its tensors, and where the data
        ports' gathers are kept (see :meth:`_port_gathered`; their pointers join the others)."""
        ref = tensors[0] if tensors else ports[0]
        key = (ref.dtype, ref.device, torch.is_inference_mode_enabled())
        found = self._workspaces.get(key)
        if found is None:
            entries: list[Any] = []
            for spec in self._ws_specs:
                if isinstance(spec, WsEmpty):
                    entries.append(torch.empty(spec.shape, dtype=ref.dtype, device=ref.device))
                elif isinstance(spec, WsView):
                    view = entries[spec.base].view(spec.size)
                    entries.append(view.transpose(1, 2) if spec.transposed else view)
                else:
                    entries.append(entries[spec.base].view(spec.size).unbind(spec.dim))
            pointers = {e.untyped_storage().data_ptr() for e, spec in zip(entries, self._ws_specs)
                        if isinstance(spec, WsEmpty)}
            found = self._workspaces[key] = (entries, pointers, GatherStore(pointers))
        return found

    # -- leaves -----------------------------------------------------------------------------
    def _leaf(self, slot: int, tensors: Sequence[torch.Tensor],
              ports: Sequence[torch.Tensor]) -> torch.Tensor:
        source = self.sources[slot]
        if source.kind == "tensor":
            t = tensors[source.index]
        else:
            t = ports[source.index] if source.copy is None else ports[source.index].select(
                0, source.copy)
        eq = self.leaf_equations[slot]
        return t if eq is None else torch.einsum(eq, t)

    def bind(self, placement: Placement) -> None:
        """Read the parameter gathers whose members a stacked layout of ``placement`` holds, in
        the same order and layout, from that storage (:class:`NodeValues` ``.stacks``)."""
        by_members = {layout.members: k for k, layout in enumerate(placement.layouts)}
        self._stack_of = {key: by_members[members]
                          for key, members in self._gather_members.items()
                          if members in by_members}
        self._placement = placement

    def _bound_stacks(self, tensors: Sequence[torch.Tensor]) -> Sequence[torch.Tensor] | None:
        """The stacked storages of ``tensors`` (a :class:`NodeValues`), with this program bound
        to their placement; None for a plain list of tensors."""
        if not isinstance(tensors, NodeValues):
            return None
        if tensors.placement is not self._placement:
            self.bind(tensors.placement)
        return tensors.stacks

    def _stored_views(self, key: tuple[Any, ...], storage: torch.Tensor,
                      shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """Without autograd, the groups' operands as views of a stacked storage, made once for
        as long as the storage is the same memory in the same layout. Views alias the storage,
        so every in-place change of the weights is in them; a storage re-seated or replaced
        (``p.data = t``, ``load_state_dict(assign=True)``, another dtype or device) has another
        address or layout, and the views are made anew. (The views kept hold the old memory,
        so no new tensor can take its address meanwhile.)"""
        mark = storage_mark(storage)
        found = self._views.get(key)
        if found is None or found[0] != mark:
            found = self._views[key] = (mark, storage.view(shape).unbind(0))
        return found[1]

    def _port_gathered(self, store: GatherStore | None, key: Any, source: torch.Tensor,
                       idx: torch.Tensor, split: Any, origin: tuple[Any, ...]) -> Any:
        """``split(source.index_select(0, idx))``; with a workspace's ``store`` (inference,
        holding the workspace), the gather is written into a tensor kept there and split into
        views once: a 64-site classifier's per-step feature weights are otherwise 30 fresh
        views per call."""
        if store is None:
            return split(source.index_select(0, idx))
        found = store.kept.get(key)
        if found is None or found[0].shape[1:] != source.shape[1:] \
                or found[0].dtype != source.dtype or found[0].device != source.device:
            buffer = source.new_empty((len(idx), *source.shape[1:]))
            found = store.kept[key] = (buffer, split(buffer))
            store.pointers.add(buffer.untyped_storage().data_ptr())
        torch.index_select(source, 0, idx, out=found[0])
        store.refresh.append((*origin, idx, found[0]))
        return found[1]

    def _prefetch(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor],
                  frozen: dict[Any, Any] | None = None, store: GatherStore | None = None
                  ) -> dict[tuple[int, str], torch.Tensor]:
        """The gathered operands of the stacked groups: parameters (views of their stacked
        storage where it is laid out as read) and data ports. ``frozen``: inside
        ``tngraph.frozen``, the store of the parameters gathered once; ``store``: the
        workspace's store for the ports' gathers (for the workspace variant, which reads no
        stacked core tensors whole)."""
        out: dict[tuple[int, str], torch.Tensor] = {}
        kept = frozen.get("gathers") if frozen is not None else None
        # the workspace variant's operands, all views of kept tensors (stored parameters, the
        # ports' kept gathers): the same dict at every call while the storages are the same
        # memory in the same layout, with only the ports' gathers written anew
        marks = None
        if store is not None:
            if frozen is None and isinstance(tensors, NodeValues):
                marks = tuple(storage_mark(t) for t in self._bound_stacks(tensors))
                found = store.fetched
                if found is not None and found[0] == marks:
                    for p, table, column, idx, buffer in found[2]:
                        data = ports[p]
                        if column is not None:
                            data = data.reshape(table).select(2, column)
                        torch.index_select(data, 0, idx, out=buffer)
                    return found[1]
            store.fetched, store.refresh = None, []
        if kept is not None:                  # inside tngraph.frozen: gathered once
            out.update(kept)
        else:
            stacks = self._bound_stacks(tensors)
            # under autograd the fused program reads the cores of chain runs as one stacked
            # tensor; a gather that only they read is not also split into its operands (the
            # split's backward would stack their gradients again)
            grad, in_trace = torch.is_grad_enabled(), traced()
            fused = grad and not in_trace and frozen is None
            for number, (key, reqs) in enumerate(self._param_gathers.items()):
                size, (nb, x, y) = key
                whole = self._stacked_cores.get(number)
                k = self._stack_of.get(key) if stacks is not None else None
                if k is not None:          # stored as it is read: no copy, no scatter
                    shape = (len(reqs), size * nb, x, y)
                    if not grad and not in_trace:
                        out.update(zip(reqs, self._stored_views(key, stacks[k], shape)))
                        if whole is not None and store is None:
                            out[("stacked", number)] = stacks[k].view(shape)
                        continue
                    gathered = stacks[k]
                else:
                    marks = None                 # (a gather copied at every call)
                    plan = self._gather_plans.get(key)
                    if plan is None:
                        plan = self._gather_plans[key] = plan_param_gather(
                            [tuple(t.shape) for t in tensors], self._gather_members[key])
                    gathered = gather_params(tensors, plan)           # (n * size, nb, x, y)
                stacked = gathered.view(len(reqs), size * nb, x, y)
                if whole is not None:
                    out[("stacked", number)] = stacked
                    if fused and len(whole) == len(reqs):
                        continue
                out.update(zip(reqs, stacked.unbind(0)))
            if frozen is not None:
                frozen["gathers"] = dict(out)
        for number, (key, reqs) in enumerate(self._port_gathers.items()):
            p, size, op, weights, skip = key
            data = ports[p]
            cache_key = (key, data.device)
            idx = self._port_idx_tensor.get(cache_key)
            if idx is None:
                idx = self._port_idx_tensor[cache_key] = torch.tensor(self._port_idx[key],
                                                                      device=data.device)
            nb, x, y = op.shape3
            if weights:       # per group the k weights (G*nb, 1), each contiguous (strided
                # weights slow the multiply-adds down): one gather per column, for all groups
                table = data.reshape(data.shape[0], nb, x)                    # (N, nb, k)
                columns: list[Any] = [None] if skip else []
                shape = (len(reqs), size * nb, 1)
                for j in range(1 if skip else 0, x):
                    columns.append(self._port_gathered(                      # (n * size, nb)
                        store, (number, j), table.select(2, j), idx,
                        lambda column, shape=shape: column.view(shape).unbind(0),
                        (p, tuple(table.shape), j)))
                out[("columns", number)] = columns
                wanted = self._split_reads.get(number)
                if wanted is None:   # the groups not written inline read their own tuples
                    wanted = self._split_reads[number] = [
                        (i, req) for i, req in enumerate(reqs) if req[0] not in self._inlined]
                out.update((req, tuple(c if c is None else c[i] for c in columns))
                           for i, req in wanted)
                continue
            def split(gathered: torch.Tensor, shape: tuple[int, ...] = (len(reqs), size * nb, x, y),
                      transposed: bool = op.transposed) -> tuple[torch.Tensor, ...]:
                gathered = gathered.view(shape)             # (n * size, batch, *legs) before
                return (gathered.transpose(2, 3) if transposed else gathered).unbind(0)
            out.update(zip(reqs, self._port_gathered(store, (number,), data, idx, split,
                                                     (p, None, None))))
        if marks is not None and store is not None:
            store.fetched = (marks, out, store.refresh)
        return out

    # -- running ----------------------------------------------------------------------------
    def run(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor],
            frozen: dict[Any, Any] | None = None, bias: torch.Tensor | None = None
            ) -> torch.Tensor:
        """Contract the network for these parameters and data ports (``frozen``: this program's
        store for the gathered parameters, inside ``tngraph.frozen``), plus ``bias`` where
        given (its shape the outputs', added over the result's leading batch axis)."""
        if self._adjoint is not None and torch.is_grad_enabled() and not traced():
            # (a training run: one autograd node, the bias added in its last matmul)
            return self._adjoint.run(list(tensors), ports, bias)
        result = self._run(tensors, ports, frozen)
        return result if bias is None else result + bias

    def _run(self, tensors: Sequence[torch.Tensor], ports: Sequence[torch.Tensor],
             frozen: dict[Any, Any] | None) -> torch.Tensor:
        if not self.sliced:
            if traced():
                return self._generated_plain(tensors, ports,
                                             self._prefetch(tensors, ports, frozen), None)
            if self._generated_ws is not None and not torch.is_grad_enabled() \
                    and _WORKSPACE_LOCK.acquire(blocking=False):
                try:
                    ws, pointers, store = self._workspace(tensors, ports)
                    fetched = self._prefetch(tensors, ports, frozen, store)
                    result = self._generated_ws(tensors, ports, fetched, None, ws)
                    if result.untyped_storage().data_ptr() in pointers:
                        result = result.clone()    # never hand out workspace memory
                    return result
                finally:
                    _WORKSPACE_LOCK.release()
            return self._generated(tensors, ports, self._prefetch(tensors, ports, frozen), None)
        leaves = [self._leaf(k, tensors, ports) for k in range(self.n_leaves)]
        # under autograd each slice is checkpointed: its intermediates are recomputed in the
        # backward pass instead of kept, so a sliced run holds one slice's graph, not all
        checkpointed = torch.is_grad_enabled() and not traced()
        total = None
        for choice in itertools.product(*(range(n) for n, _ in self.sliced)):
            picked: dict[int, list[tuple[int, int]]] = {}
            for value, (_, where) in zip(choice, self.sliced):
                for leaf, axis in where:
                    picked.setdefault(leaf, []).append((axis, value))
            parts = list(leaves)
            for leaf, selections in picked.items():
                tensor = parts[leaf]
                for axis, value in sorted(selections, reverse=True):  # high axes first
                    tensor = tensor.select(axis, value)
                parts[leaf] = tensor
            if checkpointed:
                part = torch.utils.checkpoint.checkpoint(self._generated, tensors, ports, {},
                                                         parts, use_reentrant=False)
            else:
                part = self._generated(tensors, ports, {}, parts)
            total = part if total is None else total + part
            del part, parts
        assert total is not None
        return total


@dataclass
class GatherStore:
    """Where an inference workspace keeps the data ports' gathers: per gather its tensor and
    that tensor's views (``kept``), and the workspace's data pointers (``pointers``, which the
    kept tensors join: no result that is one of them is handed out)."""

    pointers: set[int]
    kept: dict[Any, tuple[torch.Tensor, Any]] = field(default_factory=dict)
    #: the last operands handed out: (the stacked storages' marks, the operands, how to write
    #: the ports' gathers anew: (port, table shape or None, column or None, index, buffer))
    fetched: tuple[Any, dict[Any, Any], list[Any]] | None = None
    refresh: list[Any] = field(default_factory=list)


def tensor_gathers(groups: Sequence[Group], sources: dict[int, LeafSource]
                   ) -> dict[tuple[Any, ...], list[tuple[int, str]]]:
    """The prefetched operands of stacked groups whose members are all parameter tensors, by
    gather class ``(group size, logical (nb, x, y))``: each a list of ``(group, role)``."""
    gathers: dict[tuple[Any, ...], list[tuple[int, str]]] = {}
    for g, group in enumerate(groups):
        for role in ("a", "b"):
            if not getattr(group, f"prefetch_{role}"):
                continue
            slots = [_role_slot(k, role) for k in group.kernels]
            if all(sources[slot].kind == "tensor" for slot in slots):
                key = (len(group.kernels), _logical(getattr(group.kernels[0], role)))
                gathers.setdefault(key, []).append((g, role))
    return gathers


def gather_members(groups: Sequence[Group], sources: dict[int, LeafSource],
                   requests: Sequence[tuple[int, str]]) -> tuple[tuple[int, Operand], ...]:
    """The members of a parameter gather: ``(tensor index, operand)``, in stacked order."""
    return tuple((sources[_role_slot(k, role)].index, getattr(k, role))
                 for g, role in requests for k in groups[g].kernels)


def stack_layouts(plan: Any, ones: set[int] = frozenset(), batch_size: int | None = None
                  ) -> list[StackLayout]:
    """How ``plan``'s program for ``batch_size`` (scheduled, not built) reads its parameters,
    what :class:`~tngraph.executor.storage.NodeValues` should store as it is read: the stacked
    operands of stacked groups, then each parameter that a lone kernel reads permuted (stored
    permuted, its ``permute(...).contiguous()`` copies nothing)."""
    s = plan_schedule(plan, ones, batch_size)
    layouts = [StackLayout(gather_members(s.groups, s.sources, requests))
               for requests in tensor_gathers(s.groups, s.sources).values()]
    for group in s.groups:
        if len(group.kernels) != 1:
            continue
        (kernel,) = group.kernels
        for role in ("a", "b"):
            slot, op = _role_slot(kernel, role), getattr(kernel, role)
            source = s.sources.get(slot)               # (None: an intermediate)
            if source is not None and source.kind == "tensor" \
                    and s.leaf_equations[slot] is None and op.perm is not None:
                # stored as the kernel's permute reads it, before any transpose (a view)
                layouts.append(StackLayout(((source.index,
                                             Operand(op.perm, op.shape3, False)),)))
    return layouts


def build_program(plan: Any, ones: set[int] = frozenset(), batch_size: int | None = None
                  ) -> Program:
    """Design every kernel of ``plan`` for ``batch_size`` and schedule them into stacked groups
    (:func:`~tngraph.executor.schedule.plan_schedule`): the plan's :class:`Program`.

    Kernel shapes are concrete, so a program serves one batch size (the caller keeps one per
    batch size seen).
    """
    s = plan_schedule(plan, ones, batch_size)
    limit = getattr(plan, "memory_limit", None)
    return Program(s.n_leaves, s.leaf_equations, s.groups, s.final_perm, s.result_slot, s.sliced,
                   s.sources, s.final_merged,
                   limit // plan.itemsize if limit is not None else None)
