"""Declarative step schedules: which optimizers update on which batch ("5 critic updates, then 1 generator")."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from manualopt.errors import InvalidArgumentError, OptimizerConfigurationError, UnknownOptimizerError

if TYPE_CHECKING:
    from manualopt._session import FitSession

__all__ = ["StepSchedule"]


class StepSchedule:
    """A repeating cycle of batches saying which optimizers are due on each.

    Create one in ``__init__`` and ask it in ``training_step``. Its position is the number of ``training_step`` calls
    made since the fit started, which manualopt counts and saves in checkpoints, so a run resumed mid-cycle continues
    the cycle where it stopped. Kept as an attribute of the module or of a submodule (directly, or in a list, tuple or
    dictionary attribute), its names are checked against the optimizers when fit starts; a schedule kept anywhere else
    is checked the first time a ``training_step`` asks it.

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
            InvalidArgumentError: No phase, a phase of fewer than 1 batch, or a name that is not a non-empty string.
        """
        if not phases:
            raise InvalidArgumentError("A StepSchedule needs at least one (names, batches) phase.")
        self._slots: list[tuple[str, ...]] = []
        for names, batches in phases:
            due = (names,) if isinstance(names, str) else tuple(names)
            if not due or any(not isinstance(name, str) or not name for name in due):
                raise InvalidArgumentError(
                    f"StepSchedule phase {names!r}: name the optimizers due with non-empty strings."
                )
            if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
                raise InvalidArgumentError(
                    f"StepSchedule phase {names!r}: the number of batches must be a positive integer, not {batches!r}."
                )
            self._slots.extend([due] * batches)
        self.names: tuple[str, ...] = tuple(dict.fromkeys(name for slot in self._slots for name in slot))
        self._known = frozenset(self.names)
        self._position = 0  # where the last fit left it
        self._session: FitSession | None = None  # the fit it answers for

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
            raise InvalidArgumentError("StepSchedule.every needs at least one name=period.")
        for name, period in periods.items():
            if isinstance(period, bool) or not isinstance(period, int) or period < 1:
                raise InvalidArgumentError(
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

    @property
    def position(self) -> int:
        """The current batch's position: ``training_step`` calls since the fit started (or where the last fit ended)."""
        session = self._session
        return self._position if session is None else session.calls

    def due(self, name: str) -> bool:
        """Whether optimizer ``name`` is due on the current batch.

        Raises:
            UnknownOptimizerError: ``name`` is neither in this schedule nor an optimizer of the running fit.
            InvalidArgumentError: ``name`` is an optimizer of the running fit that this schedule does not list.
        """
        session = self._session
        if session is not None and name in self._known:  # the per-batch path
            slots = self._slots
            return name in slots[session.calls % len(slots)]
        if session is None:
            from manualopt._session import running_session

            session = running_session()
            if session is not None:
                session.attach(self)
        if name not in self._known:
            if session is not None and name in session.names:
                raise InvalidArgumentError(
                    f"{name!r} is an optimizer of this module, but this StepSchedule does not list it (it schedules"
                    f" {list(self.names)}). Add a phase for {name!r}, or step it without asking the schedule."
                )
            known = list(self.names) if session is None else session.names
            raise UnknownOptimizerError(f"{name!r} is not in this StepSchedule; the optimizers are {known}.")
        return name in self.due_at(self.position)

    def validate(self, optimizer_names: Iterable[str], attribute: str) -> None:
        """Check that every name of the schedule is one of ``optimizer_names``.

        Raises:
            OptimizerConfigurationError: A name is not one of ``optimizer_names``.
        """
        known = list(optimizer_names)
        unknown = [name for name in self.names if name not in known]
        if unknown:
            raise OptimizerConfigurationError(
                f"The StepSchedule {attribute} names {unknown}, which `configure_optimizers` does not return; the"
                f" optimizers are {known}."
            )

    def __getstate__(self) -> dict[str, Any]:
        """Pickle and deep-copy without the running fit: a copy answers for where the fit had reached."""
        state = dict(vars(self))
        state["_position"], state["_session"] = self.position, None
        return state

    def _manualopt_attach(self, session: FitSession) -> None:
        """Answer for ``session`` (called when its fit starts, or when a ``training_step`` first asks)."""
        shown = next((f"`self.{attribute}`" for attribute, value in vars(session.module).items() if value is self), "")
        self.validate(session.names, shown or "of this module")
        self._session = session
        session.on_end(self._detach)

    def _manualopt_returned(self, summary: Mapping[str, Any]) -> None:
        """Take the position a ``ddp_spawn`` worker reached."""
        self._position, self._session = int(summary["training_step_calls"]), None

    def _detach(self) -> None:
        self._position, self._session = self.position, None

    @override
    def __repr__(self) -> str:
        return f"StepSchedule(length={len(self)}, names={list(self.names)}, position={self.position})"
