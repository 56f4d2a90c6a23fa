"""An exponential moving average of a submodule, updated after each real update of one named optimizer."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from manualopt.errors import OptimizerConfigurationError

__all__ = ["EMA"]


class EMA(nn.Module):
    """Keeps ``average = decay * average + (1 - decay) * weights`` of ``module``, once per update of ``optimizer``.

    Assign it to an attribute of a :class:`~manualopt.ManualOptimizationModule` in ``__init__``. manualopt checks the
    optimizer name when fit starts and updates the average right after each real update of that optimizer (a step the
    GradScaler skipped, or a batch in which the optimizer did not step, leaves it alone), not after every
    ``global_step``. The average is part of the module's ``state_dict``, so checkpoints hold it and resuming restores
    it. Buffers (batch-norm statistics) are copied, not averaged.

    Args:
        module: The submodule to average, e.g. the generator.
        optimizer: The name of the optimizer whose updates drive the average.
        decay: Weight of the old average at each update, in [0, 1).
        warmup_updates: For this many first updates the average copies the weights (no averaging yet).
        evaluate_with_average: Swap the averaged weights into ``module`` during validation, then swap them back.

    Example::

        class GAN(ManualOptimizationModule):
            def __init__(self):
                super().__init__()
                self.generator = Generator()
                self.generator_ema = EMA(self.generator, optimizer="generator", decay=0.999, warmup_updates=100)

            def sample(self, z):
                return self.generator_ema(z)  # the averaged generator
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: str,
        decay: float = 0.999,
        warmup_updates: int = 0,
        evaluate_with_average: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise OptimizerConfigurationError(f"EMA decay must be in [0, 1), not {decay!r}.")
        if isinstance(warmup_updates, bool) or not isinstance(warmup_updates, int) or warmup_updates < 0:
            raise OptimizerConfigurationError(
                f"EMA warmup_updates must be a non-negative integer, not {warmup_updates!r}."
            )
        if not isinstance(optimizer, str) or not optimizer:
            raise OptimizerConfigurationError(f"EMA needs the name of the optimizer that drives it, not {optimizer!r}.")
        self.optimizer = optimizer
        self.decay = decay
        self.warmup_updates = warmup_updates
        self.evaluate_with_average = evaluate_with_average
        self.average = copy.deepcopy(module).requires_grad_(False)
        self._target = [module]  # a list, so the target is not registered twice as a submodule
        self.updates: torch.Tensor
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._swapped = False

    @property
    def target(self) -> nn.Module:
        """The module being averaged."""
        return self._target[0]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the averaged module."""
        return self.average(*args, **kwargs)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the target's current weights into the average (manualopt calls this after each update)."""
        copying = int(self.updates) < self.warmup_updates
        for average, current in zip(self.average.parameters(), self.target.parameters(), strict=True):
            if copying:
                average.copy_(current)
            else:
                average.lerp_(current.detach().to(average.dtype), 1.0 - self.decay)
        for average_buffer, buffer in zip(self.average.buffers(), self.target.buffers(), strict=True):
            average_buffer.copy_(buffer)
        self.updates += 1

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Within the block, the target module holds the averaged weights; its own are put back exactly on exit."""
        if self._swapped:  # nested: already swapped
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        pairs = [
            *zip(self.average.parameters(), self.target.parameters(), strict=True),
            *zip(self.average.buffers(), self.target.buffers(), strict=True),
        ]
        for average, current in pairs:
            kept = current.detach().clone()
            current.copy_(average)
            average.copy_(kept)
        self._swapped = not self._swapped

    def extra_repr(self) -> str:
        """Shown in ``repr``."""
        return f"optimizer={self.optimizer!r}, decay={self.decay}, warmup_updates={self.warmup_updates}"
