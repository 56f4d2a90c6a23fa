"""The public API as it stays: names, types, error classes, warnings, and where schedules and averages may live."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.rank_zero import rank_zero_only

import manualopt
from manualopt import (
    EMA,
    InvalidArgumentError,
    ManualOptimizationWarning,
    OptimizerConfigurationError,
    StepSchedule,
    UnknownOptimizerError,
)
from manualopt.types import OptimizerKey, StepResult


def test_public_types_live_in_public_modules() -> None:
    assert manualopt.StepResult is StepResult
    assert manualopt.OptimizerKey is OptimizerKey
    assert StepResult.__module__ == "manualopt.types"
    assert all(not name.startswith("_") for name in manualopt.__all__ if name != "__version__")


def test_named_optimizers_yields_pairs_like_torch(tmp_path: Path) -> None:
    model = TwoNets()
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    pairs = list(model.named_optimizers())
    assert [name for name, _ in pairs] == ["generator", "discriminator"]
    assert all(isinstance(optimizer, LightningOptimizer) for _, optimizer in pairs)
    assert dict(model.named_optimizers())["generator"] is model.optimizer("generator") is model.optimizer(0)
    with pytest.raises(TypeError):  # the mapping reads of manualopt 0.1 went in 0.3
        model.named_optimizers()["discriminator"]  # type: ignore[index]


def test_the_aliases_deprecated_in_0_2_are_gone() -> None:
    assert not hasattr(manualopt.ManualOptimizationModule, "optimizing")  # toggled_optimizer replaced it


def test_ema_takes_an_optimizer_key_like_manual_step(tmp_path: Path) -> None:
    class ByIndex(TwoNets):
        def __init__(self) -> None:
            super().__init__()
            self.average = EMA(self.generator, optimizer=0)  # "generator" is optimizer 0

    model = ByIndex()
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert int(model.average.updates) == model.optimizer_updates["generator"] == 10


@pytest.mark.parametrize(
    "build",
    [
        lambda: StepSchedule.cycle(("critic", 0)),
        lambda: EMA(torch.nn.Linear(1, 1), optimizer="g", decay=1.5),
        lambda: EMA(torch.nn.Linear(1, 1), optimizer=None),  # type: ignore[arg-type]
        lambda: setattr(TwoNets(), "automatic_optimization", True),
    ],
    ids=["StepSchedule", "EMA-decay", "EMA-optimizer", "automatic_optimization"],
)
def test_bad_constructor_and_setter_arguments_are_value_errors(build: Any) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        build()
    assert isinstance(error.value, ValueError)


def test_a_scheduler_of_an_optimizer_that_was_not_returned_is_named(tmp_path: Path) -> None:
    class Stray(TwoNets):
        def configure_optimizers(self) -> Any:
            stray = torch.optim.SGD(self.generator.parameters(), lr=0.1)
            opt = torch.optim.SGD(self.discriminator.parameters(), lr=0.1)
            return {"discriminator": {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(stray, 1)}}

    with pytest.raises(OptimizerConfigurationError, match=r"StepLR belongs to an optimizer .* \['discriminator'\]"):
        trainer(tmp_path, max_epochs=1).fit(Stray(), loader())


def test_due_for_an_optimizer_the_schedule_does_not_list(tmp_path: Path) -> None:
    class Asks(TwoNets):
        def __init__(self) -> None:
            super().__init__()
            self.schedule = StepSchedule.every(discriminator=1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            with pytest.raises(InvalidArgumentError, match="'generator' is an optimizer of this module, but"):
                self.schedule.due("generator")
            with pytest.raises(UnknownOptimizerError, match=r"'gen' is not in this StepSchedule"):
                self.schedule.due("gen")
            self.asked = True
            super().training_step(batch, batch_idx)

    model = Asks()
    trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(model, loader())
    assert model.asked


class SchedulesKeptElsewhere(TwoNets):
    """Schedules in a dictionary attribute, on a submodule, and outside the module altogether."""

    def __init__(self, outside: StepSchedule) -> None:
        super().__init__()
        self.schedules = {"generator": StepSchedule.every(generator=2)}
        self.generator.schedule = StepSchedule.every(generator=3)  # type: ignore[assignment]
        self.outside = [outside]  # kept out of the module's attributes below, in a closure
        self._outside = lambda: outside
        del self.outside
        self.decisions: list[tuple[bool, bool, bool]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.decisions.append(
            (
                self.schedules["generator"].due("generator"),
                self.generator.schedule.due("generator"),  # type: ignore[operator]
                self._outside().due("generator"),
            )
        )
        super().training_step(batch, batch_idx)


def test_schedules_advance_wherever_they_are_kept(tmp_path: Path) -> None:
    outside = StepSchedule.every(generator=5)
    model = SchedulesKeptElsewhere(outside)
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert [d[0] for d in model.decisions] == [(i + 1) % 2 == 0 for i in range(10)]
    assert [d[1] for d in model.decisions] == [(i + 1) % 3 == 0 for i in range(10)]
    assert [d[2] for d in model.decisions] == [(i + 1) % 5 == 0 for i in range(10)]
    assert model.schedules["generator"].position == outside.position == 10


def test_a_schedule_on_a_submodule_is_checked_when_fit_starts(tmp_path: Path) -> None:
    model = TwoNets()
    model.generator.schedule = StepSchedule.every(gen=2)  # type: ignore[assignment]
    with pytest.raises(OptimizerConfigurationError, match=r"names \['gen'\]"):
        trainer(tmp_path, max_epochs=1).fit(model, loader())
    assert model.training_step_calls == 0


def test_warnings_have_a_category_and_come_from_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Unlogged(TwoNets):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "nowhere", "strict": False}}

        def training_step(self, batch: Any, batch_idx: int) -> None:
            self.manual_step(0, sum(self.losses(batch)))

    with pytest.warns(ManualOptimizationWarning, match="monitors 'nowhere', which was not logged"):
        trainer(tmp_path, max_epochs=1).fit(Unlogged(), loader())
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=1).fit(Unlogged(), loader())
    assert not [w for w in caught if issubclass(w.category, ManualOptimizationWarning)]


def test_a_checkpoint_of_an_unknown_format_is_refused(tmp_path: Path) -> None:
    model = TwoNets()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    path = tmp_path / "future.ckpt"
    fit.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    checkpoint["manualopt"]["format"] = 99
    torch.save(checkpoint, path)
    with pytest.raises(OptimizerConfigurationError, match="format 99, which this manualopt does not know"):
        trainer(tmp_path, max_epochs=2).fit(TwoNets(), loader(), ckpt_path=str(path))


class ValidationFails(TwoNets):
    def __init__(self) -> None:
        super().__init__()
        self.average = EMA(self.generator, optimizer="generator", decay=0.5, evaluate_with_average=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        raise KeyError("validation")


def test_averaged_weights_are_swapped_back_when_validation_raises(tmp_path: Path) -> None:
    model = ValidationFails()
    with pytest.raises(KeyError, match="validation"):
        trainer(tmp_path, max_epochs=1, limit_val_batches=1).fit(model, loader(), loader(2))
    trained = [p.detach().clone() for p in model.generator.parameters()]
    averaged = [p.detach().clone() for p in model.average.average.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(trained, averaged, strict=True))  # they differ by now
    with model.average.swapped():  # swapping puts the average in: the module held its own weights
        assert all(torch.equal(p, a) for p, a in zip(model.generator.parameters(), averaged, strict=True))
