"""configure_optimizers forms, optimizer names, addressing optimizers, and the automatic_optimization flag."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException

from manualopt import (
    InvalidArgumentError,
    ManualOptimizationError,
    ManualOptimizationModule,
    OptimizerConfigurationError,
    StepResult,
    UnknownOptimizerError,
)


class Configured(TwoNets):
    """Returns whatever ``make`` builds from the two optimizers, and steps them by index."""

    def __init__(self, make: Any) -> None:
        super().__init__(style="indexed")
        self.make = make

    def configure_optimizers(self) -> Any:
        opt_g = torch.optim.SGD(self.generator.parameters(), lr=0.01)
        opt_d = torch.optim.SGD(self.discriminator.parameters(), lr=0.01)
        return self.make(opt_g, opt_d)


def _step_lr(opt: Any) -> Any:
    return torch.optim.lr_scheduler.StepLR(opt, 1)


LIGHTNING_FORMS = {
    "list": lambda g, d: [g, d],
    "tuple": lambda g, d: (g, d),
    "two lists": lambda g, d: ([g, d], [_step_lr(g)]),
    "list of dicts": lambda g, d: [{"optimizer": g, "lr_scheduler": _step_lr(g)}, {"optimizer": d}],
}


@pytest.mark.parametrize("form", LIGHTNING_FORMS)
def test_lightning_forms_get_index_names(tmp_path: Path, form: str) -> None:
    model = Configured(LIGHTNING_FORMS[form])
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert model.optimizer_names == ("optimizer_0", "optimizer_1")
    assert fit.global_step == 20


class OneOptimizer(TwoNets):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.01)
        return opt if self.form == "optimizer" else {"optimizer": opt, "lr_scheduler": _step_lr(opt)}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        self.last = self.manual_step(0, g_loss + d_loss)


@pytest.mark.parametrize("form", ["optimizer", "dict"])
def test_single_optimizer_forms(tmp_path: Path, form: str) -> None:
    model = OneOptimizer(form)
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert model.optimizer_names == ("optimizer_0",)
    assert model.last == StepResult(optimizer="optimizer_0", stepped=True, updates=20)
    assert fit.global_step == 20


def test_named_mapping_with_scheduler_dicts(tmp_path: Path) -> None:
    def make(g: Any, d: Any) -> Any:
        return {"generator": g, "discriminator": {"optimizer": d, "lr_scheduler": _step_lr(d)}}

    model = Configured(make)
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert model.optimizer_names == ("generator", "discriminator")
    assert [name for name, _ in model.named_optimizers()] == ["generator", "discriminator"]
    assert dict(model.named_optimizers())["discriminator"].optimizer is fit.optimizers[1]
    assert model.optimizer("discriminator") is model.optimizers()[1]
    assert len(fit.lr_scheduler_configs) == 1


def test_direct_call_returns_the_mapping_as_written() -> None:
    config = TwoNets().configure_optimizers()
    assert isinstance(config, dict)
    assert list(config) == ["generator", "discriminator"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda g, d: {}, "empty mapping"),
        (lambda g, d: {"": g, "d": d}, "non-empty strings.*''"),
        (lambda g, d: {"  ": g}, "non-empty strings"),
        (lambda g, d: {1: g}, "non-empty strings.*1"),
        (lambda g, d: {"lr_scheduler": g}, "'lr_scheduler' is reserved"),
        (
            lambda g, d: {"generator": g, "again": g},
            "same optimizer object is named both 'generator' and 'again'",
        ),
        (lambda g, d: {"generator": "adam"}, "'generator' is a str; expected a torch optimizer"),
        (
            lambda g, d: {"generator": {"lr_scheduler": None}},
            "'generator' is a dictionary without an 'optimizer'",
        ),
        (lambda g, d: [g, g], "configured twice \\(as 'optimizer_0' and 'optimizer_1'\\)"),
    ],
)
def test_bad_configurations_are_refused_before_training(tmp_path: Path, make: Any, message: str) -> None:
    model = Configured(make)
    with pytest.raises(OptimizerConfigurationError, match=message):
        trainer(tmp_path).fit(model, loader())
    assert model.training_step_calls == 0


class Addressing(TwoNets):
    def __init__(self, key: Any) -> None:
        super().__init__()
        self.key = key

    def training_step(self, batch: Any, batch_idx: int) -> None:
        key = self.key(self) if callable(self.key) else self.key
        self.result = self.manual_step(key, self.losses(batch)[0])


@pytest.mark.parametrize(
    "key",
    ["generator", 0, -2, lambda m: m.optimizers()[0], lambda m: m.trainer.optimizers[0]],
    ids=["name", "index", "negative-index", "lightning-optimizer", "torch-optimizer"],
)
def test_optimizer_can_be_addressed_every_way(tmp_path: Path, key: Any) -> None:
    model = Addressing(key)
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert model.result == StepResult(optimizer="generator", stepped=True, updates=10)


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("genrator", "'genrator'"),
        (2, "2"),
        (True, "True"),
        (lambda m: torch.optim.SGD([torch.zeros(1)]), "'SGD'"),
    ],
)
def test_unknown_optimizer_lists_the_names(tmp_path: Path, key: Any, shown: str) -> None:
    model = Addressing(key)
    expected = rf"Unknown optimizer {shown}. This module's optimizers are \['generator', 'discriminator'\]"
    with pytest.raises(UnknownOptimizerError, match=expected):
        trainer(tmp_path).fit(model, loader())


class SkipsOnInfinity(TwoNets):
    """Makes the generator's loss infinite on batch 3, so the fp16 GradScaler skips that update."""

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        if batch_idx == 3:
            g_loss = g_loss * float("inf")
        self.results = getattr(self, "results", [])
        self.results.append((self.manual_step("generator", g_loss), self.manual_step("discriminator", d_loss)))


