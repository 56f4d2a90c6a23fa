"""The callback a ``ManualOptimizationModule`` attaches to its Trainer (through ``configure_callbacks``).

A callback receives Lightning's hooks whatever the user overrides on the module, so the bookkeeping below never
depends on a ``super()`` call.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from manualopt import _lightning
from manualopt._guard import check_inside_training_step
from manualopt._optimizers import attach_optimizers
from manualopt._schedulers import apply_scheduler_settings, update_schedulers
from manualopt._state import attached_trainer, state_of
from manualopt.ema import EMA
from manualopt.errors import OptimizerConfigurationError
from manualopt.schedule import StepSchedule

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.core.optimizer import LightningOptimizer

__all__ = ["CHECKPOINT_KEY", "ManualOptimizationCallback", "lightning_optimizers"]

#: Key of manualopt's entry in a checkpoint dictionary.
CHECKPOINT_KEY = "manualopt"
_FORMAT = 1


def lightning_optimizers(module: pl.LightningModule) -> list[LightningOptimizer]:
    """``module.optimizers()`` as a list, whatever their number; empty when no trainer holds real optimizers."""
    if attached_trainer(module) is None:
        return []
    optimizers = module.optimizers()
    listed = list(optimizers) if isinstance(optimizers, list) else [optimizers]
    return [optimizer for optimizer in listed if not _lightning.is_placeholder_optimizer(optimizer.optimizer)]


class ManualOptimizationCallback(Callback):
    """Keeps Lightning's step accounting in line with manualopt for one module. Attached automatically."""

    def __init__(self, module: pl.LightningModule) -> None:
        self._module = weakref.ref(module)

    def _owns(self, pl_module: pl.LightningModule) -> bool:
        return pl_module is self._module()

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Name and hook the optimizers, then align Lightning's counters with manualopt's (before any batch)."""
        if not self._owns(pl_module):
            return
        state = state_of(pl_module)
        real = [optimizer for optimizer in trainer.optimizers if not _lightning.is_placeholder_optimizer(optimizer)]
        previous = state.last_trainer() if state.last_trainer is not None else None
        attach_optimizers(pl_module, real, continuing=previous is trainer)
        attach_schedules_and_averages(pl_module, continuing=previous is trainer)
        state.last_trainer = weakref.ref(trainer)
        state.batch_stepped = True
        state.windows.clear()
        state.window_epochs.clear()
        state.updated_in_batch.clear()
        state.updated_in_epoch.clear()
        guard_lightning_optimizers(pl_module, trainer)
        apply_scheduler_settings(trainer, state.scheduler_settings)
        for undo in state.undo:
            undo()
        state.undo.clear()
        state.undo.append(_lightning.install_step_gate(trainer, lambda: self._batch_made_no_step(trainer)))
        state.undo.append(
            _lightning.install_scheduler_driver(
                trainer,
                lambda: trainer.lightning_module is self._module(),
                lambda interval, plateau, batch_idx: update_schedulers(
                    trainer, pl_module, interval, plateau, batch_idx
                ),
            )
        )
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                _lightning.route_checkpoint_through_automatic_path(callback, self._owns)
                state.undo.append(_undo_route(callback))
        self._apply_loaded(pl_module)

    def _batch_made_no_step(self, trainer: pl.Trainer) -> bool:
        module = self._module()
        return module is not None and trainer.lightning_module is module and not state_of(module).batch_stepped

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply a checkpoint that strategies restoring after setup loaded only after ``on_fit_start``."""
        if self._owns(pl_module):
            self._apply_loaded(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap in the averaged weights of every ``EMA(evaluate_with_average=True)``."""
        if self._owns(pl_module):
            for average in _averages(pl_module):
                if average.evaluate_with_average and not average._swapped:
                    average._swap()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap the trained weights back."""
        if self._owns(pl_module):
            for average in _averages(pl_module):
                if average._swapped:
                    average._swap()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A new epoch has updated no optimizer yet."""
        if self._owns(pl_module):
            state_of(pl_module).updated_in_epoch.clear()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """A new batch has made no training step yet."""
        if self._owns(pl_module):
            state = state_of(pl_module)
            state.batch_stepped = False
            state.updated_in_batch.clear()
            guard_lightning_optimizers(pl_module, trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store the per-optimizer update counters in the checkpoint."""
        if not self._owns(pl_module):
            return
        state = state_of(pl_module)
        checkpoint[CHECKPOINT_KEY] = {
            "format": _FORMAT,
            "optimizer_names": list(state.names),
            "optimizer_updates": dict(state.updates),
            "batch_stepped": state.batch_stepped,
            "schedules": {attribute: schedule.state_dict() for attribute, schedule in state.schedules.items()},
            "accumulation_windows": {
                name: [count, state.window_epochs.get(name, -1)] for name, count in state.windows.items() if count
            },
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the checkpoint's counters until the optimizers of this fit are known."""
        if self._owns(pl_module) and CHECKPOINT_KEY in checkpoint:
            state_of(pl_module).loaded = dict(checkpoint[CHECKPOINT_KEY])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove what was set on the trainer for this fit (the optimizer step guards stay)."""
        if self._owns(pl_module):
            _undo(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Remove what was set on the trainer when a fit fails (Lightning skips ``teardown`` hooks then)."""
        if self._owns(pl_module):
            _undo(pl_module)

    def _apply_loaded(self, pl_module: pl.LightningModule) -> None:
        state = state_of(pl_module)
        loaded, state.loaded = state.loaded, None
        if loaded is None or not state.names:
            state.loaded = loaded
            return
        names = list(loaded.get("optimizer_names", []))
        if names != state.names:
            raise OptimizerConfigurationError(
                f"The checkpoint being resumed was written with the optimizers {names} but `configure_optimizers`"
                f" now returns {state.names}. Resume with the same optimizer names and order, or start a new run"
                " without `ckpt_path`."
            )
        state.updates = {name: int(count) for name, count in loaded.get("optimizer_updates", {}).items()}
        state.batch_stepped = bool(loaded.get("batch_stepped", True))
        # An accumulation window open at the checkpoint goes on counting its micro-batches (their gradients, as in
        # automatic optimization, are not in the checkpoint), so the resumed run steps on the same batches.
        for name, (count, epoch) in loaded.get("accumulation_windows", {}).items():
            state.windows[name], state.window_epochs[name] = int(count), int(epoch)
        for attribute, schedule_state in loaded.get("schedules", {}).items():
            if attribute in state.schedules:
                state.schedules[attribute].load_state_dict(schedule_state)


def _averages(module: pl.LightningModule) -> list[EMA]:
    return [submodule for submodule in module.modules() if isinstance(submodule, EMA)]


def attach_schedules_and_averages(module: pl.LightningModule, continuing: bool) -> None:
    """Find the module's ``StepSchedule`` attributes and ``EMA`` submodules and check their optimizer names."""
    state = state_of(module)
    schedules = {attribute: value for attribute, value in vars(module).items() if isinstance(value, StepSchedule)}
    for attribute, schedule in schedules.items():
        schedule.validate(state.names, attribute)
        if not continuing:
            schedule.position = 0
    state.schedules = schedules
    state.averages = {}
    for average in _averages(module):
        if average.optimizer not in state.names:
            raise OptimizerConfigurationError(
                f"An EMA follows the optimizer {average.optimizer!r}, which `configure_optimizers` does not return;"
                f" the optimizers are {state.names}."
            )
        state.averages.setdefault(average.optimizer, []).append(average)


def _undo(module: pl.LightningModule) -> None:
    state = state_of(module)
    for undo in state.undo:
        undo()
    state.undo.clear()


def _undo_route(callback: ModelCheckpoint) -> Any:
    return lambda: _lightning.unroute_checkpoint(callback)


def guard_lightning_optimizers(module: pl.LightningModule, trainer: pl.Trainer) -> None:
    """Make every ``LightningOptimizer.step`` of the module check the rule before anything runs."""
    state = state_of(module)
    for name, optimizer in zip(state.names, lightning_optimizers(module), strict=True):
        _lightning.wrap_lightning_optimizer_step(optimizer, trainer, _step_check(module, name))


def _step_check(module: pl.LightningModule, name: str) -> Any:
    reference = weakref.ref(module)

    def check() -> None:
        owner = reference()
        if owner is not None:
            check_inside_training_step(owner, f"`optimizer.step()` of the LightningOptimizer {name!r}", name)

    return check
