"""The VSRE server node over real DDS: answers, statuses, lifecycle, model switch, soak.

The server runs the stub engine (a fixed-time function of the question) so these tests pin the
node's plumbing; tests/ros/test_server_model.py runs it on a tiny real model.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Time
from rclpy.action import ActionClient
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image
from vsre_ros.action import AskSpatial as AskSpatialAction
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.srv import AskSpatial

from vsre_ros.ros import engines
from vsre_ros.ros.conversions import numpy_to_imgmsg

pytestmark = pytest.mark.dds


def _names() -> dict:
    """Topic names private to one test, so tests never hear each other."""
    p = f"t{uuid.uuid4().hex[:8]}"
    return {
        "cameras": [f"/{p}/cam/image"],
        "camera_qos": ["reliable"],
        "query_topic": f"/{p}/queries",
        "answer_topic": f"/{p}/answers",
        "service_name": f"/{p}/ask",
        "action_name": f"/{p}/ask_batch",
        "annotated_topic": f"/{p}/annotated",
        "markers_topic": f"/{p}/markers",
        "diagnostics_period": 0.0,
    }


def _params(**extra) -> dict:
    return {**_names(), "engine_backend": "stub", "model": "stub", **extra}


def _frame(client, stamp: Time | None = None) -> Image:
    rgb = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    msg = numpy_to_imgmsg(rgb, "rgb8")
    msg.header.stamp = stamp or client.node.get_clock().now().to_msg()
    msg.header.frame_id = "cam_optical"
    return msg


def _feed(client, server, stamp: Time | None = None) -> None:
    """Publish frames until the server has one (discovery takes a moment)."""
    topic = server.node.params.cameras[0]
    buffer = server.node.buffers[topic]
    pub = client.node.create_publisher(Image, topic, QoSProfile(depth=10))
    before = buffer.received
    for _ in range(200):
        pub.publish(_frame(client, stamp))
        if client.spin_until(lambda: buffer.received > before, timeout=0.1):
            return
    raise AssertionError("the server never received a camera frame")


def _ask(client, server, query: SpatialQuery, timeout: float = 20.0) -> SpatialAnswer:
    cli = client.node.create_client(AskSpatial, server.node.params.service_name)
    assert cli.wait_for_service(timeout_sec=20)
    return client.wait(cli.call_async(AskSpatial.Request(query=query)), timeout).answer


def _q(i=0, question="Is the cup left of the box?", **fields) -> SpatialQuery:
    return SpatialQuery(query_id=f"q{i}", question=question, **fields)


@pytest.fixture
def recorded(monkeypatch) -> list:
    """Registers engine backend "recording" (the stub, keeping every query it is given) and
    returns the list of those queries."""
    seen: list = []

    class Recording(engines.StubEngine):
        def answer(self, queries):
            seen.extend(queries)
            return super().answer(queries)

    monkeypatch.setitem(engines.ENGINE_BACKENDS, "recording", Recording)
    return seen


@pytest.fixture
def served(make_server, ros_client):
    server = make_server(_params())
    _feed(ros_client, server)
    return server, ros_client


def test_service_answers_about_the_latest_frame(served):
    server, client = served
    answer = _ask(client, server, _q(7))
    assert answer.status == SpatialAnswer.OK, answer.error
    assert answer.query_id == "q7"
    assert answer.answer in ("yes", "no")
    assert answer.model_id == "stub"
    assert answer.header.frame_id == "cam_optical"
    assert answer.latency_total_ms >= answer.latency_model_ms >= 0


def test_topic_query_is_answered_on_the_answer_topic(served):
    server, client = served
    got: list[SpatialAnswer] = []
    client.node.create_subscription(SpatialAnswer, server.node.params.answer_topic, got.append, 10)
    pub = client.node.create_publisher(SpatialQuery, server.node.params.query_topic, 10)
    for _ in range(100):
        pub.publish(_q(3, answer_kind=SpatialQuery.KIND_NUMBER))
        if client.spin_until(lambda: bool(got), timeout=0.2):
            break
    assert got and got[0].status == SpatialAnswer.OK, got and got[0].error
    assert got[0].unit == "m" and got[0].value > 0


def test_action_batch_gives_feedback_and_answers_in_order(served):
    server, client = served
    action = ActionClient(
        client.node,
        AskSpatialAction,
        server.node.params.action_name,
        feedback_sub_qos_profile=QoSProfile(depth=100),
    )
    assert action.wait_for_server(timeout_sec=20)
    options = ["left", "right", "above"]
    queries = [_q(i, f"Where is thing {i}?", answer_kind=1, options=options) for i in range(12)]
    feedback = []
    handle = client.wait(
        action.send_goal_async(AskSpatialAction.Goal(queries=queries), feedback.append)
    )
    # rclpy drops feedback that arrives after the result, so collect it first.
    assert client.spin_until(lambda: len(feedback) == 12, timeout=20)
    assert [f.feedback.answered for f in feedback] == list(range(1, 13))
    assert {f.feedback.total for f in feedback} == {12}
    result = client.wait(handle.get_result_async())
    assert result.status == GoalStatus.STATUS_SUCCEEDED
    answers = result.result.answers
    assert [a.query_id for a in answers] == [f"q{i}" for i in range(12)]
    assert all(a.status == SpatialAnswer.OK for a in answers)
    assert all(a.answer == options[a.choice_index] for a in answers)
    assert [f.feedback.answer.query_id for f in feedback] == [a.query_id for a in answers]


def test_action_cancel_marks_the_rest_cancelled(make_server, ros_client):
    server = make_server(_params(model="stub:100", batch_size=1))
    _feed(ros_client, server)
    action = ActionClient(ros_client.node, AskSpatialAction, server.node.params.action_name)
    assert action.wait_for_server(timeout_sec=20)
    feedback = []
    goal = AskSpatialAction.Goal(queries=[_q(i) for i in range(40)])
    handle = ros_client.wait(action.send_goal_async(goal, feedback.append))
    assert ros_client.spin_until(lambda: bool(feedback), timeout=20)
    ros_client.wait(handle.cancel_goal_async())
    result = ros_client.wait(handle.get_result_async())
    assert result.status == GoalStatus.STATUS_CANCELED
    statuses = [a.status for a in result.result.answers]
    assert statuses[0] == SpatialAnswer.OK
    assert statuses[-1] == SpatialAnswer.CANCELLED
    assert set(statuses) == {SpatialAnswer.OK, SpatialAnswer.CANCELLED}
    assert [a.query_id for a in result.result.answers] == [f"q{i}" for i in range(40)]


# --- statuses ---------------------------------------------------------------------------------


def test_no_frame_before_any_camera_frame(make_server, ros_client):
    server = make_server(_params())
    answer = _ask(ros_client, server, _q())
    assert answer.status == SpatialAnswer.NO_FRAME
    assert "no frame received yet" in answer.error


def test_unknown_camera_is_no_frame_naming_the_cameras(served):
    server, client = served
    answer = _ask(client, server, _q(camera="/elsewhere/image"))
    assert answer.status == SpatialAnswer.NO_FRAME
    assert server.node.params.cameras[0] in answer.error


def test_camera_found_by_frame_id(served):
    server, client = served
    assert _ask(client, server, _q(camera="cam_optical")).status == SpatialAnswer.OK


def test_old_latest_frame_is_stale(make_server, ros_client):
    server = make_server(_params())
    now = ros_client.node.get_clock().now().nanoseconds
    old = now - 5_000_000_000
    _feed(ros_client, server, Time(sec=old // 10**9, nanosec=old % 10**9))
    answer = _ask(ros_client, server, _q(max_age=1.0))
    assert answer.status == SpatialAnswer.STALE_FRAME
    assert "max_age is 1.000 s" in answer.error


def test_frame_that_left_the_buffer_is_stale_saying_so(make_server, ros_client):
    server = make_server(_params(frame_buffer=3, max_frame_age=0.0))
    for sec in (100, 101, 102, 103):
        _feed(ros_client, server, Time(sec=sec))
    answer = _ask(ros_client, server, _q(stamp=Time(sec=100)))
    assert answer.status == SpatialAnswer.STALE_FRAME
    assert "older than the oldest frame held" in answer.error
    assert "last 3 frames (frame_buffer)" in answer.error and "raise frame_buffer" in answer.error
    values = {kv.key: kv.value for kv in server.node.diagnostics().values}
    assert values[f"frames_buffered {server.node.params.cameras[0]}"] == "3 (2.000 s)"


def test_requested_stamp_far_from_every_frame_is_stale(served):
    server, client = served
    answer = _ask(client, server, _q(stamp=Time(sec=5)))
    assert answer.status == SpatialAnswer.STALE_FRAME
    assert "of the requested stamp" in answer.error


def test_requested_stamp_picks_that_frame(make_server, ros_client):
    server = make_server(_params(max_frame_age=0.0))
    _feed(ros_client, server, Time(sec=100, nanosec=0))
    _feed(ros_client, server, Time(sec=200, nanosec=0))
    answer = _ask(ros_client, server, _q(stamp=Time(sec=100, nanosec=1000)))
    assert answer.status == SpatialAnswer.OK, answer.error
    assert answer.header.stamp.sec == 100


def test_malformed_inline_image_is_bad_image_naming_which(served):
    server, client = served
    good = numpy_to_imgmsg(np.zeros((4, 4, 3), np.uint8), "rgb8")
    bad = Image(height=4, width=4, encoding="rgb8", step=12)
    bad.data = bytes(10)
    answer = _ask(client, server, _q(images=[good, bad]))
    assert answer.status == SpatialAnswer.BAD_IMAGE
    assert "inline image #1" in answer.error and "data has 10 bytes" in answer.error


def test_inline_images_are_answered_without_a_camera(make_server, ros_client):
    server = make_server(_params())  # no camera frame at all
    image = numpy_to_imgmsg(np.zeros((8, 8, 3), np.uint8), "rgb8")
    answer = _ask(ros_client, server, _q(images=[image, image]))
    assert answer.status == SpatialAnswer.OK, answer.error


@pytest.mark.parametrize(
    ("question", "fields", "match"),
    [
        ("   ", {}, "question is empty"),
        ("x" * 3000, {}, "the limit is 2000"),
        ("Which?", {"answer_kind": 1, "options": ["only"]}, "at least two options"),
        ("Which?", {"answer_kind": 9}, "unknown answer_kind 9"),
        ("Which?", {"answer_kind": 1, "options": ["", ""]}, "option #0 is empty"),
        ("Which?", {"answer_kind": 1, "options": ["a", "  "]}, "option #1 is empty"),
        ("Which?", {"answer_kind": 1, "options": list("abcdefghijklmnopqrstuvwxyz" * 3)},
         "78 options; the limit is 64 (parameter max_options)"),
        ("Which?", {"answer_kind": 1, "options": ["a", "b" * 201]},
         "option #1 has 201 characters; the limit is 200"),
        ("Is it?", {"max_age": -1.0}, "max_age is -1.0"),
        ("Is it?", {"max_age": float("nan")}, "max_age is nan"),
        ("Is it?", {"max_age": float("inf")}, "max_age is inf"),
    ],
)  # fmt: skip
def test_bad_questions(served, question, fields, match):
    server, client = served
    answer = _ask(client, server, _q(question=question, **fields))
    assert answer.status == SpatialAnswer.BAD_QUESTION
    assert match in answer.error


def test_limits_are_parameters_and_10000_options_are_refused_at_once(make_server, ros_client):
    server = make_server(_params(max_options=3, max_option_chars=5))
    _feed(ros_client, server)
    answer = _ask(ros_client, server, _q(answer_kind=1, options=["a", "b", "c", "d"]))
    assert answer.status == SpatialAnswer.BAD_QUESTION
    assert "4 options; the limit is 3" in answer.error
    answer = _ask(ros_client, server, _q(answer_kind=1, options=["a", "abcdef"]))
    assert "the limit is 5 (parameter max_option_chars)" in answer.error
    many = [f"option {i}" for i in range(10_000)]
    answer = _ask(ros_client, server, _q(answer_kind=1, options=many))
    assert answer.status == SpatialAnswer.BAD_QUESTION and "10000 options" in answer.error
    assert answer.latency_total_ms < 1000


def test_flood_gets_overloaded_and_every_query_one_answer(make_server, ros_client):
    server = make_server(_params(model="stub:200", queue_size=2, batch_size=1))
    _feed(ros_client, server)
    got: list[SpatialAnswer] = []
    ros_client.node.create_subscription(
        SpatialAnswer, server.node.params.answer_topic, got.append, QoSProfile(depth=100)
    )
    pub = ros_client.node.create_publisher(
        SpatialQuery, server.node.params.query_topic, QoSProfile(depth=100)
    )
    assert ros_client.spin_until(lambda: pub.get_subscription_count() > 0, timeout=20)
    time.sleep(0.5)  # let the answer subscription match too
    for i in range(12):
        pub.publish(_q(i))
    assert ros_client.spin_until(lambda: len(got) >= 12, timeout=30)
    ros_client.spin_until(lambda: False, timeout=0.5)  # any duplicate would arrive now
    assert sorted(a.query_id for a in got) == sorted(f"q{i}" for i in range(12))
    statuses = Counter(a.status for a in got)
    assert statuses[SpatialAnswer.OVERLOADED] >= 1
    assert statuses[SpatialAnswer.OK] >= 1
    overloaded = next(a for a in got if a.status == SpatialAnswer.OVERLOADED)
    assert "queue is full" in overloaded.error


def test_bad_camera_frame_is_bad_image(make_server, ros_client):
    server = make_server(_params())
    good = _frame(ros_client)
    good.data = good.data[:-3]  # one pixel short
    topic = server.node.params.cameras[0]
    pub = ros_client.node.create_publisher(Image, topic, QoSProfile(depth=10))
    buffer = server.node.buffers[topic]
    for _ in range(200):
        good.header.stamp = ros_client.node.get_clock().now().to_msg()
        pub.publish(good)
        if ros_client.spin_until(lambda: buffer.received > 0, timeout=0.1):
            break
    answer = _ask(ros_client, server, _q())
    assert answer.status == SpatialAnswer.BAD_IMAGE
    assert "step x height" in answer.error
    assert f"the frame of camera {topic}" in answer.error


def _publish_until(client, pub, msg, received) -> None:
    for _ in range(200):
        msg.header.stamp = client.node.get_clock().now().to_msg()
        pub.publish(msg)
        if client.spin_until(received, timeout=0.1):
            return
    raise AssertionError("the server never received the message")


def test_bad_depth_image_is_bad_image_naming_the_depth_topic(make_server, ros_client):
    names = _names()
    depth_topic = names["cameras"][0] + "_depth"
    server = make_server(
        {**names, "engine_backend": "stub", "model": "stub", "depth_topics": [depth_topic]}
    )
    buffer = server.node.buffers[names["cameras"][0]]
    depth = numpy_to_imgmsg(np.ones((24, 32), np.float32), "32FC1")
    depth.data = depth.data[:10]  # 10 bytes
    pub = ros_client.node.create_publisher(Image, depth_topic, QoSProfile(depth=10))
    _publish_until(ros_client, pub, depth, lambda: bool(buffer._depth))
    stamp = buffer._depth[-1][1].header.stamp
    _feed(ros_client, server, stamp)
    answer = _ask(ros_client, server, _q(stamp=stamp))
    assert answer.status == SpatialAnswer.BAD_IMAGE, answer.error
    assert f"the depth image of camera {names['cameras'][0]} (topic {depth_topic}" in answer.error
    assert "data has 10 bytes" in answer.error


def test_garbage_compressed_frame_reads_without_an_object_repr(make_server, ros_client):
    from sensor_msgs.msg import CompressedImage

    names = _names()
    server = make_server(
        {**names, "engine_backend": "stub", "model": "stub", "camera_transports": ["compressed"]}
    )
    topic = names["cameras"][0]
    garbage = CompressedImage(format="jpeg")
    garbage.data = b"not a jpeg at all"
    pub = ros_client.node.create_publisher(CompressedImage, topic, QoSProfile(depth=10))
    _publish_until(ros_client, pub, garbage, lambda: server.node.buffers[topic].received > 0)
    answer = _ask(ros_client, server, _q())
    assert answer.status == SpatialAnswer.BAD_IMAGE
    assert f"the frame of camera {topic}" in answer.error
    assert "not an image format Pillow reads" in answer.error
    assert "0x" not in answer.error and "BytesIO" not in answer.error


def test_goals_beyond_max_goals_get_overloaded_for_every_query(make_server, ros_client):
    server = make_server(_params(model="stub:200", batch_size=1, max_goals=1))
    _feed(ros_client, server)
    action = ActionClient(ros_client.node, AskSpatialAction, server.node.params.action_name)
    assert action.wait_for_server(timeout_sec=20)
    first = ros_client.wait(
        action.send_goal_async(AskSpatialAction.Goal(queries=[_q(i) for i in range(5)]))
    )
    time.sleep(0.3)
    second = ros_client.wait(
        action.send_goal_async(AskSpatialAction.Goal(queries=[_q(10), _q(11)]))
    )
    late = ros_client.wait(second.get_result_async()).result.answers
    assert [(a.query_id, a.status) for a in late] == [
        ("q10", SpatialAnswer.OVERLOADED),
        ("q11", SpatialAnswer.OVERLOADED),
    ]
    assert "max_goals" in late[0].error
    answers = ros_client.wait(first.get_result_async(), timeout=30).result.answers
    assert {a.status for a in answers} == {SpatialAnswer.OK}


# --- lifecycle, model switch, threads -------------------------------------------------------


def test_failed_configure_says_why_and_queries_get_model_not_ready(make_server, ros_client):
    server = make_server(_params(model="no-such-model"), activate=False)
    assert server.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "cannot load model 'no-such-model'" in server.node.last_error
    answer = _ask(ros_client, server, _q())
    assert answer.status == SpatialAnswer.MODEL_NOT_READY
    assert "no-such-model" in answer.error
    diag = server.node.diagnostics()
    assert diag.level == diag.ERROR and "no-such-model" in diag.message


def test_lifecycle_serves_only_while_active_and_frees_the_model(make_server, ros_client):
    server = make_server(_params(), activate=False)
    node = server.node
    assert _ask(ros_client, server, _q()).status == SpatialAnswer.MODEL_NOT_READY
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.engine is not None
    assert _ask(ros_client, server, _q()).status == SpatialAnswer.MODEL_NOT_READY
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    _feed(ros_client, server)
    assert _ask(ros_client, server, _q()).status == SpatialAnswer.OK
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert _ask(ros_client, server, _q()).status == SpatialAnswer.MODEL_NOT_READY
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.engine is None and not node.buffers
    assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
    assert node.finalized
    answer = _ask(ros_client, server, _q())
    assert answer.status == SpatialAnswer.MODEL_NOT_READY and "shut down" in answer.error
    assert "configure and activate" not in answer.error


def test_model_switch_while_serving(served):
    server, client = served
    node = server.node
    seen: list[str] = []
    stop = threading.Event()

    def keep_asking():
        i = 0
        while not stop.is_set():
            done = threading.Event()
            node.submit(_q(i), lambda a, d=done: (seen.append(a.model_id), d.set()))
            done.wait(5)
            i += 1

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        time.sleep(0.2)
        result = node.set_parameters([Parameter("model", value="stub:1")])[0]
        assert result.successful, result.reason
        time.sleep(0.2)
        refused = node.set_parameters([Parameter("model", value="not-a-model")])[0]
        time.sleep(0.1)
    finally:
        stop.set()
        asker.join()
    assert not refused.successful and "not-a-model" in refused.reason
    assert node.get_parameter("model").value == "stub:1"
    assert seen[0] == "stub" and seen[-1] == "stub:1"
    assert set(seen) == {"stub", "stub:1"}
    assert _ask(client, server, _q()).model_id == "stub:1"


def test_model_work_runs_on_the_worker_thread_in_batches(make_server, ros_client, monkeypatch):
    threads: list[str] = []
    sizes: list[int] = []

    class Recording(engines.StubEngine):
        def answer(self, queries):
            threads.append(threading.current_thread().name)
            sizes.append(len(queries))
            return super().answer(queries)

    monkeypatch.setitem(engines.ENGINE_BACKENDS, "recording", Recording)
    server = make_server(_params(engine_backend="recording", max_batch_wait=0.05, batch_size=8))
    _feed(ros_client, server)
    done = []
    for i in range(8):
        server.node.submit(_q(i), done.append)
    assert ros_client.spin_until(lambda: len(done) == 8, timeout=20)
    assert set(threads) == {"vsre-worker"}
    assert max(sizes) > 1  # queries waiting together went in one engine call


def test_annotated_image_carries_the_frame_stamp(served):
    server, client = served
    got: list[Image] = []
    client.node.create_subscription(Image, server.node.params.annotated_topic, got.append, 5)
    assert client.spin_until(lambda: server.node.annotated_pub.get_subscription_count() > 0)
    answer = _ask(client, server, _q())
    assert client.spin_until(lambda: bool(got), timeout=10)
    assert got[0].header.stamp == answer.header.stamp
    assert (got[0].height, got[0].width, got[0].encoding) == (24, 32, "rgb8")


def test_diagnostics_report_queue_latency_frames_and_model(served):
    server, client = served
    _ask(client, server, _q())
    values = {kv.key: kv.value for kv in server.node.diagnostics().values}
    topic = server.node.params.cameras[0]
    assert values["model_id"] == "stub"
    assert values["queue_depth"] == "0"
    assert int(values["answered"]) >= 1
    assert float(values["latency_p50_ms"]) >= 0
    assert int(values[f"frames_received {topic}"]) >= 1
    assert values[f"frames_dropped {topic}"] == "0"


def test_soak_1000_mixed_queries_none_lost_or_duplicated(make_server, ros_client):
    server = make_server(_params(queue_size=64, batch_size=16, max_frame_age=0.0))
    _feed(ros_client, server)
    p = server.node.params
    node = ros_client.node
    got: list[SpatialAnswer] = []
    node.create_subscription(SpatialAnswer, p.answer_topic, got.append, QoSProfile(depth=1000))
    pub = node.create_publisher(SpatialQuery, p.query_topic, QoSProfile(depth=1000))
    service = node.create_client(AskSpatial, p.service_name)
    action = ActionClient(node, AskSpatialAction, p.action_name)
    assert service.wait_for_service(timeout_sec=20) and action.wait_for_server(timeout_sec=20)
    assert ros_client.spin_until(lambda: pub.get_subscription_count() > 0, timeout=20)
    time.sleep(0.5)
    kinds = [
        {},
        {"answer_kind": 1, "options": ["a", "b"]},
        {"answer_kind": 2},
        {"answer_kind": 3},
    ]
    futures, goals = [], []
    topic_ids, n = [], 0
    for burst in range(20):
        for _ in range(30):  # topic queries, 30 per burst
            pub.publish(_q(f"t{n}", f"question {n}", **kinds[n % 4]))
            topic_ids.append(f"qt{n}")
            n += 1
        for _ in range(10):  # service calls
            futures.append(
                service.call_async(AskSpatial.Request(query=_q(f"s{n}", f"q {n}", **kinds[n % 4])))
            )
            n += 1
        batch = [_q(f"a{n + k}", f"a {n + k}", **kinds[(n + k) % 4]) for k in range(10)]
        n += 10
        goals.append(action.send_goal_async(AskSpatialAction.Goal(queries=batch)))
        ros_client.spin_until(lambda b=burst: len(got) >= 30 * (b + 1), timeout=20)
    assert ros_client.spin_until(
        lambda: len(got) >= 600 and all(f.done() for f in futures + goals), timeout=60
    )
    results = [ros_client.wait(g.result().get_result_async()) for g in goals]
    ros_client.spin_until(lambda: False, timeout=0.5)
    ids = [a.query_id for a in got]
    ids += [f.result().answer.query_id for f in futures]
    ids += [a.query_id for r in results for a in r.result.answers]
    assert len(ids) == 1000
    counts = Counter(ids)
    assert max(counts.values()) == 1, "duplicated answers"
    assert set(topic_ids) <= set(counts), "lost topic answers"
    statuses = Counter(a.status for a in got)
    statuses.update(f.result().answer.status for f in futures)
    statuses.update(a.status for r in results for a in r.result.answers)
    assert set(statuses) <= {SpatialAnswer.OK, SpatialAnswer.OVERLOADED}
    assert statuses[SpatialAnswer.OK] >= 900


def test_two_cameras_compressed_transport_and_depth_reach_the_engine(
    make_server, ros_client, recorded
):
    from sensor_msgs.msg import CompressedImage

    from vsre_ros.ros.conversions import numpy_to_compressed_imgmsg

    names = _names()
    cam_a, cam_b = names["cameras"][0], names["cameras"][0] + "_b/compressed"
    depth_topic = names["cameras"][0] + "_depth"
    server = make_server(
        {
            **names,
            "engine_backend": "recording",
            "model": "stub",
            "cameras": [cam_a, cam_b],
            "camera_transports": ["raw", "compressed"],
            "depth_topics": [depth_topic, ""],
            "camera_qos": ["reliable"],
            "max_frame_age": 0.0,
        }
    )
    node = ros_client.node
    stamp = Time(sec=50)
    rgb = np.full((24, 32, 3), 200, np.uint8)
    depth = numpy_to_imgmsg(np.full((24, 32), 1.5, np.float32), "32FC1")
    depth.header.stamp = stamp
    png = numpy_to_compressed_imgmsg(rgb, "png", "rgb8")
    png.header.stamp = stamp
    png.header.frame_id = "cam_b_optical"
    pubs = [
        (node.create_publisher(Image, depth_topic, 10), depth),
        (node.create_publisher(CompressedImage, cam_b, 10), png),
    ]
    for pub, msg in pubs:
        for _ in range(100):
            pub.publish(msg)
            if ros_client.spin_until(lambda p=pub: p.get_subscription_count() > 0, 0.1):
                pub.publish(msg)
                break
    _feed(ros_client, server, stamp)
    buffers = server.node.buffers
    assert ros_client.spin_until(lambda: len(buffers[cam_b]) > 0, timeout=10)
    assert ros_client.spin_until(lambda: buffers[cam_a].latest().depth is not None, timeout=10)

    answer_b = _ask(ros_client, server, _q(1, camera="cam_b_optical"))
    assert answer_b.status == SpatialAnswer.OK, answer_b.error
    np.testing.assert_array_equal(recorded[-1].images[0], rgb)  # decoded from PNG
    assert recorded[-1].depth == [None]

    answer_a = _ask(ros_client, server, _q(2, camera=cam_a))
    assert answer_a.status == SpatialAnswer.OK, answer_a.error
    assert recorded[-1].images[0].shape == (24, 32, 3)
    np.testing.assert_allclose(recorded[-1].depth[0], 1.5)
    assert recorded[-1].image_keys[0] == (cam_a, 50 * 10**9)


def test_preencode_encodes_the_newest_frame_under_the_key_its_question_uses(
    make_server, ros_client, recorded
):
    """`preencode_hz`: each camera's newest frame goes to `prepare` before any question, under
    the (camera, stamp) key the worker gives a question about that frame; frames at least
    about 1 / `preencode_hz` apart by their stamps; with it 0 (the default), no frame is."""
    server = make_server(_params(engine_backend="recording", preencode_hz=2.0, max_frame_age=0.0))
    off = make_server(_params())
    topic = server.node.params.cameras[0]
    _feed(ros_client, server, Time(sec=100))
    prepared = server.node.engine.prepared
    assert ros_client.spin_until(lambda: (topic, 100 * 10**9) in prepared, timeout=10)
    answer = _ask(ros_client, server, _q(1))
    assert answer.status == SpatialAnswer.OK, answer.error
    assert recorded[-1].image_keys == [(topic, 100 * 10**9)]
    # A second of 20 Hz frames: at most 2 a second are encoded, spaced by their stamps.
    pub = ros_client.node.create_publisher(Image, topic, QoSProfile(depth=10))
    stamps = [101 * 10**9 + k * 50_000_000 for k in range(20)]
    for stamp in stamps:
        pub.publish(_frame(ros_client, Time(sec=stamp // 10**9, nanosec=stamp % 10**9)))
        ros_client.spin_until(lambda: False, timeout=0.05)
    assert ros_client.spin_until(lambda: len(prepared) >= 3, timeout=10)
    encoded = [key[1] for key in prepared[1:]]
    assert set(encoded) <= set(stamps) and 2 <= len(encoded) <= 3
    assert all(b - a >= 0.45e9 for a, b in zip(encoded, encoded[1:], strict=False))
    diagnostics = {kv.key: kv.value for kv in server.node.diagnostics().values}
    assert int(diagnostics["frames_preencoded"]) == len(prepared)
    _feed(ros_client, off)
    ros_client.spin_until(lambda: False, timeout=0.3)
    assert off.node.engine.prepared == []


def test_preencode_with_an_engine_that_cannot_prepare_still_answers(
    make_server, ros_client, monkeypatch
):
    class NoPrepare:  # a backend written before `prepare` existed
        def __init__(self, model_ref, lora, engine_config):
            self._stub = engines.StubEngine(model_ref, lora, engine_config)
            self.model_id, self.note, self.random_weights = "stub", "no prepare", False

        def load(self, model_ref, adapter=None):
            self._stub.load(model_ref, adapter)

        def answer(self, queries):
            return self._stub.answer(queries)

    monkeypatch.setitem(engines.ENGINE_BACKENDS, "noprepare", NoPrepare)
    server = make_server(_params(engine_backend="noprepare", preencode_hz=10.0))
    assert server.node._preencoder is None
    _feed(ros_client, server)
    assert _ask(ros_client, server, _q(1)).status == SpatialAnswer.OK
