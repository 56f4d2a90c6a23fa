"""WGAN-GP on the bundled 8x8 digits: n critic updates per generator update, declared once with a StepSchedule.

Run from the repository root::

    python -m examples.wgan_gp_digits fit --config examples/configs/wgan_gp_digits.yaml [--ckpt_path last]

The critic's loss holds a gradient penalty, a gradient of a gradient: ``manual_step`` back-propagates it like any
loss. Every batch makes one training step (the critic updates on each); the generator updates on every n-th batch,
and its EMA after each of its updates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from examples.cli import RecipeCLI, run
from examples.digits_data import DigitsData
from examples.digits_gan import DigitsGAN
from examples.networks import discriminator_network, generator_network
from manualopt import StepSchedule


class WGANGP(DigitsGAN):
    """Wasserstein GAN with gradient penalty (Gulrajani et al., 2017).

    Args:
        noise: Dimension of the generator's noise.
        width: Channels of the networks' first (critic) or last (generator) convolution.
        n_critic: Critic updates per generator update.
        penalty: Weight of the gradient penalty.
        lr: Adam's learning rate at the start, for both networks.
        beta1: Adam's first beta.
        beta2: Adam's second beta.
        decay_fraction: The share of epochs, at the end, over which the learning rate falls linearly to 0.
        ema_decay: Decay of the generator's moving average, per generator update.
        ema_warmup: Generator updates during which the average copies the generator.
        samples: Size of the fixed noise buffer.
    """

    discriminator_name = "critic"
    loss_names = ("critic_loss", "g_loss")

    def __init__(
        self,
        noise: int = 32,
        width: int = 32,
        n_critic: int = 5,
        penalty: float = 10.0,
        lr: float = 5e-4,
        beta1: float = 0.0,
        beta2: float = 0.9,
        decay_fraction: float = 0.5,
        ema_decay: float = 0.99,
        ema_warmup: int = 20,
        samples: int = 1437,
    ) -> None:
        super().__init__(noise, lr, (beta1, beta2), decay_fraction, ema_decay, ema_warmup, samples)
        self.save_hyperparameters()
        self.penalty = penalty
        self.generator = generator_network(noise, width)
        self.critic = discriminator_network(width)
        self.schedule = StepSchedule.every(critic=1, generator=n_critic)
        self.average_generator()

    def gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        """(|grad critic(x)| - 1)^2 at random points x between real and generated images."""
        mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        points = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.critic(points).sum(), points, create_graph=True)
        return (gradient.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real = batch[0]
        fake = self.generator(self.noise_like(real))
        if self.schedule.due("critic"):
            wasserstein = self.critic(fake.detach()).mean() - self.critic(real).mean()
            penalty = self.gradient_penalty(real, fake.detach())
            self.manual_step("critic", wasserstein + self.penalty * penalty)
            self.log_dict({"critic_loss": wasserstein, "gradient_penalty": penalty}, prog_bar=True)
        if self.schedule.due("generator"):
            with self.toggled_optimizer("generator"):
                g_loss = -self.critic(fake).mean()
                self.manual_step("generator", g_loss)
            self.log("g_loss", g_loss, prog_bar=True)


def main(args: list[str] | None = None) -> RecipeCLI:
    """The recipe's command line; ``args`` replaces ``sys.argv[1:]``."""
    return run(WGANGP, DigitsData, args)


if __name__ == "__main__":
    main()
