"""Lightning features beside the training loop work on a ``ManualOptimizationModule`` as on a ``LightningModule``.

A compiled module, a ``training_step`` that takes the data iterator, and the tuner's callbacks (which run their own
short fits before the real one, with manualopt's callback moved first).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from helpers import TwoNets, loader, trainer
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import BatchSizeFinder, LearningRateFinder
from lightning.pytorch.core.datamodule import LightningDataModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from manualopt import ManualOptimizationModule


class Regression(ManualOptimizationModule):
    """One linear layer, one optimizer, a ``forward`` to compile; ``lr`` and ``batch_size`` for the tuner."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.lr = 0.05
        self.batch_size = 4
        self.steps_seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.manual_step("sgd", loss)
        self.steps_seen.append(self.trainer.global_step)  # counted when the call ends: the steps before this one
        return loss.detach()  # what the learning-rate finder reads

    def configure_optimizers(self) -> Any:
        return {"sgd": torch.optim.SGD(self.parameters(), lr=self.lr)}

    def train_dataloader(self) -> DataLoader[Any]:
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=self.batch_size)


def test_a_compiled_module_steps_through_manual_step(tmp_path: Path) -> None:
    model = Regression()
    compiled = torch.compile(model, backend="eager")  # dynamo traces forward; no C compiler needed
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(compiled)  # type: ignore[arg-type]
    assert dict(model.optimizer_updates) == {"sgd": 16}
    assert fit.global_step == 16
    assert model.steps_seen == list(range(16))


class TakesTheIterator(TwoNets):
    """``training_step(self, dataloader_iter)``: the module fetches its batch itself."""

    def training_step(self, dataloader_iter: Iterator[Any]) -> None:  # type: ignore[override]
        batch, batch_idx, _ = next(dataloader_iter)
        super().training_step(batch, batch_idx)


def test_a_training_step_that_takes_the_data_iterator_counts_its_steps(tmp_path: Path) -> None:
    model = TakesTheIterator()
    fit = trainer(tmp_path, max_epochs=2)
    fit.fit(model, loader())
    assert fit.global_step == 20
    assert dict(model.optimizer_updates) == {"generator": 20, "discriminator": 20}


class AutomaticRegression(LightningModule):
    """``Regression`` in automatic optimization: what the finder does there is the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.lr = 0.05

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def test_the_learning_rate_finder_runs_before_the_fit_as_in_automatic_optimization(tmp_path: Path) -> None:
    outcomes = []
    for model in (AutomaticRegression(), Regression()):
        finder = LearningRateFinder(num_training_steps=16, early_stop_threshold=None)
        fit = trainer(tmp_path, max_epochs=1, callbacks=[finder])
        fit.fit(model, train_dataloaders=Regression().train_dataloader())
        assert finder.optimal_lr is not None
        learning_rates = finder.optimal_lr.results["lr"]
        assert len(learning_rates) == 16
        assert learning_rates == sorted(set(learning_rates))  # its scheduler stepped after every batch
        assert model.lr == finder.optimal_lr.suggestion()  # the real fit then trains with its suggestion
        outcomes.append(fit.global_step)
    assert outcomes[1] == outcomes[0]  # and counts its steps as automatic optimization does on this release
    assert dict(model.optimizer_updates) == {"sgd": fit.global_step}  # type: ignore[union-attr]


class Data(LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.batch_size = 2

    def train_dataloader(self) -> DataLoader[Any]:
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=self.batch_size)


def test_the_batch_size_finder_runs_before_the_fit_as_in_automatic_optimization(tmp_path: Path) -> None:
    outcomes = []
    for model in (AutomaticRegression(), Regression()):
        data = Data()
        finder = BatchSizeFinder(mode="power", steps_per_trial=2, max_trials=3)
        fit = trainer(tmp_path, max_epochs=1, callbacks=[finder])
        fit.fit(model, datamodule=data)
        outcomes.append((data.batch_size, fit.global_step))
    assert outcomes[0][0] > 2  # it grew (nothing runs out of memory on the CPU)
    assert outcomes[1] == outcomes[0]
    assert dict(model.optimizer_updates) == {"sgd": fit.global_step}  # type: ignore[union-attr]
