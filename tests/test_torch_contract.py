"""A compiled module keeps torch's contracts: gradients of second order, weights changed in any
way, torch.func transforms, pickling, and the same run from the same seed."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import MODELS, assert_matches, dense_oracle, random_inputs, randomize

import tngraph

#: small sizes of each network model (gradgradcheck perturbs every entry of the cores it checks)
SMALL: dict[str, dict[str, object]] = {
    "mpo": {"bond_dim": 2}, "mps": {"sites": 5, "bond_dim": 2},
    "mps_classifier": {"sites": 16, "bond_dim": 2}, "peps": {"rows": 2, "cols": 3, "bond_dim": 2},
    "ring3": {"chi": 2}, "tt_linear": {"rank": 2},
    "peps_classifier": {"rows": 2, "cols": 3, "bond_dim": 2},
    "ring_classifier": {"sites": 5, "bond_dim": 2},
    "tree_classifier": {"sites": 6, "bond_dim": 2}, "tt_embedding": {"rank": 2},
}
NETWORKS = [pytest.param(p, id=p.stem) for p in MODELS if "layers:" not in p.read_text()]


def classifier(sites: int, bond: int = 2, **plan: object) -> tngraph.TNModule:
    return tngraph.compile(
        f"tngraph: 1\nname: c{sites}\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
        f"bond_dim: {bond}, input: x, feature_map: multilinear, output_dim: 3}}\n",
        dtype="float64", cache=False, **plan)


def small(path: Path, **plan: object) -> tngraph.TNModule:
    return tngraph.compile(path, SMALL[path.stem], dtype="float64", cache=False,
                           optimize="greedy", **plan)


def as_function(module: torch.nn.Module, names: list[str], inputs: dict[str, torch.Tensor]
                ) -> Callable[..., torch.Tensor]:
    """The module's output as a function of the parameters ``names`` (the others fixed)."""
    def run(*values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, dict(zip(names, values)), (), inputs)
    return run


