"""Under DDP (2 CPU processes, gloo), accumulating micro-batches skip the gradient all-reduce, as in automatic mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from helpers import Automatic, Manual, TwoNets, loader
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from manualopt import EMA, StepSchedule

ALL_REDUCES = {"count": 0}


def counting_allreduce(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook that counts the all-reduces it performs."""
    ALL_REDUCES["count"] += 1
    return default_hooks.allreduce_hook(state, bucket)


# DDP checks the hook's annotations as objects; this module's are strings (postponed evaluation).
counting_allreduce.__annotations__ = {
    "state": object,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


class Reporting(pl.Callback):
    """Counts all-reduces with a communication hook and writes what each process saw."""

    def __init__(self, out: Path) -> None:
        self.out = str(out)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers `ddp_comm_hook` on CUDA only; on CPU the test registers it on the DDP wrapper itself.
        trainer.strategy.model.register_comm_hook(None, counting_allreduce)  # type: ignore[union-attr]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        report = {
            "all_reduces": ALL_REDUCES["count"],
            "global_step": trainer.global_step,
            "params": [p.detach().flatten().tolist() for p in pl_module.parameters()],
        }
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def _fit(
    out: Path, model: pl.LightningModule, find_unused_parameters: bool = False, **options: Any
) -> list[dict[str, Any]]:
    out.mkdir(parents=True)
    trainer = pl.Trainer(
        default_root_dir=str(out),
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(
            start_method="spawn", process_group_backend="gloo", find_unused_parameters=find_unused_parameters
        ),
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Reporting(out)],
        **options,
    )
    trainer.fit(model, loader(20))  # 10 batches per process
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.timeout(600)
def test_accumulation_skips_all_reduce_like_automatic_optimization(tmp_path: Path) -> None:
    automatic = _fit(tmp_path / "automatic", Automatic("sgd-momentum"), accumulate_grad_batches=3)
    model = Manual("sgd-momentum", accumulate_grad_batches=3)
    manual = _fit(tmp_path / "manual", model)
    # windows of 3, 3, 3 and 1 batches per epoch: 4 synchronized backward passes per epoch, one bucket each
    for report in manual + automatic:
        assert report["all_reduces"] == 8
        assert report["global_step"] == 8
    # the processes agree with each other, and with automatic optimization, bit for bit
    assert manual[0]["params"] == manual[1]["params"]
    assert manual[0]["params"] == automatic[0]["params"]
    # the main process gets the weights and the counters back
    assert dict(model.optimizer_updates) == {"optimizer_0": 8}
    assert [p.detach().flatten().tolist() for p in model.parameters()] == manual[0]["params"]


class ScheduledGAN(TwoNets):
    """The discriminator on every batch, the generator on every 3rd (a StepSchedule), with an EMA of the generator."""

    def __init__(self) -> None:
        super().__init__()
        self.schedule = StepSchedule.every(discriminator=1, generator=3)
        self.generator_ema = EMA(self.generator, optimizer="generator", decay=0.5)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        self.manual_step("discriminator", d_loss)
        if self.schedule.due("generator"):
            self.manual_step("generator", g_loss)


@pytest.mark.timeout(600)
def test_counters_come_back_from_spawned_processes(tmp_path: Path) -> None:
    model = ScheduledGAN()
    # the discriminator's backward pass leaves the generator's parameters without gradients: DDP must be told
    reports = _fit(tmp_path / "run", model, find_unused_parameters=True)
    assert reports[0]["global_step"] == reports[1]["global_step"] == 20  # 10 batches per process and epoch
    assert dict(model.optimizer_updates) == {"generator": 6, "discriminator": 20}
    assert model.schedule.position == 20
    assert int(model.generator_ema.updates) == 6


class NanOnRankOne(TwoNets):
    """Skip mode; on batch 3 only rank 1's generator loss is NaN (its gradients reach rank 0 in the all-reduce)."""

    non_finite = "skip"

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_loss, d_loss = self.losses(batch)
        if batch_idx == 3 and self.global_rank == 1:
            g_loss = g_loss * float("nan")
        self.manual_step("discriminator", d_loss)
        self.manual_step("generator", g_loss)

    def on_train_end(self) -> None:
        report = {
            "updates": dict(self.optimizer_updates),
            "params": [p.detach().flatten().tolist() for p in self.parameters()],
        }
        Path(self.trainer.default_root_dir, f"skips{self.global_rank}.json").write_text(json.dumps(report))


@pytest.mark.timeout(600)
def test_every_rank_skips_a_non_finite_update_together(tmp_path: Path) -> None:
    _fit(tmp_path / "run", NanOnRankOne(), find_unused_parameters=True)
    reports = [json.loads((tmp_path / "run" / f"skips{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["updates"] == {"generator": 18, "discriminator": 20}  # batch 3 of each of 2 epochs skipped
        assert all(value == value for value in report["params"])  # no NaN weight on either rank
    assert reports[0]["params"] == reports[1]["params"]
