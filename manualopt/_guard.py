"""The rule "optimizer steps and backward passes happen inside ``training_step``": where code runs, and the refusal."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from torch.optim.optimizer import register_optimizer_step_pre_hook

from manualopt._lightning import current_hook_name
from manualopt.errors import StepOutsideTrainingStepError

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.optim import Optimizer

__all__ = ["attached_trainer", "refuse", "refusing_steps_of", "where"]

_OUTSIDE_FIT = "outside a running `Trainer.fit` (no Trainer is running this module)"


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer the module is attached to, or None (also under Fabric, whose stand-in is not a ``Trainer``)."""
    try:
        trainer = module.trainer
    except RuntimeError:  # "not attached to a Trainer"
        return None
    return trainer if isinstance(trainer, Trainer) else None


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


def refuse(module: pl.LightningModule, action: str, optimizer_name: str | None, names: Sequence[str] = ()) -> NoReturn:
    """Raise :class:`StepOutsideTrainingStepError` for ``action``, naming where it ran and the fix.

    Args:
        module: The module whose optimizer was about to step or whose loss was about to be back-propagated.
        action: What was attempted, as the message shows it (e.g. "`manual_step('generator')`").
        optimizer_name: The optimizer involved, if known; used in the suggested fix.
        names: The module's optimizer names, for the fix when ``optimizer_name`` is unknown.
    """
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


@contextlib.contextmanager
def refusing_steps_of(module: pl.LightningModule) -> Iterator[None]:
    """Within the block, refuse steps of any optimizer holding the module's parameters, in this thread only.

    Used around ``configure_optimizers``: an optimizer created there and stepped right away would change the weights
    before the fit counts anything. Steps in other threads, and of optimizers of other modules, are left alone.
    """
    thread = threading.get_ident()
    parameters = {id(parameter) for parameter in module.parameters()}

    def pre_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        if threading.get_ident() != thread:
            return
        if any(id(p) in parameters for group in optimizer.param_groups for p in group["params"]):
            refuse(module, f"`{type(optimizer).__name__}.step()`", None)

    handle = register_optimizer_step_pre_hook(pre_hook)
    try:
        yield
    finally:
        handle.remove()
