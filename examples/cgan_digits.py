"""Conditional GAN on the bundled 8x8 digits: ask for a class, get that digit.

Run: ``python examples/cgan_digits.py fit --config examples/configs/cgan_digits.yaml``; resume with
``--ckpt_path last``. The generator and the discriminator both see the class as a one-hot code. Each validation
writes a grid with one row per class and logs ``fid`` and ``class_accuracy``: how often the digits classifier of
``digits.py`` reads the class the sample was generated for.
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

from dcgan_digits import discriminator_network, generator_network
from digits import DigitsData, RecipeArtifacts, accuracy, digits, frechet_distance

from manualopt import EMA, ManualOptimizationModule

CLASSES = 10


class ConditionalGenerator(nn.Module):
    def __init__(self, noise: int, width: int) -> None:
        super().__init__()
        self.net = generator_network(noise + CLASSES, width)

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        return self.net(torch.cat([noise, nn.functional.one_hot(labels, CLASSES).float()], dim=1))


class ConditionalDiscriminator(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = discriminator_network(width, outputs=CLASSES)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        # a projection discriminator in its simplest form: one logit per class, read at the asked class
        return self.net(images).gather(1, labels[:, None])


class ConditionalGAN(ManualOptimizationModule):
    def __init__(
        self,
        noise: int = 32,
        width: int = 32,
        lr: float = 1e-3,
        beta1: float = 0.5,
        ema_decay: float = 0.99,
        ema_warmup: int = 50,
        samples: int = 360,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator = ConditionalGenerator(noise, width)
        self.discriminator = ConditionalDiscriminator(width)
        self.generator_ema = EMA(self.generator, optimizer="generator", decay=ema_decay, warmup_updates=ema_warmup)
        self.register_buffer("fixed_noise", torch.randn(samples, noise, generator=torch.Generator().manual_seed(1)))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real, labels = batch
        fake = self.generator(torch.randn(real.shape[0], self.hparams["noise"], device=self.device), labels)
        bce = nn.functional.binary_cross_entropy_with_logits
        real_score, fake_score = self.discriminator(real, labels), self.discriminator(fake.detach(), labels)
        d_loss = bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))
        self.manual_step("discriminator", d_loss)
        with self.toggled_optimizer("generator"):
            score = self.discriminator(fake, labels)
            g_loss = bce(score, torch.ones_like(score))
            self.manual_step("generator", g_loss)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def sample(self, noise: Tensor, labels: Tensor) -> Tensor:
        """Images of the asked classes from the averaged generator (evaluation mode)."""
        self.generator_ema.eval()
        with torch.no_grad():
            return self.generator_ema(noise, labels)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        labels = batch[0]
        fake = self.sample(self.fixed_noise[: len(labels)], labels)
        self.log("fid", frechet_distance(digits("held_out")[0], fake))
        self.log("class_accuracy", accuracy(fake, labels))

    def sample_grid(self) -> tuple[Tensor, int]:
        """One row per class, 10 samples each."""
        labels = torch.arange(CLASSES, device=self.device).repeat_interleave(10)
        return self.sample(self.fixed_noise[:100], labels), CLASSES

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
    return LightningCLI(ConditionalGAN, DigitsData, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
