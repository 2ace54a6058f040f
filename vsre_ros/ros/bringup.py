"""The package's node list, shared by the launch files and the in-process bring-up.

`NODES` names each node once: its ROS name (the key in the params YAML), the console script a
launch file starts, the class the in-process bring-up instantiates, and which launch files
include it. `launch/*.launch.py` build their `launch_ros` Node actions from this list (a test
checks they agree), and `vsre demo` builds the same nodes in one process on one
MultiThreadedExecutor, with the same params YAML, because `ros2 launch` is not available where
ROS 2 comes only from PyPI wheels.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "vsre_ros"
DEFAULT_PRESET = "vsre-tiny"


@dataclass(frozen=True)
class NodeSpec:
    """One node of the package."""

    name: str  # ROS node name; the params YAML's top-level key for it
    executable: str  # console script (setup.py) that runs it alone
    factory: str  # "module:Class" built by the in-process bring-up
    launch_files: tuple[str, ...]  # launch files (launch/<x>.launch.py) that start it

    def node_class(self) -> type:
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


NODES: tuple[NodeSpec, ...] = (
    NodeSpec("vsre_server", "vsre_server", "vsre_ros.ros.server:VsreServer", ("server", "demo")),
    NodeSpec(
        "vsre_sim_camera", "vsre_sim_camera", "vsre_ros.ros.sim_camera:SimCameraNode", ("demo",)
    ),
    NodeSpec("vsre_demo_client", "vsre_demo_client", "vsre_ros.ros.demo:DemoClient", ("demo",)),
)


def nodes_for(launch_file: str) -> list[NodeSpec]:
    """The nodes a launch file ("server" or "demo") starts, in order."""
    chosen = [spec for spec in NODES if launch_file in spec.launch_files]
    if not chosen:
        known = sorted({name for spec in NODES for name in spec.launch_files})
        raise ValueError(f"unknown launch file {launch_file!r}; known: {known}")
    return chosen


def config_dirs() -> list[Path]:
    """Where params YAML files are looked for: the source checkout, then the install."""
    source = Path(__file__).resolve().parents[2] / "config"
    installed = Path(sys.prefix) / "share" / PACKAGE / "config"
    return [d for d in (source, installed) if d.is_dir()]


def params_files() -> dict[str, Path]:
    """preset -> its params YAML (config/*.yaml holding ROS parameters), source checkout first."""
    found: dict[str, Path] = {}
    for directory in config_dirs():
        for path in sorted(directory.glob("*.yaml")):
            # config/ also holds other YAML (e.g. model paths); params files set ros__parameters.
            if path.stem not in found and "ros__parameters" in path.read_text():
                found[path.stem] = path
    return found


def config_file(preset: str = DEFAULT_PRESET) -> Path:
    """config/<preset>.yaml; ValueError naming the presets that have one."""
    files = params_files()
    if preset not in files:
        raise ValueError(f"no params file for preset {preset!r}; known: {sorted(files)}")
    return files[preset]


def make_launch_description(launch_file: str):
    """The `ros2 launch` description of a launch file, built from NODES.

    Launch arguments: `preset` (config/<preset>.yaml from the installed share directory) and
    `params_file` (a YAML path that replaces it). Each node gets the YAML and `output=screen`.
    Only real ROS 2 installs have `launch`/`launch_ros`; they are imported here, not at the top.
    """
    import os

    from ament_index_python.packages import get_package_share_directory
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    from launch import LaunchDescription

    specs = nodes_for(launch_file)

    def nodes(context, *args, **kwargs):
        preset = LaunchConfiguration("preset").perform(context)
        params = LaunchConfiguration("params_file").perform(context)
        if not params:
            share = get_package_share_directory(PACKAGE)
            params = os.path.join(share, "config", f"{preset}.yaml")
        return [
            Node(
                package=PACKAGE,
                executable=spec.executable,
                name=spec.name,
                parameters=[params],
                output="screen",
            )
            for spec in specs
        ]

    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "preset", default_value=DEFAULT_PRESET, description="config/<preset>.yaml"
            ),
            DeclareLaunchArgument(
                "params_file", default_value="", description="params YAML instead of the preset's"
            ),
            OpaqueFunction(function=nodes),
        ]
    )


def shutdown_executor(executor, timeout_sec: float = 10.0) -> None:
    """Shut an executor down after the callbacks it has already handed to its threads.

    A MultiThreadedExecutor's `spin_once` queues each ready callback on a thread pool and
    returns. `Executor.shutdown` is documented to wait for outstanding callbacks, but the
    installed rclpy sets its shutdown flag before testing it, so it never waits: it destroys
    the guard condition while queued callbacks still trigger it, and each raises InvalidHandle
    on a pool thread ("Future exception was never retrieved" at exit). Draining the pool first
    lets them finish against a live guard. The pool is a private attribute (`_executor`), read
    defensively; without it this is plain `shutdown`.
    """
    pool = getattr(executor, "_executor", None)
    if pool is not None and hasattr(pool, "shutdown"):
        pool.shutdown(wait=True)
    executor.shutdown(timeout_sec=timeout_sec)


def spin_alone(node, executor, until=lambda: False, period: float = 0.1) -> bool:
    """Spin one node until `until()` holds, Ctrl-C or rclpy shutdown; then tear everything down.

    Used by the single-node console scripts. Returns True when `until()` ended the spin.
    rclpy is imported here, not at module level: launch files import this module too.
    """
    import rclpy

    executor.add_node(node)
    reached = False
    try:
        while rclpy.ok() and not (reached := until()):
            executor.spin_once(timeout_sec=period)
    except KeyboardInterrupt:
        pass
    finally:
        shutdown_executor(executor)
        node.destroy_node()
        rclpy.try_shutdown()
    return reached
