"""Optimizer strategies: registry, options located in the spec, CLI syntax, schedule, steppers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from tngraph.cli import main
from tngraph.errors import PluginError, SpecError
from tngraph.optimizers import (
    OPTIMIZERS,
    NonFiniteLoss,
    OptimizerContext,
    TorchStepper,
    get_optimizer,
    learning_rate,
    list_optimizers,
    register_optimizer,
)
from tngraph.spec import load_spec

SPEC = """\
tngraph: 1
name: tiny
network: {{template: mps, sites: 64, phys_dim: 2, bond_dim: 2, input: x,
          feature_map: multilinear, output_dim: 10}}
train:
  epochs: 1
  optimizer: {optimizer}
"""


def test_builtins_are_registered_through_entry_points() -> None:
    info = {i.name: i for i in OPTIMIZERS.info()}
    assert {"adam", "sgd"} <= set(list_optimizers())
    assert info["adam"].distribution == "tngraph" and info["adam"].error is None


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(PluginError, match="unknown optimizer 'adma'; did you mean 'adam'"):
        get_optimizer("adma")


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(PluginError, match="already registered"):
        register_optimizer(get_optimizer("adam"))


@pytest.mark.parametrize(("value", "message", "line"), [
    ("adma", "unknown optimizer 'adma'; did you mean 'adam'", 7),
    ("{name: sgd, momentum: -1}", "train.optimizer.momentum: Input should be greater than", 7),
    ("{name: adam, beta: 0.9}", "unknown key 'beta' in train.optimizer", 7),
])
def test_bad_optimizer_in_a_spec_is_located(value: str, message: str, line: int) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(SPEC.format(optimizer=value))
    text = str(info.value)
    assert message in text and f":{line}:" in text


def test_options_round_trip_through_the_raw_form() -> None:
    spec = load_spec(SPEC.format(optimizer="{name: sgd, momentum: 0.5, nesterov: true}"))
    assert spec.train.optimizer.options == {"momentum": 0.5, "nesterov": True}
    assert spec.to_raw()["train"]["optimizer"] == {"name": "sgd", "momentum": 0.5,
                                                   "nesterov": True}


@pytest.mark.parametrize(("epoch", "expected"), [(1, 0.1), (3, 0.05),
                                               (4, 0.1 * (1 - 0.5**0.5) / 2)])
def test_cosine_schedule_matches_torch(epoch: int, expected: float) -> None:
    assert learning_rate(0.1, epoch, 4, "cosine") == pytest.approx(expected)
    assert learning_rate(0.1, epoch, 4, "constant") == 0.1


def test_cosine_schedule_equals_cosine_annealing_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    for epoch in range(1, 8):
        assert learning_rate(0.3, epoch, 7, "cosine") == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


@pytest.mark.parametrize(("name", "options", "cls"), [
    ("adam", {}, torch.optim.Adam),
    ("adam", {"decoupled": True}, torch.optim.AdamW),
    ("sgd", {"momentum": 0.5, "nesterov": True}, torch.optim.SGD),
])
def test_torch_strategies_build_the_named_optimizer(name: str, options: dict, cls: type) -> None:
    strategy = get_optimizer(name)
    model = torch.nn.Linear(3, 2)
    stepper = strategy.create(model, strategy.options(**options), OptimizerContext(lr=0.01))
    assert type(stepper.optimizer) is cls
    stepper.set_lr(0.002)
    assert stepper.optimizer.param_groups[0]["lr"] == 0.002
    for key, value in options.items():
        if key != "decoupled":
            assert stepper.optimizer.param_groups[0][key] == value


def test_a_step_decreases_the_loss_and_a_bad_loss_changes_nothing() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    strategy = get_optimizer("sgd")
    stepper = strategy.create(model, strategy.options(), OptimizerContext(lr=0.05))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    losses = [float(stepper.step(x, lambda out: ((out - y) ** 2).mean())[0]) for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0]
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLoss):
        stepper.step(x, lambda out: out.sum() * float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_cli_optimizer_with_options(tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(textwrap.dedent(SPEC.format(optimizer="adam")))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--optimizer", "sgd?momentum=0.5", "--out", str(run),
                 "--epochs", "1"]) == 0
    assert '"momentum": 0.5' in (run / "config.json").read_text()


@pytest.mark.parametrize(("flag", "message"), [
    ("dmgr", "unknown optimizer 'dmgr'"),
    ("adam?bettas=0.5", "optimizer 'adam': unknown option 'bettas'; did you mean 'betas'? "
                        "valid: amsgrad, betas, decoupled, eps"),
    ("adam?betas=3", "optimizer 'adam': betas: Input should be a valid tuple, got 3"),
    ("sgd?momentum=-1", "optimizer 'sgd': momentum: Input should be greater than or equal to 0, "
                        "got -1"),
])
def test_cli_bad_optimizer_is_a_user_error(tmp_path: Path, capsys, flag: str,
                                           message: str) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC.format(optimizer="adam"))
    assert main(["train", str(spec), "--optimizer", flag, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "pydantic" not in err
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------
# parameter buffer: the flat stepping of elementwise optimizers equals per-parameter stepping

class _Branches(torch.nn.Module):
    """A compiled MPS, a float64 linear head, a frozen parameter and an optional branch (used
    when ``self.both``): mixed dtypes, a parameter without gradient, partial gradients."""

    def __init__(self) -> None:
        super().__init__()
        import tngraph

        torch.manual_seed(0)
        self.mps = tngraph.compile(MPS_SPEC, seed=1)
        self.head = torch.nn.Linear(4, 3).double()
        self.frozen = torch.nn.Parameter(torch.ones(4), requires_grad=False)
        self.extra = torch.nn.Linear(4, 3)
        self.both = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mps(x) * self.frozen
        out = self.head(h.double())
        if self.both:
            out = out + self.extra(h).double()
        return out


MPS_SPEC = """\
tngraph: 1
name: small
network: {template: mps, sites: 6, phys_dim: 2, bond_dim: 3, input: x,
          feature_map: multilinear, output_dim: 4}
