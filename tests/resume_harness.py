"""Kill a training run at a chosen moment, resume it from ``last.ckpt``, and compare with the uninterrupted run.

Every run happens in a forked child process, so a ``SIGKILL`` ends it as a preemption or an out-of-memory kill would:
no ``finally`` block, no ``on_exception`` hook, no flushing. The child writes its final state (parameters, optimizer
and scheduler states, averages, counters) to a file; the uninterrupted run writes the reference.
"""

from __future__ import annotations

import os
import random
import signal
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from manualopt import EMA, ManualOptimizationModule, StepSchedule

#: Where a run is killed: inside a training step (after a backward pass, or between two optimizers' updates), when a
#: batch starts (after the previous batch's checkpoint), when a batch ends (before its checkpoint is written: Lightning
#: runs checkpoint callbacks last), after a validation, inside a checkpoint write (the file written, not yet in place).
PHASES = ("mid-step", "batch-start", "batch-end", "validation", "inside-save")


@dataclass(frozen=True)
class Config:
    """One training configuration of the harness."""

    name: str
    optimizers: int = 1  # 1, or 2: a GAN with a StepSchedule and an EMA
    accumulate: int = 1
    generator: bool = False  # DataLoader(generator=...)
    workers: int = 0
    batches: int = 8
    epochs: int = 2
    every: int = 3  # checkpoint every n training steps (and last.ckpt)
    processes: int = 1  # 2: DDP on two CPU processes (gloo)
    data: str = "shuffle"  # "shuffle": DataLoader(shuffle=True); "distributed": its DistributedSampler; "stateful"
    checkpoint: str = "steps"  # "steps": every `every` training steps; "epochs": at each epoch end, after validation
    start_method: str = "spawn"  # of the DDP processes

    @property
    def steps(self) -> int:
        return self.epochs * self.batches


