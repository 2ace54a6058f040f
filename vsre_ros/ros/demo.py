"""`vsre demo`: sim camera + VSRE server + demo client in one process, with a live table.

The three nodes of `bringup.NODES` run on one MultiThreadedExecutor with the preset's params
YAML (the same file `launch/vsre_demo.launch.py` passes to `ros2 launch`). The demo client
waits for the sim camera's ground truth, asks some of each new scene's generated questions
about that exact frame (its stamp) through `vsre_ros.client.VsreClient` on the query topic
(so a recorded bag holds the queries and answers; the client retries OVERLOADED and times out
a query that gets no answer), and prints one row per answer:
question, answer, truth, confidence, latency. At the end: accuracy per answer kind and latency
percentiles. `--record DIR` writes everything on the wire to a rosbag2 MCAP bag (`rosbags`),
which `vsre ingest` reads back.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile

from vsre_ros.client import VsreClient, is_timeout
from vsre_ros.core.answers import Status, agrees_with_item
from vsre_ros.msg import SceneTruth, SpatialAnswer, SpatialQuery
from vsre_ros.ros import bringup
from vsre_ros.ros import params as node_params
from vsre_ros.ros.server import executor_threads

NODE_NAME = "vsre_demo_client"
KIND_IDS = {"yes_no": 0, "choice": 1, "number": 2}
STATUS_NAMES = {s.value: s.name for s in Status}  # equal to SpatialAnswer's status constants


@dataclass
class Outcome:
    """One asked question and what came back."""

    query_id: str  # the id the client gave it
    kind: str  # yes_no | choice | number
    question: str  # the question text
    truth: str  # the known answer ("yes", "A", "1.48")
    answer: str = ""  # the server's answer text ("" when none came)
    status: str = "TIMEOUT"  # SpatialAnswer status name; TIMEOUT when none came in time
    correct: bool = False  # answer agrees with the truth
    confidence: float = math.nan  # the answer's probability
    latency_ms: float = math.nan  # the server's latency_total_ms
    model_ms: float = math.nan  # the server's latency_model_ms


class DemoClient(Node):
    """Asks the sim camera's generated questions and scores the answers."""

    def __init__(self, node_name: str = NODE_NAME, out=None, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        node_params.declare(self, node_params.DemoClientParams)
        self.params = p = node_params.read(self, node_params.DemoClientParams)
        self.out = out or sys.stdout
        self.rng = np.random.default_rng(p.seed)
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.scenes: set[str] = set()
        self.asked = 0
        self.done = threading.Event()
        self.vsre = VsreClient(
            self,
            transport="topic",
            query_topic=p.query_topic,
            answer_topic=p.answer_topic,
            timeout=p.answer_timeout,
        )
        self.create_subscription(
            SceneTruth,
            p.truth_topic,
            self.on_truth,
            QoSProfile(depth=10),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._header_printed = False
        self.closing = False

    def on_truth(self, msg) -> None:
        p = self.params
        if msg.scene_id in self.scenes or self.asked >= p.questions:
            return
        if not self.vsre.server_ready():
            return  # the server is not listening yet; wait for a later scene
        self.scenes.add(msg.scene_id)
        truth = json.loads(msg.json)
        items = [it for it in truth.get("questions", []) if it["answer_kind"] in p.kinds]
        if not items:
            return
        picks = self.rng.permutation(len(items))[: min(p.per_scene, p.questions - self.asked)]
        for k in picks:
            item = items[int(k)]
            query_id = f"{msg.scene_id}/{self.asked}"
            query = SpatialQuery(
                query_id=query_id,
                question=item["question"],
                subj=item.get("subj", ""),
                relation=item.get("relation", ""),
                obj=item.get("obj", ""),
                answer_kind=KIND_IDS[item["answer_kind"]],
                options=list(item.get("options", [])),
                camera=p.camera,
                stamp=msg.header.stamp,
            )
            outcome = Outcome(query_id, item["answer_kind"], item["question"], item["answer"])
            self.asked += 1
            self.vsre.ask_async(query).add_done_callback(
                lambda future, item=item, outcome=outcome: self.on_answer(
                    item, outcome, future.result()
                )
            )

    def on_answer(self, item: dict, outcome: Outcome, msg) -> None:
        """Score the one answer (or timeout) the client gives for each question."""
        if is_timeout(msg):
            outcome.answer = "(none)"
        else:
            outcome.answer = msg.answer if msg.status == SpatialAnswer.OK else msg.error[:40]
            outcome.status = STATUS_NAMES.get(msg.status, str(msg.status))
            outcome.correct = agrees_with_item(item, msg)
            outcome.confidence = float(msg.probability)
            outcome.latency_ms = float(msg.latency_total_ms)
            outcome.model_ms = float(msg.latency_model_ms)
        self._finish(outcome)

    def destroy_node(self) -> None:
        self.closing = True  # the client's close() ends calls in flight; leave them unprinted
        self.vsre.close()
        super().destroy_node()

    def _finish(self, outcome: Outcome) -> None:
        with self.lock:
            if self.closing:
                return
            self.outcomes.append(outcome)
            self._row(outcome)
            if len(self.outcomes) >= self.params.questions:
                self.done.set()

    def _row(self, o: Outcome) -> None:
        if not self._header_printed:
            print(
                f"{'#':>3}  {'question':<58} {'answer':<10} {'truth':<8} {'ok':<3} "
                f"{'conf':>5} {'ms':>7}",
                file=self.out,
            )
            self._header_printed = True
        question = o.question if len(o.question) <= 58 else o.question[:55] + "..."
        mark = "+" if o.correct else ("-" if o.status == "OK" else o.status[:3])
        print(
            f"{len(self.outcomes):>3}  {question:<58} {o.answer[:10]:<10} {o.truth[:8]:<8} "
            f"{mark:<3} {o.confidence:>5.2f} {o.latency_ms:>7.1f}",
            file=self.out,
            flush=True,
        )

    def summary(self) -> dict:
        """Accuracy per kind and overall, latency percentiles, statuses."""
        with self.lock:
            outcomes = list(self.outcomes)
        answered = [o for o in outcomes if o.status == "OK"]
        result = {
            "asked": self.asked,
            "answered_ok": len(answered),
            "statuses": dict(Counter(o.status for o in outcomes)),
            "accuracy": _accuracy(answered),
            "accuracy_by_kind": {
                kind: _accuracy([o for o in answered if o.kind == kind])
                for kind in sorted({o.kind for o in answered})
            },
            "answered_by_kind": dict(sorted(Counter(o.kind for o in answered).items())),
        }
        for name, values in (
            ("latency_ms", [o.latency_ms for o in answered]),
            ("model_ms", [o.model_ms for o in answered]),
        ):
            if values:
                result[name] = {
                    "p50": float(np.percentile(values, 50)),
                    "p95": float(np.percentile(values, 95)),
                    "max": float(np.max(values)),
                }
        # Where the time goes: a kind's questions cost differently (numbers are decoded token
        # by token), and the questions asked together about one frame share an engine call.
        result["latency_p50_by_kind"] = {
            kind: float(np.median([o.latency_ms for o in answered if o.kind == kind]))
            for kind in sorted({o.kind for o in answered})
        }
        return result


def _accuracy(outcomes: list[Outcome]) -> float:
    return sum(o.correct for o in outcomes) / len(outcomes) if outcomes else math.nan


class Recorder(Node):
    """Writes every message of the given topics, as received (CDR), to a rosbag2 MCAP bag."""

    def __init__(self, path: Path, topics: dict[str, type], **kwargs) -> None:
        super().__init__("vsre_demo_recorder", **kwargs)
        from rosbags.rosbag2 import StoragePlugin, Writer

        from vsre_ros.training.bags import make_typestore

        store = make_typestore()
        self.path = path
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.lock = threading.Condition()
        self.count = 0
        self.counts: dict[str, int] = dict.fromkeys(topics, 0)  # by the topic name asked for
        group = MutuallyExclusiveCallbackGroup()
        for topic, msg_type in topics.items():
            module = msg_type.__module__.split(".")
            type_name = f"{module[0]}/{module[1]}/{msg_type.__name__}"
            slot: list = []
            sub = self.create_subscription(
                msg_type,
                topic,
                lambda data, slot=slot, topic=topic: self._write(topic, slot[0], data),
                QoSProfile(depth=100),
                raw=True,
                callback_group=group,
            )
            # The bag names topics fully qualified ("/vsre/answers"), as ros2 bag does.
            slot.append(self.writer.add_connection(sub.topic_name, type_name, typestore=store))

    def _write(self, topic: str, connection, data: bytes) -> None:
        with self.lock:
            if self.writer is not None:
                self.writer.write(connection, self.get_clock().now().nanoseconds, data)
                self.count += 1
                self.counts[topic] += 1
                self.lock.notify_all()

    def wait_for(self, topic: str, count: int, timeout: float) -> bool:
        """Wait until `count` messages of `topic` are written; False if the timeout came first.

        The client and the recorder receive each answer on their own subscriptions, so the
        client can hold its last answer before the recorder has written it; stopping the
        executor at that moment would drop it from the bag without a word.
        """
        with self.lock:
            return self.lock.wait_for(lambda: self.counts[topic] >= count, timeout)

    def close(self) -> None:
        with self.lock:
            if self.writer is not None:
                self.writer.close()
                self.writer = None


# ---- the in-process bring-up ------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", default=bringup.DEFAULT_PRESET, help="params YAML config/<preset>.yaml"
    )
    parser.add_argument("--params-file", default="", help="a params YAML instead of the preset's")
    parser.add_argument("--model", default="", help="override the server's `model` parameter")
    parser.add_argument("--engine", default="", help="override `engine_backend` (vsre, stub)")
    parser.add_argument("--questions", type=int, default=0, help="questions to ask (0: YAML)")
    parser.add_argument("--record", default="", help="write a rosbag2 MCAP bag to this directory")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after seconds")
    parser.add_argument("--json", default="", help="also write the summary to this JSON file")


def run(args: argparse.Namespace) -> int:
    params_file = Path(args.params_file) if args.params_file else bringup.config_file(args.preset)
    cli_args = ["--ros-args", "--params-file", str(params_file)]
    server_overrides = []
    if args.model:
        server_overrides.append(Parameter("model", value=args.model))
    if args.engine:
        server_overrides.append(Parameter("engine_backend", value=args.engine))
    client_overrides = []
    if args.questions:
        client_overrides.append(Parameter("questions", value=args.questions))
    overrides = {"vsre_server": server_overrides, NODE_NAME: client_overrides}

    context = rclpy.Context()
    rclpy.init(context=context)
    nodes: list[Node] = []
    recorder = None
    try:
        for spec in bringup.nodes_for("demo"):
            node = spec.node_class()(
                spec.name,
                context=context,
                cli_args=cli_args,
                parameter_overrides=overrides.get(spec.name, []),
            )
            nodes.append(node)
        server = next(n for n in nodes if n.get_name() == "vsre_server")
        client = next(n for n in nodes if isinstance(n, DemoClient))
        print(f"vsre demo: params {params_file}", flush=True)
        if server.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            print(f"vsre demo: the server did not configure: {server.last_error}", file=sys.stderr)
            return 1
        server.trigger_activate()
        print(f"vsre demo: {server.engine.note}", flush=True)
        if args.record:
            recorder = Recorder(Path(args.record), _recorded_topics(nodes), context=context)
            nodes.append(recorder)
        executor = MultiThreadedExecutor(
            num_threads=executor_threads(server.params) + 2, context=context
        )
        for node in nodes:
            executor.add_node(node)
        # The spin loop is stopped and joined before the executor shuts down: shutting it down
        # while another thread is inside spin() races with that thread's guard condition. Like
        # spin(), the loop also ends when the context is shut down (Ctrl-C).
        stop_spinning = threading.Event()

        def spin() -> None:
            while context.ok() and not stop_spinning.is_set():
                executor.spin_once(timeout_sec=0.1)

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        finished = client.done.wait(args.timeout)
        if recorder is not None:
            for topic in (server.params.query_topic, server.params.answer_topic):
                if not recorder.wait_for(topic, client.asked, timeout=5.0):
                    print(f"vsre demo: the bag holds fewer than {client.asked} on {topic}")
        stop_spinning.set()
        spinner.join(timeout=10)
        bringup.shutdown_executor(executor)
        summary = client.summary()
        summary["model"] = server.engine.note if server.engine else ""
        _print_summary(summary, finished)
        if recorder is not None:
            recorder.close()
            print(f"vsre demo: recorded {recorder.count} messages to {recorder.path}")
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2))
        return 0 if finished else 1
    finally:
        if recorder is not None:
            recorder.close()
        for node in nodes:
            node.destroy_node()
        context.try_shutdown()


