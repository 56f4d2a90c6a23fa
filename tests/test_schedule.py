"""StepSchedule: which optimizer is due on which batch, where the schedule is kept, and resuming mid-cycle."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import TwoNets, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from manualopt import InvalidArgumentError, OptimizerConfigurationError, StepSchedule, UnknownOptimizerError

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
    with pytest.raises(InvalidArgumentError, match=message):
        build()


def test_due_refuses_unknown_names() -> None:
    with pytest.raises(UnknownOptimizerError, match=r"'gen' is not in this StepSchedule; the optimizers are \['g'\]"):
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
    assert model.decisions == ([("discriminator",)] * 3 + [("generator",)]) * 5
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
