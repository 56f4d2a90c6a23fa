"""The callback a ``ManualOptimizationModule`` attaches to its Trainer (through ``configure_callbacks``).

A callback receives Lightning's hooks whatever the user overrides on the module, so starting and ending a fit's
session, and checkpointing its counters, never depend on a ``super()`` call. The callback holds no state and no
reference: it recognizes its module through the module's link, so it pickles and deep-copies like any callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from manualopt import _lightning, checkpoint_io
from manualopt._session import CHECKPOINT_KEY, FitSession, ModuleLink, link_of, session_of
from manualopt._stepping import check_deferred_non_finite

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["ManualOptimizationCallback"]


def _is_manual_module(module: pl.LightningModule) -> bool:
    from manualopt.module import ManualOptimizationModule

    return isinstance(module, ManualOptimizationModule)


class ManualOptimizationCallback(Callback):
    """Starts and ends a module's fit session and checkpoints its counters. Attached automatically."""

    def _owns(self, pl_module: pl.LightningModule) -> bool:
        link = vars(pl_module).get("_manualopt_link")
        return link is not None and link.callback is self

    def _session(self, pl_module: pl.LightningModule) -> FitSession | None:
        session = session_of(pl_module) if self._owns(pl_module) else None
        return session if session is not None and session.active else None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before a fit restores a checkpoint: hold its weights until it is checked against the fit's optimizers.

        Also write the fit's checkpoints with an :class:`~manualopt.AtomicCheckpointIO` (unless the Trainer was given a
        ``CheckpointIO``), from here on, so that a damaged ``ckpt_path`` raises :class:`~manualopt.CheckpointLoadError`.
        Both are undone when the fit ends or fails.
        """
        if stage != "fit" or not self._owns(pl_module):
            return
        link = link_of(pl_module)
        link.held = None
        link.undo_before_fit.append(
            _lightning.intercept_model_loading(trainer, lambda checkpoint, load: _receive(link, checkpoint, load), link)
        )
        undo_checkpoint_io = checkpoint_io.install(trainer)
        if undo_checkpoint_io is not None:
            link.undo_before_fit.append(undo_checkpoint_io)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the fit's session (optimizers, hooks, schedules, averages), then accept a held checkpoint."""
        if not self._owns(pl_module):
            return
        link = link_of(pl_module)
        if link.session is not None:
            link.session.end()
        link.returned = None
        session = link.session = FitSession(pl_module, trainer, link.configured, previous=link.session)
        for undo in link.undo_before_fit:
            session.on_end(undo)
        link.undo_before_fit = []
        session.start(_is_manual_module)
        held, link.held = link.held, None
        if held is not None:
            checkpoint, load = held
            session.accept_checkpoint(checkpoint)
            load()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Convert the counters of a resumed checkpoint written without manualopt (its loops are restored by now)."""
        session = self._session(pl_module)
        if session is not None and session.entry.converting:
            session.entry.convert_counters()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap in the averaged weights of every ``EMA(evaluate_with_average=True)``; keep the generators' states."""
        session = self._session(pl_module)
        if session is not None:
            session.validation_started()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Swap the trained weights back; put back the generators' states validation found."""
        session = self._session(pl_module)
        if session is not None:
            session.validation_ended()

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store the counters, the open accumulation windows and the schedules' position in the checkpoint.

        A checkpoint saved after the fit (``trainer.save_checkpoint`` once ``fit`` returned) holds where it ended.
        """
        session = session_of(pl_module) if self._owns(pl_module) else None
        if session is not None and session.trainer is trainer:
            if session.active and session.defers_checks:
                check_deferred_non_finite(session, "before a checkpoint save")
            checkpoint[CHECKPOINT_KEY] = session.state_dict()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Read the non-finite flags of the epoch's updates on a GPU (they were not read per update)."""
        session = self._session(pl_module)
        if session is not None and session.defers_checks:
            check_deferred_non_finite(session, "at the end of the epoch")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """End the fit's session: remove every hook and patch it installed."""
        session = self._session(pl_module)
        if session is not None and stage == "fit":
            try:
                if session.defers_checks:
                    check_deferred_non_finite(session, "at the end of the fit")
            finally:
                session.end()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """End the session when a fit fails (Lightning skips ``teardown`` hooks then)."""
        if not self._owns(pl_module):
            return
        link = link_of(pl_module)
        session = self._session(pl_module)
        if session is not None:
            session.end()
        for undo in reversed(link.undo_before_fit):  # the fit failed before its session started
            undo()
        link.undo_before_fit, link.held = [], None


def _receive(link: ModuleLink, checkpoint: Any, load: Callable[[], None]) -> None:
    session = link.session
    if session is not None and session.active:
        # a strategy that restores after setup (FSDP): the session exists already
        session.accept_checkpoint(checkpoint)
        load()
    else:
        link.held = (checkpoint, load)
