"""Conditional GAN on the bundled 8x8 digits: ask for a class, get that digit.

Run from the repository root::

    python -m examples.cgan_digits fit --config examples/configs/cgan_digits.yaml [--ckpt_path last]

The generator and the discriminator both see the class: the generator as a one-hot code beside its noise, the
discriminator as the class whose score it reads. Each validation logs ``fid`` and ``class_accuracy``, how often the
digits classifier (:mod:`examples.classifier`) reads the class a sample was generated for, and writes a grid with one
row per class.
"""

from __future__ import annotations

from torch import Tensor

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
        final_lr_fraction: The learning rate at the end, as a fraction of ``lr``.
        r1: Weight of the R1 penalty on the discriminator (0: none).
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
        final_lr_fraction: float = 1.0,
        r1: float = 0.0,
        ema_decay: float = 0.99,
        ema_warmup: int = 50,
        samples: int = 1437,
    ) -> None:
        super().__init__(noise, lr, (beta1, 0.999), final_lr_fraction, ema_decay, ema_warmup, samples)
        self.save_hyperparameters()
        self.r1 = r1
        self.generator = ConditionalGenerator(noise, width)
        self.discriminator = ConditionalDiscriminator(width)
        self.average_generator()

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        real, labels = batch
        fake = self.generator(self.noise_like(real), labels)
        d_loss = discriminator_loss(self.discriminator, real, fake, labels, r1=self.r1)
        self.manual_step("discriminator", d_loss)
        with self.toggled_optimizer("generator"):
            g_loss = generator_loss(self.discriminator, fake, labels)
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
