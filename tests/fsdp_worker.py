"""One process of the two-process FSDP runs of ``test_fsdp.py``: ``python fsdp_worker.py KIND OUT``.

``KIND`` is ``fsdp`` (Lightning's ``FSDPStrategy``, torch's ``FullyShardedDataParallel``) or ``fsdp2``
(``ModelParallelStrategy``, torch's ``fully_shard``). Both run on the CPU with gloo, one process per simulated node,
and write what each rank saw to ``OUT/<run>-rank<r>.json``:

* ``automatic`` and ``manual``: one optimizer, the same network and data, norm clipping at 0.5 (FSDP's
  ``clip_grad_norm_``; Lightning's own clipping under FSDP2), under automatic optimization and with ``manual_step``;
* ``gan``: a two-optimizer GAN (``StepSchedule``) with ``ModelCheckpoint(every_n_train_steps=6)``;
* ``resumed``: the GAN resumed from its checkpoint at step 6, in the same processes;
* ``fsdp`` only: the GAN under Lightning's default wrapping (one FSDP unit for the whole module), which fails.

``FSDPStrategy`` refuses ``accelerator="cpu"`` and does not pass torch a CPU device; :class:`CPUFSDPStrategy` is the
smallest change that runs it on the CPU (see its docstring). ``ModelParallelStrategy`` runs on the CPU as it is.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn.functional import softplus
from torch.utils.data import DataLoader, TensorDataset

from manualopt import ManualOptimizationModule, StepSchedule

TIMEOUT = timedelta(seconds=60)
CLIP = 0.5


class CPUFSDPStrategy(FSDPStrategy):
    """``FSDPStrategy`` on CPU processes.

    Lightning's accelerator check refuses ``FSDPStrategy`` itself (its exact type) without a GPU, and its automatic
    wrapping passes ``device_id=None``, for which torch's FSDP asks for an accelerator. A subclass passes the check;
    modules wrapped in ``configure_model`` with ``device_id=self.device`` (the CPU here) pass torch. For the one run
    that needs Lightning's own wrapping of the whole module, ``wrap_whole_module`` gives torch the CPU device.
    """

    def __init__(self, wrap_whole_module: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wrap_whole_module = wrap_whole_module

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if not self.wrap_whole_module:
            return super()._setup_model(model)  # type: ignore[no-any-return]
        return FullyShardedDataParallel(model, device_id=torch.device("cpu"), use_orig_params=True)


def rank() -> int:
    return int(os.environ["NODE_RANK"])


def wrap(module: pl.LightningModule, kind: str, *names: str) -> None:
    """Shard each named network as a root of its own (``configure_model``)."""
    for name in names:
        network = getattr(module, name)
        if kind == "fsdp":
            setattr(module, name, FullyShardedDataParallel(network, device_id=module.device, use_orig_params=True))
        else:
            from torch.distributed.fsdp import fully_shard

            fully_shard(network, mesh=module.device_mesh["data_parallel"])


def clip_norm(module: pl.LightningModule, kind: str, network: nn.Module, optimizer: Any, clip: float | None) -> None:
    """Norm clipping as each FSDP wants it: FSDP's own ``clip_grad_norm_``; Lightning's own clipping for FSDP2.

    The norm before clipping is recorded, to compare the runs and to see that clipping changed the update.
    """
    if not clip:
        return
    if kind == "fsdp":
        norm = network.clip_grad_norm_(clip)  # type: ignore[operator]
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in network.parameters() if p.grad is not None])
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        pl.LightningModule.configure_gradient_clipping(module, optimizer, clip, "norm")  # the precision plugin's
    module.norms.append(float(norm))  # type: ignore[union-attr, operator]


class Twin:
    """One network and one optimizer; only ``training_step`` differs between the twins."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.norms: list[float] = []

    def configure_model(self) -> None:
        wrap(self, self.kind, "net")  # type: ignore[arg-type]

    def loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        clip_norm(self, self.kind, self.net, optimizer, gradient_clip_val)  # type: ignore[arg-type]

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.net.parameters(), lr=0.05)


