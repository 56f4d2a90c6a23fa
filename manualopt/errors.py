"""Exceptions and warnings of manualopt.

Every exception derives from :class:`ManualOptimizationError`, itself a :class:`RuntimeError`, so one ``except``
clause catches all of them. Every warning is a :class:`ManualOptimizationWarning`; it is issued on rank 0 only.
"""

from __future__ import annotations

__all__ = [
    "CheckpointLoadError",
    "InvalidArgumentError",
    "InvalidStepArgumentError",
    "ManualOptimizationDeprecationWarning",
    "ManualOptimizationError",
    "ManualOptimizationWarning",
    "NonFiniteError",
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
    """The optimizer configuration cannot be honoured: by manualopt, by the strategy, or by the checkpoint resumed.

    Raised where that shows: mostly when ``Trainer.fit`` starts or a checkpoint is resumed (before the first batch,
    with nothing loaded); during training when the configuration meets what it cannot do: the first ``manual_step`` of
    an optimizer whose ``ReduceLROnPlateau`` has no ``monitor``, a ``strict`` plateau scheduler whose metric was never
    logged, a strategy that cannot take the update. The message names the optimizer and the fix.
    """


class UnknownOptimizerError(ManualOptimizationError, LookupError):
    """An optimizer was addressed by a name, index or object that the module does not have."""


class NonFiniteError(ManualOptimizationError, FloatingPointError):
    """An update met a non-finite loss or gradient (NaN or infinity) and the optimizer's policy is ``"error"``.

    On tensors in host memory it is raised before the update: the weights are as they were. On a GPU it is raised at
    the next point where the host reads the device (a checkpoint save, a logging step, the end of the epoch), before
    any checkpoint holds the non-finite weights.
    """


class InvalidArgumentError(ManualOptimizationError, ValueError):
    """An argument has a wrong type or value: a constructor's (``StepSchedule``, ``EMA``) or a setter's."""


class InvalidStepArgumentError(InvalidArgumentError):
    """``manual_step`` (or a per-optimizer default in ``configure_optimizers``) got an argument it cannot use."""


class CheckpointLoadError(ManualOptimizationError):
    """A checkpoint file to resume from is damaged: empty, truncated, or not a checkpoint archive.

    Raised by :class:`~manualopt.AtomicCheckpointIO` when ``Trainer.fit(ckpt_path=...)`` loads the file, before
    anything of it reaches the module. The message names the file, says what is wrong with it, and lists the newest
    checkpoints beside it that load, with the ``ckpt_path`` to resume from instead. The file is left as it is.
    """


class ManualOptimizationWarning(UserWarning):
    """Something works, but probably not as intended (a scheduler stepped twice, a metric that was not logged)."""


class ManualOptimizationDeprecationWarning(ManualOptimizationWarning, FutureWarning):
    """A name that still works but will be removed; the message says which release removes it and what replaces it."""
