"""Driver run by ``torchrun`` in tests/test_distributed.py (not a test module itself).

``python -m torch.distributed.run --nproc_per_node 2 --standalone tests/ddp_driver.py DUMP
ARGV1 [+++ ARGV2 ...]`` runs ``tngraph.cli.main(ARGV)`` for each command in turn in every
process, then writes what each command did in this process to ``DUMP/rank{RANK}.pt``: a list of
exit codes and of the final parameters and buffers of the module trained (caught from the
training loop's stepper, which each rank holds in memory).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

import tngraph.train.loop
from tngraph.cli import main

SEPARATOR = "+++"


def run(dump: Path, commands: list[list[str]]) -> int:
    """Run the CLI with each of ``commands``; dump this rank's exit codes and trained states."""
    steppers: list[Any] = []
    make_stepper = tngraph.train.loop.make_stepper

    def catching(*args: Any, **kwargs: Any) -> Any:
        stepper = make_stepper(*args, **kwargs)
        steppers.append(stepper)
        return stepper

    tngraph.train.loop.make_stepper = catching  # type: ignore[assignment]
    results = []
    for argv in commands:
        steppers.clear()
        code = main(argv)
        state = ({k: v.detach().cpu().clone()
                  for k, v in steppers[-1].module.state_dict().items()} if steppers else {})
        results.append({"code": code, "state": state})
    dump.mkdir(parents=True, exist_ok=True)
    torch.save({"results": results, "world_size": os.environ.get("WORLD_SIZE")},
               dump / f"rank{os.environ.get('RANK', '0')}.pt")
    return max(r["code"] for r in results)


def split(argv: list[str]) -> list[list[str]]:
    """``A B +++ C D`` -> ``[[A, B], [C, D]]``."""
    commands: list[list[str]] = [[]]
    for arg in argv:
        if arg == SEPARATOR:
            commands.append([])
        else:
            commands[-1].append(arg)
    return commands


if __name__ == "__main__":
    run(Path(sys.argv[1]), split(sys.argv[2:]))
    sys.exit(0)
