"""Regenerate the recipe book's results table: every recipe over its seeds, with the published numbers beside ours.

Run from the repository root (``make results`` runs the first)::

    python -m examples.results                # every recipe, all seeds; rewrites the table in examples/README.md
    python -m examples.results --quick        # one seed, a few steps each: a smoke test of the whole pipeline
    python -m examples.results --recipes ring_gaussians --seeds 0 1

Each run is a separate process (``python -m examples.<recipe> fit --config ... --seed_everything SEED``) with one
torch thread; ``--jobs`` of them run at once (default: 2, or 1 on a single core). A line per finished run reports
its numbers and its CPU time (user + system, measured by the operating system for the whole process: start-up, the
feature classifier and the measurements included). The table goes to ``OUT/results.md`` and the picture to
``OUT/results.png``; a full run also writes both into ``examples/`` (the README's table between its ``results``
markers, and ``examples/results.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent
README = EXAMPLES / "README.md"
PICTURE = EXAMPLES / "results.png"
START_MARKER = "<!-- results: start -->"
END_MARKER = "<!-- results: end -->"


@dataclass(frozen=True)
class Published:
    """A published row: a model's numbers on the same measure, with where they come from."""

    model: str
    source: str
    values: dict[str, str]
    runs: str


@dataclass(frozen=True, eq=False)
class Recipe:
    """A recipe as the results table runs it.

    Attributes:
        key: Name in the table and on the command line (``--recipes``).
        module: The recipe's module in this package.
        config: Its config in ``examples/configs``.
        title: Its row's title.
        technique: What it does to reach its numbers.
        seeds: The seeds of a full run.
        metrics: Metric name to (column title, scale, decimals): shown as mean ± sd of ``value * scale``.
        goals: Metric name to (``"<="`` or ``">="``, threshold on the shown scale).
        every_seed: Metric name to a value every seed must reach (on the shown scale), e.g. all modes covered.
        quick: Command-line overrides of ``--quick``.
        options: Command-line options of every run (after the config).
        published: Published numbers on the same measure.
    """

    key: str
    module: str
    config: str
    title: str
    technique: str
    seeds: tuple[int, ...]
    metrics: dict[str, tuple[str, float, int]]
    goals: dict[str, tuple[str, float]] = field(default_factory=dict)
    every_seed: dict[str, float] = field(default_factory=dict)
    quick: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    published: tuple[Published, ...] = ()


