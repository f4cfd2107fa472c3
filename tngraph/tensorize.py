"""Tensorization of trained pipelines: dense ``linear`` layers -> ``tt_linear`` TT-layers.

``tensorize_spec(spec, state_dict, layers, rank=R | eps=E)`` takes a pipeline spec and its
trained weights, and replaces every named ``linear`` layer by a ``network`` layer of the same
name whose network is a ``tt_linear`` template call; its cores come from TT-SVD of the trained
weight ``W`` (:func:`tngraph.decompose.tt_matrix`), its bias is copied. Everything else (the
other layers, their weights, the ``plan:`` and ``train:`` blocks) stays as it was, so the result
compiles, loads and fine-tunes like any tngraph model (``tngraph train NEW/spec.yaml --init
NEW/model.safetensors``). ``tngraph tensorize`` is the command-line front of this module.

How the factorisations are chosen (when not given): see :func:`choose_shapes` and
:func:`balanced_factors`.

Examples
--------
>>> import tngraph, torch
>>> spec = tngraph.load_spec("tngraph: 1\\nname: m\\ninput_shape: [16]\\n"
...                          "layers: [{type: linear, name: fc, out_features: 16}]\\n")
>>> state = tngraph.compile(spec).state_dict()
>>> new_spec, new_state, rows = tensorize_spec(spec, state, ["fc"], rank=2,
...                                            shapes={"fc": ([4, 4], [4, 4])})
>>> new_spec.layers[0].template
{'template': 'tt_linear', 'in_shape': [4, 4], 'out_shape': [4, 4], 'ranks': 2, 'bias': True}
>>> sorted(new_state)
['layers.fc.bias', 'layers.fc.tensors.G0', 'layers.fc.tensors.G1']
>>> rows[0].params_before, rows[0].params_after
(272, 80)
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from tngraph.compiler import compile as compile_spec
from tngraph.decompose import (
    DecompositionError,
    max_ranks,
    tt_matrix,
    tt_matrix_to_dense,
    tt_ranks,
)
from tngraph.files import atomic_write
from tngraph.layers import summarize_layers
from tngraph.plan import plan_spec
from tngraph.report import pipeline_report_data
from tngraph.schema import Spec
from tngraph.spec import load_spec
from tngraph.train import (
    TrainingError,
    check_fit,
    evaluate,
    run_train_config,
    save_weights,
    tested_weights,
)
from tngraph.train import read_weights as read_run_weights
from tngraph.yamlio import dump_yaml

#: number of cores of an automatically chosen factorisation (fewer when both sizes have fewer
#: prime factors)
DEFAULT_CORES = 4
#: the most factors (cores) a size is split into
MAX_CORES = 64


class TensorizeError(DecompositionError):
    """A tensorization request that cannot be honoured (unknown or non-linear layer, bad
    factorisation, bad rank); a user error (CLI exit code 2) with a ``hint:`` line."""


# ---------------------------------------------------------------------------------------------
# argument checks


def _path_arg(value: Any, what: str) -> Path:
    """``value`` as a Path, if it is a ``str`` or ``os.PathLike``."""
    if not isinstance(value, (str, os.PathLike)):
        raise TensorizeError(f"{what} must be a path (str or Path), got {type(value).__name__}")
    return Path(value)


def _spec_arg(spec: Any) -> Spec:
    if not isinstance(spec, Spec):
        raise TensorizeError(f"spec must be a loaded Spec, got {type(spec).__name__}",
                             "load it first: tngraph.load_spec(path)")
    return spec


def _weight_entry(value: Any, key: str) -> torch.Tensor:
    """The state_dict entry ``key`` as a tensor (arrays and nested lists are read as one)."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        if isinstance(value, (str, bytes, Mapping)):
            raise TypeError
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise TensorizeError(f"'{key}' of the weights is {type(value).__name__}, not a tensor",
                             "pass module.state_dict() or read_weights(model.safetensors)") \
            from None