def _recorded_topics(nodes) -> dict[str, type]:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image

    camera = next(n for n in nodes if n.get_name() == "vsre_sim_camera").params
    server = next(n for n in nodes if n.get_name() == "vsre_server").params
    topics = {
        camera.image_topic: Image,
        camera.depth_topic: Image,
        camera.info_topic: CameraInfo,
        camera.truth_topic: SceneTruth,
        server.query_topic: SpatialQuery,
        server.answer_topic: SpatialAnswer,
        "/diagnostics": DiagnosticArray,
    }
    if server.annotated_topic:
        topics[server.annotated_topic] = Image
    if server.markers_topic:
        from visualization_msgs.msg import MarkerArray

        topics[server.markers_topic] = MarkerArray
    return topics


def _print_summary(summary: dict, finished: bool) -> None:
    print("\n== summary" + ("" if finished else " (timed out before every answer came)"))
    print(f"model: {summary['model']}")
    print(f"asked {summary['asked']}, answered OK {summary['answered_ok']}, ", end="")
    print("statuses " + ", ".join(f"{k}={v}" for k, v in sorted(summary["statuses"].items())))
    print(f"accuracy: {summary['accuracy']:.3f}", end="")
    for kind, acc in summary["accuracy_by_kind"].items():
        print(f"  {kind}={acc:.3f} (n={summary['answered_by_kind'][kind]})", end="")
    print()
    for name in ("latency_ms", "model_ms"):
        if name in summary:
            s = summary[name]
            print(f"{name}: p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  max {s['max']:.1f}")
    by_kind = summary.get("latency_p50_by_kind", {})
    if by_kind:
        print("latency_ms p50 by kind: " + "  ".join(f"{k} {v:.1f}" for k, v in by_kind.items()))


def client_main(argv: list[str] | None = None) -> int:
    """Console script `vsre_demo_client`: the demo client alone (for launch files)."""
    rclpy.init(args=argv)
    node = DemoClient()
    if bringup.spin_alone(node, MultiThreadedExecutor(), until=node.done.is_set, period=0.2):
        _print_summary({**node.summary(), "model": "(see the server's log)"}, True)
    return 0