PACGAN = "PacGAN (Lin et al., 2018), Table 1"
VEEGAN = "VEEGAN (Srivastava et al., 2017), Table 1"
_RING_PUBLISHED = (
    Published("GAN", PACGAN, {"modes_covered": "6.3 ± 0.5", "high_quality": "98.2"}, "10"),
    Published("ALI", PACGAN, {"modes_covered": "6.6 ± 0.3", "high_quality": "97.6"}, "10"),
    Published("PacGAN2", PACGAN, {"modes_covered": "7.9 ± 0.1", "high_quality": "95.6"}, "10"),
    Published("PacGAN3", PACGAN, {"modes_covered": "7.8 ± 0.1", "high_quality": "97.7"}, "10"),
    Published("PacGAN4", PACGAN, {"modes_covered": "7.8 ± 0.1", "high_quality": "95.9"}, "10"),
    Published("Unrolled GAN", VEEGAN, {"modes_covered": "7.6", "high_quality": "35.6"}, "5"),
    Published("VEEGAN", VEEGAN, {"modes_covered": "8", "high_quality": "52.9"}, "5"),
)
_GRID_PUBLISHED = (Published("PacGAN4", PACGAN, {"modes_covered": "24.8 ± 0.2", "high_quality": "93.6"}, "10"),)
_COVERAGE = {"modes_covered": ("modes covered", 1.0, 1), "high_quality": ("% high quality", 100.0, 1)}
_DIGITS_QUICK = (
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=4",
    "--trainer.check_val_every_n_epoch=1",
    "--data.samples_per_validation=200",
)
# `make demo`: the DCGAN recipe on a shorter schedule (the Makefile passes the same options)
DEMO_OPTIONS = ("--trainer.max_epochs=60",)
_MIXTURE_QUICK = ("--trainer.max_epochs=1", "--trainer.limit_train_batches=20", "--trainer.check_val_every_n_epoch=1")

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "ring_gaussians",
        "mixture_gan",
        "ring_gaussians.yaml",
        "Ring of 8 Gaussians (radius 1, std 0.01)",
        "PacGAN2 packing, generator EMA (0.999), Adam at 2e-3 held, then decayed linearly to 0 over the last half",
        tuple(range(10)),
        _COVERAGE,
        goals={"high_quality": (">=", 98.0)},
        every_seed={"modes_covered": 8},
        quick=_MIXTURE_QUICK,
        published=_RING_PUBLISHED,
    ),
    Recipe(
        "grid_gaussians",
        "mixture_gan",
        "grid_gaussians.yaml",
        "Grid of 25 Gaussians (spacing 2, std 0.05)",
        "as the ring; 512 points per step, drawn from 256,000",
        tuple(range(10)),
        _COVERAGE,
        goals={"high_quality": (">=", 95.0)},
        every_seed={"modes_covered": 25},
        quick=_MIXTURE_QUICK,
        published=_GRID_PUBLISHED,
    ),
    Recipe(
        "dcgan_digits",
        "dcgan_digits",
        "dcgan_digits.yaml",
        "DCGAN on digits",
        "R1 penalty (0.1), generator EMA (0.99), learning rate held, then decayed linearly to 0 over the last half",
        (0, 1, 2),
        {"fid": ("Fréchet distance", 1.0, 1)},
        goals={"fid": ("<=", 20.0)},
        quick=_DIGITS_QUICK,
    ),
    Recipe(
        "dcgan_demo",
        "dcgan_digits",
        "dcgan_digits.yaml",
        "DCGAN on digits, `make demo`'s 60 epochs",
        "as above, on a shorter schedule",
        (0, 1, 2),
        {"fid": ("Fréchet distance", 1.0, 1)},
        quick=_DIGITS_QUICK,
        options=DEMO_OPTIONS,
    ),
    Recipe(
        "cgan_digits",
        "cgan_digits",
        "cgan_digits.yaml",
        "Conditional GAN on digits",
        "as the DCGAN, plus an auxiliary classifier in the discriminator (AC-GAN loss, weight 1)",
        (0, 1, 2),
        {"fid": ("Fréchet distance", 1.0, 1), "class_accuracy": ("% asked class read", 100.0, 1)},
        goals={"fid": ("<=", 18.0), "class_accuracy": (">=", 99.5)},
        quick=_DIGITS_QUICK,
    ),
    Recipe(
        "wgan_gp_digits",
        "wgan_gp_digits",
        "wgan_gp_digits.yaml",
        "WGAN-GP on digits, 5 critic updates per generator update",
        "gradient penalty 10, generator EMA (0.99), learning rate held, then decayed linearly to 0 over the last half",
        (0, 1, 2),
        {"fid": ("Fréchet distance", 1.0, 1)},
        goals={"fid": ("<=", 25.0)},
        quick=_DIGITS_QUICK,
    ),
    Recipe(
        "sam_digits",
        "sam_digits",
        "sam_digits.yaml",
        "SAM classifier on digits (two passes per update)",
        "SAM around SGD with momentum",
        (0, 1, 2),
        {"val_accuracy": ("% held-out accuracy", 100.0, 1)},
        quick=("--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.check_val_every_n_epoch=1"),
    ),
)


@dataclass
class Run:
    """One recipe and seed: its process, its folder, and what it measured."""

    recipe: Recipe
    seed: int
    folder: Path
    command: list[str]
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    returncode: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``recipe seed N``."""
        return f"{self.recipe.key} seed {self.seed}"

    def value(self, metric: str) -> float | None:
        """The run's final ``metric`` on the table's scale, or None if the run did not report it."""
        raw = self.summary.get("metrics", {}).get(metric)
        return None if raw is None else float(raw) * self.recipe.metrics[metric][1]


def write_overrides(out: Path) -> Path:
    """A config the runs read last: the base config's callbacks without the periodic checkpoints (only last.ckpt)."""
    import yaml

    base = yaml.safe_load((EXAMPLES / "configs" / "base.yaml").read_text())
    callbacks = [
        callback
        for callback in base["trainer"]["callbacks"]
        if "every_n_train_steps" not in (callback.get("init_args") or {})
    ]
    path = out / "overrides.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}, sort_keys=False))
    return path


