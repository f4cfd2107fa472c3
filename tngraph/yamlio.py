"""Safe YAML loading that remembers where every value came from.

``load_document`` parses with PyYAML's *composer* (no object construction at all) and builds
plain Python data itself, so that

* only the standard scalar tags (str, int, float, bool, null) and plain mappings / sequences
  are accepted: ``!!python/object`` and other tags are rejected, never constructed;
* duplicate mapping keys are an error instead of silently overwriting;
* anchors and aliases work, but a document that expands to more than ``MAX_VALUES`` values
  (an "alias bomb") is refused before it is expanded;
* every value and every mapping key keeps its (line, column), addressed by its path in the
  document, e.g. ``("network", "nodes", "A", "legs", "a")``.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tngraph.errors import Location, Problem, SpecError

#: Largest number of values (scalars + containers) a document may expand to.
MAX_VALUES = 200_000
#: Largest spec file accepted, in bytes.
MAX_BYTES = 16 * 1024 * 1024

DocPath = tuple[str | int, ...]

_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_MAP_TAG = "tag:yaml.org,2002:map"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_SEQ_TAG = "tag:yaml.org,2002:seq"


@dataclass(frozen=True)
class Document:
    """Plain data of a YAML file plus the position of every value and key in it."""

    data: Any
    filename: str = "<string>"
    value_marks: Mapping[DocPath, tuple[int, int]] = field(default_factory=dict)
    key_marks: Mapping[DocPath, tuple[int, int]] = field(default_factory=dict)
    #: True for plain data given in Python (:func:`document_from_data`): values are located by
    #: their key path, there are no lines
    keyed: bool = False

    def locate(self, path: DocPath, *, key: bool = False) -> Location:
        """Location of the value (or, with ``key=True``, of the key) at ``path``.

        Falls back to the nearest enclosing value that has a position, so that every
        problem gets a location even for paths that were added by substitution. In a keyed
        document (a dict spec) the location is the key path, cut to the longest part of it that
        exists in the data.
        """
        if self.keyed:
            return Location(self.filename, path=_existing_prefix(self.data, tuple(path)))
        marks = self.key_marks if key else self.value_marks
        path = tuple(path)
        if path in marks:
            line, col = marks[path]
            return Location(self.filename, line, col)
        while path:
            path = path[:-1]
            if path in self.value_marks:
                line, col = self.value_marks[path]
                return Location(self.filename, line, col)
        line, col = self.value_marks.get((), (1, 1))
        return Location(self.filename, line, col)


def _existing_prefix(data: Any, path: DocPath) -> DocPath:
    """The longest beginning of ``path`` that names a value in ``data``."""
    kept: list[str | int] = []
    for part in path:
        found = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data))
        if not found:
            break
        data = data[part]
        kept.append(part)
    return tuple(kept)


def _plain(value: Any, path: DocPath, problems: list[Problem], filename: str,
           active: set[int], count: list[int]) -> Any:
    """A copy of ``value`` as plain YAML data (see :func:`document_from_data`)."""
    count[0] += 1
    if count[0] > MAX_VALUES:
        raise SpecError(Problem(f"the spec holds more than {MAX_VALUES} values",
                                Location(filename, path=path)))
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in active:
            problems.append(Problem("the value contains itself", Location(filename, path=path),
                                    "a spec is a tree of dicts and lists; copy the shared part"))
            return None
        active.add(id(value))
        try:
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        problems.append(Problem(
                            f"key {key!r} is a {type(key).__name__}; keys must be strings",
                            Location(filename, path=path), f"write it as '{key}'"))
                        continue
                    out[key] = _plain(item, (*path, key), problems, filename, active, count)
                return out
            return [_plain(item, (*path, k), problems, filename, active, count)
                    for k, item in enumerate(value)]
        finally:
            active.discard(id(value))
    problems.append(Problem(
        f"a value of type {type(value).__name__} is not plain data: {value!r:.60}",
        Location(filename, path=path),
        "a spec holds dicts, lists, strings, numbers, booleans and None only"))
    return None


def document_from_data(data: Any, filename: str = "<dict>") -> Document:
    """A keyed :class:`Document` of a spec given as Python data (a dict of the YAML structure).

    The data is copied as plain YAML data: tuples become lists, number types (numpy's included)
    become ``int`` / ``float``; anything else, keys that are not strings and containers that
    contain themselves are located problems. Problems are located by key path
    (``<dict>: network.nodes.A.legs.i``).

    Raises
    ------
    SpecError
        With every value that is not plain data, or when ``data`` is not a mapping.

    Examples
    --------
    >>> doc = document_from_data({"name": "t", "network": {"outputs": ("A.i",)}})
    >>> doc.data["network"], str(doc.locate(("network", "outputs", 0)))
    ({'outputs': ['A.i']}, '<dict>: network.outputs[0]')
    """
    if not isinstance(data, Mapping):
        raise SpecError(Problem(f"spec must be a mapping of keys to values, found "
                                f"{type(data).__name__}", Location(filename, path=()),
                                "a spec starts with 'tngraph: 1' followed by 'name:' and "
                                "'network:'"))
    problems: list[Problem] = []
    try:
        plain = _plain(data, (), problems, filename, set(), [0])
    except RecursionError:
        raise SpecError(Problem("the spec is nested too deeply",
                                Location(filename, path=()))) from None
    if problems:
        raise SpecError(problems)
    return Document(plain, filename, keyed=True)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, filename: str) -> None:
    """Refuse alias bombs and self-referencing aliases *before* expanding anything.

    Aliases share nodes in the composed graph, so the expanded size of every node is counted
    once per distinct node (memoised): linear in the file's size, whatever it expands to.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, done = stack.pop()
        if done:
            active.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in _children(node)), MAX_VALUES + 1)
            continue
        if id(node) in sizes:
            continue
        if id(node) in active:
            line, col = _mark(node)
            raise SpecError(Problem("an alias refers to the value that contains it",
                                    Location(filename, line, col),
                                    "anchors may only be used after their value is complete"))
        active.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    if sizes[id(root)] <= MAX_VALUES:
        return
    node = root   # report the smallest value that is too big: usually an anchored one
    while True:
        big = [c for c in _children(node) if sizes[id(c)] > MAX_VALUES]
        if not big:
            break
        node = big[0]
    line, col = _mark(node)
    raise SpecError(Problem(f"document expands to more than {MAX_VALUES} values",
                            Location(filename, line, col),
                            "anchors/aliases nest too deeply (an 'alias bomb'?); "
                            "write the values out"))


