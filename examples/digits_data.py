"""scikit-learn's bundled 8x8 handwritten digits, split once, and the data modules of the digits recipes.

The data is the UCI handwritten digits that scikit-learn installs with itself (1,797 images of 8x8 pixels, 16 grey
levels), so nothing is downloaded. Images are scaled to [-1, 1], shape (N, 1, 8, 8). A fixed, seeded split keeps 20%
aside: 1,437 training and 360 held-out images.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

HELD_OUT = 0.2
CLASSES = 10


@functools.cache
def digits(split: str) -> tuple[Tensor, Tensor]:
    """Images in [-1, 1] of shape (N, 1, 8, 8) and their labels, for ``split`` ``"train"`` or ``"held_out"``."""
    if split not in ("train", "held_out"):
        raise ValueError(f"Unknown split {split!r}; choose 'train' or 'held_out'.")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div(8.0).sub(1.0).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(len(labels) * (1 - HELD_OUT))
    chosen = order[:cut] if split == "train" else order[cut:]
    return images[chosen], labels[chosen]


class DigitsData(pl.LightningDataModule):
    """Training batches (images, labels) of the training split; one validation batch of class labels to sample.

    Args:
        batch_size: Images per training batch (the last incomplete batch is dropped).
        samples_per_validation: How many samples each validation generates, as one batch of labels ``0..9``
            repeated; the default equals the training split's size, the sample size of the Fréchet floor.
    """

    def __init__(self, batch_size: int = 64, samples_per_validation: int = 1437) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.samples_per_validation = samples_per_validation

    def train_dataloader(self) -> DataLoader[Any]:
        images, labels = digits("train")
        return DataLoader(TensorDataset(images, labels), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader[Any]:
        labels = torch.arange(self.samples_per_validation) % CLASSES
        return DataLoader(TensorDataset(labels), batch_size=self.samples_per_validation)


class DigitsClassification(pl.LightningDataModule):
    """Labelled training batches and the held-out split for validation (the SAM classifier recipe)."""

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(TensorDataset(*digits("train")), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(TensorDataset(*digits("held_out")), batch_size=512)
