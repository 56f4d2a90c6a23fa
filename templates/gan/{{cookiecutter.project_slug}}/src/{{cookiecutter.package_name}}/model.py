{%- set wgan = cookiecutter.variant == 'wgan-gp' -%}
{%- set conditional = cookiecutter.variant == 'conditional' -%}
{%- set ema = cookiecutter.ema -%}
{%- set critic = 'critic' if wgan else 'discriminator' -%}
"""The GAN: {{ {'dcgan': 'a DCGAN', 'wgan-gp': 'a Wasserstein GAN with gradient penalty (WGAN-GP)', 'conditional': 'a conditional GAN'}[cookiecutter.variant] }}{{ ' with an EMA of the generator' if ema else '' }}.

It inherits ``ManualOptimizationModule`` and steps each optimizer with one ``manual_step`` in ``training_step``, so
``trainer.global_step``, ``max_steps`` and ``ModelCheckpoint(every_n_train_steps=...)`` count training steps (one per
batch), not optimizer calls.
"""

from __future__ import annotations

from typing import Any

import torch
from manualopt import {{ 'EMA, ' if ema else '' }}ManualOptimizationModule{{ ', StepSchedule' if wgan else '' }}
from torch import Tensor{{ '' if wgan else ', nn' }}
{% if conditional %}
from {{ cookiecutter.package_name }}.networks import ConditionalDiscriminator, ConditionalGenerator
{%- else %}
from {{ cookiecutter.package_name }}.networks import discriminator_network, generator_network
{%- endif %}


