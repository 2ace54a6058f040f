"""Checks on a generated dataset's splits: duplicates across splits, zero-shot concept overlap.

An item is a duplicate of another when both show the same pixels (the same image files'
bytes, hashed) and ask the same question: a model tested on it has seen it in training. VSR's
own zero-shot test shared 830 of 1,222 items verbatim with random/train; this checker is what
keeps that from happening here, and an evaluator can use `item_key` to drop overlap.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from pathlib import Path

FAMILIES = {
    "random": ("random_train", "random_val", "random_test"),
    "zeroshot": ("zeroshot_train", "zeroshot_val", "zeroshot_test"),
}


def _load(root: Path, split: str) -> list[dict]:
    path = root / f"{split}.jsonl"
    if not path.is_file():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def item_key(root: str | os.PathLike, item: dict, _cache: dict | None = None) -> str:
    """Hash of the item's image bytes and its question (and answer)."""
    cache = {} if _cache is None else _cache
    h = hashlib.sha1()
    for rel in item.get("images") or [item["image"]]:
        if rel not in cache:
            cache[rel] = hashlib.sha1((Path(root) / rel).read_bytes()).hexdigest()
        h.update(cache[rel].encode())
    h.update(item.get("question", "").encode())
    h.update(item.get("caption", "").encode())
    return h.hexdigest()


def find_duplicates(root: str | os.PathLike) -> dict[str, list[dict]]:
    """Per split family, the keys shared by more than one split, with where they occur."""
    root = Path(root)
    cache: dict = {}
    report: dict[str, list[dict]] = {}
    for family, splits in FAMILIES.items():
        where: dict[str, set[str]] = defaultdict(set)
        ids: dict[str, list[str]] = defaultdict(list)
        for split in splits:
            for it in _load(root, split):
                key = item_key(root, it, cache)
                where[key].add(split)
                ids[key].append(it["id"])
        report[family] = [
            {"key": k, "splits": sorted(s), "ids": ids[k]} for k, s in where.items() if len(s) > 1
        ]
    return report


def concept_overlap(root: str | os.PathLike) -> dict[str, list[str]]:
    """Zero-shot family: concepts ("red cup") that appear in more than one split."""
    root = Path(root)
    seen: dict[str, set[str]] = defaultdict(set)
    for split in FAMILIES["zeroshot"]:
        for it in _load(root, split):
            for name in it.get("objects", []):
                seen[name].add(split)
    return {c: sorted(s) for c, s in sorted(seen.items()) if len(s) > 1}


def check(root: str | os.PathLike) -> dict:
    """Both checks, with a verdict: {"ok", "duplicates", "zeroshot_concept_overlap"}."""
    dups = find_duplicates(root)
    overlap = concept_overlap(root)
    ok = not any(dups.values()) and not overlap
    return {"ok": ok, "duplicates": dups, "zeroshot_concept_overlap": overlap}
