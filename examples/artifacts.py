"""What a person looks at after a run: sample pictures, the curves of the whole history, and a summary.

:class:`RecipeArtifacts` is configured in ``configs/base.yaml`` (remove it from ``trainer.callbacks`` or set its
switches to ``false`` to turn it off). It writes into the logger's folder (``trainer.log_dir``):

- ``samples/epoch=EEE-step=S.png`` at every validation, drawn by the module's ``draw_samples(path)``;
- ``curves.png`` when fit ends: the module's ``loss_names`` and its ``quality_metric`` over the training
  steps. A run resumed from a checkpoint logs into a new version folder; its picture also shows the earlier runs'
  history up to the step it resumed from (``run.json`` in each folder records where a run started);
- ``summary.json``: the final metrics, step counts and CPU time, which ``python -m examples.results`` reads.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from pathlib import Path

import lightning
import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

RUN_FILE = "run.json"


def environment() -> dict[str, str]:
    """What a run's numbers depend on besides its config and seed: the package versions, the CPU, torch's threads.

    With one torch thread a run gives the same numbers again on the same CPU with the same versions; another CPU or
    another version of torch, Lightning or NumPy may change them.
    """
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "cpu": cpu,
        "torch_threads": str(torch.get_num_threads()),
    }


SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"


def save_grid(images: Tensor, path: Path, rows: int, scale: int = 4) -> Path:
    """Write images in [-1, 1], shape (N, 1, H, W), as one PNG of ``rows`` rows, each pixel ``scale`` pixels wide."""
    import matplotlib.pyplot as plt

    array = images.detach().cpu().clamp(-1, 1).add(1).div(2).squeeze(1).numpy()
    count, height, width = array.shape
    columns = -(-count // rows)
    canvas = np.ones((rows * (height + 1) + 1, columns * (width + 1) + 1))
    for index, image in enumerate(array):
        row, column = divmod(index, columns)
        top, left = 1 + row * (height + 1), 1 + column * (width + 1)
        canvas[top : top + height, left : left + width] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, np.kron(canvas, np.ones((scale, scale))), cmap="gray", vmin=0, vmax=1)
    return path


def _read_rows(folder: Path) -> list[dict[str, str]]:
    metrics = folder / "metrics.csv"
    if not metrics.exists():
        return []
    with open(metrics, newline="") as handle:
        return list(csv.DictReader(handle))


def _run_start(folder: Path) -> int:
    try:
        return int(json.loads((folder / RUN_FILE).read_text())["start_step"])
    except (OSError, ValueError, KeyError):
        return 0


def _version(folder: Path) -> int | None:
    prefix, _, number = folder.name.partition("_")
    return int(number) if prefix == "version" and number.isdigit() else None


def read_history(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged series of the run in ``folder`` (a CSVLogger version folder), with the runs it resumed.

    A run that started at step ``s > 0`` continues the run of the previous version folder: that run's values up to
    step ``s`` come first, and so on back to a run that started at step 0. Where two runs logged the same key at the
    same step, the later run's value counts.

    Returns:
        Series name to (step, value) points, sorted by step.
    """
    chain = [(folder, None)]
    start, number = _run_start(folder), _version(folder)
    while start > 0 and number is not None and number > 0:
        number -= 1
        earlier = folder.parent / f"version_{number}"
        if not earlier.is_dir():
            continue
        chain.append((earlier, start))
        start = _run_start(earlier)
    values: dict[tuple[str, int], float] = {}
    for run_folder, until in reversed(chain):
        for row in _read_rows(run_folder):
            step = int(row["step"])
            if until is not None and step > until:
                continue
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    values[key, step] = float(value)
    series: dict[str, list[tuple[int, float]]] = {}
    for (key, step), value in sorted(values.items(), key=lambda item: item[0][1]):
        series.setdefault(key, []).append((step, value))
    return series


