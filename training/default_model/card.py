"""The default model's card (`MODEL_CARD.md`): rendered once from `MODEL_CARD.md.in` with the
run's computed facts (config, parameter counts, evaluation reports, ablation rows), followed by
the recipe history (`RECIPES_TRIED`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from vsre_ros.core.config import ENCODER_FAMILIES

from ..config import load_config

RECIPES_TRIED = Path(__file__).resolve().parents[2] / "docs" / "recipes-tried.md"


RECIPES_HEADING = "## Recipes tried"  # recipes-tried.md's first line


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
            + f" | {pct(acc.get('random_test'))} | {pct(acc.get('zeroshot_test'))} | "
            + " | ".join(pct(tasks.get(t)) for t in ABLATION_TASKS)
            + f" | {row['seconds']['train']:.0f} |"
        )
    return lines


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(by: dict, limit: int = 80) -> list[str]:
    lines = ["| group | n | accuracy |", "|---|---:|---:|"]
    for key, cell in list(by.items())[:limit]:
        lines.append(f"| {key} | {cell['n']} | {pct(cell['accuracy'])} |")
    return lines


# Recipe flags of `add_recipe_arguments`: loss weights, weight averaging, pretraining
RECIPE_FIELDS = (
    "bank_weight", "shape_weight", "pose_weight", "verdict_weight", "object_weight",
    "grounding_weight", "ema_decay",
    "pretrain_steps", "pretrain_batch", "final_decay", "wording", "paired", "consistency_weight",
    "length_window",
)  # fmt: skip


# Flags of a recipe that the model card's commands name only when they differ from the default.
RECIPE_FLAGS = (
    "data_seed", "data_version", "families", "lm_layers", "lm_hidden", "encoder_hidden",
    "fusion_grid", "object_tokens", "image_size",
    *RECIPE_FIELDS,
    "val_items",
    "calibration_items",
    "mix_steps",
    "mix_n",
    "filler_steps",
    "filler_n",
)  # fmt: skip


def _changed_flags(args: argparse.Namespace, names: Sequence[str]) -> str:
    """`--name value ` for each of `names` whose value differs from its CLI default."""
    from . import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = ""
    for name in names:
        value = getattr(args, name)
        if value != parser.get_default(name):
            shown = f"{value:g}" if isinstance(value, float) else value
            out += f"--{name.replace('_', '-')} {shown} "
    return out


TEMPLATE = Path(__file__).resolve().parent / "MODEL_CARD.md.in"


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
    """MODEL_CARD.md: `TEMPLATE` filled with the run's facts, then the recipe history.

    `recipe` is the run's `TrainConfig`; the architecture figures are read from its model
    overrides, the losses and schedule from its stages, so the card cannot restate them wrong.
    """
    from string import Template

    from . import data_seed
    from .data import TRAIN_SPLIT
    from .export import EXPORT_DIR

    flags = (
        f"vsre train-default --seed {args.seed} --n {args.n} --size {args.size} "
        f"--curriculum {args.curriculum} "
        f"--steps-a {args.steps_a} --steps-b {args.steps_b} --batch-size {args.batch_size} "
        f"--val-every {args.val_every} --eval-items {args.eval_items} "
        f"--consistency-items {args.consistency_items} "
        f"--threads {args.threads} " + _changed_flags(args, RECIPE_FLAGS)
    )
    overrides = recipe.model_overrides
    lm = overrides["lm"]["hf_config"]
    encoders = overrides["encoders"]
    encoder_config = encoders[0].get("hf_config", {})
    objects = overrides.get("object_tokens", 0)
    grid = overrides.get("fusion_grid", 8)
    hop0, hop1, hop2 = recipe.hop_layers
    facts = {
        # The portable command generates its data into --out; the run's own names its paths.
        "command": flags + "--out runs/vsre-tiny",
        "this_run": flags
        + (f"--data {args.data} " if args.data else "")
        + (f"--from-export {args.from_export} " if args.from_export else "")
        + f"--out {args.out}",
        "data_time": "not recorded" if seconds["data"] is None else f"{seconds['data']:.0f} s",
        "train_time": f"{seconds['train']:.0f} s"
        + (f" (the stages after {args.from_export}'s)" if args.from_export else ""),
        "eval_seconds": f"{seconds['eval']:.0f}",
        "threads": args.threads,
        "preset": recipe.model,
        "overrides": json.dumps(overrides),
        "families": ", ".join(e["family"] for e in encoders),
        "image_size": encoders[0].get("image_size") or args.image_size,
        "patch": encoder_config.get("patch_size", "-"),
        "encoder_width": encoder_config.get("hidden_size", "-"),
        "encoder_layers": encoder_config.get("num_hidden_layers", "-"),
        "grid": grid,
        "grid_tokens": grid * grid,
        "object_tokens": f" and {objects} object tokens from the SAM map" if objects else "",
        "lm_hidden": lm["hidden_size"],
        "lm_layers": lm["num_hidden_layers"],
        "lm_heads": lm["num_attention_heads"],
        "init_range": f"{lm.get('initializer_range', 0.02):.4g}",
        "params": json.dumps(params),
        "size_mb": f"{size_mb:.1f}",
        "data_seed": data_seed(args),
        "n": args.n,
        "size": args.size,
        "counts": json.dumps(counts),
        "train_split": TRAIN_SPLIT,
        "hop0": hop0,
        "hop1": hop1,
        "hop2": hop2,
        "batch_size": recipe.stages[-1].batch_size,
        "decay_share": f"{recipe.stages[-1].decay_share:.0%}",
        "stages": "\n".join(_stage_table(recipe.stages)),
        "weights": ", ".join(f"{k} {v:g}" for k, v in recipe.aux_losses.items()),
        "shape_weight": f"{recipe.shape_weight:g}",
        "val_items": recipe.val_items,
        "averaging": _averaging(recipe),
        "mix": _mix(recipe),
        "pretraining": _pretraining(recipe),
        "val_curve": _val_curve(rows),
        "calibration": _calibration(calibration),
        "evaluation": _evaluation(reports, args, args.export or EXPORT_DIR),
        "relation_accuracy": pct(
            reports["random_test"]["by"]["task"].get("relation", {}).get("accuracy")
        ),
        "ablation": _ablation(ablation, reports),
    }
    card = Template(TEMPLATE.read_text()).substitute(facts)
    return with_recipes_tried(card)


def _stage_table(stages) -> list[str]:
    lines = [
        "| stage | steps | lr | warm-up | tasks (weights) | relations |",
        "|---|---:|---:|---:|---|---|",
    ]
    for s in stages:
        rel = ", ".join(s.relations) if s.relations else "all"
        lines.append(
            f"| {s.name} | {s.steps} | {s.lr:g} | {s.warmup_steps} | "
            f"{json.dumps(s.task_weights)} | {rel} |"
        )
    return lines


def _flag(stage) -> str:
    """The train-default flag that adds a fresh-scene stage, by the stage's name."""
    from . import FRESH_STAGES

    return next((f"--{f.flag}-steps" for f in FRESH_STAGES if f.name == stage.name), "")


