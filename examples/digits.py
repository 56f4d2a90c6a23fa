"""Shared pieces of the digits recipes: data, the feature classifier, the Fréchet distance, and image files.

The data is scikit-learn's bundled copy of the UCI handwritten digits (1,797 images of 8x8 pixels, 16 grey levels), so
nothing is downloaded. Images are scaled to [-1, 1], shape (N, 1, 8, 8). A fixed, seeded split keeps 20% aside.

Quality is measured with a Fréchet distance in the feature space of a small digits classifier that the recipe trains
on the training split (no Inception weights: nothing may be downloaded). Its floor is the distance between the
held-out real images and the training images.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.image.fid import FrechetInceptionDistance

HELD_OUT = 0.2


@functools.cache
def digits(split: str) -> tuple[Tensor, Tensor]:
    """Images in [-1, 1] of shape (N, 1, 8, 8) and their labels, for ``split`` "train" or "held_out"."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div(8.0).sub(1.0).unsqueeze(1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(len(labels) * (1 - HELD_OUT))
    chosen = order[:cut] if split == "train" else order[cut:]
    return images[chosen], labels[chosen]


class DigitsData(pl.LightningDataModule):
    """Training batches from the training split; "validation" batches are noise for sampling (see the recipes)."""

    def __init__(self, batch_size: int = 64, samples_per_validation: int = 360) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.samples_per_validation = samples_per_validation

    def train_dataloader(self) -> DataLoader[Any]:
        images, labels = digits("train")
        return DataLoader(TensorDataset(images, labels), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader[Any]:
        # one batch of class labels (0..9 repeated): the recipes generate from these and measure the samples
        labels = torch.arange(self.samples_per_validation) % 10
        return DataLoader(TensorDataset(labels), batch_size=self.samples_per_validation)


class DigitsClassifier(nn.Module):
    """A small convolutional digits classifier; its 64 penultimate features define the Fréchet distance."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64),
            nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, images: Tensor) -> Tensor:
        """The 64 features of images in [-1, 1], shape (N, 1, 8, 8)."""
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits."""
        return self.head(self.body(images))


@functools.cache
def classifier(epochs: int = 40, seed: int = 0) -> DigitsClassifier:
    """Train the feature classifier on the training split (a few seconds on CPU); cached per process."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsClassifier()
    images, labels = digits("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.inference_mode(False), torch.enable_grad():  # also when first asked for during validation
        for _ in range(epochs):
            for index in torch.randperm(len(labels), generator=generator).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(images[index]), labels[index]).backward()
                optimizer.step()
    return model.eval().requires_grad_(False)


def accuracy(images: Tensor, labels: Tensor) -> float:
    """The feature classifier's accuracy on ``images`` (e.g. class-conditioned samples)."""
    with torch.no_grad():
        return float((classifier()(images.cpu()).argmax(dim=1) == labels.cpu()).float().mean())


class _Features(nn.Module):
    num_features = DigitsClassifier.num_features

    def __init__(self) -> None:
        super().__init__()
        self.classifier = classifier()

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.float())


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between two sets of digit images in the feature classifier's space."""
    metric = FrechetInceptionDistance(feature=_Features(), reset_real_features=True)
    metric.update(real.cpu().clamp(-1, 1), real=True)
    metric.update(fake.detach().cpu().clamp(-1, 1), real=False)
    return float(metric.compute())


@functools.cache
def frechet_floor() -> float:
    """The distance between held-out and training images: what a perfect generator could reach."""
    return frechet_distance(digits("train")[0], digits("held_out")[0])


def save_grid(images: Tensor, path: Path, rows: int, scale: int = 4) -> Path:
    """Write images in [-1, 1], shape (N, 1, H, W), as one PNG of ``rows`` rows, each pixel ``scale`` pixels wide."""
    array = images.detach().cpu().clamp(-1, 1).add(1).div(2).squeeze(1).numpy()
    count, height, width = array.shape
    columns = -(-count // rows)
    canvas = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1))
    for index, image in enumerate(array):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        canvas[top : top + height, left : left + width] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.kron(canvas, np.ones((scale, scale))), cmap="gray", vmin=0, vmax=1)
    return path


def plot_curves(
    metrics_csv: Path, path: Path, losses: tuple[str, ...], metric: str | None = None, floor: float | None = None
) -> Path | None:
    """Plot logged ``losses`` (left) and ``metric`` on a log scale (right, with its floor) from a CSVLogger file.

    Returns:
        The PNG's path, or None if nothing was logged.
    """
    if not metrics_csv.exists():
        return None
    with open(metrics_csv) as handle:
        rows = list(csv.DictReader(handle))

    def series(key: str) -> list[tuple[int, float]]:
        return [(int(row["step"]), float(row[key])) for row in rows if row.get(key)]

    panels = [(losses, False)] + ([((metric,), True)] if metric and series(metric) else [])
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    plotted = False
    for axis, (keys, logarithmic) in zip(axes[0], panels, strict=True):
        for key in keys:
            if points := series(key):
                axis.plot(*zip(*points, strict=True), label=key)
                plotted = True
        if logarithmic:
            axis.set_yscale("log")
            if floor is not None:
                axis.axhline(floor, color="grey", linestyle="--", label="floor (held-out vs train)")
        axis.set_xlabel("training step")
        axis.legend()
        axis.grid(alpha=0.3)
    if not plotted:
        plt.close(figure)
        return None
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class RecipeArtifacts(pl.Callback):
    """Writes what a person looks at: a PNG grid of samples per validation, loss curves, and where everything is.

    The module provides ``sample_grid() -> (images, rows)`` (digits) or ``draw_samples(path)`` (any picture); the
    files go to the logger's folder (``trainer.log_dir``).
    """

    def __init__(self, losses: tuple[str, ...] = ("d_loss", "g_loss"), metric: str | None = "fid") -> None:
        self.losses = losses
        self.metric = metric
        self.grids: list[Path] = []

    def _folder(self, trainer: pl.Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        path = self._folder(trainer) / "samples" / f"epoch={trainer.current_epoch:03d}-step={trainer.global_step}.png"
        if hasattr(pl_module, "draw_samples"):
            self.grids.append(pl_module.draw_samples(path))
        elif hasattr(pl_module, "sample_grid"):
            images, rows = pl_module.sample_grid()
            self.grids.append(save_grid(images, path, rows))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        folder = self._folder(trainer)
        for logger in trainer.loggers:
            logger.save()
        if self.metric == "fid":
            print(f"fid floor (held-out vs train digits): {frechet_floor():.2f}")
        floor = frechet_floor() if self.metric == "fid" else None
        curves = plot_curves(folder / "metrics.csv", folder / "loss_curves.png", self.losses, self.metric, floor)
        updates = getattr(pl_module, "optimizer_updates", {})
        print(f"\ntrainer.global_step: {trainer.global_step}; updates per optimizer: {dict(updates)}")
        for name, value in sorted(trainer.callback_metrics.items()):
            print(f"  {name}: {float(value):.4f}")
        checkpoint_folder = Path(getattr(trainer.checkpoint_callback, "dirpath", None) or folder)
        checkpoints = sorted(checkpoint_folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        print(f"checkpoints in {checkpoint_folder}: {', '.join(p.name for p in checkpoints)}")
        if self.grids:
            print(f"sample grids ({len(self.grids)}): last {self.grids[-1]}")
        if curves is not None:
            print(f"loss curves: {curves}")
