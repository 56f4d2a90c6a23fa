"""The example programs run as the README shows them, on a shrunk schedule; the results runner in quick mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from processes import run_in_own_group
from recipe_helpers import CONFIGS, DIGITS_GANS, RECIPES

from examples import quickstart_gan, results, stock_problems

# the recipes that draw a picture of samples at each validation
PICTURES = {"dcgan_digits", "wgan_gp_digits", "cgan_digits", "ring_gaussians", "grid_gaussians"}


def test_quickstart_gan(tmp_path: Path, capsys: Any) -> None:
    result = quickstart_gan.main(["--epochs", "7", "--out", str(tmp_path), "--no-progress"])
    assert result["global_step"] == 7 * 32  # one training step per batch
    assert result["stock_global_step"] == 7 * 32 + 7 * 16  # stock Lightning adds the generator's steps
    assert result["updates"] == {"generator": 7 * 16, "discriminator": 7 * 32}
    assert result["checkpoints"] == ["epoch=3-step=100.ckpt", "epoch=6-step=200.ckpt"]
    out = capsys.readouterr().out
    assert "per-optimizer updates" in out
    assert "of CPU" in out  # it says how long it takes


def test_quickstart_gan_removes_its_temporary_folder(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    quickstart_gan.main(["--epochs", "4", "--no-progress"])
    assert list(tmp_path.iterdir()) == []
    assert "now removed" in capsys.readouterr().out


def test_stock_problems_table(capsys: Any) -> None:
    stock_problems.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    manualopt = {row.split(" | ")[0]: row.split(" | ")[2] for row in rows[1:]}
    assert len(manualopt) == 5
    assert "global_step 20 after 20 batches; checkpoints at steps [4, 8, 12, 16, 20]" in rows[1]
    assert "global_step 10 after 10 batches" in rows[2]
    assert "refused" in rows[3]
    assert "global_step 20 after 20 batches; checkpoints at steps [10, 20]" in rows[5]


def test_results_quick_mode(tmp_path: Path, capsys: Any) -> None:
    """`python -m examples.results --quick` runs each recipe in its own process and writes the table and the plot."""
    runs = results.main(["--quick", "--recipes", "ring_gaussians", "dcgan_digits", "--out", str(tmp_path)])
    assert set(runs) == {"ring_gaussians", "dcgan_digits"}
    out = capsys.readouterr().out
    assert "[1/2]" in out
    assert "[2/2]" in out  # a progress line per run
    table = (tmp_path / "results.md").read_text()
    assert "| Ring of 8 Gaussians" in table
    assert "PacGAN (Lin et al., 2018), Table 1" in table  # the published rows beside ours
    assert (tmp_path / "results.png").stat().st_size > 0
    summary = json.loads(next((tmp_path / "ring_gaussians" / "seed_0").glob("version_*/summary.json")).read_text())
    assert summary["global_step"] == 20
    assert {"torch", "lightning", "numpy", "cpu", "torch_threads"} <= set(summary["environment"])  # what it depends on
    assert all(run.cpu_seconds > 0 for group in runs.values() for run in group)

    again = results.main(["--quick", "--recipes", "ring_gaussians", "--out", str(tmp_path), "--no-new-runs"])
    assert "reused" in capsys.readouterr().out  # tabulated from the finished run, nothing started
    assert again["ring_gaussians"][0].cpu_seconds == runs["ring_gaussians"][0].cpu_seconds


def test_the_standard_progress_switch_works_in_the_recipes(tmp_path: Path, capsys: Any) -> None:
    """``--trainer.enable_progress_bar false`` turns the recipes' progress lines off; by default they are on."""
    from lightning.pytorch.callbacks import ProgressBar
    from recipe_helpers import SMALL, fit

    from examples.progress import RecipeProgressBar

    quiet = fit(
        "ring_gaussians", tmp_path / "quiet", "--trainer.max_epochs=1", *SMALL, "--trainer.enable_progress_bar=false"
    )
    assert quiet.trainer.global_step == 3
    assert not [callback for callback in quiet.trainer.callbacks if isinstance(callback, ProgressBar)]
    assert "epoch 1/1" not in capsys.readouterr().out

    shown = fit("ring_gaussians", tmp_path / "shown", "--trainer.max_epochs=1", *SMALL)
    bars = [callback for callback in shown.trainer.callbacks if isinstance(callback, ProgressBar)]
    assert [type(bar) for bar in bars] == [RecipeProgressBar]
    assert "epoch 1/1  step 3" in capsys.readouterr().out


