"""GPU check (not collected by pytest): 16-mixed AMP through manual_step, on one CUDA device, in about a minute.

Run: ``PYTHONPATH=. python tests/gpu_check.py [--out results.json]``. It prints one JSON document:

1. ``clipping``: with a GradScaler, ``manual_step(..., gradient_clip_val=1e-3)`` clips after unscaling, so an SGD
   update with lr 1 has norm 1e-3; Lightning's documented manual recipe (``clip_gradients`` between
   ``manual_backward`` and ``step``) clips the still-scaled gradients, so its update is 1e-3 / scale.
2. ``skipped_step``: an infinite loss on batch 3 makes the scaler skip that update: ``stepped`` is False, the update
   counter and ``global_step`` do not move, and the step-interval scheduler does not step.
3. ``parity``: the automatic and manual twins of tests/test_parity.py under 16-mixed with accumulation 3 and norm
   clipping 0.5: final parameters equal.
4. ``throughput``: milliseconds per training step of a two-optimizer MLP GAN, stock Lightning manual code against
   ``manual_step``, same work.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_parity import Automatic, Manual

from manualopt import ManualOptimizationModule


def _trainer(**options: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cuda",
        "devices": 1,
        "precision": "16-mixed",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": tempfile.mkdtemp(),
    }
    defaults.update(options)
    return pl.Trainer(**defaults)


def _data(batches: int = 10, width: int = 4, batch_size: int = 4) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch_size, width, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=batch_size)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in module.parameters()])


class Clipped(ManualOptimizationModule):
    def __init__(self, infinite_at: int = -1) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.infinite_at = infinite_at
        self.records: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y) * 10
        if batch_idx == self.infinite_at:
            loss = loss * float("inf")
        before, rate = _flat(self.net), self.trainer.optimizers[0].param_groups[0]["lr"]
        result = self.manual_step("net", loss, gradient_clip_val=1e-3)
        self.records.append(
            {"stepped": result.stepped, "update_norm": float((_flat(self.net) - before).norm()), "lr": rate}
        )

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.net.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        return {"net": {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}}


class DocsRecipe(pl.LightningModule):
    """Lightning's documented manual-optimization clipping: clip between manual_backward and step."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Linear(4, 1)
        self.records: list[dict[str, Any]] = []

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        opt = self.optimizers()
        before = _flat(self.net)
        opt.zero_grad()
        self.manual_backward(nn.functional.mse_loss(self.net(x), y) * 10)
        self.clip_gradients(opt, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
        opt.step()
        self.records.append({"update_norm": float((_flat(self.net) - before).norm())})

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.net.parameters(), lr=1.0)


def check_clipping() -> dict[str, Any]:
    ours, docs = Clipped(), DocsRecipe()
    _trainer(max_epochs=1).fit(ours, _data())
    _trainer(max_epochs=1).fit(docs, _data())
    stepped = [r for r in ours.records if r["stepped"]]
    return {
        "manual_step_update_over_lr": [round(r["update_norm"] / r["lr"], 7) for r in stepped],
        "docs_recipe_update": [round(r["update_norm"], 9) for r in docs.records],
        "expected": 1e-3,
        # The GradScaler skips its first steps while it calibrates its scale (65536 to start): those are not updates.
        "ok": len(stepped) >= 3
        and all(abs(r["update_norm"] / r["lr"] - 1e-3) < 2e-5 for r in stepped)
        and max(r["update_norm"] for r in docs.records) < 1e-4,
    }


def check_skipped_step() -> dict[str, Any]:
    model = Clipped(infinite_at=3)
    trainer = _trainer(max_epochs=1)
    trainer.fit(model, _data())
    stepped = [r["stepped"] for r in model.records]
    rates = [r["lr"] for r in model.records]
    expected_rates = [0.5 ** sum(stepped[:i]) for i in range(len(stepped))]
    return {
        "stepped": stepped,
        "lr_seen": rates,
        "global_step": trainer.global_step,
        "updates": dict(model.optimizer_updates),
        "ok": stepped[3] is False
        and rates == expected_rates
        and trainer.global_step == sum(stepped) == model.optimizer_updates["net"]
        and model.records[3]["update_norm"] == 0.0,
    }


def check_parity() -> dict[str, Any]:
    params = {}
    for name, model, options in [
        ("automatic", Automatic("adam"), {"accumulate_grad_batches": 3, "gradient_clip_val": 0.5}),
        ("manual", Manual("adam", accumulate_grad_batches=3, gradient_clip_val=0.5), {}),
    ]:
        torch.manual_seed(0)
        _trainer(max_epochs=3, deterministic=True, **options).fit(model, _data())
        params[name] = _flat(model).cpu()
    difference = float((params["automatic"] - params["manual"]).abs().max())
    return {"max_abs_difference": difference, "ok": bool(torch.equal(params["automatic"], params["manual"]))}


class StockGAN(pl.LightningModule):
    def __init__(self, width: int = 1024) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.discriminator = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    def critic_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch[0]
        fake = self.generator(torch.randn_like(x))
        return self.discriminator(fake.detach()).mean() - self.discriminator(x).mean(), fake

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        d_loss, fake = self.critic_loss(batch)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        opt_g.zero_grad()
        self.manual_backward(-self.discriminator(fake).mean())
        opt_g.step()

    def configure_optimizers(self) -> Any:
        return [torch.optim.Adam(self.generator.parameters()), torch.optim.Adam(self.discriminator.parameters())]


class ManualGAN(ManualOptimizationModule):
    def __init__(self, width: int = 1024) -> None:
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        self.discriminator = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

    critic_loss = StockGAN.critic_loss

    def training_step(self, batch: Any, batch_idx: int) -> None:
        d_loss, fake = self.critic_loss(batch)
        self.manual_step("discriminator", d_loss)
        self.manual_step("generator", -self.discriminator(fake).mean())

    def configure_optimizers(self) -> Any:
        return {
            "generator": torch.optim.Adam(self.generator.parameters()),
            "discriminator": torch.optim.Adam(self.discriminator.parameters()),
        }


class StepTimer(pl.Callback):
    """Times training steps after the first ``warmup`` (kernels, allocator), excluding Trainer setup."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.count = warmup, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        torch.cuda.synchronize()
        self.count += 1
        if self.count == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()


def check_throughput(steps: int = 600, warmup: int = 100) -> dict[str, Any]:
    data = DataLoader(TensorDataset(torch.randn(steps * 256, 1024)), batch_size=256)
    timings: dict[str, Any] = {}
    for _ in range(3):  # alternate the two, three times each; report the best of each
        for name, cls in [("stock_ms_per_step", StockGAN), ("manualopt_ms_per_step", ManualGAN)]:
            timer = StepTimer(warmup)
            _trainer(max_steps=steps, precision="bf16-mixed", callbacks=[timer]).fit(cls(), data)
            value = (timer.end - timer.start) * 1000 / (timer.count - warmup)
            timings[name] = round(min(value, timings.get(name, value)), 4)
    timings["overhead_percent"] = round(100 * (timings["manualopt_ms_per_step"] / timings["stock_ms_per_step"] - 1), 1)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA device")
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "lightning": pl.__version__,
    }
    for name, check in [
        ("clipping", check_clipping),
        ("skipped_step", check_skipped_step),
        ("parity", check_parity),
        ("throughput", check_throughput),
    ]:
        try:
            report[name] = check()
        except Exception as error:  # report every check, even when one breaks
            report[name] = {"error": f"{type(error).__name__}: {error}"}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
