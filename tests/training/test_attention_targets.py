"""Object attention targets from instance masks: positions, target maps, and that they train."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from training_tiny import TINY, tiny_config
from vsre_ros.training.config import StageConfig
from vsre_ros.training.data import ask
from vsre_ros.training.items import load_items
from vsre_ros.training.model_api import build_model, collate, image_cache
from vsre_ros.training.recipes.targets import TargetBuilder, batch_targets
from vsre_ros.training.train import train

EAGER = copy.deepcopy(TINY)
EAGER["lm"]["attn_implementation"] = "eager"


def masked_dataset(root: Path, n: int = 8) -> Path:
    """Red square on the left (mask id 1), blue on the right (mask id 2), sim-style fields."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:, :16] = (220, 30, 30)
    pixels[:, 16:] = (30, 30, 220)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16], mask[:, 16:] = 1, 2
    Image.fromarray(pixels).save(root / "images/a.png")
    Image.fromarray(mask).save(root / "masks/a.png")
    rows = [
        {"id": f"i{k}", "image": "images/a.png", "masks": ["masks/a.png"], "label": 1,
         "relation": "left of", "subj": "red square", "obj": "blue square",
         "question": "Is the red square left of the blue square?", "answer": "yes",
         "objects": ["red square", "blue square"], "mask_ids": [1, 2]}
        for k in range(n)
    ]  # fmt: skip
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dataset.json").write_text(json.dumps({"schema": "vsre-dataset/1"}))
    return root


def test_targets_point_each_object_word_at_its_mask(tmp_path):
    data = masked_dataset(tmp_path / "d")
    model = build_model("vsre-tiny", EAGER)
    example = ask(load_items(data, "train")[0])
    batch = collate(model, [example], image_cache(model))
    # Hand-made data has masks but no scene file: the binding target comes from the mask.
    t = batch_targets(TargetBuilder(model), [example], batch)["hop1"]
    ids = batch["input_ids"][0]
    assert t.rows.tolist() == [0, 0]
    assert all(int(ids[k]) == model.image_token_id for k in t.keys[0])
    # The query is the last token of each phrase (the end of "square"), at two places.
    words = [model.tokenizer.decode([int(ids[q])]).strip() for q in t.query]
    assert all(w and "square".endswith(w) for w in words)
    assert model.tokenizer.decode([int(ids[t.query[0] + 1])]).strip() == "left"
    assert t.query[0] < t.query[1]
    # A 2x2 grid: red covers the left column (tokens 0 and 2), blue the right one.
    assert t.weights.tolist() == [[0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5]]


def test_object_attention_loss_trains_and_switches_on_eager_attention(tmp_path):
    data = masked_dataset(tmp_path / "d")
    stage = StageConfig(name="s", freeze="all", steps=15, batch_size=4, lr=3e-3,
                        warmup_steps=0, templates="none",
                        aux_losses={"object_attention": 1.0})  # fmt: skip
    config = tiny_config(data, tmp_path / "run", [stage])
    config.model_overrides = EAGER
    torch.set_num_threads(1)
    (result,) = train(config, progress=False)
    losses = [row["loss_object_attention"] for row in result.metrics]
    # The best reachable loss is the targets' entropy (each covers two of four tokens).
    floor = float(np.log(2.0))
    assert losses[-1] - floor < 0.2 * (losses[0] - floor)
    # A model configured for sdpa is switched to eager, the only kernel returning the maps.
    stage.steps = 2
    (result,) = train(tiny_config(data, tmp_path / "sdpa", [stage]), progress=False)
    assert all("loss_object_attention" in row for row in result.metrics)
