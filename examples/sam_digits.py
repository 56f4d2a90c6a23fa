"""Sharpness-aware minimization (SAM) of a digits classifier: two forward/backward passes, one training step.

Run from the repository root::

    python -m examples.sam_digits fit --config examples/configs/sam_digits.yaml [--ckpt_path last]

SAM (Foret et al., 2021) takes the gradient at the current weights, climbs to the worst point
within a radius ``rho``, takes the gradient there, and updates the original weights with it. In stock Lightning such a
step is not counted at all when it goes through the optimizer's own methods; here it is one ``manual_step`` with a
closure, so ``global_step`` counts exactly one training step per batch. Validation logs the held-out accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from examples.classifier import DigitsClassifier
from examples.cli import RecipeCLI, run
from examples.digits_data import DigitsClassification
from manualopt import ManualOptimizationModule


class SAM(torch.optim.Optimizer):
    """SAM around a base optimizer: ``step(closure)`` climbs, re-evaluates the gradient there, and steps the base."""

    def __init__(self, params: Any, base: type[torch.optim.Optimizer] = torch.optim.SGD, rho: float = 0.05, **kwargs):
        super().__init__(params, {"rho": rho, **kwargs})
        self.base_optimizer = base(self.param_groups, **kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        if closure is None:
            raise ValueError("SAM needs a closure that recomputes the loss and its gradient.")
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.stack([p.grad.norm() for p in params]).norm()
        climbs = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    climb = p.grad * (group["rho"] / (norm + 1e-12))
                    p.add_(climb)
                    climbs.append((p, climb))
        with torch.enable_grad():
            loss = closure()
        for p, climb in climbs:
            p.sub_(climb)
        self.base_optimizer.step()
        return loss


class SAMClassifier(ManualOptimizationModule):
    """The digits classifier of :mod:`examples.classifier`, trained with SAM around SGD with momentum.

    Args:
        lr: SGD's learning rate.
        momentum: SGD's momentum.
        rho: SAM's radius.
    """

    loss_names = ("train_loss", "val_loss")
    quality_metric = "val_accuracy"

    def __init__(self, lr: float = 0.05, momentum: float = 0.9, rho: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = DigitsClassifier()

    def loss(self, images: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(self.net(images), labels)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = self.loss(images, labels)
        self.manual_backward(loss)  # SAM's first pass: the gradient at the current weights
        self.manual_step("sam", closure=lambda: self.loss(images, labels))  # climb, second pass, update
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.net(images)
        self.log("val_loss", nn.functional.cross_entropy(logits, labels))
        self.log("val_accuracy", (logits.argmax(dim=1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        hparams = self.hparams
        return {"sam": SAM(self.parameters(), lr=hparams["lr"], momentum=hparams["momentum"], rho=hparams["rho"])}


def main(args: list[str] | None = None) -> RecipeCLI:
    """The recipe's command line; ``args`` replaces ``sys.argv[1:]``."""
    return run(SAMClassifier, DigitsClassification, args)


if __name__ == "__main__":
    main()
