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
import math
import random
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vsre_ros.core.config import ENCODER_FAMILIES

from .config import TrainConfig, load_config
from .items import Item, load_items, write_items

log = logging.getLogger(__name__)

TRAIN_SPLIT = "default_train"
EXPORT_DIR = Path(__file__).resolve().parents[1] / "vsre_ros" / "models" / "vsre-tiny"
# The recipe log (docs/, in a source checkout), which an export embeds as the card's tail.
RECIPES_TRIED = Path(__file__).resolve().parents[1] / "docs" / "recipes-tried.md"
RECIPES_HEADING = "## Recipes tried"  # recipes-tried.md's first line
MAX_EXPORT_MB = 50.0


def question_config():
    """Questions per scene: fewer per scene than the generator's default, so the same number
    of items spans more scenes (images are what the model has to learn from)."""
    from vsre_ros.sim_data.questions import QuestionConfig

    return QuestionConfig(
        relations_per_view=4,
        direction=2,
        distance=1,
        localization=2,
        composite=1,
        metric=1,
        compare=1,
        multi_image=2,
    )


def make_data(data: Path, n: int, seed: int, size: int, workers: int, progress: bool) -> Path:
    """Generate the dataset in `data` (unless present) and write the combined training split."""
    from vsre_ros.sim_data.dataset import GenConfig, generate

    if (data / "dataset.json").is_file():
        _check_dataset(data, n, seed, size)
    else:
        config = GenConfig(
            seed=seed,
            width=size,
            height=size,
            multi_view_share=0.1,
            moved_share=0.05,
            questions=question_config(),
        )
        start = time.perf_counter()
        generate(data, n, config, workers=workers, progress=progress)
        (data / "generate_seconds.json").write_text(json.dumps(time.perf_counter() - start))
    if not (data / f"{TRAIN_SPLIT}.jsonl").is_file():
        zs = {i.id for i in load_items(data, "zeroshot_train")}
        both = [i for i in load_items(data, "random_train") if i.id in zs]
        write_items(data / f"{TRAIN_SPLIT}.jsonl", both)
    return data


def _check_dataset(data: Path, n: int, seed: int, size: int) -> None:
    """A dataset reused through --data must be the one the flags describe: the model card's
    reproduction command regenerates from them."""
    meta = json.loads((data / "dataset.json").read_text())
    config = meta.get("config", {})
    have = (meta.get("seed"), meta.get("counts", {}).get("items"), config.get("width"))
    if have != (seed, n, size):
        raise ValueError(
            f"{data} holds the dataset of data seed {have[0]}, {have[1]} items, {have[2]} px;"
            f" this run asks for data seed {seed}, {n} items, {size} px. Pass the dataset's"
            " --data-seed, --n and --size, or another --data directory to generate into"
        )


def evaluate_split(
    model,
    data: Path,
    split: str,
    templates: str,
    limit: int,
    out: Path,
    relation_only: bool,
    seed: int = 0,
) -> dict:
    """Evaluate the model on a split through the project's evaluator; writes report files."""
    from .evaluate import build_examples, resolve_templates
    from .metrics import evaluate_predictions
    from .model_api import answer_examples
    from .report import write_report
    from .scoring import write_predictions

    items = load_items(data, split)
    if relation_only:
        items = [i for i in items if i.task == "relation" and i.truth is not None]
    items = _sample(items, limit, seed)
    examples = build_examples(items, resolve_templates(templates))
    predictions = answer_examples(model, examples, batch_size=32, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / "predictions.jsonl", predictions)
    report = evaluate_predictions(items, predictions)
    report.update(model="vsre-tiny", data=str(data), split=split, templates=templates)
    write_report(report, out, plots=False)
    return report


def _sample(items: list[Item], limit: int, seed: int) -> list[Item]:
    """A seeded sample of at most `limit` items, in split order (0 keeps all). Seeded rather
    than strided: the split file lists a relation's True and False items in pairs, so an evenly
    strided pick could take one polarity only."""
    if not limit or len(items) <= limit:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[k] for k in keep]


