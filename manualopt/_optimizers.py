"""Named optimizers: reading ``configure_optimizers``, per-optimizer step options, and one record per optimizer."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.optim import Optimizer as TorchOptimizer

from manualopt import _lightning
from manualopt.errors import InvalidStepArgumentError, OptimizerConfigurationError
from manualopt.types import NON_FINITE_POLICIES, StepResult

if TYPE_CHECKING:
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.utilities.types import LRSchedulerConfig
    from torch.optim import Optimizer

    from manualopt.ema import EMA

__all__ = ["STEP_OPTIONS", "Configured", "OptimizerRecord", "StepOptions", "Window", "configure", "default_name"]

#: The ``manual_step`` keywords that can also be set per optimizer in ``configure_optimizers``.
STEP_OPTIONS = ("accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm")
#: Other per-optimizer keys of a named entry: what an update does with a non-finite loss or gradient.
RECORD_OPTIONS = ("non_finite",)
# Keys of Lightning's own single-optimizer dictionary; a mapping holding "optimizer" is that form, not names.
_LIGHTNING_KEYS = frozenset({"optimizer", "lr_scheduler", "monitor"})


@dataclass(frozen=True)
class StepOptions:
    """Validated ``manual_step`` options of one optimizer: how many micro-batches an update sums, and clipping."""

    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"

    @classmethod
    def validated(
        cls, accumulate_grad_batches: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any, where: str
    ) -> StepOptions:
        """Check the options as the Trainer checks its arguments of the same names.

        Raises:
            InvalidStepArgumentError: An option has a wrong type or value; the message names ``where``.
        """
        if (
            isinstance(accumulate_grad_batches, bool)
            or not isinstance(accumulate_grad_batches, int)
            or accumulate_grad_batches < 1
        ):
            raise InvalidStepArgumentError(
                f"{where}: accumulate_grad_batches must be a positive integer, not {accumulate_grad_batches!r}."
            )
        if gradient_clip_val is not None and (
            isinstance(gradient_clip_val, bool)
            or not isinstance(gradient_clip_val, numbers.Real)
            or not math.isfinite(gradient_clip_val)
            or gradient_clip_val < 0
        ):
            raise InvalidStepArgumentError(
                f"{where}: gradient_clip_val must be a finite non-negative number or None, not {gradient_clip_val!r}."
            )
        if gradient_clip_algorithm is not None and gradient_clip_algorithm not in ("norm", "value"):
            raise InvalidStepArgumentError(
                f"{where}: gradient_clip_algorithm must be 'norm', 'value' or None, not {gradient_clip_algorithm!r}."
            )
        return cls(
            accumulate_grad_batches,
            None if gradient_clip_val is None else float(gradient_clip_val),
            gradient_clip_algorithm or "norm",
        )


@dataclass(slots=True)
class Window:
    """An optimizer's accumulation window: micro-batches gathered since its last update, in which epoch, how it clips.

    A window never spans epochs: the epoch's last batch closes it. Saved whole in checkpoints, so a run resumed inside
    a window closes it on the same batch, with the same clipping.
    """

    count: int = 0
    epoch: int = -1
    options: StepOptions = field(default_factory=StepOptions)

    def state_dict(self) -> list[Any]:
        """``[count, epoch, clip value, clip algorithm]``, for checkpoints."""
        return [self.count, self.epoch, self.options.gradient_clip_val, self.options.gradient_clip_algorithm]

    @classmethod
    def from_state(cls, state: list[Any]) -> Window:
        """The window a checkpoint saved (entries of the first format hold only count and epoch)."""
        count, epoch, *clipping = state
        options = StepOptions(1, clipping[0], clipping[1]) if len(clipping) == 2 else StepOptions()
        return cls(int(count), int(epoch), options)


def parameters_of(optimizer: TorchOptimizer) -> list[Tensor]:
    """An optimizer's parameters, in ``param_groups`` order."""
    return [parameter for group in optimizer.param_groups for parameter in group["params"]]


