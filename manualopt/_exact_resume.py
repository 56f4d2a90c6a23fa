"""Exact resume: the random number generators and the data order of the interrupted epoch, restored at the batch.

A checkpoint holds the weights, the optimizers, the loops' counters and manualopt's own; a run resumed from it still
differs from the uninterrupted one when its random numbers or its data differ. So, for each rank, a checkpoint also
holds:

* the states of the random number generators (torch on the CPU and on every CUDA device, NumPy, Python's ``random``,
  and each training DataLoader's own ``generator``) at the moment it was saved; during a validation, those of the
  validation's start (a validation draws none of the training's random numbers: see below);
* while an epoch is under way, the generators' states at the two moments the epoch drew its order (when its iterator
  was created, and when its first batch was fetched) and the number of batches it fetched.

A run resumed inside an epoch creates that epoch's iterator from the saved states, draws the first batch's order from
them again, advances past the trained batches (a single-process loader skips their indices without loading their
data; a loader with workers fetches and drops them), and puts the generators' states of the checkpoint back before
its first batch is fetched. A run resumed at an epoch boundary puts them back before the new epoch's iterator is
created. Then every batch, every dropout mask and every ``torch.randn`` of the resumed run is the uninterrupted run's.

A loader that keeps its own position (one with ``state_dict``/``load_state_dict``, such as torchdata's
``StatefulDataLoader``) resumes through Lightning's own path for it; manualopt adds only the generators' states. No
object of the user's is changed: everything happens in Lightning's loops (see :mod:`manualopt._lightning`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset

from manualopt import _lightning
from manualopt._torch import skip_indices
from manualopt.errors import ManualOptimizationWarning

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from manualopt._patching import Undo

__all__ = ["ExactResume", "capture_rng", "restore_rng"]

try:  # NumPy is optional: its generator is saved when it is installed
    import numpy
except ImportError:  # pragma: no cover - NumPy comes with most scientific stacks
    numpy = None  # type: ignore[assignment]


def capture_rng() -> dict[str, Any]:
    """The states of this process's global random number generators."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,  # type: ignore[no-untyped-call]
        "numpy": None if numpy is None else _numpy_state(),
        "python": random.getstate(),
    }


def _numpy_state() -> tuple[Any, ...]:
    # as plain values and a tensor, so that a checkpoint holding it loads with torch.load(weights_only=True)
    state: Any = numpy.random.get_state()
    kind, keys, position, has_gauss, cached = state
    return str(kind), torch.from_numpy(keys.astype(numpy.int64)), int(position), int(has_gauss), float(cached)


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("numpy") is not None and numpy is not None:
        kind, keys, position, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype(numpy.uint32), position, has_gauss, cached))
    if state.get("python") is not None:
        random.setstate(state["python"])


def _own_generators(loader: Any) -> list[torch.Generator]:
    # the generators an epoch's order and worker seeds come from, besides torch's global one
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for candidate in (owner, getattr(owner, "sampler", None)):
            generator = getattr(candidate, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not other for other in found):
                found.append(generator)
    return found


def _loader_states(loaders: list[Any]) -> list[list[torch.Tensor]]:
    return [[generator.get_state() for generator in _own_generators(loader)] for loader in loaders]


def _set_loader_states(loaders: list[Any], states: list[list[torch.Tensor]]) -> None:
    for loader, saved in zip(loaders, states, strict=False):
        for generator, state in zip(_own_generators(loader), saved, strict=False):
            generator.set_state(state)


def warn_inexact(reason: str) -> None:
    """Say why a resumed run will not be exactly the interrupted one."""
    rank_zero_warn(
        f"This run resumes, but not exactly as the interrupted run would have gone on: {reason}.",
        category=ManualOptimizationWarning,
    )


