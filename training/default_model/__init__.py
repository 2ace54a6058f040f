"""`vsre train-default`: the one seeded command that reproduces the embedded default model.

generate (sim_data, seeded) -> curriculum training (`recipes.curriculum`, with the training-only
dense and attention targets) -> evaluation on the held-out random and zero-shot test splits and
across the 50 templates (`training.evaluate`, `training.metrics`) -> export to
`vsre_ros/models/vsre-tiny/` (save_pretrained weights and tokenizer, `MODEL_CARD.md`,
`learning_curve.png`, the evaluation reports).

The training split is the intersection of `random_train` and `zeroshot_train`: it shares no
scene with `random_test` and no scene or category-colour concept with `zeroshot_test`, so both
tests stay held out for one model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vsre_ros.core.config import ENCODER_FAMILIES

from ..config import TrainConfig
from ..items import load_items
from .calibration import calibrate_verdict
from .card import ablation_rows, model_card, pct, refresh_card
from .data import TRAIN_SPLIT, evaluate_split, make_data
from .export import EXPORT_DIR, export

log = logging.getLogger(__name__)


# The shipped model's settings, which are the command's defaults (so that `vsre train-default`
# with no flags reproduces it); `training/recipes/vsre-tiny.yaml` is the training config they
# give (a test holds the two together). Research runs (`recipes/experiment.py`) start from the
# recipe flags' plain defaults instead (no object tokens, averaging or pretraining).
SHIPPED = {
    "n": 200000, "data_version": 2, "steps_a": 2000, "steps_b": 11000, "val_every": 1000,
    "val_items": 300, "threads": 2,
    "object_tokens": 8, "ema_decay": 0.999, "pretrain_steps": 1000, "grounding_weight": 1.0,
    "mix_steps": 6000, "mix_n": 150000, "filler_steps": 2400, "filler_n": 60000,
    "fresh_steps": 2400, "fresh_n": 60000, "robust_steps": 2400, "robust_n": 60000,
    "long_steps": 0, "long_n": 200000,
}  # fmt: skip


@dataclass(frozen=True)
class FreshStage:
    """A stage after the curriculum, on fresh scenes generated beside the run's data, started
    from the stage before's averaged model with a new optimizer (`StageConfig.restart`); its
    steps and item count are the flags --<flag>-steps and --<flag>-n (0 steps: no stage)."""

    flag: str  # "mix" -> --mix-steps, --mix-n; the data directories DATA-mix-v2-s8, ...
    name: str  # stage name
    data: tuple[tuple[int, int], ...]  # (data version, generation seed offset from the data's)
    lr: float
    warmup_steps: int
    decay_share: float
    wording_noise: float = 0.0
    augment: float = 0.0  # share of rows whose pictures are perturbed (`StageConfig.augment`)
    purpose: str = ""  # what the stage is for, in --help

    def datasets(self, args: argparse.Namespace, data: Path) -> list[tuple[Path, int, int]]:
        """(directory, data version, generation seed) of each dataset it trains on, joined in
        this order; none when the stage is off (the experiment tool has no fresh stages)."""
        if getattr(args, f"{self.flag}_steps", 0) < 1:
            return []
        seed = data_seed(args)
        return [(data.with_name(f"{data.name}-{self.flag}-v{version}-s{seed + offset}"),
                 version, seed + offset) for version, offset in self.data]  # fmt: skip


FRESH_STAGES = (
    FreshStage("mix", "B5-mixed", ((2, 8), (1, 7)), 1e-3, 200, 0.4,
               purpose="scenes of data versions 1 and 2, so the model that learned one "
               "version's scenes and wordings sees both"),
    FreshStage("filler", "B6-filler", ((2, 9),), 5e-4, 100, 0.5, wording_noise=0.5,
               purpose="version 2 scenes, half the relation questions with filler words "
               "around them (training/wording_noise.py), for wordings the grammar lacks"),
    FreshStage("fresh", "B7-fresh", ((2, 10),), 5e-4, 100, 0.5, wording_noise=0.5,
               purpose="version 2 scenes, B6's settings again on scenes it never saw"),
    FreshStage("robust", "B8-robust", ((2, 20),), 5e-4, 100, 0.5, wording_noise=0.5,
               augment=0.5, purpose="version 2 scenes, B7's settings with half the rows' "
               "pictures perturbed (brightness, contrast, a shift, JPEG: training/perturb.py)"),
    FreshStage("long", "B9-long", ((2, 30),), 5e-4, 200, 0.5, wording_noise=0.5,
               augment=0.5, purpose="version 2 scenes, B8's settings on more of them; 8,000 steps "
               "from the shipped model moved nothing held out (docs/recipes-tried.md)"),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/vsre-tiny", help="run directory")
    parser.add_argument(
        "--data",
        default="",
        help="dataset directory (default OUT/data; generated there when missing)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the init, batch order and template draws (0)"
    )
    parser.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the generated data and of the held-out items evaluated (default: --seed),"
        " so several training seeds can share one dataset and one test sample",
    )
    parser.add_argument(
        "--n", type=int, default=SHIPPED["n"], help=f"items generated ({SHIPPED['n']})"
    )
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (64)")
    parser.add_argument(
        "--data-version",
        type=int,
        default=SHIPPED["data_version"],
        help="generated data version (sim_data.dataset.DATA_VERSIONS): 1, the VSRE templates "
        "(vsre-tiny v1 learned from it); 2, the question grammar's wordings, real-scale sizes "
        f"varying per object, zero-shot concepts fixed across seeds ({SHIPPED['data_version']})",
    )
    parser.add_argument("--workers", type=int, default=2, help="generator processes (2)")
    parser.add_argument(
        "--curriculum",
        default="relations-grow",
        help="stage plan: relations-grow (default), relations-grow-all, localization-first, "
        "binding-first, basics-first or image-plane-first (training/recipes/curriculum.py)",
    )
    parser.add_argument(
        "--families",
        default=",".join(ENCODER_FAMILIES),
        help="encoder families, comma-separated (all four; the ablation drops one)",
    )
    parser.add_argument(
        "--ablation-runs",
        nargs="*",
        default=[],
        metavar="RUN_DIR",
        help="--out directories of ablation runs (--export none) tabled in the model card",
    )
    parser.add_argument(
        "--ablation-json",
        default="",
        metavar="FILE",
        help="ablation rows an earlier export saved (its ablation.json), tabled before "
        "--ablation-runs",
    )
    for name in ("steps_a", "steps_b"):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=SHIPPED[name],
            help=f"stage {name[-1].upper()} steps ({SHIPPED[name]})",
        )
    for fresh in FRESH_STAGES:
        steps, n = f"{fresh.flag}_steps", f"{fresh.flag}_n"
        versions = " and ".join(str(v) for v, _ in fresh.data)
        parser.add_argument(
            f"--{fresh.flag}-steps",
            type=int,
            default=SHIPPED[steps],
            help=f"a stage {fresh.name} of this many steps after the ones before, on fresh "
            f"{fresh.purpose} (--{fresh.flag}-n items of data version {versions}, generated "
            f"beside the data), from the stage before's averaged model with a new optimizer "
            f"(lr {fresh.lr:g}, {fresh.warmup_steps} warm-up steps, the last "
            f"{100 * fresh.decay_share:.0f}%% decaying) ({SHIPPED[steps]}; 0: none)",
        )
        parser.add_argument(
            f"--{fresh.flag}-n",
            type=int,
            default=SHIPPED[n],
            help=f"items generated per data version for --{fresh.flag}-steps ({SHIPPED[n]})",
        )
    parser.add_argument(
        "--from-export",
        default="",
        metavar="DIR",
        help="an export of this recipe's first stages (its training_metrics.jsonl names "
        "them): start the stages after them from its model, train only those, and keep its "
        "metrics in the learning curve; the data of the stages taken is not generated",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step (16)")
    parser.add_argument(
        "--val-every",
        type=int,
        default=SHIPPED["val_every"],
        help=f"steps between val evals ({SHIPPED['val_every']})",
    )
    parser.add_argument(
        "--val-items",
        type=int,
        default=SHIPPED["val_items"],
        help=f"random_val items per val eval ({SHIPPED['val_items']})",
    )
    parser.add_argument(
        "--eval-items", type=int, default=600, help="test items per split (600; at least 1)"
    )
    parser.add_argument(
        "--consistency-items",
        type=int,
        default=40,
        help="relation test items asked through all 50 templates (40; 0 skips this test)",
    )
    parser.add_argument(
        "--calibration-items",
        type=int,
        default=2000,
        help="random_val yes/no items the verdict bias is fitted on (2000; 0 leaves it at 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=SHIPPED["threads"],
        help=f"torch threads ({SHIPPED['threads']})",
    )
    parser.add_argument(
        "--export", default="", help=f"export directory (default {EXPORT_DIR}); 'none' skips"
    )
    add_recipe_arguments(parser, shipped=True)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    from ..train import add_chunk_argument

    add_chunk_argument(parser)
    parser.add_argument(
        "--refresh-card",
        default="",
        metavar="MODEL_DIR",
        help="only rewrite MODEL_DIR/MODEL_CARD.md's recipe history from "
        "docs/recipes-tried.md (nothing is trained), then exit",
    )


def add_recipe_arguments(parser: argparse.ArgumentParser, shipped: bool = False) -> None:
    """The model-size and loss-weight flags shared with the experiment tool; with `shipped`,
    their defaults are the shipped model's (SHIPPED)."""

    def default(name: str, plain):
        return SHIPPED.get(name, plain) if shipped else plain

    parser.add_argument(
        "--lm-layers",
        type=int,
        default=4,
        help="language-model layers (4: one per binding hop and one to answer)",
    )
    parser.add_argument(
        "--lm-hidden",
        type=int,
        default=128,
        help="language-model width, a multiple of its 4 heads; the FFN is 4x (128)",
    )
    parser.add_argument(
        "--encoder-hidden",
        type=int,
        default=64,
        help="width of each encoder, a multiple of its 4 heads; the MLP is 4x (64)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="side of the encoders' input in pixels, a multiple of 8; the patch is an eighth of"
        " it, so every encoder keeps an 8x8 grid (64). Frames of another size are resized to it",
    )
    parser.add_argument(
        "--fusion-grid",
        type=int,
        default=8,
        help="side of the fused image-token grid (8: 64 tokens; 4: 16, a cheaper step)",
    )
    parser.add_argument(
        "--object-tokens",
        type=int,
        default=default("object_tokens", 0),
        help="object tokens per image read from the SAM map by learned queries, after the "
        "grid tokens (0: none; needs the sam family)",
    )
    parser.add_argument(
        "--object-weight",
        type=float,
        default=1.0,
        help="weight of the object tokens' targets: each image's objects matched to them "
        "(box, depth range, colour, category, pose) and each object phrase's second hop-1 "
        "head pulled to its object's token (1.0; used only with --object-tokens)",
    )
    parser.add_argument(
        "--bank-weight",
        type=float,
        default=1.0,
        help="relation-bank loss weight (1.0; 0 turns the bank off)",
    )
    parser.add_argument(
        "--verdict-weight",
        type=float,
        default=1.0,
        help="weight of the verdict target (statement's truth, its option listed second; "
        "1.0; 0 turns it off)",
    )
    parser.add_argument(
        "--shape-weight",
        type=float,
        default=1.0,
        help="weight of the phrase probe's object-shape term (1.0; 0 turns it off)",
    )
    parser.add_argument(
        "--pose-weight",
        type=float,
        default=0.0,
        help="weight of the pose probe: each object phrase's object's centre in the camera "
        "frame, front and long-axis headings and extents (0.0: off)",
    )
    parser.add_argument(
        "--grounding-weight",
        type=float,
        default=default("grounding_weight", 0.0),
        help="weight of the grounding head (exported with the model: a box per object phrase, "
        "core/grounding.py) (0.0: off)",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=default("ema_decay", 0.0),
        help="average the weights over steps with this decay (e.g. 0.999: about the last 1000 "
        "steps) and ship the averages; the last step's weights are kept beside them "
        "(0.0: off)",
    )
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=default("pretrain_steps", 0),
        help="before the curriculum, train each encoder with its family's own objective on "
        "the training images for this many steps (CLIP and SigLIP: captions of the objects "
        "left to right; DINOv2: self-distillation; SAM: point-prompted masks) (0: off)",
    )
    parser.add_argument(
        "--pretrain-batch",
        type=int,
        default=32,
        help="images per encoder-pretraining step (32)",
    )
    parser.add_argument(
        "--final-decay",
        type=float,
        default=0.3,
        help="share of the last stage over which the lr decays linearly to 10%% (0.3)",
    )
    parser.add_argument(
        "--wording",
        choices=("train", "grammar"),
        default=None,
        help="how relation items are re-asked: train (the 50 VSRE templates) or grammar (the "
        "question grammar's seen framings and answer vocabularies, core/grammar.py) (default: "
        "train for data version 1, grammar for 2, where only the grammar passed the lateral "
        "XOR: docs/recipes-tried.md)",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="ask each item twice per step in two wordings, with a consistency term between "
        "the two verdicts (needs --wording grammar)",
    )
    parser.add_argument(
        "--consistency-weight",
        type=float,
        default=1.0,
        help="weight of the consistency term of --paired (1.0)",
    )
    parser.add_argument(
        "--length-window",
        type=int,
        default=1,
        help="steps whose examples are sorted by length together, so batches pad less "
        "(StageConfig.length_window; 1: off)",
    )
    parser.add_argument(
        "--per-image",
        type=int,
        default=1,
        help="rows asked about each image in a batch, which then encodes each image and runs "
        "its image prefix once (StageConfig.per_image; 1: every row an item of its own); 4 cost "
        "12.7 points of accuracy while the encoders learn (docs/training.md)",
    )
    parser.add_argument(
        "--fused-optimizer",
        action="store_true",
        help="AdamW's fused kernel (TrainConfig.fused_optimizer)",
    )


