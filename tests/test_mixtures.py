"""PacGAN's mode-coverage measure on hand-made samples with known answers (examples/mixtures.py)."""

from __future__ import annotations

import math

import pytest
import torch

from examples.mixtures import Mixture, coverage, grid, make_mixture, ring


def test_ring_and_grid_are_pacgans() -> None:
    target = ring()
    assert target.modes == 8
    assert target.std == 0.01
    assert torch.allclose(target.centers.norm(dim=1), torch.ones(8))
    assert torch.allclose(target.centers[2], torch.tensor([0.0, 1.0]), atol=1e-6)
    squares = grid()
    assert squares.modes == 25
    assert squares.std == 0.05
    assert sorted(set(squares.centers[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_all_samples_on_one_mode() -> None:
    target = ring()
    points = target.centers[3].repeat(2500, 1) + 0.001 * torch.randn(
        2500, 2, generator=torch.Generator().manual_seed(0)
    )
    measured = coverage(points, target)
    assert measured.modes_covered == 1
    assert measured.high_quality == 1.0


@pytest.mark.parametrize("make", [ring, grid])
def test_samples_spread_over_all_modes(make: type[Mixture]) -> None:
    target = make()
    points = target.centers.repeat(100, 1)
    measured = coverage(points, target)
    assert measured.modes_covered == target.modes
    assert measured.high_quality == 1.0


def test_half_the_samples_outside_three_sigma() -> None:
    target = ring()
    inside = target.centers.repeat(50, 1) + torch.tensor([2.9 * target.std, 0.0])
    outside = target.centers.repeat(50, 1) + torch.tensor([0.0, 3.1 * target.std])
    measured = coverage(torch.cat([inside, outside]), target)
    assert measured.high_quality == 0.5
    assert measured.modes_covered == 8


def test_a_mode_with_only_low_quality_samples_is_not_covered() -> None:
    target = ring()
    points = torch.cat([target.centers[:7], target.centers[7:] + 4 * target.std])
    measured = coverage(points, target)
    assert measured.modes_covered == 7
    assert measured.high_quality == pytest.approx(7 / 8)


def test_linspace_with_its_endpoint_puts_only_seven_modes_on_the_ring() -> None:
    """Angles from linspace(0, 2 pi, 8) end where they start: a ring built so has 7 distinct modes, 51.4 degrees apart,
    and even a perfect generator of it covers 1 of PacGAN's 8 modes. The recipe's ring has 8, 45 degrees apart."""
    angles = torch.linspace(0, 2 * math.pi, 8)
    trap = Mixture("trap", torch.stack([angles.cos(), angles.sin()], dim=1), 0.01)
    assert len({(round(x, 4), round(y, 4)) for x, y in trap.centers.tolist()}) == 7
    generator = torch.Generator().manual_seed(0)
    measured = coverage(trap.sample(2500, generator), ring())  # only angle 0 is one of PacGAN's centres
    assert measured.modes_covered == 1
    assert measured.high_quality == pytest.approx(2 / 8, abs=0.03)
    target = ring()
    assert len({(round(x, 4), round(y, 4)) for x, y in target.centers.tolist()}) == 8
    gaps = torch.cdist(target.centers, target.centers) + 10 * torch.eye(8)
    assert float(gaps.min()) == pytest.approx(2 * math.sin(math.pi / 8), abs=1e-6)
    assert coverage(target.sample(2500, generator), target).modes_covered == 8


def test_samples_of_the_target_itself_score_near_the_chi_square_share() -> None:
    """Exact samples of the mixture are within 3 sigma with probability 1 - exp(-9/2) = 98.9%: the measure's ceiling."""
    target = ring()
    measured = coverage(target.sample(100_000, torch.Generator().manual_seed(0)), target)
    assert measured.modes_covered == 8
    assert measured.high_quality == pytest.approx(1 - math.exp(-4.5), abs=0.002)


def test_midpoints_between_modes_are_low_quality() -> None:
    target = grid()
    midpoints = target.centers[:-1] + torch.tensor([1.0, 0.0])
    measured = coverage(midpoints, target)
    assert measured.high_quality == 0.0
    assert measured.modes_covered == 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        coverage(torch.zeros(10, 3), ring())
    with pytest.raises(ValueError, match="Unknown mixture"):
        make_mixture("spiral")