def test_last_checkpoint_is_the_end_of_a_run_whose_last_epoch_is_not_validated(tmp_path: Path) -> None:
    """``last.ckpt`` is written at every epoch end, validated or not: after the run it holds the final step."""
    from recipe_helpers import fit

    options = ("--trainer.limit_train_batches=3", "--trainer.check_val_every_n_epoch=2", "--trainer.max_epochs=3")
    run = fit("ring_gaussians", tmp_path, *options)
    assert run.trainer.global_step == 9
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 9


# A 2-process recipe run that hangs is killed with its whole process group past this many seconds.
DDP_LIMIT = 240
# Per process: epochs, batches per epoch, and the periodic checkpoints' period in steps, so that every periodic action
# fires at least twice: validation with its sample picture, periodic checkpoints, last.ckpt, then the report.
DDP_EPOCHS, DDP_BATCHES, DDP_EVERY_N_STEPS = 2, 2, 2


@pytest.mark.timeout(DDP_LIMIT + 60)
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_runs_every_periodic_action_under_ddp(tmp_path: Path, recipe: str) -> None:
    """``configs/ddp.yaml`` on 2 CPU processes, long enough for each validation, picture and checkpoint to fire twice.

    Under DDP every collective call (``trainer.log_dir``, metric syncs, barriers) must be reached by every process, or
    the run waits for ever; the run's process group is killed past a limit.
    """
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    for callback in base["trainer"]["callbacks"]:
        if callback.get("init_args", {}).get("every_n_train_steps"):
            callback["init_args"]["every_n_train_steps"] = DDP_EVERY_N_STEPS
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump({"trainer": {"callbacks": base["trainer"]["callbacks"]}}))
    module, config = RECIPES[recipe]
    command = [
        sys.executable, "-m", f"examples.{module}", "fit", "--config", str(CONFIGS / config),
        "--config", str(CONFIGS / "ddp.yaml"), "--config", str(short), f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.max_epochs={DDP_EPOCHS}", f"--trainer.limit_train_batches={DDP_BATCHES}",
        "--trainer.check_val_every_n_epoch=1", "--trainer.log_every_n_steps=1",
    ]  # fmt: skip
    if recipe in DIGITS_GANS:
        command.append("--data.samples_per_validation=100")
    paths = [str(CONFIGS.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    result = run_in_own_group(command, env, DDP_LIMIT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = DDP_EPOCHS * DDP_BATCHES
    assert result.stdout.count(f"trainer.global_step: {steps};") == 1  # the end-of-run report, on process 0
    summary = json.loads((tmp_path / "version_0" / "summary.json").read_text())
    assert summary["global_step"] == steps
    checkpoints = tmp_path / "checkpoints"
    periodic = sorted(path.name.split("-")[-1] for path in checkpoints.glob("epoch=*.ckpt"))
    assert periodic == sorted(f"step={step}.ckpt" for step in range(DDP_EVERY_N_STEPS, steps + 1, DDP_EVERY_N_STEPS))
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == steps
    pictures = list((tmp_path / "version_0" / "samples").glob("*.png"))
    assert len(pictures) == (DDP_EPOCHS if recipe in PICTURES else 0)  # one per validation
    assert not (tmp_path / "version_1").exists()  # one logger folder: process 0 writes


def test_the_readme_example_runs_as_it_stands(tmp_path: Path) -> None:
    """The first Python block of the README ("Try it") runs unchanged and prints one training step per batch."""
    readme = (CONFIGS.parents[1] / "README.md").read_text()
    section = readme[readme.index("## Try it") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    paths = [str(CONFIGS.parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global_step: 160" in result.stdout
