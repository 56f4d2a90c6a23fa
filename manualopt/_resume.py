"""Exact resume: the random number generators and the data order of the interrupted epoch, restored at the batch.

A checkpoint holds the weights, the optimizers, the loops' counters and manualopt's own; a run resumed from it still
differs from the uninterrupted one when its random numbers or its data differ. So, for each rank, a checkpoint also
holds:

* the states of the random number generators (torch on the CPU and on every CUDA device, NumPy, Python's ``random``)
  at the moment it was saved;
* for each training DataLoader, the state of the generators its epoch drew its order from (when the epoch's iterator
  was created) and the number of batches the epoch had trained.

A resumed run draws the interrupted epoch's order again from that state, skips the trained batches' indices (their
data is never loaded), and puts the saved generator states back right before the first batch is fetched. Then every
batch, every dropout mask and every ``torch.randn`` of the resumed run is the uninterrupted run's.

To draw an epoch's order at a point both runs share, a training DataLoader draws it when its iterator is created
(stock PyTorch draws it at the first batch). The loader is made resumable for the fit only: it becomes an instance of a
subclass of its class that carries this, and gets its own class back when the fit ends.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from manualopt.errors import ManualOptimizationWarning

if TYPE_CHECKING:
    from manualopt._patching import Undo
    from manualopt._session import FitSession

__all__ = ["capture_rng", "make_isolated", "make_resumable", "order_state", "restore_rng", "warn_inexact"]

try:  # NumPy is optional: its generator is saved when it is installed
    import numpy
except ImportError:  # pragma: no cover - NumPy comes with most scientific stacks
    numpy = None  # type: ignore[assignment]


def capture_rng() -> dict[str, Any]:
    """The states of this process's random number generators."""
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


def _generators(loader: DataLoader[Any]) -> list[torch.Generator]:
    # the generators an epoch's order and worker seeds come from, besides torch's global one
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not other for other in found):
            found.append(generator)
        inner = getattr(owner, "sampler", None)
        generator = getattr(inner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not other for other in found):
            found.append(generator)
    return found


class _OrderState:
    """One training DataLoader's part of exact resume, for the fit it was made resumable in."""

    def __init__(self, session: FitSession) -> None:
        self.session = session
        self.epoch: int | None = None  # the epoch whose iterator was created last
        self.epoch_state: dict[str, Any] | None = None  # the generators' states when that iterator was created
        self.sampler: _SkippingSampler | None = None  # handed to the iterator being created

    def generators(self, loader: DataLoader[Any]) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "own": [g.get_state() for g in _generators(loader)]}

    def set_generators(self, loader: DataLoader[Any], state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        for generator, saved in zip(_generators(loader), state["own"], strict=False):
            generator.set_state(saved)


class _SkippingSampler:
    """The loader's index sampler, iterated at once (the order is drawn now), less the batches already trained.

    The skip and the callback apply to the first iteration only (persistent workers iterate it again each epoch).
    """

    def __init__(self, inner: Any, skip: int, on_first: Any) -> None:
        self.inner, self.skip, self.on_first = inner, skip, on_first

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        skip, on_first = self.skip, self.on_first
        self.skip, self.on_first = 0, None
        iterator = iter(self.inner)
        for _ in range(skip):  # indices only: the skipped batches' data is never loaded
            if next(iterator, _END) is _END:
                break
        first = next(iterator, _END)  # draws the order now, at a point both runs share
        return _Resumed(first, iterator, on_first)


_END = object()


class _Resumed(Iterator[Any]):
    def __init__(self, first: Any, rest: Iterator[Any], on_first: Any) -> None:
        self.first, self.rest, self.on_first = first, rest, on_first

    @override
    def __next__(self) -> Any:
        if self.on_first is not None:
            on_first, self.on_first = self.on_first, None
            on_first()  # the run's first batch is fetched now: the saved generator states come back first
        if self.first is not _END:
            first, self.first = self.first, _END
            return first
        return next(self.rest)


def _resumable_class(cls: type) -> type:
    """A subclass of a DataLoader class that draws each epoch's order at once and can resume an interrupted epoch.

    The subclass adds no layout of its own, so a loader's class can be swapped for it, and back, in place.
    """

    def _index_sampler(self: Any) -> Any:
        order: _OrderState | None = self.__dict__.get("_manualopt_order")
        if order is not None and order.sampler is not None:
            return order.sampler  # the iterator being created takes it
        return cls._index_sampler.fget(self)  # type: ignore[attr-defined]

    def __iter__(self: Any) -> Any:
        order: _OrderState | None = self.__dict__.get("_manualopt_order")
        if order is None:
            return cls.__iter__(self)  # type: ignore[attr-defined]
        session = order.session
        plan = session.order_plan(self)
        skip, on_first = 0, None
        if plan is not None:  # mid-epoch: this epoch again, from its saved order, less what it trained
            order.set_generators(self, plan["state"])
            skip, on_first = int(plan["consumed"]), session.restore_rng
        else:  # a new epoch: generator states saved at an epoch boundary come back before it draws its order
            session.restore_rng()
        order.epoch, order.epoch_state = session.trainer.current_epoch, order.generators(self)
        order.sampler = _SkippingSampler(cls._index_sampler.fget(self), skip, on_first)  # type: ignore[attr-defined]
        try:
            return cls.__iter__(self)  # type: ignore[attr-defined]
        finally:
            order.sampler = None

    def state_dict(self: Any) -> dict[str, Any]:
        """Nothing for Lightning to store: manualopt resumes this loader from its own checkpoint entry."""
        return {}

    def load_state_dict(self: Any, state: dict[str, Any]) -> None:
        """Nothing to load here: see ``state_dict``."""

    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "_index_sampler": property(_index_sampler),
        "__iter__": __iter__,
        "state_dict": state_dict,
        "load_state_dict": load_state_dict,
        "_manualopt_resumable": True,
    }
    return type(cls.__name__, (cls,), namespace)


