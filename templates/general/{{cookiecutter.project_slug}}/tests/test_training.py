{%- set names = cookiecutter.optimizers.split(',') | map('trim') | list -%}
"""Training from the project's own config: step counting, per-optimizer settings, resuming, misplaced steps.

Each test runs a few batches in its own temporary folder, where the config's relative paths (``runs/``) point.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from manualopt import StepOutsideTrainingStepError

from {{ cookiecutter.package_name }}.cli import run
from {{ cookiecutter.package_name }}.data import RegressionData
from {{ cookiecutter.package_name }}.model import PARTS, Model, OptimizerSettings, SchedulerSettings

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"
BATCHES = 3
FIRST, LAST = PARTS[0], PARTS[-1]


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working folder per test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])  # the command line is given to LightningCLI, not pytest's
    return tmp_path


def fit(*args: str) -> LightningCLI:
    """``fit`` with the project's config, shrunk to one epoch of ``BATCHES`` batches; ``args`` come last and win."""
    small = [
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={BATCHES}",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    return run(["fit", "--config", str(CONFIG), *small, *args])


def expected_updates(model: Model, batches: int) -> dict[str, int]:
    """Each part's updates after ``batches`` batches: one per ``accumulate_grad_batches`` of its settings."""
    return {name: batches // model.settings[name]["accumulate_grad_batches"] for name in PARTS}


def trainer(**options: Any) -> pl.Trainer:
    """A quiet CPU trainer without logger or checkpoints."""
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
    }
    return pl.Trainer(**(settings | options))


def test_fit_makes_one_training_step_per_batch(workdir: Path) -> None:
    cli = fit()
    assert cli.trainer.global_step == BATCHES
    assert dict(cli.model.optimizer_updates) == expected_updates(cli.model, BATCHES)
    assert (workdir / "runs" / "checkpoints" / "last.ckpt").is_file()


def test_the_config_sets_each_optimizer() -> None:
    model = fit().model
    assert set(model.settings) == set(PARTS)
    config = model.configure_optimizers()
    assert list(config) == list(PARTS)
    for name in PARTS:
        assert config[name]["gradient_clip_val"] == 1.0
        assert config[name]["lr_scheduler"]["scheduler"].step_size == 10


def test_accumulation_is_per_optimizer() -> None:
    accumulate: OptimizerSettings = {"accumulate_grad_batches": 2}
    model = Model(optimizers={FIRST: accumulate})
    fitted = trainer(limit_train_batches=4)
    fitted.fit(model, datamodule=RegressionData())
    expected = expected_updates(model, 4)
    assert expected[FIRST] == 2
    assert dict(model.optimizer_updates) == expected
    # a training step is a batch in which at least one optimizer updated
    assert fitted.global_step == (2 if len(PARTS) == 1 else 4)


def test_each_scheduler_steps_after_its_optimizer_updates() -> None:
    every_step: SchedulerSettings = {"step_size": 1, "gamma": 0.5, "interval": "step"}
    schedule: OptimizerSettings = {"lr": 0.01, "scheduler": every_step}
    model = Model(optimizers={LAST: schedule})
    fitted = trainer(limit_train_batches=3)
    fitted.fit(model, datamodule=RegressionData())
    rates = {name: optimizer.param_groups[0]["lr"] for name, optimizer in zip(PARTS, fitted.optimizers, strict=True)}
    assert rates[LAST] == pytest.approx(0.01 * 0.5**3)
    if len(PARTS) > 1:
        assert rates[FIRST] == pytest.approx(1e-3)  # DEFAULTS: no scheduler


class ClippingSpy(Model):
    """Records the clipping that manualopt applies before each update."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clipped: list[tuple[Any, Any]] = []

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        self.clipped.append((gradient_clip_val, gradient_clip_algorithm))
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def test_clipping_comes_from_the_settings() -> None:
    clip: OptimizerSettings = {"gradient_clip_val": 0.25, "gradient_clip_algorithm": "value"}
    model = ClippingSpy(optimizers={LAST: clip})
    trainer(limit_train_batches=2).fit(model, datamodule=RegressionData())
    assert (0.25, "value") in model.clipped


def test_unknown_optimizer_names_are_refused() -> None:
    with pytest.raises(ValueError, match=r"names \['nonexistent_part'\], which are not parts of the model"):
        Model(optimizers={"nonexistent_part": OptimizerSettings(lr=0.1)})


def test_resumes_from_last_checkpoint(workdir: Path) -> None:
    fit()
    checkpoint = torch.load(workdir / "runs" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == BATCHES
    resumed = fit("--trainer.max_epochs=2", "--ckpt_path=last")
    assert resumed.trainer.current_epoch == 2
    assert resumed.trainer.global_step == 2 * BATCHES
    assert dict(resumed.model.optimizer_updates) == expected_updates(resumed.model, 2 * BATCHES)


def test_last_checkpoint_is_the_end_of_a_complete_run(workdir: Path) -> None:
    """``last.ckpt`` holds the final step, also when the last epoch was not validated."""
    cli = fit("--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=2")  # validated after epoch 2 only
    assert cli.trainer.global_step == 3 * BATCHES
    checkpoint = torch.load(workdir / "runs" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == cli.trainer.global_step
    again = fit("--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=2", "--ckpt_path=last")
    assert again.trainer.global_step == 3 * BATCHES  # nothing trained again
    assert dict(again.model.optimizer_updates) == dict(cli.model.optimizer_updates)


def test_the_model_learns(workdir: Path) -> None:
    data = RegressionData()
    model = Model()
    before = trainer(limit_val_batches=1.0).validate(model, datamodule=data, verbose=False)[0]["val_loss"]
    after = fit("--trainer.max_epochs=3", "--trainer.limit_train_batches=1.0", "--trainer.limit_val_batches=1.0")
    assert float(after.trainer.callback_metrics["val_loss"]) < before / 2


class StepInTheWrongHook(Model):
    """Steps an optimizer in ``on_train_batch_end``, a hook that runs after ``training_step``."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        inputs, targets = batch
        self.manual_step(LAST, self.loss(inputs, targets))


def test_a_step_outside_training_step_is_refused() -> None:
    model = StepInTheWrongHook()
    with pytest.raises(StepOutsideTrainingStepError, match="on_train_batch_end"):
        trainer(limit_train_batches=1).fit(model, datamodule=RegressionData())
    assert dict(model.optimizer_updates) == expected_updates(model, 1)  # training_step's updates, not the refused one
