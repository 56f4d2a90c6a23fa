"""Pins every contact with Lightning internals (manualopt/_lightning.py) on the installed release."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    assert _lightning.global_step(fit) == fit.global_step == 10
    _lightning.set_global_step(fit, 42)
    assert fit.global_step == _lightning.global_step(fit) == 42


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
    # a plateau scheduler without a monitor is kept as stock manual optimization keeps it (the user's to step)
    _, configs = _lightning.parse_optimizer_config({"optimizer": optimizer, "lr_scheduler": plateau})
    assert (configs[0].scheduler, configs[0].monitor, configs[0].reduce_on_plateau) == (plateau, None, True)
    _, configs = _lightning.parse_optimizer_config(([optimizer], [plateau]))
    assert (configs[0].scheduler, configs[0].monitor, configs[0].reduce_on_plateau) == (plateau, None, True)
    # the rest of automatic optimization's validation stays
    with pytest.raises(MisconfigurationException, match="interval"):
        _lightning.parse_optimizer_config(
            {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "x", "interval": "year"}}
        )
    with pytest.raises(ValueError, match="interval"), _lightning.configuration_errors_as(ValueError):
        _lightning.parse_optimizer_config(
            {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": "x", "interval": "year"}}
        )


def test_step_scheduler_counts_like_automatic_optimization(tmp_path: Path) -> None:
    model = LogsInSchedulerHook()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    progress = fit.fit_loop.epoch_loop.scheduler_progress
    assert progress.total.ready == progress.total.completed == 10  # one per step-interval scheduler step


def test_move_callback_first_and_back(tmp_path: Path) -> None:
    first, second, third = Callback(), Callback(), Callback()
    fit = trainer(tmp_path, callbacks=[first, second, third])
    undo = _lightning.move_callback_first(fit, third)
    assert fit.callbacks[:3] == [third, first, second]  # type: ignore[attr-defined]
    assert undo is not None
    undo()
    assert fit.callbacks[:3] == [first, second, third]  # type: ignore[attr-defined]
    assert _lightning.move_callback_first(fit, first) is None  # first already: nothing to undo


def test_no_backward_sync_uses_the_strategys_block(tmp_path: Path) -> None:
    fit = trainer(tmp_path)
    assert isinstance(_lightning.no_backward_sync(fit), contextlib.nullcontext)  # single device: nothing to block
    entered: list[bool] = []

    @contextlib.contextmanager
    def block_backward_sync() -> Iterator[None]:  # what DDPStrategy offers
        entered.append(True)
        yield

    fit.strategy.block_backward_sync = block_backward_sync  # type: ignore[attr-defined]
    with _lightning.no_backward_sync(fit):
        assert entered == [True]


class WatchesTheData(Callback):
    """Installs the exact-resume contacts on a real fit and records what they report."""

    def __init__(self) -> None:
        self.created: list[tuple[bool | None, int]] = []
        self.fetches = 0
        self.validations = 0
        self.undo: list[Any] = []
        self.batches: list[float] = []
        self.epochs: list[int] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        key = object()

        def around(call: Any) -> Any:
            self.validations += 1
            return call()

        self.undo = [
            _lightning.watch_training_data(
                trainer, lambda made: self.created.append((made, trainer.current_epoch)), self._fetching, key
            ),
            _lightning.isolate_validation(trainer, around, key),
        ]

    def _fetching(self) -> None:
        self.fetches += 1

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.batches.append(_lightning.epoch_batches(trainer))
        self.epochs.append(_lightning.epoch_to_resume(trainer))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for undo in self.undo:
            undo()


def test_the_contacts_of_exact_resume(tmp_path: Path) -> None:
    watcher = WatchesTheData()
    fit = trainer(tmp_path, max_epochs=3, callbacks=[watcher], limit_val_batches=1)
    fit.fit(TwoNets(), loader(), loader(2))
    assert watcher.fetches == 30  # _on_before_fetch: once before every batch
    # on_run_start creates the iterators of epochs 1 and 2 (epoch 0's is made in setup_data)
    assert [made for made, _ in watcher.created] == [None, None, True, None, True]
    assert watcher.validations == 3  # the fit's val_loop.run, once per epoch
    assert watcher.batches == [10.0, 10.0, 10.0]
    assert watcher.epochs == [0, 1, 2]
    assert "on_run_start" not in vars(fit.fit_loop.epoch_loop)  # and the undos removed it all
    assert "run" not in vars(fit.fit_loop.epoch_loop.val_loop)
    iterator = _lightning.training_iterator(fit)
    assert iterator is None or isinstance(_lightning.loader_iterators(fit), list)


def test_skip_indices_advances_a_single_process_iterator_without_loading() -> None:
    from manualopt._torch import skip_indices

    loaded: list[int] = []

    class Records(torch.utils.data.Dataset[int]):
        def __len__(self) -> int:
            return 12

        def __getitem__(self, index: int) -> int:
            loaded.append(index)
            return index

    iterator = iter(torch.utils.data.DataLoader(Records(), batch_size=3))
    assert skip_indices(iterator, 2)
    assert loaded == []  # the two batches' data was never loaded
    assert next(iterator).tolist() == [6, 7, 8]
    workers = iter(torch.utils.data.DataLoader(Records(), batch_size=3, num_workers=1))
    assert not skip_indices(workers, 1)  # a worker iterator: the caller fetches and drops instead


def test_stateful_loader_positions_and_their_removal(tmp_path: Path) -> None:
    torchdata = pytest.importorskip("torchdata.stateful_dataloader")
    stateful = torchdata.StatefulDataLoader(list(range(8)), batch_size=2)
    assert _lightning.is_stateful_loader(stateful)
    assert not _lightning.is_stateful_loader(loader())
    fit = trainer(tmp_path)
    fit.fit_loop._combined_loader_states_to_load = [{"position": 3}]
    _lightning.forget_restored_loader_states(fit)
    assert fit.fit_loop._combined_loader_states_to_load == []


class SavesAtBatchEnd(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.global_step == 4:
            trainer.save_checkpoint(self.path)


class SeesTheRestart(Callback):
    def __init__(self) -> None:
        self.stage: tuple[Any, ...] = ()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fit_loop = trainer.fit_loop
        epoch_loop = fit_loop.epoch_loop
        self.stage = (
            getattr(fit_loop, "_restart_stage", None),
            getattr(epoch_loop, "_restart_stage", None),
            epoch_loop.batch_progress.current.ready,
            epoch_loop.batch_progress.current.completed,
        )


@pytest.mark.skipif(not _lightning.resumes_loops_exactly(), reason="restart stages exist from Lightning 2.6")
def test_a_checkpoint_written_in_on_train_batch_end_restarts_mid_epoch(tmp_path: Path) -> None:
    # Exact resume takes this path for a checkpoint saved after a batch inside an epoch: Lightning restarts the epoch
    # mid-way, the batch counted ready but not completed ("restarted on train batch end"). Open upstream PR #21772
    # moves the batch's completion before on_train_batch_end; if a release takes it, this test says so first.
    path = tmp_path / "mid.ckpt"
    trainer(tmp_path, max_epochs=1, callbacks=[SavesAtBatchEnd(path)]).fit(TwoNets(), loader())
    seen = SeesTheRestart()
    trainer(tmp_path, max_epochs=1, callbacks=[seen]).fit(TwoNets(), loader(), ckpt_path=str(path))
    fit_stage, epoch_stage, ready, completed = seen.stage
    assert (fit_stage, epoch_stage) == ("restarted_mid_epoch", "restarted_on_train_batch_end")
    assert (ready, completed) == (4, 3)
