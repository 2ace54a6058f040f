"""Bursts against `vsre serve` in its own process: every query answered exactly once.

The server runs the stub engine at 50 ms per engine call with the default queue (16), so most of
a burst cannot be queued: those queries must come back OVERLOADED, not vanish at intake.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.srv import AskSpatial

from vsre_ros.ros.conversions import numpy_to_imgmsg

pytestmark = pytest.mark.dds

IMAGE = numpy_to_imgmsg(np.zeros((16, 16, 3), np.uint8), "rgb8")


def _query(i: int) -> SpatialQuery:
    return SpatialQuery(query_id=f"q{i}", question=f"Is thing {i} left of it?", images=[IMAGE])


def _diagnostics(client, server) -> dict:
    """The latest diagnostics values of `server` (subscribes on first use)."""
    if not hasattr(client, "diag"):
        client.diag = {}

        def keep(msg):
            for status in msg.status:
                if status.name.startswith(f"{server.name}:"):
                    client.diag = {kv.key: kv.value for kv in status.values}

        client.node.create_subscription(DiagnosticArray, "/diagnostics", keep, 10)
    return client.diag


def _wait_for_topics(client, pub, sub) -> None:
    assert client.spin_until(
        lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0, timeout=60
    ), "the server's query/answer topics never matched"
    client.spin_until(lambda: False, timeout=0.5)  # let both directions settle


def test_burst_of_2000_topic_queries_each_answered_once(serve, ros_client):
    server = serve({"model": "stub:50"})
    n = 2000
    got: list[SpatialAnswer] = []
    # The client's depths hold the whole burst: what DDS overwrites on the client side is lost
    # before the server ever sees it (README: QoS advice).
    sub = ros_client.node.create_subscription(
        SpatialAnswer, server.names["answer_topic"], got.append, QoSProfile(depth=n)
    )
    pub = ros_client.node.create_publisher(
        SpatialQuery, server.names["query_topic"], QoSProfile(depth=n)
    )
    _wait_for_topics(ros_client, pub, sub)
    _diagnostics(ros_client, server)
    for i in range(n):
        pub.publish(_query(i))
    assert ros_client.spin_until(lambda: len(got) >= n, timeout=120), f"{len(got)} of {n} answered"
    ros_client.spin_until(lambda: False, timeout=1.0)  # a duplicate would arrive now
    counts = Counter(a.query_id for a in got)
    assert set(counts) == {f"q{i}" for i in range(n)}
    assert max(counts.values()) == 1, "duplicated answers"
    statuses = Counter(a.status for a in got)
    assert set(statuses) <= {SpatialAnswer.OK, SpatialAnswer.OVERLOADED}, statuses
    assert statuses[SpatialAnswer.OK] >= 16
    assert statuses[SpatialAnswer.OVERLOADED] >= 1
    overloaded = next(a for a in got if a.status == SpatialAnswer.OVERLOADED)
    assert "queue is full" in overloaded.error
    # The server's own count of what it took in matches what it answered.
    assert ros_client.spin_until(
        lambda: _diagnostics(ros_client, server).get("received") == str(n), timeout=10
    ), ros_client.diag
    assert ros_client.diag["answered"] == str(n)


def test_500_simultaneous_service_calls_each_answered_once(serve, ros_client):
    server = serve({"model": "stub:50"})
    n = 500
    # rclpy's default client depth (10) would drop responses that arrive together.
    cli = ros_client.node.create_client(
        AskSpatial, server.names["service_name"], qos_profile=QoSProfile(depth=1000)
    )
    assert cli.wait_for_service(timeout_sec=60)
    time.sleep(0.5)
    futures = [cli.call_async(AskSpatial.Request(query=_query(i))) for i in range(n)]
    assert ros_client.spin_until(lambda: all(f.done() for f in futures), timeout=120), (
        f"{sum(f.done() for f in futures)} of {n} answered"
    )
    answers = [f.result().answer for f in futures]
    assert [a.query_id for a in answers] == [f"q{i}" for i in range(n)]
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {SpatialAnswer.OK, SpatialAnswer.OVERLOADED}, statuses
    assert statuses[SpatialAnswer.OK] >= 16 and statuses[SpatialAnswer.OVERLOADED] >= 1
