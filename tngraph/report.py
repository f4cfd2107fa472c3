"""Cost reports of a plan: a text table for people, JSON for scripts.

``format_report(plan, spec, fmt="text"|"json")``. The JSON object carries (documented in
``docs/spec.md``): ``name``, ``template``, ``nodes``, ``edges``, ``inputs``, ``outputs``,
``batch_size``, ``params``, ``dense_size``, ``compression``, ``flops`` (the lowest found),
``path`` and ``executed_flops`` (the path the ``network`` execution runs), ``naive_flops``,
``speedup``, ``largest_intermediate`` and ``peak_intermediates`` (the most alive at once; each
``elements``, ``bytes``), ``dtype``, ``memory_limit``,
``estimated_time`` (``text``, ``log10_seconds``, ``flops_per_second``, ``rate_source``),
``time_budget`` (seconds or null), ``over_limit``, ``sliced`` (``indices``, ``slices``),
``path_finder``, ``execution``,
``search_time``, ``cache_hit``, ``notes`` and ``steps`` (each ``step``, ``left``, ``right``,
``result``, ``contracted``, ``legs``, ``equation`` (in letters; in the spec's names for a step
of more than 52 indices), ``flops``, ``size``; the executed path's).

Examples
--------
>>> import tngraph, json
>>> module = tngraph.compile("tngraph: 1\\nname: t\\nnetwork: {template: mps, sites: 3, "
...                          "phys_dim: 2, bond_dim: 2}\\n", cache=False)
>>> json.loads(module.report("json"))["params"]
16
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from tngraph.errors import PlanError, did_you_mean
from tngraph.graph import dense_size, parameter_count
from tngraph.layers import summarize_layers
from tngraph.plan import EINSUM_LETTERS, Plan, Step, format_bytes
from tngraph.schema import Spec
from tngraph.throughput import format_duration

FORMATS = ("text", "json")


def check_format(fmt: object) -> str:
    """``fmt`` if it names a report format (:data:`FORMATS`), else a PlanError listing them.

    >>> check_format("json")
    'json'
    """
    if isinstance(fmt, str) and fmt in FORMATS:
        return fmt
    shown = did_you_mean(fmt, FORMATS) if isinstance(fmt, str) and fmt else \
        f"valid: {', '.join(FORMATS)}"
    raise PlanError(f"unknown report format {fmt!r}; {shown}")


def _sci(x: float) -> str:
    """A count for people: digits up to 10^5, then mantissa, exponent and the power of ten;
    integers beyond a float's range (the naive FLOPs of a long chain) are written exactly so.

    Examples
    --------
    >>> _sci(1234), _sci(1234567), _sci(10 ** 400)
    ('1,234', '1.235e+06 (10^6.09)', '1.000e+400 (10^400.00)')
    """
    if x == 0:
        return "0"
    if abs(x) < 1e5:
        return f"{x:,.0f}" if float(x).is_integer() else f"{x:.3g}"
    log = math.log10(abs(x))
    exponent = math.floor(log)
    mantissa = round(10 ** (log - exponent), 3)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    return f"{'-' if x < 0 else ''}{mantissa:.3f}e+{exponent:02d} (10^{log:.2f})"


def _too_many_letters(step: Step) -> bool:
    """Whether a step has more distinct indices than an einsum has letters (its equation is
    then written in the spec's names)."""
    return len({*step.left_inds, *step.right_inds, *step.out_inds}) > EINSUM_LETTERS


def report_data(plan: Plan, spec: Spec) -> dict[str, Any]:
    """The report as plain data (what ``fmt="json"`` prints)."""
    problem = plan.problem
    names = problem.index_names
    params = parameter_count(spec)
    dense = dense_size(spec)
    executed = plan.executed()
    steps = []
    for k, step in enumerate(executed.steps):
        contracted = [names[i] for i in dict.fromkeys(step.left_inds + step.right_inds)
                      if i not in step.out_inds]
        steps.append({
            "step": k + 1,
            "left": plan.slot_name(step.left),
            "right": plan.slot_name(step.right),
            "result": plan.slot_name(step.out),
            "contracted": contracted,
            "legs": [names[i] for i in step.out_inds],
            "equation": plan.step_equation(step, named=_too_many_letters(step)),
            "flops": step.flops,
            "size": step.size,
        })
    return {
        "name": spec.name,
        "template": (spec.template or {}).get("template"),
        "nodes": len(spec.network.nodes),
        "edges": len(spec.network.edges),
        "inputs": {name: {"legs": dict(p.legs), "stack": p.stack,
                          "feature_map": p.feature_map.name if p.feature_map else None}
                   for name, p in spec.network.inputs.items()},
        "outputs": list(spec.network.outputs),
        "batch_size": plan.batch_size,
        "params": params,
        "dense_size": dense,
        "compression": dense / params if params else None,
        "flops": plan.flops,
        "path": "fused" if plan.runs_fused else "min-flops",
        "executed_flops": executed.flops,
        "naive_flops": plan.naive_flops,
        "speedup": plan.speedup,
        "largest_intermediate": {"elements": plan.largest_intermediate,
                                 "bytes": plan.largest_intermediate * plan.itemsize},
        "peak_intermediates": {"elements": plan.peak_intermediate,
                               "bytes": plan.peak_intermediate * plan.itemsize},
        "dtype": plan.options.dtype,
        "memory_limit": plan.memory_limit,
        "estimated_time": {"text": plan.estimated_time,
                           "log10_seconds": (plan.time_log10 if math.isfinite(plan.time_log10)
                                             else None),
                           "flops_per_second": plan.rate, "rate_source": plan.rate_source},
        "time_budget": plan.time_budget,
        "over_limit": list(plan.over_limit),
        "sliced": {"indices": [names[i] for i in plan.sliced_inds], "slices": plan.n_slices},
        "path_finder": plan.path_finder,
        "execution": plan.options.execution,
        "search_time": plan.search_time,
        "cache_hit": plan.cache_hit,
        "notes": list(plan.notes),
        "steps": steps,
    }


def format_report(plan: Plan, spec: Spec, fmt: str = "text", *, width: int = 110) -> str:
    """Render the cost report of ``plan`` as ``text`` (tables) or ``json``.

    Parameters
    ----------
    plan, spec
        The plan and the spec it was made for.
    fmt
        ``"text"`` or ``"json"``.
    width
        Text width of the tables.
    """
    check_format(fmt)
    data = report_data(plan, spec)
    if fmt == "json":
        return json.dumps(data, indent=2)
    return _text(data, width)


def _text(d: dict[str, Any], width: int) -> str:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, highlight=False,
                      color_system=None, emoji=False)
    title = f"tngraph cost report: {d['name']}"
    if d["template"]:
        title += f" (template {d['template']})"
    summary = Table(title=title, box=box.SIMPLE, show_header=False, title_justify="left")
    summary.add_column("what", style="bold")
    summary.add_column("value")
    limit = format_bytes(d["memory_limit"])
    li, pk = d["largest_intermediate"], d["peak_intermediates"]
    over = " OVER LIMIT" if any("intermediate" in r for r in d["over_limit"]) else ""
    over_params = " OVER LIMIT" if any("parameters" in r for r in d["over_limit"]) else ""
    ports = ", ".join(
        f"{n}{'[' + str(p['stack']) + ']' if p['stack'] else ''}"
        f"({', '.join(f'{k}={v}' for k, v in p['legs'].items())}"
        f"{', ' + p['feature_map'] if p['feature_map'] else ''})"
        for n, p in d["inputs"].items()) or "none"
    rows = [
        ("nodes / edges", f"{d['nodes']} / {d['edges']}"),
        ("data inputs", ports),
        ("batch size (costs are per batch)", str(d["batch_size"]) if d["batch_size"] else "-"),
        ("parameters", f"{d['params']:,}{over_params}"),
        ("dense-equivalent size", _sci(d["dense_size"])),
        ("compression", _sci(d["compression"]) + "x" if d["compression"] else "-"),
        ("FLOPs (planned)", _sci(d["flops"]) + (
            " (4 real FLOPs per complex multiply-add)"
            if str(d["dtype"]).startswith("complex") else "")),
        *([("FLOPs (executed path)",
            f"{_sci(d['executed_flops'])}, {d['executed_flops'] / d['flops']:.2f}x: the "
            f"port-fused path runs (plan.run_path: 'min-flops' runs the planned one)")]
          if d["executed_flops"] != d["flops"] else []),
        ("FLOPs (naive single einsum)", _sci(d["naive_flops"])),
        ("speed-up over naive", _sci(d["speedup"]) + "x"),
        ("largest intermediate",
         (f"{li['elements']:,}" if li["elements"] < 10**15 else _sci(li["elements"]))
         + f" elements, {format_bytes(li['bytes'])} ({d['dtype']}){over}"),
        ("intermediates alive at peak",
         (f"{pk['elements']:,}" if pk["elements"] < 10**15 else _sci(pk["elements"]))
         + f" elements, {format_bytes(pk['bytes'])}"
         + (" OVER LIMIT" if any("alive at once" in r for r in d["over_limit"]) else "")),
        ("memory limit", limit),
        ("estimated time (one contraction)",
         d["estimated_time"]["text"]
         + (" OVER BUDGET" if any("time budget" in r for r in d["over_limit"]) else "")),
        ("arithmetic rate", f"{d['estimated_time']['flops_per_second'] / 1e9:.3g} GFLOP/s "
                            f"({d['estimated_time']['rate_source']})"),
        ("time budget", format_duration(math.log10(d["time_budget"]))
         if d["time_budget"] is not None else "none"),
        ("slicing", (f"{d['sliced']['slices']} slices over {', '.join(d['sliced']['indices'])}"
                     if d["sliced"]["indices"] else "none")),
        ("path finder", d["path_finder"]),
        ("execution", d["execution"]),
        ("plan search time", f"{d['search_time']:.3f} s"),
        ("plan cache", "hit" if d["cache_hit"] else "miss"),
    ]
    for what, value in rows:
        summary.add_row(what, value)
    console.print(summary)
    if d["steps"]:
        table = Table(title="contraction steps (as executed)", box=box.SIMPLE, title_justify="left")
        for col, justify in (("#", "right"), ("result", "left"), ("left", "left"),
                             ("right", "left"), ("contracts", "left"), ("result legs", "left"),
                             ("FLOPs", "right"), ("size", "right")):
            table.add_column(col, justify=justify, overflow="fold")
        for s in d["steps"]:
            table.add_row(str(s["step"]), s["result"], s["left"], s["right"],
                          ", ".join(s["contracted"]) or "-", _short(s["legs"]),
                          f"{s['flops']:.3g}", f"{s['size']:,}")
        console.print(table)
    for reason in d["over_limit"]:
        console.print(f"OVER LIMIT: {reason}")
    for note in d["notes"]:
        console.print(f"note: {note}")
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines()) + "\n"


