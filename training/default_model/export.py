"""Export of the default model into the package: weights, tokenizer, card, curve, reports."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from .card import with_grounding

# The embedded model in the source tree (`vsre train-default` exports from a checkout).
EXPORT_DIR = Path(__file__).resolve().parents[2] / "vsre_ros" / "models" / "vsre-tiny"


MAX_EXPORT_MB = 50.0


def export(
    model, out: Path, export_dir: Path, ablation: list[dict], card: Callable[[float], str]
) -> float:
    """save_pretrained into export_dir (replaced whole) with curve, reports, the ablation rows
    (`ablation.json`, so a later export can table them again) and the card, rendered once by
    `card(size in MB of everything else)`; returns the export's size in MB."""
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
    (tmp / "ablation.json").write_text(json.dumps(ablation, indent=1) + "\n")
    size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()) / 1e6
    (tmp / "MODEL_CARD.md").write_text(with_grounding(card(size), tmp))
    size += (tmp / "MODEL_CARD.md").stat().st_size / 1e6
    for path in tmp.rglob("*"):  # atomic writers create 0600 files; the package is shared
        path.chmod(0o755 if path.is_dir() else 0o644)
    if size > MAX_EXPORT_MB:
        raise ValueError(f"export is {size:.1f} MB, over the {MAX_EXPORT_MB} MB budget")
    if export_dir.exists():
        shutil.rmtree(export_dir)
    tmp.rename(export_dir)
    return size
