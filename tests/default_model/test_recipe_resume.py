"""A curriculum run (one optimizer across stages, heads, weight averages) resumes exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_recipe_targets import five_step_recipe, generated
from vsre_ros.training.config import dump_config
from vsre_ros.training.train import CARRY, latest_checkpoint, train


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return generated(tmp_path_factory, 60, 3)


pytestmark = pytest.mark.usefixtures("one_thread")


def recipe(data, out: Path, steps_b: int):
    """Stage A (3 steps) then B, every recipe loss, averaged weights, a checkpoint each 5."""
    config = five_step_recipe(data, out, ema_decay=0.9, save_every=5)
    config.stages[0].steps, config.stages[1].steps = 3, steps_b
    config.stages[1].decay_share = 0.0  # the lr must not depend on the stage's length
    return config


def step_losses(path: Path) -> dict[int, float]:
    # Complete lines only: the file may be read while a training process appends to it.
    lines = path.read_text().split("\n")[:-1] if path.is_file() else []
    rows = [json.loads(line) for line in lines if line]
    return {r["step"]: r["step_loss"] for r in rows if "step_loss" in r}


def test_a_stage_continues_the_previous_one_exactly_after_a_restart(sim_data, tmp_path):
    reference = recipe(sim_data, tmp_path / "ref", 6)
    train(reference, progress=False)
    expected = step_losses(tmp_path / "ref" / "B-all" / "metrics.jsonl")

    split = recipe(sim_data, tmp_path / "split", 6)
    train(split, ["A-basics-one-polarity"], progress=False)
    assert (tmp_path / "split" / "A-basics-one-polarity" / CARRY / "state.json").is_file()
    first, second = train(split, progress=False)  # a new process would do just this
    assert first.steps_run == 0 and second.steps_run == 6
    assert {r["step"]: r["step_loss"] for r in second.metrics} == expected
    assert not (tmp_path / "split" / "A-basics-one-polarity" / CARRY).exists(), "spent"


def test_resume_after_sigkill_gives_the_same_next_step_loss(sim_data, tmp_path, kill_when):
    reference = recipe(sim_data, tmp_path / "ref", 14)
    train(reference, progress=False)
    expected = step_losses(tmp_path / "ref" / "B-all" / "metrics.jsonl")

    killed = recipe(sim_data, tmp_path / "killed", 400)
    config_file = tmp_path / "killed.yaml"
    dump_config(killed, config_file)
    metrics = tmp_path / "killed" / "B-all" / "metrics.jsonl"
    cmd = [sys.executable, "-m", "vsre_ros", "train", "--config", str(config_file),
           "--no-progress", "--threads", "1"]  # fmt: skip
    kill_when(cmd, lambda: max(step_losses(metrics), default=0) >= 8)
    resumed_from = latest_checkpoint(tmp_path / "killed" / "B-all")
    assert resumed_from is not None
    done = json.loads((resumed_from / "state.json").read_text())["step"]
    assert done >= 5 and done % 5 == 0

    killed.stages[1].steps = 16  # enough to pass the reference's last step
    _, result = train(killed, progress=False)
    after = {r["step"]: r["step_loss"] for r in result.metrics}
    assert min(after) == done + 1
    for step in range(done + 1, 15):
        assert after[step] == expected[step], step
