"""A contact sheet: a PNG grid of dataset items, each image with its question and answer."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 224  # pixels per image tile (images are scaled to fit)
TEXT_H = 150  # pixels of text under each tile


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def pick_examples(items: list[dict], count: int) -> list[dict]:
    """Round-robin over tasks (and relations), so every kind of question shows up."""
    by_task: dict[str, list[dict]] = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it)
    order = sorted(by_task)
    picked: list[dict] = []
    k = 0
    while len(picked) < count and any(by_task.values()):
        task = order[k % len(order)]
        pool = by_task[task]
        if pool:
            # Spread picks over the pool instead of taking neighbours from one scene.
            idx = (len(picked) * 7919) % len(pool)
            picked.append(pool.pop(idx))
        k += 1
    return picked


def render_sheet(
    root: str | os.PathLike, items: list[dict], out: str | os.PathLike, columns: int = 4
) -> Path:
    """Draw `items` (their images from `root`) into a grid PNG at `out`."""
    root = Path(root)
    rows = (len(items) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * TILE, max(1, rows) * (TILE + TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    font, bold = _font(12), _font(13)
    for n, it in enumerate(items):
        x0, y0 = (n % columns) * TILE, (n // columns) * (TILE + TEXT_H)
        paths = it.get("images") or [it["image"]]
        tile_w = TILE // len(paths)
        for k, rel in enumerate(paths):
            img = Image.open(root / rel).convert("RGB")
            scale = min(tile_w / img.width, TILE / img.height)
            img = img.resize(
                (max(1, int(img.width * scale)), max(1, int(img.height * scale))), Image.NEAREST
            )
            sheet.paste(img, (x0 + k * tile_w, y0 + (TILE - img.height) // 2))
        draw.rectangle([x0, y0, x0 + TILE - 1, y0 + TILE + TEXT_H - 1], outline=(180, 180, 180))
        head = f"{it['task']}" + (f" / {it['relation']}" if it.get("relation") else "")
        draw.text((x0 + 4, y0 + TILE + 2), head, fill=(30, 60, 160), font=bold)
        lines = textwrap.wrap(it["question"], width=34)[:7]
        for m, line in enumerate(lines):
            draw.text((x0 + 4, y0 + TILE + 18 + 14 * m), line, fill=(0, 0, 0), font=font)
        answer = f"answer: {it['answer']}"
        if it.get("label") is not None:
            answer += f"  (label {it['label']})"
        for m, line in enumerate(textwrap.wrap(answer, width=34)[:2]):
            draw.text(
                (x0 + 4, y0 + TILE + TEXT_H - 32 + 14 * m), line, fill=(0, 120, 0), font=bold
            )
    out = Path(out)
    sheet.save(out)
    return out


def sheet_for_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    count: int = 16,
    split: str = "random_train",
) -> Path:
    """Contact sheet of `count` items of one split of the dataset at `root`."""
    root = Path(root)
    with open(root / f"{split}.jsonl") as fh:
        items = [json.loads(line) for line in fh if line.strip()]
    if not items:
        raise ValueError(f"split {split} of {root} is empty")
    return render_sheet(root, pick_examples(items, count), out or root / "contact_sheet.png")


def as_array(path: str | os.PathLike) -> np.ndarray:
    return np.asarray(Image.open(path))
