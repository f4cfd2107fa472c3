"""Plugin registries: entry points, broken plugins kept apart, `tngraph plugins list`."""

from __future__ import annotations

import importlib.metadata
from typing import Any

import pytest

import tngraph.plugins as plugins
from tngraph.cli import main
from tngraph.errors import PluginError
from tngraph.plugins import Registry


class _EntryPoint:
    """Stands in for an importlib.metadata.EntryPoint."""

    def __init__(self, name: str, value: Any = None, error: Exception | None = None):
        self.name, self._value, self._error, self.dist = name, value, error, None

    def load(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry[str]:
    points = [_EntryPoint("good", "a good plugin"),
              _EntryPoint("broken", error=ImportError("No module named 'missing_dependency'"))]

    def entry_points(group: str | None = None, **_: Any) -> list[_EntryPoint]:
        return points if group == "tngraph.widgets" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return Registry("widget", "tngraph.widgets", lambda: {"builtin": "a built-in"})


def test_a_broken_plugin_does_not_break_the_others(registry: Registry[str]) -> None:
    assert registry.list() == ["builtin", "good"]
    assert registry.get("good") == "a good plugin"
    with pytest.raises(PluginError, match="widget plugin 'broken' failed to load: ImportError"):
        registry.get("broken")
    (broken,) = [i for i in registry.info() if i.name == "broken"]
    assert "missing_dependency" in broken.error


def test_unknown_names_list_the_valid_ones(registry: Registry[str]) -> None:
    with pytest.raises(PluginError, match="unknown widget 'god'; did you mean 'good'"):
        registry.get("god")


@pytest.mark.parametrize(("kind", "names"), [
    ("template", {"mps", "mpo", "tt_linear", "peps"}),
    ("feature map", {"multilinear", "trig", "poly"}),
    ("initializer", {"normal", "uniform", "zeros", "ones", "identity"}),
    ("dataset", {"digits", "mnist", "fashion_mnist", "csv", "synthetic_regression"}),
])
def test_builtins_come_through_entry_points(kind: str, names: set[str]) -> None:
    (registry,) = [r for r in plugins.registries() if r.kind == kind]
    infos = {i.name: i for i in registry.info()}
    assert names <= set(infos)
    assert all(infos[n].distribution == "tngraph" and not infos[n].error for n in names)


def test_cli_plugins_list_marks_broken_plugins(registry: Registry[str],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(plugins, "registries", lambda: [registry])
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "builtin" in out
    assert "BROKEN: ImportError: No module named 'missing_dependency'" in out


class _Dist:
    def __init__(self, name: str):
        self.metadata, self.version = {"Name": name}, "1.0"


def _point(name: str, value: Any, dist: str) -> _EntryPoint:
    point = _EntryPoint(name, value)
    point.dist = _Dist(dist)
    return point


def test_a_third_party_plugin_cannot_shadow_a_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [_point("poly", "impostor", "evil-plugin"), _point("poly", "real", "tngraph"),
              _point("poly", "real", "tngraph")]    # listed twice: same distribution, no clash
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **_: points if group == "tngraph.widgets" else [])
    reg: Registry[str] = Registry("widget", "tngraph.widgets")
    assert reg.get("poly") == "real"
    (clash,) = [i for i in reg.info() if i.error]
    assert clash.distribution == "evil-plugin"
    assert "name clash: 'poly' is already provided by tngraph" in clash.error


def test_a_plugin_of_the_wrong_kind_is_reported_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    points = [_point("ok", 3, "a"), _point("wrong", "text", "b")]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None, **_: points if group == "tngraph.widgets" else [])
    reg: Registry[int] = Registry("widget", "tngraph.widgets", expects=int)
    assert reg.list() == ["ok"]
    with pytest.raises(PluginError, match="failed to load: not a widget: expected int, got str"):
        reg.get("wrong")


@pytest.mark.parametrize("module", ["data", "distill", "layers", "optimizers", "templates"])
def test_registries_check_what_their_entries_are(module: str) -> None:
    import importlib

    mod = importlib.import_module(f"tngraph.{module}")
    (registry,) = [v for v in vars(mod).values() if isinstance(v, Registry)]
    assert registry._expects is not None
    assert registry._wrong_shape(object()) is not None