def _log_odds(p: float, eps: float = 1e-6) -> float:
    return math.log(max(p, eps) / max(1.0 - p, eps))


def fit_verdict_bias(p_yes: Sequence[float], truth: Sequence[bool]) -> float:
    """The log-odds shift that makes the share of yes answers equal the share of true labels.

    Items are ranked by their yes log-odds; the shift puts the decision boundary halfway between
    the last item that should answer yes and the first that should not, so ties aside exactly
    round(rate * n) answers become yes. Only the rate is fitted (one number), never which items.
    """
    if not p_yes or len(p_yes) != len(truth):
        raise ValueError("fit_verdict_bias needs one label per probability, and at least one")
    z = sorted(map(_log_odds, p_yes), reverse=True)
    k = round(sum(map(bool, truth)) / len(truth) * len(z))
    if k == 0:
        return -(z[0] + 1.0)
    if k == len(z):
        return -(z[-1] - 1.0)
    return -(z[k - 1] + z[k]) / 2.0


def calibrate_verdict(model, data: Path, limit: int, out: Path, seed: int) -> dict | None:
    """Fit `model.config.verdict_bias` on the yes/no items of a seeded `random_val` sample and
    set it. Returns the fitted bias with the predicted-yes rate before and after, and the labels'
    true rate; None (bias left at 0) when the split has no labelled yes/no item. The test splits
    are never looked at."""
    from vsre_ros.core.answers import AnswerKind

    from .evaluate import build_examples, resolve_templates
    from .model_api import answer_examples

    items = [
        i
        for i in load_items(data, "random_val")
        if i.kind is AnswerKind.YES_NO and i.truth is not None
    ]
    items = _sample(items, limit, seed)
    model.config.verdict_bias = 0.0
    if not items:
        log.warning("no labelled yes/no item in %s/random_val.jsonl: verdict bias left at 0", data)
        return None
    examples = build_examples(items, resolve_templates("item"))
    predictions = answer_examples(model, examples, batch_size=32, progress=False)
    p_yes = [p.probability for p in predictions]
    truth = [bool(ex.truth) for ex in examples]
    bias = fit_verdict_bias(p_yes, truth)
    model.config.verdict_bias = bias
    result = {"items": len(items), "bias": bias, "true_rate": sum(truth) / len(truth)}
    for when, shift in (("before", 0.0), ("after", bias)):
        yes = [_log_odds(p) + shift >= 0 for p in p_yes]
        result[f"predicted_yes_rate_{when}"] = sum(yes) / len(yes)
        result[f"accuracy_{when}"] = sum(y == t for y, t in zip(yes, truth, strict=True)) / len(
            yes
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2))
    return result


ABLATION_TASKS = ("relation", "localization", "direction", "distance")
ABLATION_WEIGHTS = ("bank_weight", "verdict_weight")  # recipe weights the table shows per run
# The loss ids behind those columns (training.losses.LOSSES).
ABLATION_LOSSES = {"bank_weight": "bank", "verdict_weight": "verdict_probe"}


def _run_weights(train_dir: Path) -> dict:
    """Seed and ablation weights of a run's training directory: its `train_config.yaml`, or
    the `recipe.json` that runs before the one loop wrote ({} when neither is there). A
    weight missing from an old recipe predates that target, so the run trained without it."""
    config = train_dir / "train_config.yaml"
    if config.is_file():
        loaded = load_config(config)
        weights = {k: loaded.aux_losses.get(v, 0.0) for k, v in ABLATION_LOSSES.items()}
        return {"seed": loaded.seed, **weights}
    old = train_dir / "recipe.json"
    return json.loads(old.read_text()) if old.is_file() else {}