def _fp16_cpu_plugin() -> Any:
    try:
        from lightning.pytorch.plugins.precision import MixedPrecision
    except ImportError:  # Lightning < 2.2
        from lightning.pytorch.plugins.precision import MixedPrecisionPlugin as MixedPrecision
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))


def test_skipped_fp16_steps_are_not_updates(tmp_path: Path) -> None:
    model = SkipsOnInfinity()
    fit = trainer(tmp_path, max_epochs=1, plugins=[_fp16_cpu_plugin()])
    fit.fit(model, loader())
    generator = [g.stepped for g, _ in model.results]
    discriminator = [d.stepped for _, d in model.results]
    assert generator[3] is False
    assert model.optimizer_updates["generator"] == sum(generator)
    assert model.optimizer_updates["discriminator"] == sum(discriminator)
    assert fit.global_step == sum(g or d for g, d in zip(generator, discriminator, strict=True))
    assert fit.global_step < 10  # the scaler skipped at least one whole batch (its first scale is too large)


class ContaminatedGradients(TwoNets):
    """Back-propagates a loss through the discriminator first, as a GAN's generator loss does."""

    def configure_optimizers(self) -> Any:
        return {"discriminator": torch.optim.SGD(self.discriminator.parameters(), lr=0.5)}

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, _ = batch
        self.manual_backward(self.discriminator(x).sum() * 100)  # gradients that are not the discriminator's loss
        d_loss = self.losses(batch)[1]
        params = list(self.discriminator.parameters())
        grads = torch.autograd.grad(d_loss, params, retain_graph=True)
        self.expected = [p.detach() - 0.5 * g for p, g in zip(params, grads, strict=True)]
        self.manual_step("discriminator", d_loss)
        self.after = [p.detach().clone() for p in params]
        self.grads_after = [p.grad for p in params]


def test_manual_step_uses_exactly_this_loss(tmp_path: Path) -> None:
    model = ContaminatedGradients()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(model, loader())
    for after, expected in zip(model.after, model.expected, strict=True):
        assert torch.equal(after, expected)
    assert model.grads_after == [None, None]  # gradients are released after the step


def test_automatic_optimization_is_always_false() -> None:
    model = TwoNets()
    assert model.automatic_optimization is False
    model.automatic_optimization = False  # what plain Lightning code writes in __init__: accepted
    with pytest.raises(InvalidArgumentError, match=r"always manually optimized.*LightningModule"):
        model.automatic_optimization = True
    assert model.automatic_optimization is False


def test_a_fitted_module_pickles_and_copies_fresh(tmp_path: Path) -> None:
    model = TwoNets()
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert dict(model.optimizer_updates) == {"generator": 10, "discriminator": 10}
    for copied in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.equal(copied.generator.weight, model.generator.weight)
        assert dict(copied.optimizer_updates) == {}
        trainer(tmp_path, max_epochs=1).fit(copied, loader())
        assert dict(copied.optimizer_updates) == {"generator": 10, "discriminator": 10}


def test_exceptions_are_runtime_errors() -> None:
    assert issubclass(ManualOptimizationError, RuntimeError)
    assert issubclass(UnknownOptimizerError, LookupError)
    assert issubclass(OptimizerConfigurationError, ManualOptimizationError)


def test_subclass_without_training_step_still_fails_like_lightning(tmp_path: Path) -> None:
    class NoStep(ManualOptimizationModule):
        def configure_optimizers(self) -> Any:
            return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    with pytest.raises(MisconfigurationException, match=r"No `training_step\(\)` method defined"):
        trainer(tmp_path).fit(NoStep(), loader())


@pytest.mark.parametrize(
    ("argument", "keyword"),
    [
        ({"gradient_clip_val": 0.5}, "gradient_clip_val=0.5"),
        ({"accumulate_grad_batches": 3}, "accumulate_grad_batches=3"),
    ],
)
def test_trainer_arguments_of_automatic_optimization_point_at_manual_step(
    tmp_path: Path, argument: dict[str, Any], keyword: str
) -> None:
    model = TwoNets()
    with pytest.raises(OptimizerConfigurationError, match=rf"`Trainer\({keyword}\)` does not apply.*manual_step\(name"):
        trainer(tmp_path, **argument).fit(model, loader())
    assert model.training_step_calls == 0


def test_hooks_assigned_after_the_class_was_created_are_wrapped(tmp_path: Path) -> None:
    class Late(ManualOptimizationModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

    def training_step(self: Any, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.manual_step("net", torch.nn.functional.mse_loss(self.net(x), y))

    Late.training_step = training_step  # type: ignore[method-assign]  # a notebook cell, a decorator, a factory
    Late.configure_optimizers = lambda self: {"net": torch.optim.SGD(self.net.parameters(), lr=0.1)}  # type: ignore[method-assign]
    model = Late()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    assert fit.global_step == 10
    assert dict(model.optimizer_updates) == {"net": 10}


def test_a_class_rebased_onto_manual_optimization_module_works(tmp_path: Path) -> None:
    from lightning.pytorch import LightningModule

    class Plain(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            optimizer = self.optimizers()
            x, y = batch
            optimizer.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(self.net(x), y))
            optimizer.step()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

    Plain.__bases__ = (ManualOptimizationModule,)
    model = Plain()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    assert fit.global_step == 10
    assert dict(model.optimizer_updates) == {"optimizer_0": 10}
