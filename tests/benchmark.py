"""What manualopt costs per batch, against the same step written by hand in stock Lightning and in raw PyTorch.

Run ``make bench`` (or ``python tests/benchmark.py``). Each case trains the same networks on the same data three
ways, in interleaved rounds (manualopt, hand-written Lightning manual optimization, a raw PyTorch loop, in a shuffled
order each round), on one CPU thread. The time of a batch is the thread CPU time from one batch's start to the next
one's (the whole loop cycle: data, forward, backward, steps, hooks, callbacks); the first batches of each run are
warm-up and not counted. A case reports, per way, the median over all its batches and the spread (lowest and highest)
of the per-round medians; the ratio is manualopt's median over hand-written Lightning's, with the spread of the
per-round ratios.

``--write-readme`` replaces the table between the ``benchmark`` markers of README.md with the one just measured.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from manualopt import EMA, ManualOptimizationModule, StepSchedule

NOISE = 16


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: ``optimizers`` networks trained side by side, with optional extras."""

    label: str
    width: int = 128
    optimizers: int = 2  # 2 is a GAN (discriminator + generator); otherwise independent regressors
    accumulate: int = 1
    clip: float | None = None
    n_critic: int = 1  # a StepSchedule: the generator steps on every n-th batch
    ema: bool = False
    batch_size: int = 64
    non_finite: str = "error"  # manualopt's check of every update's gradients ("ignore": off)

    @property
    def gan(self) -> bool:
        return self.optimizers == 2


def mlp(inputs: int, width: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, outputs)
    )


def parameter_count(case: Case) -> int:
    nets = _nets(case)
    return sum(p.numel() for net in nets.values() for p in net.parameters())


def _nets(case: Case) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    if case.gan:
        return {"discriminator": mlp(2, case.width, 1), "generator": mlp(NOISE, case.width, 2)}
    return {f"net_{index}": mlp(2, case.width, 1) for index in range(case.optimizers)}


def _gan_losses(
    nets: nn.ModuleDict, real: torch.Tensor
) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    fake = nets["generator"](torch.randn(len(real), NOISE))

    def d_loss() -> torch.Tensor:
        scores = nets["discriminator"](torch.cat([real, fake.detach()]))
        target = torch.cat([torch.ones(len(real), 1), torch.zeros(len(real), 1)])
        return nn.functional.binary_cross_entropy_with_logits(scores, target)

    def g_loss() -> torch.Tensor:
        scores = nets["discriminator"](fake)
        return nn.functional.binary_cross_entropy_with_logits(scores, torch.ones(len(real), 1))

    return d_loss, g_loss


