"""Training data, generated: a regression task whose targets are a fixed random network of the inputs, plus noise.

Replace ``RegressionData`` with your own ``LightningDataModule``; the model only needs batches of
``(inputs, targets)``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


def make_regression(samples: int, features: int, outputs: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
    """``samples`` inputs from a standard normal and their targets: ``tanh(x A) B`` plus Gaussian ``noise``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, features, generator=generator)
    first = torch.randn(features, 32, generator=generator) / features**0.5
    second = torch.randn(32, outputs, generator=generator) / 32**0.5
    targets = torch.tanh(inputs @ first) @ second
    return inputs, targets + noise * torch.randn(samples, outputs, generator=generator)


class RegressionData(pl.LightningDataModule):
    """Generated ``(inputs, targets)`` batches; a fixed fifth of the samples is held out for validation.

    ``features`` and ``outputs`` are passed on to the model by the command line (``cli.py``).

    Args:
        samples: Number of samples, training and validation together.
        features: Inputs per sample.
        outputs: Targets per sample.
        noise: Standard deviation of the noise added to the targets.
        batch_size: Samples per batch.
        seed: Seed of the generated data.
    """

    def __init__(
        self,
        samples: int = 4096,
        features: int = 8,
        outputs: int = 1,
        noise: float = 0.05,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        inputs, targets = make_regression(samples, features, outputs, noise, seed)
        cut = samples * 4 // 5
        self.train_set = TensorDataset(inputs[:cut], targets[:cut])
        self.val_set = TensorDataset(inputs[cut:], targets[cut:])
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        """Shuffled training batches; an epoch drops its last incomplete batch."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader[Any]:
        """The held-out samples."""
        return DataLoader(self.val_set, batch_size=self.batch_size)
