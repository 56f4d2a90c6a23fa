"""DCGAN on scikit-learn's bundled 8x8 handwritten digits, with an EMA of the generator.

Run: ``python examples/dcgan_digits.py fit --config examples/configs/dcgan_digits.yaml``; resume with
``--ckpt_path last``. Each validation writes a grid of samples from the averaged generator and logs ``fid``, the
Fréchet distance to held-out digits in the feature space of a digits classifier (``digits.py``); training ends with a
plot of the losses.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits import DigitsData, RecipeArtifacts, digits, frechet_distance

from manualopt import EMA, ManualOptimizationModule


def generator_network(noise: int, width: int) -> nn.Module:
    """Noise (N, noise) to images (N, 1, 8, 8) in [-1, 1]."""
    return nn.Sequential(
        nn.Linear(noise, width * 2 * 2 * 2),
        nn.Unflatten(1, (width * 2, 2, 2)),
        nn.BatchNorm2d(width * 2),
        nn.ReLU(),
        nn.ConvTranspose2d(width * 2, width, 4, stride=2, padding=1),  # 4x4
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),  # 8x8
        nn.Tanh(),
    )


def discriminator_network(width: int, outputs: int = 1) -> nn.Module:
    """Images (N, 1, 8, 8) to ``outputs`` logits."""
    return nn.Sequential(
        nn.Conv2d(1, width, 4, stride=2, padding=1),  # 4x4
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, width * 2, 4, stride=2, padding=1),  # 2x2
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(width * 2 * 2 * 2, outputs),
    )


class DCGAN(ManualOptimizationModule):
    """The discriminator and the generator update once per batch; an EMA follows the generator's updates."""

    def __init__(
        self,
        noise: int = 32,
        width: int = 32,
        lr: float = 2e-4,
        beta1: float = 0.5,
        ema_decay: float = 0.99,
        ema_warmup: int = 50,
        samples: int = 360,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator = generator_network(noise, width)
        self.discriminator = discriminator_network(width)
        self.generator_ema = EMA(self.generator, optimizer="generator", decay=ema_decay, warmup_updates=ema_warmup)
        self.register_buffer("fixed_noise", torch.randn(samples, noise, generator=torch.Generator().manual_seed(1)))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], self.hparams["noise"], device=self.device))
        bce = nn.functional.binary_cross_entropy_with_logits
        real_score, fake_score = self.discriminator(real), self.discriminator(fake.detach())
        d_loss = bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))
        self.manual_step("discriminator", d_loss)
        with self.toggled_optimizer("generator"):
            score = self.discriminator(fake)
            g_loss = bce(score, torch.ones_like(score))
            self.manual_step("generator", g_loss)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def sample(self, noise: Tensor) -> Tensor:
        """Images from the averaged generator (evaluation mode)."""
        self.generator_ema.eval()
        with torch.no_grad():
            return self.generator_ema(noise)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        fake = self.sample(self.fixed_noise)
        self.log("fid", frechet_distance(digits("held_out")[0], fake))

    def sample_grid(self) -> tuple[Tensor, int]:
        """100 samples from fixed noise, 10 rows."""
        return self.sample(self.fixed_noise[:100]), 10

    def configure_optimizers(self) -> dict[str, Any]:
        betas = (self.hparams["beta1"], 0.999)
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.hparams["lr"], betas=betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams["lr"], betas=betas),
        }

    def configure_callbacks(self) -> list[Callback]:
        return [RecipeArtifacts(losses=("d_loss", "g_loss"), metric="fid")]


def main(args: list[str] | None = None) -> LightningCLI:
    """The recipe's command line (LightningCLI); ``args`` replaces ``sys.argv`` (tests)."""
    return LightningCLI(DCGAN, DigitsData, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
