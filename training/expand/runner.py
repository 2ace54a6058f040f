"""The runner: work list, shards across processes, resume, manifest and merge.

The work list is one unit per (source item, variant); under `accelerate launch` (GPUs) or
`torchrun` (CPU processes) each process takes every n-th unit and writes its own
`parts/manifest-<rank>.jsonl` and `parts/items-<rank>.jsonl`; the main process merges them into
`manifest.jsonl`, `train.jsonl` and `dataset.json`. A unit counts as done once its manifest row
is written, so a re-run skips it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from vsre_ros.training.items import Item, load_items

from .modes import DIFFUSION_MODES
from .units import MODES, SCHEMA, ExpandConfig, Output, Unit, unit_seed

# --------------------------------------------------------------------------------------------
# The runner: work list, shards, resume, manifest


@dataclass
class Shard:
    """Which share of the work list this process takes."""

    index: int = 0  # this process's rank
    count: int = 1  # number of processes
    is_main: bool = True  # the process that merges
    wait: Callable[[], None] = lambda: None  # barrier between processes
    device: str = "cpu"  # this process's device

    @classmethod
    def from_accelerate(cls, device: str = "") -> Shard:
        """This process's share under `accelerate launch` (GPUs) or `torchrun` (CPU processes:
        accelerate only joins them into one group when told it runs on the CPU)."""
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
        return cls(
            state.process_index,
            state.num_processes,
            state.is_main_process,
            state.wait_for_everyone,
            str(state.device),
        )


def _parts(out: Path, kind: str) -> list[Path]:
    return sorted((out / "parts").glob(f"{kind}-*.jsonl"))


def _read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by a killed process: its unit is simply redone
    return rows


def done_units(out: Path) -> set[str]:
    """Units that already have a manifest row (from any process of any earlier run)."""
    return {row["unit"] for row in _read_rows(_parts(out, "manifest"))}


def plan(cfg: ExpandConfig, items: list[Item], accepts: Callable[[Item], str]):
    """(units, skipped) for the source items: every item x variant the mode can take."""
    units, skipped = [], Counter()
    for item in items[: cfg.limit or None]:
        why = accepts(item)
        if why:
            skipped[why] += 1
            continue
        for k in range(cfg.per_item):
            unit_id = f"{item.id}~{cfg.mode}~{k}"
            units.append(Unit(unit_id, item, k, unit_seed(cfg.seed, unit_id)))
    return units, skipped


# A split whose name ends in one of these (after "_" or "-", or alone) holds evaluation items:
# expansion never reads it as a source, and drops source items it also holds.
HELD_OUT_SPLITS = ("val", "valid", "validation", "dev", "test")


def is_held_out(split: str) -> bool:
    """Whether a split name says it is for evaluation (random_val, zeroshot_test, dev, ...)."""
    last = split.lower().replace("-", "_").rsplit("_", 1)[-1]
    return last in HELD_OUT_SPLITS


def _split_names(cfg: ExpandConfig) -> list[str]:
    root = Path(cfg.data)
    if root.is_file():
        root = root.parent
    return sorted(p.stem for p in root.glob("*.jsonl") if p.stem not in ("manifest", "provenance"))


def default_split(cfg: ExpandConfig) -> str:
    """The one split expanded when none is named: "train", else the only split named *train."""
    names = _split_names(cfg)
    if "train" in names:
        return "train"
    trains = [n for n in names if n.endswith("train") and not is_held_out(n)]
    if len(trains) == 1:
        return trains[0]
    raise ValueError(
        f"{cfg.data}: name the split to expand with --split (it has {', '.join(names) or 'none'}"
        "); several training splits often share items, and expanding them together makes "
        "duplicates"
    )


def _content(item: Item) -> tuple:
    """What makes two items one example, whatever their ids (VSR's splits give one image and
    caption a different id in each split): the images and what is asked about them."""
    images = tuple(Path(p).name for p in (item.images or [item.image]))
    return images, item.caption or item.question, item.subj, item.relation, item.obj


def source_items(cfg: ExpandConfig, dropped: Counter | None = None) -> list[Item]:
    """The source items: one split by default, never a held-out split, each example once, and
    none that a held-out split of the same dataset also holds (it would leak into training).
    What is left out is counted in `dropped` (reason -> items)."""
    dropped = Counter() if dropped is None else dropped
    names = list(dict.fromkeys(cfg.splits)) or [default_split(cfg)]
    refused = [n for n in names if is_held_out(n)]
    if refused:
        raise ValueError(
            f"split(s) {', '.join(refused)} hold evaluation items; expansion takes training "
            "splits only"
        )
    held_out = set()
    for name in _split_names(cfg):
        if is_held_out(name):
            held_out |= {_content(i) for i in load_items(cfg.data, name, cfg.fmt,
                                                           cfg.images or None)}  # fmt: skip
    items, seen = [], set()
    for name in names:
        for item in load_items(cfg.data, name, cfg.fmt, cfg.images or None):
            key = _content(item)
            if key in held_out:
                dropped["also in a held-out split of the source (would leak)"] += 1
            elif (*key, item.answer) in seen:
                dropped["duplicate of an item already taken (same image, question, answer)"] += 1
            else:
                seen.add((*key, item.answer))
                items.append(item)
    return items


def _save(out: Path, output: Output) -> list[dict]:
    """Write an accepted output's files; return its items as jsonl rows."""
    name = _image_name(output)
    image_rel = f"images/{name}.png"
    Image.fromarray(output.image).save(out / image_rel)
    mask_rel = None
    if output.masks is not None:
        mask_rel = f"masks/{name}.png"
        Image.fromarray(output.masks).save(out / mask_rel)
    scene_id = ""
    if output.scene is not None:
        scene_id = name
        (out / "scenes" / f"{name}.json").write_text(json.dumps(output.scene))
    rows = []
    for item in output.items:
        item.image, item.images, item.masks = image_rel, [image_rel], [mask_rel]
        depth = item.depth[0] if item.depth else None
        if output.depth is not None:
            np.save(out / "depth" / f"{name}.npy", output.depth, allow_pickle=False)
            item.depth = [f"depth/{name}.npy"]
        elif depth:
            # Restyling keeps the geometry, so the source's depth still describes the image.
            target = out / "depth" / f"{name}.npy"
            target.write_bytes((Path(output.unit.item.root) / depth).read_bytes())
            item.depth = [f"depth/{name}.npy"]
        else:
            item.depth = [None]
        item.scene_id = scene_id
        item.seed = output.unit.seed
        rows.append(item.to_json())
    return rows


