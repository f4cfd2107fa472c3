"""The arithmetic rate behind time estimates: stated, measured once, cached per machine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import tngraph.throughput as throughput
from tngraph.errors import TNGraphError
from tngraph.throughput import CACHE_FILE, RATE_VARIABLE, flops_per_second, format_duration


@pytest.fixture
def measuring(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No stated rate, nothing measured yet in this process; counts the measurements (each
    returns a fixed rate per dtype)."""
    monkeypatch.delenv(RATE_VARIABLE, raising=False)
    monkeypatch.setattr(throughput, "_measured", {})
    calls: list[str] = []

    def fake(dtype: str, seconds: float = 0.05) -> float:
        calls.append(dtype)
        return {"float32": 4e10, "float64": 2e10}[dtype]

    monkeypatch.setattr(throughput, "measure", fake)
    return calls


def test_a_real_measurement_is_a_plausible_rate() -> None:
    rate = throughput.measure("float64", seconds=0.01)
    assert 1e7 < rate < 1e15


def test_measured_once_then_read_from_the_cache(tmp_path: Path, measuring: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert flops_per_second("float64", tmp_path) == (2e10, "measured on this machine")
    assert measuring == ["float32", "float64"]
    data = json.loads((tmp_path / CACHE_FILE).read_text())
    assert data["rates"] == {"float32": 4e10, "float64": 2e10} and data["version"] == 1
    monkeypatch.setattr(throughput, "_measured", {})        # a new process
    assert flops_per_second("float16", tmp_path).value == 4e10   # half: float32's rate
    assert measuring == ["float32", "float64"]


@pytest.mark.parametrize("damage", [
    "not json", "[]", '{"version": 1}',
    lambda d: {**d, "rates": {"float32": -1, "float64": 1}},
    lambda d: {**d, "rates": {"float32": "fast", "float64": 1}},
    lambda d: {**d, "machine": {**d["machine"], "cpus": 4096}},    # another machine
])
def test_a_damaged_or_foreign_cache_is_measured_again(tmp_path: Path, measuring: list[str],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      damage) -> None:
    flops_per_second("float32", tmp_path)
    path = tmp_path / CACHE_FILE
    text = damage if isinstance(damage, str) else json.dumps(damage(json.loads(path.read_text())))
    path.write_text(text)
    monkeypatch.setattr(throughput, "_measured", {})
    assert flops_per_second("float32", tmp_path).value == 4e10
    assert len(measuring) == 4
    assert json.loads(path.read_text())["rates"]["float32"] == 4e10      # repaired


def test_an_unwritable_cache_still_gives_a_rate(tmp_path: Path, measuring: list[str]) -> None:
    (tmp_path / "file").write_text("")
    assert flops_per_second("float32", tmp_path / "file" / "sub").value == 4e10


def test_the_stated_rate_wins(monkeypatch: pytest.MonkeyPatch, measuring: list[str]) -> None:
    monkeypatch.setenv(RATE_VARIABLE, " 3e9 ")
    assert flops_per_second("float64", None) == (3e9, f"stated by {RATE_VARIABLE}")
    monkeypatch.setenv(RATE_VARIABLE, "")                    # empty: as if unset
    assert flops_per_second("float64", None).source == "measured on this machine"
    assert measuring


@pytest.mark.parametrize("value", ["fast", "0", "-1e9", "inf", "nan"])
def test_a_bad_stated_rate_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(RATE_VARIABLE, value)
    with pytest.raises(TNGraphError, match=f"{RATE_VARIABLE}='{value}' is not a positive number "
                                           "of FLOP/s; write e.g."):
        flops_per_second("float32", None)


@pytest.mark.parametrize(("seconds", "text"), [
    (3e-9, "under 1 µs"), (4.2e-6, "4.2 µs"), (0.0042, "4.2 ms"), (12, "12 s"),
    (150, "2.5 min"), (5400, "1.5 h"), (3 * 86400, "3 days"), (400 * 86400, "1.1 years"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(math.log10(seconds)) == text


def test_format_duration_of_astronomical_times() -> None:
    year = math.log10(365.25 * 86400)
    assert format_duration(year + 25.3) == "10^25.3 years"
    assert format_duration(year + 400.0) == "10^400.0 years"
