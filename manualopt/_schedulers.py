"""Learning-rate scheduler configs honoured for optimizers stepped with ``manual_step``.

Lightning keeps ``interval`` and ``frequency`` of a scheduler config in manual optimization but drops ``monitor``,
``strict`` and ``reduce_on_plateau`` with a warning, and never steps a scheduler. manualopt takes those keys out of the
configuration before Lightning reads it (so no warning), puts them back on ``trainer.lr_scheduler_configs`` when fit
starts, and steps each scheduler where and when automatic optimization would, but only while its optimizer really
updates through ``manual_step``. Schedulers of optimizers stepped any other way stay the user's to step, as in stock
manual optimization.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch.optim.lr_scheduler import ReduceLROnPlateau

from manualopt import _lightning
from manualopt._state import state_of
from manualopt.errors import OptimizerConfigurationError

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["apply_scheduler_settings", "strip_scheduler_settings", "update_schedulers"]

_MANUAL_KEYS = ("monitor", "strict", "reduce_on_plateau")


def strip_scheduler_settings(config: Any) -> tuple[Any, dict[int, dict[str, Any]]]:
    """Remove the keys Lightning would drop in manual optimization; return them by ``id(scheduler)``.

    Args:
        config: A configuration in one of the forms Lightning accepts (already converted from a mapping of names).

    Returns:
        The configuration without those keys (the user's dictionaries are copied, not changed), and the removed
        settings of each scheduler.
    """
    settings: dict[int, dict[str, Any]] = {}

    def scheduler_entry(entry: Any, monitor: Any) -> Any:
        if isinstance(entry, Mapping) and "scheduler" in entry:
            kept = {key: value for key, value in entry.items() if key not in _MANUAL_KEYS}
            found = {key: entry[key] for key in _MANUAL_KEYS if key in entry}
            if monitor is not None:
                found.setdefault("monitor", monitor)
            settings[id(entry["scheduler"])] = found
            return kept
        if entry is not None and monitor is not None:
            settings[id(entry)] = {"monitor": monitor}
        return entry

    def optimizer_entry(entry: Any) -> Any:
        if not (isinstance(entry, Mapping) and "optimizer" in entry):
            return entry
        kept = {key: value for key, value in entry.items() if key != "monitor"}
        if "lr_scheduler" in entry:
            kept["lr_scheduler"] = scheduler_entry(entry["lr_scheduler"], entry.get("monitor"))
        return kept

    if isinstance(config, Mapping):
        return optimizer_entry(config), settings
    if isinstance(config, (list, tuple)):
        if len(config) == 2 and isinstance(config[0], list) and not any(isinstance(o, Mapping) for o in config[0]):
            # ([optimizers], [schedulers]) or ([optimizers], scheduler)
            schedulers = config[1] if isinstance(config[1], list) else [config[1]]
            return (config[0], [scheduler_entry(entry, None) for entry in schedulers]), settings
        return [optimizer_entry(entry) for entry in config], settings
    return config, settings


def apply_scheduler_settings(trainer: pl.Trainer, settings: Mapping[int, Mapping[str, Any]]) -> None:
    """Put the stripped settings back on ``trainer.lr_scheduler_configs``, as automatic optimization reads them."""
    for config in trainer.lr_scheduler_configs:
        found = settings.get(id(config.scheduler), {})
        config.monitor = found.get("monitor", config.monitor)
        config.strict = bool(found.get("strict", config.strict))
        config.reduce_on_plateau = bool(found.get("reduce_on_plateau", isinstance(config.scheduler, ReduceLROnPlateau)))
        if config.interval not in ("step", "epoch"):
            raise OptimizerConfigurationError(
                f'The "interval" of a scheduler config must be "step" or "epoch", not {config.interval!r}.'
            )


def _optimizer_name(module: pl.LightningModule, scheduler: Any) -> str | None:
    state = state_of(module)
    optimizer = getattr(scheduler, "optimizer", None)
    for name, candidate in zip(state.names, state.optimizers, strict=True):
        if candidate is optimizer:
            return name
    return None


def update_schedulers(
    trainer: pl.Trainer, module: pl.LightningModule, interval: str, plateau: bool, batch_idx: int
) -> None:
    """Step the schedulers due now, as automatic optimization does at the same call site.

    Lightning calls this where automatic optimization updates learning rates: ``interval="step"`` after a batch that
    stepped (non-plateau schedulers) and after the batch's validation (plateau schedulers); ``interval="epoch"`` after
    the epoch's last batch (non-plateau) and after ``on_train_epoch_end`` (plateau). A scheduler is due when its
    ``interval`` matches and ``batch_idx + 1`` (step) or ``current_epoch + 1`` (epoch) is a multiple of its
    ``frequency``; manualopt additionally requires that its optimizer updated through ``manual_step`` in this batch
    (step) or this epoch (epoch).

    Raises:
        OptimizerConfigurationError: A due ``ReduceLROnPlateau`` has no ``monitor``, or ``strict`` is set and the
            monitored metric was not logged.
    """
    state = state_of(module)
    updated = state.updated_in_batch if interval == "step" else state.updated_in_epoch
    index = (batch_idx if interval == "step" else trainer.current_epoch) + 1
    for config in trainer.lr_scheduler_configs:
        if plateau != config.reduce_on_plateau or config.interval != interval or index % config.frequency:
            continue
        name = _optimizer_name(module, config.scheduler)
        if name is None or name not in updated:
            continue
        metric = None
        if config.reduce_on_plateau:
            if config.monitor is None:
                raise OptimizerConfigurationError(
                    f"The ReduceLROnPlateau scheduler of optimizer {name!r} needs a metric to monitor: configure it"
                    f' as {{"scheduler": scheduler, "monitor": "val_loss"}}.'
                )
            metric = trainer.callback_metrics.get(config.monitor)
            if metric is None:
                if not config.strict:
                    warnings.warn(
                        f"The ReduceLROnPlateau scheduler of optimizer {name!r} monitors {config.monitor!r}, which was"
                        " not logged; its step is skipped (strict is False).",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                else:
                    raise OptimizerConfigurationError(
                        f"The ReduceLROnPlateau scheduler of optimizer {name!r} monitors {config.monitor!r}, which"
                        f" was not logged. Logged metrics: {sorted(trainer.callback_metrics)}. Log it with"
                        f' `self.log("{config.monitor}", ...)` or set "strict": False in the scheduler config.'
                    )
                continue
        _warn_if_stepped_elsewhere(state.scheduler_epochs, name, config.scheduler)
        _lightning.call_module_hook(trainer, "lr_scheduler_step", config.scheduler, metric)
        state.scheduler_epochs[id(config.scheduler)] = getattr(config.scheduler, "last_epoch", None)


def _warn_if_stepped_elsewhere(seen: dict[int, Any], name: str, scheduler: Any) -> None:
    # Stepping a scheduler that manualopt drives as well would advance it twice per due step.
    expected = seen.get(id(scheduler))
    if expected is not None and getattr(scheduler, "last_epoch", None) != expected:
        warnings.warn(
            f"The learning-rate scheduler of optimizer {name!r} was stepped outside manualopt, which steps it itself"
            " because the optimizer is updated with `manual_step` (as its config says: interval, frequency). It now"
            " advances twice per due step. Remove your own `scheduler.step()` call.",
            RuntimeWarning,
            stacklevel=3,
        )
