"""The Fréchet distance of generated digits to the held-out digits, in the feature classifier's space.

It is torchmetrics' ``FrechetInceptionDistance`` with the digits classifier of :mod:`examples.classifier` as its
feature extractor, used as torchmetrics intends for a fixed reference set: ``reset_real_features=False``, the held-out
features added once, and only the generated features reset between measurements.

Lower is better. The *floor* is the distance between the 360 held-out and the 1,437 training digits: what a generator
that reproduced the data distribution would reach with as many samples as the training split has.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from examples.classifier import DigitsClassifier, feature_classifier
from examples.digits_data import digits


class _ClassifierFeatures(nn.Module):
    """The feature extractor torchmetrics calls: images in [-1, 1] to the classifier's 64 features."""

    num_features = DigitsClassifier.num_features

    def __init__(self, classifier: DigitsClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier.features(images.float().clamp(-1, 1))


class DigitsFrechetDistance:
    """Fréchet distance to a fixed set of real digits (by default the held-out split), computed many times.

    The real features are extracted once, when the object is made. Each :meth:`__call__` resets the generated
    features only, adds the given images and computes the distance.

    Args:
        real: The reference images, shape (N, 1, 8, 8) in [-1, 1]; default: the held-out split.
    """

    def __init__(self, real: Tensor | None = None) -> None:
        # Each process measures the samples it drew: no gathering across processes (under DDP it would be a
        # collective that only the processes measuring at that moment join).
        self.metric = FrechetInceptionDistance(
            feature=_ClassifierFeatures(feature_classifier()), reset_real_features=False, sync_on_compute=False
        )
        self.metric.update(digits("held_out")[0] if real is None else real.detach().cpu(), real=True)

    def __call__(self, generated: Tensor) -> float:
        """The distance between ``generated`` (shape (M, 1, 8, 8), M >= 2) and the reference images."""
        self.metric.reset()
        with torch.no_grad():
            self.metric.update(generated.detach().cpu(), real=False)
            return float(self.metric.compute())


@functools.cache
def frechet_floor() -> float:
    """The distance between the held-out and the training images: what a perfect generator could reach."""
    return DigitsFrechetDistance()(digits("train")[0])
