"""tngraph: declare tensor networks in YAML, plan them with cotengra, run them as torch modules.

Examples
--------
>>> import tngraph
>>> spec = tngraph.load_spec("models/mps.yaml")          # doctest: +SKIP
>>> module = tngraph.compile("models/mps.yaml")          # doctest: +SKIP
>>> print(module.report())                               # doctest: +SKIP

A spec can also be a dict of the YAML structure, or built in Python:

>>> net = tngraph.Network("pair")
>>> A, B = net.node("A", i=2, a=3), net.node("B", a=3, j=4)
>>> print(tngraph.expand(net.edge(A.a, B.a).outputs(A.i, B.j)), end="")
tngraph: 1
name: pair
network:
  nodes:
    A:
      legs: {i: 2, a: 3}
    B:
      legs: {a: 3, j: 4}
  edges:
  - [A.a, B.a]
  outputs: [A.i, B.j]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tngraph.builder import Network
from tngraph.errors import CompileError, PlanError, PluginError, SpecError, TNGraphError
from tngraph.spec import Spec, load_spec
from tngraph.yamlio import dump_yaml

__version__ = "0.1.0"

__all__ = [
    "CompileError",
    "Network",
    "PlanError",
    "Pipeline",
    "PluginError",
    "Spec",
    "SpecError",
    "TNGraphError",
    "TNModule",
    "compile",
    "expand",
    "explain",
    "frozen",
    "load_spec",
]

if TYPE_CHECKING:
    from tngraph.compiler import Pipeline, TNModule, frozen


def compile(source: Any, overrides: Any = None,  # noqa: A001
            **kwargs: Any) -> TNModule | Pipeline:
    """Load, plan and compile a spec (a path, YAML text, a dict of the YAML structure, a
    :class:`Network` or a loaded :class:`Spec`) into a ``torch.nn.Module``
    (``tngraph.compiler``): a :class:`TNModule` for a network, a :class:`Pipeline` for a
    ``layers:`` spec."""
    from tngraph.compiler import compile as _compile

    return _compile(source, overrides, **kwargs)


def explain(module: Any, x: Any, method: str = "gradient", **kwargs: Any) -> Any:
    """Attributions of ``module`` on the batch ``x``, shaped like ``x``: ``gradient``,
    ``smoothgrad``, ``integrated-gradients`` or ``gradcam`` (``tngraph.attribution``)."""
    from tngraph.attribution import explain as _explain

    return _explain(module, x, method, **kwargs)


def expand(source: Any, overrides: Any = None) -> str:
    """The canonical raw YAML of a spec (a path, YAML text, dict, :class:`Network` or
    :class:`Spec`): templates expanded, parameters substituted."""
    if isinstance(source, Spec) and overrides:
        raise CompileError("overrides are applied when a spec is loaded; pass the path or text "
                           "with them, or call load_spec(path, overrides) first")
    spec = source if isinstance(source, Spec) else load_spec(source, overrides)
    return dump_yaml(spec.to_raw())


def __getattr__(name: str) -> Any:
    if name in ("TNModule", "Pipeline", "frozen"):
        from tngraph import compiler

        return getattr(compiler, name)
    raise AttributeError(f"module 'tngraph' has no attribute {name!r}")