class OptimizerRecord:
    """Everything manualopt keeps about one optimizer during one fit.

    Attributes:
        name: The optimizer's name.
        index: Its position in ``trainer.optimizers``.
        optimizer: The torch optimizer.
        lightning: Its ``LightningOptimizer`` (what ``self.optimizers()`` returns).
        defaults: The ``manual_step`` options set for it in ``configure_optimizers``.
        updates: Its completed updates in this run (continued on resume).
        window: Its open accumulation window.
        schedulers: The scheduler configs manualopt steps for it, as automatic optimization reads them.
        averages: The ``EMA`` modules updated after each of its updates.
        last_update_call: The ``training_step`` call (counted in the fit) of its last update through ``manual_step``.
        last_update_epoch: The epoch of its last update through ``manual_step``.
        stepping: Whether its own ``step`` is running (an inner optimizer's steps are then part of it).
        checking: Whether its next step checks the gradients first (set by ``manual_step``, so that the check runs
            after the user's ``on_before_optimizer_step`` and ``configure_gradient_clipping``, right before the step).
        unmonitored: A ``ReduceLROnPlateau`` of this optimizer configured without a ``monitor``: the user's to step, so
            an update through ``manual_step`` (after which manualopt would have to step it) is refused.
        withheld: The result of an update that check withheld (policy ``"skip"``), until ``manual_step`` reads it.
        non_finite: What its updates do with a non-finite loss or gradient: ``"error"``, ``"skip"`` or ``"ignore"``.
        skipped: Updates withheld because of a non-finite loss or gradient (``non_finite="skip"``), in this run.
    """

    __slots__ = (
        "_options",
        "_plain_zero_grad",
        "_unit",
        "averages",
        "checking",
        "checks_non_finite",
        "defaults",
        "defers_check",
        "found",
        "last_update_call",
        "last_update_epoch",
        "lightning",
        "name",
        "non_finite",
        "optimizer",
        "schedulers",
        "skipped",
        "stepping",
        "unchecked_since",
        "unmonitored",
        "updates",
        "window",
        "withheld",
    )

    def __init__(
        self,
        name: str,
        optimizer: Optimizer,
        lightning: LightningOptimizer,
        defaults: StepOptions,
        schedulers: list[LRSchedulerConfig],
        non_finite: str = "error",
    ) -> None:
        self.name, self.optimizer, self.lightning = name, optimizer, lightning
        self.defaults = defaults
        self.schedulers = schedulers
        self.updates = 0
        self.window = Window()
        self.averages: list[EMA] = []
        self.last_update_call = -1
        self.last_update_epoch = -1
        self.stepping = False
        self.non_finite = non_finite
        self.skipped = 0
        self.checks_non_finite = non_finite != "ignore"  # set again when the fit starts (a GradScaler checks itself)
        self.defers_check = False  # whether the flag is read at check points only (policy "error" on a GPU)
        self.found: Tensor | None = None  # set to 1 by a non-finite gradient, on the gradients' device
        self.unchecked_since: tuple[int, int | None, int] | None = None  # first update not read back yet (GPU)
        self.unmonitored: Any = None  # a ReduceLROnPlateau of this optimizer configured without a monitor
        self.checking = False  # whether the next step of the optimizer checks its gradients (manual_step's update)
        self.withheld: StepResult | None = None  # the update that check withheld (policy "skip")
        self._options: dict[tuple[Any, Any, Any], StepOptions] = {}
        self._plain_zero_grad = type(optimizer).zero_grad is TorchOptimizer.zero_grad

    def found_non_finite(self) -> Tensor | None:
        """A flag on the gradients' device that is set when one of the optimizer's gradients is not finite.

        The flag accumulates until it is read and cleared. It is computed with the fused check torch's own GradScaler
        uses (``_amp_foreach_non_finite_check_and_unscale_`` with a scale of 1, which leaves the values as they are),
        so it costs one pass over the gradients and no host-device synchronization. None when there is no gradient.
        """
        gradients: list[Tensor] = []
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                if parameter.grad is not None:
                    gradients.append(parameter.grad)
        if not gradients:
            return None
        device = gradients[0].device
        found = self.found
        if found is None or found.device != device:
            found = self.found = torch.zeros(1, device=device)
            self._unit = torch.ones(1, device=device)
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(gradients, found, self._unit)
        except (RuntimeError, NotImplementedError):  # gradients on several devices, or of a dtype it does not take
            bad = any(not bool(torch.isfinite(gradient).all()) for gradient in gradients)
            found.fill_(float(bad))
        return found

    def parameters(self) -> list[Tensor]:
        """The optimizer's parameters, in ``param_groups`` order."""
        return parameters_of(self.optimizer)

    def restore_gradients(self, gradients: list[Tensor | None]) -> None:
        """Put back the gradients :meth:`release_gradients` returned (or a checkpoint held), on the parameters."""
        for parameter, gradient in zip(self.parameters(), gradients, strict=True):
            parameter.grad = None if gradient is None else gradient.to(parameter.device)

    def release_gradients(self) -> list[Tensor | None]:
        """Set the gradients of the optimizer's parameters to None: ``optimizer.zero_grad(set_to_none=True)``.

        For an optimizer that does not override ``zero_grad`` this is done directly, without the profiler scope
        torch opens around ``zero_grad`` (which costs more than the release itself on small models).

        Returns:
            The released gradients, in ``param_groups`` order, for :meth:`restore_gradients`.
        """
        released: list[Tensor | None] = []
        plain = self._plain_zero_grad
        for group in self.optimizer.param_groups:
            for parameter in group["params"]:
                released.append(parameter.grad)
                if plain:
                    parameter.grad = None
        if not plain:
            self.optimizer.zero_grad(set_to_none=True)
        return released

    def options(
        self, accumulate_grad_batches: Any, gradient_clip_val: Any, gradient_clip_algorithm: Any
    ) -> StepOptions:
        """The options of one ``manual_step`` call: its keywords, each falling back to this optimizer's default."""
        key = (accumulate_grad_batches, gradient_clip_val, gradient_clip_algorithm)
        options = self._options.get(key)
        if options is None:
            defaults = self.defaults
            options = StepOptions.validated(
                defaults.accumulate_grad_batches if accumulate_grad_batches is None else accumulate_grad_batches,
                defaults.gradient_clip_val if gradient_clip_val is None else gradient_clip_val,
                defaults.gradient_clip_algorithm if gradient_clip_algorithm is None else gradient_clip_algorithm,
                where=f"manual_step({self.name!r})",
            )
            if len(self._options) < 64:  # remembered once validated; a call site passes few distinct values
                self._options[key] = options
        return options


