"""`vsre evaluate`: run a model (or read its predictions) on a dataset split and report.

The report (report.json, report.md, PNG plots, predictions.jsonl) goes to `--out`. With
`--templates train` every relation item is asked through all 50 training templates (the
paper's Test-G), which is what instruction consistency and per-template accuracy measure;
`--templates item` asks each item's own question once (Test-S).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vsre_ros.core import grammar
from vsre_ros.core.answers import AnswerKind
from vsre_ros.core.templates import HELDOUT_TEMPLATES, TEMPLATES, Template

from .data import Example, ask, templates_by_ids
from .items import READERS, Item, can_template, load_items
from .metrics import accuracy_by, blind_comparison, evaluate_predictions, flip_rates
from .perturb import PERTURBATIONS, UNTRAINED, by_ids
from .report import write_report
from .scoring import Prediction, read_predictions, score, write_predictions

# --templates choice -> templates every relation item is asked through (None: its own question)
TEMPLATE_SETS: dict[str, list[Template] | None] = {
    "item": None,
    "train": list(TEMPLATES),
    "heldout": list(HELDOUT_TEMPLATES),
    "all": list(TEMPLATES) + list(HELDOUT_TEMPLATES),
}
# --templates choice -> the question grammar's wording split (core.grammar): each relation item
# is asked through one wording of every framing of the split, drawn per item and seed.
GRAMMAR_SETS = {"grammar": "all", "grammar-seen": "seen", "grammar-unseen": "unseen"}
WordingChoice = list[Template] | Callable[[Item], list[Template]] | None


def grammar_wordings(split: str, seed: int = 0) -> Callable[[Item], list[Template]]:
    """Per item, one wording of every framing of a grammar split (deterministic in the item's
    id and `seed`), the item's own question included when it has one of those framings."""

    def wordings(item: Item) -> list[Template]:
        digest = int(hashlib.sha1(item.id.encode()).hexdigest()[:12], 16)
        return list(grammar.one_per_framing(np.random.default_rng([seed, digest]), split))

    return wordings


def resolve_templates(spec: str, seed: int = 0) -> WordingChoice:
    """A template set by name (see TEMPLATE_SETS, GRAMMAR_SETS) or a comma-separated list of
    template or wording ids."""
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    if spec in GRAMMAR_SETS:
        return grammar_wordings(GRAMMAR_SETS[spec], seed)
    if "," in spec or spec[:1] in ("t", "h") or spec.startswith("g/"):
        return templates_by_ids([s.strip() for s in spec.split(",") if s.strip()])
    known = ", ".join([*TEMPLATE_SETS, *GRAMMAR_SETS])
    raise ValueError(f"unknown template set {spec!r}; known: {known}, or ids like t00,t20")


def build_examples(items: Sequence[Item], templates: WordingChoice) -> list[Example]:
    """Every question the evaluation asks: per relation item one per template, else one."""
    examples = []
    for item in items:
        chosen = templates(item) if callable(templates) else templates
        if chosen and can_template(item):
            examples.extend(ask(item, t) for t in chosen)
        else:
            examples.append(ask(item))
    return examples


def perturbation_sample(examples: Sequence[Example], n: int) -> list[Example]:
    """Up to `n` yes/no and choice questions for the perturbation check (a number's text
    changes with any nudge), spread over the tasks: a stable hash orders them, so the same
    data gives the same sample."""

    def key(ex: Example) -> str:
        return hashlib.sha1(f"{ex.item.id}|{ex.template_id}".encode()).hexdigest()

    kept = [ex for ex in examples if ex.kind in (AnswerKind.YES_NO, AnswerKind.CHOICE)]
    return sorted(kept, key=key)[: max(0, n)]


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