def _command(recipe: Recipe, seed: int, folder: Path, quick: bool, overrides: Path) -> list[str]:
    command = [sys.executable, "-m", f"examples.{recipe.module}", "fit"]
    command += ["--config", str(EXAMPLES / "configs" / recipe.config), "--config", str(overrides)]
    command += [f"--seed_everything={seed}", f"--trainer.default_root_dir={folder}", *recipe.options]
    return command + list(recipe.quick if quick else ())


def _describe(run: Run) -> str:
    if run.returncode != 0:
        return f"FAILED (exit {run.returncode}; see {run.folder / 'output.txt'})"
    parts = []
    for metric, (title, _, decimals) in run.recipe.metrics.items():
        value = run.value(metric)
        parts.append(f"{title} {'?' if value is None else f'{value:.{decimals}f}'}")
    return ", ".join(parts)


RESULT_FILE = "result.json"


def _load_finished(run: Run) -> bool:
    """Fill ``run`` from a result an earlier invocation left in its folder; False if there is none."""
    try:
        record = json.loads((run.folder / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return False
    if record.get("command") != run.command[1:] or record.get("returncode") != 0:
        return False
    run.returncode, run.cpu_seconds, run.wall_seconds = 0, record["cpu_seconds"], record["wall_seconds"]
    run.summary = record["summary"]
    return True


def run_all(runs: Sequence[Run], jobs: int, reuse: bool = False, new_runs: bool = True) -> None:
    """Run the processes, ``jobs`` at a time, printing a line as each one ends.

    With ``reuse``, a run whose folder holds the result of the same command (an interrupted regeneration) is not run
    again; with ``new_runs=False`` as well, only such runs count and nothing is started.
    """
    waiting, running = list(runs), {}
    done = 0
    if reuse:
        for run in [run for run in waiting if _load_finished(run)]:
            waiting.remove(run)
            done += 1
            print(
                f"[{done}/{len(runs)}] {run.name}: {_describe(run)} (CPU {run.cpu_seconds:.0f} s, reused)", flush=True
            )
    if not new_runs:
        for run in waiting:
            print(f"[-/{len(runs)}] {run.name}: not run (--no-new-runs)", flush=True)
        waiting = []
    while waiting or running:
        while waiting and len(running) < jobs:
            run = waiting.pop(0)
            if run.folder.exists():
                shutil.rmtree(run.folder)  # a fresh run: no version folders or checkpoints of an earlier one
            run.folder.mkdir(parents=True)
            with open(run.folder / "output.txt", "w") as output:
                process = subprocess.Popen(run.command, stdout=output, stderr=subprocess.STDOUT, cwd=EXAMPLES.parent)
            running[process.pid] = (run, process, time.monotonic())
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        run, process, started = running.pop(pid)
        process.returncode = run.returncode = os.waitstatus_to_exitcode(status)
        run.cpu_seconds = usage.ru_utime + usage.ru_stime
        run.wall_seconds = time.monotonic() - started
        summaries = list(run.folder.glob("version_0/summary.json"))
        if run.returncode == 0 and summaries:
            run.summary = json.loads(summaries[-1].read_text())
        record = {
            "command": run.command[1:],
            "returncode": run.returncode,
            "cpu_seconds": run.cpu_seconds,
            "wall_seconds": run.wall_seconds,
            "summary": run.summary,
        }
        (run.folder / RESULT_FILE).write_text(json.dumps(record, indent=1) + "\n")
        done += 1
        print(
            f"[{done}/{len(runs)}] {run.name}: {_describe(run)} "
            f"(CPU {run.cpu_seconds:.0f} s, wall {run.wall_seconds:.0f} s)",
            flush=True,
        )


def _mean_sd(values: Sequence[float], decimals: int) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"


def _values(runs: Sequence[Run], metric: str) -> list[float]:
    return [value for run in runs if (value := run.value(metric)) is not None]


def _verdict(recipe: Recipe, runs: Sequence[Run]) -> str:
    checks = []
    for metric, (direction, threshold) in recipe.goals.items():
        values = _values(runs, metric)
        if not values:
            return "no result"
        mean = statistics.fmean(values)
        checks.append(mean <= threshold if direction == "<=" else mean >= threshold)
    for metric, threshold in recipe.every_seed.items():
        values = _values(runs, metric)
        checks.append(len(values) == len(runs) and all(value >= threshold for value in values))
    if not checks:
        return "-"
    verdict = "met" if all(checks) else "not met"
    if len(runs) < len(recipe.seeds):
        verdict += f" on the {len(runs)} seeds run"
    return verdict


def _goal_text(recipe: Recipe) -> str:
    parts = [
        f"{recipe.metrics[metric][0]} {direction} {threshold:g}"
        for metric, (direction, threshold) in recipe.goals.items()
    ]
    parts += [
        f"{recipe.metrics[metric][0]} = {threshold:g} on every seed" for metric, threshold in recipe.every_seed.items()
    ]
    return "; ".join(parts) or "-"


def render(groups: dict[Recipe, list[Run]], command: str) -> str:
    """The markdown of the results: our table, then the published rows beside ours for each mixture."""
    lines = [
        f"Regenerated by `{command}` (Lightning, PyTorch and CPU as in the text above). Mean ± standard deviation "
        "over the seeds; CPU time is user + system time of one run's whole process, mean over the seeds.",
        "",
        "| recipe | technique | seeds | training steps | CPU time per run | result (mean ± sd) | goal | goal met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe, runs in groups.items():
        finished = [run for run in runs if run.summary]
        result = "; ".join(
            f"{title} **{_mean_sd(_values(finished, metric), decimals)}**"
            for metric, (title, _, decimals) in recipe.metrics.items()
        )
        steps = sorted({int(run.summary.get("global_step", 0)) for run in finished})
        cpu = statistics.fmean(run.cpu_seconds for run in finished) if finished else 0.0
        seeds = ", ".join(str(run.seed) for run in finished)
        if len(finished) < len(recipe.seeds):
            seeds += f" ({len(finished)} of the {len(recipe.seeds)} seeds of a full run)"
        failed = [run for run in runs if run.returncode not in (0, None)]
        if failed:
            result += f" ({len(failed)} of {len(runs)} runs failed)"
        lines.append(
            f"| {recipe.title} | {recipe.technique} | {seeds} | {', '.join(f'{s:,}' for s in steps)} "
            f"| {cpu:.0f} s | {result} | {_goal_text(recipe)} | {_verdict(recipe, finished)} |"
        )
    for recipe, runs in groups.items():
        if not recipe.published:
            continue
        finished = [run for run in runs if run.summary]
        modes = recipe.every_seed.get("modes_covered", 0)
        lines += [
            "",
            f"**{recipe.title}**, PacGAN's measure (2,500 samples; high quality within 3 standard deviations):",
            "",
            f"| model | source | modes of {modes:g} | % high quality | runs |",
            "|---|---|---|---|---|",
            f"| this recipe: {recipe.technique} | `{command}` | "
            f"{_mean_sd(_values(finished, 'modes_covered'), 1)} | {_mean_sd(_values(finished, 'high_quality'), 1)} "
            f"| {len(finished)} |",
        ]
        for row in recipe.published:
            lines.append(
                f"| {row.model} | {row.source} | {row.values['modes_covered']} | {row.values['high_quality']} "
                f"| {row.runs} |"
            )
    return "\n".join(lines) + "\n"


def _number(text: str) -> float:
    return float(text.split("±")[0])


def plot(groups: dict[Recipe, list[Run]], path: Path) -> Path:
    """One panel per mixture (modes covered against % high quality, ours per seed beside the published rows) and
    one panel of the digits GANs' Fréchet distances (each seed, the mean, the goal and the floor)."""
    import matplotlib.pyplot as plt

    mixtures = [(recipe, runs) for recipe, runs in groups.items() if "modes_covered" in recipe.metrics]
    digits = [(recipe, runs) for recipe, runs in groups.items() if "fid" in recipe.metrics]
    panels = len(mixtures) + (1 if digits else 0)
    figure, axes = plt.subplots(1, max(1, panels), figsize=(5.5 * max(1, panels), 4.5), squeeze=False)
    for axis, (recipe, runs) in zip(axes[0], mixtures, strict=False):
        modes = _values(runs, "modes_covered")
        quality = _values(runs, "high_quality")
        axis.scatter(quality, modes, color="tab:blue", zorder=3, label="this recipe, each seed")
        for row in recipe.published:
            x, y = _number(row.values["high_quality"]), _number(row.values["modes_covered"])
            axis.scatter([x], [y], color="tab:grey", marker="s")
            axis.annotate(row.model, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.margins(0.1)
        axis.set_xlabel("% high-quality samples")
        axis.set_ylabel("modes covered")
        axis.set_title(recipe.title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower left", fontsize=8)
    if digits:
        axis = axes[0][-1]
        floor = None
        for index, (recipe, runs) in enumerate(digits):
            values = _values(runs, "fid")
            axis.scatter([index] * len(values), values, color="tab:blue", zorder=3)
            if values:
                axis.hlines(statistics.fmean(values), index - 0.3, index + 0.3, color="tab:blue")
            if "fid" in recipe.goals:
                axis.hlines(recipe.goals["fid"][1], index - 0.3, index + 0.3, color="tab:red", linestyle=":")
            floor = next((run.summary.get("floor") for run in runs if run.summary.get("floor")), floor)
        if floor:
            axis.axhline(floor, color="grey", linestyle="--", label=f"floor {floor:.1f} (held-out vs train)")
        axis.set_xticks(range(len(digits)), [recipe.key.replace("_digits", "") for recipe, _ in digits])
        axis.set_ylabel("Fréchet distance (each seed; line: mean; dotted: goal)")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def update_readme(readme: Path, table: str, picture: Path) -> None:
    """Replace the text between the results markers of ``readme`` with ``table`` and a link to ``picture``."""
    text = readme.read_text()
    if START_MARKER not in text or END_MARKER not in text:
        raise ValueError(f"{readme} has no '{START_MARKER}' ... '{END_MARKER}' block to replace.")
    head, rest = text.split(START_MARKER, 1)
    _, tail = rest.split(END_MARKER, 1)
    link = os.path.relpath(picture, readme.parent)
    block = f"{START_MARKER}\n{table}\n![results]({link})\n{END_MARKER}"
    readme.write_text(head + block + tail)


def main(argv: list[str] | None = None) -> dict[str, list[Run]]:
    """Run the recipes, print a line per run, write the table and the picture; returns the runs by recipe key."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed and a few steps per recipe (a smoke test)")
    parser.add_argument("--recipes", nargs="+", choices=[r.key for r in RECIPES], help="default: all")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: each recipe's seeds (--quick: 0)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes at once")
    parser.add_argument("--out", type=Path, default=None, help="default: runs/results (--quick: runs/results-quick)")
    parser.add_argument("--no-readme", action="store_true", help="leave examples/README.md and results.png alone")
    parser.add_argument("--reuse", action="store_true", help="keep the results of runs an earlier invocation finished")
    parser.add_argument(
        "--no-new-runs",
        action="store_true",
        help="start nothing: tabulate only the runs an earlier invocation finished",
    )
    args = parser.parse_args(argv)
    out = args.out or Path("runs") / ("results-quick" if args.quick else "results")
    chosen = [recipe for recipe in RECIPES if not args.recipes or recipe.key in args.recipes]
    overrides = write_overrides(out)
    runs: dict[Recipe, list[Run]] = {}
    for recipe in chosen:
        seeds = args.seeds or ((0,) if args.quick else recipe.seeds)
        folders = {seed: out / recipe.key / f"seed_{seed}" for seed in seeds}
        runs[recipe] = [
            Run(recipe, seed, folders[seed], _command(recipe, seed, folders[seed], args.quick, overrides))
            for seed in seeds
        ]
    every_run = [run for group in runs.values() for run in group]
    mode = "quick mode, " if args.quick else ""
    print(f"{len(every_run)} runs ({mode}{args.jobs} at a time, one torch thread each), outputs in {out}", flush=True)
    run_all(every_run, max(1, args.jobs), reuse=args.reuse or args.no_new_runs, new_runs=not args.no_new_runs)
    command = " ".join(["python -m examples.results", *(argv if argv is not None else sys.argv[1:])])
    table = render(runs, command)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table)
    picture = plot(runs, out / "results.png")
    print(f"\n{table}\ntable: {out / 'results.md'}\npicture: {picture}")
    complete = not args.quick and not args.recipes and not args.seeds
    if complete and not args.no_readme:
        PICTURE.write_bytes(picture.read_bytes())
        update_readme(README, table, PICTURE)
        print(f"updated {README} and {PICTURE}")
    failed = [run.name for run in every_run if run.returncode not in (0, None)]
    if failed:
        print(f"failed runs: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)
    return {recipe.key: group for recipe, group in runs.items()}


if __name__ == "__main__":
    main()