def ablation_rows(run_dirs: list[str], saved: str = "") -> list[dict]:
    """The rows of an earlier export's `ablation.json` (`saved`), then one row per ablation run
    (a `vsre train-default --export none` run directory)."""
    rows = []
    if saved:
        try:
            rows = json.loads(Path(saved).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--ablation-json {saved}: not a readable JSON file ({err})") from err
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and {"families", "accuracy", "steps"} <= set(r) for r in rows
        ):
            raise ValueError(
                f"--ablation-json {saved}: expected the list of rows an export writes as "
                "ablation.json (each with families, steps and accuracy)"
            )
    for run in run_dirs:
        summary = Path(run) / "summary.json"
        if not summary.is_file():
            raise FileNotFoundError(
                f"ablation run {run} has no summary.json; run `vsre train-default --out {run} "
                "--families ... --export none` first"
            )
        data = json.loads(summary.read_text())
        if "families" not in data:
            raise ValueError(f"{summary} predates --families; rerun that ablation")
        settings = _run_weights(Path(run) / "train")
        weights = {k: settings.get(k, 0.0) if settings else None for k in ABLATION_WEIGHTS}
        rows.append({"run": str(run), **weights, "seed": settings.get("seed"), **data})
    return rows


def ablation_table(rows: list[dict]) -> list[str]:
    """Markdown: per run, the families kept and the held-out accuracies."""
    weights = " | ".join(k.replace("_", " ") for k in ABLATION_WEIGHTS)
    head = " | ".join(f"{t} (random)" for t in ABLATION_TASKS)
    lines = [
        f"| encoder families | removed | curriculum | steps | {weights} | seed | random_test"
        f" | zeroshot_test | {head} | train s |",
        "|---|---|---|" + "---:|" * (5 + len(ABLATION_WEIGHTS) + len(ABLATION_TASKS)),
    ]
    for row in rows:
        removed = [f for f in ENCODER_FAMILIES if f not in row["families"]]
        tasks = row.get("by_task", {}).get("random_test", {})
        acc = row["accuracy"]
        lines.append(
            f"| {', '.join(row['families'])} | {', '.join(removed) or 'none'}"
            f" | {_or_dash(row.get('curriculum'))} | {row['steps']}"
            + "".join(f" | {_or_dash(row.get(k))}" for k in (*ABLATION_WEIGHTS, "seed"))
            + f" | {_pct(acc.get('random_test'))} | {_pct(acc.get('zeroshot_test'))} | "
            + " | ".join(_pct(tasks.get(t)) for t in ABLATION_TASKS)
            + f" | {row['seconds']['train']:.0f} |"
        )
    return lines


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(by: dict, limit: int = 80) -> list[str]:
    lines = ["| group | n | accuracy |", "|---|---:|---:|"]
    for key, cell in list(by.items())[:limit]:
        lines.append(f"| {key} | {cell['n']} | {_pct(cell['accuracy'])} |")
    return lines


# Recipe flags of `add_recipe_arguments`: loss weights, weight averaging, pretraining
RECIPE_FIELDS = (
    "bank_weight", "shape_weight", "pose_weight", "verdict_weight", "object_weight", "ema_decay",
    "pretrain_steps", "pretrain_batch", "final_decay",
)  # fmt: skip
# Flags of a recipe that the model card's commands name only when they differ from the default.
RECIPE_FLAGS = (
    "data_seed", "families", "lm_layers", "fusion_grid", "object_tokens", "image_size",
    *RECIPE_FIELDS,
    "calibration_items",
)  # fmt: skip


