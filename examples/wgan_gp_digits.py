"""WGAN-GP on the bundled 8x8 digits: n critic updates per generator update, declared once with a StepSchedule.

Run: ``python examples/wgan_gp_digits.py fit --config examples/configs/wgan_gp_digits.yaml``; resume with
``--ckpt_path last``. The critic's loss holds a gradient penalty, a gradient of a gradient: ``manual_step`` back-
propagates it like any loss. Every batch makes one training step (the critic updates on each); the generator updates
on every n-th batch, and its EMA after each of its updates.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dcgan_digits import discriminator_network, generator_network
from digits import DigitsData, RecipeArtifacts, digits, frechet_distance

from manualopt import EMA, ManualOptimizationModule, StepSchedule


class WGANGP(ManualOptimizationModule):
    """Wasserstein GAN with gradient penalty (Gulrajani et al., 2017)."""

    def __init__(
        self,
        noise: int = 32,
        width: int = 32,
        n_critic: int = 5,
        penalty: float = 10.0,
        lr: float = 5e-4,
        ema_decay: float = 0.99,
        ema_warmup: int = 20,
        samples: int = 360,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator = generator_network(noise, width)
        self.critic = discriminator_network(width)
        self.schedule = StepSchedule.every(critic=1, generator=n_critic)
        self.generator_ema = EMA(self.generator, optimizer="generator", decay=ema_decay, warmup_updates=ema_warmup)
        self.register_buffer("fixed_noise", torch.randn(samples, noise, generator=torch.Generator().manual_seed(1)))

    def gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        """(|grad critic(x)| - 1)^2 at random points x between real and generated images."""
        mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        points = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.critic(points).sum(), points, create_graph=True)
        return (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], self.hparams["noise"], device=self.device))
        if self.schedule.due("critic"):
            wasserstein = self.critic(fake.detach()).mean() - self.critic(real).mean()
            penalty = self.gradient_penalty(real, fake.detach())
            self.manual_step("critic", wasserstein + self.hparams["penalty"] * penalty)
            self.log_dict({"critic_loss": wasserstein, "gradient_penalty": penalty}, prog_bar=True)
        if self.schedule.due("generator"):
            with self.toggled_optimizer("generator"):
                g_loss = -self.critic(fake).mean()
                self.manual_step("generator", g_loss)
            self.log("g_loss", g_loss, prog_bar=True)

    def sample(self, noise: Tensor) -> Tensor:
        """Images from the averaged generator (evaluation mode)."""
        self.generator_ema.eval()
        with torch.no_grad():
            return self.generator_ema(noise)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.log("fid", frechet_distance(digits("held_out")[0], self.sample(self.fixed_noise)))

    def sample_grid(self) -> tuple[Tensor, int]:
        """100 samples from fixed noise, 10 rows."""
        return self.sample(self.fixed_noise[:100]), 10

    def configure_optimizers(self) -> dict[str, Any]:
        betas = (0.0, 0.9)
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.hparams["lr"], betas=betas),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=self.hparams["lr"], betas=betas),
        }

    def configure_callbacks(self) -> list[Callback]:
        return [RecipeArtifacts(losses=("critic_loss", "g_loss"), metric="fid")]


def main(args: list[str] | None = None) -> LightningCLI:
    """The recipe's command line (LightningCLI); ``args`` replaces ``sys.argv`` (tests)."""
    return LightningCLI(WGANGP, DigitsData, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