def default_name(index: int) -> str:
    """The name of an optimizer that was not given one: ``optimizer_<index>``."""
    return f"optimizer_{index}"


@dataclass(frozen=True)
class Configured:
    """What ``configure_optimizers`` returned, read once: the optimizers, their names, defaults and schedulers.

    Attributes:
        optimizers: The torch optimizers, in ``trainer.optimizers`` order.
        names: Their names (``optimizer_<i>`` where none were given).
        defaults: Per-name ``manual_step`` defaults.
        non_finite: Per-name non-finite policies set in ``configure_optimizers`` (others follow the module's).
        schedulers: Every scheduler config, as automatic optimization reads it.
        for_lightning: The configuration handed on to Lightning: the same optimizers and schedulers, without the keys
            Lightning's manual mode would warn about.
    """

    optimizers: list[Optimizer]
    names: list[str]
    defaults: dict[str, StepOptions]
    schedulers: list[LRSchedulerConfig]
    for_lightning: Any
    non_finite: dict[str, str] = field(default_factory=dict)


def _copy_containers(value: Any) -> Any:
    # Lightning's parser writes into scheduler dictionaries; the user's own stay as they were written.
    if isinstance(value, Mapping):
        return {key: _copy_containers(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_containers(item) for item in value)
    return value


def configure(config: Any) -> Configured:
    """Read what ``configure_optimizers`` returned.

    Every form Lightning accepts is read with Lightning's own parser. A mapping of names is turned into the list of
    ``{"optimizer": ..., "lr_scheduler": ...}`` dictionaries Lightning accepts, its entries' ``manual_step`` defaults
    are taken out, and an entry's ``monitor`` goes to its scheduler.

    Raises:
        OptimizerConfigurationError: The mapping is empty, a name is not a non-empty string or is reserved, a value is
            neither an optimizer nor a ``{"optimizer": ...}`` dictionary, one optimizer is configured twice, a
            scheduler belongs to an optimizer that was not returned, or Lightning refuses the configuration.
        InvalidStepArgumentError: A per-optimizer default has a wrong type or value.
    """
    if config is None:
        return Configured([], [], {}, [], None)
    names: list[str] | None = None
    defaults: dict[str, StepOptions] = {}
    non_finite: dict[str, str] = {}
    if isinstance(config, Mapping) and "optimizer" not in config:
        config, names, defaults, non_finite = _from_names(config)
    with _lightning.configuration_errors_as(_configuration_error):
        optimizers, schedulers = _lightning.parse_optimizer_config(_copy_containers(config))
    names = names or [default_name(index) for index in range(len(optimizers))]
    first: dict[int, str] = {}
    for name, optimizer in zip(names, optimizers, strict=True):
        if id(optimizer) in first:
            raise OptimizerConfigurationError(
                f"The same optimizer object is configured twice (as {first[id(optimizer)]!r} and {name!r}); it would"
                " step twice per call. Configure each optimizer once."
            )
        first[id(optimizer)] = name
    for scheduler in schedulers:
        attached = getattr(scheduler.scheduler, "optimizer", None)
        if attached is not None and not any(attached is optimizer for optimizer in optimizers):
            raise OptimizerConfigurationError(
                f"The learning-rate scheduler {type(scheduler.scheduler).__name__} belongs to an optimizer that"
                f" `configure_optimizers` does not return; the optimizers are {names}. Create the scheduler with one"
                " of them, e.g. `StepLR(optimizer, ...)` with the optimizer you return."
            )
    for_lightning = (
        (
            list(optimizers),
            [
                {"scheduler": s.scheduler, "interval": s.interval, "frequency": s.frequency, "name": s.name}
                for s in schedulers
            ],
        )
        if optimizers
        else config
    )
    defaults = {name: defaults.get(name, StepOptions()) for name in names}
    return Configured(list(optimizers), names, defaults, schedulers, for_lightning, non_finite)


def _configuration_error(message: str) -> OptimizerConfigurationError:
    return OptimizerConfigurationError(f"configure_optimizers: {message}")


def _from_names(
    config: Mapping[Any, Any],
) -> tuple[list[dict[str, Any]], list[str], dict[str, StepOptions], dict[str, str]]:
    if not config:
        raise OptimizerConfigurationError(
            "`configure_optimizers` returned an empty mapping. Return at least one named optimizer, e.g."
            ' `return {"generator": opt_g, "discriminator": opt_d}`.'
        )
    names: list[str] = []
    entries: list[dict[str, Any]] = []
    defaults: dict[str, StepOptions] = {}
    non_finite: dict[str, str] = {}
    seen: dict[int, str] = {}
    for name, value in config.items():
        if not isinstance(name, str) or not name.strip():
            raise OptimizerConfigurationError(
                f"Optimizer names must be non-empty strings; `configure_optimizers` returned the name {name!r}."
            )
        if name in _LIGHTNING_KEYS:
            raise OptimizerConfigurationError(
                f"The optimizer name {name!r} is reserved: Lightning reads a mapping with that key as its own"
                " configuration dictionary. Choose another name."
            )
        if isinstance(value, Mapping):
            if "optimizer" not in value:
                raise OptimizerConfigurationError(
                    f"The configuration of optimizer {name!r} is a dictionary without an 'optimizer' key. Write"
                    f' `{{"{name}": {{"optimizer": opt, "lr_scheduler": scheduler}}}}`.'
                )
            own = (*STEP_OPTIONS, *RECORD_OPTIONS, "monitor")
            entry = {key: item for key, item in value.items() if key not in own}
            if "monitor" in value and "lr_scheduler" in entry:
                scheduler = entry["lr_scheduler"]
                scheduler = dict(scheduler) if isinstance(scheduler, Mapping) else {"scheduler": scheduler}
                scheduler.setdefault("monitor", value["monitor"])
                entry["lr_scheduler"] = scheduler
            defaults[name] = StepOptions.validated(
                value.get("accumulate_grad_batches", 1),
                value.get("gradient_clip_val"),
                value.get("gradient_clip_algorithm"),
                where=f"configure_optimizers, optimizer {name!r}",
            )
            if "non_finite" in value:
                non_finite[name] = validated_policy(value["non_finite"], f"configure_optimizers, optimizer {name!r}")
        elif callable(getattr(value, "step", None)) and callable(getattr(value, "zero_grad", None)):
            entry = {"optimizer": value}
        else:
            raise OptimizerConfigurationError(
                f"The value for optimizer {name!r} is a {type(value).__name__}; expected a torch optimizer or a"
                ' dictionary `{"optimizer": ..., "lr_scheduler": ...}`.'
            )
        if id(entry["optimizer"]) in seen:
            raise OptimizerConfigurationError(
                f"The same optimizer object is named both {seen[id(entry['optimizer'])]!r} and {name!r}. Give each"
                " optimizer one name."
            )
        seen[id(entry["optimizer"])] = name
        names.append(name)
        entries.append(entry)
    return entries, names, defaults, non_finite


def validated_policy(policy: Any, where: str) -> str:
    """Check a non-finite policy.

    Raises:
        InvalidStepArgumentError: ``policy`` is not ``"error"``, ``"skip"`` or ``"ignore"``.
    """
    if policy not in NON_FINITE_POLICIES:
        raise InvalidStepArgumentError(f"{where}: non_finite must be 'error', 'skip' or 'ignore', not {policy!r}.")
    return str(policy)
