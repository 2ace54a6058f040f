"""Generating a dataset directory: scenes in parallel, files, splits, meta.

`build_scene(sim, config, index)` is the whole pipeline for one scene (sample, render, measure,
ask) and is what both the dataset generator and `SimCamera` run. Everything random in it comes
from generators seeded by (seed, index, stream), so a scene is the same bit for bit whichever
process renders it and in whatever order; `generate` consumes scenes in index order and stops
at exactly N items, so a dataset depends only on its seed and configuration.

Splits (an item is in one split of each family):
- random: scenes are assigned to train/val/test (70/10/20) at random;
- zero-shot: each category's colours are dealt to train/val/test (8/1/3 of 12), and a scene
  draws all its objects from one part's concepts, so no category-colour concept is shared
  between train, val and test (VSR's zero-shot condition).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from vsre_ros.core import grammar

from .catalog import CATEGORIES, COLOURS
from .questions import QuestionConfig, QuestionMaker
from .relations import CATALOG, NOT_GENERATED
from .render import Simulator, ViewRender
from .scene import REGION, LayoutConfig, Scene, _place_ground, sample_scene

SCHEMA = "vsre-dataset/1"
SPLIT_PARTS = ("train", "val", "test")
SPLIT_SHARES = (0.7, 0.1, 0.2)  # random split: share of scenes per part
ZS_COLOURS = (8, 1, 3)  # zero-shot split: colours of each category per part (of 12)
SPLIT_FILES = [f"{fam}_{p}" for fam in ("random", "zeroshot") for p in SPLIT_PARTS]
ZS_SEED = 20240  # version 2: the zero-shot deal's seed, the same whatever the dataset's seed
# What each data version changes; a version's datasets stay reproducible bit for bit.
DATA_VERSIONS: dict[int, str] = {
    1: "VSRE templates; zero-shot concepts dealt by the dataset seed",
    2: "question grammar (core.grammar), framing and vocabulary recorded per item; zero-shot "
    "concepts fixed across seeds",
}


@dataclass(frozen=True)
class GenConfig:
    """Everything that decides a generated dataset besides N."""

    seed: int = 0  # base seed; scene i uses streams seeded by (seed, i, k)
    width: int = 96  # image width, pixels
    height: int = 96  # image height, pixels
    multi_view_share: float = 0.3  # share of scenes rendered from a second viewpoint
    moved_share: float = 0.15  # share of scenes with a before/after image (one object moved)
    layout: LayoutConfig = field(default_factory=LayoutConfig)  # scene sampler knobs
    questions: QuestionConfig = field(default_factory=QuestionConfig)  # questions per scene
    depth: bool = True  # write depth .npy files
    masks: bool = True  # write instance mask PNGs
    data_version: int = 1  # see DATA_VERSIONS; 1 is what the shipped vsre-tiny was trained on

    def __post_init__(self) -> None:
        if self.data_version not in DATA_VERSIONS:
            known = ", ".join(f"{k} ({v})" for k, v in DATA_VERSIONS.items())
            raise ValueError(f"unknown data version {self.data_version}; known: {known}")

    def to_dict(self) -> dict:
        return asdict(self)


def concept_parts(seed: int) -> dict[str, list[tuple[str, str]]]:
    """The zero-shot deal: part -> its (category, colour) concepts; disjoint across parts.

    Version 1 deals by the dataset's seed (so another seed's zero-shot test shares concepts
    with seed 0's training part); version 2 always deals with `ZS_SEED` (`zeroshot_parts`)."""
    parts: dict[str, list[tuple[str, str]]] = {p: [] for p in SPLIT_PARTS}
    colours = list(COLOURS)
    for c, cat in enumerate(CATEGORIES):
        order = np.random.default_rng([seed, 7919, c]).permutation(len(colours))
        start = 0
        for part, count in zip(SPLIT_PARTS, ZS_COLOURS, strict=True):
            parts[part] += [(cat, colours[int(k)]) for k in order[start : start + count]]
            start += count
    return parts


def zeroshot_parts(config: GenConfig) -> dict[str, list[tuple[str, str]]]:
    """The zero-shot deal a configuration uses (see DATA_VERSIONS)."""
    return concept_parts(config.seed if config.data_version == 1 else ZS_SEED)


def question_config(config: GenConfig) -> QuestionConfig:
    """The question settings a configuration's data version implies."""
    if config.data_version == 1:
        return config.questions
    return replace(config.questions, wording="grammar", picture_only=True)


def layout_config(config: GenConfig) -> LayoutConfig:
    """The layout settings a configuration's data version implies."""
    if config.data_version == 1:
        return config.layout
    return replace(config.layout, real_scale=True)


def held_out_wording(item: dict, config: GenConfig) -> bool:
    """Version 2: the item is asked through a held-out framing or vocabulary (such items are
    kept out of the train parts, so a trainer cannot see them by accident)."""
    if config.data_version == 1 or not item.get("framing"):
        return False
    return not grammar.wording_by_id(item["template_id"]).seen