class _Builder:
    def __init__(self, filename: str):
        self.filename = filename
        self.value_marks: dict[DocPath, tuple[int, int]] = {}
        self.key_marks: dict[DocPath, tuple[int, int]] = {}
        self.count = 0
        self.problems: list[Problem] = []

    def loc(self, node: yaml.Node) -> Location:
        line, col = _mark(node)
        return Location(self.filename, line, col)

    def build(self, node: yaml.Node, path: DocPath) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise SpecError(
                Problem(
                    f"document expands to more than {MAX_VALUES} values",
                    self.loc(node),
                    "anchors/aliases nest too deeply (an 'alias bomb'?); write the values out",
                )
            )
        self.value_marks.setdefault(path, _mark(node))
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                return self._bad_tag(node)
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(
                        Problem("merge keys ('<<') are not supported", self.loc(key_node),
                                "write the keys out")
                    )
                    continue
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                    self.problems.append(
                        Problem("mapping keys must be plain scalars", self.loc(key_node))
                    )
                    continue
                key = self._scalar(key_node)
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    first = self.key_marks.get(path + (key,), (0, 0))
                    self.problems.append(
                        Problem(
                            f"duplicate key '{key}' (first defined at line {first[0]})",
                            self.loc(key_node),
                            "each key may appear once per mapping; rename or remove one",
                        )
                    )
                    continue
                self.key_marks[path + (key,)] = _mark(key_node)
                out[key] = self.build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                return self._bad_tag(node)
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.tag == _TIMESTAMP_TAG:
            return str(node.value)   # a date such as a name or version stays its text
        if node.tag not in _SCALAR_TAGS:
            return self._bad_tag(node)
        return self._scalar(node)

    def _bad_tag(self, node: yaml.Node) -> None:
        self.problems.append(
            Problem(
                f"YAML tag '{node.tag}' is not allowed",
                self.loc(node),
                "spec files hold plain data only: mappings, lists, strings, numbers, booleans",
            )
        )
        return None

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        # Resolve the scalar with SafeLoader's constructors: plain values, never objects.
        constructor = yaml.SafeLoader.yaml_constructors[node.tag]
        try:
            return constructor(_SAFE_CONSTRUCTOR, node)
        except (ValueError, yaml.YAMLError) as exc:
            self.problems.append(Problem(f"bad scalar: {exc}", self.loc(node)))
            return None


_SAFE_CONSTRUCTOR = yaml.SafeLoader("")


