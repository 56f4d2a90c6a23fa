"""``manual_step`` under FSDP, on two CPU processes with gloo (``fsdp_worker.py``, started by ``cluster.launch``).

Two strategies, one launch each (every run of a launch shares its processes):

* ``fsdp``: Lightning's ``FSDPStrategy`` (torch's ``FullyShardedDataParallel``), each optimizer's network wrapped as
  an FSDP module of its own in ``configure_model``; norm clipping through FSDP's own ``clip_grad_norm_``; sharded
  checkpoints. Lightning refuses ``FSDPStrategy`` without a GPU; a subclass passes the check of 2.6.6 (see
  ``fsdp_worker.CPUFSDPStrategy``), while 2.1.0 refuses the subclass too, so there these tests are skipped.
* ``fsdp2``: ``ModelParallelStrategy`` (torch's ``fully_shard``, Lightning 2.4 and later), Lightning's own norm
  clipping (it works on the sharded gradients); distributed checkpoints, and a discriminator with plain SGD, whose
  empty state torch's checkpointing initializes with a ``step()`` at every save and load.

Each checks parity with automatic optimization (the shards of every rank after 16 steps, bit for bit, and the norms
clipped), the counters of a two-optimizer GAN, a resume from a checkpoint in the middle of the first epoch that ends
bit for bit where the uninterrupted run ended, and (``fsdp``) the refusal of Lightning's whole-module wrapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning
import pytest
from cluster import HERE, check, launch

WORKER = str(HERE / "fsdp_worker.py")
UPDATES = {"generator": 12, "discriminator": 24}  # 12 batches per rank and epoch, 2 epochs


def _unavailable(kind: str) -> str | None:
    """Why this Lightning cannot run ``kind`` on the CPU, or None."""
    if kind == "fsdp2":
        try:
            from lightning.pytorch.strategies import ModelParallelStrategy  # noqa: F401
        except ImportError:
            return f"Lightning {lightning.__version__} has no ModelParallelStrategy (added in 2.4)"
        return None
    import lightning.pytorch as pl
    from fsdp_worker import CPUFSDPStrategy

    try:
        pl.Trainer(accelerator="cpu", devices=1, strategy=CPUFSDPStrategy(), logger=False)
    except Exception as error:  # Lightning's own accelerator check
        return f"Lightning {lightning.__version__} refuses FSDPStrategy on the CPU: {error}"
    return None


@pytest.fixture(scope="module", params=["fsdp", "fsdp2"])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    kind = request.param
    reason = _unavailable(kind)
    if reason is not None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp(kind)
    check(launch([WORKER, kind, str(out)]))
    return kind, out


def _reports(out: Path, run: str) -> list[dict[str, Any]]:
    return [json.loads((out / f"{run}-rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.timeout(300)
def test_manual_step_matches_automatic_optimization_with_norm_clipping(runs: tuple[str, Path]) -> None:
    _, out = runs
    for automatic, manual in zip(_reports(out, "automatic"), _reports(out, "manual"), strict=True):
        assert "error" not in manual
        assert manual["shards"] == automatic["shards"]  # each rank's shard of every parameter, bit for bit
        assert manual["norms"] == automatic["norms"]  # the gradient norm before clipping, at every step
        assert max(manual["norms"]) > 0.5  # so the clipping changed the update
        assert manual["global_step"] == automatic["global_step"] == 16
        assert manual["optimizer_updates"] == {"optimizer_0": 16}
    first, second = _reports(out, "manual")
    assert first["shards"] != second["shards"]  # the ranks hold different shards


@pytest.mark.timeout(300)
def test_gan_counts_each_training_step_once_on_every_rank(runs: tuple[str, Path]) -> None:
    _, out = runs
    for report in _reports(out, "gan"):
        assert "error" not in report
        assert report["global_step"] == 24
        assert report["optimizer_updates"] == UPDATES
        assert report["schedule_position"] == 24
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == [
        "epoch=0-step=12.ckpt",
        "epoch=0-step=6.ckpt",
        "epoch=1-step=18.ckpt",
        "epoch=1-step=24.ckpt",
    ]


@pytest.mark.timeout(300)
def test_resume_from_a_checkpoint_ends_where_the_uninterrupted_run_ended(runs: tuple[str, Path]) -> None:
    _, out = runs
    for resumed, uninterrupted in zip(_reports(out, "resumed"), _reports(out, "gan"), strict=True):
        assert "error" not in resumed
        assert resumed["global_step"] == 24
        assert resumed["optimizer_updates"] == UPDATES  # torch's initialization step of a loaded state is not counted
        assert resumed["schedule_position"] == 24
        assert resumed["shards"] == uninterrupted["shards"]
        assert resumed["patched_after_fit"] == uninterrupted["patched_after_fit"] == []  # the fit's additions are gone
        assert resumed["norms"] == uninterrupted["norms"][-len(resumed["norms"]) :]


@pytest.mark.timeout(300)
def test_whole_module_wrapping_is_refused_when_the_fit_starts(runs: tuple[str, Path]) -> None:
    kind, out = runs
    if kind != "fsdp":
        pytest.skip("ModelParallelStrategy shards what configure_model shards, nothing more")
    for report in _reports(out, "whole"):
        assert report["error"].startswith("OptimizerConfigurationError: CPUFSDPStrategy wrapped the whole `GAN`")
        assert "self.generator = FSDP(self.generator, device_id=self.device, use_orig_params=True)" in report["error"]
        assert report["optimizer_updates"] == {"generator": 0, "discriminator": 0}
        assert report["global_step"] == 0
