"""Distillation: the losses, the strategy registry, teachers, runs, resume and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import tngraph
from tngraph.cli import main
from tngraph.distill import (
    DistillError,
    check_distiller,
    distill,
    get_distiller,
    list_distillers,
    register_distiller,
)
from tngraph.errors import PluginError, SpecError
from tngraph.spec import NamedOptions, load_spec
from tngraph.train import train
from tngraph_plugins.distillers import response_loss

ROOT = Path(__file__).resolve().parents[1]
STUDENT = """\
tngraph: 1
name: student
params: {bond_dim: 2}
network: {template: mps, sites: 64, phys_dim: 2, bond_dim: "${bond_dim}", input: x,
          feature_map: multilinear, output_dim: 10}
train: {epochs: 1, batch_size: 128, lr: 0.005}
"""


# -- losses ---------------------------------------------------------------------------------


def _kl_by_hand(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v / temperature - (v / temperature).max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    p, q = softmax(t), softmax(s)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


@pytest.mark.parametrize("temperature", [1.0, 2.5, 8.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_response_loss_equals_a_hand_computation(temperature: float, alpha: float) -> None:
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 3
    y = torch.tensor([0, 3, 1, 1, 2])
    kl = _kl_by_hand(s.numpy(), t.numpy(), temperature)
    ce = float(torch.nn.functional.cross_entropy(s, y))
    expected = (1 - alpha) * temperature ** 2 * kl + alpha * ce
    got = float(response_loss(s, t, y, temperature=temperature, alpha=alpha))
    assert got == pytest.approx(expected, rel=1e-12)


def test_response_loss_is_zero_when_the_student_copies_the_teacher() -> None:
    t = torch.randn(3, 10, dtype=torch.float64)
    assert float(response_loss(t, t, torch.zeros(3, dtype=torch.long), temperature=3,
                               alpha=0)) == pytest.approx(0, abs=1e-12)


def test_regression_response_uses_squared_errors() -> None:
    s, t, y = torch.zeros(4, 2), torch.ones(4, 2), torch.full((4, 2), 2.0)
    assert float(response_loss(s, t, y, temperature=1, alpha=0.25)) == pytest.approx(
        0.75 * 1.0 + 0.25 * 4.0)


def test_complex_outputs_are_scored_by_the_born_rule() -> None:
    """A complex student's (or teacher's) outputs enter the classification loss as their
    Born-rule class scores, log |out|^2, as in training (not as complex logits)."""
    from tngraph.train import class_scores

    gen = torch.Generator().manual_seed(1)
    s = torch.randn(5, 4, dtype=torch.complex128, generator=gen)
    t = torch.randn(5, 4, dtype=torch.complex128, generator=gen)
    y = torch.tensor([0, 3, 1, 1, 2])
    for teacher in (t, class_scores(t)):                   # a complex or a real teacher
        got = response_loss(s, teacher, y, temperature=2.0, alpha=0.3)
        want = response_loss(class_scores(s), class_scores(t), y, temperature=2.0, alpha=0.3)
        assert not got.is_complex()
        torch.testing.assert_close(got, want)


# -- registry and spec ------------------------------------------------------------------------


def test_registry() -> None:
    assert {"response", "layer"} <= set(list_distillers())
    with pytest.raises(PluginError, match="did you mean 'layer'"):
        get_distiller("layr")
    with pytest.raises(PluginError, match="already registered"):
        register_distiller(get_distiller("response"))
    assert check_distiller(NamedOptions(name="response", temperature=2), None, ()) == []
    (problem,) = check_distiller(NamedOptions(name="layer"), None, ())
    assert "student_layer" in problem.message


@pytest.mark.parametrize(("block", "message", "line"), [
    ("{strategy: respons}", "unknown distiller 'respons'; did you mean 'response'", 7),
    ("{strategy: {name: response, temperature: 0}}",
     "distill.strategy.temperature: Input should be greater than 0", 7),
    ("{strategy: {name: layer, student_layer: a}}", "missing required key 'teacher_layer'", 7),
    ("{teacher: 3}", "distill.teacher: Input should be a valid string", 7),
])
def test_distill_block_errors_are_located(block: str, message: str, line: int) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(STUDENT + f"distill: {block}\n")
    assert message in str(info.value) and f":{line}:" in str(info.value)


# -- runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(ROOT / "models" / "mlp.yaml", {"hidden": 16}, run_dir=run, echo=None, epochs=3,
          lr=0.01)
    return run


@pytest.fixture()
def student_file(tmp_path: Path) -> Path:
    path = tmp_path / "student.yaml"
    path.write_text(STUDENT)
    return path


def test_response_run_records_the_teacher_and_resumes_exactly(
        teacher_run: Path, student_file: Path, tmp_path: Path) -> None:
    full = distill(student_file, teacher_run, run_dir=tmp_path / "full", echo=None, epochs=2)
    config = json.loads((full.run_dir / "config.json").read_text())
    assert config["objective"] == {"kind": "distill", "teacher": str(teacher_run.resolve()),
                                   "strategy": {"name": "response"}}
    half = distill(student_file, teacher_run, run_dir=tmp_path / "half", echo=None, epochs=1)
    resumed = distill(resume=half.run_dir, echo=None, epochs=2)
    assert [h.val_loss for h in resumed.history] == [h.val_loss for h in full.history]
    assert resumed.test == full.test
    with pytest.raises(Exception, match="tngraph distill --resume"):
        train(resume=half.run_dir, echo=None, epochs=3)


def test_distilled_loss_decreases(teacher_run: Path, student_file: Path, tmp_path: Path) -> None:
    result = distill(student_file, teacher_run, run_dir=tmp_path / "r", echo=None, epochs=3,
                     strategy={"name": "response", "temperature": 2.0, "alpha": 0.0})
    losses = [h.train_loss for h in result.history]
    assert losses[-1] < losses[0]
    assert all(math.isfinite(v) for v in losses)


def test_a_complex_student_is_distilled(teacher_run: Path, tmp_path: Path) -> None:
    """A complex MPS student learns from a real teacher (its outputs scored by the Born rule;
    complex logits once ended the run with an internal error)."""
    path = tmp_path / "complex.yaml"
    path.write_text(STUDENT + "plan: {dtype: complex64}\n")
    result = distill(path, teacher_run, run_dir=tmp_path / "r", echo=None, epochs=3,
                     strategy={"name": "response", "temperature": 2.0, "alpha": 0.0})
    losses = [h.train_loss for h in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert math.isfinite(result.test["loss"])


def test_a_teacher_spec_is_trained_first(student_file: Path, tmp_path: Path) -> None:
    teacher_spec = tmp_path / "teacher.yaml"
    teacher_spec.write_text((ROOT / "models" / "mlp.yaml").read_text()
                            .replace("hidden: 256", "hidden: 8")
                            .replace("epochs: 30", "epochs: 1"))
    lines: list[str] = []
    distill(student_file, teacher_spec, run_dir=tmp_path / "r", echo=lines.append, epochs=1,
            seed=2)
    assert (tmp_path / "r" / "teacher" / "model.safetensors").is_file()
    assert any("training the teacher" in line for line in lines)
    # on the student's split: the teacher never trains on the student's test examples
    teacher_config = json.loads((tmp_path / "r" / "teacher" / "config.json").read_text())
    assert teacher_config["train"]["seed"] == 2 and teacher_config["dataset"] == "digits"


def test_the_teacher_epochs_and_a_distillation_stopped_while_its_teacher_trains(
        student_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--teacher-epochs sets a spec teacher's epochs; a distillation stopped during the
    teacher's training is rerun by the same command: the teacher's training goes on from
    its checkpoint (it was "resume it" / "no config.json" before, each pointing to the other)."""
    from faults import Stopped, Stops

    teacher_spec = tmp_path / "teacher.yaml"
    teacher_spec.write_text((ROOT / "models" / "mlp.yaml").read_text()
                            .replace("hidden: 256", "hidden: 8"))
    run = tmp_path / "r"
    argv = ["distill", str(student_file), "--teacher", str(teacher_spec), "--teacher-epochs",
            "2", "--epochs", "1", "--out", str(run)]
    # the 20th change in the teacher's folder: its epoch 1 is committed, not yet renamed
    stops = Stops(run / "teacher", 20)
    with stops.active(), pytest.raises(Stopped):
        main(argv)
    assert main(["distill", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "stopped while its teacher trained" in err and f"--out {run}" in err
    assert main(argv) == 0
    assert "resuming the teacher's training in" in capsys.readouterr().out
    teacher_lines = (run / "teacher" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in teacher_lines] == [1, 2]
    assert json.loads((run / "teacher" / "config.json").read_text())["train"]["epochs"] == 2
    assert (run / "summary.json").is_file()


def test_teacher_epochs_are_for_a_spec_teacher(teacher_run: Path, student_file: Path,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["distill", str(student_file), "--teacher", str(teacher_run),
                 "--teacher-epochs", "3", "--out", str(tmp_path / "r")]) == 2
    assert "--teacher-epochs is for a teacher given as a spec" in capsys.readouterr().err


def test_a_teacher_run_on_another_split_is_refused(teacher_run: Path, student_file: Path,
                                                   tmp_path: Path, capsys) -> None:
    """The teacher run used seed 0: a seed-1 student would be tested on examples whose labels
    the teacher was trained on."""
    assert main(["distill", str(student_file), "--teacher", str(teacher_run), "--seed", "1",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "the teacher" in err and "was trained on digits with seed 0" in err
    assert "add --seed 0" in err and not (tmp_path / "r").exists()


LAYERED_STUDENT = """\
tngraph: 1
name: layered
input_shape: [64]
layers:
  - type: network
    name: mps1
    network: {template: mps, sites: 64, phys_dim: 2, bond_dim: 2, input: x,
              feature_map: multilinear, output_dim: 4}
  - {type: batchnorm, name: norm}
  - {type: linear, name: head, out_features: 10}
train: {epochs: 1, batch_size: 128, lr: 0.005}
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layer_strategy_fits_the_student_part_first(teacher_run: Path, tmp_path: Path,
                                                    dtype: str) -> None:
    """The student's part is fitted in its own dtype (a float64 student once met a float32
    projection: an internal error)."""
    path = tmp_path / "layered.yaml"
    path.write_text(LAYERED_STUDENT + f"plan: {{dtype: {dtype}}}\n")
    lines: list[str] = []
    strategy = {"name": "layer", "student_layer": "mps1", "teacher_layer": "act2", "epochs": 2}
    result = distill(path, teacher_run, strategy=strategy, run_dir=tmp_path / "r",
                     echo=lines.append, epochs=1)
    fits = [line for line in lines if line.startswith("layer fit")]
    assert len(fits) == 2 and "(4 -> 16, projected)" in fits[0]
    first, second = (float(line.rsplit("mse ", 1)[1]) for line in fits)
    assert second < first
    assert math.isfinite(result.test["loss"])


def test_layer_strategy_fits_a_complex_part_by_its_real_and_imaginary_parts(
        teacher_run: Path, tmp_path: Path) -> None:
    path = tmp_path / "complex.yaml"
    path.write_text(LAYERED_STUDENT.replace(
        "  - {type: batchnorm, name: norm}\n  - {type: linear, name: head, out_features: 10}\n",
        "").replace("output_dim: 4", "output_dim: 10") + "plan: {dtype: complex64}\n")
    lines: list[str] = []
    strategy = {"name": "layer", "student_layer": "mps1", "teacher_layer": "act2", "epochs": 2}
    result = distill(path, teacher_run, strategy=strategy, run_dir=tmp_path / "r",
                     echo=lines.append, epochs=1)
    fits = [line for line in lines if line.startswith("layer fit")]
    assert len(fits) == 2 and "(20 -> 16, projected)" in fits[0]      # 10 complex values
    first, second = (float(line.rsplit("mse ", 1)[1]) for line in fits)
    assert second < first
    assert math.isfinite(result.test["loss"])


def test_a_complex_teacher_teaches_by_its_born_rule_and_its_amplitudes(
        tmp_path: Path) -> None:
    """A complex teacher's outputs are scored by the Born rule in the response loss, and fitted
    as (real, imaginary) pairs by the layer strategy (they were cast to real before, silently
    dropping the imaginary parts)."""
    teacher_spec = tmp_path / "teacher.yaml"
    teacher_spec.write_text(STUDENT + "plan: {dtype: complex64}\n")
    teacher = tmp_path / "teacher"
    train(teacher_spec, run_dir=teacher, echo=None, epochs=1)
    path = tmp_path / "layered.yaml"
    path.write_text(LAYERED_STUDENT)
    lines: list[str] = []
    strategy = {"name": "layer", "student_layer": "mps1", "teacher_layer": "output",
                "epochs": 1}
    result = distill(path, teacher, strategy=strategy, run_dir=tmp_path / "r",
                     echo=lines.append, epochs=1)
    assert any("(4 -> 20, projected)" in line for line in lines)     # 10 complex outputs
    assert math.isfinite(result.test["loss"])


@pytest.mark.parametrize(("strategy", "message"), [
    ({"name": "layer", "student_layer": "mps9", "teacher_layer": "act2"},
     "the student has no layer 'mps9'; did you mean 'mps1'"),
    ({"name": "layer", "student_layer": "mps1", "teacher_layer": "act"},
     "the teacher has no layer 'act'"),
])
def test_layer_strategy_errors(teacher_run: Path, tmp_path: Path, strategy: dict,
                               message: str) -> None:
    path = tmp_path / "layered.yaml"
    path.write_text(LAYERED_STUDENT)
    with pytest.raises(DistillError, match=message):
        distill(path, teacher_run, strategy=strategy, run_dir=tmp_path / "r", echo=None)


def test_layer_strategy_needs_a_pipeline_student(teacher_run: Path, student_file: Path,
                                                 tmp_path: Path) -> None:
    strategy = {"name": "layer", "student_layer": "A0", "teacher_layer": "act2"}
    with pytest.raises(DistillError, match="needs the student to be a pipeline"):
        distill(student_file, teacher_run, strategy=strategy, run_dir=tmp_path / "r", echo=None)


def test_teacher_and_student_must_predict_the_same_targets(teacher_run: Path,
                                                           tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(STUDENT.replace("output_dim: 10", "output_dim: 7"))
    with pytest.raises(Exception, match="7 outputs per example"):
        distill(path, teacher_run, run_dir=tmp_path / "r", echo=None)


def test_cli(teacher_run: Path, student_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["distill", str(student_file), "--teacher", str(teacher_run), "--strategy",
                 "response?temperature=2", "--out", str(tmp_path / "r"), "--epochs", "1",
                 "--plan-strategy", "network", "--dtype", "float64"]) == 0
    student = tngraph.load_spec(tmp_path / "r" / "spec.yaml")       # the plan flags: kept
    assert (student.plan.execution, student.plan.dtype) == ("network", "float64")
    assert main(["distill", str(student_file), "--teacher", str(teacher_run), "--strategy",
                 "response?temperatur=2", "--out", str(tmp_path / "r4")]) == 2
    assert "distiller 'response': unknown option 'temperatur'; did you mean 'temperature'?" \
        in capsys.readouterr().err
    assert main(["distill", str(student_file), "--out", str(tmp_path / "r2")]) == 2
    assert "no teacher" in capsys.readouterr().err
    assert main(["distill", str(student_file), "--teacher", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
