"""A GAN on a 2-D Gaussian mixture (PacGAN's ring of 8 or grid of 25), measured as the PacGAN paper measures it.

Run from the repository root::

    python -m examples.mixture_gan fit --config examples/configs/ring_gaussians.yaml [--ckpt_path last]
    python -m examples.mixture_gan fit --config examples/configs/grid_gaussians.yaml

Each validation draws 2,500 samples from the generator's moving average and logs ``modes_covered`` and
``high_quality`` (:mod:`examples.mixtures`), and plots the samples over the target. The techniques, each a
hyperparameter (see the configs for the values used):

- *packing* (PacGAN, Lin et al., 2018): the discriminator judges ``pack`` samples at once, so a generator that
  repeats itself is easy to spot;
- a *zero-centred gradient penalty on real points* (R1, Mescheder et al., 2018), weight ``r1``;
- a *moving average* of the generator (``manualopt.EMA``), which makes every sample;
- a *learning rate held, then decayed linearly* over the last ``decay_fraction`` of the training steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from examples.cli import RecipeCLI, run
from examples.mixtures import MixtureData, coverage, make_mixture
from examples.networks import mlp
from manualopt import EMA, ManualOptimizationModule


class MixtureGAN(ManualOptimizationModule):
    """Non-saturating GAN with packing, optional R1, a generator EMA and a learning rate decayed to 0 at the end.

    Args:
        mixture: ``"ring"`` or ``"grid"`` (the measure's target; the data module draws the training points).
        noise: Dimension of the generator's Gaussian noise.
        width: Hidden units per layer, both networks.
        generator_layers: Hidden layers of the generator.
        discriminator_layers: Hidden layers of the discriminator.
        pack: Samples the discriminator judges together (1: no packing).
        r1: Weight of the R1 penalty (0: none).
        lr: Adam's learning rate at the start, both networks.
        betas: Adam's betas.
        decay_fraction: The share of training steps, at the end, over which the learning rate falls linearly to 0.
        ema_decay: Decay of the generator's moving average, per generator update.
        ema_warmup: Generator updates during which the average copies the generator.
    """

    loss_names = ("d_loss", "g_loss")
    quality_metric = "high_quality"

    def __init__(
        self,
        mixture: str = "ring",
        noise: int = 2,
        width: int = 128,
        generator_layers: int = 3,
        discriminator_layers: int = 2,
        pack: int = 2,
        r1: float = 0.0,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.5, 0.999),
        decay_fraction: float = 0.5,
        ema_decay: float = 0.999,
        ema_warmup: int = 100,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if pack < 1:
            raise ValueError(f"pack must be at least 1, not {pack}.")
        self.target = make_mixture(mixture)
        self.generator = mlp(noise, 2, width, generator_layers)
        self.discriminator = mlp(2 * pack, 1, width, discriminator_layers)
        self.generator_ema = EMA(self.generator, optimizer="generator", decay=ema_decay, warmup_updates=ema_warmup)
        self.last_samples: Tensor | None = None

    def judge(self, points: Tensor) -> Tensor:
        """Discriminator scores of ``points`` (N, 2), ``pack`` at a time: shape (N // pack, 1)."""
        pack = self.hparams["pack"]
        return self.discriminator(points[: len(points) // pack * pack].reshape(-1, 2 * pack))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real = batch[0]
        fake = self.generator(torch.randn(len(real), self.hparams["noise"], device=real.device))
        bce = nn.functional.binary_cross_entropy_with_logits
        r1 = self.hparams["r1"]
        real = real.requires_grad_(r1 > 0)
        real_score, fake_score = self.judge(real), self.judge(fake.detach())
        d_loss = bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))
        if r1 > 0:
            (gradient,) = torch.autograd.grad(real_score.sum(), real, create_graph=True)
            d_loss = d_loss + r1 / 2 * gradient.pow(2).sum(dim=1).mean() * self.hparams["pack"]
        self.manual_step("discriminator", d_loss)
        with self.toggled_optimizer("generator"):
            score = self.judge(fake)
            g_loss = bce(score, torch.ones_like(score))
            self.manual_step("generator", g_loss)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def sample(self, noise: Tensor) -> Tensor:
        """Points from the averaged generator."""
        with torch.no_grad():
            return self.generator_ema(noise)

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        self.last_samples = self.sample(batch[0]).cpu()
        measured = coverage(self.last_samples, self.target)
        self.log_dict({"modes_covered": float(measured.modes_covered), "high_quality": measured.high_quality})

    def draw_samples(self, path: Path) -> Path:
        """Scatter the last validation's samples over the target's 3-sigma circles."""
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(4.5, 4.5))
        for center in self.target.centers:
            axis.add_patch(plt.Circle(tuple(center.tolist()), 3 * self.target.std, color="black", fill=False, lw=0.6))
        if self.last_samples is not None:
            axis.scatter(*self.last_samples.T, s=1, alpha=0.4, label="samples")
        limit = float(self.target.centers.abs().max()) * 1.3
        axis.set_xlim(-limit, limit)
        axis.set_ylim(-limit, limit)
        axis.set_aspect("equal")
        axis.set_title(f"{self.target.name}: circles of 3 standard deviations")
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=90)
        plt.close(figure)
        return path

    def configure_optimizers(self) -> dict[str, Any]:
        total = max(1, int(self.trainer.estimated_stepping_batches))
        decay_steps = max(1, int(total * self.hparams["decay_fraction"]))

        def factor(step: int) -> float:
            return min(1.0, max(0.0, (total - step) / decay_steps))

        optimizers = {}
        for name, module in (("generator", self.generator), ("discriminator", self.discriminator)):
            optimizer = torch.optim.Adam(module.parameters(), lr=self.hparams["lr"], betas=self.hparams["betas"])
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            optimizers[name] = {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return optimizers


def main(args: list[str] | None = None) -> RecipeCLI:
    """The recipe's command line; ``args`` replaces ``sys.argv[1:]``."""
    return run(MixtureGAN, MixtureData, args)


if __name__ == "__main__":
    main()