class ExactResume:
    """Exact resume for one fit: what it records while training, what a checkpoint holds, and how a resume uses it.

    Attributes:
        trainer: The Trainer running the fit.
        epoch: The epoch whose iterator was created last (-1 before the first).
        created: The generators' states (global, then each training loader's own) when that iterator was created.
        first_fetch: Their states when its first batch was fetched, or None before.
        fetched: The batches fetched from that iterator.
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        self.trainer = trainer
        self.epoch = -1
        self.created: dict[str, Any] | None = None
        self.first_fetch: dict[str, Any] | None = None
        self.fetched = 0
        self._iterator: Any = None  # the epoch iterator the three above belong to
        self._prepared_states: dict[str, Any] | None = None  # when the training loaders were prepared (setup_data)
        self._run_start_states: dict[str, Any] | None = None  # when the epoch loop started (it may create one)
        self._validation_start: dict[str, Any] | None = None  # the training's states while a validation runs
        self._reasons: list[str] = []  # why this fit's resume cannot be exact
        # what the checkpoint being resumed asks for: the states to end at, and the interrupted epoch's plan
        self._now: dict[str, Any] | None = None
        self._plan: dict[str, Any] | None = None
        self._next_epoch = 0  # the epoch a resumed run's first batch belongs to
        self._skip: dict[str, Any] | None = None  # the plan, once its iterator is created: applied at the first fetch

    # ------------------------------------------------------------------ installing

    def install(self, key: object) -> list[Undo]:
        """Watch the fit's data and validation; returns the undos."""
        trainer = self.trainer
        return [
            _lightning.intercept_dataloaders(trainer, self._prepared, key),
            _lightning.watch_training_data(trainer, self._creating, self._fetching, key),
            _lightning.isolate_validation(trainer, self._isolated, key),
        ]

    def _states(self) -> dict[str, Any]:
        loaders = _lightning.training_dataloaders(self.trainer)
        return {"rng": capture_rng(), "loaders": _loader_states(loaders)}

    def _set_states(self, states: dict[str, Any]) -> None:
        restore_rng(states["rng"])
        _set_loader_states(_lightning.training_dataloaders(self.trainer), states["loaders"])

    # ------------------------------------------------------------------ recording

    def _prepared(self, loader: Any, training: bool) -> None:
        # Lightning prepared a loader of the fit; a training one's iterator is created next, in setup_data
        if not training:
            return
        if self._now is not None and self._skip is None:
            self._resume_before_creation(loader)
        if self._prepared_states is None:
            self._prepared_states = {"rng": capture_rng(), "loaders": []}
        self._prepared_states["loaders"] += _loader_states([loader])

    def _creating(self, made: bool | None) -> None:
        if made is None:  # before on_run_start: it may create the next epoch's iterator
            self._run_start_states = self._states()
        elif self._run_start_states is not None:
            self._begin_epoch(self._run_start_states)

    def _begin_epoch(self, before: dict[str, Any]) -> None:
        self._prepared_states = self._run_start_states = None
        self._iterator = _lightning.training_iterator(self.trainer)
        self.epoch = self.trainer.current_epoch
        self.created = {"rng": before["rng"], "loaders": before["loaders"]}
        self.first_fetch, self.fetched = None, 0

    def _fetching(self) -> None:
        iterator = _lightning.training_iterator(self.trainer)
        if iterator is not self._iterator:  # created in setup_data (first or resumed epoch)
            self._begin_epoch(self._prepared_states or self._states())
        if self.fetched == 0:
            if self._skip is not None:
                self._resume_at_first_fetch(self._skip)
            else:
                self.first_fetch = self._states()
                self._resume_now()
        self.fetched += 1

    def _isolated(self, run: Callable[[], Any]) -> Any:
        # a validation draws none of the training's random numbers (see _lightning.isolate_validation)
        if self._validation_start is not None:
            return run()  # inside one already: the outer call puts the states back
        state = self._validation_start = self._states()
        try:
            return run()
        finally:
            self._validation_start = None
            self._set_states(state)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """This rank's part of a checkpoint: the generators' states now, and the epoch under way."""
        now = self._validation_start or self._states()
        done = self.fetched >= _lightning.epoch_batches(self.trainer)
        plan = None
        if self.created is not None and not done:
            plan = {
                "epoch": self.epoch,
                "created": self.created,
                "first_fetch": self.first_fetch,
                "fetched": self.fetched,
            }
        next_epoch = self.epoch + 1 if done and self.created is not None else max(self.epoch, 0)
        return {"rng": now["rng"], "loaders": now["loaders"], "plan": plan, "next_epoch": next_epoch}

    def load(self, state: dict[str, Any], loops_resume_exactly: bool) -> None:
        """Take this rank's part of the checkpoint being resumed (before the loaders exist)."""
        self._now = {"rng": state["rng"], "loaders": state.get("loaders", [])}
        self._plan = state.get("plan")
        self._next_epoch = int(state.get("next_epoch", 0))
        if self._plan is not None and not loops_resume_exactly:
            self._plan = None  # older loops restart the epoch at another batch: no order to align with

    def inexact(self, reason: str) -> None:
        """Note why a resume of this fit cannot be exact; said when it resumes."""
        if reason not in self._reasons:
            self._reasons.append(reason)

    # ------------------------------------------------------------------ resuming

    def _resume_before_creation(self, loader: Any) -> None:
        plan, trainer = self._plan, self.trainer
        if trainer.world_size > 1 and _lightning.is_stateful_loader(loader):
            self.inexact(
                f"the training data is a {type(loader).__name__}, which keeps its own state and restores, under"
                " several processes, another data order than the interrupted run's; exact resume of such loaders is"
                " tested on one process"
            )
        if plan is not None and plan["epoch"] == _lightning.epoch_to_resume(trainer):  # inside the epoch
            _lightning.set_sampler_epoch(loader, plan["epoch"])
            if _lightning.is_stateful_loader(loader):
                return  # Lightning restores the loader's position; the generators come back at the first fetch
            if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
                self.inexact(
                    f"the training data ({type(loader).__name__}) is not a map-style DataLoader, so the batches the"
                    " interrupted epoch had trained cannot be skipped"
                )
                return
            restore_rng(plan["created"]["rng"])
            _set_loader_states([loader], plan["created"]["loaders"])
            self._skip = plan
            return
        # at an epoch boundary: the next epoch's order comes from the checkpoint's states
        now, self._now, self._plan = self._now, None, None
        _lightning.set_sampler_epoch(loader, self._next_epoch)
        _lightning.forget_restored_loader_states(trainer)
        if now is not None:
            restore_rng(now["rng"])
            _set_loader_states([loader], now["loaders"])
        self._say_why()

    def _resume_at_first_fetch(self, plan: dict[str, Any]) -> None:
        self._skip = None
        loaders = _lightning.training_dataloaders(self.trainer)
        if len(loaders) != 1:
            self.inexact("the fit has several training DataLoaders, whose interrupted epoch cannot be realigned")
        elif plan["first_fetch"] is not None and plan["fetched"]:
            self._set_states(plan["first_fetch"])
            (iterator,) = _lightning.loader_iterators(self.trainer) or [None]
            if iterator is not None and not skip_indices(iterator, plan["fetched"]):
                for _ in range(plan["fetched"]):  # workers have their indices already: fetch and drop
                    next(iterator)
        self.created, self.first_fetch = plan["created"], plan["first_fetch"]
        self.fetched = plan["fetched"]
        self._resume_now()

    def _resume_now(self) -> None:
        # the checkpoint's states, right before the resumed run's first batch is fetched
        if self._now is None:
            return
        self._set_states(self._now)
        self._now = self._plan = None
        self._say_why()

    def before_first_step(self) -> None:
        """Put back the checkpoint's states if no batch was fetched through Lightning's loop (an iterable dataset)."""
        self._resume_now()

    def _say_why(self) -> None:
        for reason in self._reasons:
            warn_inexact(reason)
        self._reasons = []
