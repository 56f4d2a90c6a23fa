"""Stepping or back-propagating outside training_step is refused before anything changes; legitimate nesting is not."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, same, trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from manualopt import ManualOptimizationModule, StepOutsideTrainingStepError

ACTIONS = ["manual_step", "lightning_optimizer_step", "torch_optimizer_step", "manual_backward"]
ACTION_TEXT = {
    "manual_step": r"`manual_step\('generator'\)`",
    "lightning_optimizer_step": r"`optimizer.step\(\)` of the LightningOptimizer 'generator'",
    "torch_optimizer_step": r"`Adam.step\(\)` of optimizer 'generator'",
    "manual_backward": r"`manual_backward`",
}


class Misuser(TwoNets):
    """Calls one forbidden action in one hook, after giving every parameter a gradient to step on."""

    def __init__(self, hook: str | None = None, action: str = "manual_step") -> None:
        super().__init__()
        self.hook = hook
        self.action = action
        self.snapshot: dict[str, Any] = {}

    def configure_optimizers(self) -> Any:
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=0.1),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=0.1),
        }

    def misuse(self) -> None:
        for parameter in self.parameters():
            parameter.grad = torch.ones_like(parameter)
        self.snapshot = self.state()
        loss = self.generator(torch.ones(1, 4)).sum()
        if self.action == "manual_step":
            self.manual_step("generator", loss)
        elif self.action == "lightning_optimizer_step":
            self.optimizers()[0].step()
        elif self.action == "torch_optimizer_step":
            self.trainer.optimizers[0].step()
        else:
            self.manual_backward(loss)

    def state(self) -> dict[str, Any]:
        return {
            "weights": {k: v.detach().clone() for k, v in self.state_dict().items()},
            "grads": {n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None},
            "optimizers": [copy.deepcopy(o.state_dict()) for o in self.trainer.optimizers],
        }

    def _at(self, hook: str) -> None:
        if self.hook == hook:
            self.misuse()

    def on_fit_start(self) -> None:
        self._at("on_fit_start")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._at("on_train_batch_start")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._at("on_train_batch_end")

    def on_train_epoch_end(self) -> None:
        self._at("on_train_epoch_end")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._at("validation_step")

    def on_validation_epoch_end(self) -> None:
        self._at("on_validation_epoch_end")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._at("test_step")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._at("predict_step")


class MisbehavingCallback(Callback):
    def __init__(self, hook: str) -> None:
        self.hook = hook

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.hook == "on_train_batch_end":
            pl_module.misuse()  # type: ignore[operator]

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.hook == "on_train_epoch_start":
            pl_module.misuse()  # type: ignore[operator]

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.hook == "on_validation_batch_end":
            pl_module.misuse()  # type: ignore[operator]


def _assert_nothing_changed(model: Misuser) -> None:
    after = model.state()
    for key, value in model.snapshot["weights"].items():
        assert torch.equal(after["weights"][key], value), f"weight {key} changed"
    assert after["grads"].keys() == model.snapshot["grads"].keys()
    for key, value in model.snapshot["grads"].items():
        assert torch.equal(after["grads"][key], value), f"gradient {key} changed"
    assert same(after["optimizers"], model.snapshot["optimizers"])


MODULE_HOOKS = [
    "on_fit_start",
    "on_train_batch_start",
    "on_train_batch_end",
    "on_train_epoch_end",
    "validation_step",
    "on_validation_epoch_end",
]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("hook", MODULE_HOOKS)
def test_module_hooks_refuse(tmp_path: Path, hook: str, action: str) -> None:
    model = Misuser(hook, action)
    fit = trainer(tmp_path, limit_val_batches=1)
    with pytest.raises(StepOutsideTrainingStepError, match=rf"{ACTION_TEXT[action]} was called in `Misuser.{hook}`"):
        fit.fit(model, loader(), loader(2))
    _assert_nothing_changed(model)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("hook", ["on_train_batch_end", "on_train_epoch_start", "on_validation_batch_end"])
def test_callback_hooks_refuse(tmp_path: Path, hook: str, action: str) -> None:
    model = Misuser(None, action)
    fit = trainer(tmp_path, callbacks=[MisbehavingCallback(hook)], limit_val_batches=1)
    expected = rf"{ACTION_TEXT[action]} was called in `MisbehavingCallback.{hook}` \(a Callback hook\)"
    with pytest.raises(StepOutsideTrainingStepError, match=expected):
        fit.fit(model, loader(), loader(2))
    _assert_nothing_changed(model)


def test_message_names_the_fix(tmp_path: Path) -> None:
    model = Misuser("on_train_batch_end", "manual_step")
    with pytest.raises(StepOutsideTrainingStepError) as error:
        trainer(tmp_path).fit(model, loader())
    message = str(error.value)
    assert "outside `training_step`" in message
    assert "Nothing was changed" in message
    assert "def training_step(self, batch, batch_idx):" in message
    assert "self.manual_step('generator', loss)" in message


@pytest.mark.parametrize("action", ["manual_step", "manual_backward"])
@pytest.mark.parametrize("stage", ["test", "predict", "validate"])
def test_evaluation_stages_refuse(tmp_path: Path, stage: str, action: str) -> None:
    model = Misuser(None, action)
    fit = trainer(tmp_path, max_epochs=1, limit_train_batches=1)
    fit.fit(model, loader())
    model.hook = {"test": "test_step", "predict": "predict_step", "validate": "validation_step"}[stage]
    with pytest.raises(StepOutsideTrainingStepError, match=rf"`Misuser.{model.hook}` during `Trainer.{stage}`"):
        getattr(fit, stage)(model, loader(2))
    _assert_nothing_changed(model)


def test_outside_fit_refuses_before_and_after(tmp_path: Path) -> None:
    model = Misuser()
    loss = model.generator(torch.ones(1, 4)).sum()
    with pytest.raises(StepOutsideTrainingStepError, match=r"outside a running `Trainer\.fit`"):
        model.manual_step("generator", loss)
    with pytest.raises(StepOutsideTrainingStepError, match="`manual_backward` was called outside a running"):
        model.manual_backward(loss)
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    for action in ["manual_step", "manual_backward"]:
        model.action = action
        with pytest.raises(StepOutsideTrainingStepError, match=r"outside a running `Trainer\.fit`"):
            model.misuse()
        _assert_nothing_changed(model)
    # the fit's step guards ended with it: the optimizers are plain PyTorch again
    for action in ["lightning_optimizer_step", "torch_optimizer_step"]:
        model.action = action
        model.misuse()
        assert not torch.equal(
            model.state()["weights"]["generator.weight"], model.snapshot["weights"]["generator.weight"]
        )


class StepsWhileConfiguring(TwoNets):
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.generator.parameters(), lr=0.1)
        self.generator.weight.grad = torch.ones_like(self.generator.weight)
        self.before = self.generator.weight.detach().clone()
        optimizer.step()
        return optimizer


def test_configure_optimizers_refuses(tmp_path: Path) -> None:
    model = StepsWhileConfiguring()
    with pytest.raises(StepOutsideTrainingStepError, match=r"`SGD.step\(\)` was called in `StepsWhileConfiguring"):
        trainer(tmp_path).fit(model, loader())
    assert torch.equal(model.generator.weight, model.before)


# ---------------------------------------------------------------- legitimate nesting


class ClosureAndHooks(TwoNets):
    """Steps through closures (one of them LBFGS, which evaluates it several times) and inspects grads in hooks."""

    def configure_optimizers(self) -> Any:
        return {
            "generator": torch.optim.LBFGS(self.generator.parameters(), lr=0.1, max_iter=3),
            "discriminator": torch.optim.SGD(self.discriminator.parameters(), lr=0.01),
        }

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.training_step_calls += 1
        opt_g, opt_d = self.optimizers()

        def closure_g() -> torch.Tensor:
            opt_g.zero_grad()
            loss = self.losses(batch)[0]
            self.manual_backward(loss)
            return loss

        def closure_d() -> torch.Tensor:
            opt_d.zero_grad()
            loss = self.losses(batch)[1]
            self.helper_backward(loss)
            return loss

        opt_g.step(closure_g)
        opt_d.step(closure_d)

    def helper_backward(self, loss: torch.Tensor) -> None:
        self.manual_backward(loss)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.grad_norms = getattr(self, "grad_norms", 0) + 1


def test_closures_helpers_and_hook_work_are_allowed(tmp_path: Path) -> None:
    model = ClosureAndHooks()
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert fit.global_step == 20
    assert dict(model.optimizer_updates) == {"generator": 20, "discriminator": 20}
    assert model.grad_norms >= 40  # LBFGS evaluates its closure (and the hook) several times per step


class StepMixin:
    def training_step(self: Any, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        self.manual_step("discriminator", d_loss)
        self.manual_step("generator", g_loss)


class OptimizerMixin:
    def configure_optimizers(self: Any) -> Any:
        return {
            "generator": torch.optim.SGD(self.generator.parameters(), lr=0.01),
            "discriminator": torch.optim.SGD(self.discriminator.parameters(), lr=0.01),
        }


class MixedIn(StepMixin, OptimizerMixin, ManualOptimizationModule):
    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.nn.Linear(4, 1)
        self.discriminator = torch.nn.Linear(4, 1)

    losses = TwoNets.losses


class SuperChain(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx)


class OverridesEverything(TwoNets):
    """Overrides the hooks manualopt cares about, none of them calling super()."""

    def configure_callbacks(self) -> list[Callback]:
        return [ModelCheckpoint(dirpath=str(self.checkpoint_dir), every_n_train_steps=10, save_top_k=-1)]

    def on_fit_start(self) -> None:
        pass

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        pass

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass


@pytest.mark.parametrize("model_class", [MixedIn, SuperChain])
def test_class_hierarchy_does_not_matter(tmp_path: Path, model_class: type) -> None:
    model = model_class()
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert fit.global_step == 20
    assert dict(model.optimizer_updates) == {"generator": 20, "discriminator": 20}


def test_overrides_without_super(tmp_path: Path) -> None:
    model = OverridesEverything()
    model.checkpoint_dir = tmp_path / "ckpt"
    fit = trainer(tmp_path, enable_checkpointing=True)
    fit.fit(model, loader())
    assert fit.global_step == 20
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=10.ckpt", weights_only=False)
    assert saved["manualopt"]["optimizer_updates"] == {"generator": 10, "discriminator": 10}


class CallsTrainingStepFromAHook(TwoNets):
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.training_step(batch, batch_idx)


def test_training_step_called_from_a_hook_is_not_a_training_step(tmp_path: Path) -> None:
    with pytest.raises(StepOutsideTrainingStepError, match=r"`CallsTrainingStepFromAHook\.on_train_batch_end`"):
        trainer(tmp_path).fit(CallsTrainingStepFromAHook(), loader())


def test_validate_with_a_new_trainer_refuses_manual_step(tmp_path: Path) -> None:
    class StepsInValidation(TwoNets):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.manual_step("generator", self.losses(batch)[0])

    model = StepsInValidation()
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    from manualopt import StepOutsideTrainingStepError

    with pytest.raises(StepOutsideTrainingStepError, match=r"`StepsInValidation\.validation_step` during"):
        trainer(tmp_path).validate(model, loader(2))
    assert dict(model.named_optimizers()) == {}


def test_after_a_crashed_fit_manual_step_outside_a_fit_is_a_step_outside_training_step(tmp_path: Path) -> None:
    class Crashes(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            if batch_idx == 2:
                raise ValueError("the user's bug")

    model = Crashes()
    with pytest.raises(ValueError, match="the user's bug"):
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    loss = model.generator(torch.ones(1, 4)).sum()
    with pytest.raises(StepOutsideTrainingStepError, match="outside"):  # not a diagnosis of a missing callback
        model.manual_step("generator", loss)
