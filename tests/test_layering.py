"""The import contract: tngraph is a layered package (docs/architecture.md).

Read from the source (runtime imports, ``TYPE_CHECKING`` blocks excluded): the import graph of
``tngraph`` and ``tngraph_plugins`` has no cycle, no module imports a higher layer, ``tngraph``
never imports ``tngraph_plugins``, and function-local imports of tngraph modules appear only
where they defer torch (the package's front door) or keep the CLI's start-up short.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"tngraph": ROOT / "tngraph", "tngraph_plugins": ROOT / "plugins" / "tngraph_plugins"}

#: every module's layer (a package stands for its submodules); a module imports only from its
#: own layer (without cycles) and the layers below
LAYERS: dict[str, int] = {
    "tngraph.errors": 0, "tngraph.files": 0, "tngraph.yamlio": 0, "tngraph.registry": 0,
    "tngraph.schema": 1, "tngraph.kinds": 1, "tngraph.throughput": 1,
    "tngraph.templates": 2, "tngraph.featuremaps": 2, "tngraph.initializers": 2,
    "tngraph.graph": 2, "tngraph.layers": 2, "tngraph.validate": 2, "tngraph.spec": 2,
    "tngraph.plan": 2, "tngraph.report": 2, "tngraph.data": 2, "tngraph.builder": 2,
    "tngraph.executor": 3, "tngraph.linalg": 3, "tngraph.layer_modules": 3,
    "tngraph.compiler": 3,
    "tngraph.optimizers": 4, "tngraph.train": 4, "tngraph.decompose": 4, "tngraph.distill": 4,
    "tngraph.tensorize": 4, "tngraph.inspect_run": 4, "tngraph.attribution": 4,
    "tngraph.draw": 4, "tngraph": 4,
    "tngraph.cli": 5, "tngraph_plugins": 5,
}
#: the only modules whose functions may import tngraph modules: the front door defers torch
#: (``tngraph.compile``), the CLI keeps ``tngraph --help`` from importing torch
LOCAL_IMPORTS_ALLOWED = {"tngraph", "tngraph.cli"}
#: function-local tngraph imports per 1,000 lines, at most (cotengra has about 1.1)
LOCAL_IMPORT_RATE = 2.0


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    local: bool


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for both packages."""
    found = {}
    for root in PACKAGES.values():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """The tngraph / tngraph_plugins modules ``module`` imports at run time."""
    is_package = path.name == "__init__.py"

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
            base = ".".join([*parts, base] if base else parts)
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]

    def visit(node: ast.AST, local: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    yield from visit(other, local)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in {_resolve(t, known) for t in targets(child)} - {None, module}:
                    yield Import(module, target, child.lineno, local)
            yield from visit(child, local or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from visit(ast.parse(path.read_text()), False)


KNOWN = modules()
IMPORTS = [imp for module, path in KNOWN.items() for imp in imports(module, path, KNOWN)]


def _owner(module: str) -> str | None:
    """The entry of LAYERS that ``module`` belongs to: itself, or the package holding it (the
    ``tngraph`` front door holds nothing but itself)."""
    while module and module not in LAYERS:
        module = module.rpartition(".")[0]
        if module == "tngraph":
            return None
    return module or None


def layer(module: str) -> int:
    owner = _owner(module)
    if owner is None:
        raise AssertionError(f"{module} has no layer: add it to LAYERS in {__file__} and to "
                             "docs/architecture.md")
    return LAYERS[owner]


def test_every_module_has_a_layer() -> None:
    assert [m for m in KNOWN if _owner(m) is None] == []


def test_the_import_graph_has_no_cycle() -> None:
    graph = nx.DiGraph((imp.source, imp.target) for imp in IMPORTS)
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert cycles == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{imp.source}:{imp.line} imports {imp.target} (layer {layer(imp.target)} > "
              f"{layer(imp.source)})" for imp in IMPORTS if layer(imp.target) > layer(imp.source)]
    assert upward == []


def test_tngraph_never_imports_tngraph_plugins() -> None:
    assert [f"{i.source}:{i.line}" for i in IMPORTS if i.source.partition(".")[0] == "tngraph"
            and i.target.partition(".")[0] == "tngraph_plugins"] == []


def test_function_local_imports_only_defer_torch_or_cli_start_up() -> None:
    local = [imp for imp in IMPORTS if imp.local]
    assert [f"{i.source}:{i.line} {i.target}" for i in local
            if i.source not in LOCAL_IMPORTS_ALLOWED] == []
    lines = sum(len(path.read_text().splitlines()) for path in KNOWN.values())
    statements = {(i.source, i.line) for i in local}
    assert len(statements) / lines * 1000 <= LOCAL_IMPORT_RATE


@pytest.mark.parametrize("group", ["templates", "feature_maps", "initializers", "layers",
                                   "datasets", "optimizers", "distillers"])
def test_every_builtin_is_declared_as_an_entry_point(group: str) -> None:
    """Each registry entry object defined in tngraph's own modules has its entry point."""
    import importlib

    from tngraph import kinds

    tomllib = pytest.importorskip("tomllib")         # Python 3.11+
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "entry-points"][f"tngraph.{group}"]
    registry = {r.group: r for r in kinds.registries()}[f"tngraph.{group}"]
    owners = {value.partition(":")[0] for value in declared.values()}
    defined = set()
    for owner in owners:
        for name, value in vars(importlib.import_module(owner)).items():
            if (registry._expects not in (None, callable) and registry._wrong_shape(value) is None
                    and name.isupper()):
                defined.add(getattr(value, "name", name))
    assert defined <= set(declared)
    for name, value in declared.items():
        module, _, attribute = value.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
        assert registry._wrong_shape(entry) is None
        assert getattr(entry, "name", name) == name
