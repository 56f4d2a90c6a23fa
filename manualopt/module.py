"""``ManualOptimizationModule``: a ``LightningModule`` whose manual optimization keeps Lightning's counters right."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from manualopt import _lightning, _stepping
from manualopt._callback import ManualOptimizationCallback, guard_lightning_optimizers, lightning_optimizers
from manualopt._guard import check_inside_training_step
from manualopt._lightning import current_hook_name, set_global_step
from manualopt._optimizers import normalize_optimizer_config, refuse_steps
from manualopt._schedulers import strip_scheduler_settings
from manualopt._state import STATE_ATTRIBUTE, attached_trainer, state_of, trainer_callbacks
from manualopt._stepping import StepResult
from manualopt.errors import OptimizerConfigurationError, UnknownOptimizerError

__all__ = ["ManualOptimizationModule", "OptimizerKey", "StepResult"]

#: How an optimizer can be addressed: its name, its index, or the optimizer itself.
OptimizerKey = str | int | Optimizer | LightningOptimizer

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
    * An optimizer step, ``manual_step`` or ``manual_backward`` outside ``training_step`` raises
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The hooks are wrapped where they resolve on the final class, so manualopt's bookkeeping runs whichever class
        # in the hierarchy (a mixin included) defines them, and whether or not they call ``super()``.
        for name, wrap in _HOOK_WRAPPERS.items():
            function = getattr(cls, name, None)
            if function is None or getattr(function, _WRAPPED, False) or function is getattr(LightningModule, name):
                continue
            setattr(cls, name, wrap(function))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle and deep-copy without manualopt's per-fit state (hooks, callback): a copy starts fresh."""
        state = super().__getstate__()
        state.pop(STATE_ATTRIBUTE, None)
        return state

    # ------------------------------------------------------------------ automatic_optimization

    @property
    def automatic_optimization(self) -> bool:
        """Always False: a ``ManualOptimizationModule`` is manually optimized."""
        return False

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        if value:
            raise OptimizerConfigurationError(
                f"`{type(self).__name__}` is a ManualOptimizationModule, which is always manually optimized; setting"
                " `automatic_optimization = True` is not possible. For automatic optimization inherit"
                " `lightning.pytorch.LightningModule` instead, or step the optimizers with `self.manual_step(...)`."
            )

    # ------------------------------------------------------------------ optimizers by name

    @property
    def optimizer_names(self) -> tuple[str, ...]:
        """The names of the optimizers of the current fit, in ``trainer.optimizers`` order."""
        return tuple(state_of(self).names)

    @property
    def optimizer_updates(self) -> Mapping[str, int]:
        """Completed updates per optimizer name in this run, read-only. Saved in and restored from checkpoints.

        A step that a precision plugin skipped (16-bit AMP, non-finite gradients) is not an update.
        """
        return MappingProxyType(dict(state_of(self).updates))

    def named_optimizers(self) -> Mapping[str, LightningOptimizer]:
        """The optimizers of the running fit by name, as the ``LightningOptimizer`` objects of ``self.optimizers()``.

        Empty when no fit with optimizers is attached.
        """
        names, wrapped = state_of(self).names, lightning_optimizers(self)
        return MappingProxyType(dict(zip(names, wrapped, strict=True)) if len(names) == len(wrapped) else {})

    def _resolve(self, optimizer: OptimizerKey) -> tuple[str, LightningOptimizer]:
        state = state_of(self)
        if not state.names:
            if state.last_trainer is None:  # no fit has started
                raise UnknownOptimizerError(
                    "No optimizers are known yet: optimizers can be addressed once `Trainer.fit` has called"
                    " `configure_optimizers`, inside `training_step`."
                )
            raise UnknownOptimizerError(
                "`configure_optimizers` returned no optimizer, so there is nothing to step. Return one, or a mapping"
                ' of names such as `{"generator": opt_g, "discriminator": opt_d}`.'
            )
        wrapped = lightning_optimizers(self)
        if len(wrapped) != len(state.names):
            raise UnknownOptimizerError(
                f"The optimizers {list(state.names)} belong to a finished fit; they can be addressed inside"
                " `training_step` of a running `Trainer.fit`."
            )
        index: int | None = None
        if isinstance(optimizer, str):
            if optimizer in state.names:
                index = state.names.index(optimizer)
        elif isinstance(optimizer, int) and not isinstance(optimizer, bool):
            if -len(state.names) <= optimizer < len(state.names):
                index = optimizer % len(state.names)
        elif isinstance(optimizer, LightningOptimizer):
            index = next((i for i, candidate in enumerate(wrapped) if candidate is optimizer), None)
        elif isinstance(optimizer, Optimizer):
            index = next((i for i, candidate in enumerate(state.optimizers) if candidate is optimizer), None)
        if index is None:
            shown = optimizer if isinstance(optimizer, (str, int)) else type(optimizer).__name__
            raise UnknownOptimizerError(
                f"Unknown optimizer {shown!r}. This module's optimizers are {list(state.names)}; address one by"
                " name, by index, or pass an optimizer from `self.optimizers()`."
            )
        return state.names[index], wrapped[index]

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
        """Update one optimizer's parameters: backward, step, reset its gradients, and step its schedulers.

        Call it inside ``training_step``. The keywords mean what the ``Trainer`` arguments of the same names mean in
        automatic optimization, applied to this optimizer alone; a keyword left at None takes the optimizer's default
        from ``configure_optimizers`` (see the class docstring), else the Trainer's default.

        With ``loss``: at the start of an accumulation window the optimizer's gradients are reset; the loss, divided by
        ``accumulate_grad_batches``, is back-propagated through :meth:`manual_backward` (precision plugins and
        strategies apply; under DDP the all-reduce is skipped until the window closes). The window closes after
        ``accumulate_grad_batches`` calls or on the epoch's last batch; then gradients are clipped after the precision
        plugin unscaled them (in ``on_before_optimizer_step``, through ``configure_gradient_clipping``), the optimizer
        steps, and its gradients are set to None. An optimizer whose window is still open at the end of an epoch
        steps after that epoch's last ``training_step``.

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
        name, lightning_optimizer = self._resolve_for_step(optimizer)
        check_inside_training_step(self, f"`manual_step({name!r})`", name)
        return _stepping.step(
            self,
            name,
            lightning_optimizer,
            loss,
            closure=closure,
            options={
                "accumulate_grad_batches": accumulate_grad_batches,
                "gradient_clip_val": gradient_clip_val,
                "gradient_clip_algorithm": gradient_clip_algorithm,
            },
            backward_kwargs=dict(backward_kwargs or {}),
        )

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

    @contextlib.contextmanager
    def optimizing(self, *names: str) -> Iterator[None]:
        """Deprecated alias of :meth:`toggled_optimizer`, kept until 0.3."""
        warnings.warn(
            "`optimizing(...)` is deprecated and will be removed in manualopt 0.3; use"
            " `self.toggled_optimizer(...)`, which takes the same names.",
            FutureWarning,
            stacklevel=3,
        )
        with self.toggled_optimizer(*names):
            yield

    def _resolve_for_step(self, optimizer: OptimizerKey) -> tuple[str, LightningOptimizer]:
        # Where the call comes from is checked first: outside training_step that is the error to report.
        shown = optimizer if isinstance(optimizer, str) else None
        check_inside_training_step(self, f"`manual_step({shown!r})`" if shown else "`manual_step`", shown)
        return self._resolve(optimizer)

    def manual_backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        """Back-propagate ``loss`` through Lightning (precision plugins and strategies apply).

        Allowed only inside ``training_step``; elsewhere it raises
        :class:`~manualopt.StepOutsideTrainingStepError` before computing anything.
        """
        check_inside_training_step(self, "`manual_backward`", None)
        super().manual_backward(loss, *args, **kwargs)

    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Callbacks this module adds to the Trainer. manualopt adds its own whether or not this is overridden."""
        return []

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Called before an optimizer steps, gradients unscaled. ``manual_step``'s clipping runs right after it."""


