"""StepSchedule (which optimizer is due on which batch) and EMA (an average keyed to one optimizer's updates)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TwoNets, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from manualopt import EMA, OptimizerConfigurationError, StepSchedule, UnknownOptimizerError

# ---------------------------------------------------------------- StepSchedule, alone


def test_cycle_and_every() -> None:
    cycle = StepSchedule.cycle(("critic", 3), ("generator", 1))
    assert len(cycle) == 4
    assert [cycle.due_at(p) for p in range(5)] == [("critic",)] * 3 + [("generator",), ("critic",)]
    every = StepSchedule.every(discriminator=2, generator=3)
    assert len(every) == 6
    assert [every.due_at(p) for p in range(6)] == [
        (),
        ("discriminator",),
        ("generator",),
        ("discriminator",),
        (),
        ("discriminator", "generator"),
    ]
    both = StepSchedule.cycle((("critic", "generator"), 1), ("critic", 1))
    assert both.due_at(0) == ("critic", "generator")
    assert both.names == ("critic", "generator")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StepSchedule([]), "at least one"),
        (lambda: StepSchedule.cycle(("critic", 0)), "positive integer, not 0"),
        (lambda: StepSchedule.cycle(("", 1)), "non-empty strings"),
        (lambda: StepSchedule.every(), "at least one"),
        (lambda: StepSchedule.every(critic=-1), "period of 'critic' must be a positive integer"),
    ],
)
def test_bad_schedules(build: Any, message: str) -> None:
    with pytest.raises(OptimizerConfigurationError, match=message):
        build()


def test_due_refuses_unknown_names() -> None:
    with pytest.raises(UnknownOptimizerError, match=r"'gen' is not in this StepSchedule; its optimizers are \['g'\]"):
        StepSchedule.every(g=1).due("gen")


# ---------------------------------------------------------------- StepSchedule in a fit


class Scheduled(TwoNets):
    """The discriminator ("critic") for 3 batches, then the generator for 1."""

    def __init__(self, names: tuple[str, str] = ("discriminator", "generator")) -> None:
        super().__init__()
        self.schedule = StepSchedule.cycle((names[0], 3), (names[1], 1))
        self.decisions: list[tuple[str, ...]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.training_step_calls += 1
        g_loss, d_loss = self.losses(batch)
        self.decisions.append(tuple(n for n in ("discriminator", "generator") if self.schedule.due(n)))
        if self.schedule.due("discriminator"):
            self.manual_step("discriminator", d_loss)
        if self.schedule.due("generator"):
            self.manual_step("generator", g_loss)


def test_schedule_drives_the_updates(tmp_path: Path) -> None:
    model = Scheduled()
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert model.decisions == [("discriminator",)] * 3 + [("generator",)] + model.decisions[4:]
    assert dict(model.optimizer_updates) == {"generator": 5, "discriminator": 15}
    assert fit.global_step == 20  # one training step per batch, whichever optimizer it updated
    assert model.schedule.position == 20


def test_schedule_names_are_checked_when_fit_starts(tmp_path: Path) -> None:
    model = Scheduled(names=("critic", "generator"))
    with pytest.raises(OptimizerConfigurationError, match=r"`self.schedule` names \['critic'\]"):
        trainer(tmp_path).fit(model, loader())
    assert model.training_step_calls == 0


def test_resume_mid_cycle_continues_the_cycle(tmp_path: Path) -> None:
    whole = Scheduled()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=6, save_top_k=-1)
    trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True).fit(whole, loader())
    resumed = Scheduled()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*dataloader is not resumable.*")
        trainer(tmp_path).fit(resumed, loader(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=6.ckpt"))
    # position 6 is the 3rd batch of the 2nd cycle: the critic is due, then the generator, and the cycle goes on from
    # there for every batch the resumed run trains (before 2.5, Lightning may train one batch more after a resume)
    assert resumed.decisions[:2] == [("discriminator",), ("generator",)]
    assert resumed.decisions == [whole.schedule.due_at(p) for p in range(6, 6 + len(resumed.decisions))]
    assert resumed.schedule.position == 6 + len(resumed.decisions)


# ---------------------------------------------------------------- EMA


class Averaged(TwoNets):
    def __init__(self, warmup_updates: int = 0, evaluate_with_average: bool = False, optimizer: str = "generator"):
        super().__init__(generator_every=5)
        self.generator_ema = EMA(
            self.generator,
            optimizer=optimizer,
            decay=0.5,
            warmup_updates=warmup_updates,
            evaluate_with_average=evaluate_with_average,
        )
        # the average starts as a copy of the initial weights
        self.reference: list[torch.Tensor] = [p.detach().clone() for p in self.generator.parameters()]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        output = super().training_step(batch, batch_idx)
        if batch_idx % self.generator_every == 0:  # the generator updated: fold it into a reference average
            weights = [p.detach().clone() for p in self.generator.parameters()]
            n = self.optimizer_updates["generator"]
            if n <= self.generator_ema.warmup_updates:
                self.reference = weights
            else:
                self.reference = [0.5 * r + 0.5 * w for r, w in zip(self.reference, weights, strict=True)]
        return output

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.seen_in_validation = [p.detach().clone() for p in self.generator.parameters()]


@pytest.mark.parametrize("warmup", [0, 2])
def test_ema_follows_its_optimizer_updates(tmp_path: Path, warmup: int) -> None:
    model = Averaged(warmup_updates=warmup)
    fit = trainer(tmp_path)
    fit.fit(model, loader())
    assert fit.global_step == 20
    assert int(model.generator_ema.updates) == model.optimizer_updates["generator"] == 4  # not 20
    for average, expected in zip(model.generator_ema.average.parameters(), model.reference, strict=True):
        torch.testing.assert_close(average, expected, rtol=0, atol=1e-7)
    assert not any(p.requires_grad for p in model.generator_ema.average.parameters())


def test_ema_is_checkpointed_and_resumed(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1)
    whole = Averaged()
    trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True).fit(whole, loader())
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=10.ckpt", weights_only=False)
    assert int(saved["state_dict"]["generator_ema.updates"]) == 2
    resumed = Averaged()
    trainer(tmp_path).fit(resumed, loader(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=10.ckpt"))
    assert int(resumed.generator_ema.updates) == 4
    for a, b in zip(resumed.generator_ema.average.parameters(), whole.generator_ema.average.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ema_can_be_used_for_validation(tmp_path: Path) -> None:
    model = Averaged(evaluate_with_average=True)
    trainer(tmp_path, max_epochs=1, limit_val_batches=1).fit(model, loader(), loader(2))
    for seen, average in zip(model.seen_in_validation, model.generator_ema.average.parameters(), strict=True):
        assert torch.equal(seen, average)
    # after validation the generator holds its own (trained) weights again
    assert not all(
        torch.equal(a, b) for a, b in zip(model.generator.parameters(), model.seen_in_validation, strict=True)
    )
    with model.generator_ema.swapped():
        assert all(
            torch.equal(a, b) for a, b in zip(model.generator.parameters(), model.seen_in_validation, strict=True)
        )


def test_ema_optimizer_is_checked_when_fit_starts(tmp_path: Path) -> None:
    with pytest.raises(OptimizerConfigurationError, match=r"EMA follows the optimizer 'gen'"):
        trainer(tmp_path).fit(Averaged(optimizer="gen"), loader())


@pytest.mark.parametrize(("decay", "warmup"), [(1.0, 0), (-0.1, 0), (0.9, -1)])
def test_bad_ema_arguments(decay: float, warmup: int) -> None:
    with pytest.raises(OptimizerConfigurationError, match="EMA"):
        EMA(torch.nn.Linear(1, 1), optimizer="g", decay=decay, warmup_updates=warmup)


def test_lightning_weight_averaging_counts_training_steps(tmp_path: Path) -> None:
    weight_averaging = pytest.importorskip("lightning.pytorch.callbacks.weight_averaging")  # Lightning >= 2.6
    averaging = weight_averaging.EMAWeightAveraging(update_every_n_steps=2)
    model = TwoNets(generator_every=5)
    fit = trainer(tmp_path, callbacks=[averaging])
    fit.fit(model, loader())
    # It averages the whole module (generator and discriminator) after every 2nd training step: 10 of 20.
    assert fit.global_step == 20
    assert int(averaging._average_model.n_averaged) == 10