class Automatic(Twin, pl.LightningModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.loss(batch)


class Manual(Twin, ManualOptimizationModule):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.manual_step(0, self.loss(batch), gradient_clip_val=CLIP)


class GAN(ManualOptimizationModule):
    """The discriminator on every batch, the generator on every 2nd, each network sharded on its own."""

    def __init__(self, kind: str, wrapped: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind, self.wrapped = kind, wrapped
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 4))
        self.discriminator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.schedule = StepSchedule.every(discriminator=1, generator=2)
        self.batches = 0
        self.norms: list[float] = []

    def configure_model(self) -> None:
        if self.wrapped:
            wrap(self, self.kind, "generator", "discriminator")

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.batches += 1
        (real,) = batch
        fake = self.generator(torch.randn(len(real), 4))
        d_loss = softplus(-self.discriminator(real)).mean() + softplus(self.discriminator(fake.detach())).mean()
        self.manual_step("discriminator", d_loss)
        if self.schedule.due("generator"):
            with self.toggled_optimizer("generator"):
                self.manual_step("generator", softplus(-self.discriminator(fake)).mean())

    def configure_gradient_clipping(
        self, optimizer: Any, gradient_clip_val: Any = None, gradient_clip_algorithm: Any = None
    ) -> None:
        network = self.generator if optimizer is self.optimizer("generator").optimizer else self.discriminator
        clip_norm(self, self.kind, network, optimizer, gradient_clip_val)

    def configure_optimizers(self) -> Any:
        return {
            "generator": {
                "optimizer": torch.optim.Adam(self.generator.parameters(), lr=1e-2),
                "gradient_clip_val": 1.0,
            },
            # plain SGD keeps no state: under FSDP2, torch's distributed checkpoint initializes it with a step at every
            # save and load (FSDPStrategy's sharded checkpoint cannot load an optimizer without state, with or without
            # manualopt: "`optim_state_dict` must have the keys "state" to be a valid optimizer state dict")
            "discriminator": torch.optim.SGD(self.discriminator.parameters(), lr=0.05)
            if self.kind == "fsdp2"
            else torch.optim.Adam(self.discriminator.parameters(), lr=1e-2),
        }


def shards(module: nn.Module) -> list[list[float]]:
    """This rank's part of every parameter (FSDP keeps a shard of each on each rank)."""
    parts = []
    for parameter in module.parameters():
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        parts.append(local.detach().flatten().tolist())
    return parts


def fit(kind: str, out: Path, run: str, module: pl.LightningModule, data: DataLoader[Any], **options: Any) -> None:
    ckpt_path = options.pop("ckpt_path", None)
    wrap_whole_module = options.pop("wrap_whole_module", False)
    if kind == "fsdp":
        strategy: Any = CPUFSDPStrategy(
            wrap_whole_module, process_group_backend="gloo", timeout=TIMEOUT, state_dict_type="sharded"
        )
    else:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(process_group_backend="gloo", timeout=TIMEOUT)
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "num_nodes": 2,
        "strategy": strategy,
        "max_epochs": 2,
        "default_root_dir": str(out),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    settings.update(options)
    trainer = pl.Trainer(**settings)
    report: dict[str, Any] = {}
    try:
        trainer.fit(module, data, ckpt_path=ckpt_path)
    except Exception as error:
        report["error"] = f"{type(error).__name__}: {error}"
    counted: Any = module
    report.update(
        {
            "patched_after_fit": sorted(set(vars(strategy)) & {"training_step", "optimizer_state", "load_checkpoint"}),
            "global_step": trainer.global_step,
            "shards": shards(module),
            "norms": counted.norms,
            "optimizer_updates": dict(getattr(counted, "optimizer_updates", {})),
            "schedule_position": getattr(getattr(counted, "schedule", None), "position", None),
        }
    )
    (out / f"{run}-rank{rank()}.json").write_text(json.dumps(report))


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    regression = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)  # 8 batches per rank
    samples = DataLoader(TensorDataset(torch.randn(96, 4, generator=generator) + 2), batch_size=4, shuffle=True)

    fit(kind, out, "automatic", Automatic(kind), regression, gradient_clip_val=CLIP)
    fit(kind, out, "manual", Manual(kind), regression)
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), every_n_train_steps=6, save_top_k=-1)
    fit(kind, out, "gan", GAN(kind), samples, enable_checkpointing=True, callbacks=[checkpoints])
    resumed = ModelCheckpoint(dirpath=str(out / "resumed-checkpoints"), every_n_train_steps=6, save_top_k=-1)
    start = str(out / "checkpoints" / "epoch=0-step=6.ckpt")
    fit(kind, out, "resumed", GAN(kind), samples, enable_checkpointing=True, callbacks=[resumed], ckpt_path=start)
    if kind == "fsdp":
        fit(kind, out, "whole", GAN(kind, wrapped=False), samples, wrap_whole_module=True)


if __name__ == "__main__":
    main()
