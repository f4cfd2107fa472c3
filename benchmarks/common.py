"""Shared helpers of the benchmark scripts: environment banner, interleaved timing, tables.

Timing policy: every candidate is warmed up, then all candidates are run *round-robin* (one
sample of each per round, the order rotated every round) so that background noise on a shared
machine hits all of them alike; the reported figure is the median over rounds. One sample runs a
candidate ``inner`` times (calibrated so that a sample lasts a few milliseconds) and is divided
by ``inner``.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python benchmarks/x.py`` from anywhere
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------------------------
# environment


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_lines() -> list[str]:
    """Versions, threads and CPU: printed at the top of every report."""
    import torch

    lines = [
        f"python {platform.python_version()}  torch {torch.__version__}  "
        f"threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})",
        f"cpu: {cpu_model()}  ({os.cpu_count()} logical cores)  {platform.platform()}",
    ]
    versions = []
    for mod in ("cotengra", "opt_einsum", "tensorkrowch", "numpy"):
        try:
            module = __import__(mod)
            versions.append(f"{mod} {getattr(module, '__version__', '?')}")
        except ImportError:
            versions.append(f"{mod} -")
    lines.append("  ".join(versions))
    try:
        load = os.getloadavg()
        lines.append(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
                     f"(other processes may share the CPU; timings are interleaved medians)")
    except OSError:
        pass
    return lines


def print_environment(title: str) -> None:
    print(f"== {title} ==")
    for line in environment_lines():
        print(line)
    print()


# ---------------------------------------------------------------------------------------------
# timing


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and quartiles over the rounds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """Inter-quartile range relative to the median."""
        if len(self.samples) < 4:
            return (max(self.samples) - min(self.samples)) / max(self.median, 1e-30)
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / max(self.median, 1e-30)


def calibrate(fn: Callable[[], object], target: float = 0.01, max_inner: int = 1000) -> int:
    """How many calls make a sample of about ``target`` seconds (at least one)."""
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    if elapsed <= 0:
        return max_inner
    return max(1, min(max_inner, int(math.ceil(target / elapsed))))


def interleaved(candidates: dict[str, Callable[[], object]], *, rounds: int = 7,
                warmup: int = 2, target: float = 0.01) -> dict[str, Timing]:
    """Median time per call of every candidate, measured round-robin.

    Each candidate is called ``warmup`` times, then ``rounds`` rounds run every candidate once
    (a sample of ``inner`` calls), the starting candidate rotating from round to round.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    inner = {name: calibrate(candidates[name], target) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, n = candidates[name], inner[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: Timing(tuple(s)) for name, s in samples.items()}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """``(fn(), seconds)``."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# formatting


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 100 else f"{seconds:.0f}"


def fmt_ratio(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    if x < 100:
        return f"{x:.2f}x"
    return f"{x:.0f}x" if x < 1e5 else f"{x:.1e}x"


def fmt_log10(x: float) -> str:
    return f"{math.log10(x):.3f}" if x > 0 else "-"


def matmul_peak(dtype: Any = None, size: int = 1024, repeats: int = 20) -> float:
    """This CPU's measured matmul rate in GFLOP/s: the fastest of ``repeats`` products of two
    ``size x size`` matrices (``torch.mm``, float32 by default) on torch's threads."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


def fmt_rate(per_second: float) -> str:
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f}M"
    if per_second >= 1e4:
        return f"{per_second / 1e3:.1f}k"
    return f"{per_second:.0f}"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
          notes: Sequence[str] = ()) -> str:
    """A plain-text table (first column left-aligned, others right-aligned)."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[k]) for r in cells) for k in range(len(columns))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(cells[0]))
    out = [title, rule, line(cells[0]), rule] + [line(r) for r in cells[1:]] + [rule]
    out += [f"  {n}" for n in notes]
    return "\n".join(out)


def show(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]],
         notes: Sequence[str] = ()) -> None:
    print(table(title, columns, rows, notes))
    print(flush=True)


def progress(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"... {message}", file=sys.stderr, flush=True)


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` if asked (the default leaves torch's own choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
