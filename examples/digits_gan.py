"""The base class of the digits GANs: fixed noise, averaged-generator sampling, validation, pictures, optimizers.

A subclass builds ``self.generator`` and its discriminator (or critic), writes ``training_step`` and, for a
conditional generator, sets ``conditional = True``. Everything else is shared:

- an :class:`~manualopt.EMA` of the generator, updated after each of its optimizer's updates, makes every sample;
- a fixed noise buffer (one vector per validation sample) makes successive validations comparable;
- validation logs ``fid``, the Fréchet distance of the samples to the held-out digits (:mod:`examples.frechet`);
- ``draw_samples`` writes a 10x10 grid (one row per class for a conditional generator);
- ``configure_optimizers`` gives both networks Adam with a learning rate held, then decayed linearly to 0 over the
  last ``decay_fraction`` of the run's epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from examples.artifacts import save_grid
from examples.digits_data import CLASSES
from examples.frechet import DigitsFrechetDistance, frechet_floor
from manualopt import EMA, ManualOptimizationModule


class DigitsGAN(ManualOptimizationModule):
    """Shared machinery of the digits GANs (see the module docstring).

    Args:
        noise: Dimension of the generator's noise.
        lr: Adam's learning rate at the start, for both networks.
        betas: Adam's betas, for both networks.
        decay_fraction: The share of epochs, at the end, over which the learning rate falls linearly to 0 (0: constant).
        ema_decay: Decay of the generator's moving average, per generator update.
        ema_warmup: Generator updates during which the average copies the generator.
        samples: Size of the fixed noise buffer: the most samples a validation can draw.
    """

    conditional = False
    discriminator_name = "discriminator"
    loss_names: tuple[str, ...] = ("d_loss", "g_loss")
    quality_metric = "fid"
    log_quality = True

    generator: nn.Module
    fixed_noise: Tensor

    def __init__(
        self,
        noise: int,
        lr: float,
        betas: tuple[float, float],
        decay_fraction: float,
        ema_decay: float,
        ema_warmup: int,
        samples: int,
    ) -> None:
        super().__init__()
        self.noise, self.lr, self.betas, self.decay_fraction = noise, lr, betas, decay_fraction
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        self.register_buffer("fixed_noise", torch.randn(samples, noise, generator=torch.Generator().manual_seed(1)))
        self._frechet: DigitsFrechetDistance | None = None

    def discriminator_module(self) -> nn.Module:
        """The network that ``discriminator_name``'s optimizer trains."""
        module = getattr(self, self.discriminator_name)
        assert isinstance(module, nn.Module)
        return module

    def average_generator(self) -> None:
        """Call at the end of a subclass's ``__init__``, once ``self.generator`` exists."""
        self.generator_ema = EMA(
            self.generator, optimizer="generator", decay=self.ema_decay, warmup_updates=self.ema_warmup
        )

    def noise_like(self, real: Tensor) -> Tensor:
        """A batch of fresh noise for a batch of real images."""
        return torch.randn(real.shape[0], self.noise, device=real.device)

    def sample(self, noise: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images from the averaged generator, in evaluation mode; ``labels`` are the classes of a conditional one."""
        self.generator_ema.eval()
        with torch.no_grad():
            return self.generator_ema(noise, labels) if self.conditional else self.generator_ema(noise)

    def setup(self, stage: str) -> None:
        """Extract the held-out features once (training the feature classifier first, if this process has none)."""
        if self._frechet is None:
            self._frechet = DigitsFrechetDistance()

    def quality_floor(self) -> float:
        """The Fréchet distance between the held-out and the training digits."""
        return frechet_floor()

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        """Sample one image per label of the batch from the fixed noise and log their quality."""
        labels = batch[0]
        if len(labels) > len(self.fixed_noise):
            raise ValueError(f"A validation batch of {len(labels)} labels needs samples >= {len(labels)}.")
        fake = self.sample(self.fixed_noise[: len(labels)], labels)
        if self._frechet is None:
            self._frechet = DigitsFrechetDistance()
        self.log("fid", self._frechet(fake), batch_size=len(labels))
        self.log_sample_metrics(fake, labels)

    def log_sample_metrics(self, fake: Tensor, labels: Tensor) -> None:
        """Log more measures of the validation samples (subclasses)."""

    def draw_samples(self, path: Path) -> Path:
        """A 10x10 grid of samples from the fixed noise: one row per class for a conditional generator."""
        labels = torch.arange(CLASSES, device=self.device).repeat_interleave(10)
        return save_grid(self.sample(self.fixed_noise[:100], labels), path, rows=10)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam for ``generator`` and the discriminator, each with the learning rate held, then decayed per epoch."""
        epochs = max(1, self.trainer.max_epochs or 1)
        decay_epochs = self.decay_fraction * epochs

        def factor(epoch: int) -> float:
            if decay_epochs <= 0:
                return 1.0
            return min(1.0, max(0.0, (epochs - epoch) / decay_epochs))

        optimizers = {}
        for name, module in (("generator", self.generator), (self.discriminator_name, self.discriminator_module())):
            optimizer = torch.optim.Adam(module.parameters(), lr=self.lr, betas=self.betas)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            optimizers[name] = {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        return optimizers


def discriminator_loss(discriminator: Any, real: Tensor, fake: Tensor, *condition: Tensor, r1: float = 0.0) -> Tensor:
    """The non-saturating discriminator loss (real scores 1, generated 0) on detached samples.

    With ``r1 > 0`` it adds the R1 penalty of Mescheder et al. (2018): ``r1 / 2`` times the squared norm of the
    discriminator's gradient at the real images, which keeps the discriminator from growing steep on the data.
    """
    bce = nn.functional.binary_cross_entropy_with_logits
    if r1 > 0:
        real = real.detach().requires_grad_(True)
    real_score, fake_score = discriminator(real, *condition), discriminator(fake.detach(), *condition)
    loss = bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))
    if r1 > 0:
        (gradient,) = torch.autograd.grad(real_score.sum(), real, create_graph=True)
        loss = loss + r1 / 2 * gradient.pow(2).flatten(1).sum(dim=1).mean()
    return loss


def generator_loss(discriminator: Any, fake: Tensor, *condition: Tensor) -> Tensor:
    """The non-saturating generator loss: generated samples should score 1."""
    score = discriminator(fake, *condition)
    return nn.functional.binary_cross_entropy_with_logits(score, torch.ones_like(score))
