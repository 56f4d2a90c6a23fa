"""``ManualOptimizationModule``: a ``LightningModule`` whose manual optimization keeps Lightning's counters right."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NoReturn, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.trainer.states import TrainerStatus
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from manualopt import _lightning, _stepping
from manualopt._callback import ManualOptimizationCallback
from manualopt._guard import attached_trainer, refuse, refusing_steps_of
from manualopt._optimizers import configure
from manualopt._session import LINK_KEY as _LINK
from manualopt._session import SPAWN_RESULT_KEY, FitSession, ModuleLink, components, link_of, session_of
from manualopt.errors import (
    InvalidArgumentError,
    OptimizerConfigurationError,
    UnknownOptimizerError,
)
from manualopt.types import NonFinitePolicy, OptimizerKey, StepResult

__all__ = ["ManualOptimizationModule"]

_F = TypeVar("_F", bound=Callable[..., Any])
_WRAPPED = "__manualopt_wrapped__"


class ManualOptimizationModule(LightningModule):
    """A ``LightningModule`` for manual optimization in which every Lightning built-in keeps working.

    Inherit it instead of ``LightningModule`` and update the parameters inside ``training_step``, preferably with
    :meth:`manual_step`. Plain Lightning manual code (``opt.zero_grad(); self.manual_backward(loss); opt.step()``) also
    works unchanged. Then:

    * ``trainer.global_step`` counts training steps: ``training_step`` calls in which at least one optimizer stepped,
      however it stepped. ``max_steps``, ``ModelCheckpoint`` (every trigger), ``log_every_n_steps``, the loggers'
      step axis and resuming therefore behave as in automatic optimization, whatever the number of optimizers.
    * Each optimizer's number of updates is counted by name (:attr:`optimizer_updates`) and saved in checkpoints.
    * An optimizer step, ``manual_step`` or ``manual_backward`` outside ``training_step`` of a running fit raises
      :class:`~manualopt.StepOutsideTrainingStepError` before anything changes.

    ``configure_optimizers`` may return every form Lightning accepts, or a mapping of names::

        def configure_optimizers(self):
            return {
                "generator": torch.optim.Adam(self.generator.parameters()),
                "discriminator": {"optimizer": opt_d, "lr_scheduler": scheduler_d},
            }

    Unnamed optimizers are called ``optimizer_0``, ``optimizer_1``, ... in order. A named entry that is a dictionary
    may also hold defaults for :meth:`manual_step`: ``accumulate_grad_batches``, ``gradient_clip_val`` and
    ``gradient_clip_algorithm``. Scheduler configs (``interval``, ``frequency``, ``monitor``, ``strict``) are honoured
    for optimizers updated with :meth:`manual_step`, as in automatic optimization.

    Example:
        >>> import torch
        >>> from manualopt import ManualOptimizationModule
        >>> class Regression(ManualOptimizationModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(4, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         x, y = batch
        ...         loss = torch.nn.functional.mse_loss(self.layer(x), y)
        ...         self.manual_step("sgd", loss)
        ...         return loss
        ...     def configure_optimizers(self):
        ...         return {"sgd": torch.optim.SGD(self.parameters(), lr=0.1)}
        >>> Regression().automatic_optimization
        False
    """

    @override
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_hooks(cls)

    @override
    def __getstate__(self) -> dict[str, Any]:
        """Pickle and deep-copy without manualopt's per-fit state (session, callback): a copy starts fresh."""
        state = super().__getstate__()
        state.pop(_LINK, None)
        return state

    # ------------------------------------------------------------------ automatic_optimization

    #: What an update does when one of its gradients (or its loss) is not finite: ``"error"`` raises
    #: :class:`~manualopt.NonFiniteError` naming the optimizer, the batch and the global step, before the weights change
    #: (on a GPU: at the next checkpoint save, logging step or epoch end, before any checkpoint holds them); ``"skip"``
    #: withholds the update and counts it in ``skipped_updates/<name>`` (logged and checkpointed); ``"ignore"`` applies
    #: it. Set it as a class attribute, or per optimizer with a ``"non_finite"`` key in ``configure_optimizers``.
    #: Under a GradScaler (16-bit AMP) the scaler skips such steps itself.
    non_finite: NonFinitePolicy = "error"

    #: Whether a run resumed from a checkpoint goes on exactly as the interrupted run would have: checkpoints then also
    #: hold, per rank, the random generators' states and the interrupted epoch's data order and position, and a resumed
    #: run restores them at the batch (see the README's reliability section). Set it to False for the stock behaviour.
    exact_resume: bool = True

    # Overrides LightningModule.automatic_optimization; mypy does not take @override on a property with a setter.
    @property  # type: ignore[explicit-override]
    def automatic_optimization(self) -> bool:
        """Always False: a ``ManualOptimizationModule`` is manually optimized."""
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        if value:
            raise InvalidArgumentError(
                f"`{type(self).__name__}` is a ManualOptimizationModule, which is always manually optimized; setting"
                " `automatic_optimization = True` is not possible. For automatic optimization inherit"
                " `lightning.pytorch.LightningModule` instead, or step the optimizers with `self.manual_step(...)`."
            )

    # ------------------------------------------------------------------ optimizers by name

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        """The names of the optimizers of the current (or last) fit, in ``trainer.optimizers`` order."""
        return tuple(self._outcome()["optimizer_names"])

    @property
    def optimizer_updates(self) -> Mapping[str, int]:
        """Completed updates per optimizer name in this run, read-only. Saved in and restored from checkpoints.

        A step that a precision plugin skipped (16-bit AMP, non-finite gradients) is not an update. After a
        ``ddp_spawn`` fit, the main process reads the counts its worker processes reached.
        """
        return MappingProxyType(dict(self._outcome()["optimizer_updates"]))

    def _outcome(self) -> dict[str, Any]:
        link: ModuleLink | None = self.__dict__.get(_LINK)
        if link is not None and link.session is not None:
            return link.session.summary()
        if link is not None and link.returned is not None:
            return link.returned
        return {"optimizer_names": (), "optimizer_updates": {}}

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load weights as ``nn.Module.load_state_dict`` does.

        A ``state_dict`` sent back by a ``ddp_spawn`` worker also carries the fit's counters: they are taken out and
        become this module's :attr:`optimizer_updates` and its schedules' position.
        """
        if SPAWN_RESULT_KEY in state_dict:
            state_dict = dict(state_dict)
            returned = state_dict.pop(SPAWN_RESULT_KEY)
            link = link_of(self)
            link.session, link.returned = None, returned
            for component in components(self):
                component._manualopt_returned(returned)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def named_optimizers(self) -> _NamedOptimizers:
        """``(name, LightningOptimizer)`` pairs of the running (or last) fit, in order, like torch's ``named_*``.

        Empty when the module is not attached to the Trainer of that fit. ``dict(self.named_optimizers())`` gives a
        mapping; :meth:`optimizer` looks one up.
        """
        session = session_of(self)
        if session is None or attached_trainer(self) is not session.trainer:
            return _NamedOptimizers([])
        return _NamedOptimizers([(record.name, record.lightning) for record in session.records])

    def optimizer(self, key: OptimizerKey) -> LightningOptimizer:
        """The ``LightningOptimizer`` addressed by ``key``: a name, an index, or the optimizer (raw or wrapped).

        Raises:
            UnknownOptimizerError: ``key`` addresses no optimizer of the running (or last) fit.
        """
        return self._session_for_lookup().record(key).lightning

    def _session_for_lookup(self) -> FitSession:
        session = session_of(self)
        if session is None:
            raise UnknownOptimizerError(
                "No optimizers are known yet: optimizers can be addressed once `Trainer.fit` has called"
                " `configure_optimizers`, inside `training_step`."
            )
        return session

    # ------------------------------------------------------------------ stepping

    def manual_step(
        self,
        optimizer: OptimizerKey,
        loss: Tensor | None = None,
        *,
        closure: Callable[[], Tensor] | None = None,
        accumulate_grad_batches: int | None = None,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
        backward_kwargs: Mapping[str, Any] | None = None,
    ) -> StepResult:
        """Update one optimizer's parameters: backward, step, and step its schedulers.

        Call it inside ``training_step``. The keywords mean what the ``Trainer`` arguments of the same names mean in
        automatic optimization, applied to this optimizer alone; a keyword left at None takes the optimizer's default
        from ``configure_optimizers`` (see the class docstring), and where none was set there: no accumulation
        (``1``), no clipping, ``"norm"``.

        With ``loss``: at the start of an accumulation window the optimizer's gradients are reset; the loss, divided by
        ``accumulate_grad_batches``, is back-propagated through :meth:`manual_backward` (precision plugins and
        strategies apply; under DDP the all-reduce is skipped until the window closes). The window closes after
        ``accumulate_grad_batches`` calls or on the epoch's last batch; then gradients are clipped after the precision
        plugin unscaled them (in ``on_before_optimizer_step``, through ``configure_gradient_clipping``) and the
        optimizer steps. Its gradients stay until its next window starts, as in automatic optimization. An optimizer
        whose window is still open at the end of an epoch steps after that epoch's last ``training_step``.

        With ``closure`` (a function computing and returning the loss, for LBFGS or a two-pass step such as SAM): the
        optimizer steps with a closure that resets its gradients, evaluates ``closure`` and back-propagates the
        result. Without either: the optimizer steps on the gradients already computed.

        The learning-rate schedulers configured for this optimizer are stepped as automatic optimization steps them
        (``interval``, ``frequency``, ``ReduceLROnPlateau`` with ``monitor``/``strict``, the ``lr_scheduler_step``
        hook), and only when the optimizer really updated.

        Args:
            optimizer: The optimizer's name, its index, or an optimizer from ``self.optimizers()``.
            loss: The scalar loss to back-propagate.
            closure: Computes and returns the loss; evaluated inside the optimizer's step.
            accumulate_grad_batches: Micro-batches whose gradients are summed (each loss scaled by its inverse)
                before one update.
            gradient_clip_val: Clip gradients at this value; None or 0 does not clip.
            gradient_clip_algorithm: ``"norm"`` (default) or ``"value"``.
            backward_kwargs: Keyword arguments for ``Tensor.backward`` (e.g. ``{"retain_graph": True}``).

        Returns:
            Which optimizer it was, whether it really stepped, its update count and its open window's size.

        Raises:
            StepOutsideTrainingStepError: Called outside ``training_step``; nothing was changed.
            UnknownOptimizerError: ``optimizer`` names no optimizer of this module.
            InvalidStepArgumentError: A keyword has a wrong type or value, or ``loss`` and ``closure`` were both given.
        """
        link = self.__dict__.get(_LINK)
        session: FitSession | None = None if link is None else link.session
        if session is None or not session.inside():
            self._refuse_step(optimizer)
        call = session.call
        assert call is not None  # inside() saw it
        record = session.by_name.get(optimizer) if isinstance(optimizer, str) else None
        if record is None:
            record = session.record(optimizer)
        if accumulate_grad_batches is None and gradient_clip_val is None and gradient_clip_algorithm is None:
            options = record.defaults
        else:
            options = record.options(accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm)
        return _stepping.step(session, call, record, loss, closure, options, backward_kwargs or {})

    def _refuse_step(self, optimizer: OptimizerKey) -> NoReturn:
        shown = optimizer if isinstance(optimizer, str) else None
        session = session_of(self)
        trainer = attached_trainer(self)
        running = trainer is not None and trainer.state.status == TrainerStatus.RUNNING  # not after a crashed fit
        if (
            running
            and _lightning.current_hook_name(self) == "training_step"
            and (session is None or not session.active)
        ):
            raise OptimizerConfigurationError(
                f"manualopt's callback is not attached to this fit of `{type(self).__name__}`, so nothing can be"
                " counted: `configure_callbacks` was assigned to the class after it was created, or the callback was"
                " taken out of `trainer.callbacks`. Define `configure_callbacks` in the class body (or do not"
                " override it), and leave manualopt's callback in the Trainer."
            )
        names = () if session is None else session.names
        refuse(self, f"`manual_step({shown!r})`" if shown else "`manual_step`", shown, names)

    @override
    @contextlib.contextmanager
    def toggled_optimizer(self, *optimizers: OptimizerKey) -> Iterator[None]:
        """Within the block, only the parameters of the given optimizers require gradients.

        Lightning's ``toggled_optimizer`` for one or more optimizers, addressed by name, index or object. Use it around
        a generator's loss and ``manual_step`` so that back-propagating through the discriminator does not compute
        gradients for its parameters. Every parameter's ``requires_grad`` is restored exactly on exit, also after an
        exception; blocks nest. A parameter shared with a named optimizer stays trainable, and a parameter frozen by
        the user stays frozen.

        Example::

            with self.toggled_optimizer("generator"):
                self.manual_step("generator", generator_loss)

        Raises:
            UnknownOptimizerError: A key is not one of this module's optimizers.
        """
        thaw, freeze = _toggle(self, optimizers)
        try:
            yield
        finally:
            _untoggle(self, thaw, freeze)

    @override
    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Back-propagate ``loss`` through Lightning (precision plugins and strategies apply).

        Allowed only inside ``training_step``; elsewhere it raises
        :class:`~manualopt.StepOutsideTrainingStepError` before computing anything.
        """
        session = session_of(self)
        if session is None or not session.inside():
            refuse(self, "`manual_backward`", None, () if session is None else session.names)
        super().manual_backward(loss, *args, **kwargs)

    @override
    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Callbacks this module adds to the Trainer. manualopt adds its own whether or not this is overridden."""
        return []

    @override
    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Called before an optimizer steps, gradients unscaled. ``manual_step``'s clipping runs right after it."""

    @override
    def on_validation_model_zero_grad(self) -> None:
        """Release the gradients before a validation inside an epoch, except those of an open accumulation window.

        Lightning calls this before a validation that runs inside an epoch (``val_check_interval``), after a batch in
        which an optimizer stepped. Gradients an optimizer is still accumulating (``manual_step``'s
        ``accumulate_grad_batches``) belong to its next update and are kept; every other gradient is released, as
        Lightning's default does.
        """
        session = session_of(self)
        kept = {
            id(parameter)
            for record in (session.records if session is not None else ())
            if record.window.count
            for parameter in record.parameters()
        }
        if not kept:
            super().on_validation_model_zero_grad()
            return
        for parameter in self.parameters():
            if id(parameter) not in kept:
                parameter.grad = None


class _NamedOptimizers(Iterator[tuple[str, LightningOptimizer]]):
    """What :meth:`ManualOptimizationModule.named_optimizers` returns: an iterator of ``(name, optimizer)`` pairs."""

    def __init__(self, pairs: list[tuple[str, LightningOptimizer]]) -> None:
        self._pairs = pairs
        self._iterator = iter(pairs)

    @override
    def __next__(self) -> tuple[str, LightningOptimizer]:
        return next(self._iterator)

    def __len__(self) -> int:
        return len(self._pairs)


@torch.compiler.disable  # type: ignore[untyped-decorator]
def _toggle(
    module: ManualOptimizationModule, optimizers: tuple[OptimizerKey, ...]
) -> tuple[list[Tensor], list[Tensor]]:
    # Kept out of torch.compile graphs, like Lightning's own toggling: requires_grad flips are not traceable.
    session = module._session_for_lookup()
    frozen = link_of(module).frozen
    named = {id(p): p for key in optimizers for p in session.record(key).parameters()}
    others = {id(p): p for record in session.records for p in record.parameters() if id(p) not in named}
    freeze = [p for p in others.values() if p.requires_grad]
    # a named parameter frozen by an enclosing block (not by the user) is trainable again inside this one
    thaw = [p for key, p in named.items() if not p.requires_grad and frozen.get(key, 0)]
    for parameter in freeze:
        parameter.requires_grad_(False)
        frozen[id(parameter)] = frozen.get(id(parameter), 0) + 1
    for parameter in thaw:
        parameter.requires_grad_(True)
    return thaw, freeze


@torch.compiler.disable  # type: ignore[untyped-decorator]
def _untoggle(module: ManualOptimizationModule, thaw: list[Tensor], freeze: list[Tensor]) -> None:
    frozen = link_of(module).frozen
    for parameter in thaw:
        parameter.requires_grad_(False)
    for parameter in freeze:
        parameter.requires_grad_(True)
        frozen[id(parameter)] -= 1
        if not frozen[id(parameter)]:
            del frozen[id(parameter)]


# ---------------------------------------------------------------------------------------------------------- hooks


def _wrap_hooks(cls: type) -> None:
    """Wrap the hooks manualopt keeps books in, where they resolve on ``cls``.

    Wrapping where they resolve (not where they are defined) makes the bookkeeping run whichever class in the
    hierarchy defines a hook (a mixin included), and whether or not it calls ``super()``. It runs when a subclass is
    created, and again when a fit starts, for hooks assigned to the class afterwards or for a class whose base was
    changed to ``ManualOptimizationModule`` after it was created.
    """
    for name, wrap in _HOOK_WRAPPERS.items():
        function = getattr(cls, name, None)
        if function is None or getattr(function, _WRAPPED, False) or function is getattr(LightningModule, name):
            continue
        setattr(cls, name, wrap(function))


def _wrap_training_step(function: _F) -> _F:
    @functools.wraps(function)
    def training_step(self: ManualOptimizationModule, *args: Any, **kwargs: Any) -> Any:
        link = self.__dict__.get(_LINK)
        session: FitSession | None = None if link is None else link.session
        if (
            session is None
            or not session.active
            or session.call is not None  # nested: super() chains and helpers
            or _lightning.current_hook_name(self) != "training_step"  # not Lightning's call
        ):
            return function(self, *args, **kwargs)
        batch_idx = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("batch_idx")
        call = session.begin_call(batch_idx)
        try:
            output = function(self, *args, **kwargs)
            if call.last_batch(session.trainer):
                _stepping.close_open_windows(session, call)
            return output
        finally:
            session.end_call(call)

    setattr(training_step, _WRAPPED, True)
    return training_step  # type: ignore[return-value]


def _wrap_configure_optimizers(function: _F) -> _F:
    @functools.wraps(function)
    def configure_optimizers(self: ManualOptimizationModule) -> Any:
        link = link_of(self)
        with refusing_steps_of(self):
            if link.configuring:  # nested: a super() chain; the outermost call reads the result
                return function(self)
            link.configuring = True
            try:
                config = function(self)
            finally:
                link.configuring = False
        if _lightning.current_hook_name(self) != "configure_optimizers":
            return config  # called directly, not by the Trainer: return it as written
        configured = link.configured = configure(config)
        trainer = attached_trainer(self)
        if trainer is not None and link.callback is not None:
            undo = _lightning.move_callback_first(trainer, link.callback)
            if undo is not None:
                session = link.session
                if session is not None and session.active and session.trainer is trainer:
                    session.on_end(undo)
                else:
                    link.undo_before_fit.append(undo)  # the fit's session takes it over when it starts
        return configured.for_lightning

    setattr(configure_optimizers, _WRAPPED, True)
    return configure_optimizers  # type: ignore[return-value]


def _refuse_trainer_arguments(module: ManualOptimizationModule, trainer: pl.Trainer) -> None:
    # Lightning refuses these in manual optimization and advises automatic optimization; the manualopt way differs.
    name = type(module).__name__
    if trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0:
        raise OptimizerConfigurationError(
            f"`Trainer(gradient_clip_val={trainer.gradient_clip_val})` does not apply to `{name}`, a"
            " ManualOptimizationModule: clipping is set per optimizer. Remove it from the Trainer and pass"
            f" `self.manual_step(name, loss, gradient_clip_val={trainer.gradient_clip_val})`, or set"
            f' `{{"optimizer": opt, "gradient_clip_val": {trainer.gradient_clip_val}}}` for that optimizer in'
            " `configure_optimizers`."
        )
    if trainer.accumulate_grad_batches != 1:
        raise OptimizerConfigurationError(
            f"`Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches})` does not apply to `{name}`, a"
            " ManualOptimizationModule: accumulation is set per optimizer. Remove it from the Trainer and pass"
            f" `self.manual_step(name, loss, accumulate_grad_batches={trainer.accumulate_grad_batches})`, or set"
            f' `{{"optimizer": opt, "accumulate_grad_batches": {trainer.accumulate_grad_batches}}}` for that'
            " optimizer in `configure_optimizers`."
        )


def _wrap_configure_callbacks(function: _F) -> _F:
    @functools.wraps(function)
    def configure_callbacks(self: ManualOptimizationModule) -> Sequence[Callback] | Callback:
        _wrap_hooks(type(self))  # hooks assigned after the class was created (the first hook of a fit runs here)
        trainer = attached_trainer(self)
        if trainer is not None:
            _refuse_trainer_arguments(self, trainer)
        result = function(self)
        callbacks: list[Callback] = [] if not result else [result] if isinstance(result, Callback) else list(result)
        link = link_of(self)
        if link.callback is None:
            link.callback = ManualOptimizationCallback()
        if trainer is None or link.callback not in trainer.callbacks:  # type: ignore[attr-defined]
            callbacks.append(link.callback)
        return callbacks

    setattr(configure_callbacks, _WRAPPED, True)
    return configure_callbacks  # type: ignore[return-value]


def _wrap_on_before_optimizer_step(function: _F) -> _F:
    @functools.wraps(function)
    def on_before_optimizer_step(
        self: ManualOptimizationModule, optimizer: Optimizer, *args: Any, **kwargs: Any
    ) -> Any:
        session = session_of(self)
        call = None if session is None else session.call
        if call is None or call.pending_clip is None:
            return function(self, optimizer, *args, **kwargs)
        pending, call.pending_clip = call.pending_clip, None  # nested super() calls see nothing pending
        try:
            output = function(self, optimizer, *args, **kwargs)
        finally:
            call.pending_clip = pending
        assert session is not None
        _stepping.apply_requested_clipping(session, optimizer)
        return output

    setattr(on_before_optimizer_step, _WRAPPED, True)
    return on_before_optimizer_step  # type: ignore[return-value]


_HOOK_WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "training_step": _wrap_training_step,
    "configure_optimizers": _wrap_configure_optimizers,
    "configure_callbacks": _wrap_configure_callbacks,
    "on_before_optimizer_step": _wrap_on_before_optimizer_step,
}

# The base class's own definitions are wrapped too, so subclasses that do not override them get the bookkeeping.
ManualOptimizationModule.configure_callbacks = _wrap_configure_callbacks(  # type: ignore[method-assign]
    ManualOptimizationModule.configure_callbacks
)
ManualOptimizationModule.on_before_optimizer_step = _wrap_on_before_optimizer_step(  # type: ignore[method-assign]
    ManualOptimizationModule.on_before_optimizer_step
)