def _regression_loss(net: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(net(batch), batch.sum(dim=1, keepdim=True))


def _due(case: Case, name: str, batch_idx: int) -> bool:
    return not (case.gan and name == "generator") or (batch_idx + 1) % case.n_critic == 0


class _Timer(pl.Callback):
    def __init__(self, times: list[int]) -> None:
        self.times = times

    def on_train_batch_start(self, *args: Any) -> None:
        self.times.append(time.thread_time_ns())


class WithManualopt(ManualOptimizationModule):
    """The case written with ``manual_step`` (and ``StepSchedule``/``EMA`` where the case has them)."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.case = case
        self.non_finite = case.non_finite  # type: ignore[assignment]
        self.nets = nn.ModuleDict(_nets(case))
        if case.gan and case.n_critic > 1:
            self.schedule = StepSchedule.every(discriminator=1, generator=case.n_critic)
        if case.ema:
            self.average = EMA(
                self.nets["generator" if case.gan else "net_0"], optimizer="generator" if case.gan else "net_0"
            )

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        if self.case.gan:
            d_loss, g_loss = _gan_losses(self.nets, real)
            self.manual_step("discriminator", d_loss())
            if self.case.n_critic == 1 or self.schedule.due("generator"):
                self.manual_step("generator", g_loss())
        else:
            for name, net in self.nets.items():
                self.manual_step(name, _regression_loss(net, real))

    def configure_optimizers(self) -> Any:
        options: dict[str, Any] = {}
        if self.case.accumulate > 1:
            options["accumulate_grad_batches"] = self.case.accumulate
        if self.case.clip is not None:
            options["gradient_clip_val"] = self.case.clip
        return {
            name: {"optimizer": torch.optim.Adam(net.parameters(), lr=1e-4), **options}
            for name, net in self.nets.items()
        }


class ByHand(pl.LightningModule):
    """The same case in stock Lightning manual optimization, as its documentation writes it."""

    def __init__(self, case: Case) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.case = case
        self.nets = nn.ModuleDict(_nets(case))
        if case.ema:
            target = self.nets["generator" if case.gan else "net_0"]
            self.average = [p.detach().clone() for p in target.parameters()]
            self.target = [target]

    def _update(self, index: int, name: str, loss: torch.Tensor, batch_idx: int) -> None:
        optimizers = self.optimizers()
        optimizer = optimizers[index] if isinstance(optimizers, list) else optimizers
        accumulate = self.case.accumulate
        if batch_idx % accumulate == 0:
            optimizer.zero_grad()
        self.manual_backward(loss / accumulate if accumulate > 1 else loss)
        if (batch_idx + 1) % accumulate == 0:
            if self.case.clip is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.case.clip, gradient_clip_algorithm="norm")
            optimizer.step()
            if self.case.ema and index == (1 if self.case.gan else 0):
                with torch.no_grad():
                    torch._foreach_lerp_(self.average, list(self.target[0].parameters()), 1 - 0.999)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        (real,) = batch
        if self.case.gan:
            d_loss, g_loss = _gan_losses(self.nets, real)
            self._update(0, "discriminator", d_loss(), batch_idx)
            if _due(self.case, "generator", batch_idx):
                self._update(1, "generator", g_loss(), batch_idx)
        else:
            for index, (name, net) in enumerate(self.nets.items()):
                self._update(index, name, _regression_loss(net, real), batch_idx)

    def configure_optimizers(self) -> Any:
        return [torch.optim.Adam(net.parameters(), lr=1e-4) for net in self.nets.values()]


def _loader(case: Case, batches: int) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(batches * case.batch_size, 2, generator=generator)), case.batch_size)


def _lightning_run(module: pl.LightningModule, case: Case, batches: int) -> list[int]:
    times: list[int] = []
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            default_root_dir=root,
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[_Timer(times)],
        )
        trainer.fit(module, _loader(case, batches))
    return times


def _torch_run(case: Case, batches: int) -> list[int]:
    """The same case as a plain PyTorch loop: the floor under any framework."""
    nets = nn.ModuleDict(_nets(case))
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=1e-4) for name, net in nets.items()}
    average = None
    if case.ema:
        target = nets["generator" if case.gan else "net_0"]
        average = [p.detach().clone() for p in target.parameters()]
    times: list[int] = []

    def update(name: str, loss: torch.Tensor, batch_idx: int) -> None:
        if batch_idx % case.accumulate == 0:
            optimizers[name].zero_grad()
        (loss / case.accumulate if case.accumulate > 1 else loss).backward()
        if (batch_idx + 1) % case.accumulate == 0:
            if case.clip is not None:
                nn.utils.clip_grad_norm_(nets[name].parameters(), case.clip)
            optimizers[name].step()
            if average is not None and name == ("generator" if case.gan else "net_0"):
                with torch.no_grad():
                    torch._foreach_lerp_(average, list(nets[name].parameters()), 1 - 0.999)

    for batch_idx, (real,) in enumerate(_loader(case, batches)):
        times.append(time.thread_time_ns())
        if case.gan:
            d_loss, g_loss = _gan_losses(nets, real)
            update("discriminator", d_loss(), batch_idx)
            if _due(case, "generator", batch_idx):
                update("generator", g_loss(), batch_idx)
        else:
            for name, net in nets.items():
                update(name, _regression_loss(net, real), batch_idx)
    times.append(time.thread_time_ns())
    return times


WAYS: dict[str, Callable[[Case, int], list[int]]] = {
    "manualopt": lambda case, batches: _lightning_run(WithManualopt(case), case, batches),
    "lightning": lambda case, batches: _lightning_run(ByHand(case), case, batches),
    "torch": _torch_run,
}


@dataclass
class Measured:
    """Per-batch microseconds of one way over all rounds, and the per-round medians."""

    batches: list[float] = field(default_factory=list)
    round_medians: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.batches)


def measure(case: Case, rounds: int, batches: int, warmup: int, seed: int = 0) -> dict[str, Measured]:
    """Run the three ways of ``case`` in ``rounds`` interleaved rounds; per-batch microseconds by way."""
    order = list(WAYS)
    shuffler = random.Random(seed)
    results = {way: Measured() for way in WAYS}
    for _ in range(rounds):
        shuffler.shuffle(order)
        for way in order:
            stamps = WAYS[way](case, batches + warmup)
            cycles = [(b - a) / 1000 for a, b in itertools.pairwise(stamps)][warmup:]
            results[way].batches.extend(cycles)
            results[way].round_medians.append(statistics.median(cycles))
    return results


def ratio_spread(results: dict[str, Measured]) -> tuple[float, float, float]:
    """manualopt over hand-written Lightning: the ratio of medians, and the lowest and highest per-round ratio."""
    rounds = [
        m / h for m, h in zip(results["manualopt"].round_medians, results["lightning"].round_medians, strict=True)
    ]
    return results["manualopt"].median / results["lightning"].median, min(rounds), max(rounds)


def cases(quick: bool) -> Iterator[Case]:
    yield Case("GAN, width 128 (the reference case)")
    if quick:
        return
    for count in (1, 4, 8):
        yield Case(f"{count} optimizer{'s' if count > 1 else ''}, width 128", optimizers=count)
    for width in (16, 512, 1024):
        yield Case(f"GAN, width {width}", width=width)
    yield Case("GAN, accumulate 2", accumulate=2)
    yield Case("GAN, clip norm 1.0", clip=1.0)
    yield Case("GAN, StepSchedule 5 critic : 1 generator", n_critic=5)
    yield Case("GAN, EMA of the generator", ema=True)
    yield Case("GAN, non-finite check off", non_finite="ignore")


def _row(case: Case, results: dict[str, Measured]) -> str:
    def cell(way: str) -> str:
        measured = results[way]
        return f"{measured.median:,.0f} ({min(measured.round_medians):,.0f}-{max(measured.round_medians):,.0f})"

    ratio, low, high = ratio_spread(results)
    return (
        f"| {case.label} | {parameter_count(case):,} | {cell('manualopt')} | {cell('lightning')} | {cell('torch')} |"
        f" **{ratio:.3f}x** ({low:.3f}-{high:.3f}) |"
    )


HEADER = (
    "| case | parameters | manualopt µs/batch | Lightning by hand µs/batch | raw PyTorch µs/batch |"
    " manualopt / by hand |\n|---|---|---|---|---|---|"
)
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (default 7)")
    parser.add_argument("--batches", type=int, default=150, help="timed batches per run (default 150)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches at the start of each run")
    parser.add_argument("--quick", action="store_true", help="the reference case only")
    parser.add_argument("--write-readme", action="store_true", help="put the table into README.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    lines = [HEADER]
    print(HEADER, flush=True)
    for case in cases(args.quick):
        results = measure(case, args.rounds, args.batches, args.warmup)
        lines.append(_row(case, results))
        print(lines[-1], flush=True)
    footer = (
        f"\n{args.rounds} interleaved rounds of {args.batches} timed batches per way and case, batch size 64, Adam,"
        f" one CPU thread; torch {torch.__version__}, Lightning {pl.__version__}, Python"
        f" {sys.version.split()[0]}. Medians, with the lowest and highest per-round median in parentheses."
    )
    print(footer)
    if args.write_readme:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        text = readme.read_text()
        start, end = text.index(START) + len(START), text.index(END)
        readme.write_text(text[:start] + "\n" + "\n".join(lines) + "\n" + footer + "\n" + text[end:])
        print(f"wrote the table into {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
