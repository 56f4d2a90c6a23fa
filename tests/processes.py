"""Running a command whose processes may hang (a DDP launch), with a time limit that ends all of them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest


def run_in_own_group(
    command: list[str], env: dict[str, str], limit: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a session of its own; past ``limit`` seconds, kill its whole process group and fail.

    The DDP launcher's other processes inherit the output pipes, so the output ends only when every process has ended:
    a process that hangs, the launcher's or another, runs into the limit.
    """
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} did not end: killed\n{stdout[-3000:]}\n{stderr[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
