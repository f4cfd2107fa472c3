"""Optimizer strategies: registry, options located in the spec, CLI syntax, schedule, steppers."""

from __future__ import annotations

import copy
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
# the torch stepper over a compiled network (its cores stored stacked)

MPS_SPEC = """\
tngraph: 1
name: small
network: {template: mps, sites: 12, phys_dim: 2, bond_dim: 3, input: x,
          feature_map: multilinear, output_dim: 4}
"""


def _run(stepper: TorchStepper, model: torch.nn.Module, steps: int, seed: int = 5
         ) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x = torch.rand(8, 12, generator=gen)
        y = torch.randn(8, 4, generator=gen)
        losses.append(float(stepper.step(x, lambda out, y=y: ((out - y) ** 2).mean())[0]))
    return losses


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_the_stepper_steps_the_stacked_storages_as_a_plain_optimizer_would(name: str) -> None:
    """The strategy's stepper is its torch optimizer over ``module.parameters()``: the same
    weights as a hand-written loop, and a checkpoint of its state resumes exactly."""
    import tngraph

    models = [tngraph.compile(MPS_SPEC, seed=1, cache=False) for _ in range(3)]
    assert len(list(models[0].parameters())) < len(models[0].tensors)
    strategy = get_optimizer(name)
    options = {"adam": {"lr": 0.01, "fused": True}, "sgd": {"lr": 0.01, "momentum": 0.9}}[name]
    cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    ours = strategy.create(models[0], strategy.options(), OptimizerContext(lr=0.01))
    plain = TorchStepper(models[1], cls(models[1].parameters(), **options))
    assert _run(ours, models[0], 4) == _run(plain, models[1], 4)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    # resume: a new stepper over a copy, loaded from the state, takes the same next steps
    models[2].load_state_dict(models[0].state_dict())
    resumed = strategy.create(models[2], strategy.options(), OptimizerContext(lr=0.01))
    resumed.load_state_dict(copy.deepcopy(ours.state_dict()))     # (as read from a file)
    assert _run(ours, models[0], 2, seed=6) == _run(resumed, models[2], 2, seed=6)


def test_grad_clip_bounds_the_global_norm_of_a_step() -> None:
    import tngraph

    model = tngraph.compile(MPS_SPEC, seed=1, cache=False)
    stepper = TorchStepper(model, torch.optim.SGD(model.parameters(), lr=1.0))
    stepper.max_grad_norm = 1e-3
    before = [p.detach().clone() for p in model.parameters()]
    _run(stepper, model, 1)
    moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before)])
    assert float(moved.norm()) == pytest.approx(1e-3, rel=1e-4)


def test_an_optimizer_state_of_another_layout_is_refused_with_the_fix() -> None:
    """A run saved when every core was a parameter of its own has the optimizer state of as
    many tensors: resuming it is a clear error naming --init, not torch's ValueError."""
    import tngraph
    from tngraph.optimizers import OptimizerStateError

    model = tngraph.compile(MPS_SPEC, seed=1, cache=False)
    stepper = TorchStepper(model, torch.optim.Adam(model.parameters(), lr=0.01))
    _run(stepper, model, 1)
    state = copy.deepcopy(stepper.state_dict())
    state["optimizer"]["param_groups"][0]["params"] = list(range(12))
    held = len(list(model.parameters()))
    assert held < 12                      # the cores of stacked kernels are stored together
    want = (rf"saved for 12 parameter tensor\(s\), but this module has {held}: "
            r".*--init RUN/model\.safetensors")
    with pytest.raises(OptimizerStateError, match=want):
        stepper.load_state_dict(state)
