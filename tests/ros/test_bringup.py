"""Launch files, params YAML, console scripts and the in-process bring-up agree on the nodes."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from vsre_ros.ros import bringup, params

ROOT = Path(__file__).resolve().parents[2]
NODE_PARAMS = {
    "vsre_server": params.ServerParams,
    "vsre_sim_camera": params.SimCameraParams,
    "vsre_demo_client": params.DemoClientParams,
}


class _Recorded:
    """Stands in for a launch action class: remembers how it was constructed."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules(monkeypatch, share: Path) -> None:
    """launch / launch_ros / ament_index_python as recorders (not installable from PyPI)."""

    class LaunchConfiguration:
        values: dict[str, str] = {}

        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    fakes = {
        "launch": {"LaunchDescription": _Recorded},
        "launch.actions": {"DeclareLaunchArgument": _Recorded, "OpaqueFunction": _Recorded},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"Node": _Recorded},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda pkg: str(share)},
    }
    for name, attrs in fakes.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


def _launch(path: Path, context: dict) -> tuple[list, list]:
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    actions = description.args[0]
    arguments = [a for a in actions if "default_value" in a.kwargs]
    opaque = next(a for a in actions if "function" in a.kwargs)
    return arguments, opaque.kwargs["function"](context)


@pytest.mark.parametrize("launch_file", ["server", "demo"])
def test_launch_file_starts_the_node_list_with_the_preset_yaml(monkeypatch, launch_file):
    _fake_launch_modules(monkeypatch, Path("/opt/share/vsre_ros"))
    path = ROOT / "launch" / f"vsre_{launch_file}.launch.py"
    arguments, nodes = _launch(path, {"preset": "vsre-paper", "params_file": ""})
    assert {a.args[0]: a.kwargs["default_value"] for a in arguments} == {
        "preset": bringup.DEFAULT_PRESET,
        "params_file": "",
    }
    expected = bringup.nodes_for(launch_file)
    assert [(n.kwargs["name"], n.kwargs["executable"]) for n in nodes] == [
        (spec.name, spec.executable) for spec in expected
    ]
    for node in nodes:
        assert node.kwargs["package"] == "vsre_ros"
        assert node.kwargs["parameters"] == ["/opt/share/vsre_ros/config/vsre-paper.yaml"]


def test_launch_params_file_argument_replaces_the_preset(monkeypatch):
    _fake_launch_modules(monkeypatch, Path("/unused"))
    _, nodes = _launch(
        ROOT / "launch" / "vsre_demo.launch.py", {"preset": "x", "params_file": "/my.yaml"}
    )
    assert {tuple(n.kwargs["parameters"]) for n in nodes} == {("/my.yaml",)}


def test_every_launch_file_on_disk_is_one_the_node_list_names():
    on_disk = {p.name for p in (ROOT / "launch").glob("*.launch.py")}
    named = {f"vsre_{name}.launch.py" for spec in bringup.NODES for name in spec.launch_files}
    assert on_disk == named


def test_every_node_has_a_console_script_and_a_class():
    setup = (ROOT / "setup.py").read_text()
    for spec in bringup.NODES:
        assert re.search(rf'"{spec.executable} = vsre_ros\.ros\.\w+:\w+"', setup), spec.executable
        assert spec.node_class().__name__ == spec.factory.split(":")[1]
        assert spec.name in NODE_PARAMS


@pytest.mark.parametrize("yaml_path", sorted(bringup.params_files().values()))
def test_params_yaml_sets_only_declared_parameters_and_wires_topics(yaml_path):
    data = yaml.safe_load(yaml_path.read_text())
    assert set(data) == {spec.name for spec in bringup.NODES}
    values = {}
    for node, section in data.items():
        given = section["ros__parameters"]
        fields = {f.name: f for f in dataclasses.fields(NODE_PARAMS[node])}
        assert set(given) <= set(fields), f"{yaml_path.name}: {node}: {set(given) - set(fields)}"
        for name, value in given.items():
            default = getattr(NODE_PARAMS[node](), name)
            assert type(value) is type(default) or isinstance(default, list), (node, name)
        values[node] = NODE_PARAMS[node](**given)
        values[node].validate()
    server, camera, client = (values[n] for n in NODE_PARAMS)
    assert server.cameras[0] == camera.image_topic
    assert server.depth_topics == [camera.depth_topic]
    assert server.camera_info_topics == [camera.info_topic]
    assert client.truth_topic == camera.truth_topic
    assert (client.query_topic, client.answer_topic) == (server.query_topic, server.answer_topic)


def test_config_file_finds_presets_and_names_the_known_ones():
    assert bringup.config_file("vsre-tiny").name == "vsre-tiny.yaml"
    assert {"vsre-tiny", "vsre-tiny-channel", "vsre-paper", "stub"} <= set(bringup.params_files())
    with pytest.raises(ValueError, match=r"no params file for preset 'nope'; known: \[.*stub"):
        bringup.config_file("nope")


def test_unknown_launch_file_is_refused():
    with pytest.raises(ValueError, match="unknown launch file 'all'"):
        bringup.nodes_for("all")


@pytest.mark.parametrize("command", ["serve", "sim-camera", "demo"])
def test_ros_sub_commands_have_help(command, capsys):
    from vsre_ros.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--params-file" in capsys.readouterr().out


def test_readme_documents_every_parameter_and_interface_field():
    readme = (ROOT / "README.md").read_text()
    for cls in NODE_PARAMS.values():
        for name, _help, _default in params.parameter_docs(cls):
            assert f"| `{name}` |" in readme, f"parameter {name} missing from README"
    for path in sorted(ROOT.glob("msg/*.msg")) + sorted(ROOT.glob("srv/*.srv")):
        assert f"`{path.parent.name}/{path.name}`" in readme, path.name


def test_spin_alone_stops_when_done_and_tears_down():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vsre_ros.ros.bringup import spin_alone

    rclpy.init()
    node = rclpy.create_node("spin_alone_probe")
    ticks = []
    node.create_timer(0.01, lambda: ticks.append(1))
    assert spin_alone(node, SingleThreadedExecutor(), until=lambda: len(ticks) >= 3, period=0.05)
    assert len(ticks) >= 3
    assert not rclpy.ok()  # rclpy was shut down with the node


@pytest.mark.parametrize("drain", [True, False])
def test_shutdown_executor_runs_every_callback_already_dispatched(drain):
    """Each `spin_once` hands one ready timer to a pool of two threads; six are handed out.

    Drained, all six callbacks run. With plain `executor.shutdown()` (drain=False) the ones still
    queued hit the destroyed guard condition and their callbacks never run: the test documents
    the rclpy behaviour the helper works around, and tells when it can go.
    """
    import time

    import rclpy
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import MultiThreadedExecutor

    from vsre_ros.ros.bringup import shutdown_executor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("shutdown_probe", context=context)
    finished = []

    def slow():
        time.sleep(0.05)
        finished.append(1)

    group = ReentrantCallbackGroup()  # the node's default group would run one at a time
    for _ in range(6):
        node.create_timer(0.001, slow, callback_group=group)
    executor = MultiThreadedExecutor(num_threads=2, context=context)
    executor.add_node(node)
    time.sleep(0.01)  # every timer is ready, so each spin_once dispatches one callback
    for _ in range(6):
        executor.spin_once(timeout_sec=1.0)
    try:
        if drain:
            shutdown_executor(executor)
            assert len(finished) == 6
        else:
            executor.shutdown()
            assert len(finished) < 6
    finally:
        node.destroy_node()
        context.try_shutdown()
