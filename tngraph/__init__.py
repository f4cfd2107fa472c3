"""tngraph: declare tensor networks in YAML, plan them with cotengra, run them as torch modules.

Examples
--------
>>> import tngraph
>>> spec = tngraph.load_spec("models/mps.yaml")          # doctest: +SKIP
>>> module = tngraph.compile("models/mps.yaml")          # doctest: +SKIP
>>> print(module.report())                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tngraph.errors import CompileError, PlanError, PluginError, SpecError, TNGraphError
from tngraph.spec import Spec, load_spec

__version__ = "0.1.0"

__all__ = [
    "CompileError",
    "PlanError",
    "PluginError",
    "Spec",
    "SpecError",
    "TNGraphError",
    "TNModule",
    "compile",
    "expand",
    "load_spec",
]

if TYPE_CHECKING:
    from tngraph.compiler import TNModule


def compile(source: Any, overrides: Any = None, **kwargs: Any) -> TNModule:  # noqa: A001
    """Load, plan and compile a spec into a ``torch.nn.Module`` (``tngraph.compiler``)."""
    from tngraph.compiler import compile as _compile

    return _compile(source, overrides, **kwargs)


def expand(source: Any, overrides: Any = None) -> str:
    """The canonical raw YAML of a spec (templates expanded, parameters substituted)."""
    from tngraph.yamlio import dump_yaml

    spec = source if isinstance(source, Spec) else load_spec(source, overrides)
    return dump_yaml(spec.to_raw())


def __getattr__(name: str) -> Any:
    if name == "TNModule":
        from tngraph.compiler import TNModule

        return TNModule
    raise AttributeError(f"module 'tngraph' has no attribute {name!r}")
