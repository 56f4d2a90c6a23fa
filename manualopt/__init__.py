"""manualopt: manual optimization for PyTorch Lightning that keeps every built-in correct.

Inherit :class:`ManualOptimizationModule` instead of ``LightningModule`` and step optimizers inside ``training_step``
with :meth:`ManualOptimizationModule.manual_step`.
"""

from manualopt.errors import (
    InvalidStepArgumentError,
    ManualOptimizationError,
    OptimizerConfigurationError,
    StepOutsideTrainingStepError,
    UnknownOptimizerError,
)
from manualopt.module import ManualOptimizationModule, OptimizerKey, StepResult

__version__ = "0.1.0"

__all__ = [
    "InvalidStepArgumentError",
    "ManualOptimizationError",
    "ManualOptimizationModule",
    "OptimizerConfigurationError",
    "OptimizerKey",
    "StepOutsideTrainingStepError",
    "StepResult",
    "UnknownOptimizerError",
    "__version__",
]
