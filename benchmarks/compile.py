"""torch.compile on compiled tngraph modules: eager against ``torch.compile`` (Inductor).

For each network, in one process, interleaved: inference (``torch.no_grad`` forward) and one
training step (forward, cross-entropy, backward, ``torch.optim.Adam(module.parameters(),
fused=True)`` step) of the eager module against the same module under
``torch.compile(module, fullgraph=True)``. Outputs are checked equal before timing. The
compile column is the wall time of the first compiled call of each mode (tracing, Inductor's
code generation and the C++ build).

Networks: an MPS classifier of 16 sites (per-call overhead dominates it eagerly), the same at 64
sites, and a 4096 -> 16 TT-layer.

Usage::

    .venv/bin/python benchmarks/compile.py            # a few minutes (Inductor builds)
    .venv/bin/python benchmarks/compile.py --quick    # the 16-site classifier only
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import tngraph

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from common import (  # noqa: E402
    fmt_ms,
    fmt_ratio,
    interleaved,
    print_environment,
    progress,
    set_threads,
    show,
)

ROOT = Path(__file__).resolve().parent.parent


def classifier(sites: int, bond: int, batch: int) -> tngraph.TNModule:
    return tngraph.compile(
        f"tngraph: 1\nname: mps{sites}\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
        f"bond_dim: {bond}, input: x, feature_map: multilinear, output_dim: 10}}\n",
        batch_size=batch)


def tt_layer(batch: int) -> tngraph.TNModule:
    return tngraph.compile(ROOT / "models" / "tt_linear.yaml", batch_size=batch)


def _step(model: Callable[[torch.Tensor], torch.Tensor], params: list[torch.nn.Parameter],
          x: torch.Tensor, labels: torch.Tensor) -> Callable[[], Any]:
    optimizer = torch.optim.Adam(params, lr=1e-6, fused=True)

    def run() -> Any:
        optimizer.zero_grad(set_to_none=True)
        out = model(x)
        F.cross_entropy(out.reshape(out.shape[0], -1), labels).backward()
        optimizer.step()
    return run


def _infer(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return model(x)
    return run


def rows_for(name: str, module: tngraph.TNModule, x: torch.Tensor, rounds: int,
             backend: str = "inductor") -> list[list[str]]:
    """Eager and compiled timings of one network: its two table rows."""
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    outputs = module(x[:1]).reshape(1, -1).shape[1]
    labels = torch.randint(0, outputs, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    params = list(module.parameters())
    progress(f"{name}: compiling (inference)")
    start = time.perf_counter()
    with torch.no_grad():
        got = compiled(x)
    compile_infer = time.perf_counter() - start
    with torch.no_grad():
        torch.testing.assert_close(got, module(x), rtol=1e-4, atol=1e-5)
    progress(f"{name}: compiling (training)")
    start = time.perf_counter()
    loss = F.cross_entropy(compiled(x).reshape(x.shape[0], -1), labels)
    grads = torch.autograd.grad(loss, params)
    compile_train = time.perf_counter() - start
    expected = torch.autograd.grad(
        F.cross_entropy(module(x).reshape(x.shape[0], -1), labels), params)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    progress(f"{name}: timing")
    infer = interleaved({"eager": _infer(module, x), "compiled": _infer(compiled, x)},
                        rounds=rounds, warmup=2)
    train = interleaved({"eager": _step(module, params, x, labels),
                         "compiled": _step(compiled, params, x, labels)},
                        rounds=rounds, warmup=2)
    return [[name, "infer", fmt_ms(infer["eager"].median), fmt_ms(infer["compiled"].median),
             fmt_ratio(infer["eager"].median / infer["compiled"].median),
             f"{compile_infer:.1f}"],
            [name, "train step", fmt_ms(train["eager"].median),
             fmt_ms(train["compiled"].median),
             fmt_ratio(train["eager"].median / train["compiled"].median),
             f"{compile_train:.1f}"]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 16-site classifier only")
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile backend (aot_eager: a smoke test without C++ builds)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    print_environment("tngraph under torch.compile" + (" (--quick)" if args.quick else ""))
    gen = torch.Generator().manual_seed(1)
    cases: list[tuple[str, Callable[[], tngraph.TNModule], torch.Tensor]] = [
        ("mps 16 sites chi 10 b64", lambda: classifier(16, 10, 64),
         torch.rand(64, 16, generator=gen))]
    if not args.quick:
        cases += [("mps 64 sites chi 10 b64", lambda: classifier(64, 10, 64),
                   torch.rand(64, 64, generator=gen)),
                  ("tt 4096->16 r8 b256", lambda: tt_layer(256),
                   torch.randn(256, 4096, generator=gen))]
    start = time.perf_counter()
    rows = []
    for name, make, x in cases:
        rows += rows_for(name, make(), x, rounds=5 if args.quick else 7, backend=args.backend)
    show(f"eager vs torch.compile(module, fullgraph=True, backend={args.backend!r}), ms per "
         "call (median of interleaved rounds)",
         ["network", "mode", "eager ms", "compiled ms", "eager/compiled", "compile s"], rows,
         ["eager/compiled > 1: the compiled module is faster; compile s = the first call "
          "(tracing + Inductor build).",
          "train step = forward + cross-entropy + backward + torch.optim.Adam(fused=True) "
          "step over module.parameters()."])
    print(f"total {time.perf_counter() - start:.0f} s (exit status 0: this is a report)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
