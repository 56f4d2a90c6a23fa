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
from manualopt.errors import ManualOptimizationWarning, OptimizerConfigurationError

if TYPE_CHECKING:
    from manualopt._optimizers import OptimizerRecord
    from manualopt._session import FitSession

__all__ = ["SchedulerDriver"]


class SchedulerDriver:
    """Steps the schedulers of one fit that manualopt drives, and notices when other code steps them too.

    Attributes:
        session: The fit.
        positions: Each driven scheduler's ``last_epoch`` after manualopt last stepped it (by ``id``).
    """

    def __init__(self, session: FitSession) -> None:
        self.session = session
        self.positions: dict[int, int] = {id(c.scheduler): _position(c.scheduler) for _, c in session.driven}
        # schedulers that are the user's to step (a ReduceLROnPlateau without a monitor)
        self._users = {id(record.unmonitored) for record in session.records if record.unmonitored is not None}
        self._warned: set[int] = set()

    def _due(self) -> list[tuple[OptimizerRecord, Any]]:
        """The configs to drive: manualopt's own, then those Lightning holds that it did not parse.

        The second kind is installed after the fit started, by a tuner: the ``LearningRateFinder`` replaces the
        schedulers with its own for its search. Each is driven like an interval scheduler of its optimizer.
        """
        due = list(self.session.driven)
        known = self.positions.keys() | self._users
        for config in self.session.trainer.lr_scheduler_configs:
            if id(config.scheduler) in known or config.reduce_on_plateau:
                continue
            record = self.session.record_of(getattr(config.scheduler, "optimizer", None))
            if record is not None:
                due.append((record, config))
        return due

    def update(self, interval: str, plateau: bool, batch_idx: int) -> None:
        """Step the schedulers due now, as automatic optimization does at the same call site.

        Lightning calls this where automatic optimization updates learning rates: ``interval="step"`` after a batch
        that stepped (non-plateau schedulers) and after the batch's validation (plateau schedulers);
        ``interval="epoch"`` after the epoch's last batch (non-plateau) and after ``on_train_epoch_end`` (plateau). A
        scheduler is due when its ``interval`` matches and ``batch_idx + 1`` (step) or ``current_epoch + 1`` (epoch) is
        a multiple of its ``frequency``; manualopt additionally requires that its optimizer updated through
        ``manual_step`` in this batch (step) or this epoch (epoch).

        Raises:
            OptimizerConfigurationError: ``strict`` is set and the metric a ``ReduceLROnPlateau`` monitors was not
                logged.
        """
        session = self.session
        trainer = session.trainer
        epoch = trainer.current_epoch
        index = (batch_idx if interval == "step" else epoch) + 1
        last_call = session.calls - 1
        for record, config in self._due():
            if id(config.scheduler) in self.positions:
                self._notice_other_steps(record, config)
            if plateau != config.reduce_on_plateau or config.interval != interval or index % config.frequency:
                continue
            updated = record.last_update_call == last_call if interval == "step" else record.last_update_epoch == epoch
            if not updated:
                continue
            metric = None
            if config.reduce_on_plateau:
                metric = trainer.callback_metrics.get(str(config.monitor))
                if metric is None:
                    if config.strict:
                        raise OptimizerConfigurationError(
                            f"The ReduceLROnPlateau scheduler of optimizer {record.name!r} monitors"
                            f" {config.monitor!r}, which was not logged. Logged metrics:"
                            f' {sorted(trainer.callback_metrics)}. Log it with `self.log("{config.monitor}", ...)`'
                            ' or set "strict": False in the scheduler config.'
                        )
                    rank_zero_warn(
                        f"The ReduceLROnPlateau scheduler of optimizer {record.name!r} monitors {config.monitor!r},"
                        " which was not logged; its step is skipped (strict is False).",
                        category=ManualOptimizationWarning,
                    )
                    continue
            _lightning.step_scheduler(trainer, config.scheduler, metric)
            if id(config.scheduler) in self.positions:
                self.positions[id(config.scheduler)] = _position(config.scheduler)

    def _notice_other_steps(self, record: OptimizerRecord, config: Any) -> None:
        # a driven scheduler whose position moved since manualopt stepped it was stepped by other code as well
        key = id(config.scheduler)
        if key in self._warned or _position(config.scheduler) == self.positions.get(key):
            return
        self._warned.add(key)
        rank_zero_warn(
            f"The learning-rate scheduler of optimizer {record.name!r} was stepped outside manualopt, which steps it"
            f" already (interval {config.interval!r}, frequency {config.frequency}) after each update of"
            f" {record.name!r} through `manual_step`: it now advances more often than its config says. Remove your"
            " `step()` call, or update the optimizer without `manual_step` to step its scheduler yourself.",
            category=ManualOptimizationWarning,
        )


def _position(scheduler: Any) -> int:
    return int(getattr(scheduler, "last_epoch", 0))
