"""AtomicCheckpointIO: the write protocol, its place in a fit, damaged checkpoints, and kills during a write."""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
import stat
from pathlib import Path
from typing import Any
from unittest import mock

import kill_harness
import pytest
import torch
from helpers import AutoNet, TwoNets, loader, trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO
from lightning.pytorch.strategies import SingleDeviceStrategy

from manualopt import AtomicCheckpointIO, CheckpointLoadError, ManualOptimizationError
from manualopt import checkpoint_io as module

pytestmark = [
    pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:This run resumes, but not exactly"),  # Lightning 2.1's resume
]

CHECKPOINT = {"state_dict": {"weight": torch.arange(1000.0)}, "epoch": 3, "name": "run"}


@pytest.fixture(params=["unnamed", "named"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of making the temporary file: O_TMPFILE (Linux), and the named fallback (other systems)."""
    if request.param == "unnamed" and not module._UNNAMED:
        pytest.skip("no O_TMPFILE on this system")
    monkeypatch.setattr(module, "_UNNAMED", request.param == "unnamed")
    return str(request.param)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------- writing


def test_writes_the_bytes_torch_checkpoint_io_writes(tmp_path: Path, mode: str) -> None:
    TorchCheckpointIO().save_checkpoint(CHECKPOINT, tmp_path / "stock.ckpt")
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT, tmp_path / "atomic.ckpt")
    assert _digest(tmp_path / "atomic.ckpt") == _digest(tmp_path / "stock.ckpt")
    assert stat.S_IMODE((tmp_path / "atomic.ckpt").stat().st_mode) == stat.S_IMODE(
        (tmp_path / "stock.ckpt").stat().st_mode
    )
    loaded = AtomicCheckpointIO().load_checkpoint(tmp_path / "atomic.ckpt")
    assert torch.equal(loaded["state_dict"]["weight"], CHECKPOINT["state_dict"]["weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.ckpt", "stock.ckpt"]


def test_creates_missing_directories(tmp_path: Path, mode: str) -> None:
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT, f"file://{tmp_path}/a/b/last.ckpt")
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["last.ckpt"]


def test_write_protocol(tmp_path: Path, mode: str) -> None:
    """Temporary file in the target's directory, fsync, replace onto the target, fsync of the directory: in order."""
    target = tmp_path / "ckpt" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"old": True}, target)
    events: list[tuple[str, Any]] = []
    real_open, real_fsync, real_replace, real_link = os.open, os.fsync, os.replace, os.link

    def record_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            unnamed = bool(flags & getattr(os, "O_TMPFILE", 0)) and (flags & os.O_TMPFILE) == os.O_TMPFILE
            events.append(("create", (os.fspath(path), unnamed)))
        return real_open(path, flags, *args, **kwargs)

    def record_fsync(descriptor: int) -> None:
        events.append(("fsync", "directory" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"))
        real_fsync(descriptor)

    def record_replace(source: Any, destination: Any, **kwargs: Any) -> None:
        events.append(("replace", (os.fspath(source), os.fspath(destination))))
        assert Path(destination).read_bytes() == old_bytes, "the target changed before the replace"
        real_replace(source, destination, **kwargs)

    old_bytes = target.read_bytes()
    with (
        mock.patch.object(os, "open", side_effect=record_open),
        mock.patch.object(os, "fsync", side_effect=record_fsync),
        mock.patch.object(os, "replace", side_effect=record_replace),
        mock.patch.object(os, "link", wraps=real_link) as link,
    ):
        AtomicCheckpointIO().save_checkpoint(CHECKPOINT, target)

    kinds = [kind for kind, _ in events]
    assert kinds == ["create", "fsync", "replace", "fsync"], events
    created, unnamed = events[0][1]
    source, destination = events[2][1]
    assert destination == str(target)
    assert Path(source).parent == target.parent  # named in the target's directory, never in the system temp dir
    assert Path(source).name.startswith(".last.ckpt.")
    assert source.endswith(".tmp")
    assert [events[1][1], events[3][1]] == ["file", "directory"]
    if mode == "unnamed":
        assert unnamed
        assert created == str(target.parent)  # an unnamed file in the target's directory
        link.assert_called_once()  # named just before the rename
    else:
        assert not unnamed
        assert created == source
        link.assert_not_called()
    assert torch.equal(torch.load(target)["state_dict"]["weight"], CHECKPOINT["state_dict"]["weight"])
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


class Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("cannot pickle this")


def test_a_failed_write_leaves_the_old_checkpoint_and_nothing_else(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(CHECKPOINT, target)
    before = _digest(target)
    big = {"weight": torch.zeros(1_000_000), "bad": Unpicklable()}  # fails after writing megabytes
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        io.save_checkpoint(big, target)
    full = OSError(28, "No space left on device")
    with mock.patch.object(os, "replace", side_effect=full), pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"weight": torch.zeros(1000)}, target)
    assert _digest(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_leftovers_of_killed_writers_are_removed_by_the_next_save(tmp_path: Path) -> None:
    """Only possible with named temporary files: those of dead processes of this machine go, the others stay."""
    host = socket.gethostname()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # a process that no longer runs
    dead = tmp_path / f".last.ckpt.{pid}.0123abcd.{host}.tmp"
    running = tmp_path / f".last.ckpt.{os.getppid()}.0123abcd.{host}.tmp"
    elsewhere = tmp_path / f".last.ckpt.{pid}.0123abcd.{host}-other.tmp"
    other_target = tmp_path / f".best.ckpt.{pid}.0123abcd.{host}.tmp"
    users = tmp_path / ".last.ckpt.notes.tmp"
    for path in (dead, running, elsewhere, other_target, users):
        path.write_bytes(b"partial")
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT, tmp_path / "last.ckpt")
    assert not dead.exists()
    assert all(path.exists() for path in (running, elsewhere, other_target, users))


def test_remote_paths_are_written_by_torch_checkpoint_io() -> None:
    with mock.patch.object(module, "_write") as write:
        AtomicCheckpointIO().save_checkpoint(CHECKPOINT, "memory://manualopt-test/last.ckpt")
    write.assert_not_called()
    loaded = AtomicCheckpointIO().load_checkpoint("memory://manualopt-test/last.ckpt")
    assert loaded["name"] == "run"


def test_storage_options_are_refused_as_torch_checkpoint_io_refuses_them(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="storage_options"):
        AtomicCheckpointIO().save_checkpoint(CHECKPOINT, tmp_path / "last.ckpt", storage_options={"a": 1})


# ---------------------------------------------------------------------------------------------------------- in a fit


class RecordsCheckpointIO(Callback):
    """Records the strategy's CheckpointIO in every hook that matters."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen["train"] = trainer.strategy.checkpoint_io

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen["fit_end"] = trainer.strategy.checkpoint_io


def _checkpointing_trainer(tmp_path: Path, epochs: int = 1, **kwargs: Any) -> Trainer:
    recorder = RecordsCheckpointIO()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1, save_top_k=-1, save_last=True)
    fit = trainer(tmp_path, max_epochs=epochs, callbacks=[checkpoint, recorder], enable_checkpointing=True, **kwargs)
    fit.recorder = recorder  # type: ignore[attr-defined]
    return fit


def _fit(tmp_path: Path, model: LightningModule, epochs: int = 1, ckpt_path: Any = None, **kwargs: Any) -> Trainer:
    fit = _checkpointing_trainer(tmp_path, epochs, **kwargs)
    fit.fit(model, loader(), ckpt_path=ckpt_path)
    return fit


def test_in_place_for_the_fit_and_removed_after(tmp_path: Path) -> None:
    original = AtomicCheckpointIO.save_checkpoint
    with mock.patch.object(AtomicCheckpointIO, "save_checkpoint", autospec=True, side_effect=original) as save:
        fit = _fit(tmp_path, TwoNets(), epochs=2)
    seen = dict(fit.recorder.seen)  # type: ignore[attr-defined]
    assert isinstance(seen["train"], AtomicCheckpointIO)
    assert seen["fit_end"] is seen["train"]  # until the fit's last hook
    assert save.call_count == 4  # every file ModelCheckpoint wrote (2 epochs, each with last.ckpt)
    assert type(fit.strategy.checkpoint_io) is TorchCheckpointIO  # Lightning's default again
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch=0-step=10.ckpt",
        "epoch=1-step=20.ckpt",
        "last.ckpt",
    ]
    # a second fit with the same Trainer gets one again, and gives it back again
    fit.fit_loop.max_epochs = 3
    fit.fit(fit.lightning_module, loader())
    again = fit.recorder.seen["train"]  # type: ignore[attr-defined]
    assert isinstance(again, AtomicCheckpointIO)
    assert again is not seen["train"]
    assert type(fit.strategy.checkpoint_io) is TorchCheckpointIO


class FailsInTraining(TwoNets):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if batch_idx == 3:
            raise ValueError("boom")
        return super().training_step(batch, batch_idx)


def test_removed_when_the_fit_fails(tmp_path: Path) -> None:
    fit = trainer(tmp_path)
    before = fit.strategy.checkpoint_io
    with pytest.raises(ValueError, match="boom"):
        fit.fit(FailsInTraining(), loader())
    assert fit.strategy.checkpoint_io is before


class MyCheckpointIO(TorchCheckpointIO):
    pass


@pytest.mark.parametrize(
    "configure",
    [
        pytest.param(lambda io: {"plugins": [io]}, id="plugins"),
        pytest.param(lambda io: {"strategy": SingleDeviceStrategy("cpu", checkpoint_io=io)}, id="strategy"),
    ],
)
@pytest.mark.parametrize(
    "make", [TorchCheckpointIO, MyCheckpointIO, AsyncCheckpointIO, AtomicCheckpointIO], ids=lambda c: c.__name__
)
def test_a_checkpoint_io_given_to_the_trainer_is_kept(tmp_path: Path, configure: Any, make: Any) -> None:
    io = make()
    fit = _fit(tmp_path, TwoNets(), **configure(io))
    assert fit.recorder.seen["train"] is io  # type: ignore[attr-defined]
    assert fit.strategy.checkpoint_io is io
    if isinstance(io, AsyncCheckpointIO):  # its base is Lightning's, not replaced either
        assert type(io.checkpoint_io) is TorchCheckpointIO
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()


def test_not_installed_for_a_plain_lightning_module(tmp_path: Path) -> None:
    fit = _fit(tmp_path, AutoNet())
    assert type(fit.recorder.seen["train"]) is TorchCheckpointIO  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------------- loading


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    else:  # "corrupted": same length, bytes of the pickled record changed (its zip checksum no longer matches)
        path.write_bytes(data[:100] + bytes(b ^ 0xFF for b in data[100:164]) + data[164:])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "corrupted"])
@pytest.mark.parametrize("ckpt_path", ["last", "path"])
def test_a_damaged_checkpoint_is_refused_by_name_with_the_loadable_ones_beside_it(
    tmp_path: Path, how: str, ckpt_path: str
) -> None:
    _fit(tmp_path, TwoNets(), epochs=3)
    directory = tmp_path / "ckpt"
    last = directory / "last.ckpt"
    for epoch in range(3):
        os.utime(directory / f"epoch={epoch}-step={10 * (epoch + 1)}.ckpt", (1e9 + epoch, 1e9 + epoch))
    os.utime(last, (2e9, 2e9))  # the newest, as after a write cut off at the end of a run
    _damage(last, how)
    model = TwoNets()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    refusing = _checkpointing_trainer(tmp_path, epochs=4)
    with pytest.raises(CheckpointLoadError) as refused:
        refusing.fit(model, loader(), ckpt_path="last" if ckpt_path == "last" else str(last))
    assert type(refusing.strategy.checkpoint_io) is TorchCheckpointIO  # given back when the fit failed
    message = str(refused.value)
    assert f"Cannot load the checkpoint {str(last)!r}" in message
    newest = [str(directory / f"epoch={e}-step={10 * (e + 1)}.ckpt") for e in (2, 1, 0)]
    assert message.index(repr(newest[0])) < message.index(repr(newest[1])) < message.index(repr(newest[2]))
    assert f"`trainer.fit(model, ckpt_path={newest[0]!r})`" in message
    assert "The file is left as it is." in message
    assert isinstance(refused.value, ManualOptimizationError)
    assert not isinstance(refused.value.__cause__, CheckpointLoadError)  # the original error is kept as the cause
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())  # nothing loaded
    # the advice works
    fit = _fit(tmp_path, model, epochs=4, ckpt_path=newest[0])
    assert fit.global_step == 40


def test_without_a_loadable_neighbour_the_error_says_so(tmp_path: Path) -> None:
    path = tmp_path / "only.ckpt"
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT, path)
    _damage(path, "truncated")
    (tmp_path / "other.ckpt").write_bytes(b"junk")
    with pytest.raises(CheckpointLoadError, match="it is not a complete checkpoint archive") as refused:
        AtomicCheckpointIO().load_checkpoint(path)
    assert f"No other checkpoint in {str(tmp_path)!r} loads. Start a new run without `ckpt_path`" in str(refused.value)


def test_at_most_three_are_listed_newest_first(tmp_path: Path) -> None:
    for index in range(5):
        AtomicCheckpointIO().save_checkpoint(CHECKPOINT, tmp_path / f"{index}.ckpt")
        os.utime(tmp_path / f"{index}.ckpt", (1e9 + index, 1e9 + index))
    (tmp_path / "4.ckpt").write_bytes(b"")  # the newest of the others does not load: not listed
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    AtomicCheckpointIO().save_checkpoint(CHECKPOINT, tmp_path / "last.ckpt")
    _damage(tmp_path / "last.ckpt", "empty")
    with pytest.raises(CheckpointLoadError, match="it is empty") as refused:
        AtomicCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")
    message = str(refused.value)
    assert [name for name in ("0", "1", "2", "3", "4") if f"{name}.ckpt'" in message] == ["1", "2", "3"]
    assert message.index("3.ckpt") < message.index("2.ckpt") < message.index("1.ckpt")


class Custom:
    pass


def test_an_intact_file_that_does_not_load_raises_torchs_error(tmp_path: Path) -> None:
    """Not a damaged file, so not a CheckpointLoadError: torch's message (weights_only, a missing class) applies."""
    path = tmp_path / "custom.ckpt"
    torch.save({"object": Custom()}, path)  # torch's weights_only loading (its default since 2.6) refuses the class
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "missing.ckpt")