def checked(module: torch.nn.Module) -> list[str]:
    """A few parameters to differentiate: the first, a middle and the last one."""
    names = [n for n, _ in module.named_parameters()]
    return sorted({names[0], names[len(names) // 2], names[-1]}, key=names.index)


# ---------------------------------------------------------------------------------------------
# gradients of second order


@pytest.mark.parametrize("path", NETWORKS)
def test_second_order_gradients_of_every_model(path: Path) -> None:
    module = small(path)
    randomize(module, scale=0.5)
    inputs = {k: v.double() for k, v in random_inputs(module, 2).items()}
    names = checked(module)
    params = tuple(module.get_parameter(n).detach().requires_grad_() for n in names)
    assert torch.autograd.gradgradcheck(as_function(module, names, inputs), params,
                                        eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sites", [16, 64])
def test_second_order_gradients_of_long_chains(sites: int) -> None:
    """Chains of 12 and more sites run the fused chain-run Function: its backward is
    differentiable again (recomputed under create_graph)."""
    module = classifier(sites)
    x = {"x": torch.rand(2, sites, dtype=torch.float64, generator=torch.Generator().manual_seed(1))}
    names = checked(module)
    params = tuple(module.get_parameter(n).detach().requires_grad_() for n in names)
    assert torch.autograd.gradgradcheck(as_function(module, names, x), params, eps=1e-6,
                                        atol=1e-5, rtol=1e-4)


def einsum_of(module: tngraph.TNModule, x: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The classifier as one ``torch.einsum`` of its cores and ``[1, x]`` features (autograd
    of torch's own ops: the reference for higher-order derivatives)."""
    problem = module.plan.problem
    letters = {i: chr(ord("a") + k) for k, i in enumerate(
        dict.fromkeys(i for inds in problem.inputs for i in inds))}
    equation = ",".join("".join(letters[i] for i in inds) for inds in problem.inputs) + \
        "->" + "".join(letters[i] for i in problem.output)
    features = torch.stack([torch.ones_like(x), x], dim=-1)             # (batch, site, 2)
    names = list(module.tensors)

    def run(*cores: torch.Tensor) -> torch.Tensor:
        by_name = dict(zip(names, cores))
        operands = [by_name[t.name] if t.kind == "tensor" else features[:, t.copy]
                    for t in problem.terms]
        return torch.einsum(equation, *operands)
    return run


def test_hessian_vector_product_matches_a_plain_einsum() -> None:
    module = classifier(12, bond=3)
    x = torch.rand(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    names = [f"tensors.{n}" for n in module.tensors]
    values = tuple(p.detach() for p in module.tensors.values())
    reference = einsum_of(module, x)
    compiled = as_function(module, names, {"x": x})
    torch.testing.assert_close(compiled(*values), reference(*values))
    vector = tuple(torch.randn_like(c) for c in values)
    _, hvp = torch.autograd.functional.hvp(lambda *c: compiled(*c).square().sum(), values,
                                           vector)
    _, expected = torch.autograd.functional.hvp(lambda *c: reference(*c).square().sum(),
                                                values, vector)
    for got, want in zip(hvp, expected):
        torch.testing.assert_close(got, want)


# ---------------------------------------------------------------------------------------------
# every way of changing a weight is seen


def _change_data_copy(m: torch.nn.Module, p: torch.nn.Parameter) -> None:
    p.data.copy_(torch.randn_like(p))


def _change_data_assign(m: torch.nn.Module, p: torch.nn.Parameter) -> None:
    p.data = torch.randn_like(p)


def _change_in_place(m: torch.nn.Module, p: torch.nn.Parameter) -> None:
    with torch.no_grad():
        p.mul_(-1.5).add_(0.25)


def _change_state_dict(m: torch.nn.Module, p: torch.nn.Parameter) -> None:
    state = {k: torch.randn_like(v) for k, v in m.state_dict().items()}
    m.load_state_dict(state)


def _change_optimizer(m: torch.nn.Module, p: torch.nn.Parameter) -> None:
    optimizer = torch.optim.Adam(m.parameters(), lr=0.1, fused=True)
    out = m(**random_inputs(m, 3)) if m.spec.network.inputs else m()
    out.square().sum().backward()
    optimizer.step()


CHANGES = [_change_data_copy, _change_data_assign, _change_in_place, _change_state_dict,
           _change_optimizer]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__.removeprefix("_change_"))
@pytest.mark.parametrize("make", [
    pytest.param(lambda: small(MODELS[0].parent / "tt_linear.yaml", execution="dense"),
                 id="tt-dense"),
    pytest.param(lambda: small(MODELS[0].parent / "tt_linear.yaml", execution="network"),
                 id="tt-network"),
    pytest.param(lambda: classifier(16), id="chain-16"),
])
def test_a_changed_weight_is_seen_under_no_grad(make: Callable[[], tngraph.TNModule],
                                                change: Callable[..., None]) -> None:
    module = make()
    inputs = {k: v.double() for k, v in random_inputs(module, 3).items()}
    with torch.no_grad():
        module(**inputs)
        before = module(**inputs)         # the second call runs in the inference workspace
    for param in module.tensors.parameters():       # (lone nodes and stacked storages)
        change(module, param)
    with torch.no_grad():
        after = module(**inputs)
    assert not torch.allclose(after, before)
    assert_matches(after, dense_oracle(module, inputs))


@pytest.mark.parametrize(("make", "stacked"), [
    pytest.param(lambda: small(MODELS[0].parent / "tt_linear.yaml", execution="dense"), True,
                 id="tt-dense"),
    pytest.param(lambda: classifier(16), False, id="chain-16-gathered"),
])
def test_frozen_builds_derived_values_once_and_keeps_nothing_after(
        make: Callable[[], tngraph.TNModule], stacked: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tngraph.compiler import _DenseWeight
    from tngraph.executor import schedule

    if not stacked:                 # every node a parameter of its own: gathered at each call
        monkeypatch.setattr("tngraph.compiler.stack_layouts", lambda *args: [])
    module = make()
    inputs = {k: v.double() for k, v in random_inputs(module, 3).items()}
    builds: list[str] = []
    weight, gather = _DenseWeight.weight, schedule.gather_params
    monkeypatch.setattr(_DenseWeight, "weight",
                        lambda self, t: builds.append("W") or weight(self, t))
    monkeypatch.setattr("tngraph.executor.runtime.gather_params",
                        lambda t, g: builds.append("gather") or gather(t, g))
    with torch.no_grad():
        module(**inputs)
        per_call = len(builds)
        assert per_call > 0
        with tngraph.frozen(module):
            first = module(**inputs)
            for _ in range(3):
                torch.testing.assert_close(module(**inputs), first)
        assert len(builds) == 2 * per_call               # once before, once in the block
        before = len(builds)
        with tngraph.frozen(module), torch.enable_grad():  # autograd: nothing reused
            module(**inputs).sum().backward()
            module(**inputs).sum().backward()
        assert len(builds) == before + 2 * per_call
        _change_data_copy(module, next(iter(module.tensors.values())))
        assert_matches(module(**inputs), dense_oracle(module, inputs))
    assert module._frozen is None


def test_node_views_are_kept_only_without_autograd() -> None:
    """Without autograd the stacked nodes' views are kept between calls (made once while the
    storage stays the same memory); under autograd each call makes its own, with a graph; a
    re-seated storage gets new views; pickling and deepcopy keep none."""
    import copy

    module = classifier(16)
    placement = module.tensors.placement
    stacked = [i for i, where in enumerate(placement.stacked) if where is not None]
    with torch.no_grad():
        first = module.tensors.values_for_call()
        views = {i: first[i] for i in stacked}
        again = module.tensors.values_for_call()
        assert all(again[i] is v for i, v in views.items())
    assert len(module.tensors._kept_views) == len(stacked) > 0
    graph = module.tensors.values_for_call()
    assert all(graph[i] is not v and graph[i].requires_grad for i, v in views.items())
    layout = placement.stacked[stacked[0]][0]
    storage = module.tensors.get_parameter(f"stack:{layout}")
    storage.data = storage.data.clone()              # re-seated: its members' views anew
    with torch.no_grad():
        moved = module.tensors.values_for_call()
        for i, v in views.items():
            same = placement.stacked[i][0] != layout
            assert (moved[i] is v) == same
            assert (moved[i].data_ptr() == v.data_ptr()) == same
    x = torch.rand(3, 16, dtype=torch.float64)
    for other in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        assert not other.tensors._kept_views
        with torch.no_grad():
            torch.testing.assert_close(other(x), module(x))
        assert other.tensors._kept_views


def test_a_dtype_move_is_seen_under_no_grad() -> None:
    module = small(MODELS[0].parent / "tt_linear.yaml", execution="dense")
    x = random_inputs(module, 3)
    with torch.no_grad():
        module(**{k: v.double() for k, v in x.items()})
        module.float()
        assert_matches(module(**{k: v.float() for k, v in x.items()}),
                       dense_oracle(module, x), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# torch.func


def test_jacrev_and_vmap_of_grad_match_autograd() -> None:
    module = classifier(16, bond=3)
    x = torch.rand(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    names = ["tensors.A0", "tensors.A8"]         # (nodes of stacked parameters: set by name)
    values = tuple(module.tensors[n.partition(".")[2]].detach() for n in names)
    run = as_function(module, names, {"x": x})
    expected = torch.autograd.functional.jacobian(run, values)
    got = torch.func.jacrev(run, argnums=(0, 1))(*values)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    # per-example gradients: vmap over the batch of grad of one example's loss
    params = {n: p.detach() for n, p in module.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, p, (xi[None],)).square().sum()

    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(loss(dict(module.named_parameters()), x[i]),
                                    list(module.parameters()))
        for (name, _), g in zip(module.named_parameters(), grads):
            torch.testing.assert_close(per_example[name][i], g)


# torch's forward-mode AD scripts a helper with torch.jit.script, which torch 2.13 deprecates
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_jvp_matches_a_finite_difference() -> None:
    module = classifier(16)
    x = torch.rand(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    a0 = module.tensors["A0"].detach()
    run = as_function(module, ["tensors.A0"], {"x": x})
    tangent = torch.randn_like(a0)
    _, jvp = torch.func.jvp(run, (a0,), (tangent,))
    step = 1e-6
    torch.testing.assert_close(jvp, (run(a0 + step * tangent) - run(a0 - step * tangent))
                               / (2 * step), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# pickling


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in MODELS])
def test_every_model_pickles(path: Path) -> None:
    overrides = SMALL.get(path.stem, {"bond_dim": 3} if path.stem in ("cnn_mps", "two_mps")
                          else None)
    module = tngraph.compile(path, overrides, cache=False, optimize="greedy").eval()
    x = (random_inputs(module, 2) if isinstance(module, tngraph.TNModule)
         else {"x": torch.rand(2, *module.input_shape)})
    call = (lambda m: m(**x)) if isinstance(module, tngraph.TNModule) else (lambda m: m(x["x"]))
    with torch.no_grad():
        expected = call(module) if x or isinstance(module, tngraph.Pipeline) else module()
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    for copy in (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(module))):
        with torch.no_grad():
            got = call(copy) if x or isinstance(copy, tngraph.Pipeline) else copy()
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------
# torch.compile


def _model_and_inputs(path: Path, batch: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    overrides = SMALL.get(path.stem, {"bond_dim": 3} if path.stem in ("cnn_mps", "two_mps")
                          else None)
    module = tngraph.compile(path, overrides, cache=False, optimize="greedy")
    return module, _inputs(module, batch)


def _inputs(module: torch.nn.Module, batch: int) -> dict[str, torch.Tensor]:
    if isinstance(module, tngraph.Pipeline):
        return {"x": torch.rand(batch, *module.input_shape,
                                generator=torch.Generator().manual_seed(batch))}
    return random_inputs(module, batch, seed=batch)


#: models whose 64-site chains take most of a minute to trace twice (dynamic shapes are checked
#: on the others, short chains (the classifier at 16 sites) and pipelines with TT-layers among
#: them)
LONG_TRACES = {"two_mps", "cnn_mps"}
COMPILE_CASES = [pytest.param(p, dynamic, id=f"{p.stem}-{'dynamic' if dynamic else 'static'}")
                 for p in MODELS for dynamic in (False, True)
                 if not (dynamic and p.stem in LONG_TRACES)]


@pytest.mark.parametrize(("path", "dynamic"), COMPILE_CASES)
def test_torch_compile_fullgraph_matches_eager(path: Path, dynamic: bool) -> None:
    """A fresh module, compiled whole (no graph break), at two batch sizes it never ran at
    eagerly: outputs and gradients equal eager ones. (``aot_eager`` traces exactly what
    Inductor compiles, without its minutes of C++ compilation on a CPU runner.)"""
    torch._dynamo.reset()
    module, _ = _model_and_inputs(path, 3)
    module.eval()                                     # dropout off: eager and compiled agree
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    params = [p for p in module.parameters() if p.requires_grad]
    for batch in (3, 5):
        inputs = _inputs(module, batch)
        if not inputs and batch == 5:
            break                                      # no data ports: one call is the test
        got = compiled(**inputs)
        expected = module(**inputs)
        torch.testing.assert_close(got, expected)
        for a, b in zip(torch.autograd.grad(got.square().sum(), params),
                        torch.autograd.grad(expected.square().sum(), params)):
            torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# parameters in execution layout


def test_a_chain_needs_no_gather_and_its_optimizer_steps_a_few_tensors(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The half-chains' cores are stored as the stacked kernels read them: a call (forward and
    backward) gathers nothing, Adam steps 4 tensors instead of 64, and training gives the same
    weights as with one parameter per node."""
    from tngraph.executor import schedule

    calls: list[int] = []
    gather = schedule.gather_params
    monkeypatch.setattr("tngraph.executor.runtime.gather_params",
                        lambda t, g: calls.append(1) or gather(t, g))
    stacked = classifier(64)
    x = torch.rand(8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(8) % 3
    assert len(list(stacked.parameters())) == 4 and len(stacked.tensors) == 64
    monkeypatch.setattr("tngraph.compiler.stack_layouts", lambda *args: [])
    per_node = classifier(64)
    assert len(list(per_node.parameters())) == 64
    per_node.load_state_dict(stacked.state_dict())
    for module in (stacked, per_node):
        optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(module(x), labels).backward()
            optimizer.step()
        if module is stacked:
            assert calls == []
    assert calls                                          # the per-node module gathers
    for name in stacked.tensors:
        torch.testing.assert_close(stacked.tensors[name], per_node.tensors[name])


def test_node_views_write_through_and_state_dict_is_per_node() -> None:
    module = classifier(16)
    lone = [name for name in module.spec.network.nodes if not module.tensors.stacked(name)]
    assert module.tensors.stacked("A3") and len(lone) == 1          # (the sweep's last step)
    assert module.tensors[lone[0]]._base is None                     # a parameter of its own
    view = module.tensors["A3"]
    assert view.shape == (2, 2, 2) and view._base is not None
    with torch.no_grad():
        view.copy_(torch.arange(8.0).reshape(2, 2, 2))
    torch.testing.assert_close(module.tensors["A3"], torch.arange(8.0, dtype=torch.float64)
                               .reshape(2, 2, 2))
    state = module.state_dict()
    assert list(state) == [f"tensors.A{k}" for k in range(16)]
    assert all(t.is_contiguous() and t._base is None for t in state.values())
    # a partial state_dict loads the nodes it has and names the missing ones
    other = classifier(16)
    del state["tensors.A5"]
    result = other.load_state_dict(state, strict=False)
    assert result.missing_keys == ["tensors.A5"] and result.unexpected_keys == []
    torch.testing.assert_close(other.tensors["A3"], module.tensors["A3"])
    with pytest.raises(RuntimeError, match="Missing key.*tensors.A5"):
        other.load_state_dict(state)
    state["tensors.A5"] = torch.zeros(3, 3, 3)
    with pytest.raises(RuntimeError, match=r"size mismatch for tensors.A5: .*\(3, 3, 3\)"):
        other.load_state_dict(state)
    with pytest.raises(tngraph.CompileError, match=r"stored in a stacked parameter.*copy_"):
        module.tensors["A3"] = torch.nn.Parameter(torch.zeros(2, 2, 2))


def test_gradients_per_node_match_one_parameter_per_node(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stacked = classifier(16)
    x = torch.rand(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    stacked(x).square().sum().backward()
    monkeypatch.setattr("tngraph.compiler.stack_layouts", lambda *args: [])
    per_node = classifier(16)
    per_node.load_state_dict(stacked.state_dict())
    per_node(x).square().sum().backward()
    grads = stacked.tensors.grads()
    for name, param in per_node.tensors.items():
        torch.testing.assert_close(grads[name], param.grad)
