"""Stock ModelCheckpoint behaves as in automatic optimization; counters survive checkpoints and resume."""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import AutoNet, TwoNets, checkpoint_steps, loader, same, trainer
from lightning import __version__ as lightning_version
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from manualopt import ManualOptimizationModule, ManualOptimizationWarning, OptimizerConfigurationError

# Before 2.5, ModelCheckpoint tested ``if train_time_interval:``, so ``timedelta(0)`` never saved, in automatic
# optimization too.
LIGHTNING_TREATS_ZERO_INTERVAL_AS_UNSET = tuple(int(p) for p in lightning_version.split(".")[:2]) < (2, 5)


def _fit(tmp_path: Path, model: TwoNets, checkpoint: ModelCheckpoint, **kwargs: Any) -> Any:
    fit = trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True, **kwargs)
    fit.fit(model, loader(), kwargs.pop("val", None))
    return fit


def test_every_n_epochs_names_training_steps(tmp_path: Path) -> None:
    _fit(tmp_path, TwoNets(), ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1))
    assert checkpoint_steps(tmp_path / "ckpt") == [10, 20]


@pytest.mark.parametrize("interval", [timedelta(0), timedelta(microseconds=1)])
def test_train_time_interval_saves(tmp_path: Path, interval: timedelta) -> None:
    runs = {}
    for name, model in {"manual": TwoNets(), "automatic": AutoNet()}.items():
        checkpoint = ModelCheckpoint(dirpath=str(tmp_path / name), train_time_interval=interval, save_top_k=-1)
        _fit(tmp_path, model, checkpoint)
        runs[name] = checkpoint_steps(tmp_path / name)
    assert runs["manual"] == runs["automatic"]
    if interval or not LIGHTNING_TREATS_ZERO_INTERVAL_AS_UNSET:
        assert runs["manual"] == list(range(1, 21))


def test_no_pre_optimization_warning(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2, save_top_k=-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, TwoNets(), checkpoint)
    assert not [w for w in caught if "pre-optimization" in str(w.message)]
    assert checkpoint_steps(tmp_path / "ckpt") == list(range(2, 21, 2))