def test_a_good_checkpoint_is_loaded_once(tmp_path: Path) -> None:
    _fit(tmp_path, TwoNets(), epochs=1)
    with (
        mock.patch.object(torch, "load", wraps=torch.load) as load,
        mock.patch.object(module, "_damage", wraps=module._damage) as damage,
    ):
        fit = _fit(tmp_path, TwoNets(), epochs=2, ckpt_path="last")
    assert load.call_count == 1
    damage.assert_not_called()
    assert fit.global_step == 20


# ---------------------------------------------------------------------------------------------------------- kills

# Twenty writers of a 50 MB checkpoint killed during the write, per placement of the temporary directory: about 10 s
# each on two cores. This is the figure the README states, so it runs by default on every supported release.
KILLS, SIZE_MB = 20, 50.0


def _other_file_system(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no memory file system apart from the checkpoints'")
    return shm


@pytest.mark.parametrize("placement", ["same-file-system", "other-file-system"])
def test_killed_writes_leave_the_old_or_the_new_checkpoint_and_no_leftovers(tmp_path: Path, placement: str) -> None:
    temp_dir = None if placement == "same-file-system" else _other_file_system(tmp_path)
    outcome = kill_harness.run("atomic", tmp_path / "run", temp_dir, kills=KILLS, size_mb=SIZE_MB, seed=0)
    assert (outcome.kills, outcome.unloadable, outcome.wrong_version, outcome.with_leftovers) == (KILLS, 0, 0, 0), (
        outcome.summary(),
        outcome.notes,
    )


def test_the_harness_sees_a_write_in_place_break_the_checkpoint(tmp_path: Path) -> None:
    """The control: the same kills on a writer that writes into the target leave it unloadable."""
    outcome = kill_harness.run("in-place", tmp_path / "run", None, kills=5, size_mb=SIZE_MB, seed=0)
    assert outcome.kills == 5
    assert outcome.unloadable >= 3, outcome.summary()


def test_killed_writes_with_named_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without O_TMPFILE a killed write leaves its file; the next save into the directory removes it."""
    monkeypatch.setattr(module, "_UNNAMED", False)
    outcome = kill_harness.run("atomic", tmp_path / "run", None, kills=10, size_mb=10.0, seed=1)
    assert (outcome.unloadable, outcome.wrong_version) == (0, 0), outcome.notes
    for directory in sorted((tmp_path / "run").glob("kill-*")):
        AtomicCheckpointIO().save_checkpoint(CHECKPOINT, directory / kill_harness.TARGET)
        assert [p.name for p in directory.iterdir()] == [kill_harness.TARGET]
