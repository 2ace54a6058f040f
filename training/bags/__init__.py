"""Turn recorded rosbag2 bags into a dataset: `vsre ingest BAG... --out DIR`.

A robot running the VSRE node records its camera topics, `vsre_ros/SpatialQuery`,
`vsre_ros/SpatialAnswer`, the corrections an operator (or mocap, or another system) publishes
on `vsre/corrections` as `vsre_ros/SpatialCorrection`, and, in simulation, `vsre_ros/SceneTruth`.
This module reads such bags (MCAP or sqlite3, through `rosbags`), pairs every query with the
frame it was about and the right answer, and writes the shared dataset format (`dataset.json`,
`images/`, `depth/`, `scenes/`, `train/val/test.jsonl`).

Which frame a query was about, in order of trust:
1. the answer's header (the node stamps it with the frame it actually used);
2. the query's own `stamp` on its `camera` (nearest frame within `max_skew`);
3. a zero stamp means "latest": the newest frame at or before the query was recorded, no older
   than `max_age`.
Inline images sent with the query are used as they are.

The label comes from a correction when there is one (`label_source: "correction"`); else from
the simulator, when the frame's SceneTruth lists the same question with its exact answer
(`"sim_truth"`); without either, the model's own answer is kept only when asked for
(`"model"`), because training on a model's unchecked answers teaches it its own mistakes.
Items hold the dataset schema's fields (plus the simulator's extras for sim-truth labels);
where each came from (query id, label source, camera topic, stamp, bag) is in the sidecar
`provenance.jsonl`, one line per item.

A query is identified by (bag, query_id): callers choose ids, and the demo's `scene/counter`
ids repeat between runs. A correction labels the query of its own bag; an operator's bag is
bound with `--corrections-for OPERATOR_BAG=BAG`, or else to the one bag holding the id, and a
correction that could mean several queries is refused and counted. A correction whose text
contradicts its own verdict, option or value labels nothing. A camera gets only the depth of its
own frame_id unless `--depth-topic COLOR=DEPTH` says otherwise; a query naming no camera takes
the bag's only camera, or `--default-camera`. Items of frames within `--split-window` seconds of
each other (any camera; one simulated scene) share a split.

A bag that a crashed recorder left behind (no `metadata.yaml`, an MCAP file without its summary,
a cut-off sqlite file) still yields every message that can be read; the report says so. A bag
that cannot be read at all is reported and skipped; the rest are ingested, and `vsre ingest`
exits with 3 (1 when no bag could be read). Empty bags and bags without queries are warned
about.
Nothing here imports rclpy: messages are decoded by `rosbags`, images by the ROS layer's
numpy conversions (`vsre_ros.ros.conversions`, which is rclpy-free too).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .ingest import (
    CORRECTIONS_TOPIC,
    PROVENANCE_FILE,
    Frame,
    IngestConfig,
    IngestReport,
    ingest,
)
from .reader import (
    BagError,
    BagSource,
    RawMessage,
    decode_compressed,
    decode_image,
    make_typestore,
    project_msg_dirs,
    project_types,
    read_bag,
)

__all__ = [
    "CORRECTIONS_TOPIC",
    "PROVENANCE_FILE",
    "BagError",
    "BagSource",
    "Frame",
    "IngestConfig",
    "IngestReport",
    "RawMessage",
    "add_arguments",
    "decode_compressed",
    "decode_image",
    "ingest",
    "make_typestore",
    "project_msg_dirs",
    "project_types",
    "read_bag",
    "run",
]


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = IngestConfig()
    parser.add_argument(
        "bags", nargs="+", type=Path, help="rosbag2 directories or .mcap/.db3 files"
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    parser.add_argument(
        "--use-model-answers",
        action="store_true",
        help="keep uncorrected queries, labelled with the model's answer (label_source=model)",
    )
    parser.add_argument(
        "--min-confidence",
        type=float,
        default=defaults.min_confidence,
        help="with --use-model-answers: keep only answers at least this confident (0.5-1)",
    )
    parser.add_argument(
        "--max-skew",
        type=float,
        default=defaults.max_skew,
        help="s between a query stamp and its frame",
    )
    parser.add_argument(
        "--max-age",
        type=float,
        default=defaults.max_age,
        help="s: oldest frame a 'latest' query accepts",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=defaults.val_fraction,
        help="share of split groups for val",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=defaults.test_fraction,
        help="share of split groups for test",
    )
    parser.add_argument(
        "--split-window",
        type=float,
        default=defaults.split_window,
        help="s: a camera's frames this close share a split (sim frames: by scene)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="salt of the split hash")
    parser.add_argument(
        "--image-topic", action="append", default=[], help="only this camera topic (repeatable)"
    )
    parser.add_argument(
        "--depth-topic",
        action="append",
        default=[],
        metavar="COLOR=DEPTH",
        help="pair a colour topic with a depth topic of another frame_id (repeatable); "
        "otherwise a camera gets only the depth stream of its own frame_id",
    )
    parser.add_argument(
        "--default-camera",
        default="",
        help="the camera queries with camera='' meant (the node's first camera), when a bag "
        "has several",
    )
    parser.add_argument(
        "--corrections-for",
        action="append",
        default=[],
        metavar="OPERATOR_BAG=BAG",
        help="bind the corrections recorded in OPERATOR_BAG to the queries of BAG (repeatable)",
    )


# Exit statuses of `vsre ingest`.
EXIT_OK, EXIT_NO_BAG, EXIT_USAGE, EXIT_SOME_BAGS_SKIPPED = 0, 1, 2, 3


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, target = value.partition("=")
        if not sep or not key or not target:
            raise ValueError(f"{option} takes A=B, got {value!r}")
        pairs[key] = target
    return pairs


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every bag was read, 3 when some were skipped (the rest are in the dataset),
    1 when none could be read, 2 for bad options."""
    try:
        depth_topics = _pairs(args.depth_topic, "--depth-topic")
        correction_bags = _pairs(args.corrections_for, "--corrections-for")
    except ValueError as err:
        print(f"vsre ingest: {err}", file=sys.stderr)
        return EXIT_USAGE
    config = IngestConfig(
        max_skew=args.max_skew,
        max_age=args.max_age,
        use_model_answers=args.use_model_answers,
        min_confidence=args.min_confidence,
        val_fraction=args.val_fraction,
        split_window=args.split_window,
        test_fraction=args.test_fraction,
        seed=args.seed,
        image_topics=tuple(args.image_topic),
        depth_topics=depth_topics,
        default_camera=args.default_camera,
        correction_bags=correction_bags,
    )
    if not 0 <= config.val_fraction + config.test_fraction <= 1:
        print("vsre ingest: --val-fraction + --test-fraction must lie in [0, 1]", file=sys.stderr)
        return EXIT_USAGE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the report prints them once, at the end
            report = ingest(args.bags, args.out, config)
    except BagError as err:
        print(f"vsre ingest: {err}", file=sys.stderr)
        return EXIT_NO_BAG
    print(report.summary())
    if report.unreadable:
        print(
            f"vsre ingest: {len(report.unreadable)} of {len(args.bags)} bags could not be read "
            "and were skipped: " + "; ".join(report.unreadable),
            file=sys.stderr,
        )
        return EXIT_SOME_BAGS_SKIPPED
    return EXIT_OK
