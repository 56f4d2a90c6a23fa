"""What each way of training a GAN under DDP costs per batch, on two CPU processes (two simulated nodes, gloo).

Run ``python tests/benchmark_ddp.py`` (about 3 minutes on 2 cores). It starts itself twice through ``cluster.launch``;
each process trains the same GAN (the discriminator and the generator updated on every batch, ``manual_step`` each,
batches of 64) in interleaved rounds, four ways:

* ``single``: no DDP, each process alone: the compute, with the other process competing for the CPU as under DDP;
* ``find_unused``: ``DDPStrategy(find_unused_parameters=True)``, the recommended setting;
* ``no_sync``: ``DDPStrategy()`` with every backward pass inside ``strategy.block_backward_sync()`` and each
  optimizer's gradients all-reduced (one flat tensor, averaged) in ``on_before_optimizer_step``;
* ``static_graph``: ``DDPStrategy(static_graph=True)`` (refused or failing: reported as such).

The time of a batch is the wall time between two batch starts, on rank 0 (the ranks wait for each other in every
all-reduce); the first 10 batches of a run are warm-up. It reports the median per way and width, the spread of the
per-round medians, and the floats all-reduced per batch (DDP's buckets counted by a communication hook, the
hand-written all-reduces by the callback). The last column checks that both ranks ended with the same weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.functional import softplus
from torch.utils.data import DataLoader, TensorDataset

from manualopt import ManualOptimizationModule

WAYS = ("single", "find_unused", "no_sync", "static_graph")
WIDTHS = (128, 1024)
ROUNDS, BATCHES, WARMUP, BATCH_SIZE = 9, 60, 10, 64
FLOATS = {"count": 0}


def mlp(inputs: int, width: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, outputs)
    )


class GAN(ManualOptimizationModule):
    def __init__(self, width: int, no_sync: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.generator, self.discriminator = mlp(16, width, 16), mlp(16, width, 1)
        self.no_sync = no_sync

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        fake = self.generator(torch.randn(len(real), 16))
        d_loss = softplus(-self.discriminator(real)).mean() + softplus(self.discriminator(fake.detach())).mean()
        strategy: Any = self.trainer.strategy
        with strategy.block_backward_sync() if self.no_sync else contextlib.nullcontext():
            self.manual_step("discriminator", d_loss)
            self.manual_step("generator", softplus(-self.discriminator(fake)).mean())

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if not self.no_sync:
            return
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        flat = torch.cat([g.flatten() for g in gradients])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        FLOATS["count"] += flat.numel()
        offset = 0
        for gradient in gradients:
            gradient.copy_(flat[offset : offset + gradient.numel()].view_as(gradient))
            offset += gradient.numel()

    def configure_optimizers(self) -> Any:
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=1e-4),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=1e-4),
        }


def counting_allreduce(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    FLOATS["count"] += bucket.buffer().numel()
    return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]


counting_allreduce.__annotations__ = {
    "state": object,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


class Timer(pl.Callback):
    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = trainer.strategy.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model.register_comm_hook(None, counting_allreduce)

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())
        if len(self.starts) == WARMUP + 1:  # the first timed batch starts
            FLOATS["count"] = 0

    def on_train_end(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())


def run(way: str, width: int, root: str) -> dict[str, Any]:
    from lightning.pytorch.strategies import DDPStrategy

    options: dict[str, Any] = {"process_group_backend": "gloo", "timeout": timedelta(seconds=120)}
    if way == "single":
        strategy: Any = "auto"
        extra: dict[str, Any] = {"devices": 1}
    else:
        if way == "find_unused":
            options["find_unused_parameters"] = True
        if way == "static_graph":
            options["static_graph"] = True
        strategy, extra = DDPStrategy(**options), {"devices": 1, "num_nodes": 2}
    timer = Timer()
    trainer = pl.Trainer(
        accelerator="cpu",
        strategy=strategy,
        max_steps=BATCHES,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        callbacks=[timer],
        **extra,
    )
    data = torch.randn(BATCHES * BATCH_SIZE * 2, 16, generator=torch.Generator().manual_seed(0))
    module = GAN(width, no_sync=way == "no_sync")
    FLOATS["count"] = 0
    try:
        trainer.fit(module, DataLoader(TensorDataset(data), batch_size=BATCH_SIZE))
    except Exception as error:
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    times = [b - a for a, b in zip(timer.starts[WARMUP:], timer.starts[WARMUP + 1 :], strict=False)]
    weights = torch.cat([p.detach().flatten() for p in module.parameters()])
    return {
        "median_ms": 1000 * statistics.median(times),
        "floats_per_batch": FLOATS["count"] / max(1, len(times)),  # the timed batches only
        "weights_sum": float(weights.double().sum()),
        "parameters": weights.numel(),
    }


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["NODE_RANK"])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as root:
        for round_index in range(ROUNDS):
            for width in WIDTHS:
                ways = WAYS[round_index % len(WAYS) :] + WAYS[: round_index % len(WAYS)]  # a rotating order
                for way in ways:
                    if way == "static_graph" and round_index:
                        continue  # it does not train: once is enough
                    results.setdefault(f"{way}/{width}", []).append(run(way, width, root))
    (out / f"rank{rank}.json").write_text(json.dumps(results))


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from cluster import check, launch

    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory)
        check(launch([__file__, "--worker", str(out)], timeout=1200))
        ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    import lightning

    print(f"torch {torch.__version__}, Lightning {lightning.__version__}, 2 processes x 1 thread, gloo on 127.0.0.1")
    print(
        "| way | width | parameters | ms per batch (median) | per-round medians | floats all-reduced per batch |"
        " ranks equal |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, runs in ranks[0].items():
        way, width = key.split("/")
        other = ranks[1][key]
        if "error" in runs[0]:
            print(f"| {way} | {width} | | {runs[0]['error']} | | | |")
            continue
        medians = [r["median_ms"] for r in runs]
        equal = all(a["weights_sum"] == b["weights_sum"] for a, b in zip(runs, other, strict=True))
        print(
            f"| {way} | {width} | {runs[0]['parameters']:,} | {statistics.median(medians):.2f} |"
            f" {min(medians):.2f}-{max(medians):.2f} | {runs[0]['floats_per_batch']:,.0f} |"
            f" {'yes' if equal or way == 'single' else 'NO'} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]))
    else:
        main()
