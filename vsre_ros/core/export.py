"""`vsre export`: write a model as one standalone directory.

A training stage's output holds only what it trained and names its frozen base (the encoder
and LM checkpoint directories); `vsre export` writes every weight into one directory that
needs nothing else, with `--merge` folding the LoRA adapter into the LM's weights.

    vsre export --model runs/paper/stage2/final --out models/paper-tuned --merge
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export(model_ref: str | Path, out: str | Path, merge: bool = False) -> Path:
    """Load a model (directory, preset id or model file) and save it standalone to `out`."""
    from vsre_ros.core.engine import load_model

    model = load_model(str(model_ref))
    if merge and model.has_lora:
        bias = model.config.verdict_bias  # the adapter's calibration holds for the merge
        model.lm = model.lm.merge_and_unload()
        model._base_verdict_bias = None
        model.config.verdict_bias = bias
    return model.save_pretrained(out, standalone=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory, preset id or file")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument(
        "--merge", action="store_true", help="fold the LoRA adapter into the LM weights"
    )


def run(args: argparse.Namespace) -> int:
    try:
        out = export(args.model, args.out, args.merge)
    except (ValueError, OSError) as err:
        print(f"vsre export: {err}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"vsre export: wrote {out} ({size / 2**20:.1f} MB)")
    return 0
