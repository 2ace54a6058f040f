"""How well can binary relations be answered from perfect perception? Prints the accuracy of
a small MLP given ground-truth features instead of pixels, by relation family.

    PYTHONPATH=. python bench/research/relation_ceiling.py --data runs/vsre-tiny/data --threads 1

Two feature sets, both from the simulator's files of each item's one image:
- "2.5D": what a perfect reader of the image and its depth map would know about the two named
  objects: mask box, visible area, and the min / mean / max log depth over each mask;
- "3D": the scene's ground truth: both objects' world boxes, centres in the camera frame,
  yaw and whether they have a front, their surface gap, and the object categories' ids.

The same MLP (relation embedding + features -> True/False, trained on `default_train`
relation items) is fitted to each and scored on `random_test` relation items. The 3D figure
checks the pipeline (the labels are functions of it, so it should be close to 100%); the 2.5D
figure bounds what a pixel model at this resolution can reach without seeing 3D extents, and
the gap between them says which relations need more than the image plane and depth.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm
from vsre_ros.sim_data.catalog import CATEGORIES
from vsre_ros.sim_data.relations import GENERATED, relation
from vsre_ros.training.items import load_items
from vsre_ros.training.recipes.targets import object_shapes

RELATIONS = {name: k for k, name in enumerate(GENERATED)}
CATEGORY_IDS = {name: k for k, name in enumerate(CATEGORIES)}


def image_features(root: Path, item, cache: dict) -> np.ndarray | None:
    """Mask box, area and log-depth statistics of the item's first two objects (the probe's
    `object_shapes`, with the mean log depth beside the min and max)."""
    key = item.masks[0]
    if key not in cache:
        with Image.open(root / item.masks[0]) as im:
            mask = np.asarray(im).astype(np.int64)
        depth = np.load(root / item.depth[0], allow_pickle=False).astype(np.float64)
        logd = np.log(np.clip(depth, 1e-3, None))
        sums = np.bincount(mask.ravel(), weights=logd.ravel())
        means = sums / np.bincount(mask.ravel()).clip(min=1)
        cache.clear()  # items come in scene order: one image's items are together
        cache[key] = (object_shapes(mask, depth), means)
    shapes, means = cache[key]
    out = []
    for mask_id in item.extra["mask_ids"][:2]:
        if int(mask_id) not in shapes:
            return None
        x0, y0, x1, y1, root_area, d_min, d_max = shapes[int(mask_id)]
        out += [x0, y0, x1, y1, root_area**2, d_min, means[int(mask_id)], d_max]
    return np.array(out, dtype=np.float32)


def scene_features(root: Path, item, cache: dict) -> np.ndarray | None:
    """World boxes, camera-frame centres, gap and categories of the first two objects."""
    if item.scene_id not in cache:
        cache.clear()
        cache[item.scene_id] = json.loads((root / "scenes" / f"{item.scene_id}.json").read_text())
    scene = cache[item.scene_id]
    render = next((r for r in scene["renders"] if r["image"] == item.images[0]), None)
    if render is None:
        return None
    i, j = (int(m) - 1 for m in item.extra["mask_ids"][:2])
    out = []
    for k in (i, j):
        o = scene["objects"][k]
        out += o["aabb_min"] + o["aabb_max"] + render["objects"][k]["center_cam"]
        out += [CATEGORY_IDS.get(o["category"], -1) / len(CATEGORIES)]
        out += [np.cos(o["yaw"]), np.sin(o["yaw"]), float(bool(o.get("has_front")))]
    out.append(scene["gaps"][i][j])
    return np.array(out, dtype=np.float32)


def table(root: Path, split: str, limit: int, reader) -> tuple[np.ndarray, ...]:
    items = [
        i
        for i in load_items(root, split)
        if i.task == "relation" and i.relation in RELATIONS and len(i.images) == 1
        and len(i.extra.get("mask_ids", [])) >= 2 and i.label is not None
    ]  # fmt: skip
    items = items[:limit]
    feats, rels, labels, names, cache = [], [], [], [], {}
    for item in tqdm(items, desc=f"{split} features", unit="item"):
        f = reader(root, item, cache)
        if f is None:
            continue
        feats.append(f)
        rels.append(RELATIONS[item.relation])
        labels.append(float(item.label))
        names.append(item.relation)
    return np.stack(feats), np.array(rels), np.array(labels, dtype=np.float32), names


class Ceiling(nn.Module):
    def __init__(self, n_features: int, width: int = 256):
        super().__init__()
        self.relation = nn.Embedding(len(RELATIONS), 32)
        self.net = nn.Sequential(
            nn.Linear(n_features + 32, width), nn.GELU(),
            nn.Linear(width, width), nn.GELU(),
            nn.Linear(width, width), nn.GELU(),
            nn.Linear(width, 1),
        )  # fmt: skip

    def forward(self, x, r):
        return self.net(torch.cat([x, self.relation(r)], -1)).squeeze(-1)


def fit_and_score(train, test, epochs: int, seed: int) -> tuple[float, dict[str, list[int]]]:
    torch.manual_seed(seed)
    x, r, y, _ = (torch.as_tensor(a) if not isinstance(a, list) else a for a in train)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    model = Ceiling(x.shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(y) + 255) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for b in range(0, len(y), 256):
            idx = order[b : b + 256]
            loss = nn.functional.binary_cross_entropy_with_logits(
                model((x[idx] - mean) / std, r[idx]), y[idx]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    tx, tr, ty, names = test
    with torch.no_grad():
        guess = model((torch.as_tensor(tx) - mean) / std, torch.as_tensor(tr)) > 0
    right = (guess.numpy() == (ty > 0.5)).astype(int)
    by_meta: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, ok in zip(names, right, strict=True):
        for key in (relation(name).meta, "all"):
            by_meta[key][0] += int(ok)
            by_meta[key][1] += 1
    return float(right.mean()), dict(by_meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a vsre train-default dataset directory")
    parser.add_argument("--train-items", type=int, default=40000, help="training items (40000)")
    parser.add_argument("--test-items", type=int, default=20000, help="test items (20000)")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the items (30)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--seed", type=int, default=0, help="MLP init and order seed (0)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    results = {}
    for name, reader in (("2.5D", image_features), ("3D", scene_features)):
        t = time.perf_counter()
        train = table(root, "default_train", args.train_items, reader)
        test = table(root, "random_test", args.test_items, reader)
        acc, by_meta = fit_and_score(train, test, args.epochs, args.seed)
        results[name] = by_meta
        print(
            f"{name}: {acc:.1%} on {len(test[2])} random_test relation items "
            f"({len(train[2])} train, {time.perf_counter() - t:.0f} s)"
        )
    print("\n| meta-category | n | 2.5D | 3D |\n|---|---:|---:|---:|")
    for meta in sorted(results["3D"], key=lambda m: (m == "all", m)):
        cells = [f"{results[k][meta][0] / results[k][meta][1]:.1%}" for k in ("2.5D", "3D")]
        print(f"| {meta} | {results['3D'][meta][1]} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
