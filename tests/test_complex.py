"""Complex dtypes end to end: ``complex64`` / ``complex128`` plans, complex initial values,
complex (or real) data, the executor's kernels and the fused chain Function in complex, the
conjugate-Wirtinger gradients of real losses, FLOPs counted as real ones, and a tiny complex
Born machine that trains."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from helpers import assert_matches, dense_oracle, rand_spec, random_inputs

import tngraph
from tngraph import linalg
from tngraph.decompose import (
    bond_spectra,
    entanglement_entropy,
    left_orthogonalize,
    qtt,
    right_orthogonalize,
    tt_add,
    tt_dot,
    tt_matrix,
    tt_matrix_to_dense,
    tt_norm,
    tt_ranks,
    tt_round,
    tt_svd,
    tt_to_dense,
)
from tngraph.errors import CompileError, SpecError
from tngraph.plan import FLOP_FACTOR
from tngraph.spec import load_spec

BATCH = 3
CASES = [(n, seed) for n in (1, 2, 3, 5, 8) for seed in range(8)]


def _compile(source: object, seed: int = 0, **options: object) -> tngraph.TNModule:
    options = {"optimize": "greedy", "dtype": "complex128", "batch_size": BATCH, "cache": False,
               **options}
    return tngraph.compile(source, seed=seed, **options)


def classifier(sites: int, bond: int = 3, dtype: str = "complex128", **plan: object
               ) -> tngraph.TNModule:
    return tngraph.compile(
        f"tngraph: 1\nname: c{sites}\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
        f"bond_dim: {bond}, input: x, feature_map: multilinear, output_dim: 3}}\n",
        dtype=dtype, cache=False, **plan)


def reference(module: tngraph.TNModule, inputs: dict[str, torch.Tensor]):
    """The module as one ``torch.einsum`` over its nodes' tensors and the data (feature maps
    applied by torch's own ops): autograd of torch's ops is the reference for gradients."""
    problem = module.plan.problem
    letters = {i: k for k, i in enumerate(dict.fromkeys(i for t in problem.inputs for i in t))}
    names = list(module.tensors)

    def port(term) -> torch.Tensor:
        spec = module.spec.network.inputs[term.port]
        x = inputs[term.port].to(torch.complex128)
        if spec.feature_map is not None:
            x = x.reshape(x.shape[0], -1)
            x = torch.stack([torch.ones_like(x), x], dim=-1)     # multilinear [1, x]
        else:
            x = x.reshape(x.shape[0], *((spec.stack,) if spec.stack else ()), *spec.shape)
        return x[:, term.copy] if term.copy is not None else x

    def run(*tensors: torch.Tensor) -> torch.Tensor:
        by_name = dict(zip(names, tensors))
        args: list[object] = []
        for term, inds in zip(problem.terms, problem.inputs):
            args += [by_name[term.name] if term.kind == "tensor" else port(term),
                     [letters[i] for i in inds]]
        return torch.einsum(*args, [letters[i] for i in problem.output])
    return run


@pytest.mark.parametrize("hyper", [False, True], ids=["graph", "hypergraph"])
@pytest.mark.parametrize(("n", "seed"), CASES)
def test_random_complex_networks_match_oracle(n: int, seed: int, hyper: bool) -> None:
    module = _compile(rand_spec(n, seed, hyper=hyper), seed)
    assert all(p.is_complex() for p in module.parameters())
    for complex_data in (False, True):
        inputs = random_inputs(module, BATCH, seed, complex_data=complex_data)
        assert_matches(module(**inputs), dense_oracle(module, inputs))


@pytest.mark.parametrize("sites", [4, 16], ids=["pairwise", "fused-chain"])
def test_complex_chain_gradients_follow_torch(sites: int) -> None:
    """A real loss of complex cores: the gradients (conjugate Wirtinger, as torch defines
    them) equal torch.einsum's; 16 sites run the fused chain Function, in grad mode and under
    no_grad (the inference workspace, ``out=`` buffers)."""
    module = classifier(sites)
    x = torch.rand(5, sites, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tensors = [t.detach().clone().requires_grad_() for t in module.tensors.values()]
    ref = reference(module, {"x": x})
    expected = ref(*tensors)
    got = module(x)
    assert_matches(got, expected.detach())
    with torch.no_grad():
        assert_matches(module(x), expected.detach())
    weights = torch.randn(expected.shape, dtype=torch.complex128,
                          generator=torch.Generator().manual_seed(2))
    (torch.abs(got * weights) ** 2).sum().backward()
    want = torch.autograd.grad((torch.abs(expected * weights) ** 2).sum(), tensors)
    grads = module.tensors.grads()
    for name, w in zip(module.tensors, want):
        assert_matches(grads[name], w)


def test_no_conjugation_anywhere() -> None:
    """Purely imaginary cores: a conjugation anywhere flips the sign of the result."""
    module = classifier(16, bond=2)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(1j * p.real)
    x = torch.rand(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    tensors = list(module.tensors.values())
    assert_matches(module(x), reference(module, {"x": x})(*tensors))


def test_double_backward_of_a_complex_chain() -> None:
    module = classifier(16, bond=2)
    x = torch.rand(2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    name = next(n for n, _ in module.named_parameters())
    param = module.get_parameter(name).detach().requires_grad_()

    def loss(p: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(module, {name: p}, (x,))
        return (out.abs() ** 2).sum()
    assert torch.autograd.gradgradcheck(loss, (param,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_complex_tt_layer_runs_dense_and_network_in_grad_mode() -> None:
    text = ("tngraph: 1\nname: t\nnetwork: {template: tt_linear, in_shape: [2, 3], "
            "out_shape: [3, 2], ranks: 2, bias: true}\n")
    x = torch.randn(4, 6, dtype=torch.complex128, generator=torch.Generator().manual_seed(5))
    outs = []
    for execution in ("dense", "network"):
        module = _compile(text, execution=execution)
        y = module(x)
        (y.abs() ** 2).sum().backward()
        assert all(p.grad is not None and p.grad.is_complex() for p in module.parameters())
        outs.append(y.detach())
    assert_matches(outs[0], outs[1])


def test_initial_values_are_complex_with_the_real_scale() -> None:
    real = classifier(8, bond=4, dtype="float64")
    cplx = classifier(8, bond=4)
    for name in real.tensors:
        r, c = real.tensors[name].detach(), cplx.tensors[name].detach()
        assert c.dtype == torch.complex128 and float(c.imag.abs().max()) > 0
        # the same E|z|^2 per node (the product-state 1 is real, the noise complex)
        assert float((c - r).abs().max()) > 0
    noise = lambda m: torch.cat([(t - t.real.round()).detach().flatten()   # noqa: E731
                                 for t in m.tensors.values()])
    ratio = float(noise(cplx).abs().pow(2).mean() / noise(real).abs().pow(2).mean())
    assert 0.5 < ratio < 2.0


def test_complex_data_for_a_real_network_is_refused() -> None:
    module = _compile("tngraph: 1\nname: t\nnetwork: {template: tt_linear, in_shape: [2, 3], "
                      "out_shape: [3, 2], ranks: 2}\n", dtype="float64")
    with pytest.raises(CompileError, match="complex .* but the network is real .* "
                                           "dtype='complex64'"):
        module(torch.ones(2, 6, dtype=torch.complex64))


def test_complex_data_through_a_feature_map_is_refused() -> None:
    module = classifier(4)
    with pytest.raises(CompileError, match="feature map 'multilinear' takes real values"):
        module(torch.ones(2, 4, dtype=torch.complex128))


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_flops_are_counted_as_real_ones(dtype: str) -> None:
    text = rand_spec(5, 2, data=True)
    real = _compile(text, dtype="float32" if dtype == "complex64" else "float64").plan
    cplx = _compile(text, dtype=dtype).plan
    assert FLOP_FACTOR[dtype] == 4
    assert cplx.flops == 4 * real.flops and cplx.naive_flops == 4 * real.naive_flops
    assert [s.flops for s in cplx.steps] == [4 * s.flops for s in real.steps]
    assert cplx.itemsize == 2 * real.itemsize
    report = tngraph.compile(text, dtype=dtype, cache=False).report()
    assert "4 real FLOPs per complex multiply-add" in report


def test_born_machine_trains() -> None:
    """A 6-site complex MPS Born machine, ``p(s) = |psi(s)|^2 / Z``, on one-hot spins: the
    negative log-likelihood of a few patterns drops in a few Adam steps."""
    sites = 6
    module = tngraph.compile(
        f"tngraph: 1\nname: born\nnetwork: {{template: mps, sites: {sites}, phys_dim: 2, "
        "bond_dim: 3, input: s}\n", dtype="complex128", cache=False, seed=0)
    every = torch.tensor([[(k >> i) & 1 for i in range(sites)] for k in range(2 ** sites)])
    one_hot = torch.nn.functional.one_hot(every, 2).to(torch.float64)   # (64, sites, 2)
    data = one_hot[torch.tensor([0b000111, 0b111000, 0b101010, 0b010101])]
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)

    def nll() -> torch.Tensor:
        log_z = torch.log((module(one_hot).abs() ** 2).sum())
        return (log_z - torch.log(module(data).abs() ** 2)).mean()
    first = float(nll().detach())
    for _ in range(30):
        optimizer.zero_grad()
        loss = nll()
        loss.backward()
        optimizer.step()
    last = float(nll().detach())
    assert last < first - 1.0 and last > math.log(4) - 1e-6, (first, last)


# ---------------------------------------------------------------------------------------------
# the TT library and the guarded factorisations in complex


def _crandn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.complex128,
                       generator=torch.Generator().manual_seed(seed))


def test_complex_tt_svd_round_dot_and_norm() -> None:
    a = _crandn(3, 4, 5, 2)
    cores = tt_svd(a)
    assert all(c.dtype == torch.complex128 for c in cores)
    assert_matches(tt_to_dense(cores), a)
    approx = tt_svd(a, eps=0.3)
    assert float((tt_to_dense(approx) - a).norm() / a.norm()) <= 0.3
    doubled = tt_round(tt_add(cores, cores))
    assert tt_ranks(doubled) == tt_ranks(cores)
    assert_matches(tt_to_dense(doubled), 2 * a)
    b_dense = _crandn(3, 4, 5, 2, seed=1)
    b = tt_svd(b_dense)
    assert_matches(tt_dot(cores, b), (a.conj() * b_dense).sum())          # <A|B>
    assert_matches(tt_dot(cores, b, conj=False), (a * b_dense).sum())
    norm = tt_norm(cores)
    assert norm.dtype == torch.float64 and abs(float(norm) - float(a.norm())) < 1e-10
    m = left_orthogonalize(cores)[1].reshape(-1, cores[1].shape[-1])
    assert_matches(m.mH @ m, torch.eye(m.shape[1], dtype=torch.complex128))
    m = right_orthogonalize(cores)[2].reshape(cores[2].shape[0], -1)
    assert_matches(m @ m.mH, torch.eye(m.shape[0], dtype=torch.complex128))


def test_complex_entanglement_is_real_and_matches_the_dense_state() -> None:
    psi = _crandn(2 ** 5, seed=2)
    cores = qtt(psi)
    spectra = bond_spectra(cores)
    for k, s in enumerate(spectra):
        assert s.dtype == torch.float64
        dense = torch.linalg.svdvals(psi.reshape(2 ** (k + 1), -1))[:len(s)]
        assert_matches(s, dense)
    entropy = entanglement_entropy(cores)
    assert entropy.dtype == torch.float64 and bool((entropy > 0).all())
    # a product of complex phases has no entanglement
    phases = torch.exp(1j * torch.rand(5, 2, dtype=torch.float64))
    product = phases[0]
    for p in phases[1:]:
        product = torch.outer(product, p).reshape(-1)
    assert float(entanglement_entropy(qtt(product)).abs().max()) < 1e-10


def test_complex_tt_matrix_round_trip() -> None:
    w = _crandn(6, 8, seed=3)
    cores = tt_matrix(w, [2, 4], [3, 2])
    assert_matches(tt_matrix_to_dense(cores), w)


def test_guarded_svd_and_qr_fall_back_in_complex128(monkeypatch) -> None:
    matrix = _crandn(5, 3, seed=4).to(torch.complex64)
    calls = []
    plain = linalg.thin_svd

    def failing(m: torch.Tensor, **kwargs: object):
        calls.append(m.dtype)
        if m.dtype == torch.complex64:
            raise RuntimeError("no convergence")
        return plain(m, **kwargs)
    monkeypatch.setattr(linalg, "thin_svd", failing)
    with pytest.warns(RuntimeWarning, match="retrying in complex128 on the CPU"):
        u, s, vh = linalg.svd(matrix)
    assert calls == [torch.complex64, torch.complex128]
    assert u.dtype == vh.dtype == torch.complex64 and s.dtype == torch.float32
    assert_matches(u @ torch.diag(s).to(u.dtype) @ vh, matrix, rtol=1e-5)
    q, r = linalg.qr(matrix)
    assert_matches(q @ r, matrix, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# nodes that reuse another node's tensor: same_as, conj


def overlap(sites: int, operator: bool = False) -> tngraph.Network:
    """``<psi|psi>`` (or ``<psi|O|psi>`` with a one-site operator in the middle) of an open
    MPS, the bra's cores ``same_as`` the ket's, conjugated: one set of parameters."""
    net = tngraph.Network(f"overlap{sites}")
    mid = sites // 2
    for k in range(sites):
        legs = {**({"l": 3} if k else {}), "p": 2, **({"r": 3} if k < sites - 1 else {})}
        net.node(f"A{k}", legs)
        net.node(f"B{k}", {**legs, "p": 2}, same_as=f"A{k}", conj=True)
        if k:
            net.edge(f"A{k - 1}.r", f"A{k}.l").edge(f"B{k - 1}.r", f"B{k}.l")
        if operator and k == mid:
            net.node("O", i=2, o=2)
            net.edge(f"A{k}.p", "O.i").edge("O.o", f"B{k}.p")
        else:
            net.edge(f"A{k}.p", f"B{k}.p")
    return net


def _psi(module: tngraph.TNModule, sites: int) -> torch.Tensor:
    t = module.tensors
    psi = t["A0"]
    for k in range(1, sites):
        psi = torch.tensordot(psi, t[f"A{k}"], dims=([-1], [0]))
    return psi


@pytest.mark.parametrize("sites", [3, 12])
def test_bra_shares_the_kets_parameters(sites: int) -> None:
    module = _compile(overlap(sites))
    ket = sum(module.tensors[f"A{k}"].numel() for k in range(sites))
    assert sum(p.numel() for p in module.parameters()) == ket      # (12 sites: stacked)
    assert all(module.tensors.parameter_of(f"B{k}") == module.tensors.parameter_of(f"A{k}")
               for k in range(sites))
    assert sorted(module.state_dict()) == sorted(f"tensors.A{k}" for k in range(sites))
    assert_matches(module.tensors["B1"], module.tensors["A1"].conj())
    value = module()
    psi = _psi(module, sites)
    assert_matches(value, (psi.abs() ** 2).sum().to(value.dtype))
    assert_matches(value, dense_oracle(module))
    value.real.backward()
    grads = module.tensors.grads()
    assert grads["B0"] is None and grads["A0"] is not None
    leaves = [module.tensors[f"A{k}"].detach().clone().requires_grad_() for k in range(sites)]
    psi = leaves[0]
    for leaf in leaves[1:]:
        psi = torch.tensordot(psi, leaf, dims=([-1], [0]))
    want = torch.autograd.grad((psi.abs() ** 2).sum(), leaves)
    for k, w in enumerate(want):
        assert_matches(grads[f"A{k}"], w)


def test_expectation_value_of_an_operator() -> None:
    module = _compile(overlap(4, operator=True))
    op = module.tensors["O"]
    psi = _psi(module, 4)
    expected = torch.einsum("abid,io,abod->", psi, op, psi.conj())   # psi_i O[i, o] psi*_o
    assert_matches(module(), expected)


def test_conj_of_a_real_network_is_a_no_op_and_functional_call_reaches_the_bra() -> None:
    module = _compile(overlap(3), dtype="float64")
    assert_matches(module(), (_psi(module, 3) ** 2).sum())
    zero = torch.zeros_like(module.tensors["A0"])
    out = torch.func.functional_call(module, {"tensors.A0": zero}, ())
    assert float(out.detach().abs()) == 0.0
    assert module.tensors.parameter_of("B2") == "A2"
    with pytest.raises(CompileError, match="reuses node 'A2'.*module.tensors\\['A2'\\]"):
        module.tensors["B2"] = torch.zeros(3, 2, dtype=torch.float64)
    restored = pickle.loads(pickle.dumps(module))
    assert_matches(restored(), module())


def test_same_as_problems_are_located_together() -> None:
    spec = load_spec(overlap(3))
    raw = spec.to_raw()
    nodes = raw["network"]["nodes"]
    nodes["B0"]["same_as"] = "A9"
    nodes["B1"]["same_as"] = "B2"
    nodes["B2"]["legs"] = {"l": 3, "p": 3}
    nodes["A0"]["conj"] = True
    nodes["B2"]["init"] = "ones"
    with pytest.raises(SpecError) as info:
        load_spec(raw)
    messages = sorted(p.message for p in info.value.problems if "same_as" in p.message
                      or "conj" in p.message)
    assert messages == sorted([
        "node A0 has conj: true but no same_as",
        "node B0 has same_as 'A9', which is not a node",
        "node B1 has same_as 'B2', which itself reuses 'A2'",
        "node B2 (shape [3, 3]) has same_as 'A2' of shape [3, 2]; the shapes must be equal",
        "node B2 has same_as 'A2' and an init; it has no tensor of its own"])


# ---------------------------------------------------------------------------------------------
# torch.compile and pipelines


@pytest.mark.parametrize(("sites", "dynamic"), [(4, False), (4, True), (16, False)],
                         ids=["pairwise", "pairwise-dynamic", "fused-chain"])
def test_torch_compile_of_a_complex_network_matches_eager(sites: int, dynamic: bool) -> None:
    """Compiled whole (no graph break) at two batch sizes: complex outputs and the gradients of
    a real loss equal eager ones (16 sites: the fused chain Function)."""
    torch._dynamo.reset()
    module = classifier(sites, optimize="greedy")
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    params = list(module.parameters())
    for batch in (3, 5):
        x = torch.rand(batch, sites, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(batch))
        got, expected = compiled(x), module(x)
        assert got.dtype == torch.complex128
        torch.testing.assert_close(got, expected)
        for a, b in zip(torch.autograd.grad((got.abs() ** 2).sum(), params),
                        torch.autograd.grad((expected.abs() ** 2).sum(), params)):
            assert a.is_complex() and float(a.abs().max()) > 0
            torch.testing.assert_close(a, b)


def test_torch_compile_of_a_bra_ket_network() -> None:
    torch._dynamo.reset()
    module = _compile(overlap(3))
    got = torch.compile(module, fullgraph=True, backend="aot_eager")()
    assert_matches(got, module())
    assert abs(float(got.detach().imag)) < 1e-12 and float(got.detach().real) > 0  # <psi|psi>


PIPELINE = """tngraph: 1
name: complex_pipeline
input_shape: [6]
layers:
  - {{type: linear, name: lin, out_features: {out}}}
  - {{type: {middle}, name: mid}}
  - type: network
    name: mps
    network: {{template: mps, sites: 4, phys_dim: 2, bond_dim: 3, input: x,
               output_dim: 3{port}}}
