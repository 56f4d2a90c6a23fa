"""Every contact manualopt has with Lightning's private internals, and nothing else.

No public hook lets a module say "this batch made one training step", keep ``ModelCheckpoint`` on its documented
path, or have schedulers stepped in manual optimization, so the touches below reach into Lightning. Each says why it is
needed, which upstream issue it answers, and when it can go. All were read in Lightning 2.1.0 and 2.6.6, the oldest
and newest supported releases; CI runs the test suite on both, and ``tests/test_lightning_internals.py`` pins each
touch, so a release that moves one fails loudly instead of silently miscounting.

Every patch is set on one object (a loop, a connector, an optimizer wrapper or a callback instance), never on a class,
and is undone by the function it returns: the undo puts back exactly what was there before (an instance attribute of
someone else's included), unless someone else replaced the patch meanwhile, in which case theirs stays.

No other module of manualopt imports a private Lightning name.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import (
    LightningOptimizer,
    _configure_optimizers,
    _configure_schedulers_automatic_opt,
)
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.trainer.call import _call_lightning_module_hook

from manualopt._patching import Undo, patch_attribute, undo_all

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.types import LRSchedulerConfig
    from torch.optim import Optimizer

__all__ = [
    "Undo",
    "automatic_view",
    "configured_checkpoint_io",
    "current_hook_name",
    "epoch_batches",
    "epoch_to_resume",
    "forget_restored_loader_states",
    "global_step",
    "install_scheduler_driver",
    "install_step_gate",
    "intercept_dataloaders",
    "intercept_model_loading",
    "is_last_batch",
    "is_spawned_worker",
    "is_stateful_loader",
    "isolate_validation",
    "loader_iterators",
    "move_callback_first",
    "no_backward_sync",
    "parse_optimizer_config",
    "restored_step_counts",
    "resumes_loops_exactly",
    "route_checkpoint_through_automatic_path",
    "set_global_step",
    "set_sampler_epoch",
    "step_scheduler",
    "training_dataloaders",
    "training_iterator",
    "watch_training_data",
    "wrap_lightning_optimizer_step",
]

# ---------------------------------------------------------------------------------------------------------- hooks


def current_hook_name(module: pl.LightningModule) -> str | None:
    """Name of the Lightning hook that is running, as Lightning itself records it.

    Why: Lightning sets ``LightningModule._current_fx_name`` around every module, callback and strategy hook it calls
    (``trainer/call.py``); it is the only record of which hook is running. manualopt uses it to tell Lightning's own
    ``training_step`` call apart from a user calling ``self.training_step`` from elsewhere, and to name the hook in
    error messages. It can go when Lightning exposes the running hook publicly.
    """
    name = getattr(module, "_current_fx_name", None)
    return name if isinstance(name, str) else None


# ---------------------------------------------------------------------------------------------------------- global step


def _manual_progress(trainer: pl.Trainer) -> Any:
    # Why: in manual optimization ``trainer.global_step`` is read from this tracker
    # (``_TrainingEpochLoop.global_step``); Lightning adds one per ``LightningOptimizer.step`` call, so two optimizers
    # count two steps per batch (Lightning-AI/pytorch-lightning#17958, open; the fix PR #19589 is stalled). The tracker
    # is also saved in and restored from the ``loops`` entry of every checkpoint, so keeping the training-step count
    # here is what makes ``max_steps``, ``ModelCheckpoint`` and resume agree with manualopt. This can go when Lightning
    # counts one step per ``training_step`` in manual optimization.
    return trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress


def global_step(trainer: pl.Trainer) -> int:
    """``trainer.global_step`` in manual optimization, read directly from the tracker."""
    return int(_manual_progress(trainer).total.completed)


def set_global_step(trainer: pl.Trainer, value: int) -> None:
    """Make ``trainer.global_step`` read ``value`` (the number of training steps done)."""
    progress = _manual_progress(trainer)
    total, current = progress.total, progress.current
    delta = value - total.completed
    total.ready = total.completed = value
    current.completed += delta
    current.ready = current.completed


def install_step_gate(trainer: pl.Trainer, batch_made_no_step: Callable[[], bool], key: object) -> Undo:
    """Treat a batch whose ``training_step`` stepped no optimizer like an accumulation batch.

    Why: in manual optimization Lightning advances the logger's step counter (``_batches_that_stepped``) after every
    batch, writes the training metrics of every batch (re-writing stale values after a batch that logged nothing),
    zeroes all gradients before a mid-epoch validation, and counts a resumed batch as stepped. In automatic
    optimization all of this happens only on batches that stepped: ``_TrainingEpochLoop._should_accumulate`` decides
    (the loop, the ``on_validation_model_zero_grad`` call and ``ThroughputMonitor`` all ask it), and
    ``_LoggerConnector.update_train_step_metrics`` returns early on accumulating batches. Answering the question per
    batch, and skipping the metric write the same way, makes the logger's step axis count training steps. No public
    hook moves the logger's step axis. This can go with #17958.

    Returns:
        The function that removes the gate.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    logger_connector = trainer._logger_connector
    should_accumulate = epoch_loop._should_accumulate
    update_train_step_metrics = logger_connector.update_train_step_metrics

    def _should_accumulate() -> bool:
        return batch_made_no_step() or should_accumulate()

    def _update_train_step_metrics() -> None:
        if not batch_made_no_step():
            update_train_step_metrics()

    return undo_all(
        [
            patch_attribute(epoch_loop, "_should_accumulate", _should_accumulate, key),
            patch_attribute(logger_connector, "update_train_step_metrics", _update_train_step_metrics, key),
        ]
    )


