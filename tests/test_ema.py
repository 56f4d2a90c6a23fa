"""EMA: an average keyed to one optimizer's real updates, checkpointed, swapped in for validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TwoNets, loader, trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from manualopt import EMA, InvalidArgumentError, OptimizerConfigurationError


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
    with pytest.raises(InvalidArgumentError, match="EMA"):
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


def test_an_update_never_reads_a_tensor_back_to_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a GPU, int(tensor) or tensor.item() waits for the device; the warm-up count lives on the host instead.
    reads: list[str] = []
    for name in ("__int__", "item", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def record(self: torch.Tensor, *args: Any, _name: str = name, _original: Any = original) -> Any:
            reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, record)
    average = EMA(torch.nn.Linear(3, 2), optimizer="generator", warmup_updates=2)
    for _ in range(4):
        average.update()
    assert reads == []
    assert average._count == 4
    monkeypatch.undo()
    assert int(average.updates) == 4
