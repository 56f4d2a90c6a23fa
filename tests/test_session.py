"""A fit's side effects end with the fit: hooks, wrappers and patches, per thread, per module, per trainer."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, checkpoint_steps, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer

from manualopt import StepOutsideTrainingStepError


def _hook_counts(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    return len(optimizer._optimizer_step_pre_hooks), len(optimizer._optimizer_step_post_hooks)


class Failing(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 3:
            raise ArithmeticError("batch 3")
        super().training_step(batch, batch_idx)


@pytest.mark.parametrize("fails", [False, True], ids=["fit-ends", "fit-fails"])
def test_nothing_stays_on_the_optimizers_after_the_fit(tmp_path: Path, fails: bool) -> None:
    model = Failing() if fails else TwoNets()
    fit = trainer(tmp_path, max_epochs=1)
    if fails:
        with pytest.raises(ArithmeticError):
            fit.fit(model, loader())
    else:
        fit.fit(model, loader())
    for raw, wrapped in zip(fit.optimizers, model.optimizers(), strict=True):
        assert _hook_counts(raw) == (0, 0)
        assert "step" not in vars(wrapped)
    # plain PyTorch again: a step after training is not refused
    weight = model.generator.weight.detach().clone()
    model.generator.weight.grad = torch.ones_like(weight)
    fit.optimizers[0].step()
    assert not torch.equal(model.generator.weight, weight)


class BlocksInConfigure(TwoNets):
    """configure_optimizers waits while another thread steps an optimizer of its own."""

    def __init__(self, entered: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.entered, self.release = entered, release

    def configure_optimizers(self) -> Any:
        self.entered.set()
        assert self.release.wait(timeout=60)
        return super().configure_optimizers()


def test_configure_optimizers_refuses_only_this_modules_steps_in_this_thread(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    model = BlocksInConfigure(entered, release)
    errors: list[BaseException] = []
    fitting = threading.Thread(target=lambda: trainer(tmp_path, max_epochs=1).fit(model, loader()))
    fitting.start()
    assert entered.wait(timeout=60)
    # meanwhile, in another thread: an unrelated optimizer steps freely
    other = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(other.parameters(), lr=0.1)
    other(torch.ones(1, 2)).sum().backward()
    try:
        optimizer.step()
    except BaseException as error:  # a refusal here would be the defect
        errors.append(error)
    finally:
        release.set()
        fitting.join(timeout=120)
    assert errors == []
    assert dict(model.optimizer_updates) == {"generator": 10, "discriminator": 10}


def test_stepping_this_modules_weights_in_configure_optimizers_is_refused(tmp_path: Path) -> None:
    class StepsOtherModuleAndItself(TwoNets):
        def configure_optimizers(self) -> Any:
            unrelated = torch.nn.Linear(2, 1)  # another model's optimizer, same thread: allowed
            unrelated(torch.ones(1, 2)).sum().backward()
            torch.optim.SGD(unrelated.parameters(), lr=0.1).step()
            optimizer = torch.optim.SGD(self.generator.parameters(), lr=0.1)
            self.generator.weight.grad = torch.ones_like(self.generator.weight)
            optimizer.step()  # this module's weights: refused
            return optimizer

    with pytest.raises(StepOutsideTrainingStepError, match=r"`SGD.step\(\)` was called in `.*configure_optimizers`"):
        trainer(tmp_path, max_epochs=1).fit(StepsOtherModuleAndItself(), loader())


def test_two_modules_share_a_checkpoint_callback(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=5, save_top_k=-1)
    first, second = TwoNets(), TwoNets(generator_every=2)
    trainer(tmp_path, max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True).fit(first, loader())
    assert checkpoint_steps(tmp_path / "ckpt") == [5, 10]
    checkpoint.dirpath = str(tmp_path / "ckpt2")
    trainer(tmp_path, max_epochs=2, callbacks=[checkpoint], enable_checkpointing=True).fit(second, loader())
    assert checkpoint_steps(tmp_path / "ckpt2") == [5, 10, 15, 20]
    assert not {"on_train_batch_end", "on_validation_end", "on_train_epoch_end"} & set(vars(checkpoint))


class SharedWrapper(TwoNets):
    """Returns the same LightningOptimizer objects from every configure_optimizers call."""

    def configure_optimizers(self) -> Any:
        if not hasattr(self, "wrapped"):
            config = super().configure_optimizers()
            self.wrapped = {name: LightningOptimizer(optimizer) for name, optimizer in config.items()}
        return dict(self.wrapped)


def test_a_lightning_optimizer_reused_by_a_second_trainer(tmp_path: Path) -> None:
    model = SharedWrapper(style="plain")
    first = trainer(tmp_path, max_epochs=1)
    first.fit(model, loader())
    second = trainer(tmp_path, max_epochs=1)
    model.global_steps_seen.clear()
    model.global_steps_after_stepping.clear()
    second.fit(model, loader())
    assert second.global_step == 10
    # the second trainer's step tracker, not the first one's, is kept still while the optimizers step
    assert model.global_steps_after_stepping == model.global_steps_seen == list(range(10))
    assert first.global_step == 10


def test_the_trainers_callbacks_pickle_after_fit(tmp_path: Path) -> None:
    model = TwoNets()
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(model, loader())
    callbacks = pickle.loads(pickle.dumps(fit.callbacks))  # type: ignore[attr-defined]
    assert [type(callback).__name__ for callback in callbacks] == [
        type(callback).__name__
        for callback in fit.callbacks  # type: ignore[attr-defined]
    ]


def test_a_second_fit_with_a_new_trainer_starts_counting_afresh(tmp_path: Path) -> None:
    model = TwoNets(generator_every=5)
    trainer(tmp_path, max_epochs=1).fit(model, loader())
    second = trainer(tmp_path, max_epochs=1)
    second.fit(model, loader())
    assert second.global_step == 10
    assert dict(model.optimizer_updates) == {"generator": 2, "discriminator": 10}
