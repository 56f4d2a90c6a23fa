"""What exact resume costs: bytes added to a checkpoint, and the time to resume at the end of a long epoch.

Run ``python tests/resume_cost.py``. It trains a small model on a 10,000-batch epoch (a shuffled ``DataLoader``),
saves a checkpoint at batch 9,999, and resumes from it with exact resume on and off; it prints the size of manualopt's
resume state in the checkpoint and the time from ``fit`` to the resumed run's first ``training_step``.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from manualopt import ManualOptimizationModule

BATCHES = 10_000


class Small(ManualOptimizationModule):
    def __init__(self, exact: bool) -> None:
        super().__init__()
        self.exact_resume = exact
        self.net = nn.Linear(8, 1)
        self.first_step_at: float | None = None

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()
        (x,) = batch
        self.manual_step(0, self.net(x).pow(2).mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.net.parameters(), lr=0.01)


class SavesAt(pl.Callback):
    def __init__(self, path: Path, batch: int) -> None:
        self.path, self.batch = path, batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, index: int) -> None:
        if index == self.batch:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _trainer(root: str, *callbacks: pl.Callback) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def measure(exact: bool) -> tuple[int, float]:
    data = DataLoader(TensorDataset(torch.randn(BATCHES, 8)), batch_size=1, shuffle=True)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(root, "mid.ckpt")
        _trainer(root, SavesAt(path, BATCHES - 2)).fit(Small(exact), data)
        entry = torch.load(path, weights_only=False)["manualopt"]
        buffer = io.BytesIO()
        torch.save(entry.get("resume"), buffer)
        model = Small(exact)
        start = time.perf_counter()
        _trainer(root).fit(model, data, ckpt_path=str(path))
        assert model.first_step_at is not None
        return len(buffer.getvalue()), model.first_step_at - start


def main() -> None:
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    (on_size, on_seconds), (off_size, off_seconds) = measure(True), measure(False)
    print(f"exact resume adds {on_size - off_size:,} bytes to a checkpoint (one process)")
    print(
        f"fit(ckpt_path=...) to the first training_step at batch {BATCHES - 1:,} of {BATCHES:,}:"
        f" {on_seconds:.3f} s with exact resume (the first {BATCHES - 1:,} batches' indices skipped),"
        f" {off_seconds:.3f} s without"
    )


if __name__ == "__main__":
    main()
