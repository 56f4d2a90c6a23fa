"""manualopt: manual optimization for PyTorch Lightning that keeps every built-in correct.

Inherit :class:`ManualOptimizationModule` instead of ``LightningModule`` and step optimizers inside ``training_step``
with :meth:`ManualOptimizationModule.manual_step`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from manualopt.errors import (
    CheckpointLoadError,
    InvalidArgumentError,
    InvalidStepArgumentError,
    ManualOptimizationDeprecationWarning,
    ManualOptimizationError,
    ManualOptimizationWarning,
    NonFiniteError,
    OptimizerConfigurationError,
    StepOutsideTrainingStepError,
    UnknownOptimizerError,
)

if TYPE_CHECKING:
    from manualopt.checkpoint_io import AtomicCheckpointIO
    from manualopt.ema import EMA
    from manualopt.module import ManualOptimizationModule
    from manualopt.schedule import StepSchedule
    from manualopt.types import NonFinitePolicy, OptimizerKey, StepResult

# Imported on first use, so that importing manualopt (``manualopt --version``, ``--help``) does not import Lightning.
_LAZY = {
    "AtomicCheckpointIO": "manualopt.checkpoint_io",
    "EMA": "manualopt.ema",
    "ManualOptimizationModule": "manualopt.module",
    "StepSchedule": "manualopt.schedule",
    "NonFinitePolicy": "manualopt.types",
    "OptimizerKey": "manualopt.types",
    "StepResult": "manualopt.types",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'manualopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later reads find it here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.3.0"

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "CheckpointLoadError",
    "InvalidArgumentError",
    "InvalidStepArgumentError",
    "ManualOptimizationDeprecationWarning",
    "ManualOptimizationError",
    "ManualOptimizationModule",
    "ManualOptimizationWarning",
    "NonFiniteError",
    "NonFinitePolicy",
    "OptimizerConfigurationError",
    "OptimizerKey",
    "StepOutsideTrainingStepError",
    "StepResult",
    "StepSchedule",
    "UnknownOptimizerError",
    "__version__",
]
