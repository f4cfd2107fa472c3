"""Decomposition speed: TT-SVD and TT-rounding against the dimensions, and the ``tt_linear``
layer against ``torch.nn.Linear`` and tensorly-torch's TT-matrix linear layer.

Part 1, ``tngraph.decompose`` (CPU, float32 and float64 side by side):

* ``tt_svd(A, eps=1e-6, max_rank=64)`` of tensors of shape ``n^d`` (2^10 .. 2^20 entries), a
  Gaussian random tensor (incompressible: the ranks hit the cap) and a smooth one,
  ``A = 1 / (1 + x_1 + ... + x_d)`` on a uniform grid of [0, 1]^d (low numerical ranks): time,
  largest rank, relative error ``||A - TT||_F / ||A||_F``;
* ``tt_round(tt_add(a, a), max_rank=r)`` -- a TT of ranks 2r rounded back to r -- against
  r, d and n, to show the ``O(d n r^3)`` cost (time ratios when r, d or n doubles), and against
  the only alternative without rounding, ``tt_svd(tt_to_dense(.), max_rank=r)``.

Part 2, a TT-matrix linear layer ``y = x W^T + b`` (CPU float32, forward under
``torch.no_grad`` and forward+backward of ``y.sum()``), every candidate holding the same
weights (outputs checked equal first):

* ``tngraph-net``  -- ``tngraph.compile(tt_linear_spec(cores))`` with ``plan.execution:
  network`` (the planned pairwise contraction, data included, every call);
* ``tngraph-auto`` -- the same with the default ``strategy: auto`` (times ``network`` and
  ``dense`` at the first call of each batch size and keeps the faster; under ``no_grad`` the
  dense weight is kept until a parameter changes);
* ``tltorch``      -- ``tltorch.FactorizedLinear(..., factorization='blocktt', rank=r)``
  (tensorly-torch's TT-matrix layer, its default ``implementation='factorized'``: one einsum
  over x and the cores);
* ``tltorch-rec``  -- the same layer with ``implementation='reconstructed'`` (rebuild W, then
  ``F.linear``);
* ``Linear``       -- ``torch.nn.Linear`` holding the dense W.

tensorly-torch is optional (``pip install tngraph[bench]``); without it its rows say
"tltorch not installed: skipped".

Timing: warm-up, then candidates run round-robin, median over rounds (benchmarks/common.py).
Run ``python benchmarks/decompose.py`` (full, several minutes) or ``--quick`` (a smoke test).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from common import (  # noqa: E402
    Timing,
    fmt_ms,
    fmt_ratio,
    interleaved,
    print_environment,
    progress,
    set_threads,
    show,
    verdict,
)

from tngraph.decompose import (  # noqa: E402
    max_ranks,
    tt_add,
    tt_linear_spec,
    tt_linear_state_dict,
    tt_matrix_to_dense,
    tt_norm,
    tt_ranks,
    tt_round,
    tt_svd,
    tt_to_dense,
)

#: TT-SVD accuracy and rank cap of part 1
EPS = 1e-6
MAX_RANK = 64
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the compiled tt_linear forward should be at least as fast as tltorch's (ratio <= 1.0)
LINEAR_TARGET = 1.0


def _rounds(quick: bool, full: int) -> dict[str, Any]:
    """Options of :func:`common.interleaved` for a part: fewer and shorter samples in quick mode."""
    return {"rounds": 3 if quick else full, "warmup": 1, "target": 0.002 if quick else 0.02}


def _fmt_err(x: float) -> str:
    return f"{x:.1e}"


# ---------------------------------------------------------------------------------------------
# part 1a: TT-SVD


def smooth_tensor(n: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """``1 / (1 + x_1 + ... + x_d)`` on the uniform grid ``linspace(0, 1, n)^d``."""
    x = torch.linspace(0, 1, n, dtype=torch.float64)
    total = torch.zeros([n] * d, dtype=torch.float64)
    for k in range(d):
        total = total + x.reshape([1] * k + [n] + [1] * (d - k - 1))
    return (1 / (1 + total)).to(dtype)


def random_tensor(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A standard Gaussian tensor of shape ``n^d``."""
    return torch.randn([n] * d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def relative_error(cores: Sequence[torch.Tensor], tensor: torch.Tensor) -> float:
    """``||tensor - tt_to_dense(cores)||_F / ||tensor||_F``, computed in float64."""
    want = tensor.to(torch.float64)
    return float((tt_to_dense(cores).to(torch.float64) - want).norm() / want.norm())


def svd_grid(quick: bool) -> list[tuple[int, int]]:
    """``(n, d)`` shapes of part 1a: 2^10, ~2^15 and 2^20 entries per mode size ``n``."""
    if quick:
        return [(2, 10), (4, 5), (32, 2)]
    return [(2, 10), (2, 15), (2, 20), (4, 5), (4, 8), (4, 10), (16, 3), (16, 4), (16, 5),
            (32, 2), (32, 3), (32, 4)]


def svd_section(quick: bool) -> list[bool]:
    """TT-SVD time, ranks and error against ``(n, d)``; returns whether the error bound held
    in float64 / float32 where the ranks were not capped."""
    opts = _rounds(quick, 3)
    rows: list[list[str]] = []
    bound_ok = {name: [True, 0] for name in DTYPES}
    for n, d in svd_grid(quick):
        progress(f"tt_svd {n}^{d}")
        data = {(kind, name): (random_tensor(n, d, dt) if kind == "random"
                               else smooth_tensor(n, d, dt))
                for kind in ("random", "smooth") for name, dt in DTYPES.items()}
        timings = interleaved({f"{kind} {name}": (lambda a=a: tt_svd(a, eps=EPS,
                                                                     max_rank=MAX_RANK))
                               for (kind, name), a in data.items()}, **opts)
        for kind in ("random", "smooth"):
            row = [f"{n}^{d}", f"2^{math.log2(n ** d):.0f}", kind]
            for name in DTYPES:
                a = data[kind, name]
                cores = tt_svd(a, eps=EPS, max_rank=MAX_RANK)
                r, err = max(tt_ranks(cores), default=1), relative_error(cores, a)
                capped = r >= MAX_RANK
                if not capped:
                    bound_ok[name][0] &= err <= EPS
                    bound_ok[name][1] += 1
                row += [fmt_ms(timings[f"{kind} {name}"].median), str(r) + ("*" if capped else ""),
                        _fmt_err(err)]
            row.append(fmt_ratio(timings[f"{kind} float64"].median
                                 / timings[f"{kind} float32"].median))
            rows.append(row)
    show(f"TT-SVD: tt_svd(A, eps={EPS:g}, max_rank={MAX_RANK}) of shape n^d, ms per call "
         f"(median of {opts['rounds']} interleaved rounds)",
         ["n^d", "entries", "data", "f32 ms", "f32 rank", "f32 rel err", "f64 ms", "f64 rank",
          "f64 rel err", "f64/f32"], rows,
         ["random = standard Gaussian (incompressible: every rank hits the cap, the error is "
          "what max_rank allows);",
          "smooth = 1/(1 + x_1 + ... + x_d) on linspace(0, 1, n)^d. rank = largest TT-rank; "
          "* = capped at max_rank;",
          "rel err = ||A - TT||_F / ||A||_F in float64. The bound rel err <= eps holds only "
          "where no rank is capped."])
    oks = []
    for name, (ok, count) in bound_ok.items():
        print(f"{name}: rel err <= eps={EPS:g} wherever no rank was capped ({count} rows): "
              f"{verdict(ok and count > 0)}")
        oks.append(ok and count > 0)
    print()
    return oks


# ---------------------------------------------------------------------------------------------
# part 1b: TT-rounding


def random_tt(n: int, d: int, r: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """A random TT of shape ``n^d``, ranks ``min(r, max_ranks)`` (scaled to norm ~ 1)."""
    gen = torch.Generator().manual_seed(seed)
    ranks = [1, *(min(r, m) for m in max_ranks([n] * d)), 1]
    return [torch.randn(ranks[k], n, ranks[k + 1], generator=gen, dtype=dtype)
            / math.sqrt(ranks[k] * n) for k in range(d)]


def _scaled(cores: list[torch.Tensor], factor: float) -> list[torch.Tensor]:
    return [cores[0] * factor, *cores[1:]]


def round_error(a: list[torch.Tensor], rounded: list[torch.Tensor]) -> float:
    """``||round(a + a) - 2a||_F / ||2a||_F``, in TT arithmetic (no dense tensor)."""
    two_a = _scaled(a, 2.0)
    diff = tt_add(rounded, _scaled(a, -2.0))
    return float(tt_norm(diff) / tt_norm(two_a))


def _doubling(times: Sequence[float]) -> list[str]:
    return ["-"] + [fmt_ratio(b / a) for a, b in zip(times, times[1:])]


def _round_fn(cores: list[torch.Tensor], r: int) -> Callable[[], Any]:
    return lambda: tt_round(cores, max_rank=r)


def round_section(quick: bool) -> list[bool]:
    """TT-rounding against r, d and n, and against dense re-decomposition."""
    opts = _rounds(quick, 5)
    oks: list[bool] = []
    # -- against r -------------------------------------------------------------------------
    d, n = (8, 4) if quick else (16, 4)
    rs = (4, 8, 16) if quick else (4, 8, 16, 32, 64, 128, 256)
    progress(f"tt_round against r: d={d} n={n} r={rs}")
    base = {(r, name): random_tt(n, d, r, dt) for r in rs for name, dt in DTYPES.items()}
    inputs = {key: tt_add(a, a) for key, a in base.items()}      # ranks 2r, exact rank r
    timings = interleaved({f"r{r} {name}": _round_fn(b, r) for (r, name), b in inputs.items()},
                          **opts)
    med = {key: timings[f"r{key[0]} {key[1]}"].median for key in inputs}
    rows = []
    for name in DTYPES:
        ratios = _doubling([med[r, name] for r in rs])
        for r, ratio in zip(rs, ratios):
            a = base[r, name]
            rounded = tt_round(inputs[r, name], max_rank=r)
            cost = sum(c.shape[0] * c.shape[1] * c.shape[2] ** 2 for c in inputs[r, name])
            rows.append([name, str(r), str(max(tt_ranks(inputs[r, name]))),
                         str(max(tt_ranks(rounded))), fmt_ms(med[r, name]),
                         f"{timings[f'r{r} {name}'].spread * 100:.0f}%", ratio,
                         f"{med[r, name] / cost * 1e9:.2f}", _fmt_err(round_error(a, rounded))])
    last = med[rs[-1], "float64"] / med[rs[-2], "float64"]
    exponent = math.log2(last)
    show(f"TT-rounding against the rank: tt_round(tt_add(a, a), max_rank=r), d={d}, n={n} "
         f"(median of {opts['rounds']} interleaved rounds)",
         ["dtype", "r", "in rank", "out rank", "ms", "iqr", "x per 2r", "ns/unit", "rel err"],
         rows,
         ["in rank = 2r (a + a); x per 2r = time ratio to the previous row (the FLOPs grow "
          "8x per doubling once the O(r^3) QR/SVD dominate;",
          "  the time grows less while LAPACK's speed still rises with the matrix size: "
          "ns/unit = time / sum_k n r_k r_{k+1}^2 falls until then);",
          "rel err = ||round - 2a|| / ||2a|| (TT arithmetic).",
          "the ranks of a are min(r, max_ranks(n^d)); out rank < r in float32 means the "
          "numerical rank (rtol ~ rows * eps32) cut it."])
    print(f"last doubling of r ({rs[-2]} -> {rs[-1]}), float64: {fmt_ratio(last)} = "
          f"r^{exponent:.1f} (cubic: 8x = r^3)")
    print()
    # -- against d and n ---------------------------------------------------------------------
    r = 8 if quick else 32
    ds = (4, 8) if quick else (8, 16, 32, 64)
    ns = (2, 4) if quick else (2, 4, 8, 16)
    series = [("d", dd, n, dd) for dd in ds] + [("n", 16 if not quick else 8, nn_, nn_)
                                                for nn_ in ns]
    progress(f"tt_round against d={ds} and n={ns}, r={r}")
    cases = {(axis, value): tt_add(a, a) for axis, dd, nn_, value in series
             for a in [random_tt(nn_, dd, r, torch.float64)]}
    timings = interleaved({f"{axis}={value}": _round_fn(b, r) for (axis, value), b in
                           cases.items()}, **opts)
    rows = []
    for axis, values in (("d", ds), ("n", ns)):
        times = [timings[f"{axis}={v}"].median for v in values]
        for (_, dd, nn_, value), ratio in zip([s for s in series if s[0] == axis],
                                              _doubling(times)):
            b = cases[axis, value]
            cost = sum(c.shape[0] * c.shape[1] * c.shape[2] ** 2 for c in b)
            t = timings[f"{axis}={value}"]
            rows.append([axis, str(dd), str(nn_), str(r), fmt_ms(t.median),
                         f"{t.spread * 100:.0f}%", ratio, f"{t.median / cost * 1e9:.2f}"])
    show(f"TT-rounding against d and n: tt_round(tt_add(a, a), max_rank={r}), float64",
         ["doubling", "d", "n", "r", "ms", "iqr", "x per 2x", "ns/unit"], rows,
         ["x per 2x = time ratio to the previous row of the same series (linear in d and n: "
          "2x); small n caps the ranks near the ends."])
    # -- against dense re-decomposition -------------------------------------------------------
    d, n = (8, 4) if quick else (10, 4)
    rs = (4, 8) if quick else (4, 8, 16, 32)
    progress(f"tt_round against tt_svd(tt_to_dense(.)), d={d} n={n}")
    rows = []
    faster = True
    for r in rs:
        a = random_tt(n, d, r, torch.float64)
        b = tt_add(a, a)
        t = interleaved({"round": _round_fn(b, r),
                         "dense": lambda b=b, r=r: tt_svd(tt_to_dense(b), max_rank=r)}, **opts)
        err_round = round_error(a, tt_round(b, max_rank=r))
        err_dense = round_error(a, tt_svd(tt_to_dense(b), max_rank=r))
        faster &= t["round"].median < t["dense"].median
        rows.append([f"{n}^{d}", str(r), fmt_ms(t["round"].median), fmt_ms(t["dense"].median),
                     fmt_ratio(t["dense"].median / t["round"].median), _fmt_err(err_round),
                     _fmt_err(err_dense)])
    big_d, big_n, r = 16, 4, rs[-1]
    entries = big_n ** big_d
    a = random_tt(big_n, big_d, r, torch.float64)
    b = tt_add(a, a)
    t = interleaved({"round": _round_fn(b, r)}, **opts)["round"]
    rows.append([f"{big_n}^{big_d}", str(r), fmt_ms(t.median), "not feasible", "-",
                 _fmt_err(round_error(a, tt_round(b, max_rank=r))), "-"])
    show(f"TT-rounding against re-decomposing the dense tensor (ranks 2r -> r), float64, "
         f"median of {opts['rounds']} interleaved rounds",
         ["n^d", "r", "tt_round ms", "tt_to_dense+tt_svd ms", "dense/round", "round err",
          "dense err"], rows,
         [f"{big_n}^{big_d} = {entries:.2e} entries ({entries * 8 / 2 ** 30:.0f} GiB in "
          "float64): the dense route cannot even be formed; rounding costs O(d n r^3), not "
          "O(n^d)."])
    print(f"tt_round faster than dense re-decomposition (every r): {verdict(faster)}")
    print()
    oks.append(faster)
    return oks


# ---------------------------------------------------------------------------------------------
# part 2: tt_linear against nn.Linear and tensorly-torch


@dataclass(frozen=True)
class LinearConfig:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    rank: int
    batch: int

    @property
    def label(self) -> str:
        return (f"{math.prod(self.in_shape)}->{math.prod(self.out_shape)} "
                f"{list(self.in_shape)} r{self.rank} b{self.batch}")


def linear_configs(quick: bool) -> list[LinearConfig]:
    """1024 -> 1024 as [4,8,8,4] and 4096 -> 4096 as [8,8,8,8], ranks 4/8/16, batch 64/256."""
    if quick:
        return [LinearConfig((4, 8, 8, 4), (4, 8, 8, 4), 4, 64)]
    return [LinearConfig(shape, shape, r, b)
            for shape in ((4, 8, 8, 4), (8, 8, 8, 8)) for r in (4, 8, 16) for b in (64, 256)]


def random_tt_matrix(cfg: LinearConfig, seed: int = 0) -> list[torch.Tensor]:
    """TT-matrix cores ``(r_k, n_in_k, n_out_k, r_{k+1})``, float32, scaled so that the entries
    of W have variance ~ 1/fan_in (as the ``tt_linear`` template initialises them)."""
    gen = torch.Generator().manual_seed(seed)
    d = len(cfg.in_shape)
    ranks = [1] + [cfg.rank] * (d - 1) + [1]
    fan_in = math.prod(cfg.in_shape)
    return [torch.randn(ranks[k], i, o, ranks[k + 1], generator=gen)
            * ((1.0 / fan_in) ** (1.0 / (2 * d)) / math.sqrt(ranks[k]))
            for k, (i, o) in enumerate(zip(cfg.in_shape, cfg.out_shape))]


def tngraph_layer(cores: list[torch.Tensor], bias: torch.Tensor, batch: int,
                  strategy: str) -> nn.Module:
    """``tngraph.compile(tt_linear_spec(cores))`` loaded with ``cores`` and ``bias``."""
    import tngraph

    text = tt_linear_spec(cores, extra={"plan": {"batch_size": batch, "strategy": strategy}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = tngraph.compile(text, seed=0)
    module.load_state_dict(tt_linear_state_dict(cores, bias))
    return module


def import_tltorch() -> tuple[Any | None, str]:
    """``(tltorch module, version text)``, or ``(None, reason)`` when it cannot be imported."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorly
            import tltorch
    except ImportError as exc:
        return None, f"tltorch not installed: skipped ({exc})"
    return tltorch, (f"tltorch {getattr(tltorch, '__version__', '?')}  "
                     f"tensorly {getattr(tensorly, '__version__', '?')}")


def tltorch_layer(tltorch: Any, cores: list[torch.Tensor], bias: torch.Tensor,
                  implementation: str) -> nn.Module:
    """``tltorch.FactorizedLinear`` (BlockTT = TT-matrix) holding the same cores and bias.

    tltorch's factors are ``(r_k, n_out_k, n_in_k, r_{k+1})`` (ours: in before out). The rank
    is passed as one int, as a user would; its TT-ranks are checked equal to ours.
    """
    ins = tuple(int(c.shape[1]) for c in cores)
    outs = tuple(int(c.shape[2]) for c in cores)
    rank = max(tt_ranks(cores))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = tltorch.FactorizedLinear(ins, outs, bias=True, factorization="blocktt",
                                         rank=rank, implementation=implementation)
    got = tuple(int(r) for r in layer.weight.rank)
    want = (1, *tt_ranks(cores), 1)
    if got != want:
        raise AssertionError(f"tltorch TT-ranks {got} differ from tngraph's {want}")
    with torch.no_grad():
        for factor, core in zip(layer.weight.factors, cores):
            factor.copy_(core.permute(0, 2, 1, 3))
        layer.bias.copy_(bias)
    return layer


def dense_layer(cores: list[torch.Tensor], bias: torch.Tensor) -> nn.Linear:
    """``nn.Linear`` holding the dense W of the TT-matrix."""
    weight = tt_matrix_to_dense(cores)
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def _check_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = want.abs().max().item() or 1.0
    err = (got.reshape(want.shape) - want).abs().max().item() / scale
    if not err <= rtol:
        raise AssertionError(f"{name}: output differs from tngraph's (max rel error {err:.2e})")


def _forward_fn(layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return layer(x)
    return run


def _train_fn(layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    params = list(layer.parameters())

    def run() -> Any:
        for p in params:
            p.grad = None
        layer(x).sum().backward()
    return run


def adam(params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` at its fastest documented setting on this torch: ``fused=True``
    (CPU support since torch 2.4), else ``foreach=True``. Every candidate gets the same."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=1e-4, foreach=True)


def _adam_setting() -> str:
    return "fused" if adam([torch.zeros(1, requires_grad=True)]).defaults.get("fused") \
        else "foreach"


def _step_fn(layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """One training step as a user's loop runs it: ``zero_grad``, forward, backward and a
    plain Adam step over ``layer.parameters()`` (:func:`adam`)."""
    optimizer = adam(layer.parameters())

    def run() -> Any:
        optimizer.zero_grad(set_to_none=True)
        layer(x).sum().backward()
        optimizer.step()
    return run


def _ratio(a: Timing | None, b: Timing | None) -> float:
    return a.median / b.median if a is not None and b is not None else math.nan


def linear_section(quick: bool) -> tuple[list[list[str]], dict[str, list[bool]]]:
    """Per-configuration tables; returns the summary rows and the verdicts per mode."""
    tltorch, tl_info = import_tltorch()
    print(tl_info)
    print()
    opts = _rounds(quick, 9)
    summary: list[list[str]] = []
    verdicts: dict[str, list[bool]] = {"fwd auto": [], "fwd net": [], "fwd+bwd auto": [],
                                       "step auto": [], "step Linear": [],
                                       "fwd+bwd Linear": []}
    for cfg in linear_configs(quick):
        progress(f"tt_linear {cfg.label}")
        cores = random_tt_matrix(cfg)
        n_out = math.prod(cfg.out_shape)
        bias = torch.randn(n_out, generator=torch.Generator().manual_seed(1)) * 0.1
        layers: dict[str, nn.Module | None] = {
            "tngraph-net": tngraph_layer(cores, bias, cfg.batch, "network"),
            "tngraph-auto": tngraph_layer(cores, bias, cfg.batch, "auto"),
            "tltorch": None if tltorch is None else tltorch_layer(tltorch, cores, bias,
                                                                  "factorized"),
            "tltorch-rec": None if tltorch is None else tltorch_layer(tltorch, cores, bias,
                                                                      "reconstructed"),
            "Linear": dense_layer(cores, bias),
        }
        x = torch.randn(cfg.batch, math.prod(cfg.in_shape),
                        generator=torch.Generator().manual_seed(2))
        live = {name: layer for name, layer in layers.items() if layer is not None}
        with torch.no_grad():
            want = live["tngraph-net"](x)
            for name, layer in live.items():
                _check_close(name, layer(x), want)
        fwd = interleaved({n: _forward_fn(m, x) for n, m in live.items()}, **opts)
        train = interleaved({n: _train_fn(m, x) for n, m in live.items()}, **opts)
        step = interleaved({n: _step_fn(m, x) for n, m in live.items()}, **opts)
        base_f, base_t, base_s = fwd.get("tltorch"), train.get("tltorch"), step.get("tltorch")
        # the TT-layer's forward FLOPs against nn.Linear's (2 * batch * in * out)
        fewer_flops = (layers["tngraph-auto"].plan.executed().flops  # type: ignore[union-attr]
                       < 2 * cfg.batch * math.prod(cfg.in_shape) * n_out)
        rows = []
        for name, layer in layers.items():
            if layer is None:
                rows.append([name, "-", "skipped", "", "", "skipped", "", "", "skipped", "",
                             ""])
                continue
            params = sum(p.numel() for p in layer.parameters())
            rows.append([name, f"{params:,}", fmt_ms(fwd[name].median),
                         f"{fwd[name].spread * 100:.0f}%", fmt_ratio(_ratio(fwd[name], base_f)),
                         fmt_ms(train[name].median), f"{train[name].spread * 100:.0f}%",
                         fmt_ratio(_ratio(train[name], base_t)), fmt_ms(step[name].median),
                         f"{step[name].spread * 100:.0f}%",
                         fmt_ratio(_ratio(step[name], base_s))])
        chosen = getattr(layers["tngraph-auto"], "execution", "?")
        ranks = tt_ranks(cores)
        notes = [] if tltorch is not None else [tl_info]
        notes += [f"TT ranks {list(ranks)} for every TT candidate (tltorch checked equal); "
                 f"params include the bias ({n_out}).",
                 f"tngraph-auto chose: {chosen} (one choice per module, from the plan's cost "
                 "model, for training and inference); x/tltorch = ratio to tltorch's time "
                 "(< 1: faster than tltorch).",
                 "step: zero_grad + forward + backward + torch.optim.Adam step over "
                 f"parameters() ({_adam_setting()}, the same for every candidate)."]
        show(f"tt_linear {cfg.label}: ms per call (median of {opts['rounds']} interleaved "
             "rounds), CPU float32",
             ["candidate", "params", "fwd ms", "iqr", "x/tltorch", "fwd+bwd ms", "iqr",
              "x/tltorch", "step ms", "iqr", "x/tltorch"], rows, notes)
        for mode, ts in (("fwd", fwd), ("fwd+bwd", train), ("step", step)):
            tl_best = min((ts[n] for n in ("tltorch", "tltorch-rec") if n in ts),
                          key=lambda t: t.median, default=None)
            r_net = _ratio(ts["tngraph-net"], ts.get("tltorch"))
            r_auto = _ratio(ts["tngraph-auto"], tl_best)
            ok = "-" if tl_best is None else verdict(r_auto <= LINEAR_TARGET)
            if tl_best is not None:
                verdicts[f"{mode} auto"].append(r_auto <= LINEAR_TARGET)
                if mode == "fwd":
                    verdicts["fwd net"].append(r_net <= LINEAR_TARGET)
            r_linear = _ratio(ts["tngraph-auto"], ts["Linear"])
            if mode != "fwd" and fewer_flops:
                verdicts[f"{mode} Linear"].append(r_linear <= LINEAR_TARGET)
            summary.append([
                cfg.label, mode, fmt_ms(ts["tngraph-net"].median),
                fmt_ms(ts["tngraph-auto"].median),
                fmt_ms(ts["tltorch"].median) if "tltorch" in ts else "skipped",
                fmt_ms(ts["tltorch-rec"].median) if "tltorch-rec" in ts else "skipped",
                fmt_ms(ts["Linear"].median), fmt_ratio(r_net), fmt_ratio(r_auto), ok,
                fmt_ratio(r_linear) + ("" if fewer_flops else " (more FLOPs)")])
    return summary, verdicts


def linear_summary(summary: list[list[str]], verdicts: dict[str, list[bool]]) -> None:
    show("tt_linear summary: ms per call; ratios < 1 mean tngraph is faster",
         ["layer", "mode", "tngraph-net", "tngraph-auto", "tltorch", "tltorch-rec", "Linear",
          "net/tltorch", "auto/best-tl", f"<= {LINEAR_TARGET}", "auto/Linear"], summary,
         ["net/tltorch: the planned contraction against tltorch's default 'factorized' "
          "einsum (both contract x with the cores every call);",
          "auto/best-tl: tngraph's default strategy against the faster of tltorch's two "
          "implementations (the target, forward rows);",
          "under no_grad 'auto' may keep the dense weight between calls (one matmul, like "
          "nn.Linear); tltorch-rec rebuilds W every call;",
          "step: a whole training step (zero_grad, forward, backward, Adam step); auto/Linear "
          "marks where the TT-layer does more FLOPs than nn.Linear (outside the target)."])
    labels = {"fwd auto": "forward, tngraph (strategy auto) <= the faster tltorch",
              "fwd net": "forward, tngraph (strategy network) <= tltorch 'factorized'",
              "fwd+bwd auto": "forward+backward, tngraph (auto) <= the faster tltorch",
              "step auto": "training step, tngraph (auto) <= the faster tltorch",
              "step Linear": "training step, tngraph (auto) <= nn.Linear where the TT-layer "
                             "does fewer FLOPs",
              "fwd+bwd Linear": "forward+backward alone, tngraph (auto) <= nn.Linear where "
                                "the TT-layer does fewer FLOPs (for information)"}
    for key, label in labels.items():
        oks = verdicts[key]
        if not oks:
            print(f"{label}: {'tltorch not installed: ' if 'tltorch' in label else ''}"
                  "skipped")
        else:
            print(f"{label}: {verdict(all(oks))} ({sum(oks)}/{len(oks)} configurations)")
    print()


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few rounds (a smoke test, < 20 s)")
    parser.add_argument("--only", choices=("svd", "round", "linear"), default=None,
                        help="run one part only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print_environment("tngraph decompose" + (" (--quick)" if args.quick else ""))
    start = time.perf_counter()
    if args.only in (None, "svd"):
        svd_section(args.quick)
    if args.only in (None, "round"):
        round_section(args.quick)
    if args.only in (None, "linear"):
        summary, verdicts = linear_section(args.quick)
        linear_summary(summary, verdicts)
    print(f"total {time.perf_counter() - start:.0f} s (exit status 0: this is a report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
