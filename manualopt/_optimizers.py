"""Named optimizers: reading ``configure_optimizers``, naming optimizers, and counting their updates."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from torch.optim import Optimizer
from torch.optim.optimizer import register_optimizer_step_pre_hook

from manualopt._guard import check_inside_training_step, refuse
from manualopt._state import state_of
from manualopt._stepping import STEP_OPTIONS, validate_options
from manualopt.errors import OptimizerConfigurationError

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["attach_optimizers", "default_name", "normalize_optimizer_config", "refuse_steps"]

# Keys of Lightning's own single-optimizer dictionary; a mapping holding "optimizer" is that form, not names.
_LIGHTNING_KEYS = frozenset({"optimizer", "lr_scheduler", "monitor"})


def default_name(index: int) -> str:
    """The name of an optimizer that was not given one: ``optimizer_<index>``."""
    return f"optimizer_{index}"


def _is_optimizer_like(value: object) -> bool:
    return callable(getattr(value, "step", None)) and callable(getattr(value, "zero_grad", None))


def normalize_optimizer_config(config: Any) -> tuple[Any, list[str] | None, dict[str, dict[str, Any]]]:
    """Turn a mapping of names into the list-of-dictionaries form Lightning accepts.

    Args:
        config: What ``configure_optimizers`` returned.

    Returns:
        The configuration to hand to Lightning, the names in order (None when no names were given: every other form
        Lightning accepts is passed through untouched), and per-name ``manual_step`` defaults (the keys
        ``accumulate_grad_batches``, ``gradient_clip_val`` and ``gradient_clip_algorithm`` of a named entry).

    Raises:
        OptimizerConfigurationError: The mapping is empty, a name is not a non-empty string, a value is neither an
            optimizer nor a ``{"optimizer": ..., "lr_scheduler": ...}`` dictionary, or one optimizer has two names.
    """
    if not isinstance(config, Mapping) or "optimizer" in config:
        return config, None, {}
    if not config:
        raise OptimizerConfigurationError(
            "`configure_optimizers` returned an empty mapping. Return at least one named optimizer, e.g."
            ' `return {"generator": opt_g, "discriminator": opt_d}`.'
        )
    names: list[str] = []
    entries: list[dict[str, Any]] = []
    defaults: dict[str, dict[str, Any]] = {}
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
            entry = {key: item for key, item in value.items() if key not in STEP_OPTIONS}
            options = {key: value[key] for key in STEP_OPTIONS if key in value}
            validate_options(
                options.get("accumulate_grad_batches", 1),
                options.get("gradient_clip_val"),
                options.get("gradient_clip_algorithm"),
                where=f"configure_optimizers, optimizer {name!r}",
            )
            defaults[name] = options
        elif _is_optimizer_like(value):
            entry = {"optimizer": value}
        else:
            raise OptimizerConfigurationError(
                f"The value for optimizer {name!r} is a {type(value).__name__}; expected a torch optimizer or a"
                ' dictionary `{"optimizer": ..., "lr_scheduler": ...}`.'
            )
        key = id(entry["optimizer"])
        if key in seen:
            raise OptimizerConfigurationError(
                f"The same optimizer object is named both {seen[key]!r} and {name!r}. Give each optimizer one name."
            )
        seen[key] = name
        names.append(name)
        entries.append(entry)
    return entries, names, defaults


@contextlib.contextmanager
def refuse_steps(module: pl.LightningModule) -> Iterator[None]:
    """Refuse every torch optimizer step in this process while the block runs (used around ``configure_*``)."""

    def _pre_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        refuse(module, f"`{type(optimizer).__name__}.step()`", None)

    handle = register_optimizer_step_pre_hook(_pre_hook)
    try:
        yield
    finally:
        handle.remove()


def _inner_optimizers(optimizer: Optimizer) -> list[Optimizer]:
    # Wrapper optimizers such as SAM step a ``base_optimizer`` of their own; its steps are this optimizer's updates.
    inner = getattr(optimizer, "base_optimizer", None)
    return [inner] if isinstance(inner, Optimizer) and inner is not optimizer else []


def attach_optimizers(module: pl.LightningModule, optimizers: list[Optimizer], continuing: bool = False) -> None:
    """Name the fit's optimizers, validate the names, and install the step hooks that guard and count updates.

    Args:
        module: The module being fitted.
        optimizers: ``trainer.optimizers``, in order (Lightning's placeholder for "no optimizer" left out).
        continuing: Whether this fit goes on with the previous fit's Trainer, so the counters continue.

    Raises:
        OptimizerConfigurationError: The names do not match the optimizers, or one optimizer appears twice.
    """
    state = state_of(module)
    names = state.configured_names or [default_name(index) for index in range(len(optimizers))]
    if len(names) != len(optimizers):
        raise OptimizerConfigurationError(
            f"`configure_optimizers` named {len(names)} optimizers ({', '.join(names)}) but the Trainer holds"
            f" {len(optimizers)}."
        )
    first_index: dict[int, int] = {}
    for index, optimizer in enumerate(optimizers):
        if id(optimizer) in first_index:
            raise OptimizerConfigurationError(
                f"The same optimizer object is configured twice (as {names[first_index[id(optimizer)]]!r} and"
                f" {names[index]!r}); it would step twice per call. Configure each optimizer once."
            )
        first_index[id(optimizer)] = index

    for handle in state.handles:
        handle.remove()
    state.handles.clear()
    state.names = list(names)
    state.optimizers = list(optimizers)
    # A new fit starts counting at 0; fitting on with the same Trainer (whose global_step goes on) continues.
    previous = state.updates if continuing else {}
    state.updates = {name: previous.get(name, 0) for name in names}

    reference = weakref.ref(module)
    for name, optimizer in zip(names, optimizers, strict=True):
        state.handles.append(optimizer.register_step_pre_hook(_make_pre_hook(reference, name, own=True)))
        state.handles.append(optimizer.register_step_post_hook(_make_post_hook(reference, name, own=True)))
        for inner in _inner_optimizers(optimizer):
            state.handles.append(inner.register_step_pre_hook(_make_pre_hook(reference, name, own=False)))
            state.handles.append(inner.register_step_post_hook(_make_post_hook(reference, name, own=False)))


def _make_pre_hook(reference: weakref.ref[pl.LightningModule], name: str, own: bool) -> Any:
    def pre_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        module = reference()
        if module is None:
            return
        check_inside_training_step(module, f"`{type(optimizer).__name__}.step()` of optimizer {name!r}", name)
        if own:
            state_of(module).stepping.add(name)

    return pre_hook


def _make_post_hook(reference: weakref.ref[pl.LightningModule], name: str, own: bool) -> Any:
    def post_hook(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        module = reference()
        if module is None:
            return
        state = state_of(module)
        if own:
            state.stepping.discard(name)
        elif name in state.stepping:
            return  # the base optimizer's step inside its wrapper's step: one update, counted by the wrapper
        state.updates[name] = state.updates.get(name, 0) + 1
        state.stepped_in_call = True
        for average in state.averages.get(name, ()):
            average.update()

    return post_hook
