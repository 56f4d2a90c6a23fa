"""Non-finite losses and gradients: refused by default before the weights change, withheld in skip mode."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from manualopt import InvalidStepArgumentError, NonFiniteError, StepResult


def _nan_loss(model: TwoNets, loss: torch.Tensor) -> torch.Tensor:
    return loss * float("nan")


def _inf_loss(model: TwoNets, loss: torch.Tensor) -> torch.Tensor:
    return loss * float("inf")


def _nan_gradient(model: TwoNets, loss: torch.Tensor) -> torch.Tensor:
    # finite value (0), non-finite gradient: d sqrt(|u|) at u = 0 is infinite, times d|v| = 0 -> NaN
    weight = model.generator.weight.sum()
    return loss + (weight - weight).abs().sqrt()


BREAKERS = {"nan-loss": _nan_loss, "inf-loss": _inf_loss, "nan-gradient": _nan_gradient}


class Breaks(TwoNets):
    """The generator's loss turns non-finite on batch 3; records the weights and results around every update."""

    def __init__(self, breaker: Any, policy: str | None = None, per_optimizer: bool = False) -> None:
        super().__init__()
        self.breaker = breaker
        self.per_optimizer = per_optimizer
        if policy is not None and not per_optimizer:
            self.non_finite = policy  # type: ignore[assignment]
        self.policy = policy
        self.results: list[StepResult] = []
        self.changed: list[bool] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        if batch_idx == 3:
            g_loss = self.breaker(self, g_loss)
        self.manual_step("discriminator", d_loss)
        before = [p.detach().clone() for p in self.generator.parameters()]
        try:
            self.results.append(self.manual_step("generator", g_loss))
        finally:
            self.changed.append(
                any(not torch.equal(a, b) for a, b in zip(before, self.generator.parameters(), strict=True))
            )

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if self.per_optimizer:
            config["generator"] = {"optimizer": config["generator"], "non_finite": self.policy}
        return config


@pytest.mark.parametrize("breaker", list(BREAKERS))
def test_by_default_a_non_finite_update_is_refused_before_the_weights_change(tmp_path: Path, breaker: str) -> None:
    model = Breaks(BREAKERS[breaker])
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_top_k=-1)
    fit = trainer(tmp_path, max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True)
    expected = r"manual_step\('generator'\): a gradient is not finite .* at batch 3 of epoch 0, global step 3"
    with pytest.raises(NonFiniteError, match=expected):
        fit.fit(model, loader())
    assert model.changed == [True, True, True, False]  # batch 3's update was not applied
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for path in (tmp_path / "ckpt").glob("*.ckpt"):  # no checkpoint holds a non-finite weight
        state = torch.load(path, weights_only=False)["state_dict"]
        assert all(torch.isfinite(value).all() for value in state.values()), path.name


def test_the_error_shows_a_non_finite_loss(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"\(the loss is nan\)"):
        trainer(tmp_path, max_epochs=1).fit(Breaks(_nan_loss), loader())


@pytest.mark.parametrize("per_optimizer", [False, True], ids=["module", "optimizer"])
@pytest.mark.parametrize("breaker", list(BREAKERS))
def test_skip_mode_withholds_and_counts_the_update(tmp_path: Path, breaker: str, per_optimizer: bool) -> None:
    model = Breaks(BREAKERS[breaker], "skip", per_optimizer)
    fit = trainer(tmp_path, max_epochs=1, logger=CSVLogger(tmp_path), log_every_n_steps=1)
    fit.fit(model, loader())
    assert [r.skipped for r in model.results] == [False, False, False, True] + [False] * 6
    assert model.changed[3] is False
    assert model.results[3].stepped is False
    assert dict(model.optimizer_updates) == {"generator": 9, "discriminator": 10}
    assert fit.global_step == 10  # the discriminator updated on batch 3: still a training step
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with open(Path(fit.logger.log_dir) / "metrics.csv") as handle:  # type: ignore[union-attr]
        logged = [(int(row["step"]), row["skipped_updates/generator"]) for row in csv.DictReader(handle)]
    counts = [(step, value) for step, value in logged if value]
    assert counts[0] == (3, "1.0")  # logged from the step that withheld it (a count: later rows repeat it)
    assert {value for _, value in counts} == {"1.0"}
    fit.save_checkpoint(tmp_path / "after.ckpt")
    assert torch.load(tmp_path / "after.ckpt", weights_only=False)["manualopt"]["skipped_updates"] == {
        "generator": 1,
        "discriminator": 0,
    }


def test_ignore_mode_applies_the_update(tmp_path: Path) -> None:
    model = Breaks(_nan_loss, "ignore")
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert not all(torch.isfinite(p).all() for p in model.generator.parameters())


def test_a_bad_policy_is_refused_when_fit_starts(tmp_path: Path) -> None:
    model = Breaks(_nan_loss, "sometimes", per_optimizer=True)
    with pytest.raises(InvalidStepArgumentError, match=r"optimizer 'generator': non_finite must be 'error', 'skip'"):
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert model.training_step_calls == 0


class DefersChecks(Callback):
    """Makes the checks behave as they do on a GPU: the flags are read only at check points."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        session = pl_module._manualopt_link.session  # type: ignore[union-attr]
        for record in session.records:
            record.defers_check = True
        session.defers_checks = True


def test_on_a_gpu_the_error_comes_at_the_next_check_point_before_any_checkpoint(tmp_path: Path) -> None:
    model = Breaks(_nan_gradient)
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=5, save_top_k=-1)
    fit = trainer(tmp_path, max_epochs=1, callbacks=[DefersChecks(), checkpoint], enable_checkpointing=True)
    expected = r"optimizer 'generator' since batch 0 .* had a non-finite gradient .* found before a checkpoint save"
    with pytest.raises(NonFiniteError, match=expected):
        fit.fit(model, loader())
    assert model.changed[3] is True  # applied: the flag was not read on that update
    assert [p.name for p in (tmp_path / "ckpt").glob("*.ckpt")] == []  # the step-5 save was refused


class RepairsGradients(Breaks):
    """Breaks the generator's gradient on batch 3 and repairs it in one of the user's hooks before the step."""

    def __init__(self, hook: str) -> None:
        super().__init__(_nan_gradient)
        self.hook = hook
        self.repaired = 0

    def _repair(self, optimizer: Any) -> None:
        for parameter in self.generator.parameters():
            if parameter.grad is not None and not torch.isfinite(parameter.grad).all():
                torch.nan_to_num_(parameter.grad, nan=0.0, posinf=0.0, neginf=0.0)
                self.repaired += 1

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.hook == "on_before_optimizer_step":
            self._repair(optimizer)

    def configure_gradient_clipping(self, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        if self.hook == "configure_gradient_clipping":
            self._repair(optimizer)


@pytest.mark.parametrize("hook", ["on_before_optimizer_step", "configure_gradient_clipping"])
def test_gradients_repaired_in_the_users_hooks_are_not_refused(tmp_path: Path, hook: str) -> None:
    model = RepairsGradients(hook)
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert model.repaired > 0  # the hook saw the non-finite gradient of batch 3
    assert all(result.stepped for result in model.results)  # and the check, after it, let the update through
    assert dict(model.optimizer_updates) == {"generator": 10, "discriminator": 10}
