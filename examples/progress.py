"""Console progress that stays readable when stdout is not a terminal (a log file, CI, a pipe).

On a terminal it is Lightning's ``TQDMProgressBar``. Elsewhere a redrawn bar becomes one long line of carriage
returns, so :class:`RecipeProgressBar` prints one line per validation instead (epoch, training step, and the logged
metrics), and nothing in between.
"""

from __future__ import annotations

import sys
import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class RecipeProgressBar(TQDMProgressBar):
    """A progress bar on a terminal, one line per validation elsewhere.

    Args:
        refresh_rate: Batches between bar updates (terminal only).
        lines: Print lines instead of a bar: ``True``, ``False``, or ``None`` to decide from ``sys.stdout.isatty()``.
    """

    def __init__(self, refresh_rate: int = 1, lines: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.lines = (not sys.stdout.isatty()) if lines is None else lines
        self._started = time.monotonic()
        if self.lines:
            self.disable()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = time.monotonic()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self.lines or trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = "  ".join(f"{name} {float(value):.4g}" for name, value in sorted(trainer.callback_metrics.items()))
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        elapsed = time.monotonic() - self._started
        print(
            f"epoch {trainer.current_epoch + 1}{epochs}  step {trainer.global_step}  {metrics}  ({elapsed:.0f} s)",
            flush=True,
        )
