{%- set wgan = cookiecutter.variant == 'wgan-gp' -%}
{%- set folder = cookiecutter.data == 'image-folder' -%}
{%- set critic = 'critic' if wgan else 'discriminator' -%}
"""Training from the project's own config: one training step per batch, resuming from ``last.ckpt``, misplaced steps.

Each test runs a few batches in its own temporary folder, where the config's relative paths
(``runs/``{{ ', ``data/images``' if folder else '' }}) point.
"""

from __future__ import annotations

{% if cookiecutter.logger == 'csv' -%}
import csv
{% endif -%}
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from manualopt import StepOutsideTrainingStepError
{%- if cookiecutter.logger == 'tensorboard' %}
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
{%- endif %}

from {{ cookiecutter.package_name }}.cli import run
from {{ cookiecutter.package_name }}.data import {{ 'ImageFolderData' if folder else 'DigitsData' }}
from {{ cookiecutter.package_name }}.model import GAN
{%- if folder %}
from {{ cookiecutter.package_name }}.shapes import write_shapes
{%- endif %}

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"
BATCHES = 3
{%- if folder %}
BATCH_SIZE = 16
{%- endif %}


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder per test{{ ', with generated pictures in data/images' if folder else '' }}."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # the command line is given to LightningCLI, not pytest's
{%- if folder %}
    write_shapes(tmp_path / "data" / "images", count=BATCH_SIZE * BATCHES)
{%- endif %}
    return tmp_path


def fit(*args: str, config: Path = CONFIG) -> LightningCLI:
    """``fit`` with the project's config, shrunk to one epoch of ``BATCHES`` batches; ``args`` come last and win."""
    small = [
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={BATCHES}",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
{%- if wgan %}
        "--model.n_critic=2",
{%- endif %}
{%- if folder %}
        f"--data.batch_size={BATCH_SIZE}",
{%- endif %}
    ]
    return run(["fit", "--config", str(config), *small, *args])


def expected_updates(model: GAN, batches: int) -> dict[str, int]:
    """The updates of each optimizer after ``batches`` batches, from the model's own {{ 'optimizers and schedule' if wgan else 'optimizers' }}."""
    names = list(model.configure_optimizers())
{%- if wgan %}
    # the optimizers that the schedule makes due on each batch (here n_critic=2: the generator on every second)
    return {name: sum(name in model.schedule.due_at(position) for position in range(batches)) for name in names}
{%- else %}
    return dict.fromkeys(names, batches)  # each optimizer updates once per batch
{%- endif %}


def logged_steps(log_folder: Path) -> list[int]:
    """The steps at which the {{ critic }}'s loss was logged."""
{%- if cookiecutter.logger == 'tensorboard' %}
    events = EventAccumulator(str(log_folder))
    events.Reload()
    return [event.step for event in events.Scalars("{{ 'critic_loss' if wgan else 'd_loss' }}")]
{%- else %}
    with open(log_folder / "metrics.csv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row["{{ 'critic_loss' if wgan else 'd_loss' }}"]]
{%- endif %}


def test_fit_makes_one_training_step_per_batch(workdir: Path) -> None:
    cli = fit()
    assert cli.trainer.global_step == BATCHES
    assert dict(cli.model.optimizer_updates) == expected_updates(cli.model, BATCHES)
    assert logged_steps(workdir / "runs" / "version_0") == list(range(BATCHES))
    assert (workdir / "runs" / "checkpoints" / "last.ckpt").is_file()
    assert len(list((workdir / "runs" / "version_0" / "samples").glob("*.png"))) == 1
{%- if cookiecutter.logger == 'tensorboard' %}


def test_sample_grids_go_to_tensorboard(workdir: Path) -> None:
    fit()
    events = EventAccumulator(str(workdir / "runs" / "version_0"))
    events.Reload()
    assert events.Tags()["images"] == ["samples"]
    assert [event.step for event in events.Images("samples")] == [BATCHES]
{%- endif %}


def test_resumes_from_last_checkpoint(workdir: Path) -> None:
    fit()
    checkpoint = torch.load(workdir / "runs" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == BATCHES
    resumed = fit("--trainer.max_epochs=2", "--ckpt_path=last")
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == 2 * BATCHES
    assert dict(resumed.model.optimizer_updates) == expected_updates(resumed.model, 2 * BATCHES)
    assert logged_steps(workdir / "runs" / "version_1") == list(range(BATCHES, 2 * BATCHES))


def test_last_checkpoint_is_the_end_of_a_complete_run(workdir: Path) -> None:
    """``last.ckpt`` holds the final step, also when a periodic checkpoint was the last one written before the end."""
    config = yaml.safe_load(CONFIG.read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback.get("init_args", {}).get("every_n_train_steps"):
            callback["init_args"]["every_n_train_steps"] = BATCHES + 1  # one periodic checkpoint, before the end
    (workdir / "periodic.yaml").write_text(yaml.safe_dump(config))
    cli = fit("--trainer.max_epochs=2", config=workdir / "periodic.yaml")
    assert cli.trainer.global_step == 2 * BATCHES
    assert list((workdir / "runs" / "checkpoints").glob(f"*step={BATCHES + 1}.ckpt"))
    checkpoint = torch.load(workdir / "runs" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == cli.trainer.global_step
    again = fit("--trainer.max_epochs=2", "--ckpt_path=last", config=workdir / "periodic.yaml")
    assert again.trainer.global_step == 2 * BATCHES  # nothing trained again
    assert dict(again.model.optimizer_updates) == dict(cli.model.optimizer_updates)


class StepInTheWrongHook(GAN):
    """Steps the generator in ``on_train_batch_end``, a hook that runs after ``training_step``."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = torch.stack([parameter.square().sum() for parameter in self.generator.parameters()]).sum()
        self.manual_step("generator", loss)


def test_a_step_outside_training_step_is_refused(workdir: Path) -> None:
{%- if folder %}
    data = ImageFolderData(batch_size=BATCH_SIZE)
    model = StepInTheWrongHook(image_size=data.image_size, channels=data.channels{{ ', classes=data.classes' if cookiecutter.variant == 'conditional' else '' }})
{%- else %}
    data = DigitsData()
    model = StepInTheWrongHook()
{%- endif %}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(StepOutsideTrainingStepError, match="on_train_batch_end"):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 1  # the batch's own steps in training_step counted; the misplaced one refused
    assert model.optimizer_updates["generator"] == expected_updates(model, 1)["generator"]
