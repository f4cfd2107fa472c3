"""Training and evaluation: the loop, metrics files, checkpoints, resume, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import CUDA, ROOT

import tngraph
from tngraph.cli import main
from tngraph.train import MODEL_FILE, Launch, TrainingError, load_weights, resolve_device, train

SMALL = """
tngraph: 1
name: small_mps
params: {bond_dim: 3, sites: 64, classes: 10}
network:
  template: mps
  sites: ${sites}
  phys_dim: 2
  bond_dim: ${bond_dim}
  input: x
  feature_map: multilinear
  output_dim: ${classes}
train: {epochs: 2, batch_size: 128, lr: 0.01}
plan: {optimize: random-greedy-128}
"""


@pytest.fixture()
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / MODEL_FILE))


def test_training_learns_and_writes_its_files(spec_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(spec_file, run_dir=run, echo=None, epochs=3)
    losses = [h.train_loss for h in result.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert result.test["accuracy"] > 0.5                  # far above chance (0.1)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert tngraph.load_spec(run / "spec.yaml").network == tngraph.load_spec(spec_file).network
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    module = tngraph.compile(run / "spec.yaml")
    load_weights(module, run / MODEL_FILE)
    from tngraph.data import load_dataset
    from tngraph.train import evaluate

    assert evaluate(module, load_dataset("digits"), "test") == pytest.approx(result.test)


def test_same_seed_same_run(spec_file: Path, tmp_path: Path) -> None:
    a = train(spec_file, run_dir=tmp_path / "a", echo=None, epochs=1)
    b = train(spec_file, run_dir=tmp_path / "b", echo=None, epochs=1)
    assert a.history[0].train_loss == b.history[0].train_loss
    assert a.test == b.test


DROPOUT = """
tngraph: 1
name: dropout_mlp
input_shape: [64]
layers:
  - {type: linear, name: fc1, out_features: 32}
  - {type: relu, name: act}
  - {type: dropout, name: drop, p: 0.5}
  - {type: linear, name: fc2, out_features: 10}