def recipe_overrides(
    args: argparse.Namespace, families: Sequence[str] = ENCODER_FAMILIES
) -> dict[str, Any]:
    """The model size `add_recipe_arguments` gives (`default_overrides`)."""
    from ..recipes.curriculum import default_overrides

    return default_overrides(
        families, args.lm_layers, args.fusion_grid, args.object_tokens, args.image_size,
        args.lm_hidden, args.encoder_hidden,
        # The tokenizer's text follows the data: version 1 rebuilds the shipped tokenizer.
        tokenizer_text=1 if args.data_version == 1 else 2,
    )  # fmt: skip


def data_seed(args: argparse.Namespace) -> int:
    return args.seed if args.data_seed is None else args.data_seed


def fresh_data(args: argparse.Namespace, data: Path) -> list[tuple[Path, int, int]]:
    """(directory, data version, generation seed) of every fresh-scene stage's datasets."""
    return [d for fresh in FRESH_STAGES for d in fresh.datasets(args, data)]


def run(args: argparse.Namespace) -> int:
    from ..train import EXIT_CHUNK_ENDED, ChunkEnded

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.refresh_card:
        problem = refresh_card(Path(args.refresh_card))
        if problem:
            print(f"vsre train-default: {problem}", file=sys.stderr)
            return 2
        print(f"vsre train-default: refreshed {Path(args.refresh_card) / 'MODEL_CARD.md'}")
        return 0
    if min(args.n, args.steps_a, args.steps_b, args.batch_size, args.eval_items) < 1:
        print(
            "vsre train-default: --n, --steps-a, --steps-b, --batch-size, --eval-items must be"
            " >= 1"
        )
        return 2
    out = Path(args.out)
    progress = not args.no_progress
    seconds = {}
    try:
        data = Path(args.data) if args.data else out / "data"
        make_data(data, args.n, data_seed(args), args.size, args.workers, progress,
                  args.data_version)  # fmt: skip
        taken = exported_stages(Path(args.from_export)) if args.from_export else []
        for fresh in FRESH_STAGES:
            if fresh.name in taken:  # trained by the export's run: its data is not needed
                continue
            n = getattr(args, f"{fresh.flag}_n")
            for directory, version, seed in fresh.datasets(args, data):
                make_data(directory, n, seed, args.size, args.workers, progress, version)
        timing = data / "generate_seconds.json"
        seconds["data"] = json.loads(timing.read_text()) if timing.is_file() else None
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        recipe = recipe_config(args, data, out / "train", families)
        stages = recipe.stages
        ablation = ablation_rows(args.ablation_runs, args.ablation_json)
        model, rows, seconds["train"] = trained_model(
            recipe, progress, args.max_minutes, Path(args.from_export) if taken else None
        )
        t = time.perf_counter()
        calibration = None
        if args.calibration_items > 0:
            calibration = calibrate_verdict(
                model,
                data,
                args.calibration_items,
                out / "eval" / "calibration_val",
                data_seed(args),
            )
        if calibration:
            print(
                f"verdict bias {calibration['bias']:+.3f}: val yes rate"
                f" {pct(calibration['predicted_yes_rate_before'])} ->"
                f" {pct(calibration['predicted_yes_rate_after'])}"
                f" (labels {pct(calibration['true_rate'])})"
            )
        reports = {}
        plan = [
            ("random_test", "random_test", "item", args.eval_items, False),
            ("zeroshot_test", "zeroshot_test", "item", args.eval_items, False),
            ("consistency_random_test", "random_test", "train", args.consistency_items, True),
        ]
        for name, split, templates, limit, rel in plan:
            if limit < 1:  # --consistency-items 0 (a limit of 0 would take every item)
                continue
            reports[name] = evaluate_split(
                model, data, split, templates, limit, out / "eval" / name, rel, data_seed(args)
            )
            print(f"{name}: accuracy {pct(reports[name]['accuracy'])}")
        seconds["eval"] = time.perf_counter() - t
    except (FileNotFoundError, ValueError) as err:
        print(f"vsre train-default: {err}", file=sys.stderr)
        return 2
    except ChunkEnded as end:
        print(f"vsre train-default: {end}")
        return EXIT_CHUNK_ENDED
    counts = json.loads((data / "dataset.json").read_text())["counts"]
    counts[TRAIN_SPLIT] = len(load_items(data, TRAIN_SPLIT))
    params = model.parameter_counts()
    (out / "summary.json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "accuracy": {k: r["accuracy"] for k, r in reports.items()},
                "by_task": {
                    k: {t: v["accuracy"] for t, v in r["by"]["task"].items()}
                    for k, r in reports.items()
                },
                "families": families,
                "curriculum": args.curriculum,
                "steps": sum(s.steps for s in stages),
                "calibration": calibration,
                "counts": counts,
            },
            indent=2,
        )
    )
    if args.export == "none":
        return 0
    export_dir = Path(args.export) if args.export else EXPORT_DIR
    facts = (args, recipe, reports, rows, seconds, counts)
    size = export(
        model, out, export_dir, ablation,
        lambda mb: model_card(*facts, mb, params, ablation, calibration),
    )  # fmt: skip
    print(f"exported {export_dir} ({size:.1f} MB)")
    return 0


