"""The generator and the {{ 'critic' if cookiecutter.variant == 'wgan-gp' else 'discriminator' }}: small convolutional networks for square images of any power-of-two size >= 8."""

from __future__ import annotations

import math

{% if cookiecutter.variant == 'conditional' -%}
import torch
from torch import Tensor, nn
{%- else -%}
from torch import nn
{%- endif %}


def upsamplings(image_size: int) -> int:
    """The number of 2x up- (or down-) samplings between 2x2 and ``image_size``.

    Raises:
        ValueError: ``image_size`` is not a power of two of at least 8.
    """
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two of at least 8 (8, 16, 32, 64, ...), not {image_size}.")
    return int(math.log2(image_size)) - 1


def generator_network(noise: int, width: int, image_size: int, channels: int) -> nn.Sequential:
    """Noise ``(N, noise)`` to images ``(N, channels, image_size, image_size)`` in [-1, 1].

    A linear layer makes a 2x2 map of ``width * 2**(k - 1)`` channels; each of the ``k`` transposed convolutions
    doubles the size and halves the channels, the last one to ``channels``.
    """
    steps = upsamplings(image_size)
    features = width * 2 ** (steps - 1)
    layers: list[nn.Module] = [
        nn.Linear(noise, features * 2 * 2),
        nn.Unflatten(1, (features, 2, 2)),
        nn.BatchNorm2d(features),
        nn.ReLU(),
    ]
    for _ in range(steps - 1):
        layers += [nn.ConvTranspose2d(features, features // 2, 4, stride=2, padding=1), nn.BatchNorm2d(features // 2)]
        layers.append(nn.ReLU())
        features //= 2
    layers += [nn.ConvTranspose2d(features, channels, 4, stride=2, padding=1), nn.Tanh()]
    return nn.Sequential(*layers)


def discriminator_network(width: int, image_size: int, channels: int, outputs: int = 1) -> nn.Sequential:
    """Images ``(N, channels, image_size, image_size)`` to ``outputs`` scores per image.

    Strided convolutions halve the size down to 2x2 and double the channels, starting from ``width``.
    """
    layers: list[nn.Module] = []
    features_in, features = channels, width
    for _ in range(upsamplings(image_size)):
        layers += [nn.Conv2d(features_in, features, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        features_in, features = features, features * 2
    layers += [nn.Flatten(), nn.Linear(features_in * 2 * 2, outputs)]
    return nn.Sequential(*layers)
{%- if cookiecutter.variant == 'conditional' %}


class ConditionalGenerator(nn.Module):
    """A generator that also reads the class to draw, as a one-hot code appended to the noise."""

    def __init__(self, noise: int, width: int, image_size: int, channels: int, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.net = generator_network(noise + classes, width, image_size, channels)

    def forward(self, noise: Tensor, labels: Tensor) -> Tensor:
        """Images of the classes ``labels`` (N,) from ``noise`` (N, noise)."""
        code = nn.functional.one_hot(labels, self.classes).to(noise.dtype)
        return self.net(torch.cat([noise, code], dim=1))


class ConditionalDiscriminator(nn.Module):
    """One score per class, read at the image's class: a projection discriminator in its simplest form."""

    def __init__(self, width: int, image_size: int, channels: int, classes: int) -> None:
        super().__init__()
        self.net = discriminator_network(width, image_size, channels, outputs=classes)

    def forward(self, images: Tensor, labels: Tensor) -> Tensor:
        """Scores (N, 1) of ``images`` as real images of the classes ``labels``."""
        return self.net(images).gather(1, labels[:, None])
{%- endif %}
