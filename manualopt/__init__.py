"""manualopt: manual optimization for PyTorch Lightning that keeps every built-in correct.

Inherit :class:`ManualOptimizationModule` instead of ``LightningModule`` and step optimizers inside ``training_step``
with :meth:`ManualOptimizationModule.manual_step`.
"""

from manualopt.ema import EMA
from manualopt.errors import (
    InvalidStepArgumentError,
    ManualOptimizationError,
    OptimizerConfigurationError,
    StepOutsideTrainingStepError,
    UnknownOptimizerError,
)
from manualopt.module import ManualOptimizationModule, OptimizerKey, StepResult
from manualopt.schedule import StepSchedule

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "InvalidStepArgumentError",
    "ManualOptimizationError",
    "ManualOptimizationModule",
    "OptimizerConfigurationError",
    "OptimizerKey",
    "StepOutsideTrainingStepError",
    "StepResult",
    "StepSchedule",
    "UnknownOptimizerError",
    "__version__",
]
