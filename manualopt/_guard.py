"""The rule "optimizer steps and backward passes happen inside ``training_step``", and its error messages."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, NoReturn

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus

from manualopt._lightning import current_hook_name
from manualopt._state import attached_trainer, state_of
from manualopt.errors import StepOutsideTrainingStepError

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["check_inside_training_step", "inside_training_step", "refuse", "where"]


def inside_training_step(module: pl.LightningModule) -> bool:
    """Whether the code runs within Lightning's own ``training_step`` call of a running ``Trainer.fit``."""
    if state_of(module).training_depth == 0:
        return False
    trainer = attached_trainer(module)
    return trainer is not None and trainer.training


_OUTSIDE_FIT = "outside a running `Trainer.fit` (no Trainer is running this module)"


def where(module: pl.LightningModule) -> str:
    """Describe where the code runs, for error messages: "in `Owner.hook`", or outside a running fit."""
    trainer = attached_trainer(module)
    if trainer is None or trainer.state.status != TrainerStatus.RUNNING:
        return _OUTSIDE_FIT
    hook = current_hook_name(module)
    stage = trainer.state.fn
    during = "" if stage is None or stage == TrainerFn.FITTING else f" during `Trainer.{stage.value}`"
    if hook is None:
        return f"in no Lightning hook{during}"
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == hook:
            owner = frame.f_locals.get("self")
            if isinstance(owner, Callback):
                return f"in `{type(owner).__name__}.{hook}` (a Callback hook){during}"
            if owner is module:
                break
        frame = frame.f_back  # type: ignore[assignment]
    return f"in `{type(module).__name__}.{hook}`{during}"


def check_inside_training_step(module: pl.LightningModule, action: str, optimizer_name: str | None) -> None:
    """Raise :class:`StepOutsideTrainingStepError` unless the code runs inside ``training_step``.

    Args:
        module: The module whose optimizer is about to step or whose loss is about to be back-propagated.
        action: What was attempted, as the message should show it (e.g. "manual_step('generator')").
        optimizer_name: The optimizer involved, if any; used in the suggested fix.
    """
    if inside_training_step(module):
        return
    refuse(module, action, optimizer_name)


def refuse(module: pl.LightningModule, action: str, optimizer_name: str | None) -> NoReturn:
    names = state_of(module).names
    example_name = optimizer_name or (names[0] if names else "optimizer_0")
    place = where(module)
    if place != _OUTSIDE_FIT:
        place += ", outside `training_step`"
    raise StepOutsideTrainingStepError(
        f"{action} was called {place}. Nothing was changed: weights, gradients and optimizer state are as they"
        " were.\n"
        "With manualopt every optimizer step and backward pass belongs to a training step, so that"
        " `trainer.global_step`, `max_steps` and `ModelCheckpoint` count it.\n"
        "Fix: move it into `training_step`, e.g.\n"
        "    def training_step(self, batch, batch_idx):\n"
        "        loss = ...\n"
        f"        self.manual_step({example_name!r}, loss)"
    )
