"""A two-optimizer GAN trained twice, as a stock ``LightningModule`` and as a ``ManualOptimizationModule``.

The GAN learns PacGAN's ring of 8 Gaussians (:mod:`examples.mixtures`). The discriminator updates on every batch, the
generator on every second batch, and stock ``ModelCheckpoint`` saves every 100 training steps. The program prints
what each run's ``global_step`` and checkpoints say. It takes about 15 s of CPU (both runs, 1,920 batches each,
one torch thread), and keeps its checkpoints only when ``--out`` names a folder: otherwise they go to a temporary
folder that is removed at the end.

Run it from the repository root with ``python -m examples.quickstart_gan [--epochs N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from examples.cli import set_threads
from examples.mixtures import ring
from examples.networks import mlp
from manualopt import ManualOptimizationModule

NOISE = 2
BATCHES_PER_EPOCH = 32


def discriminator_loss(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """Real points should score 1, generated ones 0."""
    bce = nn.functional.binary_cross_entropy_with_logits
    real_score, fake_score = discriminator(real), discriminator(fake.detach())
    return bce(real_score, torch.ones_like(real_score)) + bce(fake_score, torch.zeros_like(fake_score))


def generator_loss(discriminator: nn.Module, fake: Tensor) -> Tensor:
    """The non-saturating generator loss: generated points should score 1."""
    score = discriminator(fake)
    return nn.functional.binary_cross_entropy_with_logits(score, torch.ones_like(score))


class RingGAN(ManualOptimizationModule):
    """One ``manual_step`` per optimizer, by name; the generator on every ``generator_every``-th batch."""

    def __init__(self, generator_every: int = 2, lr: float = 1e-3) -> None:
        super().__init__()
        self.generator_every, self.lr = generator_every, lr
        self.generator, self.discriminator = mlp(NOISE, 2), mlp(2, 1)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        fake = self.generator(torch.randn(len(batch[0]), NOISE))
        self.manual_step("discriminator", discriminator_loss(self.discriminator, batch[0], fake))
        if batch_idx % self.generator_every == 0:
            self.manual_step("generator", generator_loss(self.discriminator, fake))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.5, 0.999)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.999)),
        }


class StockRingGAN(pl.LightningModule):
    """The same GAN written for stock Lightning manual optimization."""

    def __init__(self, generator_every: int = 2, lr: float = 1e-3) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator_every, self.lr = generator_every, lr
        self.generator, self.discriminator = mlp(NOISE, 2), mlp(2, 1)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        fake = self.generator(torch.randn(len(batch[0]), NOISE))
        opt_d.zero_grad()
        self.manual_backward(discriminator_loss(self.discriminator, batch[0], fake))
        opt_d.step()
        if batch_idx % self.generator_every == 0:
            opt_g.zero_grad()
            self.manual_backward(generator_loss(self.discriminator, fake))
            opt_g.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.lr, betas=(0.5, 0.999)),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(0.5, 0.999)),
        ]


def train(model: pl.LightningModule, out: Path, epochs: int, progress: bool) -> pl.Trainer:
    """Fit ``model`` on the ring with ``ModelCheckpoint(every_n_train_steps=100)`` writing to ``out``."""
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
    points = ring().sample(BATCHES_PER_EPOCH * 64, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    trainer.fit(model, DataLoader(TensorDataset(points), batch_size=64, shuffle=True))
    return trainer


def _files(folder: Path) -> str:
    names = sorted((p.name for p in folder.glob("*.ckpt")), key=lambda name: int(name.split("step=")[1][:-5]))
    shown = names if len(names) <= 4 else [*names[:3], "...", names[-1]]
    return ", ".join(shown) or "(none)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train both GANs, print what their counters say, and return them (the tests read the result)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60, help=f"epochs of {BATCHES_PER_EPOCH} batches; default 60")
    parser.add_argument(
        "--out", type=Path, default=None, help="keep the checkpoints here (default: a temporary folder)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    set_threads()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    progress = not args.no_progress
    batches = BATCHES_PER_EPOCH * args.epochs
    print(
        f"Training a GAN twice for {args.epochs} epochs ({batches} batches each) with "
        f"ModelCheckpoint(every_n_train_steps=100): about {batches // 128} s of CPU for both",
        flush=True,
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="manualopt-quickstart-") as temporary:
        out = args.out or Path(temporary)
        stock = train(StockRingGAN(), out / "stock", args.epochs, progress)
        model = RingGAN()
        trainer = train(model, out / "manualopt", args.epochs, progress)
        result = {
            "global_step": trainer.global_step,
            "stock_global_step": stock.global_step,
            "updates": dict(model.optimizer_updates),
            "checkpoints": sorted(p.name for p in (out / "manualopt").glob("*.ckpt")),
        }
        print()
        print(f"{'':22}{'stock Lightning':>18}{'manualopt':>14}")
        print(f"{'batches trained':22}{batches:>18}{batches:>14}")
        print(f"{'trainer.global_step':22}{stock.global_step:>18}{trainer.global_step:>14}")
        print(
            f"{'checkpoints written':22}{len(list((out / 'stock').glob('*.ckpt'))):>18}{len(result['checkpoints']):>14}"
        )
        print()
        print(f"manualopt per-optimizer updates: {result['updates']}")
        print(f"manualopt checkpoints: {_files(out / 'manualopt')}")
        print(f"stock checkpoints:     {_files(out / 'stock')}")
        kept = f"kept in {out}" if args.out else "in a temporary folder, now removed (--out DIR keeps them)"
        print(f"checkpoints {kept}; {time.monotonic() - started:.0f} s in all")
    return result


if __name__ == "__main__":
    main()