train: {epochs: 3, batch_size: 128, lr: 0.01}
"""


@pytest.mark.parametrize(("model", "device"), [
    ("mps", "cpu"), ("dropout", "cpu"),
    pytest.param("mps", "cuda", marks=CUDA), pytest.param("dropout", "cuda", marks=CUDA)])
def test_resume_continues_exactly(spec_file: Path, tmp_path: Path, model: str,
                                  device: str) -> None:
    """Weights, optimizer state, batch order and the random state (dropout masks: the CPU
    generator's, on a GPU the device's) all carry over."""
    if model == "dropout":
        spec_file.write_text(DROPOUT)
    straight = train(spec_file, run_dir=tmp_path / "straight", echo=None, epochs=3,
                     device=device)

    def interrupt_after_epoch_2(line: str) -> None:
        if line.startswith("epoch   2"):
            raise KeyboardInterrupt                     # as if killed after the checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(spec_file, run_dir=tmp_path / "split", echo=interrupt_after_epoch_2, epochs=3,
              device=device)
    resumed = train(resume=tmp_path / "split", echo=None)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.history[-1].train_loss == pytest.approx(straight.history[-1].train_loss,
                                                           rel=1e-6)
    for key, value in _weights(tmp_path / "straight").items():
        torch.testing.assert_close(_weights(tmp_path / "split")[key], value)


@pytest.mark.parametrize(("change", "message"), [
    ({"seed": 5}, "was trained with seed 0; a resumed run keeps its seed"),
    ({"data": "digits?val_fraction=0.2"}, "was trained with data 'digits'"),
    # another optimizer's state would not fit (it was a KeyError: 'momentum')
    ({"optimizer": "sgd"}, "was trained with optimizer 'adam'; a resumed run continues its "
                           "optimizer state"),
])
def test_resume_keeps_the_data_split(spec_file: Path, tmp_path: Path, change: dict,
                                     message: str) -> None:
    run = tmp_path / "run"
    train(spec_file, run_dir=run, echo=None, epochs=1)
    with pytest.raises(TrainingError, match=message):
        train(resume=run, echo=None, epochs=2, **change)
    assert [h.epoch for h in train(resume=run, echo=None, epochs=2, seed=0).history] == [1, 2]


@pytest.mark.parametrize("damage", ["{\"train\": {\"epo", "[1, 2]", ""])
def test_resume_of_a_damaged_config_is_a_user_error(spec_file: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     damage: str) -> None:
    run = tmp_path / "run"
    train(spec_file, run_dir=run, echo=None, epochs=1)
    (run / "config.json").write_text(damage)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "it is not the config.json tngraph train writes" in err
    assert "Traceback" not in err


def test_the_same_seed_gives_bitwise_the_same_weights(tmp_path: Path) -> None:
    """Three runs of a TT-layer model (whose execution is chosen from its plan, never timed)
    end with equal bits."""
    runs = [train(ROOT / "models/mlp_tt.yaml", run_dir=tmp_path / f"run{k}", echo=None,
                  epochs=2, seed=3) for k in range(3)]
    weights = [_weights(tmp_path / f"run{k}") for k in range(3)]
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(torch.equal(other[key], weights[0][key]) for key in weights[0])
    assert runs[0].history[-1].train_loss == runs[2].history[-1].train_loss


class _Crafted:
    """Unpickling this would run code: it calls ``Path.touch`` on a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def _reseal(run: Path, name: str) -> None:
    """Make the checkpoint manifest vouch for ``run/name`` as it is now, as someone who
    crafted the file would: what is left to stop it is how the file is read."""
    from tngraph.files import sha256_file

    manifest = json.loads((run / "checkpoint.json").read_text())
    manifest["files"][name]["sha256"] = sha256_file(run / name)
    (run / "checkpoint.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["crafted", "truncated", "foreign"])
def test_resume_reads_state_pt_as_data_only(spec_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            damage: str) -> None:
    """A state.pt that would run code when unpickled is refused without running it; a damaged
    or foreign one is a user error with the fix (exit 2, no traceback)."""
    run = tmp_path / "run"
    train(spec_file, run_dir=run, echo=None, epochs=1)
    marker = tmp_path / "code-ran"
    state = run / "state.pt"
    if damage == "crafted":
        torch.save({"epoch": 1, "stepper": _Crafted(marker)}, state)
    elif damage == "truncated":
        state.write_bytes(state.read_bytes()[:100])
    else:
        torch.save([1, 2, 3], state)
    _reseal(run, "state.pt")
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {state}" in err and "Traceback" not in err
    assert "train a new run from" in err
    assert not marker.exists()


def test_regression_metrics_are_strict_json_with_a_train_r2(tmp_path: Path) -> None:
    """metrics.jsonl of a regression run parses as strict JSON (no NaN), and its train metric
    is the epoch's R² (it was NaN on every line)."""
    spec = tmp_path / "reg.yaml"
    spec.write_text("tngraph: 1\nname: reg\ninput_shape: [8]\n"
                    "layers: [{type: linear, out_features: 2}]\n")
    run = tmp_path / "run"
    result = train(spec, run_dir=run, echo=None, epochs=3, lr=0.05,
                   data="synthetic-regression?n_samples=200&n_features=8&n_targets=2")

    def refuse(value: str) -> None:
        raise AssertionError(f"not strict JSON: {value}")

    lines = [json.loads(line, parse_constant=refuse)
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert all(isinstance(line["train_metric"], float) for line in lines)
    assert lines[-1]["train_metric"] > lines[0]["train_metric"]          # R² rises
    assert lines[-1]["train_metric"] <= 1.0
    assert result.history[-1].train_metric == lines[-1]["train_metric"]


@pytest.mark.parametrize("occupant", ["own-spec", "a-file"])
def test_out_refuses_a_folder_with_other_files(spec_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               occupant: str) -> None:
    """--out next to the user's own spec.yaml (or onto a file) would replace it: refused, the
    file untouched."""
    out = tmp_path / "out"
    if occupant == "own-spec":
        out.mkdir()
        (out / "spec.yaml").write_text("# my own spec, with comments\n")
        expected = f"{out} is not empty (spec.yaml)"
    else:
        out.write_text("not a folder")
        expected = f"--out {out} is a file, not a folder"
    before = (out / "spec.yaml").read_text() if out.is_dir() else out.read_text()
    assert main(["train", str(spec_file), "--epochs", "1", "--out", str(out)]) == 2
    assert expected in capsys.readouterr().err
    assert ((out / "spec.yaml").read_text() if out.is_dir() else out.read_text()) == before
    if out.is_dir():
        assert sorted(p.name for p in out.iterdir()) == ["spec.yaml"]      # nothing written


def test_the_plan_is_for_at_most_the_training_set(spec_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than the training set is the whole set: the plan is made for that many
    examples, not for 10^8 (which ran out of memory)."""
    import tngraph.train.loop as loop

    planned: list[int] = []
    real = loop.compile_spec
    monkeypatch.setattr(loop, "compile_spec",
                        lambda spec, **kw: planned.append(kw["batch_size"]) or real(spec, **kw))
    train(spec_file, run_dir=tmp_path / "run", echo=None, epochs=1, batch_size=10 ** 8)
    assert planned == [1258]                      # the digits training split


@pytest.mark.parametrize("damage", ["missing", "damaged"])
def test_eval_of_a_run_without_its_config_asks_for_the_split(
        spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        damage: str) -> None:
    """Without its config.json a run's split is unknown: eval refused to guess seed 0 (its
    test split could hold training examples) unless --data and --seed say which."""
    run = tmp_path / "run"
    train(spec_file, run_dir=run, echo=None, epochs=1, seed=3)
    if damage == "missing":
        (run / "config.json").unlink()
    else:
        (run / "config.json").write_text("{not json")
    assert main(["eval", str(run)]) == 2
    assert f"cannot tell which split {run} was trained on" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", "digits", "--seed", "3"]) == 0


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(spec_file: Path,
                                                                 tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match="the loss became .* training stopped"):
        train(spec_file, run_dir=run, echo=None, epochs=3, lr=1e12, optimizer="sgd")
    from safetensors import safe_open

    with safe_open(str(run / MODEL_FILE), "pt") as fh:      # the epoch-0 (initial) weights
        assert fh.metadata()["epoch"] == "0"
        assert all(torch.isfinite(fh.get_tensor(k)).all() for k in fh.keys())  # noqa: SIM118


@pytest.mark.parametrize(("overrides", "message"), [
    ({"sites": 16}, "takes 16 values per example but dataset 'digits' has 64 features"),
    ({"classes": 7}, "has 7 outputs per example but dataset 'digits' has 10 classes"),
])
def test_network_must_fit_the_data(spec_file: Path, tmp_path: Path, overrides: dict,
                                   message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        train(spec_file, overrides, run_dir=tmp_path / "run", echo=None)


def test_an_existing_run_is_not_overwritten(spec_file: Path, tmp_path: Path) -> None:
    train(spec_file, run_dir=tmp_path / "run", echo=None, epochs=1)
    with pytest.raises(TrainingError, match="already holds a run; resume it"):
        train(spec_file, run_dir=tmp_path / "run", echo=None, epochs=1)


def test_cli_train_then_eval(spec_file: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(spec_file), "--epochs", "1", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch   1" in out and "test (best epoch 1): loss" in out
    assert main(["eval", str(spec_file), "--checkpoint", str(run / MODEL_FILE)]) == 0
    assert "digits test (359 examples): loss" in capsys.readouterr().out


def test_cli_eval_of_a_run_directory_uses_its_split(spec_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``tngraph eval RUN``: the run's spec, weights, data and seed (another seed is another
    split: its test examples would partly be the run's training examples)."""
    run = tmp_path / "run"
    result = train(spec_file, run_dir=run, echo=None, epochs=1, seed=3)
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    test = result.test
    assert f"loss {test['loss']:.4f}  accuracy {test['accuracy']:.4f}" in out
    assert str(run / "best.safetensors") in out         # the weights the run tested
    assert main(["eval", str(run), "--split", "val"]) == 0
    last = result.history[-1]
    assert f"loss {last.val_loss:.4f}  accuracy {last.val_metric:.4f}" in capsys.readouterr().out
    # a spec file with the run's checkpoint: the split is still the run's
    assert main(["eval", str(spec_file), "--checkpoint", str(run / MODEL_FILE)]) == 0
    assert f"loss {test['loss']:.4f}  accuracy {test['accuracy']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize(("target", "message"), [
    ("spec", "which weights? give --checkpoint RUN/model.safetensors, or the run directory"),
    ("folder", "is a folder without spec.yaml"),
])
def test_cli_eval_needs_weights(spec_file: Path, tmp_path: Path, target: str, message: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(spec_file if target == "spec" else tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@CUDA
def test_cli_train_then_eval_on_cuda(spec_file: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(spec_file), "--epochs", "2", "--out", str(run),
                 "--device", "cuda"]) == 0
    on_gpu = json.loads((run / "summary.json").read_text())["test"]
    capsys.readouterr()
    assert main(["eval", str(spec_file), "--checkpoint", str(run / MODEL_FILE),
                 "--device", "cpu"]) == 0
    assert f"accuracy {on_gpu['accuracy']:.4f}" in capsys.readouterr().out
    resumed = train(resume=run, echo=None, epochs=3, device="cpu")    # GPU run, CPU machine
    assert [h.epoch for h in resumed.history] == [1, 2, 3]


def test_cli_plan_flags_reach_the_run_and_its_resume(spec_file: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", str(spec_file), "--epochs", "1", "--out", str(run), "--dtype",
                 "float64", "--optimize", "greedy", "--plan-strategy", "network",
                 "--run-path", "min-flops", "--no-cache"]) == 0
    plan = tngraph.load_spec(run / "spec.yaml").plan
    assert (plan.dtype, plan.optimize, plan.execution, plan.run_path, plan.cache) == (
        "float64", "greedy", "network", "min-flops", False)
    assert {t.dtype for t in _weights(run).values()} == {torch.float64}
    resumed = train(resume=run, echo=None, epochs=2)
    assert [h.epoch for h in resumed.history] == [1, 2]
    assert {t.dtype for t in _weights(run).values()} == {torch.float64}


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@pytest.mark.parametrize(("argv", "message"), [
    (["--data", "digitz"], "unknown dataset 'digitz'"),
    (["--lr", "-1"], "invalid training option"),
    (["--set", "sites=16"], "64 features"),
    (["--device", "tpu"], "unknown device 'tpu': expected one of cpu, cuda, mps, xpu"),
    (["--device", "cuda:"], "unknown device 'cuda:'"),
    pytest.param(["--device", "cuda"], "CUDA is not available on this machine; use --device cpu",
                 marks=NO_CUDA),
    (["--device", f"cuda:{max(torch.cuda.device_count(), 1) + 7}"], "not available"
     if not torch.cuda.is_available() else "device(s), numbered from 0"),
    (["--optimize", "greedyy"], "unknown path finder 'greedyy' (did you mean 'greedy'?"),
    (["--memory-limit", "12XB"], "cannot read memory limit '12XB'"),
    (["--memory-limit", "1kB"], "over the memory limit"),
    (["--seed", "-1"], "seed: Input should be greater than or equal to 0, got -1"),
    (["--seed", str(2 ** 70)], "seed: Input should be less than 9223372036854775808"),
    (["--lr", "inf"], "lr: Input should be a finite number, got inf"),
    (["--weight-decay", "nan"], "weight_decay: Input should be a finite number"),
])
def test_cli_train_errors_exit_2(spec_file: Path, tmp_path: Path, argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything is written: no run directory is left behind."""
    code = main(["train", str(spec_file), "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["eval", "distill"])
def test_cli_eval_and_distill_check_the_device(spec_file: Path, tmp_path: Path, command: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    extra = (["--checkpoint", str(tmp_path / "none.safetensors")] if command == "eval" else
             ["--teacher", str(spec_file), "--out", str(tmp_path / "run")])
    code = main([command, str(spec_file), "--device", "gpu", *extra])
    assert code == 2
    assert "unknown device 'gpu'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("name", "expected"), [("cpu", "cpu"), ("cpu:0", "cpu:0")])
def test_resolve_device(name: str, expected: str) -> None:
    assert resolve_device(name) == torch.device(expected)


@CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_resolve_device_on_a_gpu(name: str) -> None:
    assert resolve_device(name).type == "cuda"
    with pytest.raises(TrainingError, match="numbered from 0"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    assert resolve_device(name, Launch(rank=1, world_size=2, local_rank=0)) == \
        torch.device("cuda", 0)


def test_cli_eval_with_a_foreign_checkpoint_exits_2(spec_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    train(spec_file, run_dir=run, echo=None, epochs=1)
    code = main(["eval", str(spec_file), "--set", "bond_dim=4", "--checkpoint",
                 str(run / MODEL_FILE)])
    assert code == 2
    assert "does not fit network 'small_mps'" in capsys.readouterr().err


def test_init_starts_a_new_run_from_given_weights(spec_file: Path, tmp_path: Path) -> None:
    first = train(spec_file, run_dir=tmp_path / "a", echo=None, epochs=1)
    weights = first.run_dir / MODEL_FILE
    assert main(["train", str(spec_file), "--init", str(weights), "--epochs", "1",
                 "--lr", "1e-12", "--optimizer", "sgd", "--out", str(tmp_path / "b")]) == 0
    a, b = _weights(first.run_dir), _weights(tmp_path / "b")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)   # lr ~0: weights kept
    with pytest.raises(TrainingError, match="give one of them"):
        train(spec_file, resume=first.run_dir, init=weights, echo=None)


def test_init_from_a_run_keeps_its_split(spec_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Weights of a seed-3 run on digits start a seed-0 digits run only if the seed says 3:
    else the new run's test split holds examples the weights were trained on."""
    weights = train(spec_file, run_dir=tmp_path / "a", echo=None, epochs=1, seed=3).run_dir \
        / MODEL_FILE
    assert main(["train", str(spec_file), "--init", str(weights), "--epochs", "1",
                 "--out", str(tmp_path / "b")]) == 2
    assert "trained on digits with seed 3" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main(["train", str(spec_file), "--init", str(weights), "--epochs", "1", "--seed",
                 "3", "--out", str(tmp_path / "c")]) == 0


def test_the_best_epoch_is_kept_and_tested(spec_file: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """best.safetensors holds the best validation epoch's weights; the test split measures
    them (the summary says which), or the last epoch's with --test-on last; eval RUN measures
    what the run tested."""
    from safetensors import safe_open

    from tngraph.data import load_dataset
    from tngraph.train import best_epoch, evaluate

    run = tmp_path / "run"
    # a learning rate so high that the last epochs are worse than an earlier one
    result = train(spec_file, run_dir=run, echo=None, epochs=6, lr=0.05, schedule="constant")
    best = best_epoch(result.history)
    assert best == max(result.history, key=lambda h: h.val_metric).epoch
    assert best < result.history[-1].epoch, [h.val_metric for h in result.history]
    with safe_open(str(run / "best.safetensors"), "pt") as fh:
        assert fh.metadata()["epoch"] == str(best)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["tested"] == {"weights": "best", "epoch": best, "file": "best.safetensors"}
    assert result.tested == ("best", best)
    module = tngraph.compile(run / "spec.yaml")
    load_weights(module, run / "best.safetensors")
    assert evaluate(module, load_dataset("digits"), "test") == pytest.approx(result.test)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert f"accuracy {result.test['accuracy']:.4f}" in capsys.readouterr().out
    last = train(spec_file, run_dir=tmp_path / "last", echo=None, epochs=6, lr=0.05,
                 schedule="constant", test_on="last")
    assert last.tested == ("last", 6) and last.test != result.test
    assert json.loads((tmp_path / "last" / "summary.json").read_text())["tested"]["epoch"] == 6


def test_grad_clip_bounds_the_step(spec_file: Path, tmp_path: Path) -> None:
    """With grad_clip, one SGD step moves the weights by at most lr * grad_clip in total."""
    from tngraph.train import make_stepper
    from tngraph.train.evaluation import batch_loss

    module = tngraph.compile(spec_file)
    options = tngraph.spec.TrainOptions(optimizer="sgd", lr=0.1, grad_clip=1e-3)
    stepper = make_stepper(module, options, "classification")
    before = torch.cat([p.detach().flatten().clone() for p in module.parameters()])
    x, y = torch.rand(32, 64), torch.randint(0, 10, (32,))
    stepper.step(x, lambda out: batch_loss(out, y, "classification"))
    after = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert float((after - before).norm()) == pytest.approx(0.1 * 1e-3, rel=1e-3)


def test_grad_clip_is_refused_for_an_optimizer_without_gradients(spec_file: Path,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="grad_clip 1: optimizer 'dmrg' does not step "
                                            "along gradients"):
        train(spec_file, run_dir=tmp_path / "run", echo=None, epochs=1, optimizer="dmrg",
              grad_clip=1.0)
    assert not (tmp_path / "run").exists()


def test_a_run_without_validation_or_test_split_reports_them_absent(
        spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """val_fraction=0: no validation metrics (null, never 0.0), the last epoch is tested;
    test_fraction=0: no test metrics, and eval of that split is refused."""
    run = tmp_path / "run"
    data = "digits?val_fraction=0&test_fraction=0"
    assert main(["train", str(spec_file), "--data", data, "--epochs", "2", "--out",
                 str(run)]) == 0
    out = capsys.readouterr().out
    assert "no validation split" in out and "test (best epoch 2): no test split" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(x["val_loss"], x["val_metric"]) for x in lines] == [(None, None)] * 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"] == {"loss": None, "accuracy": None}
    assert summary["tested"]["epoch"] == 2
    assert main(["eval", str(run)]) == 2
    assert "digits has no test split (its fraction is 0)" in capsys.readouterr().err
    assert main(["eval", str(run), "--split", "train"]) == 0
