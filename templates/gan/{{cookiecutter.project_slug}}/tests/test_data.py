{%- if cookiecutter.data == 'digits' -%}
"""The bundled digits: shapes, value range, labels, batches per epoch."""

from __future__ import annotations

import torch

from {{ cookiecutter.package_name }}.data import DigitsData, load_images


def test_digits_are_images_in_minus_one_to_one() -> None:
    images, labels = load_images()
    assert images.shape == (1797, 1, 8, 8)
    assert images.min() == -1
    assert images.max() == 1
    assert set(labels.tolist()) == set(range(10))


def test_an_epoch_is_the_full_batches() -> None:
    loader = DigitsData(batch_size=100).train_dataloader()
    assert len(loader) == 17  # 1,797 digits: the last 97 do not make a batch
    images, labels = next(iter(loader))
    assert images.shape == (100, 1, 8, 8)
    assert labels.dtype == torch.long
{%- else -%}
"""The image folder: any size and format read and resized, clear errors for a folder that cannot be used."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.data import ImageFolderData, ImageFolderError, find_images
from {{ cookiecutter.package_name }}.shapes import SHAPES, write_shapes

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"


def test_images_of_any_size_and_mode_are_cropped_and_resized(tmp_path: Path) -> None:
    folder = tmp_path / "images"
{%- if cookiecutter.variant == 'conditional' %}
    (folder / "wide").mkdir(parents=True)
    (folder / "tall").mkdir()
    Image.new("RGB", (50, 30), (255, 0, 0)).save(folder / "wide" / "a.png")
    Image.new("L", (17, 90), 0).save(folder / "tall" / "b.JPG")
    Image.new("RGBA", (8, 8), (0, 0, 255, 128)).save(folder / "tall" / "c.png")
{%- else %}
    (folder / "nested").mkdir(parents=True)
    Image.new("RGB", (50, 30), (255, 0, 0)).save(folder / "a.png")
    Image.new("L", (17, 90), 0).save(folder / "nested" / "b.JPG")
    Image.new("RGBA", (8, 8), (0, 0, 255, 128)).save(folder / "c.png")
{%- endif %}
    (folder / "notes.txt").write_text("not an image")
    data = ImageFolderData(folder=str(folder), image_size=16, channels=3, batch_size=3)
    assert len(data.files) == 3
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (3, 3, 16, 16)
    assert labels.shape == (3,)
    assert images.min() >= -1
    assert images.max() <= 1
    grey = ImageFolderData(folder=str(folder), image_size=8, channels=1, batch_size=3)
    assert next(iter(grey.train_dataloader()))[0].shape == (3, 1, 8, 8)


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageFolderError, match=r"does not exist\. Put your PNG or JPEG images there"):
        ImageFolderData(folder=str(tmp_path / "nowhere"))


def test_a_folder_without_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("no pictures here")
    with pytest.raises(ImageFolderError, match="holds no PNG or JPEG images"):
        ImageFolderData(folder=str(tmp_path))


def test_fewer_images_than_a_batch_is_a_clear_error(tmp_path: Path) -> None:
    write_shapes(tmp_path, count=6)
    with pytest.raises(ImageFolderError, match=r"holds 6 images, fewer than one batch \(64\)"):
        ImageFolderData(folder=str(tmp_path), batch_size=64)


def test_an_unreadable_image_is_named(tmp_path: Path) -> None:
    write_shapes(tmp_path, count=3)
    broken = tmp_path / "{{ 'disc/' if cookiecutter.variant == 'conditional' else '' }}broken.png"
    broken.write_bytes(b"not a png")
    data = ImageFolderData(folder=str(tmp_path), batch_size=4)
    with pytest.raises(ImageFolderError, match=r"Cannot read the image .*broken\.png"):
        list(data.train_dataloader())


def test_image_size_must_be_a_power_of_two(tmp_path: Path) -> None:
    write_shapes(tmp_path, count=3)
    with pytest.raises(ValueError, match="power of two"):
        ImageFolderData(folder=str(tmp_path), image_size=24, batch_size=1)
{%- if cookiecutter.variant == 'conditional' %}


def test_classes_are_the_subfolders(tmp_path: Path) -> None:
    write_shapes(tmp_path, count=6)
    data = ImageFolderData(folder=str(tmp_path), batch_size=2)
    assert data.class_names == sorted(SHAPES)
    assert data.classes == 3
    assert [data.class_names[label] for label in data.labels] == [path.parent.name for path in data.files]


def test_images_outside_class_subfolders_are_refused(tmp_path: Path) -> None:
    write_shapes(tmp_path, count=6)
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(ImageFolderError, match=r"one class per subfolder.*1 images outside them \(loose.png"):
        ImageFolderData(folder=str(tmp_path), batch_size=2)
{%- endif %}


def test_shapes_writes_png_and_jpeg_of_assorted_sizes(tmp_path: Path) -> None:
    paths = write_shapes(tmp_path, count=12)
    assert find_images(tmp_path) == sorted(paths)
    assert {path.suffix for path in paths} == {".png", ".jpg"}
    assert {path.parent.name for path in paths} == set(SHAPES)
    assert len({Image.open(path).size for path in paths}) > 1


def test_the_command_line_reports_a_missing_folder_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["prog", "fit", "--config", str(CONFIG), f"--data.folder={tmp_path / 'nowhere'}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert "does not exist" in str(exit_info.value.code)
{%- endif %}
