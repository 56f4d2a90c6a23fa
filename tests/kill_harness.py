"""Kill a process while it writes a checkpoint, and look at what it left.

A forked child saves a checkpoint of ``size_mb`` megabytes to ``last.ckpt`` again and again through one
``CheckpointIO``, each version with other content. The parent SIGKILLs it at a seeded random moment of a write, then
checks that ``last.ckpt`` loads and is the last complete version or the one being written, and counts the files left
beside it and in the temporary directory (``TMPDIR``). Importing this module does nothing; ``python
tests/kill_harness.py --help`` runs it from the command line (POSIX only).

The checkpoint directory lies under ``--workdir``; ``--tmpdir`` sets the temporary directory of the child (``same``: a
folder beside the checkpoints, on their file system; or a path, e.g. ``/dev/shm`` for a memory file system).
"""

from __future__ import annotations

import argparse
import os
import random
import select
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from manualopt import AtomicCheckpointIO

TARGET = "last.ckpt"


class InPlaceCheckpointIO(TorchCheckpointIO):
    """Writes straight into the target: a kill during the write leaves it truncated (the harness's control)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with open(path, "wb") as file:
            torch.save(checkpoint, file)


IOS: dict[str, type[CheckpointIO]] = {
    "atomic": AtomicCheckpointIO,  # manualopt's
    "stock": TorchCheckpointIO,  # the installed Lightning's default
    "in-place": InPlaceCheckpointIO,
}


@dataclass
class Outcome:
    """What the kills left behind."""

    io: str
    kills: int = 0
    unloadable: int = 0  # the target is missing or does not load
    wrong_version: int = 0  # it loads but holds neither the last complete version nor the one being written
    with_leftovers: int = 0  # kills after which some file other than the target remained
    leftover_bytes: int = 0
    save_seconds: float = 0.0  # one complete save (a median)
    load_seconds: float = 0.0  # one load of a complete checkpoint through the same IO (a median)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the figures."""
        timing = f"one save takes {self.save_seconds * 1000:.1f} ms, one load {self.load_seconds * 1000:.1f} ms"
        if not self.kills:
            return f"{self.io}: {timing}"
        return (
            f"{self.io}: {self.unloadable}/{self.kills} unloadable, {self.wrong_version}/{self.kills} wrong version,"
            f" {self.with_leftovers}/{self.kills} with leftovers ({self.leftover_bytes / 1e6:.1f} MB); {timing}"
        )


