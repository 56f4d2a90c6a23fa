"""Learning-rate schedulers stepped for optimizers updated with ``manual_step``, as automatic optimization steps them.

``configure_optimizers`` is read with Lightning's own parser for automatic optimization (``_lightning``), so each
scheduler keeps its ``interval``, ``frequency``, ``monitor``, ``strict`` and ``reduce_on_plateau``; Lightning is handed
the same schedulers without the keys its manual mode would warn about. manualopt then steps each scheduler where and
when automatic optimization would, but only while its optimizer really updates through ``manual_step``. Schedulers of
optimizers stepped any other way stay the user's to step, as in stock manual optimization.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn

from manualopt import _lightning
from manualopt._patching import Undo
from manualopt.errors import ManualOptimizationWarning, OptimizerConfigurationError

if TYPE_CHECKING:
    from manualopt._optimizers import OptimizerRecord
    from manualopt._session import FitSession

__all__ = ["update_schedulers", "watch_for_other_steppers"]


def update_schedulers(session: FitSession, interval: str, plateau: bool, batch_idx: int) -> None:
    """Step the schedulers due now, as automatic optimization does at the same call site.

    Lightning calls this where automatic optimization updates learning rates: ``interval="step"`` after a batch that
    stepped (non-plateau schedulers) and after the batch's validation (plateau schedulers); ``interval="epoch"`` after
    the epoch's last batch (non-plateau) and after ``on_train_epoch_end`` (plateau). A scheduler is due when its
    ``interval`` matches and ``batch_idx + 1`` (step) or ``current_epoch + 1`` (epoch) is a multiple of its
    ``frequency``; manualopt additionally requires that its optimizer updated through ``manual_step`` in this batch
    (step) or this epoch (epoch).

    Raises:
        OptimizerConfigurationError: ``strict`` is set and the metric a ``ReduceLROnPlateau`` monitors was not logged.
    """
    if not session.driven:
        return
    trainer = session.trainer
    epoch = trainer.current_epoch
    index = (batch_idx if interval == "step" else epoch) + 1
    last_call = session.calls - 1
    for record, config, _ in session.driven:
        if plateau != config.reduce_on_plateau or config.interval != interval or index % config.frequency:
            continue
        updated = record.last_update_call == last_call if interval == "step" else record.last_update_epoch == epoch
        if not updated:
            continue
        metric = None
        if config.reduce_on_plateau:
            metric = trainer.callback_metrics.get(config.monitor) if config.monitor is not None else None
            if metric is None:
                if config.strict:
                    raise OptimizerConfigurationError(
                        f"The ReduceLROnPlateau scheduler of optimizer {record.name!r} monitors {config.monitor!r},"
                        f" which was not logged. Logged metrics: {sorted(trainer.callback_metrics)}. Log it with"
                        f' `self.log("{config.monitor}", ...)` or set "strict": False in the scheduler config.'
                    )
                rank_zero_warn(
                    f"The ReduceLROnPlateau scheduler of optimizer {record.name!r} monitors {config.monitor!r}, which"
                    " was not logged; its step is skipped (strict is False).",
                    category=ManualOptimizationWarning,
                )
                continue
        session.driving = True
        try:
            _lightning.step_scheduler(trainer, config.scheduler, metric)
        finally:
            session.driving = False


def watch_for_other_steppers(session: FitSession) -> list[Undo]:
    """Warn, at the user's line, when code other than manualopt steps a scheduler that manualopt drives.

    For the fit, each driven scheduler becomes an instance of a subclass of its class whose ``step`` checks who calls
    it (an attribute on the instance would end up in the scheduler's ``state_dict``). The returned functions give each
    scheduler its own class back.
    """
    return [_watch(session, record, config) for record, config, _ in session.driven]


def _watch(session: FitSession, record: OptimizerRecord, config: Any) -> Undo:
    scheduler = config.scheduler
    original = type(scheduler)
    warned = False

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal warned
        if not session.driving and not warned:
            warned = True
            rank_zero_warn(
                f"The learning-rate scheduler of optimizer {record.name!r} was stepped here, but manualopt steps it"
                f" already (interval {config.interval!r}, frequency {config.frequency}) after each update of"
                f" {record.name!r} through `manual_step`: it now advances more often than its config says. Remove"
                " this `step()` call, or update the optimizer without `manual_step` to step its scheduler yourself.",
                category=ManualOptimizationWarning,
                stacklevel=5,  # the caller of this method, past rank_zero_warn's own frames
            )
        return original.step(self, *args, **kwargs)

    namespace = {"step": step, "__module__": original.__module__, "__qualname__": original.__qualname__}
    watched = type(original.__name__, (original,), namespace)
    scheduler.__class__ = watched

    def undo() -> None:
        if type(scheduler) is watched:
            scheduler.__class__ = original

    return undo
