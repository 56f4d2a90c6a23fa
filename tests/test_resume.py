"""A run killed at any moment and resumed from ``last.ckpt`` ends bitwise equal to the run that was not killed."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from resume_harness import PHASES, Config, Kill, differences, in_child, recorded_warnings, run

from manualopt import ManualOptimizationWarning, _lightning

EXACT = _lightning.resumes_loops_exactly()

CONFIGS = [
    Config("single"),
    Config("gan", optimizers=2, generator=True),
    Config("accumulation", accumulate=3, workers=2),
]
KILLS = 10  # seeded kill points per configuration


def _kill_points(config: Config, steps: int) -> list[tuple[int, str]]:
    # from the first checkpoint's step (a kill before it is written starts over) to before the last training step
    chooser = random.Random(f"{config.name}-kills")
    return [(chooser.randrange(config.every, steps), PHASES[i % len(PHASES)]) for i in range(KILLS)]


@pytest.mark.skipif(not EXACT, reason="exact resume is tested from Lightning 2.6 (older loops may replay a batch)")
@pytest.mark.timeout(900)
@pytest.mark.parametrize("config", CONFIGS, ids=[config.name for config in CONFIGS])
def test_killed_and_resumed_runs_end_bitwise_equal(tmp_path: Path, config: Config) -> None:
    reference_file = tmp_path / "reference.pt"
    assert in_child(lambda: run(config, tmp_path / "reference", reference_file)) == 0
    reference = torch.load(reference_file, weights_only=False)
    per_epoch = -(-config.batches // config.accumulate)  # windows per epoch, the last one partial
    assert reference["global_step"] == config.epochs * per_epoch
    outcomes = []
    for index, (step, phase) in enumerate(_kill_points(config, reference["global_step"])):
        root, out = tmp_path / f"kill{index}", tmp_path / f"kill{index}.pt"
        killed = in_child(lambda: run(config, root, out, kill=Kill(step, phase)))  # noqa: B023
        assert killed == -9, f"the run was to be killed at step {step}, {phase}"
        assert in_child(lambda: run(config, root, out, resume=True)) == 0  # noqa: B023
        outcomes.append((step, phase, differences(torch.load(out, weights_only=False), reference)))
    different = [outcome for outcome in outcomes if outcome[2]]
    assert len(outcomes) == KILLS
    assert different == [], f"{len(outcomes) - len(different)}/{len(outcomes)} bitwise; differing: {different}"


@pytest.mark.skipif(EXACT, reason="the installed Lightning resumes exactly")
def test_on_older_lightning_a_resume_says_why_it_is_not_exact(tmp_path: Path) -> None:
    config = Config("single")
    killed = in_child(lambda: run(config, tmp_path, tmp_path / "killed.pt", kill=Kill(7, "batch-start")))
    assert killed == -9
    with pytest.warns(
        ManualOptimizationWarning, match=r"not exactly .* may train the batch .* tested from Lightning 2.6"
    ):
        run(config, tmp_path, tmp_path / "resumed.pt", resume=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert resumed["global_step"] >= config.steps  # it resumed and finished


@pytest.mark.skipif(not EXACT, reason="exact resume is tested from Lightning 2.6 (older loops may replay a batch)")
@pytest.mark.timeout(900)
def test_a_killed_two_process_ddp_run_resumes_bitwise_on_every_rank(tmp_path: Path) -> None:
    config = Config("ddp", optimizers=2, processes=2, batches=8)
    reference_file = tmp_path / "reference.pt"
    assert in_child(lambda: run(config, tmp_path / "reference", reference_file)) == 0
    outcomes = []
    for index, (step, phase) in enumerate([(5, "mid-step"), (3, "batch-end")]):
        root, out = tmp_path / f"kill{index}", tmp_path / f"kill{index}.pt"
        assert in_child(lambda: run(config, root, out, kill=Kill(step, phase))) == -9  # noqa: B023
        assert in_child(lambda: run(config, root, out, resume=True)) == 0  # noqa: B023
        for rank_file, reference in ((out, reference_file), (Path(f"{out}.rank1"), Path(f"{reference_file}.rank1"))):
            ours, theirs = torch.load(rank_file, weights_only=False), torch.load(reference, weights_only=False)
            outcomes.append((step, phase, rank_file.name, differences(ours, theirs)))
    assert [outcome for outcome in outcomes if outcome[3]] == []
    rank0, rank1 = torch.load(out, weights_only=False), torch.load(f"{out}.rank1", weights_only=False)
    assert differences(rank0, rank1) == []  # and the ranks agree with each other


@pytest.mark.skipif(not EXACT, reason="exact resume is tested from Lightning 2.6 (older loops may replay a batch)")
@pytest.mark.timeout(900)
def test_a_ddp_run_killed_with_an_accumulation_window_open_resumes_on_the_same_steps_and_says_it_is_not_exact(
    tmp_path: Path,
) -> None:
    # the discriminator accumulates over 3 batches while the generator's updates (every 2nd batch) advance global_step:
    # the checkpoints written after those updates hold the discriminator's open window, per rank
    config = Config("ddp-window", optimizers=2, accumulate=3, processes=2, batches=16, every=1)
    reference_file, out = tmp_path / "reference.pt", tmp_path / "killed.pt"
    assert in_child(lambda: run(config, tmp_path / "reference", reference_file)) == 0
    assert in_child(lambda: run(config, tmp_path / "killed", out, kill=Kill(3, "batch-start"))) == -9
    windows = torch.load(tmp_path / "killed" / "last.ckpt", weights_only=False)["manualopt"]["accumulation_windows"]
    assert windows  # the checkpoint resumed from was written inside a window
    assert in_child(lambda: run(config, tmp_path / "killed", out, resume=True)) == 0
    assert "an accumulation window was open at the checkpoint under several processes" in recorded_warnings(out)
    for suffix in ("", ".rank1"):
        ours = torch.load(f"{out}{suffix}", weights_only=False)
        theirs = torch.load(f"{reference_file}{suffix}", weights_only=False)
        # the same steps on the same batches (counters, schedule); the weights are not the uninterrupted run's
        assert ours["global_step"] == theirs["global_step"]
        assert ours["updates"] == theirs["updates"]
        assert ours["position"] == theirs["position"]