"""


@pytest.mark.parametrize("first_network", [False, True], ids=["linear-first", "network-first"])
def test_a_complex_pipeline_runs_and_trains(first_network: bool) -> None:
    """Real data into a complex pipeline: up to the first layer with parameters they stay real
    (a network's feature map maps them), then every layer computes in complex."""
    if first_network:
        source = ("tngraph: 1\nname: p\ninput_shape: [6]\nlayers:\n  - type: network\n"
                  "    name: mps1\n    network: {template: mps, sites: 6, phys_dim: 2, bond_dim: 2,"
                  " input: x, feature_map: multilinear, output_dim: 4}\n"
                  "  - {type: tanh, name: act}\n  - {type: linear, name: lin, out_features: 3}\n")
    else:
        source = PIPELINE.format(middle="feature_map", port="", out=4).replace(
            "type: feature_map, name: mid", "type: feature_map, name: mid, map: multilinear")
    pipeline = tngraph.compile(source, dtype="complex128", cache=False, optimize="greedy")
    assert all(p.dtype == torch.complex128 for p in pipeline.parameters())
    x = torch.rand(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = pipeline(x)
    assert out.shape == (5, 3) and out.dtype == torch.complex128
    torch.testing.assert_close(torch.compile(pipeline, fullgraph=True, backend="aot_eager")(x),
                               out)
    opt = torch.optim.Adam(pipeline.parameters(), lr=0.05)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = (pipeline(x).abs() ** 2 - 1).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(("middle", "port", "expected"), [
    ("relu", "", "layer 'mid' (relu) takes real values, but in a complex64 pipeline it receives "
                 "the complex output of layer 'lin'"),
    ("batchnorm", "", "layer 'mid' (batchnorm) takes real values"),
    ("flatten", ", feature_map: multilinear", "network layer 'mps' maps its input x with a "
                                              "feature map, which takes real values"),
])
def test_a_complex_pipeline_refuses_real_only_layers(middle: str, port: str,
                                                     expected: str) -> None:
    source = PIPELINE.format(middle=middle, port=port, out=4 if port else 8)
    with pytest.raises(SpecError) as info:
        tngraph.compile(source, dtype="complex64", cache=False, optimize="greedy")
    (problem,) = info.value.problems
    assert problem.message.startswith(expected)
    assert problem.location is not None and problem.location.line == (6 if port == "" else 7)
    assert "network (ports without feature_map), linear, conv2d" in problem.hint
    with pytest.raises(SpecError):                      # the spec's own plan.dtype, at load
        load_spec(source.replace("input_shape:", "plan: {dtype: complex128}\ninput_shape:"))
    assert tngraph.compile(source, cache=False, optimize="greedy")   # real: no problem


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["compile"]],
                         ids=["train", "compile"])