class KeepsPreStepCopies(TwoNets):
    """Has the ``layer`` and ``saved_models`` attributes that Lightning 2.6's manual branch swaps in."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = self.generator
        self.saved_models: dict[int, dict[str, torch.Tensor]] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.saved_models[batch_idx] = {k: v.detach().clone() for k, v in self.layer.state_dict().items()}
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:  # Adam: an optimizer state (moments, step) that changes every update
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=0.01),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=0.01),
        }


def test_checkpoint_holds_live_weights(tmp_path: Path) -> None:
    model = KeepsPreStepCopies()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=5, save_top_k=-1)
    _fit(tmp_path, model, checkpoint)
    saved = torch.load(tmp_path / "ckpt" / "epoch=1-step=20.ckpt", weights_only=False)
    for key, value in model.state_dict().items():
        assert torch.equal(saved["state_dict"][key], value), key
    # the optimizer state beside them is the live one too (Adam's moments, compared tensor by tensor)
    live = model.trainer.optimizers[0].state_dict()["state"]
    assert live
    assert live[0]["exp_avg"].abs().sum() > 0
    assert same(saved["optimizer_states"][0]["state"], live)


def test_save_last_and_top_k_on_monitor(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val_loss", save_top_k=2, save_last=True)
    fit = trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True, max_epochs=3, limit_val_batches=1)
    fit.fit(TwoNets(), loader(), loader(2))
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == sorted(
        ["last.ckpt", *(Path(p).name for p in checkpoint.best_k_models)]
    )
    assert len(checkpoint.best_k_models) == 2
    assert set(checkpoint_steps(tmp_path / "ckpt")) <= {10, 20, 30}
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 30


def test_checkpoint_carries_per_optimizer_counters(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=7, save_top_k=-1)
    _fit(tmp_path, TwoNets(generator_every=5), checkpoint)
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=7.ckpt", weights_only=False)
    assert saved["global_step"] == 7
    assert saved["manualopt"]["optimizer_names"] == ["generator", "discriminator"]
    assert saved["manualopt"]["optimizer_updates"] == {"generator": 2, "discriminator": 7}


class Recorder(TwoNets):
    def __init__(self, generator_every: int = 5) -> None:
        super().__init__(generator_every=generator_every)
        self.updates_seen: list[dict[str, int]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.updates_seen.append(dict(self.optimizer_updates))
        return super().training_step(batch, batch_idx)


def _resume(tmp_path: Path, model: Any, ckpt: str, every: dict[str, int], **kwargs: Any) -> Any:
    """Train one epoch with checkpoints, then resume a fresh ``model`` from ``ckpt`` for a second epoch."""
    directory = tmp_path / type(model).__name__
    first = type(model)()
    _fit(
        directory,
        first,
        ModelCheckpoint(dirpath=str(directory / "ckpt"), save_top_k=-1, **every, **kwargs),
        max_epochs=1,
    )
    fit = trainer(
        directory,
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=str(directory / "ckpt"), save_top_k=-1, **every, **kwargs)],
    )
    path = ckpt if ckpt == "last" else directory / "ckpt" / ckpt
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*dataloader is not resumable.*")
        fit.fit(model, loader(), ckpt_path=path)
    return fit


@pytest.mark.parametrize(
    ("every", "ckpt", "extra"),
    [
        ({"every_n_epochs": 1}, "epoch=0-step=10.ckpt", {}),
        ({"every_n_train_steps": 7}, "epoch=0-step=7.ckpt", {}),
        ({"every_n_train_steps": 5}, "last", {"save_last": True}),
    ],
    ids=["end-of-epoch", "mid-epoch", "last"],
)
def test_resume_continues_counting(tmp_path: Path, every: dict[str, int], ckpt: str, extra: dict[str, Any]) -> None:
    automatic = AutoNet()
    automatic_fit = _resume(tmp_path, automatic, ckpt, every, **extra)
    model = Recorder()
    fit = _resume(tmp_path, model, ckpt, every, **extra)
    # The resumed run sees the same global steps as automatic optimization resuming the same checkpoint (releases
    # before 2.5 replay one batch after a checkpoint written at the end of an epoch's last batch: both do it).
    assert model.global_steps_seen == automatic.global_steps_seen
    assert fit.global_step == automatic_fit.global_step
    resumed_at = model.global_steps_seen[0]
    assert resumed_at == (7 if ckpt.startswith("epoch=0-step=7") else 10)
    # Per-optimizer counters continue from the checkpoint: the generator stepped on batches 0 and 5 before it.
    assert model.updates_seen[0] == {"generator": 2, "discriminator": resumed_at}
    assert model.optimizer_updates["discriminator"] == fit.global_step
    assert model.global_steps_seen == list(range(resumed_at, fit.global_step))


class Configurable(TwoNets):
    """TwoNets whose configure_optimizers returns what the test asks for."""

    def __init__(self, optimizers: Any) -> None:
        super().__init__()
        self.make = optimizers

    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.SGD(self.generator.parameters(), lr=0.01)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=0.01)
        return self.make(opt_g, opt_d)


def _stray_optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)


@pytest.mark.parametrize(
    ("optimizers", "message"),
    [
        (lambda g, d: {"gen": g, "discriminator": d}, r"\['generator', 'discriminator'\].*\['gen', 'discriminator'\]"),
        (
            lambda g, d: {"generator": g},
            r"state of 2 optimizer\(s\) \(\['generator', 'discriminator'\]\) but .* returns 1 \(\['generator'\]\)",
        ),
        (
            lambda g, d: {"generator": g, "discriminator": d, "third": torch.optim.SGD([nn.Parameter(torch.zeros(1))])},
            r"\(\['generator', 'discriminator'\]\) but .* returns 3",
        ),
        (lambda g, d: {"discriminator": d, "generator": g}, r"\['discriminator', 'generator'\]"),
        (lambda g, d: [g, d], r"\['optimizer_0', 'optimizer_1'\]"),
    ],
    ids=["renamed", "fewer", "more", "reordered", "unnamed"],
)
def test_a_refused_resume_loads_nothing(tmp_path: Path, optimizers: Any, message: str) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1)
    _fit(tmp_path, TwoNets(), checkpoint, max_epochs=1)
    model = Configurable(optimizers)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    fit = trainer(tmp_path, max_epochs=2)
    with pytest.raises(OptimizerConfigurationError, match=message):
        fit.fit(model, loader(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))
    assert model.training_step_calls == 0
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)  # nothing of the checkpoint was loaded
    assert "load_model_state_dict" not in vars(fit.strategy)  # and nothing stays on the strategy


def test_load_from_checkpoint_keeps_weights(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1)
    model = TwoNets()
    _fit(tmp_path, model, checkpoint, max_epochs=1)
    loaded = TwoNets.load_from_checkpoint(tmp_path / "ckpt" / "epoch=0-step=10.ckpt")
    assert isinstance(loaded.generator, nn.Linear)
    assert torch.equal(loaded.generator.weight, model.generator.weight)


class SavesMidWindow(Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
        if trainer.current_epoch == 0 and args[-1] == 4:  # batches 3, 4 of the window (3, 4, 5) are in
            trainer.save_checkpoint(self.path)


class Accumulates(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.manual_step("generator", self.losses(batch)[0], accumulate_grad_batches=3)


def test_resume_inside_an_accumulation_window_steps_on_the_same_batches(tmp_path: Path) -> None:
    path = tmp_path / "mid-window.ckpt"
    uninterrupted = trainer(tmp_path, callbacks=[SavesMidWindow(path)])
    uninterrupted.fit(Accumulates(), loader())
    assert uninterrupted.global_step == 8  # windows (0-2), (3-5), (6-8), (9) per epoch
    resumed = trainer(tmp_path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*dataloader is not resumable.*")
        resumed.fit(Accumulates(), loader(), ckpt_path=str(path))
    assert resumed.global_step == uninterrupted.global_step


class ManualBranchEverywhere(ModelCheckpoint):
    """Stands in for a release whose every ModelCheckpoint hook has a manual-optimization branch (PR #21843 adds one
    to ``on_validation_end``): each hook warns as 2.6's ``on_train_batch_end`` does when it sees a manual module."""

    def _check(self, pl_module: LightningModule, hook: str) -> None:
        if not pl_module.automatic_optimization:
            warnings.warn(f"{hook}: no pre-optimization state was saved", UserWarning, stacklevel=2)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._check(pl_module, "on_train_batch_end")
        super().on_train_batch_end(trainer, pl_module, *args)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(pl_module, "on_validation_end")
        super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(pl_module, "on_train_epoch_end")
        super().on_train_epoch_end(trainer, pl_module)


