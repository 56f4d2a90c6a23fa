"""One node of the simulated two-node runs of ``test_multinode.py``: ``python multinode_worker.py SCENARIO OUT [CKPT]``.

Every process runs ``Trainer(num_nodes=2, devices=1, strategy="ddp")`` on the CPU with gloo, started by
``cluster.launch``, and writes what it saw to ``OUT/<run>-rank<r>.json``. Scenarios:

* ``train``: the collectives of a training step counted for manualopt and for the same GAN written by hand in stock
  Lightning manual optimization; then the full run with checkpoints; then the same GAN under Lightning's default
  ``DDPStrategy`` (``find_unused_parameters=False``) and with ``static_graph=True``, which must both fail with
  manualopt's explanation on every rank.
* ``resume``: a new run from the checkpoint ``CKPT`` of the full run.
* ``crash``: node 1 fails in the middle of the run.
"""

from __future__ import annotations

import io
import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.functional import softplus
from torch.utils.data import DataLoader, TensorDataset

from manualopt import EMA, ManualOptimizationModule, StepSchedule

#: 48 samples in batches of 4: 6 batches per node and epoch, 12 training steps per node in 2 epochs.
SAMPLES, BATCH_SIZE, EPOCHS, EVERY_N_STEPS = 48, 4, 2, 4
#: A rank blocked in a collective gives up after this long (the launch kills it anyway, a little later).
PROCESS_GROUP_TIMEOUT = timedelta(seconds=60)
COLLECTIVES = [
    *("all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast", "broadcast_object_list"),
    *("barrier", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather", "gather_object", "scatter"),
    *("scatter_object_list", "all_to_all", "send", "recv", "isend", "irecv", "monitored_barrier"),
]
COUNTS: dict[str, int] = {}


def count_collectives() -> None:
    """Count every collective called through ``torch.distributed`` in this process (outermost calls only)."""
    from torch.distributed import distributed_c10d

    depth = [0]
    for name in COLLECTIVES:
        inner = getattr(distributed_c10d, name, None)
        if inner is None:
            continue

        def counted(*args: Any, _inner: Any = inner, _name: str = name, **kwargs: Any) -> Any:
            if not depth[0]:
                COUNTS[_name] = COUNTS.get(_name, 0) + 1
            depth[0] += 1
            try:
                return _inner(*args, **kwargs)
            finally:
                depth[0] -= 1

        setattr(distributed_c10d, name, counted)
        setattr(dist, name, counted)


def counting_allreduce(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DDP communication hook: DDP's gradient all-reduces, counted."""
    COUNTS["ddp_bucket_all_reduce"] = COUNTS.get("ddp_bucket_all_reduce", 0) + 1
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


counting_allreduce.__annotations__ = {
    "state": object,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


def networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
    discriminator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    return generator, discriminator


class GAN(ManualOptimizationModule):
    """The discriminator on every batch, the generator on every 2nd (a StepSchedule), an EMA of the generator."""

    def __init__(self, crash_at: int = -1) -> None:
        super().__init__()
        self.generator, self.discriminator = networks()
        self.schedule = StepSchedule.every(discriminator=1, generator=2)
        self.generator_ema = EMA(self.generator, optimizer="generator", decay=0.9)
        self.batches = 0
        self.crash_at = crash_at

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if self.global_rank == 1 and self.batches == self.crash_at:
            raise RuntimeError("node 1 failed")
        self.batches += 1
        (real,) = batch
        fake = self.generator(torch.randn(len(real), 4))
        d_loss = softplus(-self.discriminator(real)).mean() + softplus(self.discriminator(fake.detach())).mean()
        self.manual_step("discriminator", d_loss)
        if self.schedule.due("generator"):
            self.manual_step("generator", softplus(-self.discriminator(fake)).mean())

    def configure_optimizers(self) -> Any:
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=1e-2),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=1e-2),
        }


