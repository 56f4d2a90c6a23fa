"""The example programs run as the README shows them, on a shrunk schedule; the results runner in quick mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from examples import quickstart_gan, results, stock_problems


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
    import torch
    from recipe_helpers import fit

    options = ("--trainer.limit_train_batches=3", "--trainer.check_val_every_n_epoch=2", "--trainer.max_epochs=3")
    run = fit("ring_gaussians", tmp_path, *options)
    assert run.trainer.global_step == 9
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 9
