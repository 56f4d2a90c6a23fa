"""Pins every contact with Lightning internals (manualopt/_lightning.py) on the installed release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SkipsOddBatches, StockTwoNets, TwoNets, loader, trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from manualopt import StepOutsideTrainingStepError, _lightning


class HookNames(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen_in_training_step = _lightning.current_hook_name(self)
        return super().training_step(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seen_in_batch_end = _lightning.current_hook_name(self)


class RecordsHookName(Callback):
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen = _lightning.current_hook_name(pl_module)


def test_current_hook_name(tmp_path: Path) -> None:
    model, callback = HookNames(), RecordsHookName()
    trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(model, loader())
    assert model.seen_in_training_step == "training_step"
    assert model.seen_in_batch_end == "on_train_batch_end"
    assert callback.seen == "on_train_epoch_end"
    assert _lightning.current_hook_name(model) is None


def test_global_step_tracker(tmp_path: Path) -> None:
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(TwoNets(), loader())
    snapshot = _lightning.global_step_snapshot(fit)
    _lightning.set_global_step(fit, 42)
    assert fit.global_step == 42
    _lightning.restore_global_step(fit, snapshot)
    assert fit.global_step == 10


class GateProbe(Callback):
    def __init__(self) -> None:
        self.accumulating: list[bool] = []
        self.patched_during_fit = False

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.accumulating.append(trainer.fit_loop._should_accumulate())
        self.patched_during_fit = "_should_accumulate" in vars(trainer.fit_loop.epoch_loop) and (
            "update_train_step_metrics" in vars(trainer._logger_connector)
        )


class LastBatchProbe(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.last = getattr(self, "last", [])
        self.last.append(_lightning.is_last_batch(self.trainer))
        return super().training_step(batch, batch_idx)


def test_is_last_batch(tmp_path: Path) -> None:
    model = LastBatchProbe()
    trainer(tmp_path, max_epochs=2, limit_train_batches=4).fit(model, loader())
    assert model.last == [False, False, False, True] * 2


class SchedulerProbe(Callback):
    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.driven = "_update_learning_rates" in vars(trainer.fit_loop.epoch_loop)


class LogsInSchedulerHook(TwoNets):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1), "interval": "step"},
        }

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.manual_step(0, sum(self.losses(batch)))

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        self.hook_names = getattr(self, "hook_names", set())
        self.hook_names.add(_lightning.current_hook_name(self))
        scheduler.step()


def test_scheduler_driver_calls_the_hook_like_lightning_and_is_removed(tmp_path: Path) -> None:
    probe, model = SchedulerProbe(), LogsInSchedulerHook()
    fit = trainer(tmp_path, max_epochs=1, callbacks=[probe])
    fit.fit(model, loader())
    assert probe.driven
    assert model.hook_names == {"lr_scheduler_step"}
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.1**10)
    assert "_update_learning_rates" not in vars(fit.fit_loop.epoch_loop)


def test_patches_are_removed_after_a_failed_fit(tmp_path: Path) -> None:
    class Fails(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if batch_idx == 3:
                raise ArithmeticError
            return super().training_step(batch, batch_idx)

    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"))
    fit = trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True)
    with pytest.raises(ArithmeticError):
        fit.fit(Fails(), loader())
    assert not {"_should_accumulate", "_update_learning_rates"} & set(vars(fit.fit_loop.epoch_loop))
    assert "update_train_step_metrics" not in vars(fit._logger_connector)
    assert "on_train_batch_end" not in vars(checkpoint)


def test_step_gate_is_per_batch_and_removed_after_fit(tmp_path: Path) -> None:
    probe = GateProbe()
    fit = trainer(tmp_path, max_epochs=1, callbacks=[probe])
    fit.fit(SkipsOddBatches(), loader())
    assert probe.patched_during_fit
    assert probe.accumulating == [False, True] * 5  # odd batches make no step
    assert "_should_accumulate" not in vars(fit.fit_loop.epoch_loop)
    assert "update_train_step_metrics" not in vars(fit._logger_connector)


def test_checkpoint_routing_is_removed_after_fit_and_ignores_other_modules(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=5, save_top_k=-1)

    class Probe(Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            self.routed = "on_train_batch_end" in vars(checkpoint)

    probe = Probe()
    fit = trainer(tmp_path, max_epochs=1, callbacks=[checkpoint, probe], enable_checkpointing=True)
    fit.fit(TwoNets(), loader())
    assert probe.routed
    assert "on_train_batch_end" not in vars(checkpoint)


def test_stock_module_is_untouched_by_routing(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=5, save_top_k=-1)
    fit = trainer(tmp_path, max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True)
    fit.fit(StockTwoNets(), loader())
    assert fit.global_step == 20  # stock accounting, as Lightning does it
    assert "on_train_batch_end" not in vars(checkpoint)


class StepsInHookWithClosure(TwoNets):
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.closure_ran = False

        def closure() -> None:
            self.closure_ran = True

        self.optimizers()[0].step(closure)


def test_lightning_optimizer_refuses_before_the_precision_plugin_runs(tmp_path: Path) -> None:
    model = StepsInHookWithClosure()
    with pytest.raises(StepOutsideTrainingStepError):
        trainer(tmp_path).fit(model, loader())
    assert model.closure_ran is False


class SeesModule(ModelCheckpoint):
    """A checkpoint callback whose hooks record the module they are shown."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self.seen = pl_module

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen_at_validation_end = pl_module