class StockGAN(pl.LightningModule):
    """The same steps written by hand in stock Lightning manual optimization."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator, self.discriminator = networks()
        self.batches = 0

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        (real,) = batch
        fake = self.generator(torch.randn(len(real), 4))
        opt_d.zero_grad()
        self.manual_backward(
            softplus(-self.discriminator(real)).mean() + softplus(self.discriminator(fake.detach())).mean()
        )
        opt_d.step()
        if batch_idx % 2 == 0:
            opt_g.zero_grad()
            self.manual_backward(softplus(-self.discriminator(fake)).mean())
            opt_g.step()

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=1e-2),
            torch.optim.Adam(self.discriminator.parameters(), lr=1e-2),
        ]


class Report(pl.Callback):
    """Counts collectives and checkpoint writes of the fit, and writes what this rank saw when it ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saves = 0
        self.at_saves: dict[str, int] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers `ddp_comm_hook` on CUDA only: on the CPU it is registered on the DDP wrapper here
        trainer.strategy.model.register_comm_hook(None, counting_allreduce)  # type: ignore[union-attr]
        io_plugin = trainer.strategy.checkpoint_io
        save = io_plugin.save_checkpoint

        def counted_save(*args: Any, **kwargs: Any) -> None:
            self.saves += 1
            save(*args, **kwargs)

        io_plugin.save_checkpoint = counted_save  # type: ignore[method-assign]
        self.start = dict(COUNTS)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Any) -> None:
        self.before_save = dict(COUNTS)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        module: Any = pl_module
        report: dict[str, Any] = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "environment": type(trainer.strategy.cluster_environment).__name__,
            "global_step": trainer.global_step,
            "batches": module.batches,
            "checkpoint_writes": self.saves,
            "collectives": {k: v - self.start.get(k, 0) for k, v in COUNTS.items() if v - self.start.get(k, 0)},
            "params": [p.detach().flatten().tolist() for p in pl_module.parameters()],
        }
        if isinstance(module, ManualOptimizationModule):
            report["optimizer_updates"] = dict(module.optimizer_updates)
            report["schedule_position"] = module.schedule.position
            report["ema"] = [p.detach().flatten().tolist() for p in module.generator_ema.parameters()]
        self.path.write_text(json.dumps(report))


def trainer(out: Path, run: str, checkpoints: bool = False, **ddp: Any) -> pl.Trainer:
    callbacks: list[pl.Callback] = [Report(out / f"{run}-rank{dist_rank()}.json")]
    if checkpoints:
        dirpath = str(out / f"{run}-checkpoints")  # a string: Lightning 2.1 cannot resume a checkpoint holding a Path
        callbacks.append(ModelCheckpoint(dirpath=dirpath, every_n_train_steps=EVERY_N_STEPS, save_top_k=-1))
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=PROCESS_GROUP_TIMEOUT, **ddp),
        max_epochs=EPOCHS,
        default_root_dir=str(out),
        logger=False,
        enable_checkpointing=checkpoints,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def dist_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("NODE_RANK", "0")))


def data() -> DataLoader[Any]:
    samples = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(1)) * 0.5 + 2.0
    return DataLoader(TensorDataset(samples), batch_size=BATCH_SIZE, shuffle=True)


def checkpoint_entry_sizes(path: Path) -> dict[str, Any]:
    """Bytes of a checkpoint file, of manualopt's entry, and of each rank's part of it (as ``torch.save`` writes)."""

    def size(value: Any) -> int:
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.tell()

    checkpoint = torch.load(path, weights_only=False)
    entry = checkpoint["manualopt"]
    return {
        "file": path.stat().st_size,
        "entry": size(entry),
        "per_rank": [size(part) for part in entry["resume"]],
        "per_rank_rng": [size(part["rng"]) for part in entry["resume"]],
        "per_rank_epoch": [size(part["plan"]) for part in entry["resume"]],
    }


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    count_collectives()
    if scenario == "train":
        # 1. the collectives of training steps alone: manualopt against the same GAN written by hand
        trainer(out, "stock", find_unused_parameters=True).fit(StockGAN(), data())
        trainer(out, "counted", find_unused_parameters=True).fit(GAN(), data())
        # 2. the run: counters, weights, averages, checkpoints
        trainer(out, "full", checkpoints=True, find_unused_parameters=True).fit(GAN(), data())
        if dist_rank() == 0:
            sizes = checkpoint_entry_sizes(out / "full-checkpoints" / "epoch=0-step=4.ckpt")
            (out / "sizes.json").write_text(json.dumps(sizes))
        # 3. Lightning's default DDPStrategy: the discriminator's backward pass leaves the generator without gradients;
        # static_graph=True does not describe a training step whose backward passes reach different parameters
        for run, options in (("default", {}), ("static", {"static_graph": True})):
            failing = trainer(out, run, **options)
            try:
                failing.fit(GAN(), data())
                outcome = "no error"
            except Exception as error:
                outcome = f"{type(error).__name__}: {error}"
            if "training_step" in vars(failing.strategy):
                outcome = "manualopt's addition to the strategy outlived the failed fit"
            (out / f"{run}-error-rank{dist_rank()}.txt").write_text(outcome)
        # Every result is written. After a DDP backward pass failed, torch may abort while the interpreter shuts down
        # ("terminate called without an active exception", with or without manualopt): leave without the shutdown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    elif scenario == "resume":
        trainer(out, "resumed", checkpoints=True, find_unused_parameters=True).fit(GAN(), data(), ckpt_path=sys.argv[3])
    elif scenario == "crash":
        trainer(out, "crashed", checkpoints=True, find_unused_parameters=True).fit(GAN(crash_at=6), data())
    else:
        raise ValueError(scenario)


if __name__ == "__main__":
    main()
