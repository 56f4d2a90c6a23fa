"""manualopt: manual optimization for PyTorch Lightning that keeps every built-in correct.

Inherit :class:`ManualOptimizationModule` instead of ``LightningModule`` and step optimizers inside ``training_step``
with :meth:`ManualOptimizationModule.manual_step`.
"""

from manualopt.checkpoint_io import AtomicCheckpointIO
from manualopt.ema import EMA
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
from manualopt.module import ManualOptimizationModule
from manualopt.schedule import StepSchedule
from manualopt.types import NonFinitePolicy, OptimizerKey, StepResult

__version__ = "0.2.0"

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
