"""Tiny real Trainer runs shared by the tests: two-optimizer models on generated data, CPU only."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
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


@pytest.fixture(autouse=True)
def _quiet_and_deterministic() -> Iterator[None]:
    torch.manual_seed(0)
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        yield


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