def order_state(loader: Any, consumed: int, epoch: int) -> dict[str, Any] | None:
    """What resuming ``loader`` mid-epoch needs, or None at an epoch boundary (nothing to skip)."""
    order: _OrderState | None = getattr(loader, "__dict__", {}).get("_manualopt_order")
    if order is None or order.epoch != epoch or order.epoch_state is None:
        return None
    length = len(loader) if hasattr(loader, "__len__") else None
    if length is not None and consumed >= length:
        return None
    return {"state": order.epoch_state, "consumed": consumed}


_RESUMABLE_CLASSES: dict[type, type] = {}


def make_resumable(loader: Any, session: FitSession) -> Undo | None:
    """Make a training DataLoader resumable for the fit; None (and a warning, once) when it cannot be.

    Returns:
        The function that gives the loader its own class back.
    """
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        session.inexact(
            f"the training data ({type(loader).__name__}) is not a map-style DataLoader, so the batches an interrupted"
            " epoch had trained cannot be skipped without loading them"
        )
        return None
    cls = type(loader)
    if getattr(cls, "_manualopt_resumable", False):
        return None
    resumable = _RESUMABLE_CLASSES.get(cls)
    if resumable is None:
        resumable = _RESUMABLE_CLASSES[cls] = _resumable_class(cls)
    loader.__class__ = resumable
    loader.__dict__["_manualopt_order"] = _OrderState(session)

    def undo() -> None:
        loader.__dict__.pop("_manualopt_order", None)
        if type(loader) is resumable:
            loader.__class__ = cls

    return undo


_ISOLATED_CLASSES: dict[type, type] = {}


def make_isolated(loader: Any) -> Undo | None:
    """Make a validation DataLoader of the fit draw its iterator's random numbers without touching the training's.

    Creating an iterator draws from torch's global generator (the workers' seed; a shuffled sampler's order); a run
    resumed from a checkpoint saved right before a validation does not validate there again, so it would start its
    next batch from other generator states. Validation's own steps are kept out the same way by manualopt's callback.

    Returns:
        The function that gives the loader its own class back.
    """
    if not isinstance(loader, DataLoader):
        return None
    cls = type(loader)
    isolated = _ISOLATED_CLASSES.get(cls)
    if isolated is None:

        def __iter__(self: Any) -> Any:
            state = capture_rng()
            try:
                return cls.__iter__(self)
            finally:
                restore_rng(state)

        namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__iter__": __iter__}
        isolated = _ISOLATED_CLASSES[cls] = type(cls.__name__, (cls,), namespace)
    loader.__class__ = isolated

    def undo() -> None:
        if type(loader) is isolated:
            loader.__class__ = cls

    return undo


def warn_inexact(reason: str) -> None:
    """Say, once per fit, why a resumed run will not be exactly the interrupted one."""
    rank_zero_warn(
        f"This run resumes, but not exactly as the interrupted run would have gone on: {reason}.",
        category=ManualOptimizationWarning,
    )
