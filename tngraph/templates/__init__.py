"""Built-in network templates and the template registry.

A template turns a few options into the raw network form (nodes, edges, inputs, outputs)::

    network:
      template: mps
      sites: 8
      phys_dim: 2
      bond_dim: "${chi}"

Each template declares its options as a pydantic model (unknown options are errors with a
"did you mean" hint) and an ``expand(options) -> dict`` that returns raw network data. The
built-ins (``mps``, ``mpo``, ``tt_linear``, ``peps``, one submodule each) register through the
``tngraph.templates`` entry-point group like a third party's; :func:`register_template` adds one
at run time. The :class:`~tngraph.kinds.Template` record and the registry live in
:mod:`tngraph.kinds`; this package only expands template calls and never imports its submodules.

Examples
--------
>>> sorted(list_templates())[:3]
['mpo', 'mps', 'peps']
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tngraph.errors import Problem, SpecError, did_you_mean
from tngraph.kinds import (
    TEMPLATES,
    Template,
    TemplateError,
    TemplateOptions,
    get_template,
    list_templates,
    register_template,
)
from tngraph.schema import pydantic_problems
from tngraph.yamlio import DocPath, Document

__all__ = ["TEMPLATES", "Template", "TemplateError", "TemplateOptions", "expand_template",
           "get_template", "list_templates", "register_template"]


def expand_template(call: dict[str, Any], doc: Document | None = None,
                    base: DocPath = ("network",)) -> dict[str, Any]:
    """Expand a ``network: {template: NAME, ...options}`` mapping into raw network data.

    Problems are raised as a SpecError located at the template call's keys (the call sits at
    ``base`` in the document).
    """
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
