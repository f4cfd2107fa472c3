"""This machine's arithmetic speed, measured once and cached: what a plan's time estimate divides
its FLOPs by.

The rate is that of a large dense matrix product (NumPy's BLAS, all threads), the fastest a
contraction step can run on the CPU; real contractions of small or oddly shaped tensors run
slower, so an estimate is a lower bound of the time. It is measured in about 0.1 s the first time
a plan needs it, then read from ``throughput.json`` in the plan cache folder (measured again on
another machine, CPU count or NumPy). ``TNGRAPH_FLOPS_PER_SECOND`` states a nominal rate instead
(for reproducible reports, or another machine's speed).

Examples
--------
>>> rate = flops_per_second("float32", cache_dir=None)          # doctest: +SKIP
>>> rate.value > 1e8, rate.source                               # doctest: +SKIP
(True, 'measured on this machine')
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tngraph.errors import TNGraphError
from tngraph.files import WriteError, atomic_write

#: environment variable stating the rate (FLOP/s) instead of measuring it
RATE_VARIABLE = "TNGRAPH_FLOPS_PER_SECOND"
CACHE_FILE = "throughput.json"
CACHE_VERSION = 1
#: the dtypes measured; half precision on the CPU is taken at float32's rate
MEASURED = ("float32", "float64")
_MATRIX = 384
_measured: dict[str, float] = {}        # per process: measured once


class Rate(NamedTuple):
    """An arithmetic rate in FLOP/s and where it comes from."""

    value: float
    source: str


def _machine() -> dict[str, object]:
    return {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__}


def measure(dtype: str, seconds: float = 0.05) -> float:
    """FLOP/s of an ``n x n`` matrix product in ``dtype`` (best of the repeats run in about
    ``seconds``)."""
    a = np.random.default_rng(0).standard_normal((_MATRIX, _MATRIX)).astype(dtype)
    np.matmul(a, a)                                     # warm-up: threads, caches
    best = math.inf
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        np.matmul(a, a)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * _MATRIX ** 3 / max(best, 1e-9)


def _read_cache(path: Path) -> dict[str, float] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION \
            or data.get("machine") != _machine():
        return None
    rates = data.get("rates")
    if not isinstance(rates, dict) or set(rates) != set(MEASURED) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in rates.values()):
        return None                     # damaged or edited: measured again
    return {k: float(v) for k, v in rates.items()}


def flops_per_second(dtype: str, cache_dir: str | Path | None) -> Rate:
    """The rate for contractions in ``dtype``: :data:`RATE_VARIABLE` if set (and not empty), else
    cached in
    ``cache_dir`` (None: measured, not written), else measured now.

    Raises
    ------
    TNGraphError
        If :data:`RATE_VARIABLE` is not a positive number.
    """
    stated = os.environ.get(RATE_VARIABLE, "").strip()
    if stated:                          # set and not empty
        try:
            value = float(stated)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise TNGraphError(f"{RATE_VARIABLE}={stated!r} is not a positive number of FLOP/s;"
                               f" write e.g. {RATE_VARIABLE}=1e11, or unset it to measure")
        return Rate(value, f"stated by {RATE_VARIABLE}")
    key = dtype if dtype in MEASURED else "float32"
    if key in _measured:
        return Rate(_measured[key], "measured on this machine")
    path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    rates = _read_cache(path) if path is not None else None
    if rates is None:
        rates = {name: measure(name) for name in MEASURED}
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, json.dumps({"version": CACHE_VERSION,
                                               "machine": _machine(), "rates": rates},
                                              indent=2).encode())
            except (OSError, WriteError):
                pass                    # an unwritable cache costs a measurement next time
    _measured.update(rates)
    return Rate(rates[key], "measured on this machine")


def format_duration(log10_seconds: float) -> str:
    """A duration given as ``log10(seconds)``, for people; beyond a million years as a power
    of ten of years.

    Examples
    --------
    >>> format_duration(math.log10(0.0042)), format_duration(math.log10(5400))
    ('4.2 ms', '1.5 h')
    >>> format_duration(30.0)
    '10^22.5 years'
    """
    if log10_seconds < -6:
        return "under 1 µs"
    year = 365.25 * 86400
    if log10_seconds > math.log10(1e6 * year):
        return f"10^{log10_seconds - math.log10(year):.1f} years"
    seconds = 10 ** log10_seconds
    for unit, size in (("years", year), ("days", 86400), ("h", 3600), ("min", 60), ("s", 1),
                       ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds * 1e6:.3g} µs"