def _image_name(output: Output) -> str:
    return output.unit.unit_id.replace("/", "_")


def _manifest_row(cfg: ExpandConfig, output: Output, shard: Shard, image: str) -> dict:
    verdict = output.verdict
    return {
        "unit": output.unit.unit_id,
        "image": image,
        "source_item": output.unit.item.id,
        "source": output.unit.item.source,
        "mode": cfg.mode,
        "prompt": output.prompt,
        "seed": output.unit.seed,
        "verdict": "accepted" if verdict.accepted else "rejected",
        "relation_check": verdict.status,
        "failed": verdict.failed,
        "reasons": verdict.reasons,
        "checks": verdict.checks,
        "items": [i.id for i in output.items] if verdict.accepted else [],
        "process": shard.index,
        **output.extra,
    }


def make_producer(cfg: ExpandConfig, device: str):
    """(accepts, produce, close) for the mode: produce(units) -> list[Output]."""
    if cfg.mode == "sim":
        from .sim import SimExpander

        expander = SimExpander(cfg)
        return expander.accepts, expander.produce, expander.close
    if cfg.mode not in DIFFUSION_MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; known: {', '.join(MODES)}")
    from .diffusion import DiffusionBackend, GenerationConfig

    generation = GenerationConfig(**cfg.generation)
    mode = DIFFUSION_MODES[cfg.mode](cfg, generation)
    backend = None

    def produce(units: list[Unit]) -> list[Output]:
        nonlocal backend
        if backend is None:  # loaded on first use: a resumed run with nothing to do skips it
            backend = DiffusionBackend(cfg.mode, cfg.model_dir, generation, device)
        requests = [mode.request(u) for u in units]
        images = backend.generate(requests)
        outputs = []
        for unit, request, image in zip(units, requests, images, strict=True):
            # Back to the source's size, where its boxes, masks and depth are valid; the noise
            # check reads the image as generated (resizing smooths noise).
            generated = image
            if request.image is not None and image.shape[:2] != request.image.shape[:2]:
                height, width = request.image.shape[:2]
                image = np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))
            outputs.append(mode.check_noise(mode.finish(unit, request, image), generated, request))
        return outputs

    return mode.accepts, produce, lambda: None


@dataclass
class ExpandReport:
    """Counts of one run (this process's share) and of the merged dataset."""

    planned: int = 0  # units in the whole work list
    mine: int = 0  # units assigned to this process
    skipped_done: int = 0  # of those, already in a manifest (resume)
    generated: int = 0  # produced in this run
    not_expandable: dict = field(default_factory=dict)  # reason -> source items left out
    verdicts: dict = field(default_factory=dict)  # merged: accepted/rejected counts
    reasons: dict = field(default_factory=dict)  # merged: failed check id -> rejected outputs
    items: int = 0  # merged: items in train.jsonl
    noise: tuple[int, int] = (0, 0)  # merged: (outputs that were noise, outputs checked)