def _changed_flags(args: argparse.Namespace, names: Sequence[str]) -> str:
    """`--name value ` for each of `names` whose value differs from its CLI default."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = ""
    for name in names:
        value = getattr(args, name)
        if value != parser.get_default(name):
            shown = f"{value:g}" if isinstance(value, float) else value
            out += f"--{name.replace('_', '-')} {shown} "
    return out


def model_card(
    args: argparse.Namespace,
    recipe,
    reports: dict[str, dict],
    rows: list[dict],
    seconds: dict[str, float],
    counts: dict,
    size_mb: float,
    params: dict,
    ablation: list[dict] | None = None,
    calibration: dict | None = None,
) -> str:
    """MODEL_CARD.md text: data, recipe, evaluation with baselines, limits, reproduction."""
    flags = (
        f"vsre train-default --seed {args.seed} --n {args.n} --size {args.size} "
        f"--curriculum {args.curriculum} "
        f"--steps-a {args.steps_a} --steps-b {args.steps_b} --batch-size {args.batch_size} "
        f"--val-every {args.val_every} --eval-items {args.eval_items} "
        f"--consistency-items {args.consistency_items} "
        f"--threads {args.threads} " + _changed_flags(args, RECIPE_FLAGS)
    )
    # The portable command generates its data into --out; the run's own names its paths.
    cmd = flags + "--out runs/vsre-tiny"
    this_run = flags + (f"--data {args.data} " if args.data else "") + f"--out {args.out}"
    lm = recipe.model_overrides["lm"]["hf_config"]
    families = [e["family"] for e in recipe.model_overrides["encoders"]]
    hop0, hop1, hop2 = recipe.hop_layers
    last = [r for r in rows if r.get("val_acc") is not None]
    lines = [
        "# vsre-tiny: the embedded default model",
        "",
        "Trained from a random initialisation on CPU by `vsre train-default` (the project's",
        "own pipeline: sim_data -> training/recipes -> training.evaluate). It sees only the",
        "image(s) and the question at inference; the simulator's ground truth is used only as",
        "training targets.",
        "",
        "## Reproduce",
        "",
        f"    {cmd}",
        "",
        "This export's run (the same dataset: generation is a function of seed, n and size):",
        "",
        f"    {this_run}",
        "",
        "Wall time of that run: data "
        + ("not recorded" if seconds["data"] is None else f"{seconds['data']:.0f} s")
        + f", training {seconds['train']:.0f} s, evaluation {seconds['eval']:.0f} s"
        f" ({args.threads} torch thread(s) on a 2-core machine).",
        "",
        "## Model",
        "",
        f"- Preset `{recipe.model}` with overrides `{json.dumps(recipe.model_overrides)}`"
        f" (encoder families {', '.join(families)} as small random-init ViTs at"
        f" {args.image_size} px (patch {args.image_size // 8}), width 64 x 3 layers, channel"
        " fusion to"
        f" {args.fusion_grid}x{args.fusion_grid} = {args.fusion_grid**2} image tokens"
        + (
            f" and {args.object_tokens} object tokens from the SAM map"
            if recipe.model_overrides.get("object_tokens")
            else ""
        )
        + ","
        f" Llama LM hidden {lm['hidden_size']} x {lm['num_hidden_layers']} layers,"
        f" {lm['num_attention_heads']} heads, initializer_range 1/sqrt(hidden)).",
        f"- Parameters: {json.dumps(params)}; checkpoint {size_mb:.1f} MB (safetensors).",
        "- Saved with sdpa attention; training used eager attention to read attention maps.",
        "",
        "## Training data",
        "",
        f"`vsre generate`-style simulated scenes (MuJoCo), seed {data_seed(args)}, {args.n} items,"
        f" {args.size} px: {json.dumps(counts)}.",
        f"Training split `{TRAIN_SPLIT}` = random_train and zeroshot_train intersected, so no",
        "scene of random_test and no scene or category-colour concept of zeroshot_test is seen.",
        "",
        "## Recipe",
        "",
        "Losses: answer-token cross-entropy; dense per-patch colour, category and log-depth",
        "targets from masks/depth (training-only linear head on the image tokens); attention",
        f"targets for the binding hops (layer {hop0} head 0: an object phrase's last token ->"
        " the phrase's other words, since a colour or a category alone is ambiguous in half",
        f" the scenes; layer {hop1} head 0: that token -> its object's mask; layer {hop2}:"
        " answer position -> object and relation phrases), with word positions from the",
        "tokenizer's offsets, so all 50 templates are used; when probe weight > 0, a linear",
        f"probe on layer {hop1}'s output at each object phrase predicts its object's place"
        " over the image tokens, its log depth and (shape term) its mask box, area and depth"
        " range; when the pose weight > 0, a second head there predicts its centre in the"
        " camera frame, its front's and long axis's headings from the camera's and its"
        f" extents; when the relation-bank weight > 0, a linear head on layer {hop2}'s output"
        " at the answer position predicts the truth of every generated binary relation"
        " between the first two named objects; when the verdict weight > 0, a second head"
        " there predicts the asked statement's truth and, for lettered two-option templates,"
        " whether the option stating it is listed second (the letter is their exclusive or)."
        " AdamW, betas (0.9, 0.98), wd 0.01,",
        f"grad clip 1, batch 16; last {recipe.stages[-1].decay_share:.0%} of the last stage"
        " decays the lr linearly to 10%.",
        "",
        "| stage | steps | lr | warm-up | tasks (weights) | relations |",
        "|---|---:|---:|---:|---|---|",
    ]
    for s in recipe.stages:
        rel = ", ".join(s.relations) if s.relations else "all"
        lines.append(
            f"| {s.name} | {s.steps} | {s.lr:g} | {s.warmup_steps} | "
            f"{json.dumps(s.task_weights)} | {rel} |"
        )
    weights = ", ".join(f"{k} {v:g}" for k, v in recipe.aux_losses.items())
    lines += [
        "",
        f"Extra-loss weights (`training/losses.py`): {weights}; the probe's shape term"
        f" {recipe.shape_weight:g}. Learning curve:"
        f" `learning_curve.png` (val = {recipe.val_items} random_val items asked their own"
        " question).",
    ]
    if recipe.ema_decay:
        lines.append(
            f"Weights averaged over steps (exponential, decay {recipe.ema_decay:g}): the shipped"
            " weights are the averages; the val figures are given for both."
        )
    if recipe.pretrain_steps:
        lines.append(
            f"Before the stages each encoder was pretrained alone for {recipe.pretrain_steps}"
            f" steps of {recipe.pretrain_batch} training images with its family's objective"
            " (`training/recipes/pretrain.py`; figures in the run's `train/pretrain.jsonl`)."
        )
    if last:
        lines.append(
            "Val accuracy along training: "
            + ", ".join(
                f"step {r['step']}: {_pct(r['val_acc'])}"
                + (f" (averaged {_pct(r['val_acc_ema'])})" if "val_acc_ema" in r else "")
                for r in last
            )
            + "."
        )
    lines += ["", "## Calibration", ""]
    if calibration:
        c = calibration
        lines.append(
            f"Verdict bias {c['bias']:+.3f} (added to the yes/no log-odds; `verdict_bias` in"
            f" `vsre_config.json`), fitted on {c['items']} seeded random_val yes/no items so the"
            f" share of yes answers matches the share of true labels ({_pct(c['true_rate'])}):"
            f" yes rate {_pct(c['predicted_yes_rate_before'])} ->"
            f" {_pct(c['predicted_yes_rate_after'])}, their accuracy"
            f" {_pct(c['accuracy_before'])} -> {_pct(c['accuracy_after'])}. Two-option (lettered)"
            " answers are not shifted. The figures below are with the bias."
        )
    else:
        lines.append(
            "None: the verdict bias is 0 (`--calibration-items 0`, or random_val has no"
            " labelled yes/no item)."
        )
    lines += ["", "## Evaluation (held out)", ""]
    for name, rep in reports.items():
        base = rep["baselines"]
        bias = rep.get("bias", {})
        lines += [
            f"### {name}",
            "",
            f"Command equivalent: `vsre evaluate --data {args.data or args.out + '/data'}"
            f" --split {rep['split']} "
            f"--model {args.export or EXPORT_DIR} --templates {rep['templates']}` "
            f"(first {rep['n_items']} items"
            + (", relation items only" if name.startswith("consistency") else "")
            + "); the report files are in `eval/`.",
            "",
            f"- accuracy {_pct(rep['accuracy'])} on {rep['n_predictions']} answers"
            f" ({rep['n_items']} items); majority baseline {_pct(base['majority']['accuracy'])};"
            f" text-only baseline {_pct(base['text_only']['accuracy'])}",
            f"- consistency across templates: {_pct(rep['consistency'].get('share'))}"
            f" of {rep['consistency'].get('n_items')} items",
            f"- bias: {json.dumps({k: v for k, v in bias.items() if not isinstance(v, dict)})}",
            f"- metric answers: {json.dumps(rep.get('metric', {}))}",
            "",
            "By task:",
            "",
            *_table(rep["by"]["task"]),
            "",
            "By relation:",
            "",
            *_table(rep["by"]["relation"]),
            "",
        ]
    relation_acc = reports["random_test"]["by"]["task"].get("relation", {}).get("accuracy")
    lines += [
        "## Limits",
        "",
        "- Simulated scenes only (MuJoCo primitives, 12 colours, the simulator's categories):",
        "  nothing here says how it does on real photographs.",
        "- Tiny (about 2 M parameters, 64 px) and far below the issue's targets (see the",
        "  figures above and the recipes table). Its localization and direction answers beat",
        "  the baselines by a wide margin. Its yes/no relation answers are right"
        f" {_pct(relation_acc)} of the time (random_test), so they are not reliable. Treat",
        "  them as a demo of the pipeline, not as facts.",
        "- Metric answers come from the pixels alone. The engine passes the query's depth",
        "  image, but this model does not read it.",
        "",
    ]
    lines += ["## Ablation: each encoder family removed in turn", ""]
    if ablation:
        n = reports["random_test"]["n_items"]
        noise = 2 * (0.25 / max(1, n)) ** 0.5
        lines += [
            "Each row is one `vsre train-default --families ... --export none` run on the same"
            " data, with the curriculum, steps, relation-bank and verdict weights and seed"
            " shown,"
            f" evaluated on the same held-out items ({n} per split) as the model above. Two"
            f" standard errors of an accuracy over {n} items are up to {noise:.1%}, and several"
            " times that for one task's few dozen items, so smaller differences are noise."
            " Rows that differ only in the seed show how much training itself varies.",
            "",
            *ablation_table(ablation),
            "",
        ]
    else:
        lines += ["Not run for this export (pass `--ablation-runs`).", ""]
    return with_recipes_tried("\n".join(lines))


def with_recipes_tried(card: str) -> str:
    """`card` with its recipe history replaced by the current `docs/recipes-tried.md`.

    The history is the card's tail, from its `## Recipes tried` heading on; a card without one
    gets it appended. An export embeds the file as it stands then, so a shipped card is
    refreshed (`vsre train-default --refresh-card DIR`) when later sessions add to the file
    without shipping a new model; the rest of the card is left as its export wrote it.
    """
    head = card
    at = card.find("\n" + RECIPES_HEADING + "\n")
    if at >= 0:
        head = card[:at]
    parts = [head.rstrip("\n")]
    if RECIPES_TRIED.is_file():
        parts.append(RECIPES_TRIED.read_text().strip())
    return "\n\n".join(parts) + "\n"


def refresh_card(model_dir: Path) -> str:
    """Rewrite `model_dir/MODEL_CARD.md`'s recipe history; returns what was wrong, or ''."""
    path = model_dir / "MODEL_CARD.md"
    if not path.is_file():
        return f"{path} does not exist: pass the directory an export wrote (its MODEL_CARD.md)"
    card = path.read_text()
    if not card.startswith("# "):
        return f"{path} does not start with a title: it is not a card an export wrote"
    path.write_text(with_recipes_tried(card))
    return ""


