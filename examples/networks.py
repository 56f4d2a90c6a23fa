"""The networks of the recipes: small convolutional nets for 8x8 digits and multilayer perceptrons for 2-D points."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from examples.digits_data import CLASSES


def generator_network(noise: int, width: int) -> nn.Sequential:
    """Noise (N, noise) to images (N, 1, 8, 8) in [-1, 1]: a linear layer to 2x2, then two transposed convolutions."""
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


def discriminator_network(width: int, outputs: int = 1) -> nn.Sequential:
    """Images (N, 1, 8, 8) to ``outputs`` scores: two strided convolutions and a linear layer."""
    return nn.Sequential(
        nn.Conv2d(1, width, 4, stride=2, padding=1),  # 4x4
        nn.LeakyReLU(0.2),
        nn.Conv2d(width, width * 2, 4, stride=2, padding=1),  # 2x2
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(width * 2 * 2 * 2, outputs),
    )


class ConditionalGenerator(nn.Module):
    """The digits generator with the asked class appended to the noise as a one-hot code."""

    def __init__(self, noise: int, width: int) -> None:
        super().__init__()
        self.net = generator_network(noise + CLASSES, width)

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        """Images of classes ``labels`` (N,) from ``noise`` (N, noise)."""
        return self.net(torch.cat([noise, nn.functional.one_hot(labels, CLASSES).to(noise.dtype)], dim=1))


class ConditionalDiscriminator(nn.Module):
    """One score per class, read at the asked class (the simplest form of a projection discriminator).

    With ``auxiliary=True`` the same network also outputs class logits (:meth:`classify`), as the auxiliary
    classifier of AC-GAN (Odena et al., 2017) does.
    """

    def __init__(self, width: int, auxiliary: bool = False) -> None:
        super().__init__()
        self.net = discriminator_network(width, outputs=CLASSES * (2 if auxiliary else 1))

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        """Scores (N, 1) of ``images`` as real digits of classes ``labels``."""
        return self.net(images)[:, :CLASSES].gather(1, labels[:, None])

    def classify(self, images: Tensor) -> Tensor:
        """Class logits (N, 10) of the auxiliary classifier (``auxiliary=True`` only)."""
        outputs = self.net(images)
        if outputs.shape[1] != 2 * CLASSES:
            raise RuntimeError("This discriminator has no auxiliary classifier; build it with auxiliary=True.")
        return outputs[:, CLASSES:]


def mlp(inputs: int, outputs: int, width: int = 64, hidden_layers: int = 2) -> nn.Sequential:
    """A ReLU perceptron with ``hidden_layers`` hidden layers of ``width`` units."""
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(hidden_layers):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, outputs))
    return nn.Sequential(*layers)
