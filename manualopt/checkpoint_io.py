"""Checkpoint files that are always either the old checkpoint or the new one: :class:`AtomicCheckpointIO`.

Lightning 2.1 to 2.3 write a checkpoint in place, so a process killed during the write leaves a truncated file.
Lightning 2.4 and later first write a temporary file in the system temp directory and then move it; when that
directory is on another file system (a tmpfs ``/tmp``, a cluster's scratch disk) the move is a copy that truncates the
target first, and a killed write leaves the temporary file behind. Neither release flushes the file to the disk.
:class:`AtomicCheckpointIO` writes beside the target and renames, so the target is replaced in one step.

For the fit of a :class:`~manualopt.ManualOptimizationModule`, manualopt puts an :class:`AtomicCheckpointIO` in the
place of Lightning's default ``CheckpointIO`` (see :func:`install`) and puts the default back when the fit ends or
fails.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import secrets
import socket
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from fsspec.core import url_to_fs  # type: ignore[import-untyped]
from fsspec.implementations.local import LocalFileSystem  # type: ignore[import-untyped]
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from manualopt import _lightning
from manualopt.errors import CheckpointLoadError

if TYPE_CHECKING:
    import lightning.pytorch as pl

_PATH_CLASSES: list[Any] = [
    pathlib.Path,
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
]

__all__ = ["AtomicCheckpointIO", "install"]

#: How many loadable checkpoints a :class:`~manualopt.CheckpointLoadError` lists.
NEIGHBOURS_LISTED = 3
_SUFFIX = ".tmp"
# O_TMPFILE (Linux 3.11+) opens a file without a name, which a killed write cannot leave behind; it gets a name
# (through /proc/self/fd) right before the rename, the only moment a kill can leave that name behind.
_UNNAMED = getattr(os, "O_TMPFILE", 0) != 0 and os.path.isdir("/proc/self/fd")


def _keep_storage(storage: Any, location: str) -> Any:
    return storage


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` that replaces a checkpoint file in one step and says when a file is damaged.

    It writes the same bytes as ``TorchCheckpointIO`` (``torch.save``), but never into the target itself:

    1. the checkpoint is written to a temporary file in the target's directory (never in the system temp directory):
       on Linux an unnamed ``O_TMPFILE`` file, which a killed process leaves behind only if killed in the microseconds
       between naming it and renaming it; elsewhere, or where the file system does not support it, a hidden file
       named ``.<target>.<pid>.<random>.<host>.tmp``;
    2. the file is flushed and ``fsync``-ed;
    3. it is renamed onto the target with ``os.replace`` (one step: the target is the old checkpoint or the new one);
    4. the directory is ``fsync``-ed, so the rename itself survives a power loss (not on Windows).

    A write that fails with an exception removes its temporary file. A hidden file left by a process that was killed
    on this machine (in the fallback, or in those microseconds) is removed by the next save into the same directory.

    Paths that are not local (``s3://``, ``gs://`` and other fsspec URLs) are written by ``TorchCheckpointIO``
    unchanged: an object store replaces an object in one step on its own, and has no directory to ``fsync``.

    Loading is ``TorchCheckpointIO``'s, at the same cost. Only when a local file fails to load and is not an intact
    checkpoint archive (empty, truncated, overwritten, or with a corrupted record) does it raise
    :class:`~manualopt.CheckpointLoadError`, which names the file and lists the newest checkpoints beside it that do
    load. A file that is intact but cannot be read for another reason (a class that no longer exists, torch's
    ``weights_only`` refusal) raises torch's own error.

    **In place by default.** For the fit of a :class:`~manualopt.ManualOptimizationModule`, manualopt uses an
    ``AtomicCheckpointIO`` instead of Lightning's default ``TorchCheckpointIO`` (the one Lightning creates when the
    Trainer was given none), from the ``setup`` hook, before a ``ckpt_path`` is loaded, until the fit ends or fails;
    then the strategy holds its default again. A ``CheckpointIO`` given to the Trainer is used as given.

    **Opting out.** Give the Trainer a ``CheckpointIO`` of your own; Lightning's plain one keeps Lightning's writes::

        from lightning.pytorch.plugins.io import TorchCheckpointIO

        trainer = Trainer(plugins=[TorchCheckpointIO()])

    The same holds for ``AsyncCheckpointIO``: ``Trainer(plugins=[AsyncCheckpointIO()])`` writes as Lightning does,
    while ``Trainer(plugins=[AsyncCheckpointIO(AtomicCheckpointIO())])`` writes atomically in the background. An
    ``AtomicCheckpointIO`` also works for a plain ``LightningModule``: ``Trainer(plugins=[AtomicCheckpointIO()])``.

    Example:
        >>> import os, tempfile, torch
        >>> from manualopt import AtomicCheckpointIO
        >>> directory = tempfile.mkdtemp()
        >>> path = os.path.join(directory, "last.ckpt")
        >>> io = AtomicCheckpointIO()
        >>> io.save_checkpoint({"weight": torch.ones(2)}, path)
        >>> io.save_checkpoint({"weight": torch.zeros(2)}, path)
        >>> io.load_checkpoint(path)["weight"]
        tensor([0., 0.])
        >>> os.listdir(directory)
        ['last.ckpt']
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file in the same directory, then rename it.

        Args:
            checkpoint: What Lightning saves: model and trainer state.
            path: The target file.
            storage_options: Not supported (as in ``TorchCheckpointIO``).

        Raises:
            TypeError: ``storage_options`` was given.
            OSError: The file could not be written; the target is untouched and no temporary file remains.
        """
        target = _local_path(path)
        if storage_options is not None or target is None:
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        _write(checkpoint, target)
        _remove_stale(directory, os.path.basename(target))

    @override
    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable[..., Any] | None = _keep_storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load the checkpoint at ``path`` as ``TorchCheckpointIO`` does; refuse a damaged file by name.

        Args:
            path: The checkpoint file.
            map_location: Where to put the tensors (as for ``torch.load``).
            weights_only: Passed on to ``torch.load`` (Lightning 2.4 and later pass it).

        Returns:
            The checkpoint dictionary.

        Raises:
            CheckpointLoadError: The file is damaged (empty, truncated, not a checkpoint archive, a corrupted record);
                the message lists the newest checkpoints beside it that load.
            FileNotFoundError: There is no file at ``path``.
        """
        options: dict[str, Any] = {"map_location": map_location}
        if weights_only is not None:  # Lightning 2.1 to 2.3 have no such argument
            options["weights_only"] = weights_only
        try:
            # Lightning 2.1 saves ModelCheckpoint's directory as a path object; torch >= 2.6 loads only allowed
            # classes by default, so paths are allowed here (within this load only).
            with torch.serialization.safe_globals(_PATH_CLASSES):
                return super().load_checkpoint(path, **options)
        except FileNotFoundError:
            raise
        except Exception as error:
            local = _local_path(path)
            reason = None if local is None else _damage(local)
            if local is None or reason is None:
                raise  # not a damaged file: the error is about the content, and torch's message says what to do
            raise CheckpointLoadError(self._refusal(local, reason, error, options)) from error

    def _refusal(self, path: str, reason: str, error: Exception, options: dict[str, Any]) -> str:
        loadable = self._loadable_neighbours(path, options)
        message = (
            f"Cannot load the checkpoint {path!r}: {reason}. Loading it failed with {type(error).__name__}:"
            f" {_first_sentence(error)}. The file is left as it is."
        )
        if not loadable:
            return (
                f"{message} No other checkpoint in {os.path.dirname(path)!r} loads. Start a new run without"
                " `ckpt_path`, or put back a copy of the file."
            )
        listed = ", ".join(f"{candidate!r} (modified {_when(candidate)})" for candidate in loadable)
        return (
            f"{message} The newest checkpoints beside it that load: {listed}. Pass one of them as `ckpt_path`, e.g."
            f" `trainer.fit(model, ckpt_path={loadable[0]!r})`."
        )

    def _loadable_neighbours(self, path: str, options: dict[str, Any]) -> list[str]:
        """The newest files beside ``path`` with its suffix that load with the same options (at most three)."""
        directory, suffix = os.path.dirname(path), os.path.splitext(path)[1]
        candidates: list[tuple[float, str]] = []
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if entry.path != path and entry.name.endswith(suffix) and entry.is_file():
                    with contextlib.suppress(OSError):
                        candidates.append((entry.stat().st_mtime, entry.path))
        loadable: list[str] = []
        for _, candidate in sorted(candidates, reverse=True):
            try:
                super().load_checkpoint(candidate, **options)
            except Exception:  # a file that does not load is not listed
                continue
            loadable.append(candidate)
            if len(loadable) == NEIGHBOURS_LISTED:
                break
        return loadable


def install(trainer: pl.Trainer) -> Callable[[], None] | None:
    """Put an :class:`AtomicCheckpointIO` in the place of Lightning's default ``CheckpointIO`` for this fit.

    Lightning's default is a plain ``TorchCheckpointIO`` that the Trainer was not given. Anything else is left alone:
    a ``CheckpointIO`` given to the Trainer (in ``plugins`` or to the strategy), a wrapper such as
    ``AsyncCheckpointIO``, and the ``CheckpointIO`` of a strategy that brings its own (XLA's). Runs in the ``setup``
    hook, before Lightning loads a ``ckpt_path``.

    Returns:
        The function that gives the strategy its ``CheckpointIO`` back (unless someone replaced manualopt's meanwhile),
        or None when nothing was replaced.
    """
    if _lightning.configured_checkpoint_io(trainer) is not None:
        return None
    strategy = trainer.strategy
    # Read through the public property: where none was set, it creates Lightning's default, as Lightning itself does
    # at the first checkpoint and when the fit ends; the undo puts back that very object.
    replaced = strategy.checkpoint_io
    if type(replaced) is not TorchCheckpointIO:
        return None
    installed = strategy.checkpoint_io = AtomicCheckpointIO()

    def undo() -> None:
        if strategy.checkpoint_io is installed:
            strategy.checkpoint_io = replaced

    return undo


# ---------------------------------------------------------------------------------------------------------- writing


def _local_path(path: str | Path) -> str | None:
    """The absolute local path of ``path`` (a plain path or a ``file://`` URL), or None for a remote URL."""
    filesystem, local = url_to_fs(os.fspath(path))
    return os.path.abspath(local) if isinstance(filesystem, LocalFileSystem) else None


def _write(checkpoint: dict[str, Any], target: str) -> None:
    """Write, ``fsync``, rename onto ``target``, ``fsync`` the directory; remove the temporary file on an error."""
    directory, name = os.path.split(target)
    directory_descriptor = None if os.name == "nt" else os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        unnamed = directory_descriptor is not None and _unnamed_files_work(directory, directory_descriptor)
        temporary = None if unnamed else _name_for(directory, name)
        if temporary is None:
            descriptor = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o666)
        else:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        renamed = False
        try:
            with os.fdopen(descriptor, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
                if temporary is None:
                    # Name the unnamed file and rename it onto the target at once, before closing it: only a kill
                    # between these two calls (microseconds) leaves the name behind, and the next save removes it.
                    temporary = _name_for(directory, name)
                    _link_unnamed(file.fileno(), temporary, directory_descriptor)
                    os.replace(temporary, target)
                    renamed = True
            if not renamed:  # a named file is renamed once closed (Windows cannot rename an open file)
                os.replace(temporary, target)
        except BaseException:
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
            raise
        if directory_descriptor is not None:  # the rename itself reaches the disk (directories cannot be opened on
            os.fsync(directory_descriptor)  # Windows, where the file system journals renames)
    finally:
        if directory_descriptor is not None:
            os.close(directory_descriptor)


def _link_unnamed(descriptor: int, path: str, directory_descriptor: int | None) -> None:
    # linkat(..., AT_SYMLINK_FOLLOW) on /proc/self/fd/N gives an O_TMPFILE file a name without privileges; os.link
    # uses linkat (and follows the link) only when a directory descriptor is given.
    os.link(f"/proc/self/fd/{descriptor}", os.path.basename(path), dst_dir_fd=directory_descriptor)


_unnamed_by_device: dict[int, bool] = {}


def _unnamed_files_work(directory: str, directory_descriptor: int) -> bool:
    """Whether ``directory``'s file system can create an unnamed file and then name it (tried once per device)."""
    if not _UNNAMED:
        return False
    device = os.fstat(directory_descriptor).st_dev
    works = _unnamed_by_device.get(device)
    if works is None:
        probe = _name_for(directory, "probe")
        try:
            descriptor = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o666)
            try:
                _link_unnamed(descriptor, probe, directory_descriptor)
                os.unlink(probe)
                works = True
            finally:
                os.close(descriptor)
        except OSError:  # a file system without O_TMPFILE (NFS, some FUSE mounts), or no /proc: named files
            works = False
        _unnamed_by_device[device] = works
    return works


def _name_for(directory: str, name: str) -> str:
    return os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.{socket.gethostname()}{_SUFFIX}")


def _remove_stale(directory: str, name: str) -> None:
    """Remove temporary files for ``name`` left by processes of this machine that no longer run (killed writes)."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{8}}\.{re.escape(socket.gethostname() + _SUFFIX)}")
    stale = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match is not None and not _running(int(match.group(1))):
                stale.append(entry.path)
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes one file at a time, and removes it when a write fails
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


# ---------------------------------------------------------------------------------------------------------- loading


def _damage(path: str) -> str | None:
    """What is wrong with the file at ``path`` as a checkpoint archive, or None if it is intact."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "it is empty"
        if not zipfile.is_zipfile(path):
            return (
                f"it is not a complete checkpoint archive ({size:,} bytes; a write cut off by a killed or preempted"
                " process or a full disk leaves such a file)"
            )
        with zipfile.ZipFile(path) as archive:
            corrupted = archive.testzip()
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        return f"its archive cannot be read ({error})"
    if corrupted is not None:
        return f"its record {corrupted!r} is corrupted"
    return None


def _first_sentence(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else "no message"


def _when(path: str) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))
    except OSError:
        return "unknown"