def _mix(recipe) -> str:
    """The stages that train on other datasets than the run's and restart the optimizer."""
    lines = []
    for before, stage in zip(recipe.stages, recipe.stages[1:], strict=False):
        if stage.data:
            lines.append(
                f"Stage {stage.name} trains on the `{stage.split}` splits of "
                + ", ".join(f"`{Path(d).name}`" for d in stage.data)
                + f" (fresh scenes generated beside the data; `vsre train-default {_flag(stage)}`)"
                + (f", starting from {before.name}'s averaged model with a new optimizer and"
                   " weight average" if stage.restart else "")
                + (f"; {100 * stage.wording_noise:.0f}% of its relation questions get filler"
                   " words (`training/wording_noise.py`)" if stage.wording_noise else "")
                + (f"; {100 * stage.augment:.0f}% of its rows see their picture perturbed"
                   " (`training/perturb.py`)" if stage.augment else "")
                + ".\n"
            )  # fmt: skip
    return "".join(lines)


def _averaging(recipe) -> str:
    if not recipe.ema_decay:
        return ""
    return (
        f"Weights averaged over steps (exponential, decay {recipe.ema_decay:g}): the shipped"
        " weights are the averages; the val figures are given for both.\n"
    )


def _pretraining(recipe) -> str:
    if not recipe.pretrain_steps:
        return ""
    return (
        f"Before the stages each encoder was pretrained alone for {recipe.pretrain_steps}"
        f" steps of {recipe.pretrain_batch} training images with its family's objective"
        " (`training/recipes/pretrain.py`; figures in the run's `train/pretrain/`).\n"
    )


def _val_curve(rows: list[dict]) -> str:
    measured = [r for r in rows if r.get("val_acc") is not None]
    if not measured:
        return ""
    return (
        "Val accuracy along training: "
        + ", ".join(
            f"step {r.get('global_step', r['step'])}: {pct(r['val_acc'])}"
            + (f" (averaged {pct(r['val_acc_ema'])})" if "val_acc_ema" in r else "")
            for r in measured
        )
        + ".\n"
    )


def _calibration(c: dict | None) -> str:
    if not c:
        return (
            "None: the verdict bias is 0 (`--calibration-items 0`, or random_val has no"
            " labelled yes/no item)."
        )
    return (
        f"Verdict bias {c['bias']:+.3f} (added to the yes/no log-odds; `verdict_bias` in"
        f" `vsre_config.json`), fitted on {c['items']} seeded random_val yes/no items so the"
        f" share of yes answers matches the share of true labels ({pct(c['true_rate'])}):"
        f" yes rate {pct(c['predicted_yes_rate_before'])} ->"
        f" {pct(c['predicted_yes_rate_after'])}, their accuracy"
        f" {pct(c['accuracy_before'])} -> {pct(c['accuracy_after'])}. Two-option (lettered)"
        " answers are not shifted. The figures below are with the bias."
    )


