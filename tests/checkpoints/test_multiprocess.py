"""Stage training in 2 processes (torch.distributed, gloo on CPU): the command multi-GPU users
run with `accelerate launch --multi_gpu --num_processes N -m vsre_ros train ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from hub_fixture import write_dataset

ROOT = Path(__file__).resolve().parents[2]
# One small CLIP-style encoder and a 1-layer Llama: the point is the two processes.
TINY = {
    "encoders": [
        {
            "family": "clip",
            "hf_config": {
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 16,
                "patch_size": 8,
            },
        }
    ],
    "lm": {
        "hf_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 256,
        }
    },
    "projector_depth": 2,
}


def test_two_stages_train_in_two_processes(tmp_path):
    stage = {"steps": 2, "batch_size": 2, "warmup_steps": 0}
    config = {
        "model": "vsre-tiny",
        "model_overrides": TINY,
        "data": str(write_dataset(tmp_path / "data")),
        "output": str(tmp_path / "run"),
        "threads": 1,
        "eval_every": 0,
        "stages": [
            {"name": "stage1", "freeze": "stage1", **stage},
            {"name": "stage2", "freeze": "stage2", **stage},
        ],
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--standalone", "-m", "vsre_ros", "train"]  # a free port of its own
    command += ["--config", str(tmp_path / "train.yaml"), "--no-progress"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Each process reports its stages; both start stage 2 from stage 1's saved result.
    assert done.stdout.count("stage2: 2 steps") == 2
    assert "not found, starting from" not in done.stderr
    assert (tmp_path / "run" / "stage2" / "final" / "adapter" / "adapter_config.json").is_file()
