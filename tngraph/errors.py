"""Error types of tngraph.

Every error a user can cause derives from :class:`TNGraphError`; the CLI maps those to exit
code 2 and prints them without a traceback. Anything else is an internal error (exit code 1).

A :class:`SpecError` carries one or more :class:`Problem` objects, each with a location in the
spec file, so that all mistakes of a spec are reported at once, compiler style::

    models/mps.yaml:14:7: error: edge joins A3.r (dim 16) to A4.l (dim 8); dimensions must match
      hint: set both to ${bond_dim}
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a source file (1-based line and column), or, for a spec given as a Python
    dict, the key path of the value (``line`` and ``column`` are 0 then).

    Examples
    --------
    >>> str(Location("models/mps.yaml", 14, 7))
    'models/mps.yaml:14:7'
    >>> str(Location("<dict>", path=("network", "edges", 2, 0)))
    '<dict>: network.edges[2][0]'
    """

    filename: str
    line: int = 0
    column: int = 0
    #: the key path of a value in a dict spec (``None`` for a position in a file)
    path: tuple[str | int, ...] | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.filename}: {format_key_path(self.path)}" if self.path else \
                self.filename
        return f"{self.filename}:{self.line}:{self.column}"


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def format_key_path(path: Sequence[str | int]) -> str:
    """A key path as people write it: ``network.nodes.A.legs.i``, list items as ``[k]`` and keys
    that are not identifiers quoted (``nodes['a b']``).

    Examples
    --------
    >>> format_key_path(("network", "edges", 0, 1))
    'network.edges[0][1]'
    >>> format_key_path(("params", "a.b"))
    "params['a.b']"
    """
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _KEY_RE.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


@dataclass(frozen=True)
class Problem:
    """One user mistake: where, what, and how to fix it."""

    message: str
    location: Location | None = None
    hint: str | None = None

    def format(self) -> str:
        """Render as ``FILE:LINE:COL: error: message`` (``<dict>: KEY.PATH: error: message`` for
        a spec given as a dict) plus an indented hint line."""
        where = f"{self.location}: " if self.location else ""
        message = self.message
        if self.location is not None and self.location.path:
            # the key path is the location already: say it once
            message = message.removeprefix(f"{format_key_path(self.location.path)}: ")
        text = f"{where}error: {message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class TNGraphError(Exception):
    """Base class of all errors caused by user input (CLI exit code 2)."""


class SpecError(TNGraphError):
    """A spec file is malformed or inconsistent; holds every problem found."""

    def __init__(self, problems: Sequence[Problem] | Problem):
        if isinstance(problems, Problem):
            problems = [problems]
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(self.format())

    def format(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class PlanError(TNGraphError):
    """A contraction plan cannot be made or exceeds a limit (e.g. the memory limit)."""

    def __init__(self, message: str, report: str | None = None):
        super().__init__(message)
        #: a cost report to show beside the error, when one could be made
        self.report = report


class CompileError(TNGraphError):
    """A planned network cannot be turned into a module, or is called with wrong inputs."""


class PluginError(TNGraphError):
    """A plugin is unknown, broken, or registered twice."""


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """Return a hint naming the closest valid option(s) and listing all of them.

    Examples
    --------
    >>> did_you_mean("bond", ["bond_dim", "phys_dim"])
    "did you mean 'bond_dim'? valid: bond_dim, phys_dim"
    """
    valid = sorted(set(valid))
    prefixed = sorted((v for v in valid if v.startswith(name) or name.startswith(v)),
                      key=lambda v: -difflib.SequenceMatcher(None, name, v).ratio())
    close = prefixed[:1] or difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    listing = ", ".join(valid) if len(valid) <= 12 else ", ".join(valid[:12]) + ", ..."
    if close:
        return f"did you mean '{close[0]}'? valid: {listing}"
    return f"valid: {listing}" if valid else "there are none"
