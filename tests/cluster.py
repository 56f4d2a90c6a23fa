"""Start a training program the way a cluster starts it: one process per simulated node, on 127.0.0.1, with gloo.

Each process gets the environment a multi-node launch gives it, in one of two styles:

* ``"lightning"``: ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``, as a cluster
  without a scheduler Lightning knows (or a hand-written launch script) sets them; Lightning uses its
  ``LightningEnvironment``.
* ``"torchrun"``: what ``torchrun --nnodes=N --node_rank=i`` gives its one worker per node (``RANK``, ``GROUP_RANK``,
  ``LOCAL_WORLD_SIZE``, ``TORCHELASTIC_RUN_ID``, ...); Lightning uses its ``TorchElasticEnvironment``.

Nothing can hang: every process runs in a session of its own and is killed with its whole process group when the
launch's time limit passes, or a short grace period after another process failed (a rank that lost its peer is
blocked in a collective until the process group's own timeout, which the programs also set).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent


@dataclass
class Rank:
    """How one process of a launch ended."""

    node: int
    returncode: int | None  # None: killed at the time limit
    output: str
    seconds: float

    @property
    def killed(self) -> bool:
        return self.returncode is None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(node: int, nodes: int, port: int, style: str) -> dict[str, str]:
    """The variables a multi-node launch sets for the one process of ``node`` (one device per node)."""
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nodes), "LOCAL_RANK": "0"}
    if style == "lightning":
        return {**common, "NODE_RANK": str(node)}
    if style == "torchrun":
        return {
            **common,
            "RANK": str(node),
            "GROUP_RANK": str(node),
            "ROLE_RANK": str(node),
            "LOCAL_WORLD_SIZE": "1",
            "ROLE_WORLD_SIZE": str(nodes),
            "GROUP_WORLD_SIZE": str(nodes),
            "ROLE_NAME": "default",
            "TORCHELASTIC_RUN_ID": "manualopt-test",
            "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0",
        }
    raise ValueError(style)


def launch(
    args: list[str], nodes: int = 2, style: str = "lightning", timeout: float = 240.0, grace: float = 20.0
) -> list[Rank]:
    """Run ``python args...`` once per node and wait for all of them, within ``timeout`` seconds.

    When a process fails, the others get ``grace`` seconds to end on their own, then are killed.
    """
    port = free_port()
    base = {key: value for key, value in os.environ.items() if not _launch_variable(key)}
    path = os.pathsep.join(filter(None, [str(HERE), base.get("PYTHONPATH")]))
    base.update({"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "PYTHONPATH": path})
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(nodes)]  # noqa: SIM115 - closed below
    started = time.monotonic()
    processes: list[subprocess.Popen[bytes]] = []
    ended: dict[int, float] = {}
    deadline = started + timeout
    try:
        for node in range(nodes):
            environment_of_node = {**base, **environment(node, nodes, port, style)}
            processes.append(
                subprocess.Popen(
                    [sys.executable, *args],
                    env=environment_of_node,
                    stdout=logs[node],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: killed with everything it started
                )
            )
        while len(ended) < nodes and time.monotonic() < deadline:
            for node, process in enumerate(processes):
                if node not in ended and process.poll() is not None:
                    ended[node] = time.monotonic() - started
                    if process.returncode:
                        deadline = min(deadline, time.monotonic() + grace)
            time.sleep(0.1)
    finally:
        for node, process in enumerate(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            elif node not in ended:  # ended on its own between the last look and the limit
                ended[node] = time.monotonic() - started
    ranks = []
    for node, (process, log) in enumerate(zip(processes, logs, strict=True)):
        log.seek(0)
        seconds = ended.get(node, time.monotonic() - started)
        ranks.append(Rank(node, process.returncode if node in ended else None, log.read(), seconds))
        log.close()
    return ranks


def check(ranks: list[Rank]) -> None:
    """Fail the calling test with every process's output unless all ended with status 0."""
    if all(rank.returncode == 0 for rank in ranks):
        return
    import pytest

    parts = []
    for rank in ranks:
        status = "killed at the time limit" if rank.killed else f"exit status {rank.returncode}"
        parts.append(f"--- node {rank.node}: {status} after {rank.seconds:.0f} s\n{rank.output[-6000:]}")
    pytest.fail("a process of the launch failed:\n" + "\n".join(parts), pytrace=False)


def _launch_variable(key: str) -> bool:
    # variables of an enclosing launch (a test run under torchrun or SLURM) must not leak into the simulated one
    return key.startswith(("SLURM_", "TORCHELASTIC_", "PL_", "LT_")) or key in {
        "MASTER_ADDR",
        "MASTER_PORT",
        "NODE_RANK",
        "LOCAL_RANK",
        "RANK",
        "WORLD_SIZE",
        "GROUP_RANK",
        "LOCAL_WORLD_SIZE",
    }