def test_automatic_view_is_the_module_in_all_but_automatic_optimization() -> None:
    model = TwoNets()
    view = _lightning.automatic_view(model)
    assert view.automatic_optimization is True
    assert model.automatic_optimization is False
    assert isinstance(view, TwoNets)
    assert view.generator is model.generator
    view.marker = 1  # type: ignore[attr-defined]
    assert model.marker == 1  # type: ignore[attr-defined]
    assert view.state_dict().keys() == model.state_dict().keys()


def test_routing_covers_every_hook_the_callback_defines_and_only_chosen_modules() -> None:
    model, other = TwoNets(), TwoNets()
    callback = SeesModule()
    undo = _lightning.route_checkpoint_through_automatic_path(callback, lambda module: module is model, key=object())
    callback.on_train_batch_end(None, model, None, None, 0)  # type: ignore[arg-type]
    callback.on_validation_end(None, model)  # type: ignore[arg-type]
    assert callback.seen is not model
    assert callback.seen.automatic_optimization is True
    assert callback.seen_at_validation_end.automatic_optimization is True
    callback.on_train_batch_end(None, other, None, None, 0)  # type: ignore[arg-type]
    assert callback.seen is other
    undo()
    assert not {"on_train_batch_end", "on_validation_end"} & set(vars(callback))
    callback.on_train_batch_end(None, model, None, None, 0)  # type: ignore[arg-type]
    assert callback.seen is model


def test_patches_restore_what_was_there_and_leave_later_patches_alone() -> None:
    callback = ModelCheckpoint()

    def earlier(*args: Any) -> None:
        return None

    callback.on_train_batch_end = earlier  # type: ignore[method-assign]  # e.g. a profiler's instance patch
    key = object()
    undo = _lightning.route_checkpoint_through_automatic_path(callback, lambda module: True, key)
    assert vars(callback)["on_train_batch_end"] is not earlier
    again = _lightning.route_checkpoint_through_automatic_path(callback, lambda module: True, key)
    again()  # patching twice with one key kept the first patch, and undoing the second changes nothing
    assert vars(callback)["on_train_batch_end"] is not earlier
    undo()
    assert vars(callback)["on_train_batch_end"] is earlier
    undo = _lightning.route_checkpoint_through_automatic_path(callback, lambda module: True, key)

    def later(*args: Any) -> None:
        return None

    callback.on_train_batch_end = later  # type: ignore[method-assign]  # someone else patches on top of ours
    undo()
    assert vars(callback)["on_train_batch_end"] is later


def test_lightning_optimizer_wrapper_refuses_first_and_is_removed(tmp_path: Path) -> None:
    model = TwoNets()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    optimizer = model.optimizers()[0]
    assert "step" not in vars(optimizer)  # removed when the fit ended
    calls: list[str] = []
    undo = _lightning.wrap_lightning_optimizer_step(
        optimizer, fit, lambda: not calls.append("asked"), lambda: calls.append("refused"), key=object()
    )
    before = _lightning.global_step(fit)
    optimizer.step()
    assert calls == ["asked"]
    assert _lightning.global_step(fit) == before  # Lightning's per-call count is put back
    undo()
    assert "step" not in vars(optimizer)


def test_parse_optimizer_config_reads_like_automatic_optimization() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    optimizers, configs = _lightning.parse_optimizer_config(
        {"optimizer": optimizer, "lr_scheduler": plateau, "monitor": "val_loss"}
    )
    assert optimizers == [optimizer]
    assert configs[0].scheduler is plateau
    assert (configs[0].monitor, configs[0].reduce_on_plateau, configs[0].interval) == ("val_loss", True, "epoch")
    with pytest.raises(MisconfigurationException, match="must include a monitor"):
        _lightning.parse_optimizer_config({"optimizer": optimizer, "lr_scheduler": plateau})
    with pytest.raises(ValueError, match="must include a monitor"), _lightning.configuration_errors_as(ValueError):
        _lightning.parse_optimizer_config({"optimizer": optimizer, "lr_scheduler": plateau})


def test_step_scheduler_counts_like_automatic_optimization(tmp_path: Path) -> None:
    model = LogsInSchedulerHook()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    progress = fit.fit_loop.epoch_loop.scheduler_progress
    assert progress.total.ready == progress.total.completed == 10  # one per step-interval scheduler step


def test_move_callback_first_and_no_backward_sync(tmp_path: Path) -> None:
    first, second = Callback(), Callback()
    fit = trainer(tmp_path, callbacks=[first, second])
    _lightning.move_callback_first(fit, second)
    assert fit.callbacks.index(second) == 0  # type: ignore[attr-defined]
    assert fit.callbacks.index(first) == 1  # type: ignore[attr-defined]
    with _lightning.no_backward_sync(fit):  # single device: nothing to block
        pass
