"""Plugin registries: entry points loaded by name, broken plugins kept apart, deferred
implementations, `tngraph plugins list`."""

from __future__ import annotations

import importlib.metadata
import pickle
import subprocess
import sys
from typing import Any

import pytest
from pydantic import BaseModel

import tngraph.kinds as kinds
from tngraph.cli import main
from tngraph.errors import PluginError
from tngraph.registry import Deferred, Registry


class _EntryPoint:
    """Stands in for an importlib.metadata.EntryPoint."""

    def __init__(self, name: str, value: Any = None, error: Exception | None = None):
        self.name, self._value, self._error, self.dist = name, value, error, None

    def load(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _Dist:
    def __init__(self, name: str):
        self.metadata, self.version = {"Name": name}, "1.0"


def _point(name: str, value: Any, dist: str) -> _EntryPoint:
    point = _EntryPoint(name, value)
    point.dist = _Dist(dist)
    return point


def _serve(monkeypatch: pytest.MonkeyPatch, points: list[_EntryPoint],
           group: str = "tngraph.widgets") -> None:
    """Let importlib.metadata list ``points`` as the entry points of ``group``."""
    def entry_points(group: str | None = None, served: str = group, **_: Any) -> list[Any]:
        return points if group == served else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry[str]:
    _serve(monkeypatch, [
        _point("builtin", "a built-in", "tngraph"), _EntryPoint("good", "a good plugin"),
        _EntryPoint("broken", error=ImportError("No module named 'missing_dependency'"))])
    return Registry("widget", "tngraph.widgets", builtin="tngraph")


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
    ("layer", {"linear", "conv2d", "maxpool", "avgpool", "batchnorm", "dropout", "flatten",
               "reshape", "permute", "feature_map", "softmax", "log_softmax", "relu", "tanh",
               "sigmoid", "gelu"}),
    ("dataset", {"digits", "mnist", "fashion_mnist", "csv", "synthetic_regression"}),
    ("optimizer", {"adam", "sgd", "dmrg", "riemannian", "tangent"}),
    ("distiller", {"response", "layer"}),
])
def test_builtins_come_through_entry_points(kind: str, names: set[str]) -> None:
    (registry,) = [r for r in kinds.registries() if r.kind == kind]
    infos = {i.name: i for i in registry.info()}
    assert names <= set(infos)
    assert all(infos[n].distribution == "tngraph" and not infos[n].error for n in names)


def test_cli_plugins_list_marks_broken_plugins(registry: Registry[str],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(kinds, "registries", lambda: [registry])
    assert main(["plugins", "list"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "builtin" in out
    assert "BROKEN: ImportError: No module named 'missing_dependency'" in out


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


class _Thing(BaseModel):
    n: int = 0


def test_registry_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, [_point("knob", _Thing(n=1), "tngraph")])
    reg: Registry[_Thing] = Registry("widget", "tngraph.widgets")
    reg.register("dial", _Thing(n=2))
    assert reg.list() == ["dial", "knob"]
    assert list(reg) == ["dial", "knob"]
    assert reg.get("knob").n == 1
    with pytest.raises(PluginError, match="widget 'dial' is already registered"):
        reg.register("dial", _Thing())
    with pytest.raises(PluginError, match="widget 'knob' is already registered"):
        reg.register("knob", _Thing())        # an entry point's name, not loaded yet
    with pytest.raises(PluginError, match="not an identifier"):
        reg.register("my-dial", _Thing())
    with pytest.raises(PluginError, match=r"unknown widget 'knbo'; did you mean 'knob'\?"):
        reg.get("knbo")
    assert [i.distribution for i in reg.info()] == ["<runtime>", "tngraph"]


class _CountingPoint(_EntryPoint):
    loads: list[str] = []

    def load(self) -> Any:
        self.loads.append(self.name)
        return super().load()


def test_entry_points_load_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    _CountingPoint.loads = []
    _serve(monkeypatch, [_CountingPoint("first", 1), _CountingPoint("second", 2),
                         _CountingPoint("third", error=ImportError("heavy"))])
    reg: Registry[int] = Registry("widget", "tngraph.widgets")
    assert reg.get("second") == 2
    assert _CountingPoint.loads == ["second"]           # the others are not imported
    assert "second" in reg and reg.get("second") == 2
    assert _CountingPoint.loads == ["second"]           # loaded once
    assert "first" in reg and "third" not in reg        # membership loads that name only
    assert _CountingPoint.loads == ["second", "first", "third"]
    assert reg.list() == ["first", "second"]
    assert len(_CountingPoint.loads) == 3


def test_an_uninstalled_source_tree_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, [_point("other", 1, "somebody-else")])
    reg: Registry[int] = Registry("widget", "tngraph.widgets", builtin="tngraph")
    for use in (lambda: reg.get("other"), reg.list, lambda: "other" in reg):
        with pytest.raises(PluginError, match=r"no built-in widgets are registered: tngraph's "
                           r"entry points \(tngraph.widgets\) are missing.*pip install -e \."):
            use()


def test_deferred_loads_on_first_call_and_pickles() -> None:
    join = Deferred("os.path:join")
    assert join._target is None
    assert join("a", "b") in ("a/b", "a\\b")
    assert join._target is not None
    copy = pickle.loads(pickle.dumps(join))
    assert copy == join and hash(copy) == hash(join) and copy._target is None
    with pytest.raises(PluginError, match="cannot load no_such_module_x:f: ModuleNotFoundError"):
        Deferred("no_such_module_x:f")()
    with pytest.raises(ValueError, match="'module:attribute'"):
        Deferred("os.path.join")


@pytest.mark.parametrize(("code", "unimported"), [
    # a network spec: no torch, no training code, no strategy implementation
    ("tngraph.load_spec('models/mps_classifier.yaml')",
     ("torch", "tngraph.compiler", "tngraph.executor", "tngraph.train", "tngraph.optimizers",
      "tngraph.distill", "tngraph.tensorize", "tngraph.decompose", "tngraph_plugins.optimizers",
      "tngraph_plugins.dmrg", "tngraph_plugins.riemannian", "tngraph_plugins.chain",
      "tngraph_plugins.distillers")),
    # a pipeline with a distillation block and a dmrg optimizer: still only declarations
    ("tngraph.load_spec('models/cnn_mps.yaml'); "
     "tngraph.load_spec('models/mps_classifier.yaml', None) and None; "
     "from tngraph.validate import check_optimizer; from tngraph.schema import NamedOptions; "
     "assert not check_optimizer(NamedOptions(name='dmrg', max_rank=8), None, ())",
     ("torch", "tngraph.train", "tngraph.optimizers", "tngraph_plugins.dmrg",
      "tngraph_plugins.distillers", "tngraph.layer_modules")),
])
def test_loading_a_spec_imports_no_torch_and_no_implementation(code: str,
                                                                unimported: tuple[str, ...]
                                                                ) -> None:
    probe = (f"import sys, tngraph; {code}; "
             f"print(sorted(m for m in {list(unimported)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