def export(model, out: Path, export_dir: Path, card: str, ablation: list[dict]) -> float:
    """save_pretrained into export_dir (replaced whole) with card, curve, reports and the
    ablation rows (`ablation.json`, so a later export can table them again)."""
    tmp = export_dir.with_name(export_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.config.lm.attn_implementation = "sdpa"
    model.save_pretrained(tmp)
    shutil.copy(out / "train" / "learning_curve.png", tmp / "learning_curve.png")
    shutil.copy(out / "train" / "metrics.jsonl", tmp / "training_metrics.jsonl")
    for report in sorted((out / "eval").glob("*/report.*")):
        target = tmp / "eval" / report.parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(report, target / report.name)
    (tmp / "MODEL_CARD.md").write_text(card)
    (tmp / "ablation.json").write_text(json.dumps(ablation, indent=1) + "\n")
    for path in tmp.rglob("*"):  # atomic writers create 0600 files; the package is shared
        path.chmod(0o755 if path.is_dir() else 0o644)
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 1e6
    if size > MAX_EXPORT_MB:
        raise ValueError(f"export is {size:.1f} MB, over the {MAX_EXPORT_MB} MB budget")
    if export_dir.exists():
        shutil.rmtree(export_dir)
    tmp.rename(export_dir)
    return size


# The shipped model's settings, which are the command's defaults (so that `vsre train-default`
# with no flags reproduces it); `training/recipes/vsre-tiny.yaml` is the training config they
# give (a test holds the two together). Research runs (`recipes/experiment.py`) start from the
# recipe flags' plain defaults instead (no object tokens, averaging or pretraining).
SHIPPED = {
    "n": 200000, "steps_a": 2000, "steps_b": 11000, "val_every": 1000, "threads": 2,
    "object_tokens": 8, "ema_decay": 0.999, "pretrain_steps": 1000,
}  # fmt: skip


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
    parser.add_argument("--batch-size", type=int, default=16, help="examples per step (16)")
    parser.add_argument(
        "--val-every",
        type=int,
        default=SHIPPED["val_every"],
        help=f"steps between val evals ({SHIPPED['val_every']})",
    )
    parser.add_argument("--eval-items", type=int, default=600, help="test items per split")
    parser.add_argument(
        "--consistency-items",
        type=int,
        default=40,
        help="relation test items asked through all 50 templates (40)",
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


def recipe_overrides(
    args: argparse.Namespace, families: Sequence[str] = ENCODER_FAMILIES
) -> dict[str, Any]:
    """The model size `add_recipe_arguments` gives (`default_overrides`)."""
    from .recipes.curriculum import default_overrides

    return default_overrides(
        families, args.lm_layers, args.fusion_grid, args.object_tokens, args.image_size
    )


def data_seed(args: argparse.Namespace) -> int:
    return args.seed if args.data_seed is None else args.data_seed


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.refresh_card:
        problem = refresh_card(Path(args.refresh_card))
        if problem:
            print(f"vsre train-default: {problem}", file=sys.stderr)
            return 2
        print(f"vsre train-default: refreshed {Path(args.refresh_card) / 'MODEL_CARD.md'}")
        return 0
    if min(args.n, args.steps_a, args.steps_b, args.batch_size) < 1:
        print("vsre train-default: --n, --steps-a, --steps-b, --batch-size must be >= 1")
        return 2
    out = Path(args.out)
    progress = not args.no_progress
    seconds = {}
    try:
        data = Path(args.data) if args.data else out / "data"
        make_data(data, args.n, data_seed(args), args.size, args.workers, progress)
        timing = data / "generate_seconds.json"
        seconds["data"] = json.loads(timing.read_text()) if timing.is_file() else None
        families = [f.strip() for f in args.families.split(",") if f.strip()]
        recipe = recipe_config(args, data, out / "train", families)
        stages = recipe.stages
        ablation = ablation_rows(args.ablation_runs, args.ablation_json)
        model, rows, seconds["train"] = trained_model(recipe, progress)
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
                f" {_pct(calibration['predicted_yes_rate_before'])} ->"
                f" {_pct(calibration['predicted_yes_rate_after'])}"
                f" (labels {_pct(calibration['true_rate'])})"
            )
        reports = {}
        plan = [
            ("random_test", "random_test", "item", args.eval_items, False),
            ("zeroshot_test", "zeroshot_test", "item", args.eval_items, False),
            ("consistency_random_test", "random_test", "train", args.consistency_items, True),
        ]
        for name, split, templates, limit, rel in plan:
            reports[name] = evaluate_split(
                model, data, split, templates, limit, out / "eval" / name, rel, data_seed(args)
            )
            print(f"{name}: accuracy {_pct(reports[name]['accuracy'])}")
        seconds["eval"] = time.perf_counter() - t
    except (FileNotFoundError, ValueError) as err:
        print(f"vsre train-default: {err}", file=sys.stderr)
        return 2
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
    card = model_card(*facts, 0.0, params, ablation, calibration)
    size = export(model, out, export_dir, card, ablation)
    card = model_card(*facts, size, params, ablation, calibration)
    (export_dir / "MODEL_CARD.md").write_text(card)
    print(f"exported {export_dir} ({size:.1f} MB)")
    return 0


def trained_model(config: TrainConfig, progress: bool):
    """Train (or resume) the recipe through the one loop; returns (model, metrics rows, seconds
    of training). A finished run is not trained again: its last stage's model is loaded."""
    from vsre_ros.core.model import VSREModel

    from .train import read_metrics, train

    out = Path(config.output)
    timing = out / "train_seconds.json"
    t = time.perf_counter()
    results = train(config, progress=progress)
    if any(r.steps_run for r in results) or not timing.is_file():
        timing.write_text(json.dumps(time.perf_counter() - t))
    rows = [r for s in config.stages for r in read_metrics(out / s.name / "metrics.jsonl")]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = VSREModel.from_pretrained(results[-1].final_dir).eval()
    return model, rows, json.loads(timing.read_text())


# The loss weights `add_recipe_arguments` sets, by loss id (training.losses.LOSSES); the other
# terms of the recipe have weight 1.
WEIGHT_FLAGS = {
    "object_weight": "objects", "pose_weight": "pose", "bank_weight": "bank",
    "verdict_weight": "verdict_probe",
}  # fmt: skip
RECIPE_LOSSES = ("dense", "hop0", "objects", "hop1", "probe", "pose", "bank", "verdict_probe",
                 "hop2")  # fmt: skip


RECIPE_FILE = Path(__file__).resolve().parent / "recipes" / "vsre-tiny.yaml"
RECIPE_HEADER = """\
# vsre-tiny: the shipped model's training config, as `vsre train-default` builds it with no
# flags (training/default_model.py SHIPPED; a test keeps this file equal to it). Train it on
# data that `vsre train-default` generated (200,000 items, seed 0, 64 px; it generates them
# when missing) with
#   vsre train --recipe vsre-tiny --data runs/vsre-tiny/data --output runs/vsre-tiny/train
# `vsre train-default` runs the same config, then calibrates, evaluates and exports.
"""


def recipe_file_text(args: argparse.Namespace) -> str:
    """The recipe file for these flags (`training/recipes/vsre-tiny.yaml` for the defaults)."""
    import yaml

    out = Path(args.out)
    config = recipe_config(args, out / "data", out / "train", ENCODER_FAMILIES)
    return RECIPE_HEADER + yaml.safe_dump(config.to_dict(), sort_keys=False)


def recipe_config(
    args: argparse.Namespace, data: Path, output: Path, families: Sequence[str]
) -> TrainConfig:
    """The training config the flags describe: the curriculum's stages with one optimizer
    carried across them, the recipe's extra losses, the model size (`default_overrides`)."""
    from .recipes.curriculum import curriculum

    stages = curriculum(
        args.curriculum, args.steps_a, args.steps_b, args.batch_size, args.final_decay
    )
    by_id = {loss: getattr(args, flag) for flag, loss in WEIGHT_FLAGS.items()}
    return TrainConfig(
        model="vsre-tiny",
        model_overrides=recipe_overrides(args, families),
        data=str(data),
        val_split="random_val",
        val_items=96,
        output=str(output),
        seed=args.seed,
        threads=args.threads,
        save_every=500,
        eval_every=args.val_every,
        log_every=20,
        aux_losses={loss: float(by_id.get(loss, 1.0)) for loss in RECIPE_LOSSES},
        carry_optimizer=True,
        ema_decay=args.ema_decay,
        pretrain_steps=args.pretrain_steps,
        pretrain_batch=args.pretrain_batch,
        shape_weight=args.shape_weight,
        stages=stages,
    )
