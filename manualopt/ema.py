"""An exponential moving average of a submodule, updated after each real update of one optimizer."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from typing_extensions import override

from manualopt.errors import InvalidArgumentError, OptimizerConfigurationError, UnknownOptimizerError

if TYPE_CHECKING:
    from manualopt._session import FitSession

__all__ = ["EMA"]


class EMA(nn.Module):
    """Keeps ``average = decay * average + (1 - decay) * weights`` of ``module``, once per update of ``optimizer``.

    Assign it to an attribute of a :class:`~manualopt.ManualOptimizationModule` (or of one of its submodules) in
    ``__init__``. manualopt resolves the optimizer when fit starts and updates the average right after each real update
    of that optimizer (a step the GradScaler skipped, or a batch in which the optimizer did not step, leaves it alone),
    not after every ``global_step``. The average is part of the module's ``state_dict``, so checkpoints hold it and
    resuming restores it. Buffers (batch-norm statistics) are copied, not averaged. An update adds no host-device
    synchronization.

    Args:
        module: The submodule to average, e.g. the generator.
        optimizer: The optimizer whose updates drive the average: its name or its index, as ``manual_step`` takes them.
        decay: Weight of the old average at each update, in [0, 1).
        warmup_updates: For this many first updates the average copies the weights (no averaging yet).
        evaluate_with_average: Swap the averaged weights into ``module`` during validation, then swap them back (also
            when validation raises).

    Raises:
        InvalidArgumentError: ``decay``, ``warmup_updates`` or ``optimizer`` has a wrong type or value.

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
        optimizer: str | int,
        decay: float = 0.999,
        warmup_updates: int = 0,
        evaluate_with_average: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise InvalidArgumentError(f"EMA decay must be a number in [0, 1), not {decay!r}.")
        if isinstance(warmup_updates, bool) or not isinstance(warmup_updates, int) or warmup_updates < 0:
            raise InvalidArgumentError(f"EMA warmup_updates must be a non-negative integer, not {warmup_updates!r}.")
        if isinstance(optimizer, bool) or not isinstance(optimizer, (str, int)) or optimizer == "":
            raise InvalidArgumentError(
                f"EMA needs the optimizer that drives it, by name or index (as `manual_step` takes it), not"
                f" {optimizer!r}."
            )
        self.optimizer = optimizer
        self.decay = float(decay)
        self.warmup_updates = warmup_updates
        self.evaluate_with_average = evaluate_with_average
        self.average = copy.deepcopy(module).requires_grad_(False)
        self._target = [module]  # a list, so the target is not registered twice as a submodule
        self.updates: torch.Tensor
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self._count = 0  # ``updates`` on the host, so that updating never waits for the device
        self._swapped = False
        self._pairs: (
            tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], bool] | None
        ) = None

    @property
    def target(self) -> nn.Module:
        """The module being averaged."""
        return self._target[0]

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the averaged module."""
        return self.average(*args, **kwargs)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the target's current weights into the average (manualopt calls this after each update)."""
        pairs = self._pairs or self._tensor_pairs()
        averages, currents, average_buffers, buffers, same_kind = pairs
        if self._count < self.warmup_updates:
            torch._foreach_copy_(averages, currents)
        elif same_kind:
            torch._foreach_lerp_(averages, currents, 1.0 - self.decay)
        else:
            for average, current in zip(averages, currents, strict=True):
                average.lerp_(current.to(average), 1.0 - self.decay)
        if buffers:
            torch._foreach_copy_(average_buffers, buffers)
        self.updates += 1
        self._count += 1

    def _tensor_pairs(
        self,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], bool]:
        # The tensors an update reads and writes; built once per fit (a fit does not swap the modules' tensors).
        averages: list[torch.Tensor] = list(self.average.parameters())
        currents = [parameter.detach() for parameter in self.target.parameters()]
        if len(averages) != len(currents):
            raise InvalidArgumentError(
                f"The EMA's average has {len(averages)} parameters but its module now has {len(currents)}: the module"
                " changed after the EMA was created. Create the EMA after the module's final layout."
            )
        same_kind = all(a.dtype == c.dtype and a.device == c.device for a, c in zip(averages, currents, strict=True))
        return averages, currents, list(self.average.buffers()), list(self.target.buffers()), same_kind

    @override
    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._count = int(self.updates)  # once per load, not per update

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
        # all or nothing: every pair is checked before the first copy, and the copies cannot fail after that
        pairs = [
            *zip(self.average.parameters(), self.target.parameters(), strict=True),
            *zip(self.average.buffers(), self.target.buffers(), strict=True),
        ]
        changed = [index for index, (average, current) in enumerate(pairs) if average.shape != current.shape]
        if changed:
            raise InvalidArgumentError(
                f"The EMA's average and its module differ in the shape of {len(changed)} tensor(s) (the first is"
                f" tensor {changed[0]}): the module changed after the EMA was created, so the weights cannot be"
                " swapped; nothing was. Create the EMA after the module's final layout."
            )
        kept = [current.detach().clone() for _, current in pairs]
        for (average, current), saved in zip(pairs, kept, strict=True):
            current.copy_(average)
            average.copy_(saved)
        self._swapped = not self._swapped

    @override
    def extra_repr(self) -> str:
        """Shown in ``repr``."""
        return f"optimizer={self.optimizer!r}, decay={self.decay}, warmup_updates={self.warmup_updates}"

    # ------------------------------------------------------------------ integration with a fit

    def _manualopt_attach(self, session: FitSession) -> None:
        """Follow the fit's optimizer ``self.optimizer`` (called when the fit starts)."""
        try:
            record = session.record(self.optimizer)
        except UnknownOptimizerError:
            raise OptimizerConfigurationError(
                f"An EMA follows the optimizer {self.optimizer!r}, which `configure_optimizers` does not return; the"
                f" optimizers are {session.names}."
            ) from None
        record.averages.append(self)
        session.averages.append(self)
        self._pairs = self._tensor_pairs()
        session.on_end(self._detach)

    def _manualopt_returned(self, summary: Mapping[str, Any]) -> None:
        """Nothing to take: the average and its count come back in the ``state_dict`` itself."""

    def _detach(self) -> None:
        self._pairs = None
        if self._swapped:  # validation raised before it ended: the trained weights go back
            self._swap()

    def _validation_started(self) -> None:
        if self.evaluate_with_average and not self._swapped:
            self._swap()

    def _validation_ended(self) -> None:
        if self._swapped:
            self._swap()
