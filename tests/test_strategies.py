"""Strategies that cannot work are refused with the fix; what manualopt adds to a strategy ends with the fit.

Multi-process runs are in ``test_ddp.py`` (``ddp_spawn``), ``test_multinode.py`` (two nodes) and ``test_fsdp.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer
from lightning.fabric import Fabric
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn

from manualopt import ManualOptimizationModule, OptimizerConfigurationError, StepOutsideTrainingStepError


class EngineOptimizer(torch.optim.SGD):
    """Stands for an optimizer a strategy builds in place of the user's (DeepSpeed's ``DeepSpeedZeroOptimizer``)."""


class ReplacingStrategy(SingleDeviceStrategy):
    """Replaces the optimizers ``configure_optimizers`` returned, as ``DeepSpeedStrategy`` does in its setup."""

    def setup_optimizers(self, trainer: Any) -> None:
        super().setup_optimizers(trainer)
        self.optimizers = [
            EngineOptimizer(group["params"], lr=0.01) for o in self.optimizers for group in o.param_groups
        ]


def test_a_strategy_that_replaces_the_optimizers_is_refused_before_the_first_batch(tmp_path: Path) -> None:
    model = TwoNets()
    before = [p.detach().clone() for p in model.parameters()]
    run = trainer(tmp_path, strategy=ReplacingStrategy(device=torch.device("cpu")), devices="auto")
    with pytest.raises(OptimizerConfigurationError) as raised:
        run.fit(model, loader())
    message = str(raised.value)
    assert "The strategy ReplacingStrategy replaced the optimizers that `configure_optimizers` returned" in message
    assert "['generator', 'discriminator']" in message
    assert "EngineOptimizer" in message
    assert "Use a strategy that keeps your optimizers" in message
    assert model.training_step_calls == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_single_device_fit_adds_nothing_to_the_strategy(tmp_path: Path) -> None:
    seen: list[set[str]] = []

    class Looks(Callback):  # while the fit runs, when the patches would be there
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            seen.append(set(vars(trainer.strategy)))

    run = trainer(tmp_path, callbacks=[Looks()])
    run.fit(TwoNets(), loader())
    assert seen
    assert "process_dataloader" in seen[0]
    assert not {"training_step", "optimizer_state", "load_checkpoint"} & set.union(*seen)


class Regression(ManualOptimizationModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.manual_step("sgd", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> Any:
        return {"sgd": torch.optim.SGD(self.parameters(), lr=0.1)}


def _fabric_setup() -> tuple[Fabric, Regression, Any, torch.Tensor]:
    fabric = Fabric(accelerator="cpu", devices=1)
    module = Regression()
    _, optimizer = fabric.setup(module, torch.optim.SGD(module.parameters(), lr=0.1))
    x, y = torch.randn(4, 4), torch.randn(4, 1)
    return fabric, module, optimizer, nn.functional.mse_loss(module.layer(x), y)


def test_a_fabric_loop_trains_the_module_as_any_module() -> None:
    fabric, module, optimizer, loss = _fabric_setup()
    before = module.layer.weight.detach().clone()
    fabric.backward(loss)
    optimizer.step()  # manualopt installs nothing outside a Trainer's fit: Fabric's steps are plain steps
    assert not torch.equal(before, module.layer.weight)


def test_manual_step_under_fabric_is_refused_with_the_fix() -> None:
    _, module, _, loss = _fabric_setup()
    with pytest.raises(StepOutsideTrainingStepError, match=r"outside a running `Trainer.fit`"):
        module.manual_step("sgd", loss)