def payloads(size_mb: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tensors of ``size_mb`` megabytes with different content; version ``v`` holds the one at ``v % 2``."""
    numel = max(1, int(size_mb * 1e6) // 4)
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(numel, generator=generator), torch.rand(numel, generator=generator)


def checkpoint(version: int, tensors: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """The checkpoint of ``version``."""
    return {"version": version, "state_dict": {"weight": tensors[version % 2]}}


def run(
    io: str,
    workdir: Path,
    temp_dir: Path | None = None,
    kills: int = 20,
    size_mb: float = 50.0,
    seed: int = 0,
    repeats: int = 3,
) -> Outcome:
    """Kill ``kills`` writers of ``io`` (a key of :data:`IOS`) and count what they left.

    Args:
        io: Which ``CheckpointIO`` writes.
        workdir: An empty directory for the checkpoint directories (and the temporary ones when ``temp_dir`` is None).
        temp_dir: Where the writers' temporary directories go (a folder per kill is made and removed in it); None puts
            them beside the checkpoints.
        kills: How many writers to kill.
        size_mb: Size of the checkpoint.
        seed: Seeds the kill moments.
        repeats: How many saves and loads the timing takes the median of.
    """
    tensors = payloads(size_mb)
    outcome = Outcome(io)
    outcome.save_seconds, outcome.load_seconds = _time(
        IOS[io](), tensors, workdir / "timing", temp_dir or workdir, repeats
    )
    chance = random.Random(seed)
    for kill in range(kills):
        directory = workdir / f"kill-{kill:02d}"
        directory.mkdir(parents=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"kill-{kill:02d}-", dir=temp_dir if temp_dir else workdir))
        try:
            _kill_once(io, directory / TARGET, scratch, tensors, chance.uniform(0.0, outcome.save_seconds), outcome)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return outcome


def _time(
    io: CheckpointIO, tensors: tuple[torch.Tensor, torch.Tensor], directory: Path, temp: Path, repeats: int
) -> tuple[float, float]:
    """Seconds for one save and for one load through ``io`` (medians of ``repeats``)."""
    directory.mkdir(parents=True)
    scratch, previous = tempfile.mkdtemp(prefix="timing-", dir=temp), tempfile.tempdir
    tempfile.tempdir = scratch
    saves, loads = [], []
    try:
        for version in range(repeats):
            start = time.perf_counter()
            io.save_checkpoint(checkpoint(version, tensors), directory / TARGET)
            saves.append(time.perf_counter() - start)
        for _ in range(repeats):
            start = time.perf_counter()
            io.load_checkpoint(directory / TARGET)
            loads.append(time.perf_counter() - start)
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
    return statistics.median(saves), statistics.median(loads)


def _kill_once(
    io: str, target: Path, scratch: Path, tensors: tuple[torch.Tensor, torch.Tensor], delay: float, outcome: Outcome
) -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: never returns
        os.close(read_end)
        _write_forever(io, target, scratch, tensors, write_end)
    os.close(write_end)
    events = _Events(read_end)
    try:
        events.wait_for("done", 0)  # the first version is complete: there is an old checkpoint to keep
        events.wait_for("start", 1)
        time.sleep(delay)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    events.drain()
    outcome.kills += 1
    allowed = {events.done, events.started}
    try:
        loaded = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as error:
        outcome.unloadable += 1
        outcome.notes.append(f"{target}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    else:
        version = loaded.get("version")
        weight = loaded.get("state_dict", {}).get("weight")
        if version not in allowed or not torch.equal(weight, tensors[version % 2]):
            outcome.wrong_version += 1
            outcome.notes.append(f"{target}: version {version}, expected one of {sorted(allowed)}")
    left = [p for p in target.parent.iterdir() if p.name != TARGET] + [p for p in scratch.rglob("*") if p.is_file()]
    if left:
        outcome.with_leftovers += 1
        outcome.leftover_bytes += sum(p.stat().st_size for p in left if p.is_file())


def _write_forever(
    io: str, target: Path, scratch: Path, tensors: tuple[torch.Tensor, torch.Tensor], channel: int
) -> None:
    try:
        os.environ["TMPDIR"] = str(scratch)
        tempfile.tempdir = str(scratch)  # what fsspec's staging file (Lightning 2.4 and later) uses
        writer = IOS[io]()
        version = 0
        while True:
            os.write(channel, f"start {version}\n".encode())
            writer.save_checkpoint(checkpoint(version, tensors), target)
            os.write(channel, f"done {version}\n".encode())
            version += 1
    except BaseException as error:
        os.write(channel, f"error {type(error).__name__}: {error}\n".encode())
    finally:
        os._exit(1)


class _Events:
    """The writer's reports: the last version it started and the last one it completed."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor
        self.buffer = b""
        self.started = self.done = -1

    def wait_for(self, kind: str, version: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.started if kind == "start" else self.done) >= version:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                raise RuntimeError(f"the writer did not report {kind} {version} (it reported {self.buffer!r})")

    def drain(self) -> None:
        while self._read(0.0):
            pass
        os.close(self.descriptor)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.descriptor], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.descriptor, 4096)
        if not chunk:
            return False
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            kind, _, value = line.decode().partition(" ")
            if kind == "start":
                self.started = int(value)
            elif kind == "done":
                self.done = int(value)
            else:
                raise RuntimeError(f"the writer failed: {line.decode()}")
        return True


def main(argv: list[str] | None = None) -> int:
    """Command line: print the figures for each IO and temporary directory asked for."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--io", nargs="+", choices=sorted(IOS), default=["atomic", "stock"])
    parser.add_argument("--tmpdir", nargs="+", default=["same", "/dev/shm"], help="'same' or a directory")
    parser.add_argument("--kills", type=int, default=20, help="0: only time saves and loads")
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="saves and loads timed (medians)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new folder in the current one")
    arguments = parser.parse_args(argv)
    import lightning

    print(f"Lightning {lightning.__version__}, torch {torch.__version__}, {arguments.size_mb:g} MB checkpoint")
    base = Path(tempfile.mkdtemp(prefix="kill-harness-", dir=arguments.workdir or Path.cwd()))
    try:
        for placement in arguments.tmpdir:
            temp_dir = None if placement == "same" else Path(placement)
            if temp_dir is not None and not temp_dir.is_dir():
                print(f"TMPDIR={placement}: not present, skipped")
                continue
            for io in arguments.io:
                workdir = base / f"{io}-{placement.strip('/').replace('/', '-')}"
                outcome = run(
                    io, workdir, temp_dir, arguments.kills, arguments.size_mb, arguments.seed, arguments.repeats
                )
                where = "beside the checkpoints" if temp_dir is None else placement
                print(f"TMPDIR {where}: {outcome.summary()}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
