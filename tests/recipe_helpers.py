"""Helpers of the recipe tests: run a recipe's command line in-process, on its own config, with outputs in a folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any
from unittest import mock

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"

# recipe name -> (module of examples, config file)
RECIPES: dict[str, tuple[str, str]] = {
    "dcgan_digits": ("dcgan_digits", "dcgan_digits.yaml"),
    "wgan_gp_digits": ("wgan_gp_digits", "wgan_gp_digits.yaml"),
    "cgan_digits": ("cgan_digits", "cgan_digits.yaml"),
    "ring_gaussians": ("mixture_gan", "ring_gaussians.yaml"),
    "grid_gaussians": ("mixture_gan", "grid_gaussians.yaml"),
    "sam_digits": ("sam_digits", "sam_digits.yaml"),
}
DIGITS_GANS = ("dcgan_digits", "wgan_gp_digits", "cgan_digits")

# a few batches per epoch, a validation at every epoch, a log line at every step
SMALL = ("--trainer.limit_train_batches=3", "--trainer.check_val_every_n_epoch=1", "--trainer.log_every_n_steps=1")


def fit(recipe: str, root: Path, *options: str, full_validation: bool = False) -> Any:
    """Run ``python -m examples.<module> fit --config <config>`` in-process with outputs under ``root``.

    Args:
        recipe: A key of ``RECIPES``.
        root: The run's ``default_root_dir``.
        options: Further command-line options.
        full_validation: Keep the config's number of samples per validation. By default a digits recipe draws 100,
            enough for a sample grid but far too few for a Fréchet distance that means anything (its bias in 64
            feature dimensions dwarfs the differences between generators), which is fine for the smoke tests only.

    Returns:
        The ``LightningCLI`` object (``.trainer``, ``.model``).
    """
    module_name, config = RECIPES[recipe]
    module = importlib.import_module(f"examples.{module_name}")
    args = ["fit", "--config", str(CONFIGS / config), f"--trainer.default_root_dir={root}", *options]
    if recipe in DIGITS_GANS and not full_validation:
        args.append("--data.samples_per_validation=100")  # the smallest batch that still draws a 10x10 grid
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the command line is ``args``, not pytest's
        return module.main(args)
