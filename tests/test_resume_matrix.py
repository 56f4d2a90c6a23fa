"""Every resume point, every kind of training data, one and two processes: killed, resumed, bitwise equal.

The matrix the README's "Exact resume" table states, per Lightning release. A run (two optimizers, a ``StepSchedule``,
an ``EMA``, dropout, noise from torch, NumPy and Python's ``random``, shuffled validation) is SIGKILLed when a batch
starts and resumed from ``last.ckpt``, which was written

* inside epoch 0 (after step 3),
* inside a later epoch (after step 19, epoch 2),
* after the last batch of epoch 0 (step 8, ``every_n_train_steps``),
* at the end of epoch 0 by ``every_n_epochs`` (in ``on_validation_end``, validation running at the epoch's end).

Its final state (weights, optimizer and scheduler states, averages, counters) must equal, bit for bit, the
uninterrupted run's, on every rank.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from resume_harness import Config, Kill, differences, in_child, recorded_warnings, run

from manualopt import _lightning

#: Where ``last.ckpt`` was written when the run is killed: (checkpoint trigger, the step whose batch start kills).
POINTS = {
    "inside-epoch-0": ("steps", 3),
    "inside-later-epoch": ("steps", 19),
    "after-last-batch": ("steps", 8),
    "epoch-end-checkpoint": ("epochs", 10),
}
BASE = Config("matrix", optimizers=2, generator=True, batches=8, epochs=3, every=1)
DATA = {1: ("shuffle", "distributed", "stateful"), 2: ("distributed", "stateful")}


def promised(processes: int, data: str) -> bool:
    """Whether manualopt promises exact resume for this cell on the installed Lightning (the README says the same).

    Where it does not, every resume says so with a warning. Older loops restart an interrupted epoch at another batch;
    a loader that keeps its own state restores, under several processes, another order than the interrupted one.
    """
    return _lightning.resumes_loops_exactly() and not (processes > 1 and data == "stateful")


def _cells() -> list[tuple[int, str]]:
    return [(processes, data) for processes, kinds in DATA.items() for data in kinds]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("processes", "data"), _cells(), ids=[f"{p}proc-{d}" for p, d in _cells()])
def test_every_resume_point_resumes_bitwise(tmp_path: Path, processes: int, data: str) -> None:
    if not _lightning.resumes_loops_exactly() and (processes, data) not in ((1, "shuffle"), (2, "distributed")):
        pytest.skip("before Lightning 2.6 every resume only says it is not exact: two cells check that it does")
    if data == "stateful":
        pytest.importorskip("torchdata")
    outcomes: dict[str, list[str]] = {}
    warned: dict[str, bool] = {}
    references: dict[str, Path] = {}
    for point, (trigger, step) in POINTS.items():
        # 8 batches per epoch on every rank
        config = replace(
            BASE, processes=processes, batches=8 * processes, data=data, checkpoint=trigger, generator=processes == 1
        )
        if trigger not in references:
            references[trigger] = tmp_path / f"reference-{trigger}.pt"
            assert in_child(lambda: run(config, tmp_path / f"reference-{trigger}", references[trigger])) == 0  # noqa: B023
        root, out = tmp_path / point, tmp_path / f"{point}.pt"
        assert in_child(lambda: run(config, root, out, kill=Kill(step, "batch-start"))) == -9  # noqa: B023
        assert (root / "last.ckpt").exists()
        assert in_child(lambda: run(config, root, out, resume=True)) == 0  # noqa: B023
        found: list[str] = []
        for rank in range(processes):
            suffix = "" if rank == 0 else f".rank{rank}"
            ours = torch.load(f"{out}{suffix}", weights_only=False)
            theirs = torch.load(f"{references[trigger]}{suffix}", weights_only=False)
            assert theirs["global_step"] > step  # the reference trained past the kill point
            found += [f"rank{rank}:{key}" for key in differences(ours, theirs)]
        outcomes[point] = found
        warned[point] = "resumes, but not exactly" in recorded_warnings(out)
    if promised(processes, data):
        assert {p: f for p, f in outcomes.items() if f} == {}
        assert not any(warned.values())
    else:  # each resume says it is not exact
        assert all(warned.values()), warned