def blind_row(items: Sequence[Item], predictions: list[Prediction], sighted: list) -> dict:
    """The baseline row of the model answering the same questions with grey images, with
    per-task sighted accuracy beside it and the tasks where blind comes within
    metrics.BLIND_MARGIN of sighted flagged."""
    by_id = {item.id: item for item in items}
    rows = [score(by_id[p.item_id], p) for p in predictions]
    return {**blind_comparison(sighted, rows), "by_task_accuracy": accuracy_by(rows, "task")}


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
        help="item (own question), train (50 templates), heldout, all, grammar (one wording "
        "of every framing, seen and held out), grammar-seen, grammar-unseen, or ids t00,t20",
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
        action=argparse.BooleanOptionalAction,
        default=True,
        help="baseline: the same questions with grey images, per task, flagging tasks where "
        "blind comes within 10 points of sighted (default on; --no-blind skips it)",
    )
    parser.add_argument(
        "--perturb",
        type=int,
        default=100,
        help="ask this many questions again under each of --perturbations (by default "
        "brightness x0.8/x1.2, 1-pixel shift, JPEG 70) and report how many answers flip "
        "(default 100; 0 skips)",
    )
    parser.add_argument(
        "--perturbations",
        default=",".join(PERTURBATIONS),
        help="comma-separated perturbation ids for --perturb (default: "
        f"{','.join(PERTURBATIONS)}; kinds no training augmentation draws: "
        f"{','.join(UNTRAINED)})",
    )
    parser.add_argument(
        "--wording-seed", type=int, default=0, help="seed of the grammar wordings drawn (0)"
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
        if args.perturb < 0:
            raise ValueError(f"--perturb must be 0 or more, got {args.perturb}")
        transforms = by_ids(args.perturbations)
        blind, flips = None, None
        if args.predictions:
            predictions = read_predictions(args.predictions)
        else:
            examples = build_examples(items, resolve_templates(args.templates, args.wording_seed))
            predictions = predict(args.model, examples, args.batch_size, args.device)
            write_predictions(out / "predictions.jsonl", predictions)
            if args.blind:
                blind = predict(args.model, examples, args.batch_size, args.device, True)
            if args.perturb:
                flips = perturbation_flips(args, items, examples, predictions, transforms)
        report = evaluate_predictions(
            items,
            predictions,
            train_items=train_items,
            exclude_overlap=args.exclude_overlap,
            overlap_by_content=args.overlap_by_content,
            n_bins=args.bins,
        )
        excluded = set(report["overlap"]["items"]) if args.exclude_overlap else set()
        if blind is not None:
            by_id = {item.id: item for item in items}
            kept = [p for p in blind if p.item_id not in excluded]
            sighted = [
                score(by_id[p.item_id], p) for p in predictions if p.item_id not in excluded
            ]
            report["baselines"]["blind_model"] = blind_row(items, kept, sighted)
        if flips is not None:
            report["perturbation"] = flips
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
    blind_model = report["baselines"].get("blind_model")
    if blind_model:
        flagged = ", ".join(blind_model["flagged"]) or "none"
        print(
            f"blind (grey image) {_fmt(blind_model['accuracy'])}; tasks within "
            f"{100 * blind_model['margin']:.0f} points of sighted: {flagged}"
        )
    gap = report["wordings"]["unseen_minus_seen"]
    if gap is not None:
        print(f"unseen wordings minus seen: {100 * gap:+.1f} points")
    if "perturbation" in report:
        print(
            f"answers flipped by a perturbation: {_fmt(report['perturbation']['any'])} "
            f"of {report['perturbation']['n']}"
        )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def perturbation_flips(
    args: argparse.Namespace,
    items: Sequence[Item],
    examples: Sequence[Example],
    predictions: Sequence[Prediction],
    transforms: dict[str, Callable[[np.ndarray], np.ndarray]],
) -> dict:
    """Ask a sample of the questions again under each of `transforms`; the flip rates."""
    from .model_api import answer_examples

    sample = perturbation_sample(examples, args.perturb)
    position = {id(ex): k for k, ex in enumerate(examples)}
    reference = [predictions[position[id(ex)]] for ex in sample]
    perturbed = {
        name: answer_examples(
            args.model, sample, args.batch_size, args.device, image_transform=transform
        )
        for name, transform in transforms.items()
    }
    return flip_rates(reference, perturbed, list(items))


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"
