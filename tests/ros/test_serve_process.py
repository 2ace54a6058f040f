"""`vsre serve` in its own process, driven from this one: lifecycle services and answers."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from ros_helpers import ROOT
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.srv import AskSpatial

from vsre_ros.ros.conversions import numpy_to_imgmsg

pytestmark = pytest.mark.dds


@pytest.fixture
def serve_process():
    """`vsre serve --no-activate` with the stub engine, under a unique node name."""
    name = f"vsre_server_{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "vsre_ros.cli", "serve", "--no-activate",
            "--params-file", str(ROOT / "config" / "stub.yaml"),
            "--ros-args", "-r", f"__node:={name}", "-p", f"service_name:=/{name}/ask",
            # the YAML is keyed by the default node name; a renamed node needs these itself
            "-p", "engine_backend:=stub", "-p", "model:=stub",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    yield name
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _call(client, srv_type, name, request, timeout=30.0):
    cli = client.node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=timeout), f"{name} not found"
    return client.wait(cli.call_async(request), timeout)


def _ask(client, name) -> SpatialAnswer:
    image = numpy_to_imgmsg(np.zeros((16, 16, 3), np.uint8), "rgb8")
    query = SpatialQuery(query_id="p1", question="Is it left of the box?", images=[image])
    return _call(client, AskSpatial, f"/{name}/ask", AskSpatial.Request(query=query)).answer


def _transition(client, name, transition_id) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition_id
    return _call(client, ChangeState, f"/{name}/change_state", request).success


def test_lifecycle_over_ros_services_from_another_process(serve_process, ros_client):
    name = serve_process
    state = _call(ros_client, GetState, f"/{name}/get_state", GetState.Request())
    assert state.current_state.label == "unconfigured"
    assert _ask(ros_client, name).status == SpatialAnswer.MODEL_NOT_READY
    assert _transition(ros_client, name, Transition.TRANSITION_CONFIGURE)
    assert _transition(ros_client, name, Transition.TRANSITION_ACTIVATE)
    answer = _ask(ros_client, name)
    assert answer.status == SpatialAnswer.OK, answer.error
    assert (answer.query_id, answer.model_id) == ("p1", "stub")
    assert _transition(ros_client, name, Transition.TRANSITION_DEACTIVATE)
    assert _ask(ros_client, name).status == SpatialAnswer.MODEL_NOT_READY
    assert _transition(ros_client, name, Transition.TRANSITION_CLEANUP)
    time.sleep(0.1)
    state = _call(ros_client, GetState, f"/{name}/get_state", GetState.Request())
    assert state.current_state.label == "unconfigured"
