"""Per-module bookkeeping: what manualopt knows about one ``ManualOptimizationModule`` instance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from torch.optim import Optimizer
    from torch.utils.hooks import RemovableHandle

STATE_ATTRIBUTE = "_manualopt_state"


@dataclass
class ModuleState:
    """Mutable state kept beside a module, outside its ``state_dict``.

    Attributes:
        names: Optimizer names, in the order of ``trainer.optimizers``; set when fit starts.
        optimizers: The torch optimizers of the running fit, in the same order.
        updates: Completed updates per optimizer name in this run (restored from checkpoints).
        configured_names: Names taken from a mapping returned by ``configure_optimizers``, until fit starts.
        training_depth: How deep inside Lightning's own ``training_step`` call the code runs (0: outside).
        stepped_in_call: Whether an optimizer stepped during the current ``training_step`` call.
        batch_stepped: Whether the current (or last) batch made a training step.
        handles: Torch optimizer hook handles owned by manualopt.
        undo: Functions removing what manualopt set on the trainer for this fit.
        loaded: The manualopt entry of a checkpoint being resumed, until it is applied.
        callback: The callback manualopt attaches through ``configure_callbacks``.
        defaults: Per-optimizer ``manual_step`` keyword defaults from ``configure_optimizers``, by name.
        windows: Micro-batches accumulated so far in each optimizer's open accumulation window.
        window_epochs: The epoch in which each open window started.
        window_clipping: The clipping settings of each open window, used when the epoch's end closes it.
        pending_clip: Clipping ``manual_step`` asked for, applied in ``on_before_optimizer_step`` (after unscaling).
        updated_in_batch: Optimizers updated through ``manual_step`` in the current batch.
        updated_in_epoch: Optimizers updated through ``manual_step`` in the current epoch.
        scheduler_settings: Scheduler keys taken out of the configuration, by ``id(scheduler)``, until fit starts.
        hook_depth: Nesting depth of ``on_before_optimizer_step`` calls (``super()`` chains).
        frozen: How many open ``optimizing`` blocks froze each parameter, by ``id``.
        stepping: Optimizers whose own ``step`` is in progress (their base optimizer's steps are part of it).
        scheduler_epochs: Each driven scheduler's ``last_epoch`` after manualopt last stepped it, by ``id``.
        last_trainer: The trainer of the previous fit; fitting on with it continues the update counters.
        schedules: The module's ``StepSchedule`` attributes, by attribute name; found when fit starts.
        averages: The module's ``EMA`` submodules, by the name of the optimizer that drives them.
    """

    names: list[str] = field(default_factory=list)
    optimizers: list[Optimizer] = field(default_factory=list)
    updates: dict[str, int] = field(default_factory=dict)
    configured_names: list[str] | None = None
    training_depth: int = 0
    stepped_in_call: bool = False
    batch_stepped: bool = True
    handles: list[RemovableHandle] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)
    loaded: dict[str, Any] | None = None
    callback: Callback | None = None
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    window_epochs: dict[str, int] = field(default_factory=dict)
    window_clipping: dict[str, tuple[float | None, str | None]] = field(default_factory=dict)
    pending_clip: tuple[Optimizer, float | None, str | None] | None = None
    updated_in_batch: set[str] = field(default_factory=set)
    updated_in_epoch: set[str] = field(default_factory=set)
    scheduler_settings: dict[int, dict[str, Any]] = field(default_factory=dict)
    hook_depth: int = 0
    frozen: dict[int, int] = field(default_factory=dict)
    stepping: set[str] = field(default_factory=set)
    scheduler_epochs: dict[int, Any] = field(default_factory=dict)
    last_trainer: Any = None
    schedules: dict[str, Any] = field(default_factory=dict)
    averages: dict[str, list[Any]] = field(default_factory=dict)


def state_of(module: pl.LightningModule) -> ModuleState:
    """The module's state, created on first use (so it does not depend on ``__init__`` order)."""
    attributes = vars(module)
    state = attributes.get(STATE_ATTRIBUTE)
    if state is None:
        state = attributes[STATE_ATTRIBUTE] = ModuleState()
    return state


def trainer_callbacks(trainer: pl.Trainer) -> list[Callback]:
    """The trainer's callback list (an attribute Lightning sets at run time, so untyped there)."""
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    return callbacks


def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer the module is attached to, or None."""
    try:
        return module.trainer
    except RuntimeError:  # "not attached to a Trainer"
        return None
