{%- set names = cookiecutter.optimizers.split(',') | map('trim') | list -%}
"""The model: a network in named parts (``PARTS``), each updated by its own optimizer of the same name.

``Model`` inherits ``ManualOptimizationModule``: ``training_step`` updates each part with one ``manual_step``, and
``trainer.global_step``, ``max_steps`` and ``ModelCheckpoint`` count training steps (batches in which an optimizer
updated), not optimizer calls. Each optimizer's learning rate, scheduler, gradient accumulation and clipping are set
in the config, under ``model.optimizers``.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import torch
from manualopt import ManualOptimizationModule
from torch import Tensor, nn

{% if names | length == 1 -%}
PARTS = ("{{ names[0] }}",)
{% else -%}
PARTS = (
{%- for name in names %}
    "{{ name }}",
{%- endfor %}
)
{% endif -%}
"""The parts of the model, in order; each is updated by the optimizer of the same name."""


class SchedulerSettings(TypedDict, total=False):
    """A ``StepLR`` schedule: the learning rate is multiplied by ``gamma`` every ``step_size`` epochs or steps."""

    step_size: int
    gamma: float
    interval: Literal["epoch", "step"]


class OptimizerSettings(TypedDict, total=False):
    """How one part's optimizer (Adam) updates it; every key may be left out (``DEFAULTS``)."""

    lr: float
    weight_decay: float
    # manual_step's keywords: gradients of this many batches make one update; clipping before each update
    accumulate_grad_batches: int
    gradient_clip_val: float | None
    gradient_clip_algorithm: Literal["norm", "value"]
    scheduler: SchedulerSettings | None


DEFAULTS: OptimizerSettings = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "gradient_clip_algorithm": "norm",
    "scheduler": None,
}


def make_parts(count: int, features: int, hidden: int, outputs: int) -> nn.ModuleList:
    """``count`` networks that, run one after the other, map ``features`` inputs to ``outputs``.

    Hidden layers of ``hidden`` units with a tanh; a single part is a two-layer network.
    """
    if count == 1:
        return nn.ModuleList([nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, outputs))])
    parts: list[nn.Module] = [nn.Sequential(nn.Linear(features, hidden), nn.Tanh())]
    parts += [nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh()) for _ in range(count - 2)]
    parts.append(nn.Linear(hidden, outputs))
    return nn.ModuleList(parts)


class Model(ManualOptimizationModule):
    """A regression network in named parts, each updated by its own optimizer.

    Args:
        features: Inputs per sample (set from the data by the command line).
        outputs: Targets per sample (set from the data by the command line).
        hidden: Units of the hidden layers.
        optimizers: Settings per part's optimizer, by name; what is left out comes from ``DEFAULTS``.

    Raises:
        ValueError: ``optimizers`` names an optimizer that is not one of ``PARTS``.
    """

    def __init__(
        self,
        features: int = 8,
        outputs: int = 1,
        hidden: int = 64,
        optimizers: dict[str, OptimizerSettings] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        given = dict(optimizers or {})
        unknown = sorted(set(given) - set(PARTS))
        if unknown:
            raise ValueError(
                f"model.optimizers names {unknown}, which are not parts of the model; the parts are {list(PARTS)}."
            )
        self.settings: dict[str, OptimizerSettings] = {name: {**DEFAULTS, **given.get(name, {})} for name in PARTS}
        self.parts = make_parts(len(PARTS), features, hidden, outputs)

    def part(self, name: str) -> nn.Module:
        """The part named ``name``."""
        return self.parts[PARTS.index(name)]

    def forward(self, inputs: Tensor) -> Tensor:
        """Predictions (N, outputs) for ``inputs`` (N, features): the parts in order."""
        for part in self.parts:
            inputs = part(inputs)
        return inputs

    def loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Mean squared error of the predictions."""
        return nn.functional.mse_loss(self(inputs), targets)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> None:
        """One training step: each part updated in turn, with the loss of its own forward pass.

        In ``toggled_optimizer(name)`` only that part's parameters collect gradients, so a part that accumulates
        gradients over several batches keeps its own. Replace a part's loss with what that part should minimise.
        """
        inputs, targets = batch
{%- for name in names %}
        with self.toggled_optimizer("{{ name }}"):
            {{ name }}_loss = self.loss(inputs, targets)
            self.manual_step("{{ name }}", {{ name }}_loss)
{%- endfor %}
        self.log_dict(
            {
{%- for name in names %}
                "{{ name }}_loss": {{ name }}_loss,
{%- endfor %}
            },
            prog_bar=True,
        )

    def validation_step(self, batch: list[Tensor], batch_idx: int) -> None:
        """The loss on held-out samples, logged as ``val_loss``."""
        inputs, targets = batch
        self.log("val_loss", self.loss(inputs, targets), prog_bar=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """One Adam per part, named like it, with its scheduler and ``manual_step`` keywords from the settings."""
        config: dict[str, Any] = {}
        for name in PARTS:
            settings = self.settings[name]
            optimizer = torch.optim.Adam(
                self.part(name).parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"]
            )
            entry: dict[str, Any] = {
                "optimizer": optimizer,
                "accumulate_grad_batches": settings["accumulate_grad_batches"],
                "gradient_clip_algorithm": settings["gradient_clip_algorithm"],
            }
            if settings["gradient_clip_val"] is not None:
                entry["gradient_clip_val"] = settings["gradient_clip_val"]
            schedule = settings["scheduler"]
            if schedule:
                scheduler = torch.optim.lr_scheduler.StepLR(
                    optimizer, step_size=schedule.get("step_size", 10), gamma=schedule.get("gamma", 0.5)
                )
                # "name" is what LearningRateMonitor logs the rate as
                entry["lr_scheduler"] = {
                    "scheduler": scheduler,
                    "interval": schedule.get("interval", "epoch"),
                    "name": f"lr-{name}",
                }
            config[name] = entry
        return config
