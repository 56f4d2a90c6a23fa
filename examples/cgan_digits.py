"""Conditional GAN on the bundled 8x8 digits: ask for a class, get that digit.

Run from the repository root::

    python -m examples.cgan_digits fit --config examples/configs/cgan_digits.yaml [--ckpt_path last]

The generator and the discriminator both see the class: the generator as a one-hot code beside its noise, the
discriminator as the class whose score it reads. Each validation logs ``fid`` and ``class_accuracy``, how often the
digits classifier (:mod:`examples.classifier`) reads the class a sample was generated for, and writes a grid with one
row per class.

Beside the DCGAN recipe's R1 penalty, generator EMA and decaying learning rate, the discriminator has an auxiliary
classifier (AC-GAN, Odena et al., 2017): it learns to read the class of real digits, and the generator is trained to
make digits it reads as asked.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.functional import cross_entropy

from examples.classifier import class_accuracy
from examples.cli import RecipeCLI, run
from examples.digits_data import DigitsData
from examples.digits_gan import DigitsGAN, discriminator_loss, generator_loss
from examples.networks import ConditionalDiscriminator, ConditionalGenerator


class ConditionalGAN(DigitsGAN):
    """A class-conditional DCGAN: one ``manual_step`` per network and batch; an EMA of the generator samples.

    Args:
        noise: Dimension of the generator's noise.
        width: Channels of the networks' first (discriminator) or last (generator) convolution.
        lr: Adam's learning rate at the start, for both networks.
        beta1: Adam's first beta (the second is 0.999).
        decay_fraction: The share of epochs, at the end, over which the learning rate falls linearly to 0.
        r1: Weight of the R1 penalty on the discriminator (0: none).
        aux_weight: Weight of the auxiliary classification losses (AC-GAN): the discriminator learns to read the
            class of real digits, the generator to make digits it reads as asked (0: none).
        ema_decay: Decay of the generator's moving average, per generator update.
        ema_warmup: Generator updates during which the average copies the generator.
        samples: Size of the fixed noise buffer.
    """

    conditional = True

    def __init__(
        self,
        noise: int = 32,
        width: int = 32,
        lr: float = 1e-3,
        beta1: float = 0.5,
        decay_fraction: float = 0.5,
        r1: float = 0.1,
        aux_weight: float = 1.0,
        ema_decay: float = 0.99,
        ema_warmup: int = 50,
        samples: int = 1437,
    ) -> None:
        super().__init__(noise, lr, (beta1, 0.999), decay_fraction, ema_decay, ema_warmup, samples)
        self.save_hyperparameters()
        self.r1, self.aux_weight = r1, aux_weight
        self.generator = ConditionalGenerator(noise, width)
        self.discriminator = ConditionalDiscriminator(width, auxiliary=aux_weight > 0)
        self.average_generator()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real, labels = batch
        fake = self.generator(self.noise_like(real), labels)
        d_loss = discriminator_loss(self.discriminator, real, fake, labels, r1=self.r1)
        if self.aux_weight > 0:
            d_loss = d_loss + self.aux_weight * cross_entropy(self.discriminator.classify(real), labels)
        self.manual_step("discriminator", d_loss)
        with self.toggled_optimizer("generator"):
            g_loss = generator_loss(self.discriminator, fake, labels)
            if self.aux_weight > 0:
                g_loss = g_loss + self.aux_weight * cross_entropy(self.discriminator.classify(fake), labels)
            self.manual_step("generator", g_loss)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss}, prog_bar=True)

    def log_sample_metrics(self, fake: Tensor, labels: Tensor) -> None:
        """Log how often the classifier reads the asked class."""
        self.log("class_accuracy", class_accuracy(fake, labels), batch_size=len(labels))


def main(args: list[str] | None = None) -> RecipeCLI:
    """The recipe's command line; ``args`` replaces ``sys.argv[1:]``."""
    return run(ConditionalGAN, DigitsData, args)


if __name__ == "__main__":
    main()
