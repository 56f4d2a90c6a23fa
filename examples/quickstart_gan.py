"""A two-optimizer GAN on a generated 2-D ring of 8 Gaussians, trained on CPU in seconds.

The discriminator updates on every batch, the generator on every second batch. Stock ``ModelCheckpoint`` saves every
100 training steps. The program trains it twice, once as a plain ``LightningModule`` and once as a
``ManualOptimizationModule``, and prints what each run's step counters and checkpoints say.

Run it with ``python examples/quickstart_gan.py [--epochs N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ring_gaussians import NOISE, RingGAN, discriminator_loss, generator_loss, mlp, ring_data, ring_quality


class QuickRingGAN(RingGAN):
    """The ring recipe's GAN (one ``manual_step`` per optimizer, by name), without its sample pictures."""

    def configure_callbacks(self) -> list[pl.Callback]:
        return []


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
    model = QuickRingGAN()
    trainer = train(model, out / "manualopt", args.epochs, not args.no_progress)
    with torch.no_grad():
        covered, quality = ring_quality(model.generator(torch.randn(2500, NOISE)))

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
