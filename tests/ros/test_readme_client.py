"""The README's client snippet, run as pasted, against a stub server that has a camera frame."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from rclpy.qos import QoSProfile
from ros_helpers import ROOT
from sensor_msgs.msg import Image

from vsre_ros.ros.conversions import numpy_to_imgmsg

pytestmark = pytest.mark.dds

CAMERA = "/readme_cam/image_raw"


def readme_snippet(index: int = 0) -> str:
    """Python block `index` of the README's "Calling it from a robot node" section (0: the
    plain rclpy client, 1: the grounded-answer example)."""
    section = (ROOT / "README.md").read_text().split("## Calling it from a robot node", 1)
    assert len(section) == 2, "README has no 'Calling it from a robot node' section"
    section = section[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) > index, "missing python block under 'Calling it from a robot node'"
    return blocks[index]


def test_readme_snippet_is_found():
    code = readme_snippet()
    assert "rclpy" in code and "AskSpatial" in code
    assert "vsre_ros.client" not in code  # plain rclpy: no helper module needed


def _stub_server_with_a_frame(make_server, ros_client):
    """A stub server whose camera has one frame (stamped now), and the environment a pasted
    snippet runs in."""
    server = make_server(
        {
            "engine_backend": "stub",
            "model": "stub",
            "cameras": [CAMERA],
            "camera_qos": ["reliable"],
            "max_frame_age": 3600.0,  # the snippet's process starts after the frame is sent
            "annotated_topic": "",
            "diagnostics_period": 0.0,
        }
    )
    assert server.node.params.service_name == "vsre/ask"  # the snippets call /vsre/ask
    buffer = server.node.buffers[CAMERA]
    pub = ros_client.node.create_publisher(Image, CAMERA, QoSProfile(depth=10))
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    for _ in range(200):
        frame = numpy_to_imgmsg(rgb, "rgb8")
        frame.header.stamp = ros_client.node.get_clock().now().to_msg()
        frame.header.frame_id = "readme_cam_optical"
        pub.publish(frame)
        if ros_client.spin_until(lambda: buffer.received > 0, timeout=0.1):
            break
    assert buffer.received > 0, "the server never received a camera frame"
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def test_readme_client_snippet_runs_as_pasted(make_server, ros_client):
    run = _run(readme_snippet(), _stub_server_with_a_frame(make_server, ros_client))
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["q1", "q2", "q3"], run.stdout
    for line in lines:
        assert "status" not in line and "model=stub" in line, line
        assert "frame=readme_cam_optical" in line, line
    assert re.search(r"choice=[01] ", lines[1]), lines[1]  # the choice got an option index
    assert re.search(r"value=\d", lines[2]), lines[2]  # the number question got a value


def _fill(msg, values: dict):
    """Set `values` on `msg` field by field, as the ros2 CLI does with its YAML argument: an
    unknown field or a wrong type raises."""
    import importlib

    types = msg.get_fields_and_field_types()
    for name, value in values.items():
        assert name in types, f"{type(msg).__name__} has no field {name!r}"
        if isinstance(value, dict):
            _fill(getattr(msg, name), value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            package, _, cls = types[name].removeprefix("sequence<").rstrip(">").partition("/")
            cls = getattr(importlib.import_module(f"{package}.msg"), cls)
            setattr(msg, name, [_fill(cls(), item) for item in value])
        else:
            setattr(msg, name, value)
    return msg


def test_readme_ros2_cli_payloads_fill_the_named_interfaces():
    import importlib

    import yaml

    text = (ROOT / "README.md").read_text()
    calls = re.findall(
        r"ros2 (service call|topic pub|action send_goal)[^/\n]* (/\S+) (\S+) \\\n\s+\"(.*)\"", text
    )
    assert [verb for verb, *_ in calls] == ["service call", "topic pub", "action send_goal"]
    names = {"service call": "/vsre/ask", "topic pub": "/vsre/queries"}
    names["action send_goal"] = "/vsre/ask_batch"
    for verb, name, type_name, payload in calls:
        assert name == names[verb]
        package, kind, cls = type_name.split("/")
        interface = getattr(importlib.import_module(f"{package}.{kind}"), cls)
        message = {"srv": "Request", "action": "Goal"}.get(kind)
        msg = getattr(interface, message)() if message else interface()
        _fill(msg, yaml.safe_load(payload))
        queries = msg.queries if kind == "action" else [getattr(msg, "query", msg)]
        assert all(q.query_id and q.question for q in queries)


def test_readme_grounded_example_runs_as_pasted(make_server, ros_client):
    """The grounded example asks with VsreClient about the latest frame; with the stub engine
    the answer has no measured objects, so the snippet must run through without an error."""
    code = readme_snippet(1)
    assert "VsreClient" in code and "cup.position" in code
    env = _stub_server_with_a_frame(make_server, ros_client)
    run = _run(code + "\nprint('status', answer.status, len(answer.objects))\n", env)
    assert run.stdout.strip().splitlines()[-1].startswith("status 0 "), run.stdout