def _short(legs: list[str], limit: int = 6) -> str:
    if len(legs) <= limit:
        return ", ".join(legs) or "(scalar)"
    return ", ".join(legs[:limit]) + f", ... ({len(legs)} legs)"


# ---------------------------------------------------------------------------------------------
# pipelines


def pipeline_report_data(spec: Spec, plans: dict[str, Plan]) -> dict[str, Any]:
    """A pipeline's report as plain data: one row per layer (type, one example's output shape,
    parameters, FLOPs per example) and each network layer's full report under ``networks``.

    ``plans`` maps every ``network`` layer's name to its plan.
    """
    rows = []
    networks = {}
    for layer in summarize_layers(spec):
        flops = layer.flops
        if flops is None:
            plan = plans[layer.name]
            flops = plan.flops / plan.batch_size if plan.batch_size else plan.flops
            networks[layer.name] = report_data(plan, spec.network_spec(layer.name))
        rows.append({"name": layer.name, "type": layer.type, "shape": list(layer.shape),
                     "params": layer.params, "flops": flops})
    shape = rows[-1]["shape"] if rows else list(spec.input_shape or ())
    return {
        "name": spec.name,
        "input_shape": list(spec.input_shape or ()),
        "output_shape": list(shape),
        "params": sum(r["params"] for r in rows),
        "flops_per_example": sum(r["flops"] for r in rows),
        "layers": rows,
        "networks": networks,
    }