def wrap_lightning_optimizer_step(
    optimizer: LightningOptimizer,
    trainer: pl.Trainer,
    allowed: Callable[[], bool],
    refuse: Callable[[], None],
    key: object,
) -> Undo:
    """Call ``refuse`` unless ``allowed()``, first in every ``optimizer.step``; keep Lightning's step tracker still.

    Why: ``LightningOptimizer.step`` runs the precision plugin, which under 16-bit AMP runs the closure, calls
    ``on_before_optimizer_step`` and unscales the gradients *before* the torch optimizer's own step hooks fire. A step
    refused only there would leave the GradScaler's per-optimizer state half-updated, so the refusal must come first.
    Lightning also bumps ``trainer.global_step`` on every such call (through ``_on_before_step``/``_on_after_step``,
    set by the manual-optimization loop; #17958); manualopt counts training steps instead, so the tracker is put back
    after the call, and ``global_step`` does not move inside ``training_step``, as in automatic optimization.

    Returns:
        The function that removes the wrapper.
    """
    inner = optimizer.step
    progress = _manual_progress(trainer)
    total, current = progress.total, progress.current

    @functools.wraps(inner)
    def step(closure: Callable[[], Any] | None = None, **kwargs: Any) -> Any:
        if not allowed():
            refuse()
        snapshot = total.ready, total.completed, current.ready, current.completed
        try:
            return inner(closure, **kwargs)
        finally:
            total.ready, total.completed, current.ready, current.completed = snapshot

    return patch_attribute(optimizer, "step", step, key)


def is_last_batch(trainer: pl.Trainer) -> bool:
    """Whether the running batch is the last of the epoch, exactly as automatic optimization decides it.

    Why: automatic optimization closes an accumulation window on the epoch's last batch, which
    ``_TrainingEpochLoop._num_ready_batches_reached`` decides (it also covers iterable datasets of unknown length,
    through the data fetcher's look-ahead). ``manual_step`` closes its windows at the same batch. It can go when
    Lightning exposes "last batch" publicly.
    """
    return bool(trainer.fit_loop.epoch_loop._num_ready_batches_reached())


# ---------------------------------------------------------------------------------------------------------- checkpoints

_VIEW_CLASSES: dict[type, type] = {}
# The Callback hooks that receive the module (all of them but ``state_dict`` and ``load_state_dict``).
_MODULE_HOOKS = tuple(
    name
    for name, function in vars(Callback).items()
    if callable(function)
    and not name.startswith("_")
    and list(inspect.signature(function).parameters)[1:3] == ["trainer", "pl_module"]
)


