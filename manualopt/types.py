"""Public types of manualopt's API: how optimizers are addressed, and what ``manual_step`` reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from lightning.pytorch.core.optimizer import LightningOptimizer
from torch.optim import Optimizer

__all__ = ["NON_FINITE_POLICIES", "NonFinitePolicy", "OptimizerKey", "StepResult"]

#: How an optimizer is addressed: its name, its index in ``trainer.optimizers``, or the optimizer itself (the torch
#: optimizer or its ``LightningOptimizer`` from ``self.optimizers()``).
OptimizerKey: TypeAlias = str | int | Optimizer | LightningOptimizer


#: What an update does when a loss or gradient is not finite: raise :class:`~manualopt.NonFiniteError`, withhold the
#: update (and count it in ``skipped_updates``), or apply it anyway.
NonFinitePolicy: TypeAlias = Literal["error", "skip", "ignore"]
NON_FINITE_POLICIES: tuple[str, ...] = ("error", "skip", "ignore")


@dataclass(frozen=True)
class StepResult:
    """What one :meth:`~manualopt.ManualOptimizationModule.manual_step` call did.

    Attributes:
        optimizer: The name of the optimizer.
        stepped: Whether the optimizer really updated the parameters. False while an accumulation window is open, and
            when a precision plugin skipped the step (16-bit AMP found non-finite gradients).
        updates: The optimizer's number of updates in this run so far, this one included.
        accumulated: Micro-batches gathered in the optimizer's open accumulation window (0 once it stepped).
        skipped: Whether the update was withheld because a loss or gradient was not finite (``non_finite="skip"``).
    """

    optimizer: str
    stepped: bool
    updates: int
    accumulated: int = 0
    skipped: bool = False
