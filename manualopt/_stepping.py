"""What one ``manual_step`` call does: accumulation windows, loss scaling, clipping, closures, and the step itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from torch import Tensor
from torch.optim import LBFGS

from manualopt import _lightning
from manualopt.errors import InvalidStepArgumentError, NonFiniteError, OptimizerConfigurationError
from manualopt.types import StepResult

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from manualopt._optimizers import OptimizerRecord, StepOptions
    from manualopt._session import FitSession, StepCall

__all__ = ["apply_requested_clipping", "check_deferred_non_finite", "check_gradients", "close_open_windows", "step"]


def step(
    session: FitSession,
    call: StepCall,
    record: OptimizerRecord,
    loss: Tensor | None,
    closure: Callable[[], Tensor] | None,
    options: StepOptions,
    backward_kwargs: Mapping[str, Any],
) -> StepResult:
    """Run one ``manual_step`` call; see :meth:`ManualOptimizationModule.manual_step` for the contract."""
    name = record.name
    accumulate = options.accumulate_grad_batches
    if closure is not None:
        if loss is not None:
            raise InvalidStepArgumentError(
                f"manual_step({name!r}): pass either a loss or a closure that computes it, not both."
            )
        if accumulate > 1:
            raise InvalidStepArgumentError(
                f"manual_step({name!r}): a closure re-evaluates the loss inside the step, so it cannot accumulate"
                " gradients over batches; use accumulate_grad_batches=1 with a closure."
            )
    elif isinstance(record.optimizer, LBFGS):
        raise InvalidStepArgumentError(
            f"manual_step({name!r}): LBFGS evaluates the loss several times per step, so it needs a closure: write"
            f" `self.manual_step({name!r}, closure=lambda: compute_loss(batch))` instead of passing a loss."
        )

    if loss is not None and (
        not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.requires_grad or not loss.is_floating_point()
    ):
        _refuse_loss(name, loss)
    call.loss = loss
    trainer = session.trainer
    epoch = call.epoch
    window = record.window
    gathered = window.count if window.epoch == epoch else 0  # windows never span epochs: the last batch closes them
    closes = gathered + 1 >= accumulate or call.last_batch(trainer)

    if loss is not None:
        kept = None
        if gathered == 0:
            kept = record.release_gradients()  # a window starts with no gradient, as in automatic optimization
        if accumulate > 1:
            loss = loss / accumulate
        try:
            if closes:
                session.module.manual_backward(loss, **backward_kwargs)
            else:
                with _lightning.no_backward_sync(trainer):
                    session.module.manual_backward(loss, **backward_kwargs)
        except RuntimeError as error:
            if kept is not None:
                record.restore_gradients(kept)  # refused before anything changed
            if "backward through the graph a second time" in str(error):
                raise _freed_graph(name) from error
            raise

    if not closes:
        window.count, window.epoch, window.options = gathered + 1, epoch, options
        return StepResult(name, stepped=False, updates=record.updates, accumulated=gathered + 1)
    window.count = 0
    wrapped = None if closure is None else _closure(session, record, closure, backward_kwargs)
    return update(session, call, record, options, wrapped)


def _closure(
    session: FitSession, record: OptimizerRecord, closure: Callable[[], Tensor], backward_kwargs: Mapping[str, Any]
) -> Callable[[], Tensor]:
    def evaluate() -> Tensor:
        record.release_gradients()
        loss = closure()
        if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.requires_grad or not loss.is_floating_point():
            _refuse_loss(record.name, loss, "the closure returned")
        if record.checks_non_finite and loss.device.type == "cpu" and not bool(loss.isfinite()):
            # inside the optimizer's step nothing can be withheld: a closure's update raises in "skip" mode too
            raise _non_finite_error(session, call_of(session), record, loss, "the loss its closure returned is")
        session.module.manual_backward(loss, **backward_kwargs)
        return loss

    return evaluate


def update(
    session: FitSession,
    call: StepCall,
    record: OptimizerRecord,
    options: StepOptions,
    closure: Callable[[], Tensor] | None,
) -> StepResult:
    """Step ``record``'s optimizer through its ``LightningOptimizer`` and report whether it really updated.

    The update is counted by the torch step hooks of the session (``FitSession._post_hook``), which run only when the
    torch optimizer really stepped; comparing the count before and after tells a real update from a skipped one.
    """
    if record.unmonitored is not None:
        raise OptimizerConfigurationError(
            f"manual_step({record.name!r}): optimizer {record.name!r} has a ReduceLROnPlateau scheduler without a"
            " `monitor`, which manualopt steps after each update through `manual_step` but cannot without a metric."
            ' Name the metric it follows in `configure_optimizers`: `{"optimizer": opt, "lr_scheduler":'
            ' {"scheduler": scheduler, "monitor": "val_loss"}}`; or step this optimizer yourself (`opt.step()`) and'
            " its scheduler with `self.lr_schedulers().step(metric)`, as in stock manual optimization."
        )
    # the gradients are checked by the optimizer's step pre-hook (FitSession._pre_hook): after Lightning ran the
    # user's on_before_optimizer_step and the clipping, which may repair them, and right before the step
    record.checking = closure is None and record.checks_non_finite
    before = record.updates
    if options.gradient_clip_val or session.custom_clipping:
        call.pending_clip = (record.optimizer, options.gradient_clip_val, options.gradient_clip_algorithm)
    try:
        if closure is None:
            record.lightning.step()
        else:
            record.lightning.step(closure=closure)
    finally:
        call.pending_clip = None
        record.checking = False
    withheld, record.withheld = record.withheld, None
    if withheld is not None:
        return withheld
    record.release_gradients()  # the update used them; the memory is free until the next window
    stepped = record.updates > before
    if stepped:
        record.last_update_call = call.index
        record.last_update_epoch = call.epoch
    return StepResult(record.name, stepped=stepped, updates=record.updates)


def call_of(session: FitSession) -> StepCall:
    """The running ``training_step`` call (a closure runs inside one)."""
    call = session.call
    assert call is not None
    return call


def check_gradients(session: FitSession, call: StepCall, record: OptimizerRecord) -> StepResult | None:
    """Withhold or refuse an update whose gradients are not finite, as the optimizer's policy says.

    Returns:
        The result of a withheld update (policy ``"skip"``), or None when the update goes ahead.

    Raises:
        NonFiniteError: A gradient is not finite and the policy is ``"error"`` (on a GPU: at the next check point).
    """
    found = record.found_non_finite()
    if found is None:
        return None
    if record.defers_check:
        # reading the flag now would wait for the device on every update: it is read at the next check point
        if record.unchecked_since is None:
            record.unchecked_since = (call.epoch, call.batch_idx, call.base)
        return None
    if not bool(found):
        return None
    found.zero_()
    if record.non_finite == "error":
        raise _non_finite_error(session, call, record, call.loss, "a gradient is")
    record.release_gradients()
    record.skipped += 1
    session.module.log(f"skipped_updates/{record.name}", float(record.skipped), on_step=True, on_epoch=False)
    return StepResult(record.name, stepped=False, updates=record.updates, skipped=True)


def _non_finite_error(
    session: FitSession, call: StepCall, record: OptimizerRecord, loss: Tensor | None, what: str
) -> NonFiniteError:
    where = f"batch {call.batch_idx} of epoch {call.epoch}" if call.batch_idx is not None else f"epoch {call.epoch}"
    shown = "" if loss is None else f" (the loss is {float(loss.detach())})"
    return NonFiniteError(
        f"manual_step({record.name!r}): {what} not finite (NaN or infinite){shown} at {where}, global step"
        f" {call.base}. The update was not applied: the weights and the checkpoints are as before it. Find the cause"
        " with `torch.autograd.set_detect_anomaly(True)` (a learning rate too high, a log or division of 0, a"
        f' missing epsilon), or let {record.name!r} skip such updates: `non_finite = "skip"` on the module, or'
        f' `{{"optimizer": opt, "non_finite": "skip"}}` for it in `configure_optimizers`.'
    )


def check_deferred_non_finite(session: FitSession, when: str) -> None:
    """Read the non-finite flags of updates made on a GPU since the last check; raise for the first one set.

    Raises:
        NonFiniteError: An update since the last check had a non-finite gradient (the policy is ``"error"``).
    """
    for record in session.records:
        since = record.unchecked_since
        if since is None:
            continue
        record.unchecked_since = None
        found = record.found
        if found is not None and bool(found):
            found.zero_()
            epoch, batch_idx, step = since
            raise NonFiniteError(
                f"An update of optimizer {record.name!r} since batch {batch_idx} of epoch {epoch} (global step {step})"
                f" had a non-finite gradient (NaN or infinite), found {when}. On a GPU the check is read only at"
                " checkpoint saves, logging steps and epoch ends, so the update was applied: the fit stops here,"
                " before any checkpoint holds the non-finite weights. Find the cause with"
                " `torch.autograd.set_detect_anomaly(True)`, or let it skip such updates:"
                f' `{{"optimizer": opt, "non_finite": "skip"}}` in `configure_optimizers`.'
            )


def _refuse_loss(name: str, loss: Any, subject: str = "the loss is") -> NoReturn:
    if not isinstance(loss, Tensor):
        problem = f"a {type(loss).__name__} ({loss!r}), not a tensor"
        fix = "pass the tensor your loss function returned, not a number taken from it (no `.item()`, `float()`)"
    elif loss.numel() != 1:
        problem = f"a tensor of shape {tuple(loss.shape)}, not a single number"
        fix = "reduce it first, e.g. `loss.mean()` or `loss.sum()`"
    elif not loss.is_floating_point():
        problem = f"a {loss.dtype} tensor, which has no gradient"
        fix = "compute the loss in floating point"
    else:
        problem = "a tensor that does not require gradients"
        fix = (
            "compute it from the parameters outside `torch.no_grad()`, without `.detach()`, and outside a"
            f" `toggled_optimizer` block that freezes the parameters of {name!r}"
        )
    raise InvalidStepArgumentError(f"manual_step({name!r}): {subject} {problem}. Nothing was changed. Fix: {fix}.")


def _freed_graph(name: str) -> InvalidStepArgumentError:
    return InvalidStepArgumentError(
        f"manual_step({name!r}): the loss's graph was already freed by an earlier backward pass (a loss of another"
        " optimizer that shares part of this graph, e.g. a generator output used in both losses). The weights and"
        f" the gradients of {name!r} are unchanged. Fix: recompute the loss after the other update (e.g. run the"
        " discriminator on the generator output again), or keep the graph for the second pass with"
        ' `backward_kwargs={"retain_graph": True}` on the first `manual_step`.'
    )


def apply_requested_clipping(session: FitSession, optimizer: Optimizer) -> None:
    """Clip ``optimizer``'s gradients if the running ``manual_step`` asked for it.

    Runs at the end of ``on_before_optimizer_step``, where automatic optimization clips: after the precision plugin
    unscaled the gradients (16-bit AMP) and after the user's hook saw them unclipped. It goes through the module's
    ``configure_gradient_clipping`` hook with the arguments automatic optimization passes.
    """
    call = session.call
    pending = None if call is None else call.pending_clip
    if pending is None or pending[0] is not optimizer:
        return
    _, clip_val, clip_algorithm = pending
    session.module.configure_gradient_clipping(
        optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=clip_algorithm
    )


def close_open_windows(session: FitSession, call: StepCall) -> None:
    """Step every optimizer whose accumulation window is still open at the end of the epoch."""
    epoch = call.epoch
    for record in session.records:
        window = record.window
        if window.count and window.epoch == epoch:
            window.count = 0
            update(session, call, record, window.options, None)