@torch.compiler.disable  # type: ignore[untyped-decorator]
def _toggle(
    module: ManualOptimizationModule, optimizers: tuple[OptimizerKey, ...]
) -> tuple[list[Tensor], list[Tensor]]:
    # Kept out of torch.compile graphs, like Lightning's own toggling: requires_grad flips are not traceable.
    state = state_of(module)
    named = {id(p): p for key in optimizers for group in module._resolve(key)[1].param_groups for p in group["params"]}
    others = {
        id(p): p
        for optimizer in state.optimizers
        for group in optimizer.param_groups
        for p in group["params"]
        if id(p) not in named
    }
    freeze = [p for p in others.values() if p.requires_grad]
    # a named parameter frozen by an enclosing block (not by the user) is trainable again inside this one
    thaw = [p for key, p in named.items() if not p.requires_grad and state.frozen.get(key, 0)]
    for parameter in freeze:
        parameter.requires_grad_(False)
        state.frozen[id(parameter)] = state.frozen.get(id(parameter), 0) + 1
    for parameter in thaw:
        parameter.requires_grad_(True)
    return thaw, freeze


@torch.compiler.disable  # type: ignore[untyped-decorator]
def _untoggle(module: ManualOptimizationModule, thaw: list[Tensor], freeze: list[Tensor]) -> None:
    state = state_of(module)
    for parameter in thaw:
        parameter.requires_grad_(False)
    for parameter in freeze:
        parameter.requires_grad_(True)
        state.frozen[id(parameter)] -= 1