def exported_stages(export_dir: Path) -> list[str]:
    """The stages an export's run trained, in order (from its training_metrics.jsonl)."""
    from ..train import read_metrics

    metrics = export_dir / "training_metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"--from-export {export_dir}: no training_metrics.jsonl there")
    return list(dict.fromkeys(r["stage"] for r in read_metrics(metrics)))


def trained_model(
    config: TrainConfig, progress: bool, max_minutes: float = 0.0, from_export: Path | None = None
):
    """Train (or resume) the recipe through the one loop; returns (model, metrics rows, seconds
    of training). A finished run is not trained again: its last stage's model is loaded. With
    `max_minutes`, a run stopped at its budget raises `train.ChunkEnded`; the seconds of its
    chunks add up. With `from_export`, the recipe's first stages are the ones that export's run
    trained: the rest start from its model, and its metrics lead the rows."""
    from vsre_ros.core.model import VSREModel

    from ..train import ChunkEnded, plot_curves, read_metrics, train

    out = Path(config.output)
    names = [s.name for s in config.stages]
    taken, before = [], []
    if from_export is not None:
        taken = exported_stages(from_export)
        if taken != names[: len(taken)] or len(taken) == len(names):
            raise ValueError(
                f"--from-export {from_export} ran stages {taken}; it must be a beginning of "
                f"this recipe's stages {names}, and leave at least one to train"
            )
        before = read_metrics(from_export / "training_metrics.jsonl")
    timing, chunks = out / "train_seconds.json", out / "chunk_seconds.json"
    spent = json.loads(chunks.read_text()) if chunks.is_file() else []
    t = time.perf_counter()
    try:
        results = train(
            config,
            stage_names=names[len(taken) :] if taken else None,
            init=from_export if taken else None,
            progress=progress,
            max_minutes=max_minutes,
        )
    except ChunkEnded:
        chunks.write_text(json.dumps([*spent, time.perf_counter() - t]))
        raise
    if any(r.steps_run for r in results) or not timing.is_file():
        timing.write_text(json.dumps(time.perf_counter() - t + sum(spent)))
        chunks.unlink(missing_ok=True)
    rows = before + [
        r
        for s in config.stages[len(taken) :]
        for r in read_metrics(out / s.name / "metrics.jsonl")
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if taken:  # the curve of the whole recipe, the export's stages included
        plot_curves(rows, out / "learning_curve.png", out.name)
    model = VSREModel.from_pretrained(results[-1].final_dir).eval()
    return model, rows, json.loads(timing.read_text())


# The loss weights `add_recipe_arguments` sets, by loss id (training.losses.LOSSES); the other
# terms of the recipe have weight 1.
WEIGHT_FLAGS = {
    "object_weight": "objects", "pose_weight": "pose", "bank_weight": "bank",
    "verdict_weight": "verdict_probe", "grounding_weight": "grounding",
}  # fmt: skip
RECIPE_LOSSES = ("dense", "hop0", "objects", "hop1", "probe", "pose", "grounding", "bank",
                 "verdict_probe", "hop2")  # fmt: skip


RECIPE_FILE = Path(__file__).resolve().parents[1] / "recipes" / "vsre-tiny.yaml"
RECIPE_HEADER = """\
# vsre-tiny: the shipped model's training config, as `vsre train-default` builds it with no
# flags (training/default_model.py SHIPPED; a test keeps this file equal to it). Train it on
# the data `vsre train-default` generates when missing:
{data}
# with
#   vsre train --recipe vsre-tiny --data runs/vsre-tiny/data --output runs/vsre-tiny/train
# `vsre train-default` runs the same config, then calibrates, evaluates and exports.
"""


def recipe_file_text(args: argparse.Namespace) -> str:
    """The recipe file for these flags (`training/recipes/vsre-tiny.yaml` for the defaults)."""
    import yaml

    out = Path(args.out)
    config = recipe_config(args, out / "data", out / "train", ENCODER_FAMILIES)
    data = [f"# - {out / 'data'}: {args.n:,} items, data version {args.data_version}, seed "
            f"{data_seed(args)}, {args.size} px"]  # fmt: skip
    for fresh in FRESH_STAGES:
        names = " and ".join(d.name for d, _, _ in fresh.datasets(args, out / "data"))
        if names:
            n = getattr(args, f"{fresh.flag}_n")
            data.append(f"# - for {fresh.name}, beside it: {names}, {n:,} items each")
    header = RECIPE_HEADER.format(data="\n".join(data))
    return header + yaml.safe_dump(config.to_dict(), sort_keys=False)


def wording(args: argparse.Namespace) -> str:
    """The wording relation items are re-asked in: `--wording`, else the data version's."""
    if args.wording:
        return args.wording
    return "grammar" if args.data_version >= 2 else "train"


def recipe_config(
    args: argparse.Namespace, data: Path, output: Path, families: Sequence[str]
) -> TrainConfig:
    """The training config the flags describe: the curriculum's stages with one optimizer
    carried across them, the recipe's extra losses, the model size (`default_overrides`)."""
    from ..recipes.curriculum import curriculum

    stages = curriculum(
        args.curriculum, args.steps_a, args.steps_b, args.batch_size, args.final_decay
    )
    by_id = {loss: getattr(args, flag) for flag, loss in WEIGHT_FLAGS.items()}
    for stage in stages:
        stage.length_window, stage.per_image = args.length_window, args.per_image
        stage.templates, stage.paired = wording(args), args.paired
    for fresh in FRESH_STAGES:
        datasets = fresh.datasets(args, data)
        if datasets:
            stages.append(replace(
                stages[-1], name=fresh.name, lr=fresh.lr, warmup_steps=fresh.warmup_steps,
                decay_share=fresh.decay_share, wording_noise=fresh.wording_noise,
                augment=fresh.augment,
                steps=getattr(args, f"{fresh.flag}_steps"), restart=True,
                data=[str(directory) for directory, _, _ in datasets],
            ))  # fmt: skip
    aux = {loss: float(by_id.get(loss, 1.0)) for loss in RECIPE_LOSSES}
    if args.paired:
        aux["consistency"] = args.consistency_weight
    return TrainConfig(
        model="vsre-tiny",
        model_overrides=recipe_overrides(args, families),
        data=str(data),
        val_split="random_val",
        val_items=getattr(args, "val_items", SHIPPED["val_items"]),  # experiments have no val
        output=str(output),
        seed=args.seed,
        threads=args.threads,
        save_every=500,
        eval_every=args.val_every,
        log_every=20,
        aux_losses=aux,
        carry_optimizer=True,
        ema_decay=args.ema_decay,
        pretrain_steps=args.pretrain_steps,
        pretrain_batch=args.pretrain_batch,
        shape_weight=args.shape_weight,
        fused_optimizer=args.fused_optimizer,
        stages=stages,
    )
