"""trainer.global_step counts training steps; per-optimizer counters count updates; step-based built-ins follow."""

from __future__ import annotations

import csv
import inspect
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SkipsOddBatches, StockTwoNets, TwoNets, checkpoint_steps, loader, trainer
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from manualopt import ManualOptimizationWarning, UnknownOptimizerError

STYLES = ["named", "indexed", "plain", "raw"]


def test_stock_lightning_counts_each_optimizer_step(tmp_path: Path) -> None:
    # The problem this package exists for, reproduced on the installed release: 20 batches, global_step 40.
    fit = trainer(tmp_path)
    fit.fit(StockTwoNets(), loader())
    assert fit.global_step == 40


@pytest.mark.parametrize("style", STYLES)
def test_global_step_counts_training_steps(tmp_path: Path, style: str) -> None:
    model = TwoNets(style)
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert fit.global_step == 20
    assert model.training_step_calls == 20
    assert dict(model.optimizer_updates) == {"generator": 20, "discriminator": 20}
    # Inside training_step, global_step is the number of training steps completed before this one, and stepping the
    # optimizers does not move it until training_step returns.
    assert model.global_steps_seen == list(range(20))
    assert model.global_steps_after_stepping == list(range(20))


def test_unnamed_optimizers_get_index_names(tmp_path: Path) -> None:
    model = TwoNets("named", named=False)
    trainer(tmp_path).fit(model, loader())
    assert model.optimizer_names == ("optimizer_0", "optimizer_1")
    assert dict(model.optimizer_updates) == {"optimizer_0": 20, "optimizer_1": 20}


@pytest.mark.parametrize("style", STYLES)
def test_every_n_train_steps_counts_training_steps(tmp_path: Path, style: str) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=4, save_top_k=-1)
    fit = trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True)
    fit.fit(TwoNets(style), loader())
    assert checkpoint_steps(tmp_path / "ckpt") == [4, 8, 12, 16, 20]


@pytest.mark.parametrize("style", ["named", "plain"])
def test_max_steps_counts_training_steps(tmp_path: Path, style: str) -> None:
    model = TwoNets(style)
    fit = trainer(tmp_path, max_epochs=5, max_steps=7)
    fit.fit(model, loader())
    assert model.training_step_calls == 7
    assert fit.global_step == 7
    assert dict(model.optimizer_updates) == {"generator": 7, "discriminator": 7}


@pytest.mark.parametrize("style", STYLES)
def test_generator_every_fifth_batch(tmp_path: Path, style: str) -> None:
    model = TwoNets(style, generator_every=5)
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert fit.global_step == 20  # one training step per batch, however many optimizers stepped in it
    assert dict(model.optimizer_updates) == {"generator": 4, "discriminator": 20}


def test_batches_without_a_step_do_not_count(tmp_path: Path) -> None:
    model = SkipsOddBatches()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2, save_top_k=-1)
    fit = trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True, max_epochs=5, max_steps=8)
    fit.fit(model, loader())
    assert fit.global_step == 8
    assert model.training_step_calls == 15  # steps on batches 0, 2, ..., 8 of epoch 0, then 0, 2, 4 of epoch 1
    assert checkpoint_steps(tmp_path / "ckpt") == [2, 4, 6, 8]


def _csv_rows(fit: Any) -> list[dict[str, str]]:
    with open(Path(fit.logger.log_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_logger_step_axis_is_global_step(tmp_path: Path) -> None:
    model = SkipsOddBatches()
    fit = trainer(tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    fit.fit(model, loader())
    assert fit.global_step == 10
    rows = [row for row in _csv_rows(fit) if row["d_loss"]]
    # A metric logged in the training step that made global step k is written at step k - 1, as in automatic
    # optimization: ten steps, ten rows, steps 0..9 (stock Lightning writes them at 0, 2, 4, ..., 18).
    assert [int(row["step"]) for row in rows] == list(range(10))


def test_log_every_n_steps_follows_training_steps(tmp_path: Path) -> None:
    model = SkipsOddBatches()
    fit = trainer(tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=2)
    fit.fit(model, loader())
    steps = [int(row["step"]) for row in _csv_rows(fit) if row["d_loss"]]
    assert steps == [1, 3, 5, 7, 9]


class WithSchedulers(TwoNets):
    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.SGD(self.generator.parameters(), lr=0.1)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=0.2)
        return {
            "generator": {"optimizer": opt_g, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt_g, 1)},
            "discriminator": {"optimizer": opt_d, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt_d, 1)},
        }