def _size_arg(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TensorizeError(f"{what} must be a positive integer, got {n!r}")
    return n


# ---------------------------------------------------------------------------------------------
# factorisations


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n >= 1`` with multiplicity, ascending (``[]`` for 1).

    >>> prime_factors(360)
    [2, 2, 2, 3, 3, 5]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TensorizeError(f"cannot factor {n!r}: sizes are positive integers")
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def balanced_factors(n: int, k: int) -> tuple[int, ...]:
    """The most balanced way to write ``n`` as a product of ``k`` factors, largest first.

    "Most balanced" means: among all ways to write ``n = f_1 * ... * f_k`` with
    ``f_1 >= ... >= f_k >= 1``, the one whose largest factor is smallest; ties are broken by the
    second largest, and so on (the lexicographically smallest non-increasing tuple). When ``n``
    has fewer than ``k`` prime factors (counted with multiplicity), the missing factors are 1s;
    a prime ``n`` gives ``(n, 1, ..., 1)``. Found by a depth-first search that tries the
    smallest admissible factor first at every position, so the first complete factorisation is
    the answer.

    Parameters
    ----------
    n
        The size to factor (``>= 1``).
    k
        The number of factors (``>= 1``).

    Examples
    --------
    >>> balanced_factors(256, 4)
    (4, 4, 4, 4)
    >>> balanced_factors(64, 4)
    (4, 4, 2, 2)
    >>> balanced_factors(784, 4)
    (7, 7, 4, 4)
    >>> balanced_factors(10, 4)             # two prime factors: padded with 1s
    (5, 2, 1, 1)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TensorizeError(f"balanced_factors: n must be a positive integer, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_CORES:
        raise TensorizeError(f"balanced_factors: k must be an integer from 1 to {MAX_CORES}, "
                             f"got {k!r}")
    divisors = sorted({d for p in range(1, math.isqrt(n) + 1) if n % p == 0
                       for d in (p, n // p)})

    def search(m: int, slots: int, cap: int) -> list[int] | None:
        # factors of m into `slots` factors, each <= cap, non-increasing; smallest first
        if slots == 1:
            return [m] if m <= cap else None
        for f in divisors:
            if f > cap or f > m:
                break
            if m % f or f ** slots < m:       # f must be the largest of `slots` factors
                continue
            rest = search(m // f, slots - 1, f)
            if rest is not None:
                return [f, *rest]
        return None

    found = search(n, k, n)
    assert found is not None            # (n, 1, ..., 1) always fits
    return tuple(found)


def choose_shapes(in_features: int, out_features: int, cores: int | None = None
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Factorisations ``(in_shape, out_shape)`` of a layer's sizes for a TT-matrix.

    The rule:

    1. ``d`` factors for both (a TT-matrix pairs ``in_shape[k]`` with ``out_shape[k]``):
       ``cores`` if given, else ``min(4, max(Ω(in), Ω(out)))`` where ``Ω`` counts prime factors
       with multiplicity (at least 1). Four cores is the usual choice of TT-layers (Novikov et
       al.); fewer when neither size has that many prime factors.
    2. Each size is split by :func:`balanced_factors` into ``d`` factors (padded with 1s when it
       has fewer than ``d`` prime factors).
    3. ``in_shape`` is ordered largest first and ``out_shape`` smallest first, so that the paired
       mode sizes ``in_shape[k] * out_shape[k]`` (what TT-SVD sees) are as even as possible.

    Examples
    --------
    >>> choose_shapes(256, 256)
    ((4, 4, 4, 4), (4, 4, 4, 4))
    >>> choose_shapes(4096, 16)             # seed 004's 8^4 -> 2^4
    ((8, 8, 8, 8), (2, 2, 2, 2))
    >>> choose_shapes(256, 10)
    ((4, 4, 4, 4), (1, 1, 2, 5))
    >>> choose_shapes(64, 256, cores=3)
    ((4, 4, 4), (4, 8, 8))
    """
    _size_arg(in_features, "in_features")
    _size_arg(out_features, "out_features")
    if cores is None:
        d = max(1, min(DEFAULT_CORES, max(len(prime_factors(in_features)),
                                          len(prime_factors(out_features)))))
    else:
        if isinstance(cores, bool) or not isinstance(cores, int) or not 1 <= cores <= MAX_CORES:
            raise TensorizeError(f"the number of cores must be an integer from 1 to "
                                 f"{MAX_CORES}, got {cores!r}", "for example --cores 4")
        d = cores
    return balanced_factors(in_features, d), tuple(reversed(balanced_factors(out_features, d)))


# ---------------------------------------------------------------------------------------------
# the transformation


@dataclass(frozen=True)
class LayerReport:
    """What tensorizing one layer did: shapes, ranks, sizes, error and costs.

    ``params_*`` count the weight and the bias; ``flops_*`` are per example, as in the pipeline
    cost report (``tngraph compile``): ``2 * in * out`` for the dense layer, the planned
    contraction's FLOPs divided by the plan's batch size for the TT-layer.
    """

    name: str
    in_features: int
    out_features: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    rel_error: float
    flops_before: float
    flops_after: float
    notes: tuple[str, ...] = field(default=())

    @property
    def compression(self) -> float:
        """``params_before / params_after`` (> 1: fewer parameters)."""
        return self.params_before / self.params_after


class Tensorized(NamedTuple):
    """The result of :func:`tensorize_spec` (unpacks as ``spec, state_dict, rows``)."""

    spec: Spec
    state_dict: dict[str, torch.Tensor]
    rows: list[LayerReport]


def _layer_index(spec: Spec) -> dict[str, Any]:
    return {layer.name: layer for layer in spec.layers or ()}


def linear_layers(spec: Spec) -> list[str]:
    """Names of the ``linear`` layers of a pipeline spec, in order.

    >>> import tngraph
    >>> linear_layers(tngraph.load_spec("models/mlp.yaml"))
    ['fc1', 'fc2', 'fc3']
    """
    _spec_arg(spec)
    return [layer.name for layer in spec.layers or () if layer.type == "linear"]


def _input_shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    """One example's input shape of every layer of a pipeline."""
    shape = tuple(spec.input_shape or ())
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in summarize_layers(spec):
        shapes[layer.name] = shape
        shape = tuple(layer.shape)
    return shapes


def _check_layers(spec: Spec, layers: Sequence[str]) -> list[str]:
    if not spec.is_pipeline:
        raise TensorizeError(f"spec '{spec.name}' is a single tensor network, not a pipeline "
                             "of layers; only the linear layers of a pipeline can be tensorized",
                             "tensorize a spec with input_shape: and layers: (e.g. "
                             "models/mlp.yaml)")
    linear = linear_layers(spec)
    listing = ", ".join(linear) if linear else "none"
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not all(isinstance(n, str) for n in layers):
        raise TensorizeError(f"layers must be a list of layer names, got {layers!r}",
                             f"for example {linear[:1] or ['fc1']}; linear layers: {listing}")
    names = [n.strip() for n in layers if n and n.strip()]
    if not names:
        raise TensorizeError("no layer to tensorize was named",
                             f"name them with --layers NAME[,NAME]; linear layers: {listing}")
    index = _layer_index(spec)
    seen: list[str] = []
    for name in names:
        if name in seen:
            raise TensorizeError(f"layer '{name}' is named twice")
        layer = index.get(name)
        if layer is None:
            close = difflib.get_close_matches(name, linear, n=1, cutoff=0.5)
            raise TensorizeError(f"spec '{spec.name}' has no layer '{name}'",
                                 (f"did you mean '{close[0]}'? " if close else "")
                                 + f"linear layers: {listing}")
        if layer.type != "linear":
            what = ("a tensor network already" if layer.type == "network"
                    else f"a '{layer.type}' layer")
            raise TensorizeError(f"layer '{name}' is {what}, not a dense linear layer",
                                 f"only linear layers can be tensorized; linear layers: "
                                 f"{listing}")
        seen.append(name)
    return seen


def _shape_arg(value: Sequence[int] | None, what: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(n) for n in value)
        if any(isinstance(n, bool) or int(n) != n for n in value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise TensorizeError(f"{what} must be a list of positive integers, got {value!r}",
                             "for example 4,4,4,4") from None
    if not shape or any(n < 1 for n in shape):
        raise TensorizeError(f"{what} must be a non-empty list of positive integers, "
                             f"got {list(shape)}", "for example 4,4,4,4")
    return shape


def parse_shape(text: str | None, what: str = "shape") -> tuple[int, ...] | None:
    """``"4,4,4,4"`` (or ``4x4x4x4``) as a tuple of positive ints; ``None`` stays ``None``.

    >>> parse_shape("8,8,8,8")
    (8, 8, 8, 8)
    """
    if text is None:
        return None
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise TensorizeError(f"{what} {text!r} is not a list of integers",
                             f"write it as comma-separated factors, e.g. {what} 4,4,4,4") \
            from None
    if any(n < 1 for n in shape):
        raise TensorizeError(f"{what} {text!r}: factors must be positive")
    return shape


def _fmt(shape: Sequence[int]) -> str:
    return ",".join(map(str, shape))


def layer_shapes(name: str, in_features: int, out_features: int,
                 in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None,
                 cores: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ``(in_shape, out_shape)`` of one layer: given ones checked, missing ones chosen.

    With neither given, :func:`choose_shapes`; with one given, the other is split into as many
    factors by :func:`balanced_factors`. A factorisation whose product is not the layer's size,
    or shapes of different lengths, raise :class:`TensorizeError`.

    >>> layer_shapes("fc2", 256, 256, in_shape=[16, 16])
    ((16, 16), (16, 16))
    """
    ins, outs = _shape_arg(in_shape, "in_shape"), _shape_arg(out_shape, "out_shape")
    for shape, size, what, flag in ((ins, in_features, "input", "in"),
                                    (outs, out_features, "output", "out")):
        if shape is not None and math.prod(shape) != size:
            d = len(shape)
            raise TensorizeError(
                f"layer '{name}': {flag}_shape {_fmt(shape)} multiplies to {math.prod(shape)} "
                f"but the layer has {size} {what} features",
                f"factor {size} into {d} factors, e.g. --{flag}-shape "
                f"{_fmt(balanced_factors(size, d))}, or leave --{flag}-shape out to have it "
                "chosen")
    if ins is not None and outs is not None:
        if len(ins) != len(outs):
            raise TensorizeError(
                f"layer '{name}': in_shape {_fmt(ins)} has {len(ins)} factors but out_shape "
                f"{_fmt(outs)} has {len(outs)}",
                "a TT-matrix pairs in_shape[k] with out_shape[k]: give both the same number of "
                "factors (pad with 1s)")
        return ins, outs
    if ins is not None:
        return ins, tuple(reversed(balanced_factors(out_features, len(ins))))
    if outs is not None:
        return balanced_factors(in_features, len(outs)), outs
    return choose_shapes(in_features, out_features, cores)


def _ranks_for(name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
               rank: int | None) -> tuple[list[int] | None, list[str]]:
    """Fixed ranks ``min(rank, largest rank of the bond)`` and a note when some were clipped."""
    if rank is None or len(in_shape) == 1:
        return None, []
    paired = [i * o for i, o in zip(in_shape, out_shape)]
    bounds = max_ranks(paired)
    ranks = [min(rank, b) for b in bounds]
    notes = []
    clipped = [k + 1 for k, b in enumerate(bounds) if rank > b]
    if clipped:
        notes.append(f"{name}: rank {rank} clipped to {ranks} (bonds {_fmt(clipped)} allow at "
                     f"most {[bounds[k - 1] for k in clipped]} for paired modes "
                     f"{_fmt(paired)}); nothing is truncated there")
    return ranks, notes


def _check_rank_eps(rank: int | None, eps: float | None) -> None:
    if rank is None and eps is None:
        raise TensorizeError("give a TT-rank or an accuracy",
                             "--rank R (the same rank at every bond) or --eps E (relative "
                             "error ||W - W_tt|| <= E ||W|| per layer)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise TensorizeError(f"rank must be a positive integer, got {rank!r}",
                             "for example --rank 8")
    if eps is not None and (not isinstance(eps, (int, float)) or isinstance(eps, bool)
                            or not eps >= 0 or math.isinf(eps)):
        raise TensorizeError(f"eps must be a finite number >= 0, got {eps!r}",
                             "for example --eps 0.3 (30 % relative error per layer)")


def spec_yaml(spec: Spec) -> str:
    """A pipeline spec as YAML: its canonical raw form (:meth:`Spec.to_raw`), except that
    network layers made from a template are written as the template call (shorter, and it
    expands to the same network). What ``spec.yaml`` of a tensorized model holds.
    """
    raw = _spec_arg(spec).to_raw()
    for entry, layer in zip(raw.get("layers") or [], spec.layers or ()):
        if layer.network is not None and layer.template is not None:
            entry["network"] = dict(layer.template)
    return dump_yaml(raw)


def tensorize_spec(spec: Spec, state_dict: Mapping[str, torch.Tensor], layers: Sequence[str],
                   rank: int | None = None, eps: float | None = None,
                   shapes: Mapping[str, tuple[Sequence[int] | None, Sequence[int] | None]]
                   | None = None, *, cores: int | None = None,
                   cache_dir: str | Path | None = None) -> Tensorized:
    """Replace dense ``linear`` layers of a pipeline by ``tt_linear`` layers (TT-SVD of W).

    Parameters
    ----------
    spec
        A loaded pipeline spec (``input_shape`` + ``layers``).
    state_dict
        Its trained weights (``Pipeline.state_dict()`` or a ``model.safetensors``):
        ``layers.NAME.weight`` of shape ``(out_features, in_features)``, ``layers.NAME.bias``.
    layers
        Names of the ``linear`` layers to replace. Each must act on one-axis examples
        ``(in_features,)``.
    rank
        The TT-rank of every bond; clipped, with a note in the row, where a bond allows less
        (nothing is truncated at such a bond). With ``eps`` too: a cap on the ranks ``eps``
        picks.
    eps
        Relative accuracy per layer instead: the smallest ranks with
        ``||W - W_tt||_F <= eps ||W||_F`` (Oseledets' bound, :func:`tngraph.decompose.tt_svd`).
    shapes
        ``{name: (in_shape, out_shape)}``; a missing layer or a ``None`` entry is chosen by
        :func:`layer_shapes` / :func:`choose_shapes`.
    cores
        Number of cores of chosen factorisations (default: :func:`choose_shapes`'s rule).
    cache_dir
        Plan cache for the FLOP counts of the new layers.

    Returns
    -------
    Tensorized
        ``(spec, state_dict, rows)``: the new spec (named ``<name>_tt``, each replaced
        layer a ``network`` layer of the same name with a ``tt_linear`` template call, so its
        weights are ``layers.NAME.tensors.G0 ...`` and ``layers.NAME.bias``), the new weights
        (every other entry copied, in the dtype of the old weight), one :class:`LayerReport`
        per replaced layer. :func:`spec_yaml` writes the spec as YAML.

    Raises
    ------
    TensorizeError
        Unknown or non-linear layer names, a multi-axis input, missing weights, bad shapes or
        a bad rank / eps.

    Examples
    --------
    >>> import tngraph
    >>> spec = tngraph.load_spec("models/mlp.yaml", {"hidden": 16})
    >>> state = tngraph.compile(spec).state_dict()
    >>> new = tensorize_spec(spec, state, ["fc2"], eps=0.5)
    >>> new.rows[0].in_shape, new.rows[0].out_shape, new.rows[0].rel_error <= 0.5
    ((2, 2, 2, 2), (2, 2, 2, 2), True)
    """
    import yaml

    _check_rank_eps(rank, eps)
    names = _check_layers(_spec_arg(spec), layers)
    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) for k in state_dict):
        raise TensorizeError(f"state_dict must be a mapping of names to tensors, got "
                             f"{type(state_dict).__name__}"
                             + ("" if not isinstance(state_dict, Mapping) else
                                " with keys that are not names"),
                             "pass module.state_dict() or read_weights(model.safetensors)")
    if cache_dir is not None:
        _path_arg(cache_dir, "cache_dir")
    if shapes is not None and (not isinstance(shapes, Mapping) or not all(
            isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2
            for v in shapes.values())):
        raise TensorizeError(f"shapes must map layer names to (in_shape, out_shape) pairs, got "
                             f"{shapes!r}", "for example {'fc1': ([8, 8], [4, 4])}; use None "
                             "for a shape to choose")
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise TensorizeError(f"shapes given for layers that are not tensorized: "
                             f"{', '.join(unknown)}", f"tensorized layers: {', '.join(names)}")
    index = _layer_index(spec)
    in_shapes = _input_shapes(spec)
    new_state = {k: v for k, v in state_dict.items()
                 if not any(k.startswith(f"layers.{n}.") for n in names)}
    calls: dict[str, dict[str, Any]] = {}
    pending: list[dict[str, Any]] = []
    for name in names:
        layer = index[name]
        options = layer.options
        x_shape = in_shapes[name]
        if len(x_shape) != 1:
            raise TensorizeError(
                f"layer '{name}' acts on the last axis of examples of shape "
                f"{tuple(x_shape)}; a TT-layer reads the whole example",
                "only linear layers fed one-axis examples (after a flatten) can be tensorized")
        n_in, n_out = x_shape[0], int(options["out_features"])
        has_bias = bool(options.get("bias", True))
        weight = state_dict.get(f"layers.{name}.weight")
        if weight is None:
            raise TensorizeError(f"the weights have no 'layers.{name}.weight'",
                                 "give the model.safetensors written by tngraph train for "
                                 "this spec")
        weight = _weight_entry(weight, f"layers.{name}.weight")
        if tuple(weight.shape) != (n_out, n_in):
            raise TensorizeError(f"'layers.{name}.weight' has shape {tuple(weight.shape)} but "
                                 f"layer '{name}' needs ({n_out}, {n_in})",
                                 "the weights belong to another spec (or other --set values)")
        bias = state_dict.get(f"layers.{name}.bias") if has_bias else None
        if bias is not None:
            bias = _weight_entry(bias, f"layers.{name}.bias")
        if has_bias and (bias is None or bias.numel() != n_out):
            raise TensorizeError(f"the weights have no bias of {n_out} values for layer "
                                 f"'{name}' ('layers.{name}.bias')")
        ins, outs = layer_shapes(name, n_in, n_out, *(shapes.get(name) or (None, None)),
                                 cores=cores)
        fixed, notes = _ranks_for(name, ins, outs, rank)
        w64 = weight.detach().to(torch.float64)
        try:
            if eps is not None:
                cores_tt = tt_matrix(w64, ins, outs, eps=float(eps), max_rank=rank)
            else:
                cores_tt = tt_matrix(w64, ins, outs, ranks=fixed)
        except DecompositionError as exc:     # (not expected after the checks above)
            raise TensorizeError(f"layer '{name}': {exc.message}", exc.hint) from None
        norm = float(w64.norm())
        error = float((tt_matrix_to_dense(cores_tt) - w64).norm()) / norm if norm > 0 else 0.0
        ranks = tt_ranks(cores_tt)
        call: dict[str, Any] = {"template": "tt_linear", "in_shape": list(ins),
                                "out_shape": list(outs),
                                "ranks": ranks[0] if ranks and len(set(ranks)) == 1
                                else list(ranks),
                                "bias": has_bias}
        calls[name] = call
        dtype = weight.dtype if weight.is_floating_point() else torch.float32
        for k, core in enumerate(cores_tt):
            g = core
            if k == len(cores_tt) - 1:
                g = g[..., 0]
            if k == 0:
                g = g[0]
            new_state[f"layers.{name}.tensors.G{k}"] = g.to(dtype).contiguous()
        if has_bias:
            b = torch.as_tensor(bias).detach()
            new_state[f"layers.{name}.bias"] = b.reshape(outs).to(dtype).clone()
        pending.append({"name": name, "in_features": n_in, "out_features": n_out,
                        "in_shape": tuple(ins), "out_shape": tuple(outs), "ranks": ranks,
                        "params_before": n_in * n_out + (n_out if has_bias else 0),
                        "params_after": sum(c.numel() for c in cores_tt)
                        + (n_out if has_bias else 0),
                        "rel_error": error, "notes": tuple(notes)})

    raw = spec.to_raw()
    raw["name"] = f"{spec.name}_tt"
    summary = ", ".join(f"{n} as TT ranks {list(r['ranks'])}" for n, r in
                        zip(names, pending))
    raw["description"] = (f"{spec.description} " if spec.description else "") + \
        f"(tensorized by tngraph: {summary})"
    raw["layers"] = [
        {"type": "network", "name": entry["name"], "network": calls[entry["name"]]}
        if entry["name"] in calls else entry
        for entry in yaml.safe_load(spec_yaml(spec))["layers"]]
    new_spec = load_spec(dump_yaml(raw))

    before = _costs(spec, cache_dir)
    after = _costs(new_spec, cache_dir)
    rows = [LayerReport(flops_before=before[p["name"]], flops_after=after[p["name"]], **p)
            for p in pending]
    return Tensorized(new_spec, new_state, rows)


def _costs(spec: Spec, cache_dir: str | Path | None) -> dict[str, float]:
    """FLOPs per example of every layer, as the pipeline cost report counts them."""
    plans = {layer.name: plan_spec(spec.network_spec(layer.name), cache_dir=cache_dir)
             for layer in spec.layers or () if layer.network is not None}
    data = pipeline_report_data(spec, plans)
    return {row["name"]: float(row["flops"]) for row in data["layers"]}


# ---------------------------------------------------------------------------------------------
# models on disk, evaluation, output


@dataclass(frozen=True)
class TrainedModel:
    """A trained pipeline read from disk: its spec, weights and where they came from."""

    spec: Spec
    state_dict: dict[str, torch.Tensor]
    checkpoint: Path
    #: the run directory (``None`` for a spec file with a separate checkpoint)
    run_dir: Path | None = None
    #: the run's ``config.json`` ``train`` block (dataset, seed of its split), if any
    train_config: dict[str, Any] = field(default_factory=dict)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``model.safetensors`` (complex entries as complex tensors; a missing
    or damaged file is a user error)."""
    path = _path_arg(path, "the weights file")
    try:
        return read_run_weights(path)
    except TrainingError as exc:
        raise TensorizeError(str(exc), "give the model.safetensors written by tngraph train") \
            from None


def load_model(model: str | Path, checkpoint: str | Path | None = None,
               overrides: Mapping[str, Any] | None = None) -> TrainedModel:
    """Read a trained model: a run directory (``spec.yaml`` + ``model.safetensors``, as
    ``tngraph train`` writes), or a spec file with ``checkpoint``.

    ``checkpoint`` also overrides a run directory's ``model.safetensors``; ``overrides`` are
    ``--set`` values for a spec file.
    """
    path = _path_arg(model, "model")
    if checkpoint is not None:
        _path_arg(checkpoint, "checkpoint")
    run_dir: Path | None = None
    config: dict[str, Any] = {}
    if path.is_dir():
        spec_file = path / "spec.yaml"
        weights = Path(checkpoint) if checkpoint is not None else None
        spec_source: Path | str = spec_file
        if weights is None and spec_file.is_file() and (path / "model.safetensors").is_file():
            try:                            # the weights the run was tested with
                weights, spec_source = tested_weights(path)
            except TrainingError as exc:
                raise TensorizeError(str(exc), "restore the run's files") from None
        weights = weights or path / "model.safetensors"
        if not spec_file.is_file() or not weights.is_file():
            missing = [str(p.name) for p in (spec_file, weights) if not p.is_file()]
            raise TensorizeError(f"{path} is not a tngraph run directory: no "
                                 f"{' / '.join(missing)} there",
                                 "give a run directory written by tngraph train, or a spec "
                                 "file with --checkpoint FILE")
        spec = load_spec(spec_source, overrides)
        run_dir = path
        config = run_train_config(path)
    elif path.is_file():
        if checkpoint is None:
            raise TensorizeError(f"{path} is a spec file; its trained weights are needed too",
                                 "add --checkpoint RUN/model.safetensors, or give the run "
                                 "directory itself")
        spec = load_spec(path, overrides)
        weights = Path(checkpoint)
    else:
        raise TensorizeError(f"no run directory or spec file at {path}")
    return TrainedModel(spec, read_weights(weights), weights, run_dir, config)


def with_run_split(spec: Spec, train_config: Mapping[str, Any]) -> Spec:
    """``spec`` with the dataset and seed of the run its weights were trained in (``config.json``
    ``train`` block) in its ``train:`` block: fine-tuning then trains and tests on that run's
    split. (Another seed is another split, whose test examples the weights were partly
    trained on.)

    Examples
    --------
    >>> from tngraph.spec import load_spec
    >>> with_run_split(load_spec("models/mlp.yaml"), {"seed": 3}).train.seed   # doctest: +SKIP
    3
    """
    if not isinstance(train_config, Mapping):
        raise TensorizeError(f"train_config must be a mapping (a run's config.json 'train' "
                             f"block), got {type(train_config).__name__}")
    changes = {k: train_config[k] for k in ("data", "seed") if k in train_config}
    if not changes:
        return spec
    return spec.model_copy(update={"train": spec.train.model_copy(update=changes)})


def default_out_dir(model: TrainedModel) -> Path:
    """``<run>-tt`` beside the run directory (or the checkpoint's folder); ``<name>-tt``
    when the checkpoint lies in the current folder."""
    base = model.run_dir if model.run_dir is not None else model.checkpoint.parent
    if base.resolve() == Path.cwd().resolve():
        return Path(f"{model.spec.name}-tt")
    return base.with_name(base.name + "-tt")


def evaluate_state(spec: Spec, state_dict: Mapping[str, torch.Tensor], dataset: Any,
                   split: str = "test") -> dict[str, float]:
    """Compile ``spec``, load ``state_dict`` (every key, exact shapes) and return
    :func:`tngraph.train.evaluate` on ``split``: loss and accuracy, or MSE and R²."""
    module = compile_spec(spec)
    check_fit(module, dataset)
    _load_exact(module, state_dict)
    return evaluate(module, dataset, split)


def _load_exact(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [k for k in own if k in state_dict
             and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise TensorizeError(f"the weights do not fit '{module.spec.name}': missing "
                             f"{missing or 'none'}, unexpected {unexpected or 'none'}, shape "
                             f"differs for {wrong or 'none'}",
                             "give the weights this spec was trained with")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()})


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a Path, if it is a folder (or nothing) that holds no model yet."""
    out = _path_arg(out_dir, "out_dir")
    if out.exists() and not out.is_dir():
        raise TensorizeError(f"--out {out} is a file, not a folder")
    taken = [name for name in ("spec.yaml", "model.safetensors") if (out / name).exists()]
    if taken:
        raise TensorizeError(f"{out} already holds {' and '.join(taken)}",
                             "choose another --out, or remove that folder first")
    return out


def write_tensorized(result: Tensorized | tuple[Spec, Mapping[str, torch.Tensor],
                                                 Sequence[LayerReport]],
                     out_dir: str | Path,
                     metrics: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``spec.yaml``, ``model.safetensors`` (spec in its metadata, as
    :func:`tngraph.train.save_weights` writes it) and ``tensorize.json`` (the rows and
    ``metrics``) into ``out_dir``; refuses a folder that already holds a model."""
    spec, state_dict, rows = result
    out = check_out_dir(out_dir)
    module = compile_spec(spec)
    _load_exact(module, state_dict)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"spec": out / "spec.yaml", "weights": out / "model.safetensors",
             "report": out / "tensorize.json"}
    text = spec_yaml(spec)
    atomic_write(paths["spec"], text.encode())
    save_weights(module, paths["weights"])
    report = {"layers": [{**asdict(r), "compression": r.compression} for r in rows],
              "metrics": dict(metrics or {})}
    atomic_write(paths["report"], json.dumps(report, indent=2).encode())
    return paths


def _sci(x: float) -> str:
    return f"{x:,.0f}" if x < 1e6 else f"{x:.3g}"


def format_table(rows: Sequence[LayerReport], metrics: Mapping[str, Any] | None = None, *,
                 title: str = "tngraph tensorize", width: int = 120) -> str:
    """The per-layer table (rich, plain text): shapes, ranks, parameters of the dense layer
    and of the TT-layer, compression, relative weight error ``||W - W_tt||_F / ||W||_F``, FLOPs
    per example of both; then the metrics
    ``{"metric": "accuracy", "dataset": ..., "split": ..., "before": x, "after": y}`` if given.

    >>> row = LayerReport("fc2", 256, 256, (4, 4, 4, 4), (4, 4, 4, 4), (8, 8, 8), 65792, 2560,
    ...                   0.91, 131072, 14336)
    >>> print(format_table([row]).splitlines()[0])
    tngraph tensorize
    """
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE, title_justify="left")
    for col, justify in (("layer", "left"), ("in -> out", "left"), ("ranks", "left"),
                         ("params", "right"), ("TT params", "right"),
                         ("compression", "right"), ("rel. error", "right"),
                         ("FLOPs/ex", "right"), ("TT FLOPs/ex", "right")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(r.name, f"{'x'.join(map(str, r.in_shape))} -> "
                              f"{'x'.join(map(str, r.out_shape))}",
                      ",".join(map(str, r.ranks)) or "-", f"{r.params_before:,}",
                      f"{r.params_after:,}", f"{r.compression:.1f}x", f"{r.rel_error:.4f}",
                      _sci(r.flops_before), _sci(r.flops_after))
    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, color_system=None, highlight=False,
                      emoji=False)
    console.print(table)
    if metrics:
        console.print(f"{metrics['dataset']} {metrics['split']} {metrics['metric']}: "
                      f"{metrics['before']:.4f} before, {metrics['after']:.4f} after TT-SVD "
                      f"(no fine-tuning)")
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines())
