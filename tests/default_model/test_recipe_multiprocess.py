"""The curriculum recipe (one optimizer across stages, training-only heads, terms that skip a
batch) in 2 processes: what `accelerate launch --multi_gpu` runs on GPUs, here gloo on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_recipe_targets import five_step_recipe, generated
from vsre_ros.training.config import dump_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return generated(tmp_path_factory, 60, 3)


def test_the_recipe_trains_in_two_processes(sim_data, tmp_path):
    config = five_step_recipe(sim_data, tmp_path / "run", ema_decay=0.9, threads=1)
    config.stages[0].steps, config.stages[1].steps = 2, 2
    dump_config(config, tmp_path / "recipe.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", "-m", "vsre_ros", "train"]
    command += ["--config", str(tmp_path / "recipe.yaml"), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("B-all: 2 steps") == 2, done.stdout
    final = tmp_path / "run" / "B-all" / "final"
    assert (final / "vsre_config.json").is_file() and (
        final / "last_weights.safetensors"
    ).is_file()