class GAN(ManualOptimizationModule):
    """{{ {'dcgan': 'A DCGAN: the discriminator and the generator update once per batch', 'wgan-gp': 'A WGAN-GP: the critic updates on every batch, the generator on every n_critic-th', 'conditional': 'A conditional GAN: both networks see the class; each updates once per batch'}[cookiecutter.variant] }}.

    Args:
        image_size: The side of the square images (set from the data by the command line).
        channels: Colour channels of the images (set from the data by the command line).
{%- if conditional %}
        classes: Number of classes (set from the data by the command line).
{%- endif %}
        noise: Length of the generator's noise vector.
        width: Channels of the first convolution; the networks double or halve it at each 2x step.
        lr: Adam's learning rate, for both networks.
{%- if wgan %}
        n_critic: Critic updates per generator update.
        penalty: Weight of the gradient penalty in the critic's loss.
{%- else %}
        beta1: Adam's first beta, for both networks.
{%- endif %}
{%- if ema %}
        ema_decay: Decay of the generator's exponential moving average (EMA), used for sampling.
        ema_warmup: Generator updates during which the EMA copies the generator instead of averaging.
{%- endif %}
{%- if not conditional %}
        grid_rows: Rows of the sample grids, 8 samples each.
{%- endif %}
    """

    def __init__(
        self,
        image_size: int = 8,
        channels: int = 1,
{%- if conditional %}
        classes: int = 10,
{%- endif %}
        noise: int = 32,
        width: int = 32,
{%- if wgan %}
        lr: float = 5e-4,
        n_critic: int = 5,
        penalty: float = 10.0,
{%- else %}
        lr: float = 1e-3,
        beta1: float = 0.5,
{%- endif %}
{%- if ema %}
        ema_decay: float = 0.99,
        ema_warmup: int = 50,
{%- endif %}
{%- if not conditional %}
        grid_rows: int = 8,
{%- endif %}
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
{%- if conditional %}
        self.generator = ConditionalGenerator(noise, width, image_size, channels, classes)
        self.discriminator = ConditionalDiscriminator(width, image_size, channels, classes)
{%- else %}
        self.generator = generator_network(noise, width, image_size, channels)
        self.{{ critic }} = discriminator_network(width, image_size, channels)
{%- endif %}
{%- if wgan %}
        # which optimizers update on which batch: the critic on every batch, the generator on every n_critic-th
        self.schedule = StepSchedule.every(critic=1, generator=n_critic)
{%- endif %}
{%- if ema %}
        # averaged after each real update of the "generator" optimizer (not after each global step)
        self.generator_ema = EMA(self.generator, optimizer="generator", decay=ema_decay, warmup_updates=ema_warmup)
{%- endif %}
        # the fixed inputs of the sample grids: {{ 'one row of 8 per class' if conditional else 'grid_rows rows of 8' }}
        rows = {{ 'classes' if conditional else 'grid_rows' }}
        self.register_buffer("fixed_noise", torch.randn(rows * 8, noise, generator=torch.Generator().manual_seed(0)))
{%- if conditional %}
        self.register_buffer("fixed_labels", torch.arange(rows).repeat_interleave(8))
{%- endif %}
{%- if wgan %}

    def gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        """``(|grad critic(x)| - 1)^2`` averaged over random points ``x`` between real and generated images."""
        mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        points = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.critic(points).sum(), points, create_graph=True)
        return (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        """One training step: a critic update on every batch, a generator update when the schedule says so."""
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], self.hparams["noise"], device=self.device))
        if self.schedule.due("critic"):
            wasserstein = self.critic(fake.detach()).mean() - self.critic(real).mean()
            penalty = self.gradient_penalty(real, fake.detach())
            self.manual_step("critic", wasserstein + self.hparams["penalty"] * penalty)
            self.log_dict({"critic_loss": wasserstein, "gradient_penalty": penalty}, prog_bar=True)
        if self.schedule.due("generator"):
            # only the generator's parameters collect gradients through the critic
            with self.toggled_optimizer("generator"):
                g_loss = -self.critic(fake).mean()
                self.manual_step("generator", g_loss)
            self.log("g_loss", g_loss, prog_bar=True)
{%- else %}

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        """One training step: a discriminator update, then a generator update."""
{%- if conditional %}
        real, labels = batch
        fake = self.generator(torch.randn(real.shape[0], self.hparams["noise"], device=self.device), labels)
        real_score, fake_score = self.discriminator(real, labels), self.discriminator(fake.detach(), labels)
{%- else %}
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], self.hparams["noise"], device=self.device))
        real_score, fake_score = self.discriminator(real), self.discriminator(fake.detach())
{%- endif %}
        bce = nn.functional.binary_cross_entropy_with_logits
        d_loss = bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))
        self.manual_step("discriminator", d_loss)
        # only the generator's parameters collect gradients through the discriminator
        with self.toggled_optimizer("generator"):
            score = self.discriminator(fake{{ ', labels' if conditional else '' }})
            g_loss = bce(score, torch.ones_like(score))
            self.manual_step("generator", g_loss)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)
{%- endif %}

    def sample(self, noise: Tensor{{ ', labels: Tensor' if conditional else '' }}) -> Tensor:
        """Images in [-1, 1] from {{ 'the averaged generator (EMA)' if ema else 'the generator' }} in evaluation mode{{ ', of the classes ``labels``' if conditional else '' }}."""
{%- if ema %}
        self.generator_ema.eval()
        with torch.no_grad():
            return self.generator_ema(noise{{ ', labels' if conditional else '' }})
{%- else %}
        training = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                return self.generator(noise{{ ', labels' if conditional else '' }})
        finally:
            self.generator.train(training)
{%- endif %}

    def sample_grid(self) -> tuple[Tensor, int]:
        """Samples from fixed noise for a picture, and its number of rows{{ ' (one per class)' if conditional else '' }}."""
{%- if conditional %}
        return self.sample(self.fixed_noise, self.fixed_labels), self.hparams["classes"]
{%- else %}
        return self.sample(self.fixed_noise), self.hparams["grid_rows"]
{%- endif %}

    def configure_optimizers(self) -> dict[str, Any]:
        """One Adam per network, named; ``manual_step`` and the logs use the names."""
{%- if wgan %}
        betas = (0.0, 0.9)
{%- else %}
        betas = (self.hparams["beta1"], 0.999)
{%- endif %}
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.hparams["lr"], betas=betas),
            "{{ critic }}": torch.optim.Adam(self.{{ critic }}.parameters(), lr=self.hparams["lr"], betas=betas),
        }
