"""A ring of 8 Gaussians in 2-D: the classic mode-collapse test, with the measures of the VEEGAN and PacGAN papers.

Run: ``python examples/ring_gaussians.py fit --config examples/configs/ring_gaussians.yaml``; resume with
``--ckpt_path last``. The data is generated (8 Gaussians of standard deviation 0.05 on a circle of radius 2). Each
validation draws 2,500 samples and logs ``modes_covered`` (modes with at least 20 samples within 3 standard deviations
of their centre, out of 8) and ``high_quality`` (the share of samples within 3 standard deviations of their nearest
mode), and plots the samples over the target.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import RecipeArtifacts

from manualopt import ManualOptimizationModule

MODES = 8
RADIUS = 2.0
STD = 0.05
NOISE = 8
EVALUATION_SAMPLES = 2500


def centers() -> Tensor:
    """The 8 mode centres, shape (8, 2)."""
    angles = torch.arange(MODES).float() * (2 * math.pi / MODES)
    return torch.stack([angles.cos(), angles.sin()], dim=1) * RADIUS


def ring_data(samples: int = 2048, seed: int = 0) -> TensorDataset:
    """Points drawn from the ring's 8 Gaussians."""
    generator = torch.Generator().manual_seed(seed)
    modes = torch.randint(MODES, (samples,), generator=generator)
    return TensorDataset(centers()[modes] + STD * torch.randn(samples, 2, generator=generator))


def mlp(inputs: int, outputs: int, width: int = 64) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, outputs)
    )


def discriminator_loss(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Real samples should score 1, generated ones 0."""
    bce = nn.functional.binary_cross_entropy_with_logits
    real_score, fake_score = discriminator(real), discriminator(fake.detach())
    return bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))


def generator_loss(discriminator: nn.Module, fake: Tensor) -> Tensor:
    """The non-saturating generator loss: generated samples should score 1."""
    score = discriminator(fake)
    return nn.functional.binary_cross_entropy_with_logits(score, torch.ones_like(score))


def ring_quality(points: Tensor) -> tuple[int, float]:
    """Modes covered (at least 20 samples per 2,500 within 3 std) and the share of samples within 3 std of a mode."""
    distance, nearest = torch.cdist(points, centers()).min(dim=1)
    good = distance < 3 * STD
    threshold = 20 * len(points) / EVALUATION_SAMPLES
    covered = int((torch.bincount(nearest[good], minlength=MODES) >= threshold).sum())
    return covered, float(good.float().mean())


class RingData(pl.LightningDataModule):
    def __init__(self, samples: int = 2048, batch_size: int = 64) -> None:
        super().__init__()
        self.samples, self.batch_size = samples, batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(ring_data(self.samples), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        noise = torch.randn(EVALUATION_SAMPLES, NOISE, generator=torch.Generator().manual_seed(1))
        return DataLoader(TensorDataset(noise), batch_size=EVALUATION_SAMPLES)


class RingGAN(ManualOptimizationModule):
    """The discriminator updates every batch, the generator every ``generator_every`` batches."""

    def __init__(self, generator_every: int = 2, lr: float = 1e-3, width: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator = mlp(NOISE, 2, width)
        self.discriminator = mlp(2, 1, width)
        self.last_samples: Tensor | None = None

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], NOISE, device=self.device))
        d_loss = discriminator_loss(self.discriminator, real, fake)
        self.manual_step("discriminator", d_loss)
        if batch_idx % self.hparams["generator_every"] == 0:
            with self.toggled_optimizer("generator"):
                g_loss = generator_loss(self.discriminator, fake)
                self.manual_step("generator", g_loss)
            self.log("g_loss", g_loss, prog_bar=True)
        self.log("d_loss", d_loss, prog_bar=True)
        return d_loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.last_samples = self.generator(batch[0]).cpu()
        covered, quality = ring_quality(self.last_samples)
        self.log_dict({"modes_covered": float(covered), "high_quality": quality})

    def draw_samples(self, path: Path) -> Path:
        """Scatter the last validation's samples over the target modes."""
        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        if self.last_samples is not None:
            axis.scatter(*self.last_samples.T, s=2, alpha=0.4, label="samples")
        target = ring_data(2000, seed=2).tensors[0]
        axis.scatter(*target.T, s=2, alpha=0.4, color="black", label="target")
        axis.set_xlim(-3, 3)
        axis.set_ylim(-3, 3)
        axis.set_aspect("equal")
        axis.legend(loc="upper right", markerscale=4)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=90)
        plt.close(figure)
        return path

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr = self.hparams["lr"]
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999)),
        }

    def configure_callbacks(self) -> list[Callback]:
        return [RecipeArtifacts(losses=("d_loss", "g_loss"), metric=None)]


def main(args: list[str] | None = None) -> LightningCLI:
    """The recipe's command line (LightningCLI); ``args`` replaces ``sys.argv`` (tests)."""
    return LightningCLI(RingGAN, RingData, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
