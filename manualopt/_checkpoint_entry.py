"""Manualopt's entry of a checkpoint for one fit: its format, what it holds, and how a resume reads it.

The entry (under :data:`CHECKPOINT_KEY`) holds the optimizer names, each optimizer's update count and skipped
updates, the ``training_step`` calls, the open accumulation windows and, with exact resume, every rank's part of
:class:`~manualopt._exact_resume.ExactResume` with its windows' gradients. A checkpoint written without manualopt
(stock manual or automatic optimization) is accepted and its counters are converted once Lightning restored its loops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.pytorch.utilities import rank_zero_warn

from manualopt import _lightning
from manualopt._optimizers import Window
from manualopt.errors import ManualOptimizationWarning, OptimizerConfigurationError

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from manualopt._session import FitSession

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEY", "CheckpointEntry"]

#: Key of manualopt's entry in a checkpoint dictionary.
CHECKPOINT_KEY = "manualopt"
#: Version of that entry: 1 (manualopt 0.1) had per-schedule positions and windows without their clipping.
CHECKPOINT_FORMAT = 2


class CheckpointEntry:
    """Writes and reads manualopt's entry of the checkpoints of one fit.

    Attributes:
        session: The fit.
        converting: Whether a checkpoint written without manualopt awaits the conversion of its counters.
    """

    def __init__(self, session: FitSession) -> None:
        self.session = session
        self.converting = False

    def state_dict(self) -> dict[str, Any]:
        """Manualopt's entry of a checkpoint: names, counters, open accumulation windows."""
        return {
            "format": CHECKPOINT_FORMAT,
            "optimizer_names": self.session.names,
            "optimizer_updates": {record.name: record.updates for record in self.session.records},
            "batch_stepped": self.session.batch_stepped,
            "training_step_calls": self.session.calls,
            "accumulation_windows": {
                record.name: record.window.state_dict() for record in self.session.records if record.window.count
            },
            "skipped_updates": {record.name: record.skipped for record in self.session.records},
            "epoch_calls": self.session.calls_this_epoch(),
            "resume": self._resume_state() if self.session.exact_resume else None,
        }

    def _resume_state(self) -> list[dict[str, Any]] | None:
        """Every rank's part of exact resume, on rank 0 (None on the others, which write no checkpoint).

        Each part: the generators' states and the epoch under way (:class:`ExactResume`), and the gradients of
        accumulation windows open now, on the CPU.
        """
        assert self.session.exact is not None
        state = {
            **self.session.exact.state_dict(),
            "windows": {
                record.name: [None if p.grad is None else p.grad.detach().cpu() for p in record.parameters()]
                for record in self.session.records
                if record.window.count
            },
        }
        return _gather_to_writer(state)

    def _load_resume_state(self, states: list[dict[str, Any]] | None) -> None:
        exact = self.session.exact
        if exact is None:
            return
        if not states:
            exact.inexact("the checkpoint holds no generator states (it was written with exact resume off)")
            return
        loops_exact = _lightning.resumes_loops_exactly()
        if not loops_exact:
            from lightning import __version__

            major, minor = _lightning.EXACT_RESUME_FROM
            exact.inexact(
                f"Lightning {__version__} may train the batch the checkpoint was saved after once more when it"
                f" resumes inside an epoch; exact resume inside an epoch is tested from Lightning {major}.{minor}"
            )
        rank, world = _rank()
        if len(states) != world:
            exact.inexact(f"the checkpoint was written by {len(states)} process(es) and is resumed by {world}")
            return
        state = states[rank]
        if "rng" not in state:  # written by manualopt 0.2: per-loader orders of another shape
            exact.inexact("the checkpoint was written by an older manualopt, whose data order this one cannot align")
            return
        exact.load(state, loops_exact)
        windows = state.get("windows", {})
        for record in self.session.records:
            gradients = windows.get(record.name)
            if gradients is not None:
                record.restore_gradients(gradients)  # the open window goes on from the gradients it had
        if world > 1 and windows:  # measured (tests/test_resume.py): the weights then differ from the uninterrupted run
            exact.inexact("an accumulation window was open at the checkpoint under several processes")

    def accept(self, checkpoint: Any) -> None:
        """Check a checkpoint being resumed against this fit, before its weights are loaded, and take its counters.

        A checkpoint written without manualopt (stock manual or automatic optimization) is accepted; its counters are
        converted once Lightning restored its loops (:meth:`convert_counters`).

        Raises:
            OptimizerConfigurationError: The checkpoint holds another number of optimizers, was written for other
                optimizer names or order, or by a newer manualopt. Nothing was loaded.
        """
        states = checkpoint.get("optimizer_states")
        if self.session.records and states is not None and len(states) != len(self.session.records):
            entry = checkpoint.get(CHECKPOINT_KEY)
            saved = entry.get("optimizer_names") if isinstance(entry, dict) else None
            held = f" ({list(saved)})" if saved else " (unnamed: it was written without manualopt)"
            raise OptimizerConfigurationError(
                f"The checkpoint being resumed holds the state of {len(states)} optimizer(s){held} but"
                f" `configure_optimizers` now returns {len(self.session.records)} ({self.session.names}). Nothing was"
                " loaded: the module's weights are as they were. Resume with the same optimizers, or start a new run"
                " without `ckpt_path`."
            )
        entry = checkpoint.get(CHECKPOINT_KEY)
        if entry is None:
            self.converting = True
        else:
            self.load(entry)

    def convert_counters(self) -> None:
        """Turn the step counts of a checkpoint written without manualopt into training steps and updates.

        Called after Lightning restored the loops and the optimizers' states. A checkpoint of automatic optimization
        counts optimizer steps, which are its training steps and the updates of its one optimizer. One of stock manual
        optimization counts every optimizer call; its training steps are the batches that stepped, and each
        optimizer's updates are read from its state where the optimizer keeps a step count (Adam does, plain SGD does
        not: then its count starts at 0).
        """
        self.converting = False
        automatic, manual, batches = _lightning.restored_step_counts(self.session.trainer)
        if automatic:
            steps, source = automatic, "automatic optimization"
            for record in self.session.records:
                record.updates = automatic
        elif manual:
            steps, source = batches, "stock manual optimization"
            for record in self.session.records:
                record.updates = _step_count(record.optimizer)
        else:
            return
        _lightning.set_global_step(self.session.trainer, steps)
        self.session.calls = batches
        updates = {record.name: record.updates for record in self.session.records}
        unknown = [name for name, count in updates.items() if not count]
        note = f" ({unknown} keep no step count in their state: counted from 0)" if unknown else ""
        rank_zero_warn(
            f"The checkpoint being resumed was written by {source}, without manualopt's counters: `global_step`"
            f" continues from {steps} training steps, and the updates per optimizer are {updates}{note}.",
            category=ManualOptimizationWarning,
        )

    def load(self, entry: dict[str, Any]) -> None:
        """Continue from a checkpoint's entry.

        Raises:
            OptimizerConfigurationError: The checkpoint was written for other optimizer names or order, or by a
                newer manualopt.
        """
        version = entry.get("format")
        if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_FORMAT:
            raise OptimizerConfigurationError(
                f"The checkpoint being resumed holds a manualopt entry of format {version!r}, which this manualopt"
                f" does not know (it reads formats 1 to {CHECKPOINT_FORMAT}); it was probably written by a newer"
                " release. Upgrade manualopt to resume it."
            )
        names = list(entry.get("optimizer_names", []))
        if names != self.session.names:
            raise OptimizerConfigurationError(
                f"The checkpoint being resumed was written with the optimizers {names} but `configure_optimizers`"
                f" now returns {self.session.names}. Resume with the same optimizer names and order, or start a new run"
                " without `ckpt_path`."
            )
        updates = entry.get("optimizer_updates", {})
        windows = entry.get("accumulation_windows", {})
        skipped = entry.get("skipped_updates", {})
        for record in self.session.records:
            record.updates = int(updates.get(record.name, 0))
            record.skipped = int(skipped.get(record.name, 0))
            # An accumulation window open at the checkpoint goes on counting its micro-batches (their gradients, as
            # in automatic optimization, are not in the checkpoint), so the resumed run steps on the same batches.
            record.window = Window.from_state(windows[record.name]) if record.name in windows else Window()
        self.session.batch_stepped = bool(entry.get("batch_stepped", True))
        self.session.epoch_calls = int(entry.get("epoch_calls", 0))
        self._load_resume_state(entry.get("resume"))
        if version == 1:  # positions were kept per schedule, all equal to the training_step calls
            positions = [int(state["position"]) for state in entry.get("schedules", {}).values()]
            self.session.calls = positions[0] if positions else 0
        else:
            self.session.calls = int(entry.get("training_step_calls", 0))


def _gather_to_writer(state: dict[str, Any]) -> list[dict[str, Any]] | None:
    # every rank's part, in rank order, on rank 0 (which writes the checkpoint); every rank takes part in the gather
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [state]
    rank = dist.get_rank()
    gathered: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(state, gathered, dst=0)
    return gathered


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _step_count(optimizer: Optimizer) -> int:
    steps = [state["step"] for state in optimizer.state.values() if isinstance(state, dict) and "step" in state]
    return int(max(float(step) for step in steps)) if steps else 0