def plot_curves(
    series: dict[str, list[tuple[int, float]]],
    path: Path,
    losses: tuple[str, ...],
    metric: str | None = None,
    floor: float | None = None,
    log_metric: bool = False,
) -> Path | None:
    """Plot ``losses`` (left panel) and ``metric`` (right panel, with a dashed ``floor``) against training steps.

    A series with few points is drawn with markers, so a single point stays visible.

    Returns:
        The PNG's path, or None when none of the series has a point.
    """
    import matplotlib.pyplot as plt

    panels: list[tuple[tuple[str, ...], bool]] = [(losses, False)]
    if metric is not None and series.get(metric):
        panels.append(((metric,), True))
    if not any(series.get(key) for keys, _ in panels for key in keys):
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for axis, (keys, is_metric) in zip(axes[0], panels, strict=True):
        for key in keys:
            points = series.get(key, [])
            if points:
                steps, values = zip(*points, strict=True)
                axis.plot(steps, values, label=key, marker="o" if len(points) <= 20 else None, markersize=4)
        if is_metric:
            if log_metric:
                axis.set_yscale("log")
            if floor is not None:
                axis.axhline(floor, color="grey", linestyle="--", label=f"floor {floor:.1f}")
        axis.set_xlabel("training step")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


class RecipeArtifacts(pl.Callback):
    """Sample pictures per validation, the curves of the whole history, a summary file and an end-of-run report.

    The module may provide ``draw_samples(path) -> Path`` (pictures), ``loss_names`` (series of the left panel),
    ``quality_metric`` (the right panel), ``quality_floor()`` (its dashed line) and ``log_quality`` (log scale).

    Args:
        samples: Write a picture of samples at every validation.
        curves: Write ``curves.png`` at the end of training.
        report: Print what was written, and the final metrics, at the end of training.
    """

    def __init__(self, samples: bool = True, curves: bool = True, report: bool = True) -> None:
        self.samples, self.curves, self.report = samples, curves, report
        self.pictures: list[Path] = []
        self._started = time.process_time()

    @staticmethod
    def folder(trainer: pl.Trainer) -> Path:
        """Where the files go: the logger's version folder, or the trainer's root folder without a logger."""
        return Path(trainer.log_dir or trainer.default_root_dir)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.process_time()
        folder = self.folder(trainer)  # on every process: under DDP, trainer.log_dir is a broadcast from process 0
        if trainer.is_global_zero:
            record = {"start_step": trainer.global_step, "resumed_from": str(trainer.ckpt_path or "") or None}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / RUN_FILE).write_text(json.dumps(record, indent=1) + "\n")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        draw = getattr(pl_module, "draw_samples", None)
        if not self.samples or trainer.sanity_checking or draw is None:
            return
        folder = self.folder(trainer)  # on every process (a broadcast under DDP); process 0 draws
        if trainer.is_global_zero:
            name = f"epoch={trainer.current_epoch:03d}-step={trainer.global_step}.png"
            self.pictures.append(draw(folder / "samples" / name))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after every callback's on_train_end, where Lightning 2.6's ModelCheckpoint may write last.ckpt
        folder = self.folder(trainer)  # on every process (a broadcast under DDP); process 0 writes
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.save()
        metric = getattr(pl_module, "quality_metric", None)
        floor_of = getattr(pl_module, "quality_floor", None)
        floor = floor_of() if callable(floor_of) else None
        curves = None
        if self.curves:
            curves = plot_curves(
                read_history(folder),
                folder / CURVES_FILE,
                tuple(getattr(pl_module, "loss_names", ())),
                metric,
                floor,
                bool(getattr(pl_module, "log_quality", False)),
            )
        metrics = {name: float(value) for name, value in sorted(trainer.callback_metrics.items())}
        updates = dict(getattr(pl_module, "optimizer_updates", {}))
        summary = {
            "global_step": trainer.global_step,
            "optimizer_updates": updates,
            "metrics": metrics,
            "floor": floor,
            "training_cpu_seconds": round(time.process_time() - self._started, 2),
            "environment": environment(),
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        if not self.report:
            return
        print(f"\ntrainer.global_step: {trainer.global_step}; updates per optimizer: {updates}")
        if floor is not None:
            print(f"  {metric} floor: {floor:.2f}")
        for name, value in metrics.items():
            print(f"  {name}: {value:.4f}")
        checkpoint_folder = Path(getattr(trainer.checkpoint_callback, "dirpath", None) or folder)
        checkpoints = sorted(checkpoint_folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        print(f"checkpoints in {checkpoint_folder}: {', '.join(p.name for p in checkpoints) or '(none)'}")
        if self.pictures:
            print(f"sample pictures ({len(self.pictures)}): last {self.pictures[-1]}")
        if curves is not None:
            print(f"curves: {curves}")
        setup = summary["environment"]
        print(
            f"these numbers repeat with the same config, seed, CPU ({setup['cpu']}), torch threads"
            f" ({setup['torch_threads']}) and versions (torch {setup['torch']}, lightning {setup['lightning']},"
            f" numpy {setup['numpy']})"
        )