def test_every_checkpoint_hook_takes_the_automatic_path(tmp_path: Path) -> None:
    # every_n_train_steps with a metric logged only in validation: the save is deferred to on_validation_end
    steps = {}
    for name, model in {"automatic": AutoNet(), "manual": KeepsPreStepCopies()}.items():
        checkpoint = ManualBranchEverywhere(
            dirpath=str(tmp_path / name), every_n_train_steps=5, monitor="val_loss", save_top_k=-1
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = trainer(
                tmp_path, callbacks=[checkpoint], enable_checkpointing=True, limit_val_batches=1, val_check_interval=5
            )
            fit.fit(model, loader(), loader(2))
        assert not [w for w in caught if "pre-optimization" in str(w.message)]
        steps[name] = checkpoint_steps(tmp_path / name)
    # the same saves as automatic optimization (Lightning 2.1 skips the first, whose metric comes after it)
    assert steps["manual"] == steps["automatic"]
    assert steps["manual"][-2:] == [15, 20]
    saved = torch.load(next((tmp_path / "manual").glob("*step=20*.ckpt")), weights_only=False)
    for key, value in model.state_dict().items():
        assert torch.equal(saved["state_dict"][key], value), key  # live weights, not a saved_models copy


class ClipsAtEpochEnd(TwoNets):
    """G accumulates 3 with clipping but is called on even batches only: its last window closes at the epoch's end."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        self.manual_step("discriminator", d_loss)
        if batch_idx % 2 == 0:
            self.manual_step("generator", g_loss, accumulate_grad_batches=3, gradient_clip_val=0.25)

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None, **kwargs: Any) -> None:
        if optimizer is self.trainer.optimizers[0]:
            self.generator_clips = [*getattr(self, "generator_clips", []), gradient_clip_val]
        super().configure_gradient_clipping(optimizer, gradient_clip_val, **kwargs)


def test_a_window_resumed_open_closes_with_its_clipping(tmp_path: Path) -> None:
    path = tmp_path / "mid-window.ckpt"

    class SavesAfterBatch8(Callback):
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            if trainer.current_epoch == 0 and args[-1] == 8:  # G's window (6, 8) is open
                trainer.save_checkpoint(path)

    trainer(tmp_path, max_epochs=1, callbacks=[SavesAfterBatch8()]).fit(ClipsAtEpochEnd(), loader())
    assert torch.load(path, weights_only=False)["manualopt"]["accumulation_windows"] == {
        "generator": [2, 0, 0.25, "norm"]
    }
    resumed = ClipsAtEpochEnd()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*dataloader is not resumable.*")
        trainer(tmp_path, max_epochs=1).fit(resumed, loader(), ckpt_path=str(path))
    assert resumed.generator_clips == [0.25]  # the window closed after batch 9, clipped as the uninterrupted run clips
    assert resumed.optimizer_updates["generator"] == 2


def test_a_checkpoint_saved_after_the_fit_holds_where_it_ended(tmp_path: Path) -> None:
    model = TwoNets(generator_every=5)
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    fit.save_checkpoint(tmp_path / "final.ckpt")
    resumed = TwoNets(generator_every=5)
    trainer(tmp_path, max_epochs=2).fit(resumed, loader(), ckpt_path=str(tmp_path / "final.ckpt"))
    assert dict(resumed.optimizer_updates) == {"generator": 4, "discriminator": 20}


class StockAdam(TwoNets):
    """Stock Lightning manual optimization, two Adam optimizers: its checkpoints count every optimizer call."""

    def __init__(self) -> None:
        super().__init__(style="plain", named=False)

    def configure_optimizers(self) -> Any:
        return [torch.optim.Adam(self.generator.parameters()), torch.optim.Adam(self.discriminator.parameters())]


def test_a_stock_manual_checkpoint_resumes_with_converted_counters(tmp_path: Path) -> None:
    from lightning.pytorch import LightningModule

    class Stock(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.generator, self.discriminator = nn.Linear(4, 1), nn.Linear(4, 1)

        training_step = TwoNets.training_step
        losses = TwoNets.losses
        configure_optimizers = StockAdam.configure_optimizers

        def on_train_start(self) -> None:
            self.style, self.generator_every, self.named = "plain", 1, False
            self.training_step_calls, self.global_steps_seen, self.global_steps_after_stepping = 0, [], []

    stock = trainer(tmp_path, max_epochs=1)
    stock.fit(Stock(), loader())
    assert stock.global_step == 20  # stock counting: 10 batches, 2 optimizer calls each
    stock.save_checkpoint(tmp_path / "stock.ckpt")
    model = StockAdam()
    fit = trainer(tmp_path, max_epochs=2)
    with pytest.warns(ManualOptimizationWarning, match="written by stock manual optimization.*continues from 10"):
        fit.fit(model, loader(), ckpt_path=str(tmp_path / "stock.ckpt"))
    assert fit.global_step == 20  # 10 converted + 10 trained
    assert dict(model.optimizer_updates) == {"optimizer_0": 20, "optimizer_1": 20}


def test_an_automatic_checkpoint_resumes_with_its_global_step(tmp_path: Path) -> None:
    automatic = trainer(tmp_path, max_epochs=1)
    automatic.fit(AutoNet(), loader())
    automatic.save_checkpoint(tmp_path / "automatic.ckpt")

    class OneOptimizer(ManualOptimizationModule):
        def __init__(self) -> None:
            super().__init__()
            self.generator = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.manual_step(0, nn.functional.mse_loss(self.generator(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.generator.parameters(), lr=0.01)

    model = OneOptimizer()
    fit = trainer(tmp_path, max_epochs=2)
    with pytest.warns(ManualOptimizationWarning, match="written by automatic optimization.*continues from 10"):
        fit.fit(model, loader(), ckpt_path=str(tmp_path / "automatic.ckpt"))
    assert fit.global_step == 20
    assert dict(model.optimizer_updates) == {"optimizer_0": 20}


def test_a_checkpoint_that_holds_a_path_resumes(tmp_path: Path) -> None:
    # Lightning 2.1 keeps ModelCheckpoint's directory as given (a Path); torch >= 2.6 refuses unknown classes on load
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1)
    _fit(tmp_path, TwoNets(), checkpoint, max_epochs=1)
    resumed = TwoNets()
    fit = trainer(
        tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")], enable_checkpointing=True
    )
    fit.fit(resumed, loader(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))
    assert fit.global_step == 20
