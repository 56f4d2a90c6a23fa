"""What one ``manual_step`` call does: accumulation windows, loss scaling, clipping, closures, and the step itself."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor
from torch.optim import LBFGS

from manualopt import _lightning
from manualopt._state import state_of
from manualopt.errors import InvalidStepArgumentError

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from torch.optim import Optimizer

__all__ = ["STEP_OPTIONS", "StepResult", "apply_requested_clipping", "close_open_windows", "step", "validate_options"]

#: The ``manual_step`` keywords that can also be set per optimizer in ``configure_optimizers``.
STEP_OPTIONS = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`~manualopt.ManualOptimizationModule.manual_step` call did.

    Attributes:
        optimizer: The name of the optimizer.
        stepped: Whether the optimizer really updated the parameters. False while an accumulation window is open, and
            when a precision plugin skipped the step (16-bit AMP found non-finite gradients).
        updates: The optimizer's number of updates in this run so far, this one included.
        accumulated: Micro-batches gathered in the optimizer's open accumulation window (0 once it stepped).
    """

    optimizer: str
    stepped: bool
    updates: int
    accumulated: int = 0


def validate_options(
    accumulate_grad_batches: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any, where: str
) -> tuple[int, float | None, str | None]:
    """Check the step options as the Trainer checks its arguments of the same names.

    Raises:
        InvalidStepArgumentError: An option has a wrong type or value; the message names ``where``.
    """
    if (
        isinstance(accumulate_grad_batches, bool)
        or not isinstance(accumulate_grad_batches, int)
        or accumulate_grad_batches < 1
    ):
        raise InvalidStepArgumentError(
            f"{where}: accumulate_grad_batches must be a positive integer, not {accumulate_grad_batches!r}."
        )
    if gradient_clip_val is not None and (
        isinstance(gradient_clip_val, bool) or not isinstance(gradient_clip_val, numbers.Real) or gradient_clip_val < 0
    ):
        raise InvalidStepArgumentError(
            f"{where}: gradient_clip_val must be a non-negative number or None, not {gradient_clip_val!r}."
        )
    if gradient_clip_algorithm is not None and gradient_clip_algorithm not in ("norm", "value"):
        raise InvalidStepArgumentError(
            f"{where}: gradient_clip_algorithm must be 'norm', 'value' or None, not {gradient_clip_algorithm!r}."
        )
    value = None if gradient_clip_val is None else float(gradient_clip_val)
    return accumulate_grad_batches, value, gradient_clip_algorithm


def step(
    module: pl.LightningModule,
    name: str,
    optimizer: LightningOptimizer,
    loss: Tensor | None,
    *,
    closure: Callable[[], Tensor] | None,
    options: Mapping[str, Any],
    backward_kwargs: Mapping[str, Any],
) -> StepResult:
    """Run one ``manual_step`` call; see :meth:`ManualOptimizationModule.manual_step` for the contract."""
    state = state_of(module)
    defaults = state.defaults.get(name, {})
    accumulate, clip_val, clip_algorithm = validate_options(
        _option(options, defaults, "accumulate_grad_batches", 1),
        _option(options, defaults, "gradient_clip_val", None),
        _option(options, defaults, "gradient_clip_algorithm", None),
        where=f"manual_step({name!r})",
    )
    if closure is not None and loss is not None:
        raise InvalidStepArgumentError(
            f"manual_step({name!r}): pass either a loss or a closure that computes it, not both."
        )
    if closure is None and isinstance(optimizer.optimizer, LBFGS):
        raise InvalidStepArgumentError(
            f"manual_step({name!r}): LBFGS evaluates the loss several times per step, so it needs a closure: write"
            f" `self.manual_step({name!r}, closure=lambda: compute_loss(batch))` instead of passing a loss."
        )
    if closure is not None and accumulate > 1:
        raise InvalidStepArgumentError(
            f"manual_step({name!r}): a closure re-evaluates the loss inside the step, so it cannot accumulate"
            " gradients over batches; use accumulate_grad_batches=1 with a closure."
        )

    trainer = module.trainer
    epoch = trainer.current_epoch
    if state.window_epochs.get(name) != epoch:
        state.windows[name] = 0  # windows never span epochs: the last batch closes them
    gathered = state.windows.get(name, 0)
    closes = gathered + 1 >= accumulate or _lightning.is_last_batch(trainer)

    if loss is not None:
        if gathered == 0:
            optimizer.zero_grad(set_to_none=True)  # a window starts with no gradient, as in automatic optimization
        scaled = loss / accumulate if accumulate > 1 else loss
        sync = contextlib.nullcontext() if closes else _no_gradient_sync(trainer)
        with sync:
            module.manual_backward(scaled, **backward_kwargs)

    if not closes:
        state.windows[name] = gathered + 1
        state.window_epochs[name] = epoch
        state.window_clipping[name] = (clip_val, clip_algorithm)
        return StepResult(name, stepped=False, updates=state.updates.get(name, 0), accumulated=gathered + 1)
    state.windows[name] = 0
    wrapped = None if closure is None else _closure(module, optimizer, closure, backward_kwargs)
    return _update(module, name, optimizer, clip_val, clip_algorithm, wrapped)


