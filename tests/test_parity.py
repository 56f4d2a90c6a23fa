"""The differential proof: manual_step with Trainer-like keywords is indistinguishable from automatic optimization.

For one optimizer, a ManualOptimizationModule calling ``manual_step(0, loss, accumulate_grad_batches=...,
gradient_clip_val=..., gradient_clip_algorithm=...)`` and the same LightningModule under automatic optimization with
the equivalent Trainer arguments are trained on the same data (10 batches per epoch, so accumulating 3 leaves a partial
window; 3 epochs; a validation loader), and must agree bit for bit: final parameters, optimizer state in the last
checkpoint, checkpoint file names, the learning rate seen in every ``on_train_batch_end``, the CSVLogger file, and
``global_step``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from helpers import Automatic, Manual, loader, same
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

OPTIMIZERS = ["adam", "sgd-momentum"]
SCHEDULERS = ["none", "step-interval-frequency-2", "epoch-interval", "plateau-val-loss"]
ACCUMULATE = [1, 3]
CLIPPING = [(None, None), (0.5, "norm"), (0.05, "value")]


def _train(root: Path, model: pl.LightningModule, trainer_options: dict[str, Any], **extra: Any) -> dict[str, Any]:
    every_two = ModelCheckpoint(dirpath=str(root / "every-2"), every_n_train_steps=2, save_top_k=-1)
    best = ModelCheckpoint(dirpath=str(root / "best"), monitor="val_loss", save_top_k=2, filename="{epoch}-{step}")
    callbacks: list[Any] = [every_two, best, *extra.pop("callbacks", [])]
    if model.scheduler_name != "none":  # type: ignore[attr-defined]
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer = pl.Trainer(
        default_root_dir=str(root),
        max_epochs=extra.pop("max_epochs", 3),
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(str(root), name="csv", version=0),
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=2,
        deterministic=True,
        **trainer_options,
        **extra,
    )
    trainer.fit(model, loader(10), loader(2, seed=1))
    files = sorted(p.name for p in (root / "every-2").glob("*.ckpt"))
    last = torch.load(root / "every-2" / files[-1], weights_only=False) if files else {}
    return {
        "trainer": trainer,
        "params": [p.detach().clone() for p in model.parameters()],
        "checkpoint_files": files,
        "best_files": sorted(p.name for p in (root / "best").glob("*.ckpt")),
        "last_optimizer_states": last.get("optimizer_states"),
        "last_scheduler_states": last.get("lr_schedulers"),
        "last_loops": last.get("loops"),
        "learning_rates": model.learning_rates,  # type: ignore[attr-defined]
        "csv": (root / "csv" / "version_0" / "metrics.csv").read_text(),
        "global_step": trainer.global_step,
    }


def _run_pair(tmp_path: Path, optimizer: str, scheduler: str, accumulate: int, clip: tuple[Any, Any], **extra: Any):
    clip_val, clip_algorithm = clip
    automatic = _train(
        tmp_path / "automatic",
        Automatic(optimizer, scheduler),
        {
            "accumulate_grad_batches": accumulate,
            "gradient_clip_val": clip_val,
            "gradient_clip_algorithm": clip_algorithm,
        },
        **dict(extra),
    )
    manual = _train(
        tmp_path / "manual",
        Manual(
            optimizer,
            scheduler,
            accumulate_grad_batches=accumulate,
            gradient_clip_val=clip_val,
            gradient_clip_algorithm=clip_algorithm,
        ),
        {},
        **dict(extra),
    )
    return automatic, manual


def _assert_identical(automatic: dict[str, Any], manual: dict[str, Any]) -> None:
    assert manual["global_step"] == automatic["global_step"]
    assert manual["checkpoint_files"] == automatic["checkpoint_files"]
    assert manual["best_files"] == automatic["best_files"]
    assert manual["learning_rates"] == automatic["learning_rates"]
    assert manual["csv"] == automatic["csv"]
    for ours, theirs in zip(manual["params"], automatic["params"], strict=True):
        assert torch.equal(ours, theirs)
    assert same(manual["last_optimizer_states"], automatic["last_optimizer_states"])
    assert same(manual["last_scheduler_states"], automatic["last_scheduler_states"])
    # The loops entry matches (batch, epoch and scheduler progress), apart from which of the two step trackers counts:
    # automatic optimization counts in its own, manual optimization in the manual one (where global_step is read).
    ours, theirs = _without_step_trackers(manual["last_loops"]), _without_step_trackers(automatic["last_loops"])
    assert same(ours, theirs)
    steps = automatic["last_loops"]["fit_loop"]["epoch_loop.automatic_optimization.optim_progress"]
    assert (
        manual["last_loops"]["fit_loop"]["epoch_loop.manual_optimization.optim_step_progress"]["total"]
        == (steps["optimizer"]["step"]["total"])
    )


STEP_TRACKERS = (
    "epoch_loop.automatic_optimization.optim_progress",
    "epoch_loop.manual_optimization.optim_step_progress",
)


def _without_step_trackers(loops: dict[str, Any]) -> dict[str, Any]:
    fit_loop = {key: value for key, value in loops["fit_loop"].items() if key not in STEP_TRACKERS}
    # manualopt's training loader is resumable, so Lightning stores its (empty) state; automatic optimization's is not
    state = fit_loop["state_dict"]
    if state.get("combined_loader") == [{}]:
        fit_loop["state_dict"] = {key: value for key, value in state.items() if key != "combined_loader"}
    return {**loops, "fit_loop": fit_loop}


GRID = list(itertools.product(OPTIMIZERS, SCHEDULERS, ACCUMULATE, CLIPPING))


@pytest.mark.parametrize(
    ("optimizer", "scheduler", "accumulate", "clip"),
    GRID,
    ids=[f"{o}-{s}-acc{a}-clip{c[1] or 'none'}" for o, s, a, c in GRID],
)
def test_manual_step_matches_automatic_optimization(
    tmp_path: Path, optimizer: str, scheduler: str, accumulate: int, clip: tuple[Any, Any]
) -> None:
    automatic, manual = _run_pair(tmp_path, optimizer, scheduler, accumulate, clip)
    assert automatic["global_step"] == 3 * (10 // accumulate + (10 % accumulate > 0))  # the partial window steps
    _assert_identical(automatic, manual)


def test_bf16_mixed_matches(tmp_path: Path) -> None:
    automatic, manual = _run_pair(
        tmp_path, "adam", "step-interval-frequency-2", 3, (0.5, "norm"), precision="bf16-mixed"
    )
    _assert_identical(automatic, manual)


def test_early_stopping_stops_at_the_same_epoch(tmp_path: Path) -> None:
    def stopper() -> EarlyStopping:
        return EarlyStopping(monitor="val_loss", patience=1, min_delta=0.05)

    automatic, manual = (
        _train(tmp_path / name, model, options, callbacks=[stopper()], max_epochs=30)
        for name, model, options in [
            ("automatic", Automatic("sgd-momentum"), {"accumulate_grad_batches": 3}),
            ("manual", Manual("sgd-momentum", accumulate_grad_batches=3), {}),
        ]
    )
    assert automatic["trainer"].current_epoch < 29  # it did stop early
    assert manual["trainer"].current_epoch == automatic["trainer"].current_epoch
    _assert_identical(automatic, manual)
