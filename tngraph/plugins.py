"""Named registries filled from entry points (templates, feature maps, initialisers, ...).

A :class:`Registry` maps a name to an object of one kind. Built-in entries register through the
same entry-point groups as third-party ones (``tngraph.templates`` and so on); a plugin that fails
to import is remembered with its reason and reported by name, while the rest keep working. A spec
only ever names a registered entry: it cannot make tngraph import a module of its choosing.

Examples
--------
>>> reg = Registry("widgets", "tngraph.widgets")
>>> reg.register("knob", object())
>>> reg.list()
['knob']
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tngraph.errors import PluginError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class PluginInfo:
    """Where a registry entry came from (name, kind, distribution, version, load error)."""

    name: str
    kind: str
    distribution: str
    version: str
    error: str | None = None


class Registry(Generic[T]):
    """Name -> object registry of one plugin kind, lazily filled from an entry-point group."""

    def __init__(self, kind: str, group: str, builtins: Callable[[], dict[str, T]] | None = None,
                 expects: type | tuple[type, ...] | Callable[[Any], bool] | None = None):
        self.kind = kind
        self.group = group
        self._builtins = builtins
        #: what an entry must be (a class, classes, or a predicate); others are reported broken
        self._expects = expects
        self._entries: dict[str, T] = {}
        self._info: dict[str, PluginInfo] = {}
        self._clashes: list[PluginInfo] = []
        self._loaded = False

    # -- filling -------------------------------------------------------------------------
    def register(self, name: str, obj: T, *, distribution: str = "<runtime>",
                 version: str = "", replace: bool = False) -> None:
        """Add ``obj`` under ``name``; a second registration of a name is refused."""
        if not name.isidentifier():
            raise PluginError(f"{self.kind} name {name!r} is not an identifier")
        if name in self._entries and not replace:
            raise PluginError(
                f"{self.kind} '{name}' is already registered "
                f"(by {self._info[name].distribution}); pass replace=True to override"
            )
        self._entries[name] = obj
        self._info[name] = PluginInfo(name, self.kind, distribution, version)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            entry_points = importlib.metadata.entry_points(group=self.group)
        except Exception:  # pragma: no cover - broken metadata must not break the CLI
            entry_points = ()
        # tngraph's own entry points first: a third-party plugin cannot shadow a built-in
        ordered = sorted(entry_points, key=lambda ep: _distribution(ep)[0] != "tngraph")
        for ep in ordered:
            dist_name, dist_version = _distribution(ep)
            if ep.name in self._entries or (ep.name in self._info and self._info[ep.name].error):
                owner = self._info[ep.name]
                if owner.distribution != dist_name:
                    self._clashes.append(PluginInfo(
                        ep.name, self.kind, dist_name, dist_version,
                        error=f"name clash: '{ep.name}' is already provided by "
                              f"{owner.distribution}; not loaded (rename the entry point)"))
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - report any plugin failure by name
                self._info[ep.name] = PluginInfo(ep.name, self.kind, dist_name, dist_version,
                                                 error=f"{type(exc).__name__}: {exc}")
                continue
            problem = self._wrong_shape(obj)
            if problem:
                self._info[ep.name] = PluginInfo(ep.name, self.kind, dist_name, dist_version,
                                                 error=problem)
                continue
            self._entries[ep.name] = obj
            self._info[ep.name] = PluginInfo(ep.name, self.kind, dist_name, dist_version)
        # Running from a source tree that was never installed: no entry points exist yet.
        if self._builtins is not None:
            for name, obj in self._builtins().items():
                if name not in self._entries:
                    self._entries[name] = obj
                    self._info[name] = PluginInfo(name, self.kind, "tngraph", "")

    def _wrong_shape(self, obj: Any) -> str | None:
        """Why ``obj`` cannot be an entry of this registry (``None`` if it can)."""
        expects = self._expects
        if expects is None:
            return None
        if isinstance(expects, (type, tuple)):
            if isinstance(obj, expects):
                return None
            names = expects if isinstance(expects, tuple) else (expects,)
            return (f"not a {self.kind}: expected {' or '.join(t.__name__ for t in names)}, "
                    f"got {type(obj).__name__}")
        return None if expects(obj) else f"not a {self.kind}: got {type(obj).__name__}"

    # -- lookup --------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The entry called ``name``; unknown or broken names raise a PluginError with options."""
        self._load()
        if name in self._entries:
            return self._entries[name]
        info = self._info.get(name)
        if info is not None and info.error:
            raise PluginError(f"{self.kind} plugin '{name}' failed to load: {info.error}")
        raise PluginError(f"unknown {self.kind} '{name}'; {did_you_mean(name, self.list())}")

    def list(self) -> list[str]:
        """Sorted names of the working entries."""
        self._load()
        return sorted(self._entries)

    def info(self) -> list[PluginInfo]:
        """Every entry, including plugins that failed to load or clashed (with the reason)."""
        self._load()
        return [self._info[k] for k in sorted(self._info)] + list(self._clashes)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())


def _distribution(ep: Any) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", ""
    return dist.metadata["Name"], dist.version


def registries() -> list[Registry[Any]]:
    """Every registry of tngraph, in the order ``tngraph plugins list`` shows them."""
    from tngraph.data import DATASETS
    from tngraph.distill import DISTILLERS
    from tngraph.featuremaps import FEATURE_MAPS
    from tngraph.initializers import INITIALIZERS
    from tngraph.layers import LAYERS
    from tngraph.optimizers import OPTIMIZERS
    from tngraph.templates import TEMPLATES

    return [TEMPLATES, FEATURE_MAPS, INITIALIZERS, LAYERS, DATASETS, OPTIMIZERS, DISTILLERS]
