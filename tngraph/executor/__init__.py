"""Execution of a plan in torch: each pairwise step becomes one matmul-shaped kernel.

A :class:`Program` is built once per compiled module from the plan. For every step it decides,
without touching data, how to lay the two operands out as ``(batch, rows, inner)`` and
``(batch, inner, cols)`` matrices so that most steps need no copy at all (reshapes and
transposed views only; BLAS reads transposed operands natively), which operand plays which role,
and which kernel runs it:

``mm``      no shared batch index: one GEMM;
``bmm``     batched GEMM over the indices both operands keep (e.g. the data batch);
``outer``   nothing contracted: a broadcast multiply;
``matvec``  a larger matrix-vector product per batch entry: broadcast multiply and sum;
``small``   a tiny contraction (inner size <= 4) of a vector per batch entry, e.g. the
            ``[1, x]`` feature of one pixel against a ``(batch, 2, bond)`` environment: an
            unrolled chain of fused multiply-adds (``addcmul``); a factor known to be all ones
            (the constant component of ``multilinear`` / ``poly`` features) is skipped, which
            fuses the feature map into the contraction: ``v A0 + x (v A1)``.
``select``  the same tiny contraction where the larger operand holds the contracted index in
            the middle of its layout (e.g. a label core's ``(batch, l, p, o)`` result): its
            slices along that axis are weighted in place (strided views) instead of copying
            the operand into ``(batch, rows, inner)`` order first.
``bcast``   no shared batch index, and an operand whose rows are split by the contracted
            indices (a TT-layer's ``(b, i0, i1, r, o2, o3)`` against ``(i0, i1, r, o0, o1)``):
            one GEMM per leading index with the other operand broadcast, reading the
            operand in place (under autograd as ``_BroadcastMatmul``, whose backward keeps
            the operand's layout; as recorded ops, for ``torch.func`` and ``torch.compile``,
            the operand is copied for one ``mm``). Flipped, it writes each product transposed:
            the order a TT-layer's output wants, with no permuted copy after it.

Each intermediate keeps the layout its kernel produced (``batch, rows, cols``); the next step
adapts to it, and the last result is permuted (a view) into the output order.

Steps that are independent and have the same kernel signature run as one batched kernel:
steps are scheduled in waves (all steps whose operands are ready), and equal kernels of a wave
are stacked into one ``bmm``. When a group's operands are exactly the outputs of one earlier
group, in order, the stacked tensor is reused without unstacking (e.g. the left and right
half-chains of an MPS advance together in one ``bmm`` per site).

The program is Python source generated once (one line per tensor operation). Without autograd
a second variant runs: stacked results are written (``out=``) into a workspace of tensors kept
between calls, with every view of them made once when the workspace is built, so a chain step
costs two torch calls and no allocation (the result handed back never shares its memory).
With autograd, runs of such chain steps execute as one autograd node (:class:`_ChainRun`) with a
hand-written backward, instead of about ten recorded nodes per step. A program made only of lone
matmul steps (a TT-layer) trains as one autograd node too, whose backward is generated next to
its forward (:mod:`~tngraph.executor.adjoint`); its large intermediates come from buffers kept
between calls (:mod:`~tngraph.executor.pool`), not from pages fresh from the operating system.

The package is layered; each module imports only from the ones named before it:
:mod:`~tngraph.executor.pool` (buffers kept between training calls),
:mod:`~tngraph.executor.kernels` (kernel design and execution),
:mod:`~tngraph.executor.schedule` (waves, stacked groups, parameter gathering),
:mod:`~tngraph.executor.chain` (fused chain runs), :mod:`~tngraph.executor.codegen` (the
generated source), :mod:`~tngraph.executor.adjoint` (generated backward passes),
:mod:`~tngraph.executor.storage` (parameters stored in execution layout),
:mod:`~tngraph.executor.runtime` (:class:`Program`, :func:`build_program`)
and :mod:`~tngraph.executor.traced` (the plan as batch-agnostic einsums, for ``torch.compile``).
Under ``torch.func`` transforms and ``torch.compile`` programs run as recorded torch ops only
(:func:`traced`).
"""

from tngraph.executor import runtime
from tngraph.executor.chain import ChainStep, _ChainRun, _result_buffer
from tngraph.executor.codegen import (
    Fetched,
    GeneratedSource,
    GroupOp,
    LoneOp,
    OperandSource,
    Reused,
    StackedHere,
    StackedOp,
    WsEmpty,
    WsSpec,
    WsUnbind,
    WsView,
    _lone_source,
    _operand_source,
    chain_runs,
    generate_source,
    group_ops,
)
from tngraph.executor.kernels import (
    MATVEC_MIN,
    SMALL_INNER,
    Kernel,
    Operand,
    _as3,
    _kernel_function,
    _logical,
    _matvec,
    _mm_materialise,
    _role_slot,
    _select,
    _small,
    _small_weighted,
    _weighted_sum,
    conform,
    design_kernel,
    larger_inside,
    run_kernel,
)
from tngraph.executor.runtime import (
    _WORKSPACE_LOCK,
    WORKSPACE_LIMIT,
    PortGather,
    Program,
    build_program,
    stack_layouts,
)
from tngraph.executor.schedule import (
    MERGED_PERMUTE_MIN,
    STACK_LIMIT,
    Group,
    LeafSource,
    ParamGather,
    Schedule,
    gather_params,
    merged_permutation,
    plan_param_gather,
    plan_schedule,
)
from tngraph.executor.storage import (
    NodeValues,
    Placement,
    StackLayout,
    member_view,
    pack,
)
from tngraph.executor.traced import EinsumProgram, einsum_program

# importing the submodule ``traced`` (just above) bound the package's name ``traced`` to it:
# the name means the function
traced = runtime.traced

__all__ = [
    "EinsumProgram",
    "einsum_program",
    "traced",
    "MATVEC_MIN",
    "MERGED_PERMUTE_MIN",
    "SMALL_INNER",
    "STACK_LIMIT",
    "WORKSPACE_LIMIT",
    "ChainStep",
    "Fetched",
    "GeneratedSource",
    "Group",
    "GroupOp",
    "Kernel",
    "LeafSource",
    "LoneOp",
    "Operand",
    "OperandSource",
    "ParamGather",
    "PortGather",
    "Program",
    "Reused",
    "Schedule",
    "StackedHere",
    "StackedOp",
    "WsEmpty",
    "WsSpec",
    "WsUnbind",
    "WsView",
    "build_program",
    "NodeValues",
    "Placement",
    "StackLayout",
    "member_view",
    "pack",
    "stack_layouts",
    "chain_runs",
    "conform",
    "design_kernel",
    "gather_params",
    "generate_source",
    "group_ops",
    "larger_inside",
    "merged_permutation",
    "plan_param_gather",
    "plan_schedule",
    "run_kernel",
    # private, imported by tests and kept importable from here
    "_WORKSPACE_LOCK",
    "_ChainRun",
    "_as3",
    "_kernel_function",
    "_logical",
    "_lone_source",
    "_matvec",
    "_mm_materialise",
    "_operand_source",
    "_result_buffer",
    "_role_slot",
    "_select",
    "_small",
    "_small_weighted",
    "_weighted_sum",
]
