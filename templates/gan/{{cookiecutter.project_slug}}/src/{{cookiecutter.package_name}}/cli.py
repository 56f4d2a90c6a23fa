{%- set data_class = 'DigitsData' if cookiecutter.data == 'digits' else 'ImageFolderData' -%}
"""The command line, a ``LightningCLI``: the console script, or ``python -m`` with the package.

    {{ cookiecutter.project_slug }} fit --config configs/train.yaml
    python -m {{ cookiecutter.package_name }} fit --config configs/train.yaml

Every argument of the model, the data and the Trainer can be set in the YAML config or on
the command line (``--model.lr 0.0005``, ``--trainer.max_epochs 5``), and ``--print_config`` shows them all. Resume
a run with ``--ckpt_path last``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from {{ cookiecutter.package_name }}.data import {{ data_class }}{{ ', ImageFolderError' if cookiecutter.data != 'digits' else '' }}
from {{ cookiecutter.package_name }}.model import GAN
from {{ cookiecutter.package_name }}.progress import EpochLines
from {{ cookiecutter.package_name }}.samples import SampleGrids


class GANCLI(LightningCLI):
    """A ``LightningCLI`` that gives the model the image size and channels{{ ' and the number of classes' if cookiecutter.variant == 'conditional' else '' }} of the data."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data's image format to the model's arguments, so that it is set in one place."""
        for name in ("image_size", "channels"{{ ', "classes"' if cookiecutter.variant == 'conditional' else '' }}):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """The Trainer; when the output is not a terminal, with one progress line per epoch instead of a bar."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.trainer
        if trainer.enable_progress_bar is not False and not sys.stdout.isatty() and "callbacks" not in kwargs:
            callbacks = trainer.callbacks or []
            callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
            if not any(isinstance(callback, ProgressBar) for callback in callbacks):
                kwargs["callbacks"] = [*callbacks, EpochLines()]
        return super().instantiate_trainer(**kwargs)


class _WithoutAdverts(logging.Filter):
    """Leaves out Lightning's tip about its cloud logger, printed at the start of every run (Lightning 2.6)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_WITHOUT_ADVERTS = _WithoutAdverts()


def quiet_console() -> None:
    """Keep out of the console the notices that a user of this project cannot act on; the rest still shows."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_WITHOUT_ADVERTS)
    # Lightning's own use of a PyTorch utility that PyTorch deprecates
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # every run checkpoints into runs/checkpoints on purpose, so that --ckpt_path last finds the last run's last.ckpt
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")


def run(args: ArgsType = None) -> GANCLI:
    """Run the command line with ``args`` (default: ``sys.argv``) and return it, with its ``trainer`` and ``model``.

    After ``fit`` it prints where the run's step count, checkpoints and sample grids are.
    """
    quiet_console()
    cli = GANCLI(GAN, {{ data_class }}, args=args, save_config_kwargs={"overwrite": True})
    if cli.subcommand != "fit":
        return cli
    trainer = cli.trainer
    log_dir = trainer.log_dir  # asked on every process: under DDP it is a broadcast from process 0
    if trainer.is_global_zero:
        print(f"\nglobal_step: {trainer.global_step} (training steps: one per batch)")
        print(f"updates per optimizer: {dict(cli.model.optimizer_updates)}")
        print(f"logs: {log_dir}")
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and getattr(checkpoint, "dirpath", None):
            print(f"checkpoints: {checkpoint.dirpath}")
        grids = [path for callback in trainer.callbacks if isinstance(callback, SampleGrids) for path in callback.paths]
        if grids:
            print(f"sample grids: {len(grids)}, the last {grids[-1]}")
    return cli


def main() -> None:
    """The console script{{ ': a wrong image folder ends the run with its message, without a traceback' if cookiecutter.data != 'digits' else '' }}."""
{%- if cookiecutter.data != 'digits' %}
    try:
        run()
    except ImageFolderError as error:
        sys.exit(f"error: {error}")
{%- else %}
    run()
{%- endif %}
    leave_process_group()


def leave_process_group() -> None:
    """Under DDP, leave the process group before the interpreter exits (where torch may otherwise abort the process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