def test_learning_rate_monitor_logs_per_training_step(tmp_path: Path) -> None:
    monitor = LearningRateMonitor(logging_interval="step")
    fit = trainer(tmp_path, logger=CSVLogger(tmp_path), log_every_n_steps=1, callbacks=[monitor])
    fit.fit(WithSchedulers(), loader())
    rows = [row for row in _csv_rows(fit) if any(key.startswith("lr-") and value for key, value in row.items())]
    assert [int(row["step"]) for row in rows] == list(range(20))
    lr_keys = {key for row in rows for key, value in row.items() if key.startswith("lr-") and value}
    assert len(lr_keys) == 2  # one series per optimizer


def test_val_check_interval_counts_batches(tmp_path: Path) -> None:
    class CountsValidation(TwoNets):
        validations = 0

        def on_validation_epoch_start(self) -> None:
            self.validations += 1

    model = CountsValidation()
    fit = trainer(tmp_path, val_check_interval=5, limit_val_batches=1)
    fit.fit(model, loader(), loader(2))
    assert model.validations == 4
    assert fit.global_step == 20


def test_early_stopping_stops_on_schedule(tmp_path: Path) -> None:
    class ConstantValidation(TwoNets):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", torch.tensor(1.0))

    model = ConstantValidation()
    stopper = EarlyStopping(monitor="val_loss", patience=1, mode="min")
    fit = trainer(tmp_path, max_epochs=10, callbacks=[stopper], limit_val_batches=1)
    fit.fit(model, loader(), loader(2))
    assert fit.current_epoch == 2  # no improvement after epoch 0: epochs 1 and 2 run, then stop
    assert fit.global_step == 20


class AccumulatesAcrossValidation(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.manual_step("generator", self.losses(batch)[0], accumulate_grad_batches=2)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 1:
            self.grads_before_batch_1 = [p.grad for p in self.generator.parameters()]


def test_validation_after_a_batch_without_step_keeps_its_gradients(tmp_path: Path) -> None:
    model = AccumulatesAcrossValidation()
    fit = trainer(tmp_path, max_epochs=1, val_check_interval=1, limit_val_batches=1)
    fit.fit(model, loader(), loader(2))
    # batch 0 only accumulated; the validation after it must not zero the window's gradients
    assert all(grad is not None for grad in model.grads_before_batch_1)
    assert fit.global_step == 5


def test_no_optimizers_means_no_training_steps(tmp_path: Path) -> None:
    class NoOptimizer(TwoNets):
        def configure_optimizers(self) -> None:
            return None

        def training_step(self, batch: Any, batch_idx: int) -> None:
            with pytest.raises(UnknownOptimizerError, match="returned no optimizer"):
                self.manual_step(0, self.losses(batch)[0])

    model = NoOptimizer()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*`LightningModule.configure_optimizers` returned `None`.*")
        fit = trainer(tmp_path, max_epochs=1)
        fit.fit(model, loader())
    assert fit.global_step == 0
    assert model.optimizer_names == ()


def test_a_failed_step_does_not_stop_the_counting(tmp_path: Path) -> None:
    class Fails(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            g_loss = self.losses(batch)[0]

            def broken() -> None:
                raise ArithmeticError

            with pytest.raises(ArithmeticError):
                self.optimizers()[1].step(closure=broken)
            self.result = self.manual_step("generator", g_loss)

    model = Fails()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    assert model.result.stepped
    assert fit.global_step == 10
    assert dict(model.optimizer_updates) == {"generator": 10, "discriminator": 0}


def test_fitting_on_with_the_same_trainer_continues_the_counters(tmp_path: Path) -> None:
    model = TwoNets(generator_every=5)
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    fit.fit_loop.max_epochs = 2
    fit.fit(model, loader())
    assert fit.global_step == 20
    assert dict(model.optimizer_updates) == {"generator": 4, "discriminator": 20}


def test_a_training_step_that_only_returns_its_loss_is_named(tmp_path: Path) -> None:
    class ReturnsLoss(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return sum(self.losses(batch))  # as in automatic optimization: nothing steps

    fit = trainer(tmp_path, max_epochs=3)
    with pytest.warns(
        ManualOptimizationWarning, match=r"10 `training_step` calls .* updated no optimizer.*manual"
    ) as seen:
        fit.fit(ReturnsLoss(), loader())
    assert fit.global_step == 0
    (warning,) = [w for w in seen if issubclass(w.category, ManualOptimizationWarning)]
    assert warning.filename == __file__  # shown at the training_step to fix, not inside manualopt
    assert warning.lineno == inspect.unwrap(ReturnsLoss.training_step).__code__.co_firstlineno
    assert str(warning.message).startswith("\n")  # on a line of its own, not after a progress bar's
