"""Execution speed: compiled tngraph modules against hand-written and library baselines.

Part 1, TT-linear layers (``y = x W^T + b`` with W a TT-matrix), forward and forward+backward,
all candidates fed the same input and holding the same weights (outputs checked equal first):

* ``tngraph``   -- ``tngraph.compile`` of the ``tt_linear`` template;
* ``dense``     -- ``torch.nn.Linear`` with the full weight matrix;
* ``einsum``    -- one ``torch.einsum`` over x and all cores (torch orders it with opt_einsum);
* ``cotengra``  -- ``cotengra.array_contract_expression`` with a precomputed ``auto-hq`` tree;
* ``rebuild-W`` -- rebuild W from the cores each call, then one ``F.linear`` (x @ W.T).

Part 2, the 64-site MPS classifier (feature map [1, x], 10 labels at site 32), batch 64 and
256: inference and training (forward + backward + Adam step) samples/s of the compiled module
against a hand-written structure-aware reference (:class:`MPSReference`), a TorchMPS-style
sequential contraction (:class:`SequentialMPS`), and TensorKrowch's ``MPSLayer`` when
``tensorkrowch`` is installed.

Timing: warm-up, then candidates run round-robin, median over rounds (benchmarks/common.py).
Run ``python benchmarks/execution.py`` (full) or ``--quick`` (a smoke test, under a minute).
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
import torch.nn.functional as F
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from common import (  # noqa: E402
    Timing,
    fmt_ms,
    fmt_rate,
    fmt_ratio,
    interleaved,
    matmul_peak,
    print_environment,
    progress,
    set_threads,
    show,
    verdict,
)

#: the compiled MPS classifier should be at least as fast as the hand-written reference
#: the 64-site classifier's targets, tngraph / reference samples/s: inference and training
MPS_INFER_TARGET = 1.2
MPS_TRAIN_TARGET = 1.1

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _equation(inputs: Sequence[Sequence[str]], output: Sequence[str]) -> str:
    letters: dict[str, str] = {}
    for i in [*(i for t in inputs for i in t), *output]:
        letters.setdefault(i, _LETTERS[len(letters)])
    return (",".join("".join(letters[i] for i in t) for t in inputs) + "->"
            + "".join(letters[i] for i in output))


def _compile(network: dict[str, Any], plan: dict[str, Any], name: str,
             **plan_options: Any) -> Any:
    import tngraph

    text = yaml.safe_dump({"tngraph": 1, "name": name, "network": network, "plan": plan},
                          sort_keys=False, default_flow_style=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tngraph.compile(text, seed=0, **plan_options)


def _check_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = want.abs().max().item() or 1.0
    err = (got - want).abs().max().item() / scale
    if not err <= rtol:
        raise AssertionError(f"{name}: output differs from tngraph's (max rel error {err:.2e})")


# ---------------------------------------------------------------------------------------------
# part 1: TT-linear


@dataclass(frozen=True)
class TTConfig:
    label: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    rank: int
    batch: int


def tt_configs() -> list[TTConfig]:
    return [
        TTConfig("4096->16 (8^4->2^4) r8 b256", (8, 8, 8, 8), (2, 2, 2, 2), 8, 256),
        TTConfig("1024->1024 ([4,8,8,4]) r8 b512", (4, 8, 8, 4), (4, 8, 8, 4), 8, 512),
        TTConfig("1024->1024 ([4,8,8,4]) r32 b512", (4, 8, 8, 4), (4, 8, 8, 4), 32, 512),
    ]


def tt_indices(d: int) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """Index names of [x, G0, ..., G{d-1}] (cores' legs l, i, o, r as in the template) and of
    the output (batch, o0, ..., o{d-1})."""
    inputs: list[tuple[str, ...]] = [("b", *(f"i{k}" for k in range(d)))]
    for k in range(d):
        legs = ((f"r{k - 1}",) if k > 0 else ()) + (f"i{k}", f"o{k}")
        legs += (f"r{k}",) if k < d - 1 else ()
        inputs.append(legs)
    return inputs, ("b", *(f"o{k}" for k in range(d)))


class TTBaselines:
    """Forward functions of the baselines, sharing the compiled module's cores and bias."""

    def __init__(self, module: Any, cfg: TTConfig):
        import cotengra as ctg

        d = len(cfg.in_shape)
        self.cfg = cfg
        self.cores = [module.tensors[f"G{k}"] for k in range(d)]
        self.bias = module.bias.reshape(-1)
        inputs, output = tt_indices(d)
        self.einsum_eq = _equation(inputs, output)
        core_out = [i for k in range(d) for i in (f"o{k}",)] + [f"i{k}" for k in range(d)]
        self.rebuild_eq = _equation(inputs[1:], core_out)
        shapes = [(cfg.batch, *cfg.in_shape)] + [tuple(c.shape) for c in self.cores]
        sizes = {i: n for t, s in zip(inputs, shapes) for i, n in zip(t, s)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ctg.array_contract_tree(inputs, output, sizes, optimize="auto-hq")
            self.expression = ctg.array_contract_expression(inputs, output, shapes=shapes,
                                                            optimize=tree)
        self.n_in, self.n_out = math.prod(cfg.in_shape), math.prod(cfg.out_shape)
        with torch.no_grad():
            weight = self.rebuild_weight()
        self.dense = nn.Linear(self.n_in, self.n_out)
        with torch.no_grad():
            self.dense.weight.copy_(weight)
            self.dense.bias.copy_(self.bias)

    def rebuild_weight(self) -> torch.Tensor:
        return torch.einsum(self.rebuild_eq, *self.cores).reshape(self.n_out, self.n_in)

    def einsum(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(x.shape[0], *self.cfg.in_shape)
        return torch.einsum(self.einsum_eq, xs, *self.cores).reshape(x.shape[0], -1) + self.bias

    def cotengra(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.reshape(x.shape[0], *self.cfg.in_shape)
        return self.expression(xs, *self.cores).reshape(x.shape[0], -1) + self.bias

    def rebuild(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rebuild_weight(), self.bias)

    def candidates(self, module: Any) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor],
                                                         list[torch.Tensor]]]:
        shared = [*self.cores, module.bias]
        return {
            "tngraph": (module, list(module.parameters())),
            "dense": (self.dense, list(self.dense.parameters())),
            "einsum": (self.einsum, shared),
            "cotengra": (self.cotengra, shared),
            "rebuild-W": (self.rebuild, shared),
        }


def _forward_fn(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return fn(x)
    return run


def _train_fn(fn: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
              x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        for p in params:
            p.grad = None
        fn(x).sum().backward()
    return run


def _peer_rows(timings: dict[str, dict[str, Timing]]) -> list[list[str]]:
    """Rows per candidate: ms and ratio to the best peer (tngraph excluded from 'peer')."""
    rows = []
    best = {mode: min(t.median for n, t in ts.items() if n != "tngraph")
            for mode, ts in timings.items()}
    names = list(next(iter(timings.values())))
    for name in names:
        row = [name]
        for mode, ts in timings.items():
            t = ts[name]
            row += [fmt_ms(t.median), f"{t.spread * 100:.0f}%", fmt_ratio(t.median / best[mode])]
        rows.append(row)
    return rows


def tt_section(quick: bool) -> list[list[str]]:
    rounds = 5 if quick else 15
    warmup = 1 if quick else 3
    target = 0.005 if quick else 0.02
    summary: list[list[str]] = []
    for cfg in tt_configs():
        progress(f"TT-linear {cfg.label}")
        plan = {"batch_size": cfg.batch}
        network = {"template": "tt_linear", "in_shape": list(cfg.in_shape),
                   "out_shape": list(cfg.out_shape), "ranks": cfg.rank, "bias": True}
        module = _compile(network, plan, "tt_linear")
        with torch.no_grad():
            module.bias.normal_(generator=torch.Generator().manual_seed(1))
        base = TTBaselines(module, cfg)
        x = torch.randn(cfg.batch, base.n_in, generator=torch.Generator().manual_seed(2))
        cands = base.candidates(module)
        with torch.no_grad():
            want = module(x)
            for name, (fn, _) in cands.items():
                _check_close(name, fn(x), want)
        timings = {
            "fwd": interleaved({n: _forward_fn(fn, x) for n, (fn, _) in cands.items()},
                               rounds=rounds, warmup=warmup, target=target),
            "fwd+bwd": interleaved({n: _train_fn(fn, ps, x) for n, (fn, ps) in cands.items()},
                                   rounds=rounds, warmup=warmup, target=target),
        }
        show(f"TT-linear {cfg.label}: ms per call (median of {rounds} interleaved rounds)",
             ["candidate", "fwd ms", "iqr", "fwd/best-peer", "fwd+bwd ms", "iqr",
              "f+b/best-peer"],
             _peer_rows(timings),
             [f"tngraph plan: {module.plan.path_finder}, 10^{math.log10(module.plan.flops):.2f} "
              f"FLOPs/forward; peers = every candidate but tngraph; iqr = inter-quartile "
              "range / median"])
        for mode, ts in timings.items():
            # the bar: the best tensor-network peer; dense nn.Linear is shown beside it
            peers = {n: t.median for n, t in ts.items() if n not in ("tngraph", "dense")}
            best = min(peers, key=peers.__getitem__)
            ours = ts["tngraph"].median
            summary.append([cfg.label, mode, fmt_ms(ours), best, fmt_ms(peers[best]),
                            fmt_ratio(ours / peers[best]),
                            "PASS" if ours <= peers[best] else "FAIL",
                            fmt_ms(ts["dense"].median), fmt_ratio(ours / ts["dense"].median)])
    return summary


# ---------------------------------------------------------------------------------------------
# part 2: MPS classifier


class MPSReference(nn.Module):
    """Hand-written MPS classifier that knows its structure.

    The left half-chain (sites ``0 .. c-1``) and the right half-chain (sites ``n-1 .. c+1``)
    are advanced together: their environments ``E`` (2, batch, chi) take one batched matmul per
    step with the two cores stacked in ``pairs[k]`` (2, chi, 2*chi) -- the right cores stored
    transposed, (r, p, l). The feature map [1, x] is fused: ``M = E @ A`` gives both physical
    slices at once and the new environment is ``M[..., 0, :] + x * M[..., 1, :]``. Finally both
    environments meet at the middle core ``c`` that carries the label leg, its pixel taken
    first: ``[E_l, x E_l] @ A_c`` with ``A_c`` stored ``(p l, r o)``, then the right environment
    (the other order, ``E_l @ A_c`` summed over ``p`` afterwards, writes twice as much and was
    up to 8 % slower overall at batch 256).
    """

    def __init__(self, sites: int, bond: int, out_dim: int = 10, phys: int = 2,
                 out_site: int | None = None):
        super().__init__()
        if phys != 2:
            raise ValueError("the reference fuses the feature map [1, x]: phys must be 2")
        n, c = sites, sites // 2 if out_site is None else out_site
        if not 0 < c < n - 1:
            raise ValueError("the label site must have neighbours on both sides")
        self.n, self.c, self.chi, self.out_dim = n, c, bond, out_dim
        n_left, n_right = c - 1, n - c - 2          # steps after the boundary cores
        self.n_pairs = min(n_left, n_right)
        self.first = nn.Parameter(torch.zeros(2, bond))            # A0 as (p, r)
        self.last = nn.Parameter(torch.zeros(2, bond))             # A{n-1} as (p, l)
        self.pairs = nn.Parameter(torch.zeros(self.n_pairs, 2, bond, 2 * bond))
        self.extra_left = nn.Parameter(torch.zeros(n_left - self.n_pairs, bond, 2 * bond))
        self.extra_right = nn.Parameter(torch.zeros(n_right - self.n_pairs, bond, 2 * bond))
        self.middle = nn.Parameter(torch.zeros(2 * bond, bond * out_dim))   # (p l, r o)
        left_sites = list(range(1, c))
        right_sites = list(range(n - 2, c, -1))
        self.left_sites, self.right_sites = left_sites, right_sites
        pair_x = [[left_sites[k], right_sites[k]] for k in range(self.n_pairs)]
        self.register_buffer("pair_x", torch.tensor(pair_x, dtype=torch.long).reshape(-1, 2))

    @torch.no_grad()
    def load_from(self, tensors: Any) -> MPSReference:
        """Copy the cores of a compiled ``mps`` template (legs l, p, r[, o])."""
        chi = self.chi
        self.first.copy_(tensors["A0"])                                   # (p, r)
        self.last.copy_(tensors[f"A{self.n - 1}"].transpose(0, 1))        # (l, p) -> (p, l)
        left = [tensors[f"A{s}"].reshape(chi, 2 * chi) for s in self.left_sites]
        right = [tensors[f"A{s}"].permute(2, 1, 0).reshape(chi, 2 * chi)
                 for s in self.right_sites]
        k = self.n_pairs
        if k:
            self.pairs.copy_(torch.stack([torch.stack(pair) for pair in zip(left, right)]))
        if left[k:]:
            self.extra_left.copy_(torch.stack(left[k:]))
        if right[k:]:
            self.extra_right.copy_(torch.stack(right[k:]))
        self.middle.copy_(tensors[f"A{self.c}"].transpose(0, 1).reshape(2 * chi, -1))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, chi = x.shape[0], self.chi
        x = x.to(self.first.dtype)
        env_l = torch.addcmul(self.first[0], x[:, :1], self.first[1])        # (B, chi)
        env_r = torch.addcmul(self.last[0], x[:, -1:], self.last[1])
        env = torch.stack([env_l, env_r])                                   # (2, B, chi)
        xp = x.t()[self.pair_x].unsqueeze(-1).unbind(0)                     # K x (2, B, 1)
        # unbind: one autograd node per stacked tensor, where indexing pairs[k] at every step
        # would add a node per step that scatters into a full-size gradient
        for pair, xk in zip(self.pairs.unbind(0), xp):
            m = torch.bmm(env, pair).view(2, batch, 2, chi)
            env = torch.addcmul(m[:, :, 0], xk, m[:, :, 1])
        env_l, env_r = env[0], env[1]
        for core, site in zip(self.extra_left.unbind(0), self.left_sites[self.n_pairs:]):
            m = (env_l @ core).view(batch, 2, chi)
            env_l = torch.addcmul(m[:, 0], x[:, site:site + 1], m[:, 1])
        for core, site in zip(self.extra_right.unbind(0), self.right_sites[self.n_pairs:]):
            m = (env_r @ core).view(batch, 2, chi)
            env_r = torch.addcmul(m[:, 0], x[:, site:site + 1], m[:, 1])
        u = torch.cat([env_l, x[:, self.c:self.c + 1] * env_l], 1)           # (B, p l)
        t = (u @ self.middle).view(batch, chi, self.out_dim)                 # (B, r, o)
        return torch.bmm(env_r.unsqueeze(1), t).squeeze(1)                  # (B, o)


class SequentialMPS(nn.Module):
    """TorchMPS-style contraction of the same classifier: every core is first contracted with
    its pixel's feature vector ``[1, x]`` (one ``einsum`` per side over the stacked cores, as
    TorchMPS's input regions do), giving one ``(batch, chi, chi)`` matrix per site; the boundary
    vectors then take the matrices one after the other, left to right up to the label core and
    right to left down to it (one batched vector-matrix product per site), and meet at the
    label core. Cores are stacked per side as ``(sites, l, p, r)``.
    """

    def __init__(self, sites: int, bond: int, out_dim: int = 10, out_site: int | None = None):
        super().__init__()
        n, c = sites, sites // 2 if out_site is None else out_site
        self.n, self.c, self.chi = n, c, bond
        self.first = nn.Parameter(torch.zeros(2, bond))                      # (p, r)
        self.last = nn.Parameter(torch.zeros(bond, 2))                       # (l, p)
        self.left = nn.Parameter(torch.zeros(c - 1, bond, 2, bond))          # sites 1..c-1
        self.right = nn.Parameter(torch.zeros(n - c - 2, bond, 2, bond))     # sites c+1..n-2
        self.middle = nn.Parameter(torch.zeros(bond, 2, bond, out_dim))      # (l, p, r, o)

    @torch.no_grad()
    def load_from(self, tensors: Any) -> SequentialMPS:
        """Copy the cores of a compiled ``mps`` template (legs l, p, r[, o])."""
        n, c = self.n, self.c
        self.first.copy_(tensors["A0"])
        self.last.copy_(tensors[f"A{n - 1}"])
        self.left.copy_(torch.stack([tensors[f"A{s}"] for s in range(1, c)]))
        self.right.copy_(torch.stack([tensors[f"A{s}"] for s in range(c + 1, n - 1)]))
        self.middle.copy_(tensors[f"A{c}"])
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = self.n, self.c
        phi = torch.stack([torch.ones_like(x), x], dim=-1).to(self.first.dtype)   # (B, n, 2)
        left = torch.einsum("bsp,slpr->sblr", phi[:, 1:c], self.left)
        right = torch.einsum("bsp,slpr->sblr", phi[:, c + 1:n - 1], self.right)
        v = phi[:, 0] @ self.first                                                 # (B, r)
        for mat in left:
            v = torch.bmm(v.unsqueeze(1), mat).squeeze(1)
        w = phi[:, n - 1] @ self.last.t()                                          # (B, l)
        for mat in right.flip(0):
            w = torch.bmm(mat, w.unsqueeze(2)).squeeze(2)
        label = torch.einsum("bp,lpro->blro", phi[:, c], self.middle)
        return torch.einsum("bl,blro,br->bo", v, label, w)


def tensorkrowch_layer(sites: int, bond: int, out_dim: int, batch: int) -> Any | None:
    """TensorKrowch ``MPSLayer`` with its recommended settings, or None if not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorkrowch as tk
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = tk.models.MPSLayer(n_features=sites + 1, in_dim=2, out_dim=out_dim,
                                   bond_dim=bond, out_position=sites // 2,
                                   init_method="randn_eye", std=1e-9)
        layer.auto_stack = True
        layer.auto_unbind = False
        layer.trace(torch.zeros(batch, sites, 2))
    return layer


def _tk_features(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.ones_like(x), x], dim=-1)                     # (B, n, 2)


def _inference_fn(model: Callable[[torch.Tensor], torch.Tensor],
                  x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return model(x)
    return run


def _training_fn(model: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
                 x: torch.Tensor, labels: torch.Tensor, step: bool = True) -> Callable[[], Any]:
    # fused Adam (one kernel for all tensors) for every candidate: the per-tensor Python loop
    # of the default Adam would otherwise dominate models with many small cores
    optimizer = torch.optim.Adam(params, lr=1e-5, fused=True)

    def run() -> Any:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        if step:
            optimizer.step()
    return run


def _tngraph_training_fn(module: Any, x: torch.Tensor, labels: torch.Tensor
                         ) -> Callable[[], Any]:
    """What ``tngraph train`` runs per batch with ``optimizer: adam``: the strategy's stepper
    (fused Adam over the module's parameter buffer, a finiteness check on the loss)."""
    from tngraph.optimizers import OptimizerContext, get_optimizer

    adam = get_optimizer("adam")
    stepper = adam.create(module, adam.options(), OptimizerContext(lr=1e-5))

    def run() -> Any:
        stepper.step(x, lambda out: F.cross_entropy(out, labels))
    return run


def _mps_rows(sites: int, bond: int, batch: int, rounds: int, plan_options: dict[str, Any],
              quick: bool, peak: float) -> tuple[list[list[str]], list[str]]:
    """Time every candidate at one bond and batch: its table rows and its summary row."""
    network = {"template": "mps", "sites": sites, "phys_dim": 2, "bond_dim": bond,
               "input": "x", "feature_map": "multilinear", "output_dim": 10}
    progress(f"MPS classifier {sites} sites chi {bond} batch {batch}: compile (plan cached "
             "after a run)")
    start = time.perf_counter()
    module = _compile(network, {"batch_size": batch}, "mps_classifier", **plan_options)
    compile_s = time.perf_counter() - start
    reference = MPSReference(sites, bond).load_from(module.tensors)
    sequential = SequentialMPS(sites, bond).load_from(module.tensors)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(batch, sites, generator=gen)
    labels = torch.randint(0, 10, (batch,), generator=gen)
    with torch.no_grad():
        _check_close("reference", reference(x), module(x))
        _check_close("sequential", sequential(x), module(x))
    models: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = {
        "tngraph": (module, x), "reference": (reference, x), "sequential": (sequential, x)}
    tk_layer = tensorkrowch_layer(sites, bond, 10, batch)
    if tk_layer is not None:
        models["tensorkrowch"] = (tk_layer, _tk_features(x))
    target = 0.01 if quick else 0.2
    infer = interleaved({n: _inference_fn(m, xx) for n, (m, xx) in models.items()},
                        rounds=rounds, warmup=2, target=target)
    # every model in a plain torch.optim.Adam loop over module.parameters(), as users train;
    # tngraph's own stepper (what `tngraph train` runs) is a row of its own
    trainers = {n: _training_fn(m, list(m.parameters()), xx, labels)
                for n, (m, xx) in models.items()}
    trainers["tngraph stepper"] = _tngraph_training_fn(module, x, labels)
    train = interleaved(trainers, rounds=rounds, warmup=2, target=target)
    # forward + backward alone, without the Adam step (whose cost grows with the number of
    # parameter tensors)
    grads = interleaved({n: _training_fn(m, list(m.parameters()), xx, labels, step=False)
                         for n, (m, xx) in models.items() if n in ("tngraph", "reference")},
                        rounds=rounds, warmup=2, target=target)
    rows = [[f"chi {bond}", str(batch), name,
             *([fmt_rate(batch / infer[name].median), fmt_ms(infer[name].median),
                f"{infer[name].spread * 100:.0f}%"] if name in infer else ["", "", ""]),
             fmt_rate(batch / train[name].median), fmt_ms(train[name].median),
             f"{train[name].spread * 100:.0f}%"] for name in train]
    inf_ratio = infer["reference"].median / infer["tngraph"].median
    train_ratio = train["reference"].median / train["tngraph"].median
    inf_best = infer["reference"].best / infer["tngraph"].best
    train_best = train["reference"].best / train["tngraph"].best
    grad_ratio = grads["reference"].median / grads["tngraph"].median
    # achieved rate of inference: the FLOPs of the path that runs, per forward of the batch
    gflops = module.plan.executed().flops / infer["tngraph"].median / 1e9
    ratios = [f"{sites} sites chi {bond} b{batch}", f"{compile_s:.1f}",
              f"10^{math.log10(module.plan.flops):.2f}",
              f"10^{math.log10(module.plan.executed().flops):.2f}",
              fmt_ratio(inf_ratio), fmt_ratio(inf_best), verdict(inf_ratio >= MPS_INFER_TARGET),
              fmt_ratio(train_ratio), fmt_ratio(train_best),
              verdict(train_ratio >= MPS_TRAIN_TARGET), fmt_ratio(grad_ratio),
              f"{gflops:.1f}", f"{gflops / peak * 100:.0f}%"]
    return rows, ratios


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def mps_section(quick: bool) -> list[list[str]]:
    sites = 16 if quick else 64
    bonds = (10,) if quick else (10, 20, 40)
    batches = (64,) if quick else (64, 256)
    rounds = 5 if quick else 9
    plan_options: dict[str, Any] = {"max_repeats": 16} if quick else {}
    rows, summary = [], []
    peak = matmul_peak()
    for bond in bonds:
        for batch in batches:
            table, ratios = _mps_rows(sites, bond, batch, rounds, plan_options, quick, peak)
            rows += table
            summary.append(ratios)
    show(f"MPS classifier, {sites} sites, feature map [1, x]: samples/s (median of {rounds} "
         "interleaved rounds)",
         ["bond", "batch", "model", "infer samples/s", "infer ms", "iqr", "train samples/s",
          "train ms", "iqr"], rows,
         ["infer = forward under torch.no_grad; train = forward + cross-entropy + backward + "
          "Adam step: torch.optim.Adam(module.parameters(), fused=True) for every model;",
          "  'tngraph stepper': the stepper of `tngraph train` (optimizer adam: the same fused "
          "Adam, and a finiteness check of the loss).",
          "reference = MPSReference in this file (paired half-chains over unbound stacked cores, "
          "fused [1,x], the label core's pixel taken first);",
          "  outputs checked equal to tngraph's.",
          "sequential = SequentialMPS in this file (TorchMPS-style: cores contracted with the "
          "pixels first, then one",
          "  vector-matrix product per site from each end); outputs checked equal to "
          "tngraph's.",
          "tensorkrowch = MPSLayer(n_features=sites+1, init_method='randn_eye', std=1e-9), "
          "traced, auto_stack; its label",
          "  node is an extra core (sites+1 cores), so it is a near but not identical model."])
    infer_ratios = [float(row[4].rstrip("x")) for row in summary]
    train_ratios = [float(row[7].rstrip("x")) for row in summary]
    show("MPS classifier: compiled / reference speed (ratio of samples/s, >= 1.0 means tngraph "
         "is as fast)",
         ["network", "compile s", "planned", "executed", "infer tn/ref", "(fastest)",
          f">= {MPS_INFER_TARGET}", "train tn/ref", "(fastest)", f">= {MPS_TRAIN_TARGET}",
          "f+b tn/ref", "infer GFLOP/s", "of peak"],
         summary,
         ["ratios of medians; '(fastest)' = ratio of the fastest samples, less sensitive to "
          "other processes.",
          "planned / executed = FLOPs per forward of the planned path (minimize: combo) and of "
          "the path that "
          "runs (plan.run_path auto: port-fused);",
          "f+b = forward + backward without the Adam step (tngraph: the half-chains' cores "
          "stored stacked in execution layout, 4 parameter tensors; the reference: 6).",
          f"over the {len(summary)} settings: infer tn/ref median {_median(infer_ratios):.2f}x "
          f"(lowest {min(infer_ratios):.2f}x), train tn/ref median "
          f"{_median(train_ratios):.2f}x (lowest {min(train_ratios):.2f}x).",
          "compile s includes planning (read from the plan cache after the first run).",
          f"infer GFLOP/s = executed FLOPs per forward / tngraph's inference time; of peak = "
          f"against this CPU's torch.mm of 1024 x 1024 float32, {peak:.1f} GFLOP/s."])
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds and a 16-site MPS (a smoke test, < 60 s)")
    parser.add_argument("--only", choices=("tt", "mps"), default=None,
                        help="run one part only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print_environment("tngraph execution" + (" (--quick)" if args.quick else ""))
    start = time.perf_counter()
    if args.only in (None, "tt"):
        summary = tt_section(args.quick)
        show("TT-linear summary: tngraph vs the best tensor-network peer (einsum, cotengra, "
             "rebuild-W; ratio > 1: tngraph is slower), and vs dense nn.Linear",
             ["layer", "mode", "tngraph ms", "best TN peer", "peer ms", "tngraph/peer",
              "<= 1.0", "dense ms", "tngraph/dense"], summary)
    if args.only in (None, "mps"):
        mps_section(args.quick)
    print(f"total {time.perf_counter() - start:.0f} s (exit status 0: this is a report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
