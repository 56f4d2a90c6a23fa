"""Progress in a log file: one line per epoch when the output is not a terminal (a file, a pipe, CI).

On a terminal Lightning draws its progress bar. Redirected to a file, a bar redrawn at every batch fills it with
carriage returns (hundreds of KB per run); ``cli.py`` then uses :class:`EpochLines` instead, which prints one line per
training epoch: the epoch, the training step and the logged metrics. ``--trainer.enable_progress_bar false`` turns
either off.
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ProgressBar


class EpochLines(ProgressBar):
    """Lightning's progress bar slot, filled with one printed line at the end of each training epoch."""

    def __init__(self) -> None:
        super().__init__()
        self._enabled = True
        self._started = time.monotonic()

    def disable(self) -> None:
        """Print nothing (Lightning disables the progress bar on every process but the main one)."""
        self._enabled = False

    def enable(self) -> None:
        """Print the lines."""
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock of the lines' seconds."""
        self._started = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Print the epoch, the training step, the logged metrics and the seconds since the start (main process)."""
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = "  ".join(f"{name} {float(value):.4g}" for name, value in sorted(trainer.callback_metrics.items()))
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        elapsed = time.monotonic() - self._started
        line = f"epoch {trainer.current_epoch + 1}{epochs}  step {trainer.global_step}  {metrics}  ({elapsed:.0f} s)"
        print(line, flush=True)
