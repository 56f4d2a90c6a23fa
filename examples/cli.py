"""The command line every recipe shares: LightningCLI with the base config, output folders and one torch thread.

``python -m examples.<recipe> fit --config examples/configs/<recipe>.yaml`` reads ``configs/base.yaml`` first (the
trainer settings every recipe shares, the checkpoints, the artifacts callback), then the recipe's config, then the
command line. Output paths left empty in the configs are derived from ``trainer.default_root_dir``: the CSV logger
writes to it, and ``ModelCheckpoint`` to its ``checkpoints/`` folder, so a recipe names its folder once. The progress
display is :class:`~examples.progress.RecipeProgressBar`, added unless ``--trainer.enable_progress_bar false`` (the
standard switch) turns it off or the callbacks hold a progress bar already.

The recipes' networks are small: one torch thread is fastest, and on a machine whose cores are busy several threads
were up to 10 times slower. :func:`run` sets one thread unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI

from examples.progress import RecipeProgressBar

BASE_CONFIG = Path(__file__).resolve().parent / "configs" / "base.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def set_threads() -> int:
    """Use one torch thread unless the environment sets ``OMP_NUM_THREADS``; returns the thread count in use."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def _init_args(node: Any) -> Any:
    return getattr(node, "init_args", None)


class RecipeCLI(LightningCLI):
    """``LightningCLI`` reading ``configs/base.yaml`` first and deriving empty output paths from the root folder."""

    def before_instantiate_classes(self) -> None:
        """Fill the logger's ``save_dir`` and the checkpoints' ``dirpath`` where the configs leave them empty."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        root = Path(trainer.default_root_dir or ".")
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for logger in loggers:
            init_args = _init_args(logger)
            if init_args is not None and "save_dir" in init_args and not init_args.save_dir:
                init_args.save_dir = str(root)
        for callback in trainer.callbacks or []:
            init_args = _init_args(callback)
            if str(getattr(callback, "class_path", "")).endswith("ModelCheckpoint") and not init_args.dirpath:
                init_args.dirpath = str(root / "checkpoints")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The Trainer, with a ``RecipeProgressBar`` when progress is on and no progress bar is configured.

        A progress bar in the callbacks together with ``enable_progress_bar=False`` is an error in Lightning, so the
        bar is added here, where that switch is known, rather than in the config.
        """
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.trainer
        if trainer.enable_progress_bar is not False and "callbacks" not in kwargs:
            callbacks = trainer.callbacks or []
            callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
            if not any(isinstance(callback, ProgressBar) for callback in callbacks):
                kwargs["callbacks"] = [*callbacks, RecipeProgressBar()]
        return super().instantiate_trainer(**kwargs)


def run(
    model_class: type[pl.LightningModule], datamodule_class: type[pl.LightningDataModule], args: list[str] | None
) -> RecipeCLI:
    """Run a recipe's command line; ``args`` replaces ``sys.argv[1:]`` (tests, the results runner)."""
    set_threads()
    # Lightning's own deprecation notice about a PyTorch tree utility: nothing a recipe's user can act on
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=DeprecationWarning)
    cli = RecipeCLI(
        model_class,
        datamodule_class,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={name: {"default_config_files": [str(BASE_CONFIG)]} for name in SUBCOMMANDS},
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Under DDP (configs/ddp.yaml): leave the process group before the interpreter exits, where torch may
        # otherwise abort the process after a complete run.
        torch.distributed.destroy_process_group()
    return cli
