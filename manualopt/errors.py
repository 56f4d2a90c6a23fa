"""Exceptions raised by manualopt.

Every exception derives from :class:`ManualOptimizationError`, itself a :class:`RuntimeError`, so one ``except``
clause catches all of them.
"""

from __future__ import annotations

__all__ = [
    "InvalidStepArgumentError",
    "ManualOptimizationError",
    "OptimizerConfigurationError",
    "StepOutsideTrainingStepError",
    "UnknownOptimizerError",
]


class ManualOptimizationError(RuntimeError):
    """Base class of every error raised by manualopt."""


class StepOutsideTrainingStepError(ManualOptimizationError):
    """An optimizer step or a backward pass was attempted outside ``training_step``.

    Raised before anything changes: weights, gradients and optimizer state are exactly as they were.
    """


class OptimizerConfigurationError(ManualOptimizationError):
    """``configure_optimizers`` returned something manualopt cannot use, or a checkpoint does not match it.

    Raised when ``Trainer.fit`` starts, before the first batch.
    """


class UnknownOptimizerError(ManualOptimizationError, LookupError):
    """An optimizer was addressed by a name, index or object that the module does not have."""


class InvalidStepArgumentError(ManualOptimizationError, ValueError):
    """``manual_step`` (or a per-optimizer default in ``configure_optimizers``) got an argument it cannot use."""
