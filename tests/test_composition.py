"""manualopt composes with Lightning: after a fit, the user's objects and Lightning's are as they were.

No class of the user's is replaced; every patch a fit installs is undone when it ends, even when an undo raises or two
fits on one shared object end in another order than they started; the callback order it changed is put back; an
``EMA`` swap is all or nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from manualopt import EMA, InvalidArgumentError, _lightning
from manualopt._session import session_of


def _patched(trainer: Trainer, checkpoint: ModelCheckpoint) -> list[str]:
    # what a fit of manualopt may set on Lightning's objects and the user's: left behind, it is a leak
    places: dict[str, object] = {
        "strategy": trainer.strategy,
        "epoch_loop": trainer.fit_loop.epoch_loop,
        "val_loop": trainer.fit_loop.epoch_loop.val_loop,
        "checkpoint": checkpoint,
    }
    found = []
    for place, owner in places.items():
        for name, value in vars(owner).items():
            if hasattr(value, "__manualopt_key__"):
                found.append(f"{place}.{name}")
    return found


class RaisesWhenTheFitEnds:
    """A component whose undo raises: the fit's other undos must run all the same."""

    def __init__(self) -> None:
        self.ran = False

    def _manualopt_attach(self, session: Any) -> None:
        session.on_end(self._undo)

    def _manualopt_returned(self, summary: Any) -> None:
        """Nothing to take back."""

    def _undo(self) -> None:
        self.ran = True
        raise RuntimeError("this undo failed")


def test_an_undo_that_raises_leaves_no_other_patch_in_place(tmp_path: Path) -> None:
    model = TwoNets()
    model.breaker = RaisesWhenTheFitEnds()  # type: ignore[attr-defined]
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2)
    fit = trainer(tmp_path, max_epochs=1, callbacks=[checkpoint], enable_checkpointing=True)
    seen: list[list[str]] = []

    class Looks(Callback):
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            seen.append(_patched(trainer, checkpoint))

    fit.callbacks.append(Looks())
    with pytest.raises(RuntimeError, match="this undo failed"):
        fit.fit(model, loader())
    assert seen[0]  # during the fit the patches were there (so the check below can see them)
    assert model.breaker.ran  # type: ignore[attr-defined]
    assert _patched(fit, checkpoint) == []  # and the undo that raised did not keep the others in place


def test_two_fits_on_one_checkpoint_callback_leave_nothing_in_either_order() -> None:
    checkpoint = ModelCheckpoint()
    original = {name: vars(checkpoint).get(name) for name in vars(checkpoint)}
    for order in ("started", "reversed"):
        first = _lightning.route_checkpoint_through_automatic_path(checkpoint, lambda module: True, object())
        second = _lightning.route_checkpoint_through_automatic_path(checkpoint, lambda module: True, object())
        assert vars(checkpoint).keys() - original.keys()  # both routed it
        for undo in (first, second) if order == "started" else (second, first):
            undo()
        assert {name: vars(checkpoint).get(name) for name in vars(checkpoint)} == original, order


def test_the_callback_order_changed_at_fit_start_is_put_back(tmp_path: Path) -> None:
    class Other(Callback):
        pass

    fit = trainer(tmp_path, max_epochs=1, callbacks=[Other()])
    order: list[list[str]] = []

    class Records(Callback):
        def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            order.append([type(callback).__name__ for callback in trainer.callbacks])

    fit.callbacks.append(Records())
    model = TwoNets()
    fit.fit(model, loader())
    assert order[0][0] == "ManualOptimizationCallback"  # first while the fit runs
    after = [type(callback).__name__ for callback in fit.callbacks]
    assert after.index("ManualOptimizationCallback") == len(after) - 1  # where Lightning had appended it


def test_a_fit_replaces_no_class_of_the_users_objects(tmp_path: Path) -> None:
    model = TwoNets()
    data = loader()
    classes: list[tuple[type, ...]] = []

    class Looks(Callback):
        def on_train_batch_end(self, trainer: Trainer, *args: Any) -> None:
            configs = trainer.lr_scheduler_configs
            classes.append((type(trainer.train_dataloader), *(type(c.scheduler) for c in configs)))

    class Scheduled(TwoNets):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2)}

        def training_step(self, batch: Any, batch_idx: int) -> None:
            self.manual_step(0, sum(self.losses(batch)))

    model = Scheduled()
    trainer(tmp_path, max_epochs=1, callbacks=[Looks()]).fit(model, data)
    assert set(classes) == {(torch.utils.data.DataLoader, torch.optim.lr_scheduler.StepLR)}
    assert session_of(model) is not None


def test_an_ema_swap_is_all_or_nothing() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    average = EMA(net, optimizer="generator")
    with torch.no_grad():
        net[0].weight.add_(1.0)  # the trained weights now differ from the average
    net[1].weight = nn.Parameter(torch.zeros(4, 3))  # and the module changed layout after the EMA was made
    before = [tensor.clone() for tensor in net.state_dict().values()]
    with pytest.raises(InvalidArgumentError, match="differ in the shape"), average.swapped():
        pass
    after = list(net.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # nothing was swapped
    assert not average._swapped


class RecordsTheEnd(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.calls.append("teardown")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.calls.append("on_exception")


@pytest.mark.parametrize("crashes", [False, True], ids=["ends", "crashes"])
def test_every_callback_sees_the_end_of_the_fit(tmp_path: Path, crashes: bool) -> None:
    # putting manualopt's callback back in its place at teardown must not make Lightning's loop over the callbacks
    # skip the next one (a RichProgressBar there kept its display thread running)
    class Crashes(TwoNets):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            if crashes and batch_idx == 1:
                raise ValueError("crash")

    first, second = RecordsTheEnd(), RecordsTheEnd()
    fit = trainer(tmp_path, max_epochs=1, callbacks=[first, second])
    if crashes:
        with pytest.raises(ValueError, match="crash"):
            fit.fit(Crashes(), loader())
    else:
        fit.fit(Crashes(), loader())
    expected = ["on_exception"] if crashes else ["teardown"]  # as Lightning calls them for any module
    assert first.calls == second.calls == expected