def _wrap_training_step(function: _F) -> _F:
    @functools.wraps(function)
    def training_step(self: ManualOptimizationModule, *args: Any, **kwargs: Any) -> Any:
        state = state_of(self)
        if state.training_depth:
            return function(self, *args, **kwargs)  # nested: super() chains and helpers
        trainer = attached_trainer(self)
        if trainer is None or not trainer.training or current_hook_name(self) != "training_step":
            # Not Lightning's call (e.g. a hook calling ``self.training_step``): no training step opens.
            return function(self, *args, **kwargs)
        guard_lightning_optimizers(self, trainer)
        base = trainer.global_step
        state.training_depth, state.stepped_in_call = 1, False
        state.stepping.clear()
        try:
            output = function(self, *args, **kwargs)
            if _lightning.is_last_batch(trainer):
                _stepping.close_open_windows(self, self.named_optimizers())
            return output
        finally:
            state.training_depth = 0
            state.batch_stepped = state.stepped_in_call
            set_global_step(trainer, base + int(state.stepped_in_call))
            for schedule in state.schedules.values():
                schedule.position += 1

    setattr(training_step, _WRAPPED, True)
    return training_step  # type: ignore[return-value]


def _wrap_configure_optimizers(function: _F) -> _F:
    @functools.wraps(function)
    def configure_optimizers(self: ManualOptimizationModule) -> Any:
        with refuse_steps(self):
            config = function(self)
        if current_hook_name(self) != "configure_optimizers":
            return config  # called directly, not by the Trainer: return it as written
        config, names, defaults = normalize_optimizer_config(config)
        config, scheduler_settings = strip_scheduler_settings(config)
        state = state_of(self)
        state.configured_names = names
        state.defaults = defaults
        state.scheduler_settings = scheduler_settings
        trainer = attached_trainer(self)
        callback = state.callback
        if trainer is not None and callback is not None and callback in trainer_callbacks(trainer):
            # Run manualopt's hooks first, so its step guards are in place before any other callback's hooks.
            trainer_callbacks(trainer).remove(callback)
            trainer_callbacks(trainer).insert(0, callback)
        return config

    setattr(configure_optimizers, _WRAPPED, True)
    return configure_optimizers  # type: ignore[return-value]


def _wrap_configure_callbacks(function: _F) -> _F:
    @functools.wraps(function)
    def configure_callbacks(self: ManualOptimizationModule) -> Sequence[Callback] | Callback:
        result = function(self)
        callbacks: list[Callback] = [] if not result else [result] if isinstance(result, Callback) else list(result)
        state = state_of(self)
        if state.callback is None:
            state.callback = ManualOptimizationCallback(self)
        trainer = attached_trainer(self)
        if trainer is None or state.callback not in trainer_callbacks(trainer):
            callbacks.append(state.callback)
        return callbacks

    setattr(configure_callbacks, _WRAPPED, True)
    return configure_callbacks  # type: ignore[return-value]


def _wrap_on_before_optimizer_step(function: _F) -> _F:
    @functools.wraps(function)
    def on_before_optimizer_step(
        self: ManualOptimizationModule, optimizer: Optimizer, *args: Any, **kwargs: Any
    ) -> Any:
        state = state_of(self)
        state.hook_depth += 1
        try:
            output = function(self, optimizer, *args, **kwargs)
        finally:
            state.hook_depth -= 1
        if state.hook_depth == 0:
            _stepping.apply_requested_clipping(self, optimizer)
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
