"""The digits classifier whose penultimate features define the recipes' Fréchet distance.

Nothing may be downloaded, so there are no Inception weights: :func:`feature_classifier` trains a small convolutional
classifier on the training split, deterministically (fixed seed, its own random generator), once per process, before
any training starts. It reads the held-out digits right in about 98% of cases.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from examples.digits_data import CLASSES, digits


class DigitsClassifier(nn.Module):
    """A small convolutional digits classifier; its 64 penultimate features are the Fréchet distance's space."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, self.num_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.num_features, CLASSES)

    def features(self, images: Tensor) -> Tensor:
        """The 64 features of images in [-1, 1], shape (N, 1, 8, 8)."""
        return self.body(images)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits."""
        return self.head(self.body(images))


@functools.cache
def feature_classifier(epochs: int = 40, seed: int = 0) -> DigitsClassifier:
    """The classifier trained on the training split (a few CPU seconds), frozen, in evaluation mode; one per process.

    Training does not touch the global random state, so calling this never changes what a recipe draws next.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitsClassifier()
    images, labels = digits("train")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(epochs):
            for index in torch.randperm(len(labels), generator=generator).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(images[index]), labels[index]).backward()
                optimizer.step()
    return model.eval().requires_grad_(False)


def class_accuracy(images: Tensor, labels: Tensor) -> float:
    """How often the classifier reads ``labels`` in ``images`` (e.g. samples generated for those classes)."""
    with torch.no_grad():
        predicted = feature_classifier()(images.detach().cpu().float()).argmax(dim=1)
    return float((predicted == labels.cpu()).float().mean())
