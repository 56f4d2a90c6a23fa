"""Measure, on the installed Lightning release, what stock manual optimization does to step-counting built-ins.

Each row trains a tiny model for 20 batches (2 epochs of 10) twice: as a stock ``LightningModule`` with
``automatic_optimization = False``, and as a ``ManualOptimizationModule`` running the same code. Run it with
``python -m examples.stock_problems``; it prints a Markdown table.
"""

from __future__ import annotations

import tempfile
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from manualopt import ManualOptimizationModule, StepOutsideTrainingStepError


def make(base: type[pl.LightningModule], where: str, raw: bool = False) -> pl.LightningModule:
    """A two-layer model whose optimizers step in ``where``: "training_step" or "on_train_batch_end"."""

    class Model(base):  # type: ignore[valid-type, misc]
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.a, self.b = nn.Linear(4, 1), nn.Linear(4, 1)

        def update(self, batch: Any) -> None:
            for optimizer, layer in zip(self.optimizers(), (self.a, self.b), strict=True):
                optimizer.zero_grad()
                self.manual_backward(layer(batch[0]).pow(2).mean())
                (optimizer.optimizer if raw else optimizer).step()

        def training_step(self, batch: Any, batch_idx: int) -> None:
            if where == "training_step":
                self.update(batch)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if where == "on_train_batch_end":
                self.update(batch)

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]

    return Model()


def run(model: pl.LightningModule, **checkpoint: Any) -> str:
    """Fit for 20 batches; describe global_step and the checkpoint files (or the error)."""
    folder = Path(tempfile.mkdtemp())
    max_steps = checkpoint.pop("max_steps", -1)
    trainer = pl.Trainer(
        max_epochs=2,
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=str(folder), save_top_k=-1, **checkpoint)],
    )
    data = DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(model, data)
        except StepOutsideTrainingStepError:
            return "refused: `StepOutsideTrainingStepError` names `on_train_batch_end`"
    steps = sorted(int(p.stem.split("step=")[1]) for p in folder.glob("*.ckpt"))
    batches = trainer.fit_loop.epoch_loop.total_batch_idx + 1
    warned = any("pre-optimization" in str(w.message) for w in caught)
    text = f"global_step {trainer.global_step} after {batches} batches; checkpoints at steps {steps or 'none'}"
    return text + (" + 'pre-optimization' warning" if warned else "")


ROWS: list[tuple[str, dict[str, Any], str, bool]] = [
    (
        "2 optimizers stepped in `training_step`, `every_n_train_steps=4`",
        {"every_n_train_steps": 4},
        "training_step",
        False,
    ),
    (
        "2 optimizers stepped in `training_step`, `max_steps=10`",
        {"max_steps": 10, "every_n_epochs": 1},
        "training_step",
        False,
    ),
    ("steps in `on_train_batch_end`, `every_n_epochs=1`", {"every_n_epochs": 1}, "on_train_batch_end", False),
    ("`train_time_interval=timedelta(0)`", {"train_time_interval": timedelta(0)}, "training_step", False),
    ("raw `torch` optimizer steps, `every_n_epochs=1`", {"every_n_epochs": 1}, "training_step", True),
]


def main() -> None:
    warnings.filterwarnings("ignore")
    print(f"Lightning {pl.__version__}, 20 batches (2 epochs of 10)\n")
    print("| what the code does | stock Lightning | manualopt |")
    print("|---|---|---|")
    for title, checkpoint, where, raw in ROWS:
        stock = run(make(pl.LightningModule, where, raw), **dict(checkpoint))
        ours = run(make(ManualOptimizationModule, where, raw), **dict(checkpoint))
        print(f"| {title} | {stock} | {ours} |")


if __name__ == "__main__":
    main()
