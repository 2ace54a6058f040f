"""Shared pytest setup: every test session gets its own DDS domain, limited to localhost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

# Set before anything imports rclpy, so parallel test sessions on one machine never meet.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = os.environ.get("VSRE_TEST_DOMAIN_ID") or str(random.randint(1, 101))
os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def one_thread():
    """torch on one thread for the test (a 2-core machine runs other work beside it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kill_when():
    """`kill_when(cmd, ready, timeout)`: run `cmd` from the repository root, SIGKILL it as soon
    as `ready()` holds (a failing test if the process ends first or `timeout` passes)."""
    root = Path(__file__).resolve().parents[1]

    def run(cmd: list[str], ready, timeout: float = 120.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and proc.poll() is None and not ready():
                time.sleep(0.02)
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert ready(), f"not ready within {timeout} s"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    return run
