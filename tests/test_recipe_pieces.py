"""The shared pieces of the recipe book: metric, configs, curves history, console output, threads."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from recipe_helpers import CONFIGS, RECIPES

from examples import classifier, cli
from examples.artifacts import RUN_FILE, plot_curves, read_history
from examples.digits_data import digits
from examples.frechet import DigitsFrechetDistance, frechet_floor
from examples.progress import RecipeProgressBar

MODEL_CLASSES = {
    "dcgan_digits": "DCGAN",
    "wgan_gp_digits": "WGANGP",
    "cgan_digits": "ConditionalGAN",
    "ring_gaussians": "MixtureGAN",
    "grid_gaussians": "MixtureGAN",
    "sam_digits": "SAMClassifier",
}


def test_frechet_distance_extracts_the_real_features_once() -> None:
    metric = DigitsFrechetDistance()
    held_out = len(digits("held_out")[0])
    misses = classifier.feature_classifier.cache_info().misses
    first = metric(digits("train")[0])
    second = metric(digits("train")[0][:500])
    assert int(metric.metric.real_features_num_samples) == held_out  # not re-added at each measurement
    assert int(metric.metric.fake_features_num_samples) == 500  # only the generated features are reset
    assert first == pytest.approx(frechet_floor())
    assert second > first  # fewer samples, larger distance
    assert classifier.feature_classifier.cache_info().misses == misses  # the classifier is trained once per process


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_class_defaults_agree_with_the_config(recipe: str) -> None:
    """The model's defaults are the values its config uses, so the class and the YAML tell the same story."""
    module_name, config = RECIPES[recipe]
    model_class = getattr(importlib.import_module(f"examples.{module_name}"), MODEL_CLASSES[recipe])
    defaults = {name: p.default for name, p in inspect.signature(model_class.__init__).parameters.items()}
    configured = yaml.safe_load((CONFIGS / config).read_text())["model"]
    if recipe == "grid_gaussians":
        configured.pop("mixture")  # one class, two mixtures
    for name, value in configured.items():
        default = defaults[name]
        assert (list(default) if isinstance(default, tuple) else default) == value, name


def _write_run(folder: Path, rows: list[dict[str, Any]], start_step: int) -> None:
    folder.mkdir(parents=True)
    keys = ["epoch", "step", "d_loss", "fid"]
    lines = [",".join(keys)] + [",".join(str(row.get(key, "")) for key in keys) for row in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    (folder / RUN_FILE).write_text(json.dumps({"start_step": start_step}))


def test_history_joins_the_runs_a_resumed_run_continues(tmp_path: Path) -> None:
    _write_run(tmp_path / "version_0", [{"step": 9, "d_loss": 1.0}, {"step": 19, "d_loss": 0.9, "fid": 50}], 0)
    # version 1 resumed from step 10 (the first run went on past it); version 2 from step 20 of version 1
    _write_run(tmp_path / "version_1", [{"step": 14, "d_loss": 0.8}, {"step": 24, "d_loss": 0.7, "fid": 30}], 10)
    _write_run(tmp_path / "version_2", [{"step": 29, "d_loss": 0.6}], 20)
    history = read_history(tmp_path / "version_2")
    assert history["d_loss"] == [(9, 1.0), (14, 0.8), (29, 0.6)]
    assert "fid" not in history  # logged after the steps the later runs resumed from
    fresh = read_history(tmp_path / "version_0")
    assert fresh["fid"] == [(19, 50.0)]


def test_a_single_point_series_is_drawn(tmp_path: Path) -> None:
    path = plot_curves({"d_loss": [(1, 1.0), (2, 0.5)], "fid": [(2, 40.0)]}, tmp_path / "c.png", ("d_loss",), "fid")
    assert path is not None
    assert path.stat().st_size > 0
    assert plot_curves({}, tmp_path / "none.png", ("d_loss",), "fid") is None


def test_progress_prints_lines_when_stdout_is_not_a_terminal() -> None:
    assert RecipeProgressBar().lines  # pytest captures stdout: not a terminal
    assert not RecipeProgressBar(lines=False).lines


def test_one_torch_thread_unless_the_environment_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert cli.set_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert cli.set_threads() == 2
    finally:
        torch.set_num_threads(before)
