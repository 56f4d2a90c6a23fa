"""Every contact manualopt has with Lightning's private internals, and nothing else.

No public hook lets a module say "this batch made one training step" or keep ``ModelCheckpoint`` on its documented
path, so the few places below reach into Lightning. Each touch states why it is needed. All of them were read in
Lightning 2.1.0 and 2.6.6, the oldest and newest supported releases (CI runs the test suite on both; it also passed
on 2.2.5, 2.3.3, 2.4.0, 2.5.0 and 2.5.6). ``tests/test_lightning_internals.py`` pins each touch, so a release that
moves one of them fails loudly instead of silently miscounting.

No other module of manualopt imports a private Lightning name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer, _MockOptimizer
from lightning.pytorch.trainer.call import _call_lightning_module_hook

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = [
    "call_module_hook",
    "current_hook_name",
    "global_step_snapshot",
    "install_scheduler_driver",
    "install_step_gate",
    "is_last_batch",
    "is_placeholder_optimizer",
    "restore_global_step",
    "route_checkpoint_through_automatic_path",
    "set_global_step",
    "unroute_checkpoint",
    "wrap_lightning_optimizer_step",
]

_MARK = "__manualopt_patch__"


def current_hook_name(module: pl.LightningModule) -> str | None:
    """Name of the Lightning hook that is running, as Lightning itself records it.

    Why: Lightning sets ``LightningModule._current_fx_name`` around every module, callback and strategy hook it calls
    (``trainer/call.py``); it is the only record of which hook is running. manualopt uses it to tell Lightning's own
    ``training_step`` call apart from a user calling ``self.training_step`` from elsewhere, and to name the hook in
    error messages.
    """
    name = getattr(module, "_current_fx_name", None)
    return name if isinstance(name, str) else None


def _manual_progress(trainer: pl.Trainer) -> Any:
    # Why: in manual optimization ``trainer.global_step`` is read from this tracker
    # (``_TrainingEpochLoop.global_step``); Lightning adds one per ``LightningOptimizer.step`` call. It is also saved in
    # and restored from the ``loops`` entry of every checkpoint, so keeping the training-step count here is what makes
    # ``max_steps``, ``ModelCheckpoint`` and resume agree with manualopt.
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress


def global_step_snapshot(trainer: pl.Trainer) -> tuple[int, int, int, int]:
    """The manual-optimization step tracker as a tuple, to be put back by :func:`restore_global_step`."""
    progress = _manual_progress(trainer)
    return (
        progress.total.ready,
        progress.total.completed,
        progress.current.ready,
        progress.current.completed,
    )


def restore_global_step(trainer: pl.Trainer, snapshot: tuple[int, int, int, int]) -> None:
    """Undo what Lightning added to the step tracker since ``snapshot`` was taken."""
    progress = _manual_progress(trainer)
    progress.total.ready, progress.total.completed, progress.current.ready, progress.current.completed = snapshot


def set_global_step(trainer: pl.Trainer, value: int) -> None:
    """Make ``trainer.global_step`` read ``value`` (the number of training steps done)."""
    progress = _manual_progress(trainer)
    delta = value - progress.total.completed
    progress.total.ready = progress.total.completed = value
    progress.current.completed += delta
    progress.current.ready = progress.current.completed


def install_step_gate(trainer: pl.Trainer, batch_made_no_step: Callable[[], bool]) -> Callable[[], None]:
    """Treat a batch whose ``training_step`` stepped no optimizer like an accumulation batch.

    Why: in manual optimization Lightning advances the logger's step counter (``_batches_that_stepped``) after every
    batch, writes the training metrics of every batch (re-writing stale values after a batch that logged nothing),
    and zeroes all gradients before a mid-epoch validation. In automatic optimization all three happen only on
    batches that stepped: ``_TrainingEpochLoop._should_accumulate`` decides, and
    ``_LoggerConnector.update_train_step_metrics`` returns early on accumulating batches. Answering the question per
    batch, and skipping the metric write the same way, makes the logger's step axis count training steps and keeps
    gradients a user is accumulating across batches. Both methods are replaced on these instances only; the returned
    function removes the replacements.

    Returns:
        A function that removes the gate.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    logger_connector = trainer._logger_connector
    should_accumulate = type(epoch_loop)._should_accumulate.__get__(epoch_loop)
    update_train_step_metrics = type(logger_connector).update_train_step_metrics.__get__(logger_connector)

    def _should_accumulate() -> bool:
        return batch_made_no_step() or should_accumulate()

    def _update_train_step_metrics() -> None:
        if not batch_made_no_step():
            update_train_step_metrics()

    patches = {
        (epoch_loop, "_should_accumulate"): _should_accumulate,
        (logger_connector, "update_train_step_metrics"): _update_train_step_metrics,
    }
    for (owner, name), function in patches.items():
        setattr(function, _MARK, True)
        setattr(owner, name, function)

    def remove() -> None:
        for owner, name in patches:
            if getattr(vars(owner).get(name), _MARK, False):
                delattr(owner, name)

    return remove


