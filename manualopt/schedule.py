"""Declarative step schedules: which optimizers update on which batch ("5 critic updates, then 1 generator")."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from manualopt.errors import OptimizerConfigurationError, UnknownOptimizerError

__all__ = ["StepSchedule"]


class StepSchedule:
    """A repeating cycle of batches saying which optimizers are due on each.

    Assign one to an attribute of a :class:`~manualopt.ManualOptimizationModule` (in ``__init__``) and ask it in
    ``training_step``. manualopt validates its names against the optimizers when fit starts, advances it after every
    ``training_step`` call, and saves its position in checkpoints, so a run resumed mid-cycle continues the cycle where
    it stopped.

    Example:
        >>> schedule = StepSchedule.cycle(("critic", 5), ("generator", 1))
        >>> [schedule.due_at(position) for position in range(7)]  # doctest: +NORMALIZE_WHITESPACE
        [('critic',), ('critic',), ('critic',), ('critic',), ('critic',), ('generator',), ('critic',)]
        >>> every = StepSchedule.every(discriminator=1, generator=5)
        >>> [every.due_at(position) for position in (0, 4)]
        [('discriminator',), ('discriminator', 'generator')]

    In ``training_step``::

        if self.schedule.due("critic"):
            self.manual_step("critic", critic_loss)
        if self.schedule.due("generator"):
            self.manual_step("generator", generator_loss)
    """

    def __init__(self, phases: Sequence[tuple[str | Iterable[str], int]]) -> None:
        """Build a cycle from ``(names, batches)`` phases: ``names`` are due for the next ``batches`` batches.

        Raises:
            OptimizerConfigurationError: No phase, a phase of fewer than 1 batch, or a name that is not a non-empty
                string.
        """
        if not phases:
            raise OptimizerConfigurationError("A StepSchedule needs at least one (names, batches) phase.")
        self._slots: list[tuple[str, ...]] = []
        for names, batches in phases:
            due = (names,) if isinstance(names, str) else tuple(names)
            if not due or any(not isinstance(name, str) or not name for name in due):
                raise OptimizerConfigurationError(
                    f"StepSchedule phase {names!r}: name the optimizers due with non-empty strings."
                )
            if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
                raise OptimizerConfigurationError(
                    f"StepSchedule phase {names!r}: the number of batches must be a positive integer, not {batches!r}."
                )
            self._slots.extend([due] * batches)
        self.names: tuple[str, ...] = tuple(dict.fromkeys(name for slot in self._slots for name in slot))
        self.position = 0

    @classmethod
    def cycle(cls, *phases: tuple[str | Iterable[str], int]) -> StepSchedule:
        """Phases in order, e.g. ``cycle(("critic", 5), ("generator", 1))``: 5 critic batches, then 1 generator."""
        return cls(phases)

    @classmethod
    def every(cls, **periods: int) -> StepSchedule:
        """Each optimizer on every n-th batch, e.g. ``every(discriminator=1, generator=5)``.

        An optimizer with period ``n`` is due on the n-th, 2n-th, ... batch (1-based), so the generator above updates
        after 5 discriminator updates. The cycle is as long as the least common multiple of the periods.
        """
        if not periods:
            raise OptimizerConfigurationError("StepSchedule.every needs at least one name=period.")
        for name, period in periods.items():
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise OptimizerConfigurationError(
                    f"StepSchedule.every: the period of {name!r} must be a positive integer, not {period!r}."
                )
        length = 1
        for period in periods.values():
            length = length * period // math.gcd(length, period)
        schedule = cls([(tuple(periods), 1)])
        # a batch may have no optimizer due (periods 2 and 3: the 1st and 5th batches of 6)
        schedule._slots = [
            tuple(name for name, period in periods.items() if (position + 1) % period == 0)
            for position in range(length)
        ]
        return schedule

    def __len__(self) -> int:
        """The length of the cycle in batches."""
        return len(self._slots)

    def due_at(self, position: int) -> tuple[str, ...]:
        """The optimizers due on the batch at ``position`` (0-based, counted since fit started)."""
        return self._slots[position % len(self._slots)]

    def due(self, name: str) -> bool:
        """Whether optimizer ``name`` is due on the current batch.

        Raises:
            UnknownOptimizerError: ``name`` is not in this schedule.
        """
        if name not in self.names:
            raise UnknownOptimizerError(f"{name!r} is not in this StepSchedule; its optimizers are {list(self.names)}.")
        return name in self.due_at(self.position)

    def validate(self, optimizer_names: Iterable[str], attribute: str) -> None:
        """Check, when fit starts, that every name of the schedule is an optimizer of the module.

        Raises:
            OptimizerConfigurationError: A name is not one of ``optimizer_names``.
        """
        known = list(optimizer_names)
        unknown = [name for name in self.names if name not in known]
        if unknown:
            raise OptimizerConfigurationError(
                f"The StepSchedule `self.{attribute}` names {unknown}, which `configure_optimizers` does not return;"
                f" the optimizers are {known}."
            )

    def state_dict(self) -> dict[str, Any]:
        """The position in the cycle, for checkpoints."""
        return {"position": self.position, "length": len(self)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's position."""
        self.position = int(state["position"])

    def __repr__(self) -> str:
        return f"StepSchedule(length={len(self)}, names={list(self.names)}, position={self.position})"