def _evaluation(reports: dict[str, dict], args: argparse.Namespace, model_dir) -> str:
    lines: list[str] = []
    for name, rep in reports.items():
        base = rep["baselines"]
        bias = rep.get("bias", {})
        lines += [
            f"### {name}",
            "",
            f"Command equivalent: `vsre evaluate --data {args.data or args.out + '/data'}"
            f" --split {rep['split']} --model {model_dir} --templates {rep['templates']}` "
            f"(first {rep['n_items']} items"
            + (", relation items only" if name.startswith("consistency") else "")
            + "); the report files are in `eval/`.",
            "",
            f"- accuracy {pct(rep['accuracy'])} on {rep['n_predictions']} answers"
            f" ({rep['n_items']} items); majority baseline {pct(base['majority']['accuracy'])};"
            f" text-only baseline {pct(base['text_only']['accuracy'])}",
            f"- consistency across templates: {pct(rep['consistency'].get('share'))}"
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
    return "\n".join(lines)


def _ablation(ablation: list[dict] | None, reports: dict[str, dict]) -> str:
    if not ablation:
        return "Not run for this export (pass `--ablation-runs`)."
    n = reports["random_test"]["n_items"]
    noise = 2 * (0.25 / max(1, n)) ** 0.5
    return "\n".join([
        "Each row is one `vsre train-default --families ... --export none` run on the same"
        " data, with the curriculum, steps, relation-bank and verdict weights and seed shown,"
        f" evaluated on the same held-out items ({n} per split) as the model above. Two"
        f" standard errors of an accuracy over {n} items are up to {noise:.1%}, and several"
        " times that for one task's few dozen items, so smaller differences are noise."
        " Rows that differ only in the seed show how much training itself varies.",
        "",
        *ablation_table(ablation),
    ])  # fmt: skip


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


GROUNDING_HEADING = "## Grounding head"


def grounding_section(model_dir: Path) -> str:
    """The card's grounding section: what `model_dir/grounding.safetensors` is and how it came
    to be (a mask head's own record of its fit)."""
    from vsre_ros.core.grounding import GROUNDING_FILE, MaskHead
    from vsre_ros.core.model import VSREModel

    path = Path(model_dir) / GROUNDING_FILE
    head = VSREModel.from_pretrained(model_dir).heads.get("grounding")
    if head is None:
        return "None: answers name no objects."
    params = sum(p.numel() for p in head.parameters())
    mb = path.stat().st_size / 1e6
    if isinstance(head, MaskHead):
        fitted = head.fitted
        how = (
            f"fitted on this model, frozen (`{fitted['command']} --model <this directory>`, "
            f"{fitted['seconds']} s at {fitted['threads']} thread(s))"
            if fitted
            else "fitted on this model, frozen (`vsre grounding fit --head mask`)"
        )
        earlier = fitted.get("started_from")
        if earlier:  # trained further from a head fitted on the model before it
            how += (
                f", starting from a head fitted on an earlier model (`{earlier['command']}`, "
                f"{earlier['seconds']} s)"
            )
        kind = (
            f"a mask head (`core.grounding.MaskHead`: the frame's pixels at {head.side} px and "
            "the model's token grid -> a mask per object phrase, the box it spans)"
        )
    else:
        how = "trained with the model (the recipe's `grounding` loss)"
        kind = "a box head (`core.grounding.GroundingHead`: the model's image tokens -> a box)"
    return (
        f"`grounding.safetensors`: {kind}, {params:,} parameters, {mb:.1f} MB, {how}. Every "
        "answer names each object phrase's box; with depth and CameraInfo, each object's 3D "
        "place, and metric answers measured from them. Figures: docs/grounding.md."
    )


def with_grounding(card: str, model_dir: Path) -> str:
    """`card` with its grounding section (`grounding_section`) written before its limits,
    replacing the one it has; as it was when `model_dir` holds no model."""
    if not (Path(model_dir) / "vsre_config.json").is_file():
        return card
    section = f"{GROUNDING_HEADING}\n\n{grounding_section(model_dir)}\n\n"
    start = card.find(GROUNDING_HEADING + "\n")
    if start >= 0:
        end = card.find("\n## ", start + len(GROUNDING_HEADING)) + 1
        return card[:start] + section + card[end:]
    at = card.find("## Limits\n")
    return card[:at] + section + card[at:] if at >= 0 else card + "\n" + section


def refresh_card(model_dir: Path) -> str:
    """Rewrite `model_dir/MODEL_CARD.md`'s grounding section and recipe history; returns what
    was wrong, or ''."""
    path = model_dir / "MODEL_CARD.md"
    if not path.is_file():
        return f"{path} does not exist: pass the directory an export wrote (its MODEL_CARD.md)"
    card = path.read_text()
    if not card.startswith("# "):
        return f"{path} does not start with a title: it is not a card an export wrote"
    path.write_text(with_recipes_tried(with_grounding(card, model_dir)))
    return ""
