"""A two-optimizer GAN on a generated 2-D ring of 8 Gaussians, trained on CPU in seconds.

The discriminator updates on every batch, the generator on every second batch. Stock ``ModelCheckpoint`` saves every
100 training steps. The program trains it twice, once as a plain ``LightningModule`` and once as a
``ManualOptimizationModule``, and prints what each run's step counters and checkpoints say.

Run it with ``make demo`` or ``python examples/quickstart_gan.py [--epochs N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from manualopt import ManualOptimizationModule

MODES = 8
RADIUS = 2.0
STD = 0.05
NOISE = 8


def ring_data(samples: int = 2048, seed: int = 0) -> TensorDataset:
    """Points from 8 Gaussians (std ``STD``) evenly spaced on a circle of radius ``RADIUS``."""
    generator = torch.Generator().manual_seed(seed)
    modes = torch.randint(MODES, (samples,), generator=generator)
    angles = modes.float() * (2 * math.pi / MODES)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1) * RADIUS
    return TensorDataset(centers + STD * torch.randn(samples, 2, generator=generator))


def mlp(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, outputs))


def discriminator_loss(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Real samples should score 1, generated ones 0."""
    bce = nn.functional.binary_cross_entropy_with_logits
    real_score, fake_score = discriminator(real), discriminator(fake.detach())
    return bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))


def generator_loss(discriminator: nn.Module, fake: Tensor) -> Tensor:
    """The non-saturating generator loss: generated samples should score 1."""
    score = discriminator(fake)
    return nn.functional.binary_cross_entropy_with_logits(score, torch.ones_like(score))


class RingGAN(ManualOptimizationModule):
    """The manualopt version: one ``manual_step`` per optimizer, addressed by name."""

    def __init__(self, generator_every: int = 2, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.generator = mlp(NOISE, 2)
        self.discriminator = mlp(2, 1)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], NOISE))
        d_loss = discriminator_loss(self.discriminator, real, fake)
        self.manual_step("discriminator", d_loss)
        if batch_idx % self.hparams["generator_every"] == 0:
            g_loss = generator_loss(self.discriminator, fake)
            self.manual_step("generator", g_loss)
            self.log("g_loss", g_loss, prog_bar=True)
        self.log("d_loss", d_loss, prog_bar=True)
        return d_loss

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr = self.hparams["lr"]
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999)),
        }


class StockRingGAN(pl.LightningModule):
    """The same GAN written for stock Lightning manual optimization."""

    def __init__(self, generator_every: int = 2, lr: float = 1e-3) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator_every, self.lr = generator_every, lr
        self.generator = mlp(NOISE, 2)
        self.discriminator = mlp(2, 1)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        opt_g, opt_d = self.optimizers()
        real = batch[0]
        fake = self.generator(torch.randn(real.shape[0], NOISE))
        d_loss = discriminator_loss(self.discriminator, real, fake)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        if batch_idx % self.generator_every == 0:
            opt_g.zero_grad()
            self.manual_backward(generator_loss(self.discriminator, fake))
            opt_g.step()
        return d_loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.5, 0.999)),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.999)),
        ]


def ring_quality(generator: nn.Module, samples: int = 2500) -> tuple[int, float]:
    """Modes covered (of 8) and the share of samples within 3 standard deviations of their nearest mode."""
    with torch.no_grad():
        points = generator(torch.randn(samples, NOISE))
    angles = torch.arange(MODES).float() * (2 * math.pi / MODES)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1) * RADIUS
    distance, nearest = torch.cdist(points, centers).min(dim=1)
    good = distance < 3 * STD
    covered = int(torch.bincount(nearest[good], minlength=MODES).gt(samples // (MODES * 20)).sum())
    return covered, float(good.float().mean())


def train(model: pl.LightningModule, out: Path, epochs: int, progress: bool) -> pl.Trainer:
    checkpoint = ModelCheckpoint(dirpath=str(out), every_n_train_steps=100, save_top_k=-1)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[checkpoint],
        logger=False,
        default_root_dir=str(out),
        enable_model_summary=False,
        enable_progress_bar=progress,
    )
    torch.manual_seed(0)
    trainer.fit(model, DataLoader(ring_data(), batch_size=64, shuffle=True))
    return trainer


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (32 batches each); default 60")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder; default: a new temporary one")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="manualopt-demo-"))
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    batches = 32 * args.epochs
    print(f"Training a GAN for {args.epochs} epochs ({batches} batches) with ModelCheckpoint(every_n_train_steps=100)")
    stock = train(StockRingGAN(), out / "stock", args.epochs, not args.no_progress)
    model = RingGAN()
    trainer = train(model, out / "manualopt", args.epochs, not args.no_progress)
    covered, quality = ring_quality(model.generator)

    def files(folder: Path) -> str:
        names = sorted((p.name for p in folder.glob("*.ckpt")), key=lambda name: int(name.split("step=")[1][:-5]))
        shown = names if len(names) <= 4 else [*names[:3], "...", names[-1]]
        return ", ".join(shown) or "(none)"

    print()
    print(f"{'':22}{'stock Lightning':>18}{'manualopt':>14}")
    print(f"{'batches trained':22}{batches:>18}{batches:>14}")
    print(f"{'trainer.global_step':22}{stock.global_step:>18}{trainer.global_step:>14}")
    print(
        f"{'checkpoints written':22}{len(list((out / 'stock').glob('*.ckpt'))):>18}"
        f"{len(list((out / 'manualopt').glob('*.ckpt'))):>14}"
    )
    print()
    print(f"manualopt per-optimizer updates: {dict(model.optimizer_updates)}")
    print(f"manualopt checkpoints in {out / 'manualopt'}:\n  {files(out / 'manualopt')}")
    print(f"stock checkpoints in {out / 'stock'}:\n  {files(out / 'stock')}")
    print(f"ring of 8 Gaussians: {covered}/8 modes covered, {quality:.0%} of samples within 3 std of a mode")
    return {
        "global_step": trainer.global_step,
        "stock_global_step": stock.global_step,
        "updates": dict(model.optimizer_updates),
        "checkpoints": sorted(p.name for p in (out / "manualopt").glob("*.ckpt")),
        "modes_covered": covered,
    }


if __name__ == "__main__":
    main()
