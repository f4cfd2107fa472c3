"""Training and evaluation of a compiled network on a dataset (``tngraph train`` / ``eval``).

``train(spec, data=...)`` compiles the spec, checks that its data port and outputs fit the
dataset, and runs epochs of mini-batch training: cross-entropy and accuracy for
classification, mean squared error and R² for regression. Every epoch appends a line to
``metrics.jsonl`` in the run directory and writes a checkpoint atomically (a crash never leaves a
half-written file): ``model.safetensors`` (weights, with the expanded spec in its metadata),
``state.pt`` (optimizer strategy state, epoch, random state), beside ``spec.yaml`` and
``config.json``; at the end, ``curves.png`` plots loss and metric per epoch.
``resume=RUN_DIR`` continues exactly where a run stopped. A loss that becomes NaN or infinite
stops the run with a clear message; the last good checkpoint stays.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), a run is data-parallel with no change to the spec:
each process trains the same network under ``DistributedDataParallel`` on its share of every
mini-batch (the global batch stays ``batch_size``), epoch metrics are summed over the processes,
and only rank 0 evaluates, writes files and prints (see :class:`Launch`, docs/training.md).

Examples
--------
>>> result = train("models/mps_classifier.yaml", run_dir="runs/demo", epochs=2)  # doctest: +SKIP
>>> result.test["accuracy"]                                                     # doctest: +SKIP
0.93
"""

# The package, bottom up (each submodule imports only from those above it):
#   base         TrainingError, EpochMetrics, TrainResult
#   distributed  Launch, devices, process groups, collectives, sharding, DataParallelStepper
#   evaluation   check_fit, batch_loss, evaluate, Objective
#   plots        plot_curves, summary_table
#   rundir       file names, weights and checkpoints, config.json (read_config), new run dirs
#   loop         train, make_stepper, with_plan, check_split

from __future__ import annotations

from tngraph.train.base import EpochMetrics, TrainingError, TrainResult, best_epoch
from tngraph.train.distributed import (
    DataParallelStepper,
    Launch,
    current_launch,
    resolve_device,
    shard_batches,
)
from tngraph.train.evaluation import Objective, batch_loss, check_fit, class_scores, evaluate
from tngraph.train.loop import (
    check_arguments,
    check_split,
    make_stepper,
    train,
    training_options,
    with_plan,
)
from tngraph.train.plots import plot_curves, summary_table
from tngraph.train.rundir import (
    BEST_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PLOT_FILE,
    SPEC_FILE,
    STATE_FILE,
    SUMMARY_FILE,
    check_out_dir,
    commit_checkpoint,
    data_drift,
    load_weights,
    new_run_dir,
    random_state,
    read_config,
    read_manifest,
    read_state,
    read_weights,
    recorded_data,
    recover,
    restore_random_state,
    run_train_config,
    save_checkpoint,
    save_weights,
    tested_weights,
    verified_file,
    write_config,
)

__all__ = [
    "BEST_FILE",
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "PLOT_FILE",
    "SPEC_FILE",
    "STATE_FILE",
    "SUMMARY_FILE",
    "DataParallelStepper",
    "EpochMetrics",
    "Launch",
    "Objective",
    "TrainResult",
    "TrainingError",
    "new_run_dir",
    "batch_loss",
    "best_epoch",
    "check_fit",
    "class_scores",
    "check_out_dir",
    "check_arguments",
    "check_split",
    "commit_checkpoint",
    "data_drift",
    "current_launch",
    "evaluate",
    "load_weights",
    "make_stepper",
    "plot_curves",
    "random_state",
    "read_config",
    "read_manifest",
    "read_state",
    "read_weights",
    "recorded_data",
    "recover",
    "resolve_device",
    "restore_random_state",
    "run_train_config",
    "save_checkpoint",
    "save_weights",
    "shard_batches",
    "summary_table",
    "tested_weights",
    "train",
    "training_options",
    "verified_file",
    "with_plan",
    "write_config",
]
