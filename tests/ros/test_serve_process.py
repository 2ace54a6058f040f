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


def test_failed_configure_keeps_serving_model_not_ready_and_shutdown_ends_it(serve, ros_client):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    server = serve({"model": "no-such-model"})  # the stub engine refuses it: configure fails
    name = server.name
    diagnostics: list = []
    ros_client.node.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda msg: diagnostics.extend(s for s in msg.status if s.name.startswith(f"{name}:")),
        10,
    )
    answer = _call(
        ros_client, AskSpatial, server.names["service_name"],
        AskSpatial.Request(query=SpatialQuery(query_id="p2", question="Is it left?")),
    ).answer  # fmt: skip
    assert server.proc.poll() is None, server.output()
    assert answer.status == SpatialAnswer.MODEL_NOT_READY
    assert "no-such-model" in answer.error
    assert ros_client.spin_until(lambda: bool(diagnostics), timeout=10)
    assert diagnostics[-1].level == DiagnosticStatus.ERROR
    assert "no-such-model" in diagnostics[-1].message
    assert "The node stays up" in server.output()

    assert _transition(ros_client, name, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert server.proc.wait(timeout=15) == 0


def test_lifecycle_shutdown_of_an_active_server_ends_the_process(serve, ros_client):
    server = serve()
    state = _call(ros_client, GetState, f"/{server.name}/get_state", GetState.Request())
    assert state.current_state.label == "active"
    assert _transition(ros_client, server.name, Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert server.proc.wait(timeout=15) == 0
    assert "shut down (finalized)" in server.output()