def _yaml_error_problem(exc: yaml.YAMLError, filename: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    hint = None
    if "\\t" in problem or "tab" in problem.lower():
        hint = "indent with spaces; YAML does not allow tabs for indentation"
    loc = Location(filename, mark.line + 1, mark.column + 1) if mark else Location(filename, 1, 1)
    return Problem(message, loc, hint)


def _decode(raw: bytes, filename: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise SpecError(
            Problem(
                f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
                Location(filename, line, col),
                "save the spec as UTF-8 text",
            )
        ) from None


def load_document(source: str | bytes, filename: str = "<string>") -> Document:
    """Parse YAML text into a :class:`Document`, rejecting anything but plain data.

    Parameters
    ----------
    source
        The YAML text (``bytes`` are decoded as UTF-8).
    filename
        Name used in error locations.

    Raises
    ------
    SpecError
        With every problem found (syntax, tags, duplicate keys, empty or non-mapping document).

    Examples
    --------
    >>> doc = load_document("a: 1\\nb: [x, y]\\n")
    >>> doc.data, str(doc.locate(("b", 1)))
    ({'a': 1, 'b': ['x', 'y']}, '<string>:2:8')
    """
    if isinstance(source, bytes):
        if len(source) > MAX_BYTES:
            raise SpecError(Problem(f"file is larger than {MAX_BYTES} bytes",
                                    Location(filename, 1, 1)))
        source = _decode(source, filename)
    elif source.startswith("\ufeff"):
        source = source[1:]
    try:
        nodes = list(yaml.compose_all(source, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise SpecError(_yaml_error_problem(exc, filename)) from None
    except RecursionError:
        raise SpecError(Problem("document is nested too deeply", Location(filename, 1, 1))) \
            from None
    # a document that is only a '---' (e.g. a trailing separator) holds nothing: skip it
    nodes = [n for n in nodes if n is not None and not (
        isinstance(n, yaml.ScalarNode) and n.tag == "tag:yaml.org,2002:null" and n.value == "")]
    if not nodes:
        raise SpecError(
            Problem("spec file is empty", Location(filename, 1, 1),
                    "a spec starts with 'tngraph: 1' followed by 'name:' and 'network:'")
        )
    if len(nodes) > 1:
        line, col = _mark(nodes[1])
        raise SpecError(
            Problem("spec file holds more than one YAML document", Location(filename, line, col),
                    "keep one spec per file (remove the second '---')")
        )
    root = nodes[0]
    builder = _Builder(filename)
    if not isinstance(root, yaml.MappingNode):
        kind = "a list" if isinstance(root, yaml.SequenceNode) else "a single value"
        raise SpecError(
            Problem(f"spec must be a mapping of keys to values, found {kind}", builder.loc(root),
                    "a spec starts with 'tngraph: 1' followed by 'name:' and 'network:'")
        )
    _check_expansion(root, filename)
    try:
        data = builder.build(root, ())
    except RecursionError:
        raise SpecError(Problem("document is nested too deeply", builder.loc(root))) from None
    if builder.problems:
        raise SpecError(builder.problems)
    return Document(data, filename, builder.value_marks, builder.key_marks)


def read_document(path: str | Path) -> Document:
    """Read and parse a spec file; a missing or unreadable file is a located SpecError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(Problem(f"no such file: {path}", None,
                                "check the path; spec files usually end in .yaml")) from None
    except IsADirectoryError:
        raise SpecError(Problem(f"{path} is a directory, not a spec file")) from None
    except OSError as exc:
        raise SpecError(Problem(f"cannot read {path}: {exc.strerror}")) from None
    return load_document(raw, str(path))


def dump_yaml(data: Any) -> str:
    """Write plain data as block-style YAML, keeping key order; short lists inline."""

    class _Dumper(yaml.SafeDumper):
        pass

    def _repr_list(dumper: yaml.SafeDumper, value: list) -> yaml.Node:
        flow = all(not isinstance(v, (dict, list)) for v in value) or all(
            isinstance(v, list) and all(not isinstance(w, (dict, list)) for w in v)
            for v in value
        )
        flat = all(not isinstance(v, (dict, list)) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value,
                                         flow_style=flat if flow else False)

    def _repr_dict(dumper: yaml.SafeDumper, value: dict) -> yaml.Node:
        flow = bool(value) and all(not isinstance(v, (dict, list)) for v in value.values())
        return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(),
                                        flow_style=flow and len(value) <= 8)

    _Dumper.add_representer(list, _repr_list)
    _Dumper.add_representer(dict, _repr_dict)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)