class Model(ManualOptimizationModule):
    """Dropout, noise from torch, NumPy and Python's random in every step; a shuffled loader."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.generator = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 2))
        if config.optimizers == 2:
            self.discriminator = nn.Sequential(nn.Linear(2, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 1))
            self.schedule = StepSchedule.every(discriminator=1, generator=2)
            self.average = EMA(self.generator, optimizer="generator", decay=0.9)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        noise = torch.randn(len(real), 4) + float(numpy.random.rand()) + random.random()
        fake = self.generator(torch.cat([noise, real], dim=1))
        if self.config.optimizers == 1:
            self.manual_step(0, (fake - real.flip(1)).pow(2).mean(), accumulate_grad_batches=self.config.accumulate)
            return
        d_loss = self.discriminator(fake.detach()).mean() - self.discriminator(real).mean()
        self.manual_step("discriminator", d_loss, accumulate_grad_batches=self.config.accumulate)
        self.before_generator()
        if self.schedule.due("generator"):
            self.manual_step("generator", -self.discriminator(fake).mean())

    def before_generator(self) -> None:
        """Between the two optimizers' updates of one batch (a kill point)."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        self.log("val", self.generator(torch.cat([torch.zeros(len(real), 4), real], dim=1)).pow(2).mean())

    def configure_optimizers(self) -> Any:
        generator = torch.optim.Adam(self.generator.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(generator, step_size=3, gamma=0.7)
        config: dict[str, Any] = {"optimizer": generator, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        if self.config.optimizers == 1:
            return config
        return {"generator": config, "discriminator": torch.optim.SGD(self.discriminator.parameters(), lr=0.02)}


class Kill(pl.Callback):
    """SIGKILLs this process at global step ``step``, in ``phase``."""

    def __init__(self, step: int, phase: str) -> None:
        self.step, self.phase = step, phase
        self.armed = False

    def _now(self, trainer: pl.Trainer, phase: str) -> None:
        if phase == self.phase and trainer.global_step >= self.step:
            if trainer.world_size > 1:  # every process of the run at once, as a preemption would
                os.killpg(os.getpgid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._now(trainer, "batch-end")

    def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._now(trainer, "validation")

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._now(trainer, "batch-start")
        if self.phase == "inside-save" and trainer.global_step >= self.step and not self.armed:
            self.armed = True
            fsync = os.fsync

            def killing_fsync(descriptor: int) -> None:  # the next save's first fsync: its data is written
                fsync(descriptor)
                os.killpg(os.getpgid(0), signal.SIGKILL)

            os.fsync = killing_fsync  # this process dies with it: nothing to put back

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.phase == "mid-step":
            module: Any = pl_module
            module.before_generator = lambda: self._now(trainer, "mid-step")
            if module.config.optimizers == 1:  # right after a backward pass: inside manual_step (and its window)
                module.on_after_backward = lambda: self._now(trainer, "mid-step")


def loader(config: Config, seed: int = 0) -> DataLoader[Any]:
    """The run's shuffled training (seed 0) or validation (seed 1) data, as ``config.data`` says."""
    dataset = TensorDataset(torch.randn(config.batches * 8, 2, generator=torch.Generator().manual_seed(seed)))
    generator = torch.Generator().manual_seed(7) if config.generator else None
    options: dict[str, Any] = {"batch_size": 8, "num_workers": config.workers, "generator": generator}
    if config.data == "stateful":  # a loader that keeps its own position: Lightning saves and restores its state
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(dataset, shuffle=True, **options)  # type: ignore[no-any-return]
    if config.data == "distributed" and config.processes == 1:  # a sampler of the user's own
        from torch.utils.data import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=5)
        return DataLoader(dataset, sampler=sampler, **options)
    return DataLoader(dataset, shuffle=True, **options)  # under DDP Lightning gives it a DistributedSampler


def run(config: Config, root: Path, out: Path, kill: Kill | None = None, resume: bool = False) -> None:
    """Train ``config`` from scratch (or from ``root/last.ckpt``) and write the final state to ``out``."""
    torch.manual_seed(0)
    numpy.random.seed(0)
    random.seed(0)
    torch.set_num_threads(1)
    model = Model(config)
    if config.checkpoint == "epochs":  # written in on_validation_end, validation running at each epoch's end
        checkpoint = ModelCheckpoint(dirpath=str(root), every_n_epochs=1, save_top_k=-1, save_last=True)
    else:
        checkpoint = ModelCheckpoint(dirpath=str(root), every_n_train_steps=config.every, save_top_k=-1, save_last=True)
    distributed: dict[str, Any] = {}
    if config.processes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        method = config.start_method
        # the spawned processes receive the loaders' tensors through shared memory; handing them file descriptors
        # fails from the forked child a test runs in ("bad value(s) in fds_to_keep")
        torch.multiprocessing.set_sharing_strategy("file_system")
        strategy = DDPStrategy(start_method=method, process_group_backend="gloo", find_unused_parameters=True)
        distributed = {"devices": config.processes, "strategy": strategy}
    trainer = pl.Trainer(
        default_root_dir=str(root),
        max_epochs=config.epochs,
        accelerator="cpu",
        **({"devices": 1} | distributed),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=None if config.checkpoint == "epochs" else 4,
        limit_val_batches=1,
        callbacks=[checkpoint, *([kill] if kill else []), WritesFinalState(out), RecordsWarnings(out)],
    )
    last = root / "last.ckpt"
    trainer.fit(
        model, loader(config), loader(config, seed=1), ckpt_path=str(last) if resume and last.exists() else None
    )


class RecordsWarnings(pl.Callback):
    """Each process appends the warnings of its fit to ``out.warnings`` (rank 0) or ``out.rank<r>.warnings``."""

    def __init__(self, out: Path) -> None:
        self.out = str(out)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        target = self.out if trainer.global_rank == 0 else f"{self.out}.rank{trainer.global_rank}"
        shown = warnings.showwarning

        def record(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
            with open(f"{target}.warnings", "a") as handle:
                handle.write(f"{category.__name__}: {message}\n")
            shown(message, category, *args, **kwargs)

        warnings.simplefilter("always")
        warnings.showwarning = record  # this process ends with the fit: nothing to put back


def recorded_warnings(out: Path) -> str:
    """What :class:`RecordsWarnings` wrote for rank 0 of the run that wrote ``out``."""
    path = Path(f"{out}.warnings")
    return path.read_text() if path.exists() else ""


class WritesFinalState(pl.Callback):
    """Each process writes its final state (``out`` for rank 0, ``out.rank<r>`` for the others)."""

    def __init__(self, out: Path) -> None:
        self.out = str(out)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        target = self.out if trainer.global_rank == 0 else f"{self.out}.rank{trainer.global_rank}"
        torch.save(final_state(trainer, pl_module), target)  # type: ignore[arg-type]


def final_state(trainer: pl.Trainer, model: Model) -> dict[str, Any]:
    return {
        "parameters": {key: value.clone() for key, value in model.state_dict().items()},
        "optimizers": [optimizer.state_dict() for optimizer in trainer.optimizers],
        "schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
        "global_step": trainer.global_step,
        "updates": dict(model.optimizer_updates),
        "position": model.schedule.position if config_of(model).optimizers == 2 else None,
    }


def config_of(model: Model) -> Config:
    return model.config


def in_child(function: Callable[[], None]) -> int:
    """Run ``function`` in a forked child; its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        status = 1
        try:
            os.setpgrp()  # its own process group: a kill of the run's processes spares the test
            function()
            status = 0
        except BaseException:
            import traceback

            traceback.print_exc()  # the child's error, in the test's captured output
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def differences(ours: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """What differs between two final states, bit for bit (empty when they are the same)."""
    found = []
    for key in reference:
        if not _same(ours.get(key), reference[key]):
            found.append(key)
    return found


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)