@dataclass
class SceneResult:
    """One scene's renders, truth and items (arrays, not yet files)."""

    index: int
    scene: Scene
    renders: list[ViewRender]  # view renders, then the "moved" render if any
    truth: dict  # JSON-able ground truth
    items: list[dict]
    splits: dict[str, str]  # family -> part

    def view_items(self, view: int = 0) -> list[dict]:
        """The items asked about render `view` alone (a camera filming that view asks these)."""
        name = self.truth["renders"][view]["name"]
        return [it for it in self.items if it["images"] == [name]]


def _names(scene_id: str, n_views: int, moved: bool) -> list[str]:
    names = [f"{scene_id}_v{k}" for k in range(n_views)]
    return names + ([f"{scene_id}_moved"] if moved else [])


def build_scene(sim: Simulator, config: GenConfig, index: int) -> SceneResult:
    """Sample, render, measure and question scene `index` of the dataset seeded `config.seed`."""
    seed = config.seed
    rng_split = np.random.default_rng([seed, index, 2])
    u = rng_split.uniform()
    random_part = SPLIT_PARTS[int(np.searchsorted(np.cumsum(SPLIT_SHARES), u, side="right"))]
    zs_part = SPLIT_PARTS[int(rng_split.choice(3, p=[0.7, 0.1, 0.2]))]
    views = 2 if rng_split.uniform() < config.multi_view_share else 1
    want_move = rng_split.uniform() < config.moved_share
    layout = replace(layout_config(config), views=views)
    scene_id = f"{seed}-{index:06d}"
    scene = sample_scene(
        np.random.default_rng([seed, index, 0]), scene_id, zeroshot_parts(config)[zs_part], layout
    )
    sim.load(scene)
    gaps = sim.gaps()
    renders = [sim.render(v) for v in scene.views]
    rng_q = np.random.default_rng([seed, index, 1])
    moved, moved_scene = None, None
    rng_move = np.random.default_rng([seed, index, 3])
    if want_move and rng_move.uniform() >= 0.25:  # a quarter of before/after pairs: no change
        region = layout.region(scene.appearance.surface)
        moved, moved_scene = _move_one(rng_move, scene, renders[0], region)
    names = _names(scene_id, len(renders), moved_scene is not None)
    maker = QuestionMaker(scene, renders, gaps, rng_q, seed, question_config(config), names)
    items = maker.all_items()
    if moved_scene is not None:
        sim.load(moved_scene)
        renders.append(sim.render(moved_scene.views[0], amodal=False))
        items += maker.moved_items(moved, 0, len(renders) - 1)
    elif want_move:
        items += maker.moved_items(None, 0, 0)  # the same image twice: nothing moved
    for k, it in enumerate(items):
        it["id"] = f"{scene_id}-{k:03d}"
    truth = scene_truth(scene, renders, gaps, names, moved, moved_scene)
    truth["splits"] = {"random": random_part, "zeroshot": zs_part}
    truth["index"], truth["seed"] = index, seed
    return SceneResult(
        index, scene, renders, truth, items, {"random": random_part, "zeroshot": zs_part}
    )


def _move_one(
    rng, scene: Scene, render: ViewRender, region=REGION
) -> tuple[int | None, Scene | None]:
    """A copy of the scene with one visible free-standing object moved elsewhere."""
    carriers = {o.rests_on for o in scene.objects}
    movable = [
        k
        for k, o in enumerate(scene.objects)
        if o.placement == "ground" and k not in carriers and render.objects[k]["pixels"] > 0
    ]
    if not movable:
        return None, None
    k = movable[int(rng.integers(len(movable)))]
    copy = Scene.from_dict(scene.to_dict())
    obj = copy.objects[k]
    others = [o for m, o in enumerate(copy.objects) if m != k]
    old = np.array(obj.pos)
    for _ in range(5):
        if (
            _place_ground(rng, obj, others, region)
            and np.linalg.norm(np.array(obj.pos) - old) > 0.12
        ):
            return k, copy
    return None, None


def scene_truth(
    scene: Scene,
    renders: list[ViewRender],
    gaps: np.ndarray,
    names: list[str],
    moved: int | None = None,
    moved_scene: Scene | None = None,
) -> dict:
    """The scene file: layout (re-renderable with Scene.from_dict) plus every measurement."""
    d = scene.to_dict()
    for k, (o, od) in enumerate(zip(scene.objects, d["objects"], strict=True)):
        lo, hi = o.aabb()
        od.update(
            mask_id=k + 1,
            center=[float(v) for v in o.center()],
            size=[float(v) for v in o.size()],
            aabb_min=[float(v) for v in lo],
            aabb_max=[float(v) for v in hi],
        )
    d["gaps"] = [[round(float(g), 5) for g in row] for row in gaps]
    d["renders"] = []
    for k, (r, name) in enumerate(zip(renders, names, strict=True)):
        d["renders"].append(
            {
                "name": name,
                "view": 0 if name.endswith("_moved") else k,
                "moved": name.endswith("_moved"),
                "image": f"images/{name}.png",
                "depth": f"depth/{name}.npy",
                "mask": f"masks/{name}.png",
                "camera": r.camera_dict(),
                "objects": [dict(mask_id=m + 1, **o) for m, o in enumerate(r.objects)],
            }
        )
    if moved_scene is not None:
        d["moved"] = {"object": moved, "new_pos": list(moved_scene.objects[moved].pos)}
    return d


