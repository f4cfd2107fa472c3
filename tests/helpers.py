"""Shared test helpers: an independent dense oracle, random specs and device markers.

The oracle never uses the plan's steps: it rebuilds every operand (parameters and data after the
feature maps) and contracts them all with ONE ``opt_einsum.contract`` call over NumPy arrays,
from the index symbols of ``module.plan.problem``.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import opt_einsum
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_script(path: str, name: str) -> ModuleType:
    """The example or benchmark script at ``path`` (relative to the repository root), imported
    as module ``name`` (registered in ``sys.modules``, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
MODELS = sorted((ROOT / "models").glob("*.yaml"))

#: marks a parameter that needs a CUDA device
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
#: devices to run device-parametrised tests on
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

#: a complete graph of 4 tensors (legs of dim 8): every pairwise step makes a 4-leg intermediate
#: of 4096 entries, twice the 2048 parameters
TETRA = """
tngraph: 1
name: tetra
params: {d: 8}
network:
  nodes:
    A: {legs: {a: "${d}", b: "${d}", c: "${d}"}}
    B: {legs: {a: "${d}", d: "${d}", e: "${d}"}}
    C: {legs: {b: "${d}", d: "${d}", f: "${d}"}}
    D: {legs: {c: "${d}", e: "${d}", f: "${d}"}}
  edges: [[A.a, B.a], [A.b, C.b], [A.c, D.c], [B.d, C.d], [B.e, D.e], [C.f, D.f]]
"""


# ---------------------------------------------------------------------------------------------
# the oracle


def feature_map_np(name: str, options: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """Reference feature maps, written from their definitions (not from tngraph)."""
    if options.get("scale"):
        x = np.clip(x, 0.0, 1.0)
    if name == "multilinear":
        return np.stack([np.ones_like(x), x], axis=-1)
    if name == "trig":
        return np.stack([np.cos(np.pi * x / 2), np.sin(np.pi * x / 2)], axis=-1)
    if name == "poly":
        degree = int(options.get("degree", 2))
        return np.stack([x**k for k in range(degree + 1)], axis=-1)
    raise ValueError(f"no reference for feature map {name!r}")


def _to_numpy(x: Any) -> np.ndarray:
    """float64, or complex128 for complex values."""
    if isinstance(x, torch.Tensor):
        wide = torch.complex128 if x.is_complex() else torch.float64
        return x.detach().cpu().to(wide).numpy()
    x = np.asarray(x)
    return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


def port_operands(module: Any, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Graph-node name (``x`` or ``x[k]``) -> data array ``(batch, *legs)`` after feature maps."""
    operands: dict[str, np.ndarray] = {}
    for name, port in module.spec.network.inputs.items():
        x = _to_numpy(inputs[name])
        batch = x.shape[0]
        n = port.stack
        if port.feature_map is not None:
            x = x.reshape((batch, n) if n else (batch,))
            x = feature_map_np(port.feature_map.name, port.feature_map.options, x)
        else:
            x = x.reshape((batch, *((n,) if n else ()), *port.shape))
        if n:
            for k in range(n):
                operands[f"{name}[{k}]"] = x[:, k]
        else:
            operands[name] = x
    return operands


def dense_oracle(module: Any, inputs: Mapping[str, Any] | None = None) -> torch.Tensor:
    """The network's result from one ``opt_einsum.contract`` over every operand (float64, or
    complex128 when any operand is complex). Nodes that reuse another's tensor
    (``same_as``, optionally ``conj``) are rebuilt from the spec, not from the module.

    ``inputs`` maps port names to raw data (as given to ``module(**inputs)``).
    """
    problem = module.plan.problem
    data = port_operands(module, inputs or {})
    symbols: dict[str, str] = {}

    def sym(index: str) -> str:
        if index not in symbols:
            symbols[index] = opt_einsum.get_symbol(len(symbols))
        return symbols[index]

    terms, arrays = [], []
    for term, inds in zip(problem.terms, problem.inputs, strict=True):
        node = module.spec.network.nodes.get(term.name) if term.kind == "tensor" else None
        if node is not None and node.same_as is not None:     # from the spec, not the module
            array = _to_numpy(module.tensors[node.same_as])
            array = array.conj() if node.conj else array
        else:
            array = (_to_numpy(module.tensors[term.name]) if term.kind == "tensor"
                     else data[term.name])
        assert array.ndim == len(inds), (term.name, array.shape, inds)
        terms.append("".join(sym(i) for i in inds))
        arrays.append(array)
    equation = ",".join(terms) + "->" + "".join(sym(i) for i in problem.output)
    result = np.asarray(opt_einsum.contract(equation, *arrays, optimize="greedy"))
    if module.bias is not None:
        result = result + _to_numpy(module.bias)
    if module.spec.network.flatten_outputs:
        result = result.reshape((result.shape[0], -1) if problem.batch is not None else (-1,))
    wide = np.complex128 if np.iscomplexobj(result) else np.float64
    return torch.from_numpy(np.array(result, dtype=wide))  # keeps 0-d results 0-d


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-10) -> None:
    """``actual`` equals ``expected`` in shape and, relative to the largest entry, in value."""
    wide = torch.complex128 if actual.is_complex() or expected.is_complex() else torch.float64
    actual = actual.detach().cpu().to(wide)
    assert tuple(actual.shape) == tuple(expected.shape)
    expected = expected.detach()
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-300)
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= rtol * scale, f"max error {err:.3e} vs scale {scale:.3e}"


def random_inputs(module: Any, batch: int, seed: int = 0, complex_data: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Random raw data of the right shape for every data port (values in [0, 1)); with
    ``complex_data``, ports without a feature map get complex values (parts in [0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, port in module.spec.network.inputs.items():
        shape: tuple[int, ...] = (batch,) + ((port.stack,) if port.stack else ())
        if port.feature_map is None:
            shape += port.shape
        out[name] = torch.rand(shape, generator=gen, dtype=torch.float64)
        if complex_data and port.feature_map is None:
            out[name] = torch.complex(out[name], torch.rand(shape, generator=gen,
                                                            dtype=torch.float64))
    return out


def randomize(module: Any, seed: int = 0, scale: float = 1.0) -> None:
    """Overwrite every parameter with Gaussian noise (so that structure, not init, is tested)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            value = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
            if p.is_complex():
                value = torch.complex(value, torch.randn(p.shape, generator=gen,
                                                         dtype=torch.float64) * scale)
            p.copy_(value)


# ---------------------------------------------------------------------------------------------
# random networks


def node_grads(module: Any, output: torch.Tensor, create_graph: bool = False
               ) -> dict[str, torch.Tensor]:
    """d ``output`` / d each node's tensor, by node name, whatever the parameter layout
    (stacked storages are differentiated, then viewed per node)."""
    held = dict(module.tensors.named_parameters())
    grads = torch.autograd.grad(output, list(held.values()), create_graph=create_graph)
    return module.tensors.views(dict(zip(held, grads)))


def rand_network(n: int, seed: int, *, data: bool | None = None,
                 max_elements: int = 2**12) -> dict[str, Any]:
    """A random raw network of ``n`` nodes (the ``network:`` block, as plain data).

    Varied degrees, dims 1..4, parallel edges, traces, disconnected parts, 0..3 open legs in a
    random order (none: a scalar), and, if ``data`` (default: at random), a data port ``x``,
    possibly stacked or with a feature map. The product of all bond dims stays under
    ``max_elements`` so that any contraction order is cheap.
    """
    rng = random.Random(seed)
    names = [f"N{k}" for k in range(n)]
    legs: dict[str, dict[str, int]] = {name: {} for name in names}
    edges: list[list[str]] = []
    outputs: list[str] = []
    total = 1
    counter = 0

    def dim() -> int:
        nonlocal total
        d = rng.randint(1, 4)
        while total * d > max_elements and d > 1:
            d -= 1
        total *= d
        return d

    def new_leg(node: str, d: int) -> str:
        nonlocal counter
        leg = f"g{counter}"
        counter += 1
        legs[node][leg] = d
        return f"{node}.{leg}"

    previous: tuple[str, str] | None = None
    for _ in range(rng.randint(0, 2 * n)):
        roll = rng.random()
        if previous is not None and roll < 0.2:
            u, v = previous                           # parallel edge
        elif roll < 0.35:
            u = v = rng.choice(names)                 # trace
        else:
            u, v = rng.sample(names, 2) if n > 1 else (names[0], names[0])
        d = dim()
        edges.append([new_leg(u, d), new_leg(v, d)])
        previous = (u, v)

    network: dict[str, Any] = {}
    if data if data is not None else rng.random() < 0.4:
        stack = rng.choice([None, None, 1, 2, 3])
        fmap = rng.random() < 0.3
        port_legs = {"p": 2} if fmap else {"p": rng.randint(1, 3)}
        if not fmap and rng.random() < 0.3:
            port_legs["q"] = rng.randint(1, 3)
        port: dict[str, Any] = {"legs": port_legs}
        if stack is not None:
            port["stack"] = stack
        if fmap:
            port["feature_map"] = rng.choice(["multilinear", "trig"])
        network["inputs"] = {"x": port}
        copies = [f"x[{k}]" for k in range(stack)] if stack is not None else ["x"]
        for copy in copies:
            for leg, d in port_legs.items():
                if rng.random() < 0.1:
                    outputs.append(f"{copy}.{leg}")   # a data leg left open
                else:
                    edges.append([f"{copy}.{leg}", new_leg(rng.choice(names), d)])
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        outputs.append(new_leg(rng.choice(names), rng.randint(1, 4)))
    rng.shuffle(outputs)
    # node legs in a random axis order (edges were made in creation order)
    nodes = {}
    for name in names:
        items = list(legs[name].items())
        rng.shuffle(items)
        nodes[name] = {"legs": dict(items)}
    network = {"nodes": nodes, **network, "edges": edges, "outputs": outputs}
    return network


def rand_hypernetwork(n: int, seed: int, *, data: bool | None = None) -> dict[str, Any]:
    """A random raw network with hyperedges: :func:`rand_network`'s, with some edges grown to
    three or four ends (new legs on random nodes, the same node possibly twice: a diagonal; a
    data port's edge too), one of a hyperedge's legs sometimes listed in ``outputs`` (the index
    stays open), and a few hyperedges among fresh legs."""
    network = rand_network(n, seed, data=data, max_elements=2**9)
    rng = random.Random(seed + 7919)
    nodes = network["nodes"]
    names = list(nodes)
    counter = 0

    def new_leg(d: int) -> str:
        nonlocal counter
        node = rng.choice(names)
        leg = f"h{counter}"
        counter += 1
        nodes[node]["legs"][leg] = d
        return f"{node}.{leg}"

    def dim_of(ref: str) -> int:
        node, _, leg = ref.rpartition(".")
        if node in nodes:
            return nodes[node]["legs"][leg]
        return network["inputs"]["x"]["legs"][leg]

    hyper: list[list[str]] = []
    for edge in network["edges"]:
        if rng.random() < 0.3:
            d = dim_of(edge[0])
            edge.extend(new_leg(d) for _ in range(rng.randint(1, 2)))
            hyper.append(edge)
    for _ in range(rng.choice([0, 1, 1, 2]) if n > 1 else 0):
        d = rng.randint(1, 3)
        hyper.append([new_leg(d) for _ in range(rng.randint(3, 4))])
        network["edges"].append(hyper[-1])
    for edge in hyper:
        if rng.random() < 0.3:
            network["outputs"].insert(rng.randint(0, len(network["outputs"])), rng.choice(edge))
    return network


def rand_spec(n: int, seed: int, *, data: bool | None = None,
              plan: Mapping[str, Any] | None = None, hyper: bool = False) -> str:
    """YAML text of a random spec (see :func:`rand_network`; with ``hyper``,
    :func:`rand_hypernetwork`)."""
    make = rand_hypernetwork if hyper else rand_network
    doc: dict[str, Any] = {"tngraph": 1, "name": f"rand_{n}_{seed}{'_h' * hyper}",
                           "network": make(n, seed, data=data)}
    if plan:
        doc["plan"] = dict(plan)
    return yaml.safe_dump(doc, sort_keys=False)



#: a few random networks for structural (non-numerical) checks
CASES_FOR_GRAPH = [(n, seed) for n in (1, 3, 5, 8) for seed in range(5)]
