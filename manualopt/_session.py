"""One fit of one ``ManualOptimizationModule``: its optimizers, everything it installs, and the running training step.

Three objects, one lifetime each:

* :class:`ModuleLink` lives as long as the module: its callback, what ``configure_optimizers`` returned last, and the
  current (or last) fit's session.
* :class:`FitSession` lives for one ``Trainer.fit``: one :class:`~manualopt._optimizers.OptimizerRecord` per optimizer,
  the counters, and every hook and patch the fit installed, each with its undo. Starting a fit makes a new session;
  ending it runs the undos. Nothing a session installed outlives it.
* :class:`StepCall` lives for one ``training_step`` call made by Lightning's training loop: whether an optimizer
  stepped in it, the clipping a ``manual_step`` asked for, and whether it is the epoch's last batch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_only
from torch.optim import Optimizer

from manualopt import _lightning, _strategies
from manualopt._checkpoint_entry import CHECKPOINT_KEY, CheckpointEntry
from manualopt._exact_resume import ExactResume
from manualopt._guard import refuse
from manualopt._optimizers import Configured, OptimizerRecord, validated_policy
from manualopt._stepping import check_deferred_non_finite, check_gradients
from manualopt.errors import ManualOptimizationWarning, OptimizerConfigurationError, UnknownOptimizerError

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities.types import LRSchedulerConfig

    from manualopt.ema import EMA
    from manualopt.types import OptimizerKey

__all__ = [
    "CHECKPOINT_KEY",
    "LINK_KEY",
    "SPAWN_RESULT_KEY",
    "FitSession",
    "ModuleLink",
    "StepCall",
    "components",
    "link_of",
    "running_session",
    "session_of",
]

#: Key under which a ``ddp_spawn`` worker sends the fit's counters back, in the module's ``state_dict``.
SPAWN_RESULT_KEY = "_manualopt_fit_result"
#: The module attribute (in its ``__dict__``) that holds its :class:`ModuleLink`.
LINK_KEY = _LINK = "_manualopt_link"
#: After this many ``training_step`` calls (or the first epoch, if shorter) without any update, a warning says so.
IDLE_CALLS = 20
_running = threading.local()  # the session whose training_step runs in this thread (for StepSchedule.due)


class ModuleLink:
    """What manualopt keeps beside one module for as long as the module lives (dropped when it is pickled)."""

    __slots__ = ("callback", "configured", "configuring", "frozen", "held", "returned", "session", "undo_before_fit")

    def __init__(self) -> None:
        self.callback: Callback | None = None
        self.configured: Configured | None = None  # from Lightning's last configure_optimizers call
        self.session: FitSession | None = None  # the running fit's, or the last one's
        # a checkpoint, and the function that loads its weights, held until the fit's session accepts it
        self.held: tuple[Any, Callable[[], None]] | None = None
        self.undo_before_fit: list[Callable[[], None]] = []  # what was installed before the session existed
        self.frozen: dict[int, int] = {}  # how many open toggled_optimizer blocks froze each parameter, by id
        self.configuring = False  # whether configure_optimizers is running (its super() chain reads nothing)
        self.returned: dict[str, Any] | None = None  # a fit's outcome sent back by a ddp_spawn worker


def link_of(module: pl.LightningModule) -> ModuleLink:
    """The module's link, created on first use (so it does not depend on ``__init__`` order)."""
    attributes = vars(module)
    link = attributes.get(_LINK)
    if link is None:
        link = attributes[_LINK] = ModuleLink()
    return link


def session_of(module: pl.LightningModule) -> FitSession | None:
    """The module's running or last session, without creating anything."""
    link = vars(module).get(_LINK)
    return None if link is None else link.session


def running_session() -> FitSession | None:
    """The session whose ``training_step`` runs in this thread, if any."""
    return getattr(_running, "session", None)


class StepCall:
    """One ``training_step`` call of Lightning's training loop."""

    __slots__ = ("_last_batch", "base", "batch_idx", "epoch", "index", "loss", "pending_clip", "stepped", "thread")

    def __init__(self, index: int, base: int, epoch: int, batch_idx: int | None) -> None:
        self.thread = threading.get_ident()
        self.index = index  # training_step calls before this one, in this run
        self.base = base  # trainer.global_step when the call started
        self.epoch = epoch  # trainer.current_epoch
        self.batch_idx = batch_idx  # the batch's index in its epoch, as training_step received it
        self.loss: Any = None  # the loss of the latest manual_step (for error messages)
        self.stepped = False  # whether any optimizer updated in it
        self.pending_clip: tuple[Optimizer, float | None, str] | None = None  # what manual_step asked to clip
        self._last_batch: bool | None = None

    def last_batch(self, trainer: pl.Trainer) -> bool:
        """Whether this call's batch is the last of the epoch (asked once per call)."""
        if self._last_batch is None:
            self._last_batch = _lightning.is_last_batch(trainer)
        return self._last_batch


