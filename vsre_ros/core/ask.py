"""`vsre ask`: answer one question about image files, without ROS.

    vsre ask --image kitchen.png "Is the mug left of the laptop?"
    vsre ask --image left.png --image right.png --kind choice --option A --option B "Which ...?"

The default model is the embedded checkpoint `vsre_ros/models/vsre-tiny/` (written by
training); `--model` takes a saved model directory or a preset id (which uses the package's
trained weights `vsre_ros/models/<id>/` when present, else the preset's random weights).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "vsre-tiny"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the question, e.g. 'Is the cup left of the box?'")
    parser.add_argument(
        "--image",
        action="append",
        required=True,
        metavar="FILE",
        help="image file (PNG/JPEG); repeat for several images, in prompt order",
    )
    parser.add_argument(
        "--model",
        default="",
        help=f"preset id or saved model directory (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--kind",
        default="yes_no",
        choices=["yes_no", "choice", "number", "free_text"],
        help="expected form of the answer (default: yes_no)",
    )
    parser.add_argument(
        "--option", action="append", default=[], help="an option of a choice question"
    )
    parser.add_argument(
        "--preset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="argument of a preset --model: paths_file=FILE (vsre-paper), llava_path=DIR and "
        "extra=FILE (llava-start); repeat for several",
    )
    parser.add_argument("--adapter", default="", help="LoRA adapter directory to load")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", action="store_true", help="print the whole answer as JSON")


def _read_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def run(args: argparse.Namespace) -> int:
    from vsre_ros.core.answers import AnswerKind, Query, Status
    from vsre_ros.core.config import PRESETS, EngineConfig, is_model_file, parse_preset_args
    from vsre_ros.core.engine import Engine

    model_ref = args.model or str(DEFAULT_MODEL)
    embedded = DEFAULT_MODEL.parent / args.model if args.model else DEFAULT_MODEL
    if args.model in PRESETS and not Path(args.model).is_dir():
        if embedded.is_dir():
            model_ref = str(embedded)  # the package's trained weights for this preset
        else:
            print(
                f"vsre ask: no trained weights at {embedded}; preset {args.model!r} has RANDOM "
                "weights, so its answers are meaningless",
                file=sys.stderr,
            )
    if is_model_file(args.model):
        print(
            f"vsre ask: {args.model} builds a preset: its projectors are RANDOM until a "
            "training stage tunes them (`vsre train`), so its answers are meaningless",
            file=sys.stderr,
        )
    if not args.model and not DEFAULT_MODEL.is_dir():
        print(
            f"vsre ask: no default model at {DEFAULT_MODEL} (it is written by training); "
            "pass --model DIR for a trained model, or --model vsre-tiny for an untrained one",
            file=sys.stderr,
        )
        return 2
    images = []
    for path in args.image:
        try:
            images.append(_read_image(path))
        except (OSError, ValueError) as err:
            print(f"vsre ask: cannot read image {path}: {err}", file=sys.stderr)
            return 2
    try:
        config = EngineConfig(
            device=args.device,
            dtype=args.dtype,
            threads=args.threads,
            preset_args=parse_preset_args(args.preset_arg),
        )
        engine = Engine(model_ref, config)
        if args.adapter:
            engine.load_adapter(args.adapter)
    except (ValueError, OSError) as err:
        print(f"vsre ask: {err}", file=sys.stderr)
        return 2
    query = Query(
        question=args.question,
        images=images,
        answer_kind=AnswerKind.from_label(args.kind),
        options=list(args.option),
    )
    (answer,) = engine.answer([query])
    if args.json:
        fields = {k: getattr(answer, k) for k in answer.__dataclass_fields__}
        fields["status"] = answer.status.name
        print(json.dumps(fields, default=str))
    elif answer.status == Status.OK:
        extra = f" (p={answer.probability:.3f})" if args.kind != "free_text" else ""
        print(f"{answer.text}{extra}")
    if answer.status != Status.OK:
        print(f"vsre ask: {answer.status.name}: {answer.error}", file=sys.stderr)
        return 1
    return 0
