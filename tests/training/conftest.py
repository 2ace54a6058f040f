"""Fixtures: tiny datasets in the vsre-dataset/1 schema, drawn with PIL."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def make_colour_dataset(root: Path, n_train: int = 48, n_test: int = 16, seed: int = 0) -> Path:
    """Images filled with red or blue; "Is the square red?"-style items whose answer is the
    colour seen. Learnable only by looking at the image (the question never changes)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for k in range(n):
            colour = "red" if k % 2 == 0 else "blue"
            pixels = np.zeros((32, 32, 3), np.uint8) + np.array(COLOURS[colour], np.uint8)
            pixels = np.clip(pixels + rng.integers(-20, 20, pixels.shape), 0, 255)
            name = f"images/{split}_{k:03d}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(root / name)
            label = int(colour == "red")
            rows.append(
                {
                    "id": f"{split}-{k:03d}",
                    "image": name,
                    "images": [name],
                    "caption": "The square is on the background.",
                    "label": label,
                    "relation": "on",
                    "subj": "square",
                    "obj": "background",
                    "question": "Is the square red?",
                    "answer": "yes" if label else "no",
                    "answer_kind": "yes_no",
                    "task": "relation",
                    "scene_id": f"{split}-{k}",
                    "seed": seed,
                    "source": "sim",
                }
            )
        with open(root / f"{split}.jsonl", "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in rows)
        counts[split] = n
    meta = {
        "schema": "vsre-dataset/1",
        "source": "test",
        "seed": seed,
        "config": {},
        "counts": counts,
        "splits": {s: f"{s}.jsonl" for s in counts},
        "created_by": "tests/training/conftest.py",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def colour_dataset(tmp_path) -> Path:
    return make_colour_dataset(tmp_path / "colours")