def format_pipeline_report(spec: Spec, plans: dict[str, Plan], fmt: str = "text", *,
                           width: int = 110) -> str:
    """Render a pipeline's report: the layer table, then each network layer's cost report
    (``fmt="json"``: :func:`pipeline_report_data` as JSON).

    Examples
    --------
    >>> import tngraph
    >>> pipe = tngraph.compile("tngraph: 1\\nname: p\\ninput_shape: [4]\\n"
    ...                        "layers: [{type: linear, out_features: 2}, relu]\\n")
    >>> print(pipe.report().splitlines()[0])
    tngraph pipeline report: p
    """
    check_format(fmt)
    data = pipeline_report_data(spec, plans)
    if fmt == "json":
        return json.dumps(data, indent=2)
    from rich import box
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    console = Console(file=buf, width=width, no_color=True, highlight=False,
                      color_system=None, emoji=False)
    table = Table(title=f"tngraph pipeline report: {data['name']}", box=box.SIMPLE,
                  title_justify="left")
    for col, justify in (("layer", "left"), ("type", "left"), ("output shape", "left"),
                         ("parameters", "right"), ("FLOPs / example", "right")):
        table.add_column(col, justify=justify)
    table.add_row("(input)", "", _shape(data["input_shape"]), "", "")
    for row in data["layers"]:
        table.add_row(row["name"], row["type"], _shape(row["shape"]), f"{row['params']:,}",
                      _sci(row["flops"]))
    table.add_row("total", "", "", f"{data['params']:,}", _sci(data["flops_per_example"]))
    console.print(table)
    text = "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines()) + "\n"
    for name in data["networks"]:
        text += "\n" + format_report(plans[name], spec.network_spec(name), width=width)
    return text


def _shape(shape: list[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"
