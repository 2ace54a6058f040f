"""Every vsre_ros interface crosses real DDS between two processes.

The peer (`dds_peer.py`) echoes what it received into the answer, so each test checks that the
fields of the query arrived intact, not merely that something came back.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Time
from rclpy.action import ActionClient
from sensor_msgs.msg import Image
from vsre_ros.action import AskSpatial as AskSpatialAction
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.srv import AskSpatial

pytestmark = pytest.mark.dds
PEER = str(Path(__file__).with_name("dds_peer.py"))


@pytest.fixture
def peer(spawn):
    """The peer process; returns the prefix of its endpoint names."""
    prefix = f"/dds_{uuid.uuid4().hex[:8]}"
    spawn([PEER, prefix])
    return prefix


def _query(i: int, question: str = "Is the cup left of the box?") -> SpatialQuery:
    return SpatialQuery(
        query_id=f"q{i}",
        question=question,
        subj="cup",
        relation="left of",
        obj="box",
        answer_kind=SpatialQuery.KIND_CHOICE,
        options=["a", "b", "c"],
        camera="/cam/image",
        stamp=Time(sec=12, nanosec=34),
        max_age=0.5,
        images=[Image(width=4, height=2), Image(width=3, height=3)],
    )


def _assert_echo(answer: SpatialAnswer, i: int, question: str = "Is the cup left of the box?"):
    assert answer.query_id == f"q{i}"
    assert answer.status == SpatialAnswer.OK
    assert answer.answer == f"{question}|cup|left of|box"
    assert answer.choice_index == 3
    assert answer.value == 17.0
    assert answer.unit == "/cam/image"
    assert answer.probability == pytest.approx(0.5)
    assert (answer.header.stamp.sec, answer.header.stamp.nanosec) == (12, 34)


def test_topic_query_gets_its_answer(peer, ros_client):
    node = ros_client.node
    received: list[SpatialAnswer] = []
    node.create_subscription(SpatialAnswer, f"{peer}/answers", received.append, 10)
    pub = node.create_publisher(SpatialQuery, f"{peer}/queries", 10)
    deadline = time.monotonic() + 20
    # Publish until matched: a message sent before discovery completes is simply not delivered.
    while not received and time.monotonic() < deadline:
        pub.publish(_query(1))
        ros_client.spin_until(lambda: bool(received), timeout=0.3)
    assert received, "no SpatialAnswer on vsre/answers within 20 s"
    _assert_echo(received[0], 1)


def test_service_call_round_trip(peer, ros_client):
    client = ros_client.node.create_client(AskSpatial, f"{peer}/ask")
    assert client.wait_for_service(timeout_sec=20), "service not found"
    response = ros_client.wait(client.call_async(AskSpatial.Request(query=_query(2))))
    _assert_echo(response.answer, 2)


def _action_client(ros_client, prefix: str) -> ActionClient:
    client = ActionClient(ros_client.node, AskSpatialAction, f"{prefix}/ask_batch")
    assert client.wait_for_server(timeout_sec=20), "action server not found"
    return client


def test_action_goal_streams_feedback_then_result(peer, ros_client):
    client = _action_client(ros_client, peer)
    feedback = []
    goal = AskSpatialAction.Goal(queries=[_query(i) for i in range(3)])
    handle = ros_client.wait(client.send_goal_async(goal, feedback_callback=feedback.append))
    assert handle.accepted
    # rclpy drops feedback that arrives after the result is in, so collect it first.
    assert ros_client.spin_until(lambda: len(feedback) == 3, timeout=20)
    result = ros_client.wait(handle.get_result_async())
    assert result.status == GoalStatus.STATUS_SUCCEEDED
    for i, answer in enumerate(result.result.answers):
        _assert_echo(answer, i)
    assert [f.feedback.answered for f in feedback] == [1, 2, 3]
    assert {f.feedback.total for f in feedback} == {3}
    assert [f.feedback.answer.query_id for f in feedback] == ["q0", "q1", "q2"]


def test_action_goal_can_be_cancelled(peer, ros_client):
    client = _action_client(ros_client, peer)
    feedback = []
    goal = AskSpatialAction.Goal(queries=[_query(i, "slow question") for i in range(30)])
    handle = ros_client.wait(client.send_goal_async(goal, feedback_callback=feedback.append))
    assert ros_client.spin_until(lambda: bool(feedback), timeout=20), "no feedback"
    cancel = ros_client.wait(handle.cancel_goal_async())
    assert len(cancel.goals_canceling) == 1
    result = ros_client.wait(handle.get_result_async())
    assert result.status == GoalStatus.STATUS_CANCELED
    answers = result.result.answers
    assert [a.query_id for a in answers] == [f"q{i}" for i in range(30)]
    statuses = [a.status for a in answers]
    assert statuses[0] == SpatialAnswer.OK
    assert statuses[-1] == SpatialAnswer.CANCELLED
    assert statuses == sorted(statuses)  # answered first, then the cancelled rest
