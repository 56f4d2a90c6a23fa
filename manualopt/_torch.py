"""Every contact with PyTorch's private API, each with why it is needed and when it can go.

``tests/test_lightning_internals.py`` pins each one on the installed torch, so a torch release that moves one fails
there, by name, rather than somewhere inside a fit.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data.dataloader import _SingleProcessDataLoaderIter

__all__ = ["skip_indices"]


def skip_indices(iterator: Any, count: int) -> bool:
    """Advance a single-process DataLoader iterator past ``count`` batches without loading their data.

    Returns:
        Whether it could (False for a worker-process iterator or another kind: then the caller fetches and discards).

    Why: a resumed epoch must skip the batches the interrupted run trained; a single-process iterator draws the epoch's
    order from its index sampler (``_sampler_iter``) and loads a batch's data only in ``__next__``, so advancing the
    index sampler alone skips them at the cost of drawing indices. Worker iterators have handed indices to their
    workers already. It can go when ``DataLoader`` can be resumed at a batch (torchdata's ``StatefulDataLoader``
    can; plain ``DataLoader`` cannot).
    """
    if type(iterator) is not _SingleProcessDataLoaderIter:
        return False
    for _ in range(count):
        next(iterator._sampler_iter)
    iterator._num_yielded += count
    return True
