"""manualopt's own work per ``manual_step``, counted (not timed): a growth here is a slowdown on every batch.

The timed comparison with hand-written Lightning and raw PyTorch is ``make bench`` (``tests/benchmark.py``). This test
counts the Python function calls made inside the ``manualopt`` package during each ``manual_step`` call (the hooks
Lightning calls back on the way included), which does not depend on the machine, and fails if they grow past the
budget or with the number of optimizers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer
from lightning.pytorch import Callback, LightningModule, Trainer

import manualopt

PACKAGE = str(Path(manualopt.__file__).parent)
# Measured: 21 calls per manual_step that updates (backward, step, the step hooks, the clipping hook wrapper, the
# gradient releases, the non-finite check); raise it only with a reason.
BUDGET_PER_STEP = 21


class CountsCallsPerManualStep(Callback):
    """Counts the calls into manualopt's code made within each ``manual_step`` call."""

    def __init__(self) -> None:
        self.per_step: list[int] = []
        self._depth = 0

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if not code.co_filename.startswith(PACKAGE):
            return
        if event == "call":
            if code.co_name == "manual_step":
                self._depth += 1
                if self._depth == 1:
                    self.per_step.append(0)
            if self._depth:
                self.per_step[-1] += 1
        elif event == "return" and code.co_name == "manual_step":
            self._depth -= 1

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sys.setprofile(self._profile)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        sys.setprofile(None)


def _calls_per_step(tmp_path: Path, model: TwoNets) -> list[int]:
    counter = CountsCallsPerManualStep()
    try:
        trainer(tmp_path, max_epochs=1, callbacks=[counter]).fit(model, loader())
    finally:
        sys.setprofile(None)
    return counter.per_step


def test_manualopt_calls_per_manual_step_stay_within_budget(tmp_path: Path) -> None:
    per_step = _calls_per_step(tmp_path, TwoNets())
    assert len(per_step) == 20  # two manual_step calls on each of 10 batches
    assert max(per_step) <= BUDGET_PER_STEP, f"{max(per_step)} manualopt calls in one manual_step"


class Many(TwoNets):
    def __init__(self, count: int) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList(torch.nn.Linear(4, 1) for _ in range(count))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for index, net in enumerate(self.nets):
            self.manual_step(f"net_{index}", torch.nn.functional.mse_loss(net(x), y))

    def configure_optimizers(self) -> Any:
        return {f"net_{i}": torch.optim.SGD(net.parameters(), lr=0.01) for i, net in enumerate(self.nets)}


@pytest.mark.parametrize("count", [1, 8])
def test_work_per_manual_step_does_not_grow_with_the_number_of_optimizers(tmp_path: Path, count: int) -> None:
    per_step = _calls_per_step(tmp_path, Many(count))
    assert len(per_step) == 10 * count
    assert max(per_step) <= BUDGET_PER_STEP


def test_the_count_sees_the_work(tmp_path: Path) -> None:
    # the probe itself: an accumulating call (no step, no hooks) costs fewer calls than an updating one
    class Accumulating(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            self.manual_step("generator", self.losses(batch)[0], accumulate_grad_batches=5)

    per_step = _calls_per_step(tmp_path, Accumulating())
    assert 0 < min(per_step) < max(per_step) <= BUDGET_PER_STEP