def test_the_cli_refuses_a_complex_pipeline_with_a_located_error(
        tmp_path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    from tngraph.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(middle="relu", port="", out=8))
    out = ["--out", str(tmp_path / "run")] if command[0] == "train" else []
    assert main([command[0], str(path), *command[1:], "--dtype", "complex128",
                 "--optimize", "greedy", *out]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6:12: error: layer 'mid' (relu) takes real values" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# complex networks through tngraph train / eval / --resume


def test_a_complex_classifier_trains_saves_resumes_and_evaluates_from_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Class scores by the Born rule (log |out|^2); weights written as real pairs (safetensors
    has no complex dtype) and read back complex; a complex regression is refused."""
    from tngraph.cli import main
    from tngraph.train import read_weights

    spec = tmp_path / "born.yaml"
    spec.write_text("tngraph: 1\nname: born\nnetwork: {template: mps, sites: 64, phys_dim: 2, "
                    "bond_dim: 2, input: x, feature_map: multilinear, output_dim: 10}\n"
                    "plan: {dtype: complex64, optimize: greedy}\n")
    run = tmp_path / "run"
    fast = ["--batch-size", "512"]
    assert main(["train", str(spec), "--epochs", "1", "--out", str(run), *fast]) == 0
    weights = read_weights(run / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.complex64}
    module = tngraph.compile(spec, cache=False)
    module.load_state_dict(weights)
    assert main(["eval", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0   # (its recorded options)
    assert "accuracy" in capsys.readouterr().out
    code = main(["train", str(spec), "--data", "synthetic-regression?n_features=64",
                 "--out", str(tmp_path / "reg")])
    assert code == 2
    assert "is a regression of real targets" in capsys.readouterr().err
