"""The `vsre` command: one entry point, one sub-command per runnable.

Sub-commands are registered by name with the module that implements them, and imported only
when chosen, so `vsre --help` stays fast and a missing optional dependency of one sub-command
does not break the others. Each module provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("vsre_ros.sim_data.cli", "generate a simulated spatial-QA dataset"),
    "ask": ("vsre_ros.core.ask", "answer one question about image files, without ROS"),
    "train": ("vsre_ros.training.train", "two-stage tuning (stage 1, stage 2, or both)"),
    "export": ("vsre_ros.core.export", "write a model as one standalone directory"),
    "train-default": (
        "vsre_ros.training.default_model",
        "reproduce the embedded default model (vsre-tiny) from nothing, seeded",
    ),
    "evaluate": (
        "vsre_ros.training.evaluate",
        "evaluate a model on a dataset (JSON, Markdown, PNG)",
    ),
    "grounding": (
        "vsre_ros.training.grounding",
        "fit the grounding head on a frozen model; measure grounded and metric answers",
    ),
    "expand": ("vsre_ros.training.expand", "expand a dataset with diffusion or simulation"),
    "ingest": ("vsre_ros.training.bags", "turn recorded rosbag2 bags into a dataset"),
    "retrain": ("vsre_ros.training.retrain", "ingest, expand, tune, compare, export"),
    "serve": ("vsre_ros.ros.server", "run the VSRE server node"),
    "sim-camera": ("vsre_ros.ros.sim_camera", "publish simulated scenes as a camera"),
    "demo": ("vsre_ros.ros.demo", "sim camera + VSRE server + demo client, in one process"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; only the sub-command named in `argv` is imported and given its options."""
    parser = argparse.ArgumentParser(
        prog="vsre", description="vsre_ros: visual spatial reasoning for ROS 2 robots."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as err:
                if err.name != module_name:
                    raise
                parser.exit(2, f"vsre: sub-command {name!r} is not available in this build\n")
            module.add_arguments(child)
            child.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