def automatic_view(module: pl.LightningModule) -> pl.LightningModule:
    """The module as ``ModelCheckpoint`` should see it: the same object in all but ``automatic_optimization=True``.

    The view is an instance of a subclass of the module's class that shares the module's ``__dict__`` (parameters,
    submodules, attributes), so ``isinstance`` checks and attribute reads and writes behave as on the module itself.
    """
    cls = type(module)
    view_class = _VIEW_CLASSES.get(cls)
    if view_class is None:
        namespace = {"automatic_optimization": True, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
        view_class = _VIEW_CLASSES[cls] = type(cls.__name__, (cls,), namespace)
    view: pl.LightningModule = object.__new__(view_class)
    object.__setattr__(view, "__dict__", module.__dict__)
    return view


def route_checkpoint_through_automatic_path(
    callback: Callback, applies: Callable[[pl.LightningModule], bool], key: object
) -> Undo:
    """Make each hook of ``callback`` that receives the module see :func:`automatic_view` of modules where ``applies``.

    Why: from 2.6.0 ``ModelCheckpoint.on_train_batch_end`` has a branch for ``automatic_optimization=False``
    (PR #21239, for #20947) that ignores ``train_time_interval``, warns about a "pre-optimization state" and, when the
    module has ``layer`` and ``saved_models`` attributes, writes old weights next to new optimizer state; the open
    PR #21843 (for #21842, milestone 2.7) adds the same branch to ``on_validation_end``. With manualopt a batch ends
    after a complete training step, exactly as in automatic optimization, so that path is the right one. Every hook
    the callback's class defines is routed, so a branch added to another hook takes the same path. Releases before 2.6
    have no such branch and the view changes nothing there. This can go when ``ModelCheckpoint`` asks the module
    whether a training step ended rather than ``automatic_optimization``.

    Returns:
        The function that removes the routing.
    """
    undos: list[Undo] = []
    for name in _MODULE_HOOKS:
        if getattr(type(callback), name, None) is getattr(Callback, name):
            continue  # not defined by the callback's class: nothing to route
        inner = getattr(callback, name)

        def hook(
            trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, _inner: Any = inner, **kwargs: Any
        ) -> Any:
            seen = automatic_view(pl_module) if applies(pl_module) else pl_module
            return _inner(trainer, seen, *args, **kwargs)

        functools.update_wrapper(hook, inner)
        undos.append(patch_attribute(callback, name, hook, key))

    return undo_all(undos)


def configured_checkpoint_io(trainer: pl.Trainer) -> CheckpointIO | None:
    """The ``CheckpointIO`` the Trainer was given (in ``plugins`` or to its strategy), or None.

    Why: ``Strategy.checkpoint_io`` creates a plain ``TorchCheckpointIO`` on first read when none was given, and
    Lightning reads it at every checkpoint and when a fit ends, so a plain one found there may be Lightning's default or
    one the user passed on purpose. manualopt replaces only the default with its ``AtomicCheckpointIO``; what the user
    passed is kept, in ``_AcceleratorConnector.checkpoint_io`` (2.1.0 to 2.6.6), whose value it hands to the strategy.
    This can go when Lightning's default ``CheckpointIO`` writes into the target's directory, renames and ``fsync``s
    (2.4 to 2.6 stage the file in the system temp directory and move it, 2.1 to 2.3 write in place).
    """
    configured = getattr(getattr(trainer, "_accelerator_connector", None), "checkpoint_io", None)
    return configured if isinstance(configured, CheckpointIO) else None


def move_callback_first(trainer: pl.Trainer, callback: Callback) -> Undo | None:
    """Put ``callback`` first in the Trainer's callback list, so its hooks run before any other callback's.

    Why: Lightning appends the callbacks of ``configure_callbacks`` after the Trainer's own, but manualopt's step
    guards and counters must be in place before another callback's ``on_fit_start`` or ``on_train_batch_start``
    runs. ``trainer.callbacks`` is a plain list that Lightning reads at every hook call; it is replaced by a reordered
    copy, never changed in place, because the undo runs from manualopt's ``teardown``, while Lightning iterates over
    the list (an in-place move would make that loop skip the next callback's ``teardown``).

    Returns:
        The function that puts it back where it was (None when it was first already).
    """
    callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
    position = next((i for i, candidate in enumerate(callbacks) if candidate is callback), None)
    if not position:
        return None
    trainer.callbacks = [callback, *(other for other in callbacks if other is not callback)]  # type: ignore[attr-defined]

    def undo() -> None:
        current: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        if current and current[0] is callback:
            others = current[1:]
            trainer.callbacks = [*others[:position], callback, *others[position:]]  # type: ignore[attr-defined]

    return undo


def no_backward_sync(trainer: pl.Trainer) -> contextlib.AbstractContextManager[Any]:
    """A context in which a parallel strategy (DDP) skips the gradient all-reduce of backward passes.

    Why: automatic optimization skips it on batches that only accumulate, through the strategy's
    ``block_backward_sync``; ``manual_step`` does the same while its accumulation window stays open.
    """
    block = getattr(trainer.strategy, "block_backward_sync", None)
    return block() if block is not None else contextlib.nullcontext()


def intercept_model_loading(
    trainer: pl.Trainer, receive: Callable[[Any, Callable[[], None]], None], key: object
) -> Undo:
    """Hand each checkpoint the strategy is about to load into the module to ``receive(checkpoint, load)`` instead.

    ``load()`` performs the load; ``receive`` calls it once the checkpoint is accepted, now or later.

    Why: ``fit(ckpt_path=...)`` loads the weights (``_CheckpointConnector.restore_model``) before
    ``configure_optimizers`` runs, so a checkpoint that does not fit this module's optimizers would be refused only
    after its weights were already in the module; a user who then starts afresh with the same module object would
    train from the refused weights. ``Strategy.load_model_state_dict`` is the one call that loads them (strategies
    that restore after setup, such as FSDP, call it after ``on_fit_start``). Holding it until manualopt has checked the
    checkpoint, then loading before any hook reads the weights, makes a refused resume load nothing.
    """
    strategy = trainer.strategy
    original = strategy.load_model_state_dict

    def load_model_state_dict(checkpoint: Any, *args: Any, **kwargs: Any) -> None:
        receive(checkpoint, lambda: original(checkpoint, *args, **kwargs))

    return patch_attribute(strategy, "load_model_state_dict", load_model_state_dict, key)


def intercept_dataloaders(trainer: pl.Trainer, receive: Callable[[Any, bool], None], key: object) -> Undo:
    """Hand each DataLoader of the fit to ``receive(loader, training)`` when Lightning has prepared it.

    Why: Lightning builds the training loaders inside ``_FitLoop.setup_data`` and creates the first epoch's iterator
    right there, before any hook runs; ``Strategy.process_dataloader`` is the one call each loader passes through on
    the way (after Lightning added a ``DistributedSampler``). Exact resume needs the loader before that iterator
    exists. It can go when Lightning offers a hook on the prepared loaders.
    """
    strategy = trainer.strategy
    original = strategy.process_dataloader

    def process_dataloader(dataloader: Any) -> Any:
        dataloader = original(dataloader)
        receive(dataloader, trainer.training)  # the fit loop's loaders, or validation's
        return dataloader

    return patch_attribute(strategy, "process_dataloader", process_dataloader, key)


def training_dataloaders(trainer: pl.Trainer) -> list[Any]:
    """The fit's training DataLoaders, in the order of its ``CombinedLoader`` (empty before they exist).

    Why: ``trainer.train_dataloader`` gives the user's nesting; the flat order of ``_FitLoop._combined_loader`` is what
    a checkpoint's per-loader entries follow.
    """
    combined = trainer.fit_loop._combined_loader
    return [] if combined is None else list(combined.flattened)


def watch_training_data(
    trainer: pl.Trainer, created: Callable[[Any], None], fetching: Callable[[], None], key: object
) -> Undo:
    """Tell ``created`` about each epoch iterator the epoch loop creates, and call ``fetching()`` before each batch.

    ``created(None)`` runs before ``_TrainingEpochLoop.on_run_start`` (which creates the iterator of every epoch after
    the first), ``created(True)`` after it when it did create one. The iterator of the fit's first epoch (or of a
    resumed one) is created in ``_FitLoop.setup_data`` instead, right after ``Strategy.process_dataloader`` (see
    :func:`intercept_dataloaders`).

    Why: exact resume needs the random generators' states at the two moments an epoch draws its order (when its
    iterator is created, and when its first batch is fetched) and the number of batches fetched. Lightning offers no
    hook at either moment; ``_on_before_fetch`` is what the data fetcher calls before every ``next`` of the loader
    (as its profiler start), and ``on_run_start`` is where a new epoch's iterator is made. It can go when Lightning
    (or a stateful loader of the user's) saves and restores the order of a plain shuffling ``DataLoader`` itself.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    on_run_start, on_before_fetch = epoch_loop.on_run_start, epoch_loop._on_before_fetch

    def wrapped_on_run_start(data_fetcher: Any) -> None:
        before = training_iterator(trainer)
        created(None)  # the generators' states now, before a new iterator draws anything
        on_run_start(data_fetcher)
        if training_iterator(trainer) is not before:
            created(True)  # the iterator made now is the epoch's

    def wrapped_on_before_fetch() -> None:
        fetching()
        on_before_fetch()

    return undo_all(
        [
            patch_attribute(epoch_loop, "on_run_start", wrapped_on_run_start, key),
            patch_attribute(epoch_loop, "_on_before_fetch", wrapped_on_before_fetch, key),
        ]
    )


def training_iterator(trainer: pl.Trainer) -> Any:
    """The training ``CombinedLoader``'s current iterator (a new object for each epoch), or None.

    Why: ``CombinedLoader._iterator`` is the one place that tells two epochs' iterators apart, and holds the loaders'
    own iterators (``.iterators``, in flattened order) that a resumed epoch advances past the batches it trained.
    """
    combined = trainer.fit_loop._combined_loader
    return None if combined is None else combined._iterator


def loader_iterators(trainer: pl.Trainer) -> list[Any]:
    """The training loaders' own iterators of the current epoch, in flattened order (see :func:`training_iterator`)."""
    iterator = training_iterator(trainer)
    return [] if iterator is None else list(getattr(iterator, "iterators", []))


def isolate_validation(trainer: pl.Trainer, around: Callable[[Callable[[], Any]], Any], key: object) -> Undo:
    """Run the fit's validation loop, and what else creates a validation iterator, through ``around(call)``.

    Why: a validation draws from the global generators before any validation hook runs (its loader's iterator is
    created in ``_EvaluationLoop.reset``, before ``on_validation_start``), and a fit resumed after an epoch's last
    batch creates one outside a validation (``_EvaluationLoop.increment_progress_to_evaluation_end``, Lightning 2.2
    and later); wrapping both methods of the fit's ``val_loop`` encloses all of it, so that the training's generators
    come out as they went in, without touching the user's loaders. It can go when Lightning isolates validation's
    random numbers itself (it does so for the sanity check only, with ``isolate_rng``).
    """
    val_loop = trainer.fit_loop.epoch_loop.val_loop
    undos: list[Undo] = []
    for name in ("run", "increment_progress_to_evaluation_end"):
        method = getattr(val_loop, name, None)
        if method is not None:
            undos.append(patch_attribute(val_loop, name, functools.partial(around, method), key))

    return undo_all(undos)


def epoch_to_resume(trainer: pl.Trainer) -> int:
    """The epoch a resumed fit's loops restored, before they decide whether it was complete.

    Why: ``_FitLoop.setup_data`` (where the resumed iterator is created) runs before ``_FitLoop.reset`` moves on to the
    next epoch when the restored one was complete; ``epoch_progress.current.processed`` is what Lightning itself
    passes to ``set_epoch`` of the samplers.
    """
    return int(trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]


def epoch_batches(trainer: pl.Trainer) -> float:
    """The number of batches of a training epoch, after ``limit_train_batches`` (``inf`` when unsized).

    Why: ``_FitLoop.max_batches`` is the count the training loop itself ends an epoch on.
    """
    return float(trainer.fit_loop.max_batches)


def set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Tell ``loader``'s sampler (a ``DistributedSampler``, say) which epoch's order to draw, as Lightning does.

    Why: on resume Lightning creates the iterator (which draws the order, with workers) before it calls ``set_epoch``;
    fabric's ``_set_sampler_epoch`` is the function it calls, so both find the same sampler.
    """
    from lightning.fabric.utilities.data import _set_sampler_epoch

    _set_sampler_epoch(loader, epoch)


def forget_restored_loader_states(trainer: pl.Trainer) -> None:
    """Start the resumed fit's stateful training loaders at a new epoch instead of at their saved position.

    Why: a checkpoint written after an epoch's last batch holds each stateful loader's position at that epoch's end
    (its iterator had not yet raised ``StopIteration``); Lightning resumes at the next epoch but loads that position
    (``_FitLoop._combined_loader_states_to_load``), so the loader's first epoch is empty and the resumed fit trains
    one epoch less than the interrupted one would have. At an epoch boundary there is no position to restore. It can
    go when Lightning drops a finished epoch's loader positions itself. Lightning before 2.3 restores none.
    """
    if getattr(trainer.fit_loop, "_combined_loader_states_to_load", None):
        trainer.fit_loop._combined_loader_states_to_load = []


def is_stateful_loader(loader: Any) -> bool:
    """Whether Lightning saves and restores ``loader``'s own state (it has ``state_dict`` and ``load_state_dict``)."""
    from lightning.fabric.utilities.types import _Stateful

    return isinstance(loader, _Stateful)


def restored_step_counts(trainer: pl.Trainer) -> tuple[int, int, int]:
    """``(automatic optimizer steps, manual optimizer steps, batches that stepped)`` as the loops hold them.

    Why: a checkpoint written without manualopt counts steps in Lightning's loop progress only: automatic optimization
    in ``automatic_optimization.optim_progress``, manual optimization (one per optimizer call) in
    ``manual_optimization.optim_step_progress``, and the logger's count of batches in ``_batches_that_stepped``. They
    are what a resumed run converts into manualopt's counters.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    automatic = int(epoch_loop.automatic_optimization.optim_progress.optimizer_steps)
    manual = int(_manual_progress(trainer).total.completed)
    return automatic, manual, int(epoch_loop._batches_that_stepped)


#: The first Lightning release whose loops resume a checkpoint saved at a batch's end without training that batch again
#: (its ``_TrainingEpochLoop`` tells where a run was saved: ``RestartStage``); exact resume is tested from there.
EXACT_RESUME_FROM = (2, 6)


def resumes_loops_exactly() -> bool:
    """Whether the installed Lightning restarts its loops at the batch after the checkpoint (see ``EXACT_RESUME_FROM``).

    Why: releases before it may train the batch a checkpoint was saved after once more when they resume (2.1 always
    does; 2.5.0 does with accumulating optimizers), which no state in the checkpoint can undo.
    """
    from lightning import __version__

    major, minor = (int(part) for part in __version__.split(".")[:2])
    return (major, minor) >= EXACT_RESUME_FROM


def is_spawned_worker(trainer: pl.Trainer) -> bool:
    """Whether this fit runs in a process that ``ddp_spawn`` (or ``ddp_fork``) started.

    Why: such a worker hands its results back to the main process through the module's ``state_dict``, which the main
    process loads with ``strict=False`` (``_MultiProcessingLauncher._collect_rank_zero_results`` and
    ``_recover_results_in_main_process``); nothing else of the worker's fit returns. manualopt adds its counters to that
    one ``state_dict`` so that ``optimizer_updates`` and the schedules' position come back too. It can go when the
    launcher carries extra state from a public hook.
    """
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


# ---------------------------------------------------------------------------------------------------------- schedulers


def parse_optimizer_config(config: Any) -> tuple[list[Optimizer], list[LRSchedulerConfig]]:
    """Read a ``configure_optimizers`` result with Lightning's own parser, as automatic optimization reads it.

    Why: in manual optimization Lightning keeps ``interval`` and ``frequency`` of a scheduler config but drops
    ``monitor``, ``strict`` and ``reduce_on_plateau`` with a warning, and never steps a scheduler (#6379; users asked
    for the automatic behaviour in #12284). manualopt steps them as automatic optimization does, so it parses the
    configuration with automatic optimization's functions, including their validation. One exception: a
    ``ReduceLROnPlateau`` without a ``monitor`` (which automatic optimization refuses) is kept as it is, with
    ``monitor=None``: stock manual optimization accepts it, and it stays the user's to step until its optimizer updates
    through ``manual_step`` (which then refuses it). This can go when Lightning steps schedulers in manual
    optimization.

    Raises:
        MisconfigurationException: Lightning refuses the configuration.
    """
    from lightning.pytorch.utilities.types import LRSchedulerConfig
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    optimizers, schedulers, monitor = _configure_optimizers(config)
    configs: list[LRSchedulerConfig] = []
    for scheduler in schedulers:
        entry = scheduler if isinstance(scheduler, dict) else {"scheduler": scheduler}
        plateau = entry.get("reduce_on_plateau", isinstance(entry.get("scheduler"), ReduceLROnPlateau))
        if plateau and entry.get("monitor", monitor) is None:
            kept = {key: value for key, value in entry.items() if key in ("scheduler", "interval", "frequency", "name")}
            configs.append(LRSchedulerConfig(**kept, reduce_on_plateau=True))
        else:
            configs.extend(_configure_schedulers_automatic_opt([scheduler], monitor))
    return list(optimizers), configs


def install_scheduler_driver(
    trainer: pl.Trainer, applies: Callable[[], bool], update: Callable[[str, bool, int], None], key: object
) -> Undo:
    """Run ``update(interval, plateau, batch_idx)`` wherever automatic optimization updates learning rates.

    Why: Lightning calls ``_TrainingEpochLoop._update_learning_rates`` at the exact points where automatic
    optimization steps schedulers (after a stepping batch, after validation, after the epoch's last batch and after
    ``on_train_epoch_end``), and the method returns at once in manual optimization (#6379). Replacing it on this loop
    instance, while ``applies()``, steps the schedulers of ``manual_step`` optimizers at those same points. It can go
    with :func:`parse_optimizer_config`.

    Returns:
        The function that removes the driver.
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    original = epoch_loop._update_learning_rates

    def _update_learning_rates(interval: str, update_plateau_schedulers: bool) -> None:
        if applies():
            update(interval, update_plateau_schedulers, epoch_loop.batch_idx)
        else:
            original(interval, update_plateau_schedulers)

    return patch_attribute(epoch_loop, "_update_learning_rates", _update_learning_rates, key)


def step_scheduler(trainer: pl.Trainer, scheduler: Any, metric: Any) -> None:
    """Step ``scheduler`` exactly as automatic optimization does.

    Why: automatic optimization counts the step in ``_TrainingEpochLoop.scheduler_progress`` (saved in the ``loops``
    entry of every checkpoint) and calls the ``lr_scheduler_step`` hook through ``trainer/call.py``, which records the
    hook for ``self.log`` and the profiler; doing the same keeps checkpoints and a user's override of the hook
    identical to automatic optimization's. It can go with :func:`parse_optimizer_config`.
    """
    progress = trainer.fit_loop.epoch_loop.scheduler_progress
    progress.increment_ready()
    _call_lightning_module_hook(trainer, "lr_scheduler_step", scheduler, metric)
    progress.increment_completed()


@contextlib.contextmanager
def configuration_errors_as(error: Callable[[str], Exception]) -> Iterator[None]:
    """Re-raise Lightning's ``MisconfigurationException`` from the block as ``error(message)``."""
    try:
        yield
    except MisconfigurationException as exception:
        raise error(str(exception)) from exception