"""

ELEMENTWISE = [
    (torch.optim.Adam, {"lr": 0.01}),
    (torch.optim.Adam, {"lr": 0.01, "fused": True, "amsgrad": True, "weight_decay": 0.1}),
    (torch.optim.AdamW, {"lr": 0.01, "foreach": False}),
    (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5}),
    (torch.optim.Adagrad, {"lr": 0.05}),
]


def _losses(stepper: TorchStepper, model: _Branches, steps: int, partial_from: int | None = None
            ) -> list[float]:
    gen = torch.Generator().manual_seed(5)
    losses = []
    for k in range(steps):
        model.both = partial_from is None or k < partial_from or k % 2 == 0
        x = torch.rand(8, 6, generator=gen)
        y = torch.randn(8, 3, generator=gen, dtype=torch.float64)
        loss, _ = stepper.step(x, lambda out, y=y: ((out - y) ** 2).mean())
        losses.append(float(loss))
    return losses


def _plain_and_buffered(cls: type, options: dict) -> tuple[_Branches, TorchStepper,
                                                              _Branches, TorchStepper]:
    plain_model, buffered_model = _Branches(), _Branches()
    buffered_model.load_state_dict(plain_model.state_dict())
    plain = TorchStepper(plain_model, cls(list(plain_model.parameters()), **options))
    buffered = TorchStepper.over_buffer(buffered_model, cls, **options)
    return plain_model, plain, buffered_model, buffered


def _assert_same_state(a: dict, b: dict, frozen: tuple[int, ...] = ()) -> None:
    """Equal optimizer states; ``frozen`` parameters (no gradient ever) may have a state in
    ``a`` only (Adagrad makes its state for every parameter up front)."""
    assert a["param_groups"] == b["param_groups"]
    assert set(a["state"]) - set(frozen) == set(b["state"])
    for key, state in a["state"].items():
        if key in frozen:
            continue
        assert state.keys() == b["state"][key].keys()
        for name, value in state.items():
            torch.testing.assert_close(value, b["state"][key][name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("cls", "options"), ELEMENTWISE)
def test_buffered_stepping_equals_per_parameter_stepping(cls: type, options: dict) -> None:
    plain_model, plain, buffered_model, buffered = _plain_and_buffered(cls, options)
    assert buffered.buffer is not None and len(buffered.buffer.flats) == 2  # float32, float64
    assert len(buffered.optimizer.param_groups[0]["params"]) == 2
    assert _losses(plain, plain_model, 6) == pytest.approx(_losses(buffered, buffered_model, 6),
                                                            rel=1e-6)
    for (name, a), b in zip(plain_model.state_dict().items(),
                            buffered_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    # checkpoints carry the per-parameter form: interchangeable with a plain optimizer's
    frozen = tuple(i for i, p in enumerate(plain_model.parameters()) if not p.requires_grad)
    _assert_same_state(plain.state_dict()["optimizer"], buffered.state_dict()["optimizer"],
                       frozen)
    assert buffered.buffer is not None


def test_buffer_keeps_parameters_names_and_values() -> None:
    model = _Branches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    stepper = TorchStepper.over_buffer(model, torch.optim.Adam, lr=0.01)
    assert list(model.parameters()) == params                 # the same parameter objects
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert stepper.buffer is not None and stepper.buffer.intact()
    flat32 = stepper.buffer.flats[0]
    core = model.mps.tensors["A0"]
    start = core.data_ptr() - flat32.data_ptr()
    assert 0 <= start < flat32.numel() * flat32.element_size()   # a view of the buffer
    assert model.frozen.data_ptr() not in {f.data_ptr() for f in stepper.buffer.flats}


@pytest.mark.parametrize(("cls", "options"), ELEMENTWISE[:4])
def test_partial_gradients_switch_to_per_parameter_stepping(cls: type, options: dict) -> None:
    plain_model, plain, buffered_model, buffered = _plain_and_buffered(cls, options)
    # from step 3 on, the extra branch gets no gradient on odd steps: a per-parameter optimizer
    # leaves it alone there (no momentum step), and so must the buffered stepper
    want = _losses(plain, plain_model, 8, partial_from=3)
    got = _losses(buffered, buffered_model, 8, partial_from=3)
    assert buffered.buffer is None                            # switched, for good
    assert got == pytest.approx(want, rel=1e-6)
    for a, b in zip(plain_model.parameters(), buffered_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_checkpoint_state_loads_across_plain_and_buffered_steppers() -> None:
    plain_model, plain, buffered_model, buffered = _plain_and_buffered(
        torch.optim.Adam, {"lr": 0.01})
    _losses(plain, plain_model, 3)
    buffered_model.load_state_dict(plain_model.state_dict())
    buffered.load_state_dict(plain.state_dict())              # plain -> buffered
    assert buffered.buffer is not None
    _assert_same_state(plain.state_dict()["optimizer"], buffered.state_dict()["optimizer"])
    assert _losses(plain, plain_model, 3) == pytest.approx(_losses(buffered, buffered_model, 3),
                                                            rel=1e-6)
    # a state whose members sit at different steps has no buffer form: per-parameter from then
    state = plain.state_dict()
    first = next(iter(state["optimizer"]["state"].values()))
    first["step"] = first["step"] + 1
    buffered.load_state_dict(state)
    assert buffered.buffer is None


def test_moved_parameters_are_reseated_with_their_statistics() -> None:
    plain_model, plain, buffered_model, buffered = _plain_and_buffered(
        torch.optim.Adam, {"lr": 0.01})
    _losses(plain, plain_model, 2)
    _losses(buffered, buffered_model, 2)
    old = buffered.buffer
    moved = buffered_model.mps.tensors.get_parameter("stack:0")    # a stacked storage
    moved.data = moved.data.clone()
    assert old is not None and not old.intact()
    assert _losses(plain, plain_model, 3) == pytest.approx(_losses(buffered, buffered_model, 3),
                                                            rel=1e-6)
    assert buffered.buffer is not old and buffered.buffer is not None
    assert buffered.buffer.intact()


@pytest.mark.parametrize(("cls", "frozen"), [(torch.optim.LBFGS, False),
                                             (torch.optim.SparseAdam, False),
                                             (torch.optim.Adam, True)])
def test_other_optimizers_step_the_parameters_themselves(cls: type, frozen: bool) -> None:
    model = torch.nn.Linear(3, 2).requires_grad_(not frozen)   # frozen: nothing to buffer
    stepper = TorchStepper.over_buffer(model, cls, lr=0.1)
    assert stepper.buffer is None
    assert stepper.optimizer.param_groups[0]["params"] == list(model.parameters())


def test_sparse_gradients_step_per_parameter() -> None:
    model = torch.nn.Embedding(10, 3, sparse=True)
    stepper = TorchStepper.over_buffer(model, torch.optim.SGD, lr=0.5)
    before = model.weight.detach().clone()
    stepper.step(torch.tensor([1, 2]), lambda out: out.sum())
    assert stepper.buffer is None
    changed = (model.weight != before).any(dim=1)
    assert changed.tolist() == [i in (1, 2) for i in range(10)]


@pytest.mark.parametrize("name", ["adam", "sgd"])
@pytest.mark.parametrize("moved_after_a_step", [False, True], ids=["moved_first", "moved_later"])
def test_buffer_follows_the_parameters_device(name: str, moved_after_a_step: bool) -> None:
    """Parameters on another device (``meta``, as a GPU would be): the buffer, the gradients and
    the optimizer's statistics live there too, also when the model moves after a step."""
    import tngraph

    model = tngraph.compile(MPS_SPEC, optimize="greedy", cache=False)
    if not moved_after_a_step:
        model.to("meta")
    strategy = get_optimizer(name)
    stepper = strategy.create(model, strategy.options(), OptimizerContext(lr=0.01))
    device = "cpu" if moved_after_a_step else "meta"
    for _ in range(2):
        stepper.zero_grad()
        model(torch.rand(4, 6, device=device)).sum().backward()
        stepper.update()
        if moved_after_a_step and device == "cpu":
            model.to("meta")
            device = "meta"
    assert stepper.buffer is not None and stepper.buffer.intact()
    assert {flat.device.type for flat in stepper.buffer.flats} == {"meta"}
    state = [v for s in stepper.optimizer.state.values() for v in s.values()
             if isinstance(v, torch.Tensor) and v.dim() > 0]
    assert state and {v.device.type for v in state} == {"meta"}


def test_parameters_replaced_in_swapped_submodules_are_noticed() -> None:
    """BatchNorm swapped for SyncBatchNorm (same parameters), then parameter objects replaced
    in the new module: noticed once the stepper tracks the swapped submodules."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    stepper = TorchStepper.over_buffer(model, torch.optim.SGD, lr=0.1)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(model[1], torch.nn.SyncBatchNorm)
    assert not stepper._parameters_replaced()
    stepper.track_submodules()
    model[1].weight = torch.nn.Parameter(model[1].weight.detach().clone())
    assert stepper._parameters_replaced()
    model(torch.randn(5, 3)).sum().backward()
    stepper.update()
    assert stepper.buffer is not None and stepper.buffer.params[2] is model[1].weight