def wrap_lightning_optimizer_step(
    optimizer: LightningOptimizer, trainer: pl.Trainer, before: Callable[[], None]
) -> None:
    """Run ``before`` first in every ``optimizer.step`` call, and keep Lightning's step tracker out of the count.

    Why: ``LightningOptimizer.step`` runs the precision plugin, which under 16-bit AMP runs the closure, calls
    ``on_before_optimizer_step`` and unscales the gradients *before* the torch optimizer's own step hooks fire. A step
    refused only there would leave the GradScaler's per-optimizer state half-updated, so the refusal must come first.
    Lightning also bumps ``trainer.global_step`` on every such call; manualopt counts training steps instead, so the
    tracker is put back after the call (the training step is counted once ``training_step`` returns). The wrapper is
    set on this instance only and is idempotent.
    """
    current = optimizer.__dict__.get("step")
    if current is not None and getattr(current, _MARK, False):
        return
    original = type(optimizer).step.__get__(optimizer)

    @functools.wraps(original)
    def step(closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        before()
        snapshot = global_step_snapshot(trainer)
        try:
            return original(closure, **kwargs)
        finally:
            restore_global_step(trainer, snapshot)

    setattr(step, _MARK, True)
    optimizer.step = step  # type: ignore[method-assign]


class _AutomaticView:
    """The module as ``ModelCheckpoint`` should see it: with ``automatic_optimization`` reading True."""

    automatic_optimization = True

    def __init__(self, module: pl.LightningModule) -> None:
        object.__setattr__(self, "_module", module)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_module"), name)


def route_checkpoint_through_automatic_path(
    callback: ModelCheckpoint, applies: Callable[[pl.LightningModule], bool]
) -> None:
    """Make ``callback.on_train_batch_end`` take its automatic-optimization path for modules where ``applies``.

    Why: from 2.6.0 ``ModelCheckpoint.on_train_batch_end`` has a branch for ``automatic_optimization=False`` that
    ignores ``train_time_interval``, warns about a "pre-optimization state" and, when the module has ``layer`` and
    ``saved_models`` attributes, writes old weights next to new optimizer state. With manualopt a batch ends after a
    complete training step, exactly as in automatic optimization, so that path is the right one. The automatic path
    does not read the module; the view only changes how ``automatic_optimization`` reads. On releases before 2.6 the
    method has no such branch and the view changes nothing. Set on this instance only; :func:`unroute_checkpoint`
    removes it.
    """
    current = callback.__dict__.get("on_train_batch_end")
    if current is not None and getattr(current, _MARK, False):
        return
    original = type(callback).on_train_batch_end.__get__(callback)

    @functools.wraps(original)
    def on_train_batch_end(trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        seen = _AutomaticView(pl_module) if applies(pl_module) else pl_module
        original(trainer, seen, *args, **kwargs)

    setattr(on_train_batch_end, _MARK, True)
    callback.on_train_batch_end = on_train_batch_end  # type: ignore[method-assign]


def unroute_checkpoint(callback: ModelCheckpoint) -> None:
    """Remove what :func:`route_checkpoint_through_automatic_path` set on ``callback``."""
    if getattr(callback.__dict__.get("on_train_batch_end"), _MARK, False):
        del callback.on_train_batch_end


def is_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the running batch is the last of the epoch, exactly as automatic optimization decides it.

    Why: automatic optimization closes an accumulation window on the epoch's last batch, which
    ``_TrainingEpochLoop._num_ready_batches_reached`` decides (it also covers iterable datasets of unknown length,
    through the data fetcher's look-ahead). ``manual_step`` closes its windows at the same batch.
    """
    return bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached())


def install_scheduler_driver(
    trainer: pl.Trainer, applies: Callable[[], bool], update: Callable[[str, bool, int], None]
) -> Callable[[], None]:
    """Run ``update(interval, plateau, batch_idx)`` wherever automatic optimization updates learning rates.

    Why: Lightning calls ``_TrainingEpochLoop._update_learning_rates`` at the exact points where automatic
    optimization steps schedulers (after a stepping batch, after validation, after the epoch's last batch and after
    ``on_train_epoch_end``), and the method returns at once in manual optimization. Replacing it on this loop
    instance, while ``applies()``, steps the schedulers of ``manual_step`` optimizers at those same points. The
    returned function removes the replacement.

    Returns:
        A function that removes the driver.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    original = type(epoch_loop)._update_learning_rates.__get__(epoch_loop)

    def _update_learning_rates(interval: str, update_plateau_schedulers: bool) -> None:
        if applies():
            update(interval, update_plateau_schedulers, epoch_loop.batch_idx)
        else:
            original(interval, update_plateau_schedulers)

    setattr(_update_learning_rates, _MARK, True)
    epoch_loop._update_learning_rates = _update_learning_rates  # type: ignore[method-assign]

    def remove() -> None:
        if getattr(vars(epoch_loop).get("_update_learning_rates"), _MARK, False):
            del epoch_loop._update_learning_rates

    return remove


def is_placeholder_optimizer(optimizer: object) -> bool:
    """Whether ``optimizer`` is the stand-in Lightning uses when ``configure_optimizers`` returns None.

    Why: Lightning then fills ``trainer.optimizers`` with a ``_MockOptimizer`` whose steps do nothing; counting them
    would call batches training steps although no parameter changed.
    """
    return isinstance(optimizer, _MockOptimizer)


def call_module_hook(trainer: pl.Trainer, hook: str, *args: Any) -> Any:
    """Call a LightningModule hook the way Lightning calls it (profiler, ``_current_fx_name`` for ``self.log``).

    Why: automatic optimization calls ``lr_scheduler_step`` through ``trainer/call.py``; calling it the same way keeps
    a user's override (and anything it logs) behaving identically.
    """
    return _call_lightning_module_hook(trainer, hook, *args)
