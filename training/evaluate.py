"""`vsre evaluate`: run a model (or read its predictions) on a dataset split and report.

The report (report.json, report.md, PNG plots, predictions.jsonl) goes to `--out`. With
`--templates train` every relation item is asked through all 50 training templates (the
paper's Test-G), which is what instruction consistency and per-template accuracy measure;
`--templates item` asks each item's own question once (Test-S).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from vsre_ros.core.templates import HELDOUT_TEMPLATES, TEMPLATES, Template

from .data import Example, ask, templates_by_ids
from .items import READERS, Item, can_template, load_items
from .metrics import accuracy_by, evaluate_predictions
from .report import write_report
from .scoring import Prediction, read_predictions, score, write_predictions

# --templates choice -> templates every relation item is asked through (None: its own question)
TEMPLATE_SETS: dict[str, list[Template] | None] = {
    "item": None,
    "train": list(TEMPLATES),
    "heldout": list(HELDOUT_TEMPLATES),
    "all": list(TEMPLATES) + list(HELDOUT_TEMPLATES),
}


def resolve_templates(spec: str) -> list[Template] | None:
    """A template set by name (see TEMPLATE_SETS) or a comma-separated list of template ids."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    if "," in spec or spec[:1] in ("t", "h"):
        return templates_by_ids([s.strip() for s in spec.split(",") if s.strip()])
    raise ValueError(
        f"unknown template set {spec!r}; known: {', '.join(TEMPLATE_SETS)}, or ids like t00,t20"
    )


def build_examples(items: Sequence[Item], templates: list[Template] | None) -> list[Example]:
    """Every question the evaluation asks: per relation item one per template, else one."""
    examples = []
    for item in items:
        if templates and can_template(item):
            examples.extend(ask(item, t) for t in templates)
        else:
            examples.append(ask(item))
    return examples


def predict(
    model: str,
    examples: Sequence[Example],
    batch_size: int = 32,
    device: str = "cpu",
    blank_images: bool = False,
) -> list[Prediction]:
    """Answers of a model (checkpoint directory or preset id) to the examples, via the engine."""
    from .model_api import answer_examples

    return answer_examples(
        model, examples, batch_size=batch_size, device=device, blank_images=blank_images
    )


def blind_row(items: Sequence[Item], predictions: list[Prediction]) -> dict:
    """The baseline row of the model answering with blank images."""
    by_id = {item.id: item for item in items}
    rows = [score(by_id[p.item_id], p) for p in predictions]
    n = len(rows)
    return {
        "n": n,
        "accuracy": sum(r.correct for r in rows) / n if n else None,
        "by_task": accuracy_by(rows, "task"),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (or VSR jsonl folder)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument(
        "--format", default="vsre", choices=sorted(READERS), help="dataset format (vsre)"
    )
    parser.add_argument("--images", default=None, help="image folder (needed for format vsr)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model checkpoint directory or preset id")
    source.add_argument("--predictions", help="score a predictions.jsonl instead of a model")
    parser.add_argument(
        "--templates",
        default="item",
        help="item (own question), train (50 templates), heldout, all, or ids t00,t20",
    )
    parser.add_argument("--train-data", default=None, help="training dataset, for overlap")
    parser.add_argument("--train-split", default=None, help="training split (default: train)")
    parser.add_argument(
        "--exclude-overlap", action="store_true", help="drop test items found in training data"
    )
    parser.add_argument(
        "--overlap-by-content",
        action="store_true",
        help="compare images by their bytes rather than their file names",
    )
    parser.add_argument("--out", default="eval_out", help="output directory (eval_out)")
    parser.add_argument("--batch-size", type=int, default=32, help="questions per forward")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto (cpu)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N items")
    parser.add_argument("--bins", type=int, default=10, help="calibration bins (10)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--blind",
        action="store_true",
        help="add a baseline row: the same model answering with blank (grey) images",
    )


def run(args: argparse.Namespace) -> int:
    try:
        items = load_items(args.data, args.split, args.format, args.images)
        if args.limit:
            items = items[: args.limit]
        train_items = None
        if args.train_data or args.train_split:
            train_items = load_items(
                args.train_data or args.data,
                args.train_split or "train",
                args.format,
                args.images,
            )
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if args.predictions:
            predictions = read_predictions(args.predictions)
        else:
            examples = build_examples(items, resolve_templates(args.templates))
            predictions = predict(args.model, examples, args.batch_size, args.device)
            write_predictions(out / "predictions.jsonl", predictions)
            if args.blind:
                blind = predict(args.model, examples, args.batch_size, args.device, True)
        report = evaluate_predictions(
            items,
            predictions,
            train_items=train_items,
            exclude_overlap=args.exclude_overlap,
            overlap_by_content=args.overlap_by_content,
            n_bins=args.bins,
        )
        if args.blind and not args.predictions:
            excluded = set(report["overlap"]["items"]) if args.exclude_overlap else set()
            kept = [p for p in blind if p.item_id not in excluded]
            report["baselines"]["blind_model"] = blind_row(items, kept)
    except (FileNotFoundError, ValueError) as err:
        print(f"vsre evaluate: {err}", file=sys.stderr)
        return 2
    report.update(
        model=args.model or f"predictions {args.predictions}",
        data=str(args.data),
        split=args.split,
        templates=args.templates,
    )
    written = write_report(report, out, plots=not args.no_plots)
    accuracy = report["accuracy"]
    majority = report["baselines"]["majority"]["accuracy"]
    print(
        f"accuracy {_fmt(accuracy)} on {report['n_predictions']} answers "
        f"({report['n_items']} items); majority baseline {_fmt(majority)}; "
        f"text-only {_fmt(report['baselines']['text_only']['accuracy'])}"
    )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"