def _option(options: Mapping[str, Any], defaults: Mapping[str, Any], key: str, fallback: Any) -> Any:
    if options.get(key) is not None:
        return options[key]
    return defaults.get(key, fallback)


def _no_gradient_sync(trainer: pl.Trainer) -> contextlib.AbstractContextManager[Any]:
    # Parallel strategies (DDP) skip the gradient all-reduce inside this context, as automatic optimization does for
    # batches that only accumulate.
    block = getattr(trainer.strategy, "block_backward_sync", None)
    return block() if block is not None else contextlib.nullcontext()


def _closure(
    module: pl.LightningModule,
    optimizer: LightningOptimizer,
    closure: Callable[[], Tensor],
    backward_kwargs: Mapping[str, Any],
) -> Callable[[], Tensor]:
    def evaluate() -> Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = closure()
        module.manual_backward(loss, **backward_kwargs)
        return loss

    return evaluate


def _update(
    module: pl.LightningModule,
    name: str,
    optimizer: LightningOptimizer,
    clip_val: float | None,
    clip_algorithm: str | None,
    closure: Callable[[], Tensor] | None,
) -> StepResult:
    state = state_of(module)
    before = state.updates.get(name, 0)
    state.pending_clip = (optimizer.optimizer, clip_val, clip_algorithm)
    try:
        if closure is None:
            optimizer.step()
        else:
            optimizer.step(closure=closure)
    finally:
        state.pending_clip = None
    optimizer.zero_grad(set_to_none=True)
    updates = state.updates.get(name, 0)
    if updates > before:
        state.updated_in_batch.add(name)
        state.updated_in_epoch.add(name)
    return StepResult(name, stepped=updates > before, updates=updates)


def apply_requested_clipping(module: pl.LightningModule, optimizer: Optimizer) -> None:
    """Clip ``optimizer``'s gradients if the running ``manual_step`` asked for it.

    Runs at the end of ``on_before_optimizer_step``, where automatic optimization clips: after the precision plugin
    unscaled the gradients (16-bit AMP) and after the user's hook saw them unclipped. It goes through the module's
    ``configure_gradient_clipping`` hook with the same arguments automatic optimization passes.
    """
    pending = state_of(module).pending_clip
    if pending is None or pending[0] is not optimizer:
        return
    _, clip_val, clip_algorithm = pending
    module.configure_gradient_clipping(
        optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=clip_algorithm or "norm"
    )


def close_open_windows(module: pl.LightningModule, optimizers: Mapping[str, LightningOptimizer]) -> None:
    """Step every optimizer whose accumulation window is still open at the end of the epoch."""
    state = state_of(module)
    epoch = module.trainer.current_epoch
    for name, optimizer in optimizers.items():
        if state.windows.get(name, 0) and state.window_epochs.get(name) == epoch:
            state.windows[name] = 0
            _update(module, name, optimizer, *state.window_clipping.get(name, (None, None)), None)