def expand(cfg: ExpandConfig, shard: Shard | None = None) -> ExpandReport:
    """Run (this process's share of) an expansion; the main process merges at the end."""
    shard = shard or Shard()
    out = Path(cfg.out)
    for sub in ("images", "masks", "scenes", "depth", "parts"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    accepts, produce, close = make_producer(cfg, cfg.device or shard.device)
    dropped: Counter = Counter()
    units, not_expandable = plan(cfg, source_items(cfg, dropped), accepts)
    not_expandable.update(dropped)
    report = ExpandReport(planned=len(units), not_expandable=dict(not_expandable))
    mine = units[shard.index :: shard.count]
    done = done_units(out)
    todo = [u for u in mine if u.unit_id not in done]
    report.mine, report.skipped_done = len(mine), len(mine) - len(todo)
    batches = [todo[i : i + cfg.batch_size] for i in range(0, len(todo), cfg.batch_size)]
    try:
        _produce_all(cfg, shard, out, batches, produce, report)
    finally:
        close()
    shard.wait()
    if shard.is_main:
        merge(cfg, report)
    return report


def _produce_all(cfg, shard, out, batches, produce, report) -> None:
    from tqdm import tqdm

    manifest_path = out / "parts" / f"manifest-{shard.index:05d}.jsonl"
    items_path = out / "parts" / f"items-{shard.index:05d}.jsonl"
    total = sum(len(b) for b in batches)
    with (
        open(manifest_path, "a") as manifest,
        open(items_path, "a") as item_rows,
        tqdm(total=total, desc=f"expand {cfg.mode}", unit="img", disable=None) as bar,
    ):
        for batch in batches:
            for output in produce(batch):
                image = ""
                if output.verdict.accepted:
                    for row in _save(out, output):
                        item_rows.write(json.dumps(row) + "\n")
                    item_rows.flush()
                    image = f"images/{_image_name(output)}.png"
                elif cfg.save_rejected and output.image is not None:
                    # Kept apart, for tuning thresholds by eye; never part of the dataset.
                    image = f"rejected/{_image_name(output)}.png"
                    (out / "rejected").mkdir(exist_ok=True)
                    Image.fromarray(output.image).save(out / image)
                # The manifest row comes last: a unit counts as done only once it is complete.
                manifest.write(json.dumps(_manifest_row(cfg, output, shard, image)) + "\n")
                manifest.flush()
                report.generated += 1
                bar.update(1)


def merge(cfg: ExpandConfig, report: ExpandReport | None = None) -> ExpandReport:
    """Merge every process's parts into manifest.jsonl, train.jsonl and dataset.json."""
    report = report or ExpandReport()
    out = Path(cfg.out)
    manifest = {row["unit"]: row for row in _read_rows(_parts(out, "manifest"))}
    accepted = {
        i for row in manifest.values() if row["verdict"] == "accepted" for i in row["items"]
    }
    items = {row["id"]: row for row in _read_rows(_parts(out, "items")) if row["id"] in accepted}
    with open(out / "manifest.jsonl", "w") as handle:
        for unit in sorted(manifest):
            handle.write(json.dumps(manifest[unit]) + "\n")
    with open(out / "train.jsonl", "w") as handle:
        for item_id in sorted(items):
            handle.write(json.dumps(items[item_id]) + "\n")
    verdicts = Counter(row["verdict"] for row in manifest.values())
    # Each rejection counts once under each check it failed; rows of older runs, which did
    # not record that, count under "unrecorded".
    reasons = Counter(
        check
        for row in manifest.values()
        if row["verdict"] == "rejected"
        for check in row.get("failed", ["unrecorded"])
    )
    checked = [row for row in manifest.values() if "smoothness" in row.get("checks", {})]
    noise = sum(1 for row in checked if "noise" in row.get("failed", []))
    report.verdicts, report.reasons, report.items = dict(verdicts), dict(reasons), len(items)
    report.noise = (noise, len(checked))
    meta = {
        "schema": SCHEMA,
        "source": "expand",
        "seed": cfg.seed,
        "config": asdict(cfg),
        "counts": {
            "units": len(manifest),
            "accepted": verdicts.get("accepted", 0),
            "rejected": verdicts.get("rejected", 0),
            "by_relation_check": dict(Counter(r["relation_check"] for r in manifest.values())),
            "rejected_by_check": dict(reasons),
            "noise": {"outputs": noise, "checked": len(checked)},
            "items": len(items),
        },
        "splits": {"train": len(items)},
        "created_by": "vsre expand",
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return report
