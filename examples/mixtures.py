"""2-D Gaussian mixtures for mode-collapse tests, and the mode-coverage measure of the PacGAN paper.

Two mixtures, as in PacGAN (Lin et al., 2018) and VEEGAN (Srivastava et al., 2017):

- ``ring``: 8 Gaussians of standard deviation 0.01 with centres evenly spaced on a circle of radius 1;
- ``grid``: 25 Gaussians of standard deviation 0.05 with centres on ``{-4, -2, 0, 2, 4}^2``.

The measure draws 2,500 samples. A sample is *high quality* when it lies within 3 standard deviations of its nearest
mode centre (the modes are isotropic, so this is the Mahalanobis distance); a mode is *covered* when at least one
high-quality sample has it as its nearest mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

EVALUATION_SAMPLES = 2500
HIGH_QUALITY_SIGMAS = 3.0


@dataclass(frozen=True)
class Mixture:
    """An equal-weight mixture of isotropic 2-D Gaussians.

    Attributes:
        name: ``"ring"`` or ``"grid"``.
        centers: The mode centres, shape (modes, 2).
        std: The standard deviation of every mode, along each axis.
    """

    name: str
    centers: Tensor
    std: float

    @property
    def modes(self) -> int:
        """The number of modes."""
        return len(self.centers)

    def sample(self, count: int, generator: torch.Generator | None = None) -> Tensor:
        """``count`` points of the mixture, shape (count, 2)."""
        modes = torch.randint(self.modes, (count,), generator=generator)
        return self.centers[modes] + self.std * torch.randn(count, 2, generator=generator)


def ring(modes: int = 8, radius: float = 1.0, std: float = 0.01) -> Mixture:
    """PacGAN's ring: ``modes`` centres at angles ``2 pi k / modes`` on a circle (no centre repeated)."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    return Mixture("ring", (torch.stack([angles.cos(), angles.sin()], dim=1) * radius).float(), std)


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> Mixture:
    """PacGAN's grid: ``side**2`` centres on ``{-4, -2, 0, 2, 4}^2`` for the defaults."""
    axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
    return Mixture("grid", torch.cartesian_prod(axis, axis), std)


MIXTURES = {"ring": ring, "grid": grid}


def make_mixture(name: str) -> Mixture:
    """The mixture called ``name`` (``"ring"`` or ``"grid"``)."""
    if name not in MIXTURES:
        raise ValueError(f"Unknown mixture {name!r}; choose one of {sorted(MIXTURES)}.")
    return MIXTURES[name]()


@dataclass(frozen=True)
class Coverage:
    """The PacGAN measures of a set of samples.

    Attributes:
        modes_covered: Modes that are the nearest mode of at least one high-quality sample.
        high_quality: The share of samples within 3 standard deviations of their nearest mode, in [0, 1].
    """

    modes_covered: int
    high_quality: float


def coverage(points: Tensor, target: Mixture) -> Coverage:
    """Measure ``points`` (shape (N, 2)) against ``target`` as PacGAN does (use N = 2,500 for its numbers)."""
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"Expected a non-empty batch of 2-D points, shape (N, 2); got {tuple(points.shape)}.")
    distance, nearest = torch.cdist(points.double(), target.centers.double()).min(dim=1)
    good = distance <= HIGH_QUALITY_SIGMAS * target.std
    covered = torch.bincount(nearest[good], minlength=target.modes) > 0
    return Coverage(modes_covered=int(covered.sum()), high_quality=float(good.double().mean()))


class MixtureData(pl.LightningDataModule):
    """Training points of a mixture, drawn once per run from a seeded generator; validation batches are noise.

    Args:
        mixture: ``"ring"`` or ``"grid"``.
        samples: Training points per epoch (a fixed, seeded draw).
        batch_size: Points per training batch.
        noise: Dimension of the generator's noise, for the validation batch of ``EVALUATION_SAMPLES`` noise vectors.
        seed: Seed of the training draw.
    """

    def __init__(
        self, mixture: str = "ring", samples: int = 32768, batch_size: int = 256, noise: int = 2, seed: int = 0
    ) -> None:
        super().__init__()
        self.target = make_mixture(mixture)
        self.samples, self.batch_size, self.noise, self.seed = samples, batch_size, noise, seed

    def train_dataloader(self) -> DataLoader[Any]:
        points = self.target.sample(self.samples, torch.Generator().manual_seed(self.seed))
        return DataLoader(TensorDataset(points), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader[Any]:
        noise = torch.randn(EVALUATION_SAMPLES, self.noise, generator=torch.Generator().manual_seed(1))
        return DataLoader(TensorDataset(noise), batch_size=EVALUATION_SAMPLES)
