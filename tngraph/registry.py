"""Named registries filled from entry points, and deferred references to an entry's heavy part.

A :class:`Registry` maps a name to an object of one kind. Every entry comes from an entry point
of the registry's group (``tngraph.templates`` and so on), tngraph's own built-ins included, or
from :meth:`Registry.register` at run time. Entry points are loaded lazily *by name*: asking for
``adam`` loads the ``adam`` entry point and no other, so that looking one entry up never imports
the code of the others. A plugin that fails to import is remembered with its reason and reported
by name, while the rest keep working. A spec only ever names a registered entry: it cannot make
tngraph import a module of its choosing.

An entry is best a light *declaration* (its name, options model and description) whose heavy
part is a :class:`Deferred` reference, loaded on first call: validation reads the options model
without importing torch or the implementation.

This module imports no other tngraph module but :mod:`tngraph.errors`.

Examples
--------
>>> reg = Registry("widget", "tngraph.widgets")
>>> reg.register("knob", object())
>>> reg.list()
['knob']
>>> Deferred("math:sqrt")(16.0)
4.0
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tngraph.errors import PluginError, did_you_mean

T = TypeVar("T")

#: the distribution whose entry points are tngraph's built-ins
TNGRAPH = "tngraph"


@dataclass(frozen=True)
class PluginInfo:
    """Where a registry entry came from (name, kind, distribution, version, load error)."""

    name: str
    kind: str
    distribution: str
    version: str
    error: str | None = None


class Registry(Generic[T]):
    """Name -> object registry of one plugin kind, filled lazily from an entry-point group.

    Parameters
    ----------
    kind
        What an entry is, for messages (``template``, ``feature map``, ...).
    group
        The entry-point group (``tngraph.templates``).
    expects
        What an entry must be: a class, classes, or a predicate; others are reported broken.
    builtin
        The distribution that must declare entry points in ``group`` (``"tngraph"`` for
        tngraph's own registries). When it declares none, tngraph runs from a source tree that
        was never installed (or whose installed metadata is older than the code), and every
        lookup says how to install it instead of reporting the built-ins as unknown.
    """

    def __init__(self, kind: str, group: str,
                 expects: type | tuple[type, ...] | Callable[[Any], bool] | None = None,
                 builtin: str | None = None):
        self.kind = kind
        self.group = group
        self._expects = expects
        self._builtin = builtin
        self._entries: dict[str, T] = {}
        self._info: dict[str, PluginInfo] = {}
        self._clashes: list[PluginInfo] = []
        #: entry points by name, tngraph's own first (read once, loaded name by name)
        self._points: dict[str, list[Any]] | None = None
        self._not_installed = ""

    # -- filling -------------------------------------------------------------------------
    def register(self, name: str, obj: T, *, distribution: str = "<runtime>",
                 version: str = "", replace: bool = False) -> None:
        """Add ``obj`` under ``name``; a second registration of a name is refused."""
        if not name.isidentifier():
            raise PluginError(f"{self.kind} name {name!r} is not an identifier")
        self._load(name)
        if name in self._entries and not replace:
            raise PluginError(
                f"{self.kind} '{name}' is already registered "
                f"(by {self._info[name].distribution}); pass replace=True to override"
            )
        self._entries[name] = obj
        self._info[name] = PluginInfo(name, self.kind, distribution, version)

    def _entry_points(self) -> dict[str, list[Any]]:
        """The entry points not loaded yet, by name; read from the metadata once."""
        if self._points is None:
            try:
                found = importlib.metadata.entry_points(group=self.group)
            except Exception:  # pragma: no cover - broken metadata must not break the CLI
                found = ()
            # tngraph's own entry points first: a third-party plugin cannot shadow a built-in
            ordered = sorted(found, key=lambda ep: _distribution(ep)[0] != TNGRAPH)
            if self._builtin is not None and not any(
                    _distribution(ep)[0] == self._builtin for ep in ordered):
                self._not_installed = (
                    f"no built-in {self.kind}s are registered: {self._builtin}'s entry points "
                    f"({self.group}) are missing, so this {self._builtin} runs from a source "
                    "tree that is not installed, or its installed metadata is older than its "
                    f"code; run `pip install -e .` in the source tree (or `pip install "
                    f"{self._builtin}`)")
            points: dict[str, list[Any]] = {}
            for ep in ordered:
                points.setdefault(ep.name, []).append(ep)
            self._points = points
        if self._not_installed:
            raise PluginError(self._not_installed)
        return self._points

    def _load(self, name: str | None = None) -> None:
        """Load the entry points called ``name`` (every one when ``None``) not loaded yet."""
        points = self._entry_points()
        names = list(points) if name is None else [name] if name in points else []
        for key in names:
            for ep in points.pop(key):
                self._load_point(ep)

    def _load_point(self, ep: Any) -> None:
        dist_name, dist_version = _distribution(ep)
        if ep.name in self._info:
            owner = self._info[ep.name]
            if owner.distribution != dist_name:
                self._clashes.append(PluginInfo(
                    ep.name, self.kind, dist_name, dist_version,
                    error=f"name clash: '{ep.name}' is already provided by "
                          f"{owner.distribution}; not loaded (rename the entry point)"))
            return
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - report any plugin failure by name
            self._info[ep.name] = PluginInfo(ep.name, self.kind, dist_name, dist_version,
                                             error=f"{type(exc).__name__}: {exc}")
            return
        problem = self._wrong_shape(obj)
        if problem:
            self._info[ep.name] = PluginInfo(ep.name, self.kind, dist_name, dist_version,
                                             error=problem)
            return
        self._entries[ep.name] = obj
        self._info[ep.name] = PluginInfo(ep.name, self.kind, dist_name, dist_version)

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
        """The entry called ``name``; unknown or broken names raise a PluginError with options.

        Only the entry points called ``name`` are loaded (all of them for the error of an
        unknown name, which lists the valid ones).
        """
        self._load(name)
        if name in self._entries:
            return self._entries[name]
        info = self._info.get(name)
        if info is not None and info.error:
            raise PluginError(f"{self.kind} plugin '{name}' failed to load: {info.error}")
        raise PluginError(f"unknown {self.kind} '{name}'; {did_you_mean(name, self.list())}")

    def list(self) -> list[str]:
        """Sorted names of the working entries (loads every entry point)."""
        self._load()
        return sorted(self._entries)

    def info(self) -> list[PluginInfo]:
        """Every entry, including plugins that failed to load or clashed (with the reason)."""
        self._load()
        return [self._info[k] for k in sorted(self._info)] + list(self._clashes)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._load(name)
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())


def _distribution(ep: Any) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", ""
    return dist.metadata["Name"], dist.version


class Deferred:
    """A callable named ``"module:attribute"``, imported when it is first called.

    The heavy half of a registry entry: an optimizer declaration's ``create`` or a layer type's
    ``build`` can be a ``Deferred``, so that reading the entry (its options model, for
    validation) imports neither torch nor the implementation. It compares, hashes and pickles
    by its reference.

    Examples
    --------
    >>> hypot = Deferred("math:hypot")
    >>> hypot(3.0, 4.0), hypot == Deferred("math:hypot")
    (5.0, True)
    >>> Deferred("math:no_such_function")()
    Traceback (most recent call last):
    ...
    tngraph.errors.PluginError: cannot load math:no_such_function: AttributeError: ...
    """

    __slots__ = ("reference", "_target")

    def __init__(self, reference: str):
        module, sep, attribute = reference.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"a deferred reference is 'module:attribute', got {reference!r}")
        self.reference = reference
        self._target: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        """The referenced object (imported once)."""
        if self._target is None:
            module, _, attribute = self.reference.partition(":")
            try:
                target = importlib.import_module(module)
                for part in attribute.split("."):
                    target = getattr(target, part)
            except Exception as exc:  # noqa: BLE001 - name what could not be loaded
                raise PluginError(f"cannot load {self.reference}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            self._target = target
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deferred) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    def __repr__(self) -> str:
        return f"Deferred({self.reference!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Deferred, (self.reference,))