# -- files --------------------------------------------------------------------------------
def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def encode(result: SceneResult, config: GenConfig) -> dict:
    """The scene's files as bytes keyed by relative path (what a worker sends back)."""
    files: dict[str, bytes] = {}
    for r, rd in zip(result.renders, result.truth["renders"], strict=True):
        files[rd["image"]] = _png(r.rgb)
        if config.depth:
            files[rd["depth"]] = _npy(r.depth)
        if config.masks:
            files[rd["mask"]] = _png(r.seg)
    if not config.depth or not config.masks:
        for rd in result.truth["renders"]:
            rd["depth"] = rd["depth"] if config.depth else None
            rd["mask"] = rd["mask"] if config.masks else None
    files[f"scenes/{result.scene.scene_id}.json"] = json.dumps(
        result.truth, sort_keys=True
    ).encode()
    paths = {rd["image"]: rd for rd in result.truth["renders"]}
    for it in result.items:
        it["depth"] = [paths[p]["depth"] for p in it["images"]]
        it["masks"] = [paths[p]["mask"] for p in it["images"]]
    return files


def _resolve_images(result: SceneResult) -> None:
    """Items name renders by render name; turn those into relative image paths."""
    for it in result.items:
        it["images"] = [f"images/{n}.png" for n in it["images"]]
        it["image"] = it["images"][0]


# Worker-process state: one Simulator per process, made by the pool initializer.
_SIM: Simulator | None = None
_CFG: GenConfig | None = None


def _init_worker(config: GenConfig) -> None:
    global _SIM, _CFG
    import atexit

    _CFG = config
    _SIM = Simulator(config.width, config.height)
    atexit.register(_SIM.close)


def _job(index: int) -> tuple[int, dict, list[dict], dict]:
    result = build_scene(_SIM, _CFG, index)
    _resolve_images(result)
    files = encode(result, _CFG)
    return index, files, result.items, result.splits


def generate(
    out: str | os.PathLike, n: int, config: GenConfig, workers: int = 2, progress: bool = True
) -> dict:
    """Write a dataset of exactly `n` items to `out`; returns the meta written to dataset.json."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "depth", "masks", "scenes"):
        (root / sub).mkdir(exist_ok=True)
    handles = {name: open(root / f"{name}.jsonl", "w") for name in SPLIT_FILES}
    counts = {name: 0 for name in SPLIT_FILES}
    total, scenes, next_index = 0, 0, 0
    bar = _bar(n, progress)
    pool = None
    try:
        if workers > 1:
            ctx = mp.get_context(
                "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            )
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(config,))
            run = pool.imap
        else:
            _init_worker(config)
            run = map
        while total < n:
            batch = range(next_index, next_index + max(8, 8 * workers))
            next_index = batch.stop
            for _index, files, items, splits in run(_job, batch):
                if total >= n:
                    break
                for rel, data in files.items():
                    (root / rel).write_bytes(data)
                scenes += 1
                items = items[: n - total]
                for it in items:
                    line = json.dumps(it, sort_keys=True) + "\n"
                    for fam, part in splits.items():
                        if part == "train" and held_out_wording(it, config):
                            continue  # unseen wordings are for testing only
                        handles[f"{fam}_{part}"].write(line)
                        counts[f"{fam}_{part}"] += 1
                total += len(items)
                bar.update(len(items))
    finally:
        bar.close()
        for h in handles.values():
            h.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        elif _SIM is not None:
            _SIM.close()
    meta = {
        "schema": SCHEMA,
        "source": "sim",
        "seed": config.seed,
        "config": config.to_dict(),
        "counts": {"items": total, "scenes": scenes, **counts},
        "splits": {
            "random": "scenes dealt to train/val/test at random (70/10/20)",
            "zeroshot": "each category's colours dealt 8/1/3 to train/val/test; a scene's "
            "objects come from one part, so no category-colour concept is shared",
            "files": SPLIT_FILES,
        },
        "relations": {
            "generated": {
                r.name: {"meta_category": r.meta, "frame": r.frame, "rule": r.rule}
                for r in CATALOG.values()
                if r.generated
            },
            "not_generated": NOT_GENERATED,
        },
        "created_by": "vsre generate (vsre_ros.sim_data)",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return meta


def _bar(n: int, progress: bool):
    from tqdm import tqdm

    return tqdm(total=n, unit="item", disable=not progress, desc="generating", smoothing=0.1)


def read_items(root: str | os.PathLike, split: str) -> list[dict]:
    """The items of one split file."""
    path = Path(root) / f"{split}.jsonl"
    if not path.is_file():
        raise ValueError(f"no split {split!r} in {root}; known: {SPLIT_FILES}")
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
