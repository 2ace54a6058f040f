"""The weekly loop as one command: `vsre retrain --bags BAG... --current MODEL --export DIR`.

1. ingest: the bags become a dataset (`training.bags`); frames whose queries were corrected
   are labelled by the corrections; a share of the split groups (frames within
   `--split-window` seconds, any camera) is held out (`test`) unless a separate held-out
   dataset is given. The held-out set is checked here, before anything trains;
2. expand: the ingested training items are expanded (`training.expand`; `sim` by default,
   which re-renders the scenes that SceneTruth messages carried; `none` skips it);
3. stage 2: the current model is tuned (projectors + LoRA) on the ingested, expanded and any
   extra datasets (`training.train`, one stage, starting from the current checkpoint);
4. compare: the previous and the new model answer the same held-out questions
   (`training.evaluate`), and the comparison is printed;
5. export: only if the new model is not worse (accuracy >= previous - tolerance) is it copied
   to `<export>/model-NNNN/`, and `<export>/current` (a symlink) is switched to it atomically;
   a model byte-identical to an earlier export (a turn run twice) is not exported again.

A running VSRE server switches to the result at runtime by setting its `model` parameter,
e.g. `ros2 param set /vsre_server model <export>/current`; it keeps answering with the old
model if the new one fails to load. Every step's outputs stay in `--work/turn-<id>`, where the
id is a fingerprint of the inputs (bags, current model, settings): re-running the same turn
resumes it (expansion skips done units, training resumes from its checkpoint), while new bags
or a new model start a fresh turn instead of reusing a stale result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vsre_ros.training.items import Item, load_items, read_vsre, splits

SCHEMA = "vsre-dataset/1"
NOTHING_TO_TRAIN = (
    "nothing to train on: no corrected queries in the bags (see the skipped reasons above; "
    "--use-model-answers keeps uncorrected ones) and no --extra-data"
)
EXPAND_CHOICES = ("none", "sim", "txt2img", "img2img", "inpaint", "layout")


@dataclass
class RetrainConfig:
    """One turn of the loop."""

    bags: list[str]  # rosbag2 bags recorded from robots running the node
    current: str  # the model deployed now (checkpoint directory)
    export: str  # where accepted models go (versions + the `current` symlink)
    work: str = "retrain_work"  # working directory (ingested, expanded, combined, run)
    heldout: str = ""  # held-out dataset directory; "" = the bags' own held-out frames
    heldout_split: str = "test"  # split of the held-out dataset
    extra_data: list[str] = field(default_factory=list)  # more vsre datasets to train on
    use_model_answers: bool = False  # also train on uncorrected answers (see `vsre ingest`)
    test_fraction: float = 0.2  # share of bag frames held out when no heldout dataset is given
    split_window: float = 10.0  # s: bag frames this close (any camera) share a split group
    expand_mode: str = "sim"  # an expansion mode, or "none"
    expand_model: str = ""  # diffusers directory for the diffusion modes
    per_item: int = 1  # expansion outputs per ingested item
    steps: int = 200  # stage-2 optimiser steps
    batch_size: int = 8  # stage-2 batch size
    lr: float = 2e-4  # stage-2 learning rate
    templates: str = "item"  # how held-out relation items are asked (evaluate's template sets)
    tolerance: float = 0.0  # export when new accuracy >= previous accuracy - tolerance
    seed: int = 0  # seeds ingestion splits, expansion and training
    device: str = "cpu"  # device for the evaluation
    eval_batch_size: int = 32  # questions per forward in the evaluation
    progress: bool = True  # progress bars


@dataclass
class Comparison:
    """Previous vs new model on the same held-out questions."""

    n_items: int  # held-out items
    n_questions: int  # questions asked (items x templates)
    previous: dict  # metric -> value for the deployed model
    new: dict  # metric -> value for the retrained model
    export: bool  # whether the new model is exported
    reason: str  # why (or why not)

    def table(self) -> str:
        lines = [
            f"held-out: {self.n_items} items, {self.n_questions} questions",
            f"{'':24s}{'previous':>10s}{'new':>10s}{'change':>10s}",
        ]
        for key in self.previous:
            old, new = self.previous[key], self.new.get(key)
            change = "-" if old is None or new is None else f"{100 * (new - old):+.1f}"
            lines.append(f"{key:24s}{_pct(old):>10s}{_pct(new):>10s}{change:>10s}")
        lines.append(f"decision: {'export' if self.export else 'keep the previous model'}")
        lines.append(f"  ({self.reason})")
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.1f}%"
    )


def decide_export(previous: float | None, new: float | None, tolerance: float) -> tuple[bool, str]:
    """Export only a model that is not worse than the previous one on the held-out set."""
    if new is None:
        return False, "the new model answered no held-out question"
    if previous is None:
        return True, "the previous model has no held-out accuracy to beat"
    if new >= previous - tolerance:
        return True, f"new accuracy {new:.4f} >= previous {previous:.4f} - tolerance {tolerance}"
    return False, f"new accuracy {new:.4f} < previous {previous:.4f} - tolerance {tolerance}"


# --------------------------------------------------------------------------------------------
# Steps


def combine(sources: list[tuple[Path, str]], out: Path) -> int:
    """Write one `train` split whose items point (relatively) at the sources' files."""
    out.mkdir(parents=True, exist_ok=True)
    rows, seen = [], set()
    for root, split in sources:
        for item in read_vsre(root, split):
            if item.id in seen:
                continue
            seen.add(item.id)
            row = item.to_json()
            row["image"] = _rel(root, item.image, out)
            row["images"] = [_rel(root, p, out) for p in item.images]
            row["depth"] = [_rel(root, p, out) if p else None for p in item.depth]
            row["masks"] = [_rel(root, p, out) if p else None for p in item.masks]
            rows.append(row)
    with open(out / "train.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    meta = {
        "schema": SCHEMA,
        "source": "retrain",
        "seed": 0,
        "config": {"sources": [[str(r), s] for r, s in sources]},
        "counts": {"items": len(rows)},
        "splits": {"train": len(rows)},
        "created_by": "vsre retrain",
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return len(rows)


def _rel(root: Path, path: str, out: Path) -> str:
    return os.path.relpath(Path(root, path).resolve(), out.resolve())


def evaluate_models(models: dict[str, str], items: list[Item], cfg: RetrainConfig):
    """Per model name: the evaluator's report on the same questions; and the question count."""
    from .evaluate import build_examples, predict, resolve_templates
    from .metrics import evaluate_predictions

    examples = build_examples(items, resolve_templates(cfg.templates))
    reports = {}
    for name, model in models.items():
        predictions = predict(model, examples, cfg.eval_batch_size, cfg.device)
        reports[name] = evaluate_predictions(items, predictions)
    return reports, len(examples)


def headline(report: dict) -> dict:
    """The numbers the comparison prints: accuracy, consistency, yes-rate."""
    return {
        "accuracy": report.get("accuracy"),
        "template consistency": (report.get("consistency") or {}).get("share"),
        "predicted yes rate": (report.get("bias") or {}).get("predicted_true_rate"),
    }


def model_digest(model_dir: Path) -> str:
    """sha256 over a model directory's files (relative paths and bytes): equal digests, equal
    models."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def exported_copy(digest: str, export_root: Path) -> str:
    """The name of an export whose files equal `digest` ("" if none): a re-run of a turn
    produces the same model, and exporting it again would only add a second version of it."""
    known: dict[str, str] = {}
    history = export_root / "history.jsonl"
    if history.is_file():
        for line in history.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("digest"):
                known[row["model"]] = row["digest"]
    for folder in sorted(export_root.glob("model-[0-9]*")):
        if folder.is_dir() and (known.get(folder.name) or model_digest(folder)) == digest:
            return folder.name
    return ""


def export_model(model_dir: Path, export_root: Path, record: dict) -> Path:
    """Copy a model to the next `model-NNNN` and point `current` at it (atomic renames)."""
    export_root.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-")[1]) for p in export_root.glob("model-[0-9]*") if p.is_dir()]
    name = f"model-{max(numbers, default=0) + 1:04d}"
    staging = export_root / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(model_dir, staging)
    # Training writes through private temp dirs (0700); the node may run as another user.
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    target = export_root / name
    os.replace(staging, target)
    link = export_root / ".current-new"
    link.unlink(missing_ok=True)
    link.symlink_to(name)
    os.replace(link, export_root / "current")
    with open(export_root / "history.jsonl", "a") as handle:
        handle.write(json.dumps({"model": name, **record}) + "\n")
    return target


def _stat(path: Path) -> list:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(f.relative_to(path)) if f != path else f.name, f.stat().st_size,
             f.stat().st_mtime_ns] for f in files]  # fmt: skip


def fingerprint(cfg: RetrainConfig) -> str:
    """Id of a turn's inputs: the same bags, model and settings resume the same work directory;
    anything new (another week's bags, another model) starts a fresh one."""
    inputs = {
        "bags": [[str(Path(b).resolve()), _stat(Path(b))] for b in cfg.bags],
        "current": [str(Path(cfg.current).resolve()), _stat(Path(cfg.current))],
        "extra_data": [str(Path(d).resolve()) for d in cfg.extra_data],
        **{
            key: getattr(cfg, key)
            for key in (
                "heldout", "heldout_split", "use_model_answers", "test_fraction", "split_window",
                "expand_mode",
                "expand_model", "per_item", "steps", "batch_size", "lr", "seed",
            )
        },
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return digest[:12]


def no_heldout_advice(cfg: RetrainConfig, report) -> str:
    """Why there is nothing held out, and what would change that."""
    if cfg.heldout:
        return f"--heldout {cfg.heldout} has no items in split {cfg.heldout_split!r}"
    groups = sum(report.groups.values())
    if cfg.test_fraction <= 0:
        return "no held-out items: --test-fraction is 0 and no --heldout DIR is given"
    if groups < 2:
        return (
            f"no held-out items: the bags' frames form {groups} split group(s) of "
            f"--split-window {cfg.split_window:g} s, and one group cannot be both trained on and "
            "held out; give a shorter --split-window (frames that far apart must not be "
            "near-duplicates) or --heldout DIR"
        )
    return (
        f"no held-out items among {groups} split groups (no corrected query fell in them); "
        "give --heldout DIR"
    )


def retrain(cfg: RetrainConfig) -> dict:
    """Run the loop; returns (and writes to <work>/<turn>/retrain_report.json) what happened."""
    from .bags import IngestConfig, ingest
    from .config import StageConfig, TrainConfig
    from .train import train

    if not Path(cfg.current).is_dir():
        raise FileNotFoundError(f"--current {cfg.current} is not a model directory")
    work = Path(cfg.work) / f"turn-{fingerprint(cfg)}"
    work.mkdir(parents=True, exist_ok=True)
    print(f"retrain: working in {work}")
    current = Path(cfg.current)
    if cfg.expand_mode not in EXPAND_CHOICES:
        raise ValueError(
            f"unknown expand mode {cfg.expand_mode!r}; known: {', '.join(EXPAND_CHOICES)}"
        )

    # 1. ingest
    ingested = work / "ingested"
    held_share = 0.0 if cfg.heldout else cfg.test_fraction
    ingest_report = ingest(
        cfg.bags,
        ingested,
        IngestConfig(
            use_model_answers=cfg.use_model_answers,
            val_fraction=0.0,
            test_fraction=held_share,
            split_window=cfg.split_window,
            seed=cfg.seed,
        ),
    )
    print(ingest_report.summary())
    if not sum(ingest_report.items.values()) and not cfg.extra_data:
        raise ValueError(NOTHING_TO_TRAIN)
    # The held-out set is checked before anything trains: a turn that cannot be compared
    # would only spend the training and then keep the previous model.
    if cfg.heldout:
        heldout = load_items(cfg.heldout, cfg.heldout_split)
    else:
        heldout = read_vsre(ingested, "test") if ingest_report.items.get("test") else []
    if not heldout:
        raise ValueError(no_heldout_advice(cfg, ingest_report))
    sources = [(ingested, "train")] if ingest_report.items.get("train") else []

    # 2. expand
    expanded_items = 0
    if cfg.expand_mode != "none" and sources:
        from .expand import ExpandConfig, expand

        expanded = work / f"expanded-{cfg.expand_mode}"
        report = expand(
            ExpandConfig(
                data=str(ingested),
                out=str(expanded),
                mode=cfg.expand_mode,
                model_dir=cfg.expand_model,
                splits=("train",),
                per_item=cfg.per_item,
                seed=cfg.seed,
            )
        )
        expanded_items = report.items
        print(f"expand {cfg.expand_mode}: {report.verdicts} -> {report.items} items")
        if report.items:
            sources.append((expanded, "train"))
    for extra in cfg.extra_data:
        names = [s for s in splits(extra) if s.endswith("train")]
        sources.extend((Path(extra), s) for s in names)
    combined = work / "combined"
    n_train = combine(sources, combined) if sources else 0
    if not n_train:
        raise ValueError(NOTHING_TO_TRAIN)

    # 3. stage 2 from the current checkpoint
    stage = StageConfig(
        name="stage2",
        freeze="stage2",
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=min(100, max(1, cfg.steps // 10)),
        split="train",
    )
    config = TrainConfig(
        model=str(current),
        data=str(combined),
        output=str(work / "run"),
        seed=cfg.seed,
        save_every=max(50, cfg.steps // 4),
        stages=[stage],
    )
    (result,) = train(config, init=current, progress=cfg.progress)

    # 4. compare on the held-out set
    reports, n_questions = evaluate_models(
        {"previous": str(current), "new": str(result.final_dir)}, heldout, cfg
    )
    previous, new = headline(reports["previous"]), headline(reports["new"])
    export, reason = decide_export(previous["accuracy"], new["accuracy"], cfg.tolerance)
    comparison = Comparison(len(heldout), n_questions, previous, new, export, reason)
    print(comparison.table())

    # 5. export only if not worse, and only once
    exported, duplicate = "", ""
    if export:
        digest = model_digest(Path(result.final_dir))
        duplicate = exported_copy(digest, Path(cfg.export))
        if duplicate:
            print(
                f"not exported: the new model is byte-identical to {Path(cfg.export) / duplicate}"
                " (this turn was run before); nothing changed"
            )
        else:
            record = {"previous": str(current), "comparison": asdict(comparison), "digest": digest}
            exported = str(export_model(Path(result.final_dir), Path(cfg.export), record))
            print(f"exported {exported}; {Path(cfg.export) / 'current'} now points at it")
    summary = {
        "config": asdict(cfg),
        "ingest": {
            "items": ingest_report.items,
            "skipped": ingest_report.skipped,
            "unreadable": ingest_report.unreadable,
            "warnings": ingest_report.notes,
        },
        "expanded_items": expanded_items,
        "train_items": n_train,
        "model": str(result.final_dir),
        "comparison": asdict(comparison),
        "exported": exported,
        "identical_to": duplicate,
    }
    (work / "retrain_report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = RetrainConfig([], "", "")
    parser.add_argument("--bags", nargs="+", required=True, help="rosbag2 bags to learn from")
    parser.add_argument("--current", required=True, help="the deployed model directory")
    parser.add_argument("--export", required=True, help="directory of accepted models")
    parser.add_argument("--work", default=d.work, help="working directory (resumable)")
    parser.add_argument("--heldout", default="", help="held-out dataset (default: bag frames)")
    parser.add_argument("--heldout-split", default=d.heldout_split, help="its split")
    parser.add_argument("--extra-data", action="append", default=[], help="more train data")
    parser.add_argument(
        "--use-model-answers", action="store_true", help="train on uncorrected answers too"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=d.test_fraction, help="bag frames held out"
    )
    parser.add_argument(
        "--split-window",
        type=float,
        default=d.split_window,
        help="s: bag frames this close (any camera) are held out or trained on together",
    )
    parser.add_argument("--expand", default=d.expand_mode, choices=EXPAND_CHOICES, help="mode")
    parser.add_argument("--expand-model", default="", help="diffusers directory for expansion")
    parser.add_argument("--per-item", type=int, default=d.per_item, help="expansion per item")
    parser.add_argument("--steps", type=int, default=d.steps, help="stage-2 steps")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="stage-2 batch")
    parser.add_argument("--lr", type=float, default=d.lr, help="stage-2 learning rate")
    parser.add_argument("--templates", default=d.templates, help="held-out template set")
    parser.add_argument(
        "--tolerance", type=float, default=d.tolerance, help="accuracy the new model may lose"
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="seed")
    parser.add_argument("--device", default=d.device, help="evaluation device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    cfg = RetrainConfig(
        bags=list(args.bags),
        current=args.current,
        export=args.export,
        work=args.work,
        heldout=args.heldout,
        heldout_split=args.heldout_split,
        extra_data=list(args.extra_data),
        use_model_answers=args.use_model_answers,
        test_fraction=args.test_fraction,
        split_window=args.split_window,
        expand_mode=args.expand,
        expand_model=args.expand_model,
        per_item=args.per_item,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        templates=args.templates,
        tolerance=args.tolerance,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    try:
        retrain(cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"vsre retrain: {err}", file=sys.stderr)
        return 2
    return 0