class FitSession:
    """Everything one ``Trainer.fit`` of one module installs and counts.

    Attributes:
        module: The module being fitted.
        trainer: The Trainer running the fit.
        records: One record per optimizer, in ``trainer.optimizers`` order.
        calls: ``training_step`` calls made by the training loop in this run (restored on resume); the position of
            every ``StepSchedule``.
        batch_stepped: Whether the current (or last) batch made a training step.
        call: The running ``training_step`` call, or None.
        driven: The scheduler configs manualopt steps, in configuration order, with their optimizer's record.
        averages: The ``EMA`` modules found when the fit started.
        custom_clipping: Whether the module overrides ``configure_gradient_clipping`` (then it is called on every
            update, as automatic optimization calls it).
        active: Whether the fit is running (False once :meth:`end` ran).
    """

    def __init__(
        self,
        module: pl.LightningModule,
        trainer: pl.Trainer,
        configured: Configured | None,
        previous: FitSession | None,
    ) -> None:
        self.module, self.trainer = module, trainer
        self.records: list[OptimizerRecord] = []
        self.by_name: dict[str, OptimizerRecord] = {}  # the records again, by name
        self._by_object: dict[int, OptimizerRecord] = {}
        self.calls = 0
        self.batch_stepped = True
        self.call: StepCall | None = None
        self.driven: list[tuple[OptimizerRecord, LRSchedulerConfig]] = []
        self.averages: list[EMA] = []
        self._attached: set[int] = set()
        self._undo: list[Callable[[], None]] = []
        self.active = False
        self._not_updates = False  # inside steps_are_not_updates()
        self.custom_clipping = type(module).configure_gradient_clipping is not _base_clipping()
        self._idle_check_at = IDLE_CALLS  # training_step calls without any update before a warning (0: checked)
        self.defers_checks = False  # whether non-finite flags are read only at check points (updates on a GPU)
        self.exact_resume = bool(getattr(module, "exact_resume", True))
        self.epoch_calls = 0  # training_step calls in the current epoch
        self._calls_epoch = -1
        self.exact = ExactResume(trainer) if self.exact_resume else None
        self.entry = CheckpointEntry(self)  # manualopt's entry of the fit's checkpoints
        self._check_every = max(1, int(getattr(trainer, "log_every_n_steps", 50) or 50))
        self.non_finite = validated_policy(
            getattr(module, "non_finite", "error"), f"`{type(module).__name__}.non_finite`"
        )
        self._create_records(configured)
        if previous is not None and previous.trainer is trainer:
            # fitting on with the same Trainer, whose global_step goes on: so do the counters
            self.calls = previous.calls
            for record in self.records:
                earlier = previous.by_name.get(record.name)
                record.updates = 0 if earlier is None else earlier.updates

    # ------------------------------------------------------------------ optimizers

    def _create_records(self, configured: Configured | None) -> None:
        trainer = self.trainer
        if configured is None or not configured.optimizers:
            return  # no optimizer: Lightning runs the fit with a placeholder, which is never counted
        held = list(trainer.optimizers)
        if len(held) != len(configured.optimizers) or any(
            a is not b for a, b in zip(held, configured.optimizers, strict=True)
        ):
            raise OptimizerConfigurationError(
                f"The strategy {type(trainer.strategy).__name__} replaced the optimizers that `configure_optimizers`"
                f" returned ({configured.names}) with {[type(o).__name__ for o in held]}, so manualopt cannot count"
                " their steps. Use a strategy that keeps your optimizers (single device, DDP, FSDP), or train this"
                " module as a plain LightningModule."
            )
        wrapped = self.module.optimizers()
        wrappers = wrapped if isinstance(wrapped, list) else [wrapped]
        for index, (name, optimizer) in enumerate(zip(configured.names, configured.optimizers, strict=True)):
            lightning = wrappers[index]
            assert isinstance(lightning, LightningOptimizer)  # Lightning wraps every optimizer it holds
            schedulers = [s for s in configured.schedulers if getattr(s.scheduler, "optimizer", None) is optimizer]
            unmonitored = [s for s in schedulers if s.reduce_on_plateau and s.monitor is None]  # the user's to step
            schedulers = [s for s in schedulers if s not in unmonitored]
            policy = configured.non_finite.get(name, self.non_finite)
            record = OptimizerRecord(name, optimizer, lightning, configured.defaults[name], schedulers, policy)
            record.unmonitored = unmonitored[0].scheduler if unmonitored else None
            self.records.append(record)
            self.by_name[name] = record
            self._by_object[id(optimizer)] = record
            self._by_object[id(lightning)] = record
        for config in configured.schedulers:
            for record in self.records:
                if config in record.schedulers:
                    self.driven.append((record, config))

    def record_of(self, optimizer: Any) -> OptimizerRecord | None:
        """The record of ``optimizer`` (raw or wrapped), or None when it is not one of this fit's."""
        return self._by_object.get(id(optimizer))

    @property
    def names(self) -> list[str]:
        """The optimizer names, in ``trainer.optimizers`` order."""
        return [record.name for record in self.records]

    def record(self, key: OptimizerKey) -> OptimizerRecord:
        """The record of the optimizer addressed by ``key``: a name, an index, or the optimizer (raw or wrapped).

        Raises:
            UnknownOptimizerError: ``key`` addresses no optimizer of this fit; the message lists the valid names.
        """
        found: OptimizerRecord | None = None
        if isinstance(key, str):
            found = self.by_name.get(key)
        elif isinstance(key, int) and not isinstance(key, bool):
            if -len(self.records) <= key < len(self.records):
                found = self.records[key]
        elif isinstance(key, (Optimizer, LightningOptimizer)):
            found = self._by_object.get(id(key))
        if found is not None:
            return found
        if not self.records:
            raise UnknownOptimizerError(
                "`configure_optimizers` returned no optimizer, so there is nothing to step. Return one, or a mapping"
                ' of names such as `{"generator": opt_g, "discriminator": opt_d}`.'
            )
        shown = key if isinstance(key, (str, int)) else type(key).__name__
        raise UnknownOptimizerError(
            f"Unknown optimizer {shown!r}. This module's optimizers are {self.names}; address one by name, by index,"
            " or pass an optimizer from `self.optimizers()`."
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self, callback_owns: Callable[[pl.LightningModule], bool]) -> None:
        """Install the fit's hooks and patches, and find the module's schedules and averages (before any batch)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        self.active = True
        _strategies.prepare(self)  # before the step hooks: what the fit's strategy needs (see _strategies)
        trainer, key = self.trainer, self
        # Under a GradScaler (16-bit AMP) non-finite gradients are the scaler's: it skips those steps itself.
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        for record in self.records:
            record.checks_non_finite = record.non_finite != "ignore" and not scaled
            first = next(iter(record.parameters()), None)
            on_gpu = first is not None and first.is_cuda  # reading a flag from a GPU waits for the device
            record.defers_check = record.checks_non_finite and record.non_finite == "error" and on_gpu
            self.defers_checks = self.defers_checks or record.defers_check
        for record in self.records:
            self._install_step_hooks(record)
            refusal = self._refusal(record)
            wrapper = _lightning.wrap_lightning_optimizer_step(record.lightning, trainer, self.inside, refusal, key)
            self._undo.append(wrapper)
        self._undo.append(_lightning.install_step_gate(trainer, self._batch_made_no_step, key))
        if self.records:  # also without schedulers of its own: a tuner may install some during the fit
            from manualopt._schedulers import SchedulerDriver

            driver = SchedulerDriver(self)
            self._undo.append(
                _lightning.install_scheduler_driver(
                    trainer, lambda: trainer.lightning_module is self.module, driver.update, key
                )
            )
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                self._undo.append(_lightning.route_checkpoint_through_automatic_path(callback, callback_owns, key))
        for component in components(self.module):
            self.attach(component)
        if self.exact is not None:
            self._undo.extend(self.exact.install(key))

    def validation_started(self) -> None:
        """Swap in the averages that evaluate with them."""
        for average in self.averages:
            average._validation_started()

    def validation_ended(self) -> None:
        """Swap the trained weights back."""
        for average in self.averages:
            average._validation_ended()

    def attach(self, component: Any) -> None:
        """Bind a ``StepSchedule`` or ``EMA`` to this fit (once), through its own ``_manualopt_attach``."""
        if id(component) not in self._attached:
            self._attached.add(id(component))
            component._manualopt_attach(self)

    def on_end(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` when the fit ends (successfully or not)."""
        self._undo.append(undo)

    def end(self) -> None:
        """Remove everything the fit installed, in reverse order. Safe to call twice.

        Every undo runs, even when one raises; the first error is raised once all ran.
        """
        was_active, self.active = self.active, False
        self.call = None
        undo, self._undo = self._undo, []
        failure: BaseException | None = None
        for function in reversed(undo):
            try:
                function()
            except BaseException as error:  # the others still run; this one is raised at the end
                failure = failure or error
        if was_active and _lightning.is_spawned_worker(self.trainer):
            self._send_back_with_weights()
        if failure is not None:
            raise failure

    def _send_back_with_weights(self) -> None:
        # The worker's next state_dict() is the one the launcher sends to the main process (which loads it with
        # strict=False): it carries the counters once, then the hook removes itself.
        summary = self.summary()

        def add_summary(module: Any, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
            handle.remove()
            state_dict[prefix + SPAWN_RESULT_KEY] = summary

        handle = self.module.register_state_dict_post_hook(add_summary)  # type: ignore[no-untyped-call]

    def summary(self) -> dict[str, Any]:
        """The fit's outcome, without the objects: optimizer names, update counts, ``training_step`` calls."""
        return {
            "optimizer_names": self.names,
            "optimizer_updates": {record.name: record.updates for record in self.records},
            "training_step_calls": self.calls,
        }

    def _install_step_hooks(self, record: OptimizerRecord) -> None:
        # Wrapper optimizers such as SAM step a ``base_optimizer`` of their own; its steps are this optimizer's
        # updates, counted once whether the wrapper's step runs them or the user's code does (first_step/second_step).
        targets = [(record.optimizer, True)]
        inner = getattr(record.optimizer, "base_optimizer", None)
        if isinstance(inner, Optimizer) and inner is not record.optimizer:
            targets.append((inner, False))
        for optimizer, own in targets:
            self._undo.append(optimizer.register_step_pre_hook(self._pre_hook(record, own)).remove)
            self._undo.append(optimizer.register_step_post_hook(self._post_hook(record, own)).remove)

    def _pre_hook(self, record: OptimizerRecord, own: bool) -> Callable[[Optimizer, Any, Any], Any]:
        def pre_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> Any:
            call = self.call
            if own and record.checking and call is not None:  # manual_step's update, inside its training_step call
                # The gradients are checked after the closure Lightning hands the step (``args`` holds the optimizer):
                # it runs the user's on_before_optimizer_step and the clipping, which may repair them, and the step's
                # update comes after it. A withheld update releases the gradients: the step finds none, changes none.
                record.stepping, record.checking = True, False
                inner = kwargs.get("closure")
                if inner is None:
                    record.withheld = check_gradients(self, call, record)
                    return None

                def checked_closure() -> Any:
                    result = inner()
                    record.withheld = check_gradients(self, call, record)
                    return result

                return args, {**kwargs, "closure": checked_closure}
            if not self.inside():
                refuse(self.module, f"`{type(optimizer).__name__}.step()` of optimizer {record.name!r}", record.name)
            if own:
                record.stepping = True
            return None

        return pre_hook

    def _post_hook(self, record: OptimizerRecord, own: bool) -> Callable[[Optimizer, Any, Any], None]:
        # Counting happens here, after the torch optimizer really stepped: a step that a precision plugin skipped
        # never reaches it. ``_stepping.update`` reads ``record.updates`` to tell whether its step was real.
        def post_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
            if own:
                record.stepping = False
                if record.withheld is not None:
                    return  # the check withheld it: not an update
            elif record.stepping:
                return  # the inner optimizer's step inside its wrapper's step: one update, counted by the wrapper
            record.updates += 1
            call = self.call
            if call is not None:
                call.stepped = True
            for average in record.averages:
                average.update()

        return post_hook

    def _refusal(self, record: OptimizerRecord) -> Callable[[], None]:
        def refusal() -> None:
            refuse(self.module, f"`optimizer.step()` of the LightningOptimizer {record.name!r}", record.name)

        return refusal

    def _batch_made_no_step(self) -> bool:
        return self.active and not self.batch_stepped and self.trainer.lightning_module is self.module

    # ------------------------------------------------------------------ training_step calls

    def inside(self) -> bool:
        """Whether the code runs in this fit's ``training_step``, called by Lightning's loop, in that call's thread.

        Also True inside :meth:`steps_are_not_updates`, where optimizer steps are allowed but not updates.
        """
        call = self.call
        return (call is not None and call.thread == threading.get_ident()) or self._not_updates

    @contextlib.contextmanager
    def steps_are_not_updates(self) -> Iterator[None]:
        """Optimizer steps in the block are neither refused nor counted as updates, and move no ``EMA``."""
        kept = [(record, record.updates, record.averages) for record in self.records]
        self._not_updates = True
        for record in self.records:
            record.averages = []
        try:
            yield
        finally:
            self._not_updates = False
            for record, updates, averages in kept:
                record.updates, record.averages = updates, averages

    def begin_call(self, batch_idx: int | None) -> StepCall:
        """Open a ``training_step`` call."""
        trainer = self.trainer
        call = self.call = StepCall(self.calls, _lightning.global_step(trainer), trainer.current_epoch, batch_idx)
        if call.epoch != self._calls_epoch:
            self._calls_epoch, self.epoch_calls = call.epoch, 0
        if self.exact is not None:
            self.exact.before_first_step()
        for record in self.records:
            record.stepping = False
        _running.session = self
        return call

    def end_call(self, call: StepCall) -> None:
        """Close it: count the training step if an optimizer stepped, and advance every ``StepSchedule``."""
        self.call = None
        _running.session = None
        self.calls += 1
        self.epoch_calls += 1
        self.batch_stepped = call.stepped
        _lightning.set_global_step(self.trainer, call.base + call.stepped)
        if self.calls == self._idle_check_at or (call._last_batch and self._idle_check_at):
            self._warn_if_idle()
        if self.defers_checks and not self.calls % self._check_every:
            check_deferred_non_finite(self, "at a logging step")

    def calls_this_epoch(self) -> int:
        """The ``training_step`` calls made in the current epoch."""
        return self.epoch_calls if self._calls_epoch == self.trainer.current_epoch else 0

    def _warn_if_idle(self) -> None:
        self._idle_check_at = 0  # once per fit
        if not self.records or any(record.updates for record in self.records):
            return
        message = (
            f"{self.calls} `training_step` calls of `{type(self.module).__name__}` updated no optimizer, so"
            " `trainer.global_step` stays 0: no checkpoint is written, no training metric is logged, and `max_steps`"
            " is never reached. In manual optimization returning the loss does nothing; update inside"
            f" `training_step` with `self.manual_step({self.records[0].name!r}, loss)`."
        )
        _warn_at_training_step(self.module, message)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Manualopt's entry of a checkpoint (see :class:`~manualopt._checkpoint_entry.CheckpointEntry`)."""
        return self.entry.state_dict()

    def accept_checkpoint(self, checkpoint: Any) -> None:
        """Check a checkpoint being resumed against this fit and take its counters (see ``CheckpointEntry.accept``).

        Raises:
            OptimizerConfigurationError: The checkpoint does not fit this fit's optimizers. Nothing was loaded.
        """
        self.entry.accept(checkpoint)


@rank_zero_only
def _warn_at_training_step(module: pl.LightningModule, message: str) -> None:
    # shown at the user's training_step (its file and first line), where the fix goes, not inside manualopt
    import inspect
    import warnings

    function = inspect.unwrap(type(module).training_step)
    try:
        filename, line = inspect.getsourcefile(function), inspect.getsourcelines(function)[1]
    except (OSError, TypeError):  # no source (defined in an interactive session): shown where it is raised
        filename, line = None, 0
    if filename is None:
        warnings.warn(message, ManualOptimizationWarning, stacklevel=2)
        return
    warnings.warn_explicit("\n" + message, ManualOptimizationWarning, filename, line, module=type(module).__module__)


def _base_clipping() -> Any:
    from lightning.pytorch import LightningModule

    return LightningModule.configure_gradient_clipping


def components(module: pl.LightningModule) -> Iterator[Any]:
    """Every ``StepSchedule`` and ``EMA`` of the module, found by one rule.

    The rule: the module and its submodules, their attributes, and the items of attributes that are lists, tuples or
    dictionaries. What has a ``_manualopt_attach`` method is a component.
    """
    for owner in module.modules():
        candidates: list[Any] = [owner]
        for value in vars(owner).values():
            if isinstance(value, dict):
                candidates.extend(value.values())
            elif isinstance(value, (list, tuple)):
                candidates.extend(value)
            else:
                candidates.append(value)
        for candidate in candidates:
            if callable(getattr(type(candidate), "_manualopt_attach", None)):
                yield candidate
