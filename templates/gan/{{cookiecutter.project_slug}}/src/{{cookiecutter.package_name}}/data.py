{%- if cookiecutter.data == 'digits' -%}
"""Training data: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes); nothing is downloaded."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


def load_images() -> tuple[Tensor, Tensor]:
    """All the digits as images in [-1, 1] of shape (1797, 1, 8, 8), and their labels (1797,)."""
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div(8.0).sub(1.0).unsqueeze(1)
    return images, torch.tensor(bunch.target, dtype=torch.long)


class DigitsData(pl.LightningDataModule):
    """Shuffled batches of ``(images, labels)``; an epoch drops its last incomplete batch.

    ``image_size``, ``channels`` and ``classes`` are passed on to the model by the command line (``cli.py``).

    Args:
        batch_size: Images per batch (and per training step).
    """

    image_size = 8
    channels = 1
    classes = 10

    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        """The training batches."""
        images, labels = load_images()
        return DataLoader(TensorDataset(images, labels), batch_size=self.batch_size, shuffle=True, drop_last=True)
{%- else -%}
"""Training data: a folder of your own PNG or JPEG images of any size, cropped to a square and resized.

{% if cookiecutter.variant == 'conditional' -%}
A conditional GAN learns one class per subfolder: ``data/images/cats/*.png``, ``data/images/dogs/*.jpg``, ...
{%- else -%}
Images are found in the folder and all its subfolders.
{%- endif %}
``python -m {{ cookiecutter.package_name }}.shapes FOLDER`` writes pictures of shapes to try it with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from {{ cookiecutter.package_name }}.networks import upsamplings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class ImageFolderError(ValueError):
    """The image folder cannot be used: missing, without images, or not sorted into classes; the message says why."""


def find_images(folder: Path) -> list[Path]:
    """The PNG and JPEG files in ``folder`` and its subfolders, sorted (hidden files and folders left out)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def load_image(path: Path, image_size: int, channels: int) -> Tensor:
    """One image in [-1, 1] of shape ``(channels, image_size, image_size)``: center-cropped to a square, resized.

    Raises:
        ImageFolderError: The file is not an image Pillow can read.
    """
    try:
        with Image.open(path) as image:
            picture = image.convert("RGB" if channels == 3 else "L")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageFolderError(f"Cannot read the image {path}: {error}. Remove or replace the file.") from error
    side = min(picture.size)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    picture = picture.crop((left, top, left + side, top + side))
    picture = picture.resize((image_size, image_size), Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
    return pixels.view(image_size, image_size, channels).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ImageFiles(Dataset[tuple[Tensor, Tensor]]):
    """``(image, label)`` pairs read from files on demand."""

    def __init__(self, files: list[Path], labels: list[int], image_size: int, channels: int) -> None:
        self.files, self.labels = files, labels
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = load_image(self.files[index], self.image_size, self.channels)
        return image, torch.tensor(self.labels[index])


class ImageFolderData(pl.LightningDataModule):
    """Shuffled batches of ``(images, labels)`` from a folder of images; an epoch drops its last incomplete batch.

    The folder is checked when the module is made, so a wrong folder is reported before training starts.
    ``image_size``, ``channels`` and ``classes`` are passed on to the model by the command line (``cli.py``).

    Args:
        folder: The folder of PNG and JPEG images (any size).
        image_size: The side of the square the images are resized to: a power of two, at least 8.
        channels: 3 for colour (RGB), 1 for grey levels.
        batch_size: Images per batch (and per training step).
        num_workers: Processes that read the images (0: the training process itself).

    Raises:
        ImageFolderError: The folder is missing or holds too few images{{ ', or no class subfolders' if cookiecutter.variant == 'conditional' else '' }}.
        ValueError: ``image_size`` or ``channels`` is not supported.
    """

    def __init__(
        self,
        folder: str = "data/images",
        image_size: int = 16,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        upsamplings(image_size)  # checks the size
        if channels not in (1, 3):
            raise ValueError(f"channels must be 3 (colour) or 1 (grey levels), not {channels}.")
        self.folder = Path(folder)
        self.image_size, self.channels = image_size, channels
        self.batch_size, self.num_workers = batch_size, num_workers
        where = (
            f"Put your PNG or JPEG images there (any size: they are cropped to a square and resized to"
            f" {image_size}x{image_size}), or give another folder with --data.folder=PATH."
        )
        if not self.folder.is_dir():
            raise ImageFolderError(f"The image folder {self.folder.resolve()} does not exist. {where}")
        self.files = find_images(self.folder)
        if not self.files:
            raise ImageFolderError(
                f"The image folder {self.folder.resolve()} holds no PNG or JPEG images (its subfolders were searched"
                f" too). {where}"
            )
        if len(self.files) < batch_size:
            raise ImageFolderError(
                f"The image folder {self.folder.resolve()} holds {len(self.files)} images, fewer than one batch"
                f" ({batch_size}). Add images, or lower --data.batch_size."
            )
{%- if cookiecutter.variant == 'conditional' %}
        loose = [path.name for path in self.files if path.parent == self.folder]
        self.class_names = sorted({path.relative_to(self.folder).parts[0] for path in self.files} - set(loose))
        if loose or len(self.class_names) < 2:
            raise ImageFolderError(
                f"A conditional GAN learns one class per subfolder of {self.folder.resolve()} (e.g. cats/*.png,"
                f" dogs/*.jpg); it has {len(self.class_names)} class subfolders"
                + (f" and {len(loose)} images outside them ({', '.join(loose[:3])}, ...)" if loose else "")
                + ". Sort the images into at least 2 subfolders, one per class."
            )
        self.labels = [self.class_names.index(path.relative_to(self.folder).parts[0]) for path in self.files]
        self.classes = len(self.class_names)
{%- else %}
        self.labels = [0] * len(self.files)
        self.classes = 1
{%- endif %}

    def train_dataloader(self) -> DataLoader[Any]:
        """The training batches."""
        return DataLoader(
            ImageFiles(self.files, self.labels, self.image_size, self.channels),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
{%- endif %}
