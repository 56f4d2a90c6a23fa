"""Sample grids: a picture of the generator's samples every few epochs, as a PNG file and in TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor


@runtime_checkable
class Sampler(Protocol):
    """A module that can draw a grid of samples (the project's ``GAN``)."""

    def sample_grid(self) -> tuple[Tensor, int]:
        """Images in [-1, 1] of shape (N, C, H, W), and the number of rows to lay them out in."""
        ...


def make_grid(images: Tensor, rows: int, padding: int = 1) -> Tensor:
    """Lay ``images`` in [-1, 1], shape (N, C, H, W), out in ``rows`` rows: one (C, H', W') image in [0, 1]."""
    images = images.detach().float().cpu().clamp(-1, 1).add(1).div(2)
    count, channels, height, width = images.shape
    columns = -(-count // rows)
    grid = torch.ones(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + column * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    return grid


def save_png(grid: Tensor, path: Path, scale: int = 4) -> Path:
    """Write a (C, H, W) image in [0, 1] as a PNG file, each pixel ``scale`` pixels wide."""
    pixels = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    channels = pixels.shape[2]
    picture = Image.fromarray(pixels.squeeze(2).numpy() if channels == 1 else pixels.numpy())
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


class SampleGrids(pl.Callback):
    """Every ``every_n_epochs`` epochs and at the end of training, draw the module's sample grid.

    The grid goes to ``<log folder>/samples/epoch=E-step=S.png`` and, when a ``TensorBoardLogger`` is in use, to
    TensorBoard's image tab (tag ``samples``, at the global step).

    Args:
        every_n_epochs: Epochs between two grids.
    """

    def __init__(self, every_n_epochs: int = 5) -> None:
        self.every_n_epochs = every_n_epochs
        self.paths: list[Path] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw a grid at the end of every ``every_n_epochs``-th epoch and of the last one."""
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last and not trainer.should_stop:
            return
        self.draw(trainer, pl_module)

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw the grid now: a PNG file (on the main process) and an image in each TensorBoard logger.

        Every process must call this: under DDP ``trainer.log_dir`` is a broadcast from process 0, which waits for
        all the others; asked on process 0 alone it would wait for ever.
        """
        if not isinstance(pl_module, Sampler):
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir) / "samples"  # on every process (see above)
        if not trainer.is_global_zero:
            return
        images, rows = pl_module.sample_grid()
        grid = make_grid(images, rows)
        self.paths.append(save_png(grid, folder / f"epoch={trainer.current_epoch:03d}-step={trainer.global_step}.png"))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, global_step=trainer.global_step)
