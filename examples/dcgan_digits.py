"""DCGAN on scikit-learn's bundled 8x8 handwritten digits, sampled from a moving average of the generator.

Run from the repository root::

    python -m examples.dcgan_digits fit --config examples/configs/dcgan_digits.yaml [--ckpt_path last]

The discriminator and the generator update once per batch, each with one ``manual_step`` by name; the generator's
update runs inside ``self.toggled_optimizer("generator")``, so no discriminator gradients are computed for it. Each
validation logs ``fid`` (:mod:`examples.frechet`) and writes a grid of samples.

What brings it near the floor, each a hyperparameter: an R1 penalty on the discriminator (Mescheder et al., 2018), a
moving average of the generator (``manualopt.EMA``) that makes every sample, and a learning rate held for the first
half of the epochs, then decayed linearly to 0.
"""

from __future__ import annotations

from torch import Tensor

from examples.cli import RecipeCLI, run
from examples.digits_data import DigitsData
from examples.digits_gan import DigitsGAN, discriminator_loss, generator_loss
from examples.networks import discriminator_network, generator_network


class DCGAN(DigitsGAN):
    """The discriminator and the generator update once per batch; an EMA of the generator makes the samples.

    Args:
        noise: Dimension of the generator's noise.
        width: Channels of the networks' first (discriminator) or last (generator) convolution.
        lr: Adam's learning rate at the start, for both networks.
        beta1: Adam's first beta (the second is 0.999).
        decay_fraction: The share of epochs, at the end, over which the learning rate falls linearly to 0.
        r1: Weight of the R1 penalty on the discriminator (0: none).
        ema_decay: Decay of the generator's moving average, per generator update.
        ema_warmup: Generator updates during which the average copies the generator.
        samples: Size of the fixed noise buffer.
    """

    def __init__(
        self,
        noise: int = 32,
        width: int = 32,
        lr: float = 1e-3,
        beta1: float = 0.5,
        decay_fraction: float = 0.5,
        r1: float = 0.1,
        ema_decay: float = 0.99,
        ema_warmup: int = 50,
        samples: int = 1437,
    ) -> None:
        super().__init__(noise, lr, (beta1, 0.999), decay_fraction, ema_decay, ema_warmup, samples)
        self.save_hyperparameters()
        self.r1 = r1
        self.generator = generator_network(noise, width)
        self.discriminator = discriminator_network(width)
        self.average_generator()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real = batch[0]
        fake = self.generator(self.noise_like(real))
        d_loss = discriminator_loss(self.discriminator, real, fake, r1=self.r1)
        self.manual_step("discriminator", d_loss)
        with self.toggled_optimizer("generator"):
            g_loss = generator_loss(self.discriminator, fake)
            self.manual_step("generator", g_loss)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)


def main(args: list[str] | None = None) -> RecipeCLI:
    """The recipe's command line; ``args`` replaces ``sys.argv[1:]``."""
    return run(DCGAN, DigitsData, args)


if __name__ == "__main__":
    main()
