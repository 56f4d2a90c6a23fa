"""Tiny real Trainer runs shared by the tests: models on generated data, CPU only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from manualopt import ManualOptimizationModule

BATCHES = 10
BATCH_SIZE = 4


def loader(batches: int = BATCHES, seed: int = 0) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * BATCH_SIZE, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE)


def trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "accelerator": "cpu",
        "devices": 1,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


class TwoNets(ManualOptimizationModule):
    """A generator/discriminator pair of linear layers with one optimizer each.

    ``style`` chooses how training_step steps them: "named" (manual_step by name), "indexed" (manual_step by index),
    "plain" (Lightning's own zero_grad/manual_backward/step), "raw" (the torch optimizers directly).
    ``generator_every`` steps the generator only on every n-th batch.
    """

    def __init__(self, style: str = "named", generator_every: int = 1, named: bool = True) -> None:
        super().__init__()
        self.style = style
        self.generator_every = generator_every
        self.named = named
        self.generator = nn.Linear(4, 1)
        self.discriminator = nn.Linear(4, 1)
        self.training_step_calls = 0
        self.global_steps_seen: list[int] = []
        self.global_steps_after_stepping: list[int] = []

    def losses(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return (
            nn.functional.mse_loss(self.generator(x), y),
            nn.functional.mse_loss(self.discriminator(x), -y),
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.training_step_calls += 1
        self.global_steps_seen.append(self.trainer.global_step)
        g_loss, d_loss = self.losses(batch)
        step_generator = batch_idx % self.generator_every == 0
        if self.style == "named":
            self.manual_step("discriminator" if self.named else "optimizer_1", d_loss)
            if step_generator:
                self.manual_step("generator" if self.named else "optimizer_0", g_loss)
        elif self.style == "indexed":
            self.manual_step(1, d_loss)
            if step_generator:
                self.manual_step(0, g_loss)
        elif self.style == "plain":
            opt_g, opt_d = self.optimizers()
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            opt_d.step()
            if step_generator:
                opt_g.zero_grad()
                self.manual_backward(g_loss)
                opt_g.step()
        elif self.style == "raw":
            raw_g, raw_d = self.trainer.optimizers
            raw_d.zero_grad()
            self.manual_backward(d_loss)
            raw_d.step()
            if step_generator:
                raw_g.zero_grad()
                self.manual_backward(g_loss)
                raw_g.step()
        else:  # pragma: no cover - a typo in a test
            raise ValueError(self.style)
        self.global_steps_after_stepping.append(self.trainer.global_step)
        return d_loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, _ = self.losses(batch)
        self.log("val_loss", g_loss)

    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.SGD(self.generator.parameters(), lr=0.01)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=0.01)
        if self.named:
            return {"generator": opt_g, "discriminator": opt_d}
        return [opt_g, opt_d]


def checkpoint_steps(directory: Path) -> list[int]:
    """The ``step=N`` values of the checkpoint files in ``directory``, sorted."""
    steps = []
    for path in directory.glob("*.ckpt"):
        for part in path.stem.split("-"):
            if part.startswith("step="):
                steps.append(int(part.split("=")[1]))
    return sorted(steps)


class AutoNet(pl.LightningModule):
    """The automatically optimized twin of ``TwoNets``: one optimizer, one step per batch.

    Used where a Lightning release's own behaviour differs from another's: manualopt must match automatic optimization
    on the installed release, whatever that release does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.generator = nn.Linear(4, 1)
        self.training_step_calls = 0
        self.global_steps_seen: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.training_step_calls += 1
        self.global_steps_seen.append(self.trainer.global_step)
        x, y = batch
        return nn.functional.mse_loss(self.generator(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.generator(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.generator.parameters(), lr=0.01)


class StockTwoNets(pl.LightningModule):
    """The same two-optimizer model on stock Lightning: the behaviour manualopt fixes."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Linear(4, 1)
        self.discriminator = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt, net in zip(self.optimizers(), (self.generator, self.discriminator), strict=True):
            opt.zero_grad()
            self.manual_backward(nn.functional.mse_loss(net(x), y))
            opt.step()

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.generator.parameters(), lr=0.01),
            torch.optim.SGD(self.discriminator.parameters(), lr=0.01),
        ]


class SkipsOddBatches(TwoNets):
    """Steps both optimizers on even batches only; logs only when it stepped."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.training_step_calls += 1
        self.global_steps_seen.append(self.trainer.global_step)
        if batch_idx % 2:
            return None
        g_loss, d_loss = self.losses(batch)
        self.manual_step("discriminator", d_loss)
        self.manual_step("generator", g_loss)
        self.log("d_loss", d_loss)
        return None


class Twin:
    """The model both twins share; only ``training_step`` differs."""

    def __init__(self, optimizer: str = "adam", scheduler: str = "none", **step: Any) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.optimizer_name, self.scheduler_name, self.step_options = optimizer, scheduler, step
        self.learning_rates: list[float] = []

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch))  # type: ignore[attr-defined]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.learning_rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])  # type: ignore[attr-defined]

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.Adam(self.net.parameters(), lr=0.02)
        else:
            optimizer = torch.optim.SGD(self.net.parameters(), lr=0.02, momentum=0.9)
        schedulers = {
            "none": None,
            "step-interval-frequency-2": {
                "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9),
                "interval": "step",
                "frequency": 2,
            },
            "epoch-interval": {
                "scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
                "interval": "epoch",
            },
            "plateau-val-loss": {
                "scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0),
                "monitor": "val_loss",
            },
        }
        scheduler = schedulers[self.scheduler_name]
        return optimizer if scheduler is None else {"optimizer": optimizer, "lr_scheduler": scheduler}


class Automatic(Twin, pl.LightningModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


class Manual(Twin, ManualOptimizationModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.manual_step(0, loss, **self.step_options)
        return loss


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


def fp16_plugin() -> Any:
    try:
        from lightning.pytorch.plugins.precision import MixedPrecision
    except ImportError:  # Lightning < 2.2
        from lightning.pytorch.plugins.precision import MixedPrecisionPlugin as MixedPrecision
    # a small initial scale, so that only the infinite loss makes the scaler skip
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=256.0))
