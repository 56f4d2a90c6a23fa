"""Scheduler configs stepped for manual_step optimizers: where, when, monitored metrics, and a second stepper."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer

from manualopt import ManualOptimizationWarning, OptimizerConfigurationError


def test_no_ignored_keys_warning(tmp_path: Path) -> None:
    class Plateau(TwoNets):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss", "strict": True}}

        def training_step(self, batch: Any, batch_idx: int) -> None:
            g_loss, d_loss = self.losses(batch)
            self.manual_step(0, g_loss + d_loss)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=2, limit_val_batches=1).fit(Plateau(), loader(), loader(2))
    assert not [w for w in caught if "will be ignored" in str(w.message)]


def test_plateau_without_logged_metric_names_it(tmp_path: Path) -> None:
    class Plateau(TwoNets):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": plateau, "monitor": "missing_metric"}

        def training_step(self, batch: Any, batch_idx: int) -> None:
            self.manual_step(0, sum(self.losses(batch)))

    with pytest.raises(OptimizerConfigurationError, match="monitors 'missing_metric', which was not logged"):
        trainer(tmp_path, max_epochs=1).fit(Plateau(), loader())


def test_stepping_a_driven_scheduler_yourself_warns_once(tmp_path: Path) -> None:
    class DoubleSteps(TwoNets):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.StepLR(opt, 1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

        def training_step(self, batch: Any, batch_idx: int) -> None:
            self.manual_step(0, sum(self.losses(batch)))
            self.lr_schedulers().step()  # as stock manual optimization requires, but manualopt steps it already

    model = DoubleSteps()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    ours = [w for w in caught if issubclass(w.category, ManualOptimizationWarning)]
    assert len(ours) == 1  # once, not once per step
    assert "stepped outside manualopt, which steps it already (interval 'step', frequency 1)" in str(ours[0].message)
    assert "Remove your `step()` call" in str(ours[0].message)
    assert type(model.lr_schedulers()) is torch.optim.lr_scheduler.StepLR  # watched without changing its class


class OwnPlateau(TwoNets):
    """Plain Lightning manual optimization with a bare ReduceLROnPlateau (no monitor), stepped by the module."""

    def __init__(self, through_manual_step: bool = False) -> None:
        super().__init__()
        self.through_manual_step = through_manual_step

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)]

    def training_step(self, batch: Any, batch_idx: int) -> None:
        loss = sum(self.losses(batch))
        if self.through_manual_step:
            self.manual_step(0, loss)
            return
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step(1.0)  # a metric that never improves: the rate halves after every epoch but the first


def test_a_plateau_scheduler_without_monitor_stays_the_users_to_step(tmp_path: Path) -> None:
    model = OwnPlateau()
    fit = trainer(tmp_path, max_epochs=3)
    fit.fit(model, loader())
    assert fit.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)  # only the module stepped it
    assert fit.global_step == 3 * 10


def test_a_plateau_scheduler_without_monitor_is_refused_at_the_first_manual_step(tmp_path: Path) -> None:
    model = OwnPlateau(through_manual_step=True)
    with pytest.raises(OptimizerConfigurationError, match=r"manual_step\('optimizer_0'\): .* without a `monitor`"):
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert model.optimizer_updates == {"optimizer_0": 0}  # refused before the first update


class KeepsItsScheduler(TwoNets):
    """Creates its optimizer and scheduler once and returns them from every configure_optimizers call."""

    def configure_optimizers(self) -> Any:
        if not hasattr(self, "config"):
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
            self.config = {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return self.config

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.manual_step(0, sum(self.losses(batch)))


def test_a_second_fit_does_not_remember_the_first_fits_scheduler(tmp_path: Path) -> None:
    model = KeepsItsScheduler()
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    model.config["lr_scheduler"]["scheduler"].step()  # between fits, by the user: not a second stepper
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert not [w for w in caught if issubclass(w.category, ManualOptimizationWarning)]
    assert model.config["lr_scheduler"]["scheduler"].last_epoch == 21


def test_a_driven_scheduler_keeps_its_class_and_state_keys(tmp_path: Path) -> None:
    model = KeepsItsScheduler()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    scheduler = model.config["lr_scheduler"]["scheduler"]
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR  # the watching subclass is gone with the fit
    fit.save_checkpoint(tmp_path / "after.ckpt")
    state = torch.load(tmp_path / "after.ckpt", weights_only=False)["lr_schedulers"][0]
    assert set(state) == set(torch.optim.lr_scheduler.StepLR(torch.optim.SGD(model.parameters()), 1).state_dict())
