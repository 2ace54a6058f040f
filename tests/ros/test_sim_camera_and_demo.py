"""The sim camera's messages, and `vsre demo` end to end in its own process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import uuid
from collections import Counter

import numpy as np
import pytest
import torch
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile
from ros_helpers import ROOT, overrides
from sensor_msgs.msg import CameraInfo, Image
from vsre_ros.msg import SceneTruth, SpatialAnswer

from vsre_ros.core.answers import Answer, Status, agrees_with_item
from vsre_ros.ros.conversions import imgmsg_to_numpy

pytestmark = pytest.mark.dds


def test_sim_camera_publishes_matching_image_depth_info_and_truth(ros_client):
    import rclpy

    from vsre_ros.ros.sim_camera import SimCameraNode

    context = rclpy.Context()
    rclpy.init(context=context)
    prefix = f"/sim_{uuid.uuid4().hex[:8]}"
    names = {
        "image_topic": f"{prefix}/image",
        "depth_topic": f"{prefix}/depth",
        "info_topic": f"{prefix}/info",
        "truth_topic": f"{prefix}/truth",
    }
    node = SimCameraNode(
        "simtest_camera",
        context=context,
        parameter_overrides=overrides(
            {
                **names,
                "width": 64,
                "height": 48,
                "rate": 20.0,
                "frames_per_scene": 3,
                "max_scenes": 2,
            }
        ),
    )
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    got: dict[str, list] = {"image": [], "depth": [], "info": [], "truth": []}
    qos = QoSProfile(depth=50)
    client = ros_client.node
    client.create_subscription(Image, names["image_topic"], got["image"].append, qos)
    client.create_subscription(Image, names["depth_topic"], got["depth"].append, qos)
    client.create_subscription(CameraInfo, names["info_topic"], got["info"].append, qos)
    client.create_subscription(SceneTruth, names["truth_topic"], got["truth"].append, qos)
    assert ros_client.spin_until(lambda: node.image_pub.get_subscription_count() > 0)
    spinner.start()
    try:
        assert ros_client.spin_until(lambda: node.finished, timeout=60)
        ros_client.spin_until(lambda: len(got["truth"]) >= node.frames_published, timeout=10)
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    # 2 scenes, each at least 3 frames (longer while the renderer prepares the next), then stop.
    assert len(got["image"]) == len(got["truth"]) == node.frames_published >= 6
    per_scene = Counter(t.scene_id for t in got["truth"])
    assert len(per_scene) == 2 and min(per_scene.values()) >= 3
    image, depth, info, truth = (got[k][0] for k in ("image", "depth", "info", "truth"))
    assert image.header.stamp == depth.header.stamp == info.header.stamp == truth.header.stamp
    assert (image.encoding, image.width, image.height) == ("rgb8", 64, 48)
    assert depth.encoding == "32FC1" and np.isfinite(imgmsg_to_numpy(depth)).all()
    assert info.k[2] == pytest.approx(32.0, abs=1.0) and info.k[5] == pytest.approx(24.0, abs=1.0)
    scene = json.loads(truth.json)
    assert scene["scene_id"] == truth.scene_id
    assert scene["questions"] and all(len(q["images"]) == 1 for q in scene["questions"])


def test_the_scene_source_renders_the_next_scene_only_when_asked():
    """Rendering waits until the camera asks (halfway through a scene), so it does not take
    the CPU at the change of scene, when clients ask about the new one."""
    import queue

    from vsre_ros.ros.sim_camera import SceneSource

    source = SceneSource(seed=0, width=32, height=24, max_scenes=3)
    try:
        first = source.next(timeout=60)
        with pytest.raises(queue.Empty):
            source.next(timeout=2.0)  # nothing asked for: nothing rendered
        source.ask()
        assert source.next(timeout=60).scene_id != first.scene_id
    finally:
        source.close()


def test_the_scene_source_renders_the_data_version_it_is_given():
    """Data version 2's scenes ask in the question grammar (items record their framing);
    an unknown version is refused when the node starts, not in the render thread."""
    from vsre_ros.ros.sim_camera import SceneSource

    framings = {}
    for version in (1, 2):
        source = SceneSource(seed=0, width=32, height=24, max_scenes=3, data_version=version)
        items = []
        try:
            for _ in range(3):
                items += source.next(timeout=60).truth["questions"]
                source.ask()
        finally:
            source.close()
        framings[version] = {item.get("framing", "") for item in items}
    assert framings[1] <= {"", "vsre50"}  # the 50 VSRE templates, or the item's own question
    assert framings[2] - {"", "vsre50"}  # grammar framings: claims, captions, imperatives, ...
    with pytest.raises(ValueError, match="data version 3"):
        SceneSource(seed=0, width=32, height=24, data_version=3)


def _answer(**fields) -> SpatialAnswer:
    return SpatialAnswer(status=SpatialAnswer.OK, **fields)


def test_demo_scoring_rules():
    yes_item = {"answer_kind": "yes_no", "answer": "true"}
    assert agrees_with_item(yes_item, _answer(verdict=True))
    assert not agrees_with_item(yes_item, _answer(verdict=False))
    choice = {"answer_kind": "choice", "answer": "B", "options": ["A", "B"]}
    assert agrees_with_item(choice, _answer(choice_index=1))
    assert not agrees_with_item(choice, _answer(choice_index=0))
    number = {"answer_kind": "number", "answer": "2.0", "value": 2.0}
    # The evaluator's rule (within a factor of 2), with the answer's unit converted.
    assert agrees_with_item(number, _answer(value=3.9))
    assert agrees_with_item(number, _answer(value=1.1))
    assert not agrees_with_item(number, _answer(value=4.1))
    assert agrees_with_item(number, _answer(value=150.0, unit="cm"))
    assert not agrees_with_item(number, _answer(value=2.0, unit="mm"))
    assert not agrees_with_item(yes_item, SpatialAnswer(status=SpatialAnswer.ERROR, verdict=True))
    # The same rules score the core engine's answers (bench/research/demo_gap.py).
    assert agrees_with_item(choice, Answer(choice_index=1))
    assert not agrees_with_item(choice, Answer(status=Status.ERROR, choice_index=1))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from vsre_ros.core.config import ModelConfig, tiny_encoders, tiny_lm
    from vsre_ros.core.grounding import for_model
    from vsre_ros.core.model import VSREModel

    torch.manual_seed(0)
    config = ModelConfig(
        name="demo-tiny",
        encoders=tiny_encoders(hidden=32, layers=2, heads=2, image=32, patch=8),
        fusion="channel",
        fusion_grid=4,
        object_tokens=2,
        projector_depth=2,
        lm=tiny_lm(hidden=64, layers=2, heads=2, ffn=128),
    )
    model = VSREModel(config)
    model.heads["grounding"] = for_model(model)  # untrained: boxes, not good ones
    return model.save_pretrained(tmp_path_factory.mktemp("demo") / "demo-tiny")


def test_vsre_demo_runs_end_to_end_and_records_a_bag(tiny_checkpoint, tmp_path):
    bag, summary_file = tmp_path / "bag", tmp_path / "summary.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vsre_ros.cli",
            "demo",
            "--model",
            str(tiny_checkpoint),
            "--questions",
            "6",
            "--record",
            str(bag),
            "--json",
            str(summary_file),
            "--timeout",
            "120",
        ],
        cwd=ROOT,
        # The demo is self-contained; a domain of its own keeps its generic topic names
        # (/vsre/queries, /sim_camera/...) away from anything else on this machine.
        env={**os.environ, "ROS_DOMAIN_ID": str(random.randint(102, 232))},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "question" in run.stdout and "== summary" in run.stdout
    assert "checkpoint directory" in run.stdout  # says which model it uses
    summary = json.loads(summary_file.read_text())
    assert summary["asked"] == 6
    assert sum(summary["statuses"].values()) == 6
    assert summary["statuses"].get("OK", 0) >= 1
    assert 0.0 <= summary["accuracy"] <= 1.0

    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/sim_camera/image_raw"] >= 1 and counts["/sim_camera/truth"] >= 1
    assert counts["/vsre/queries"] == 6
    assert counts["/vsre/answers"] == 6
    _assert_bag_keeps_grounded_answers(bag)


def _assert_bag_keeps_grounded_answers(bag) -> None:
    """The recorded answers hold their grounded objects: one per object phrase of the recorded
    query (its subj and obj when it names them, else the question's "the ..." phrases), with
    the 3D places measured from the sim camera's depth and CameraInfo."""
    from rosbags.rosbag2 import Reader
    from vsre_ros.training.bags import make_typestore

    from vsre_ros.core.grounding import object_phrases

    store = make_typestore()
    questions, answers = {}, []
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic == "/vsre/queries":
                msg = store.deserialize_cdr(raw, conn.msgtype)
                questions[msg.query_id] = (msg.question, msg.subj, msg.obj)
            elif conn.topic == "/vsre/answers":
                answers.append(store.deserialize_cdr(raw, conn.msgtype))
    ok = [a for a in answers if a.status == SpatialAnswer.OK]
    assert ok
    for answer in ok:
        phrases = object_phrases(*questions[answer.query_id])  # the engine's rule
        assert [o.phrase for o in answer.objects] == phrases
        for obj in answer.objects:
            assert len(obj.box) == 4 and 0.0 < obj.score <= 1.0
    placed = [o for a in ok for o in a.objects if o.depth_used]
    assert placed and all(o.position.z > 0 for o in placed)
