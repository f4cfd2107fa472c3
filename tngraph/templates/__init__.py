"""Built-in network templates and the template registry.

A template turns a few options into the raw network form (nodes, edges, inputs, outputs)::

    network:
      template: mps
      sites: 8
      phys_dim: 2
      bond_dim: "${chi}"

Each template declares its options as a pydantic model (unknown options are errors with a
"did you mean" hint) and an ``expand(options) -> dict`` that returns raw network data. Third
parties register more through the ``tngraph.templates`` entry-point group or
:func:`register_template`.

Examples
--------
>>> sorted(list_templates())[:3]
['mpo', 'mps', 'peps']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tngraph.errors import Problem, SpecError, did_you_mean
from tngraph.plugins import Registry
from tngraph.yamlio import DocPath, Document


class TemplateOptions(BaseModel):
    """Base class of template option models (unknown options are errors).

    Strict like the raw form's dimensions: ``sites: "4"`` or ``phys_dim: true`` are mistakes,
    not 4 and 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


@dataclass(frozen=True)
class Template:
    """A named network template: an options model and a function expanding it."""

    name: str
    options: type[TemplateOptions]
    expand: Callable[[Any], dict[str, Any]]
    description: str = ""


class TemplateError(ValueError):
    """Raised by a template's ``expand`` for options that are individually valid but
    inconsistent together; ``option`` names the offending key for the error location."""

    def __init__(self, message: str, option: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.option = option
        self.hint = hint


def _builtins() -> dict[str, Template]:
    from tngraph.templates import mpo, mps, peps, tt_linear

    return {t.name: t for t in (mps.TEMPLATE, mpo.TEMPLATE, tt_linear.TEMPLATE, peps.TEMPLATE)}


TEMPLATES: Registry[Template] = Registry("template", "tngraph.templates", _builtins,
                                         expects=Template)


def register_template(template: Template, **kwargs: Any) -> None:
    """Register ``template`` under its name (a name can be registered once)."""
    TEMPLATES.register(template.name, template, **kwargs)


def get_template(name: str) -> Template:
    """The template called ``name`` (PluginError listing valid names if unknown)."""
    return TEMPLATES.get(name)


def list_templates() -> list[str]:
    """Names of all registered templates."""
    return TEMPLATES.list()


def expand_template(call: dict[str, Any], doc: Document | None = None,
                    base: DocPath = ("network",)) -> dict[str, Any]:
    """Expand a ``network: {template: NAME, ...options}`` mapping into raw network data.

    Problems are raised as a SpecError located at the template call's keys (the call sits at
    ``base`` in the document).
    """
    from tngraph.spec import pydantic_problems

    doc = doc or Document({})
    name = call.get("template")
    if not isinstance(name, str) or name not in TEMPLATES:
        raise SpecError(Problem(f"unknown template {name!r}", doc.locate((*base, "template")),
                                did_you_mean(str(name), list_templates())))
    template = get_template(name)
    raw_options = {k: v for k, v in call.items() if k != "template"}
    try:
        options = template.options.model_validate(raw_options)
    except ValidationError as exc:
        raise SpecError(pydantic_problems(exc, template.options, doc, base,
                                          what=f"template '{name}'")) from None
    try:
        return template.expand(options)
    except TemplateError as exc:
        path = (*base, exc.option) if exc.option in raw_options else (*base, "template")
        raise SpecError(Problem(f"template '{name}': {exc}", doc.locate(path), exc.hint)) \
            from None
