"""Soak the VSRE server: is every query answered exactly once, in bursts and at a steady rate?

`vsre serve` runs in its own process (stub engine by default), this process is the client over
real DDS on localhost, with raw rclpy endpoints (not vsre_ros.client, whose retries of
OVERLOADED would blur the count): topic queries, service calls and action goals, mixed in every
round of 20 queries as 10 topic / 5 service / one goal of 5. Every client endpoint has a
history of `--depth` (1000), but the answer topic subscription keeps all (KEEP_ALL): a client
that falls behind the server's answers loses them at its own reader otherwise (see the README's
QoS advice; `--answers-keep-last` shows it). Two phases:

- bursts: `--n` queries sent as fast as they go, `--burst` at a time, each burst's answers
  awaited (at most `--wait` seconds) before the next;
- steady: `--n` queries at `--rate` per second.

Per phase it prints: sent, answered, lost (no answer `--wait` s after the last send),
duplicated answers, answers per status, what the server's /diagnostics counted as received and
answered in the phase (so a loss shows on which side it happened), client round-trip latency
p50/p95/max (OK answers) and the server's RSS (at the start and end of the phase, and the
process's peak).

Run: python bench/soak_ros.py [--n 10000] [--burst 2000] [--rate 1000] [--model stub:5]
     python bench/soak_ros.py --engine vsre --model vsre-tiny --n 2000 --burst 2000 --rate 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the source tree, not an older installed copy
ROUND = (10, 5, 5)  # per 20 queries: topic, service, action (one goal)


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


class Server:
    """`vsre serve` in a child process, under names of its own."""

    def __init__(self, engine: str, model: str, extra: list[str]) -> None:
        self.prefix = f"/soak_{uuid.uuid4().hex[:6]}"
        env = dict(os.environ)
        env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        p = self.prefix
        args = [
            sys.executable, "-m", "vsre_ros.cli", "serve",
            "--params-file", str(ROOT / "config" / "stub.yaml"),
            "--ros-args", "-p", f"engine_backend:={engine}", "-p", f"model:={model}",
            "-p", f"query_topic:={p}/queries", "-p", f"answer_topic:={p}/answers",
            "-p", f"service_name:={p}/ask", "-p", f"action_name:={p}/ask_batch",
            "-p", f"cameras:=[{p}/image]", "-p", "depth_topics:=['']",
            "-p", "camera_info_topics:=['']", "-p", "annotated_topic:=''",
            "-p", "diagnostics_period:=0.5", *extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)

    def rss(self) -> tuple[float, float]:
        return _rss_mb(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Client:
    """Raw topic, service and action endpoints; records every answer with its arrival time."""

    def __init__(self, prefix: str, depth: int, keep_all_answers: bool) -> None:
        import rclpy
        from rclpy.action import ActionClient
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile
        from vsre_ros.action import AskSpatial as AskSpatialAction
        from vsre_ros.msg import SpatialAnswer, SpatialQuery
        from vsre_ros.srv import AskSpatial

        self.types = (SpatialQuery, AskSpatial, AskSpatialAction)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"soak_{uuid.uuid4().hex[:6]}", context=self.context)
        qos = QoSProfile(depth=depth)
        self.pub = self.node.create_publisher(SpatialQuery, f"{prefix}/queries", qos)
        answers_qos = QoSProfile(history=HistoryPolicy.KEEP_ALL) if keep_all_answers else qos
        self.sub = self.node.create_subscription(
            SpatialAnswer, f"{prefix}/answers", self._on_answer, answers_qos
        )
        self.service = self.node.create_client(AskSpatial, f"{prefix}/ask", qos_profile=qos)
        self.action = ActionClient(
            self.node,
            AskSpatialAction,
            f"{prefix}/ask_batch",
            goal_service_qos_profile=qos,
            result_service_qos_profile=qos,
            cancel_service_qos_profile=qos,
            feedback_sub_qos_profile=qos,
        )
        from diagnostic_msgs.msg import DiagnosticArray

        self.diagnostics: dict[str, str] = {}  # the server's latest /diagnostics values
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.server_name = ""
        self.lock = threading.Lock()
        self.sent: dict[str, float] = {}  # query_id -> send time
        self.answers: list[tuple[str, int, float]] = []  # (query_id, status, arrival time)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                self.pub.get_subscription_count() > 0
                and self.sub.get_publisher_count() > 0
                and self.service.service_is_ready()
                and self.action.server_is_ready()
            ):
                time.sleep(1.0)  # let every endpoint match both ways
                return
            time.sleep(0.1)
        raise SystemExit("soak: the server never came up")

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.hardware_id and status.name.startswith("vsre_server:"):
                values = {kv.key: kv.value for kv in status.values}
                if values.get("received"):
                    self.diagnostics = values

    def server_counts(self) -> tuple[int, int]:
        """(received, answered) as the server's diagnostics last said (cumulative)."""
        d = self.diagnostics
        return int(d.get("received", 0)), int(d.get("answered", 0))

    def _record(self, answer) -> None:
        with self.lock:
            self.answers.append((answer.query_id, answer.status, time.monotonic()))

    def _on_answer(self, answer) -> None:
        self._record(answer)

    def _on_result(self, future) -> None:
        for answer in future.result().result.answers:
            self._record(answer)

    def _on_goal(self, future) -> None:
        future.result().get_result_async().add_done_callback(self._on_result)

    def send(self, kind: str, queries: list) -> None:
        _, AskSpatial, AskSpatialAction = self.types
        now = time.monotonic()
        with self.lock:
            for q in queries:
                self.sent[q.query_id] = now
        if kind == "topic":
            for q in queries:
                self.pub.publish(q)
        elif kind == "service":
            for q in queries:
                future = self.service.call_async(AskSpatial.Request(query=q))
                future.add_done_callback(lambda f: self._record(f.result().answer))
        else:
            goal = AskSpatialAction.Goal(queries=queries)
            self.action.send_goal_async(goal).add_done_callback(self._on_goal)

    def answered(self, ids: set[str]) -> int:
        with self.lock:
            return len({qid for qid, _, _ in self.answers if qid in ids})

    def close(self) -> None:
        from vsre_ros.ros.bringup import shutdown_executor

        shutdown_executor(self.executor)
        self.node.destroy_node()
        self.context.try_shutdown()


class Queries:
    """Numbered queries in the 10 topic / 5 service / one goal of 5 mix, round after round."""

    def __init__(self, image, tag: str) -> None:
        from vsre_ros.msg import SpatialQuery

        questions = (  # one per answer kind, as the model was taught to read them
            ("Is the red cup left of the blue box? ({i})", []),
            ("Which is closer to the camera, the red cup or the blue box? ({i})", ["cup", "box"]),
            ("How far apart are the red cup and the blue box, in metres? ({i})", []),
        )
        self.make = lambda i, kind: SpatialQuery(
            query_id=f"{tag}{i}",
            question=questions[i % 3][0].format(i=i),
            answer_kind=i % 3,
            options=questions[i % 3][1],
            images=[image],
        )
        self.count = 0

    def next_round(self) -> list[tuple[str, list]]:
        out = []
        for kind, k in zip(("topic", "service", "action"), ROUND, strict=True):
            batch = [self.make(self.count + j, kind) for j in range(k)]
            self.count += k
            out.append((kind, batch))
        return out


def _kind_of(query_id: str) -> str:
    """The transport a query id was sent by (its number's place in the round)."""
    place = int(query_id[1:]) % sum(ROUND)
    return "topic" if place < ROUND[0] else ("service" if place < sum(ROUND[:2]) else "action")


def _send_rounds(client, queries: Queries, n: int, pace=None) -> set[str]:
    ids: set[str] = set()
    while len(ids) < n:
        for kind, batch in queries.next_round():
            batch = batch[: n - len(ids)]
            if batch:
                client.send(kind, batch)
                ids.update(q.query_id for q in batch)
                if pace is not None:
                    pace(len(batch))
    return ids


def _wait(client, ids: set[str], wait: float) -> None:
    """Until every id is answered, or `wait` s passed without a new answer."""
    last, seen = time.monotonic(), -1
    while time.monotonic() - last < wait:
        got = client.answered(ids)
        if got == len(ids):
            time.sleep(1.2)  # a duplicate would arrive now; diagnostics catch up
            return
        if got != seen:
            last, seen = time.monotonic(), got
        time.sleep(0.05)


def _report(
    name: str, client, server, ids: set[str], rss_start: float, seconds: float, counts0
) -> dict:
    from vsre_ros.msg import SpatialAnswer

    from vsre_ros.core.answers import Status

    names = {s.value: s.name for s in Status}  # equal to SpatialAnswer's status constants
    with client.lock:
        mine = [(q, s, t) for q, s, t in client.answers if q in ids]
        sent = {q: client.sent[q] for q in ids}
    counts = Counter(q for q, _, _ in mine)
    first: dict[str, tuple[int, float]] = {}
    for q, s, t in mine:
        first.setdefault(q, (s, t))
    latency = sorted((t - sent[q]) * 1000 for q, (s, t) in first.items() if s == SpatialAnswer.OK)
    rss_end, rss_peak = server.rss()
    received, answered = (b - a for a, b in zip(counts0, client.server_counts(), strict=True))

    def pct(p):
        return latency[min(len(latency) - 1, int(p * len(latency)))] if latency else float("nan")

    by_kind: Counter = Counter()
    for q in ids - set(counts):
        by_kind[_kind_of(q)] += 1
    result = {
        "phase": name,
        "lost_by_transport": dict(by_kind),
        "sent": len(ids),
        "answered": len(counts),
        "lost": len(ids) - len(counts),
        "duplicated": sum(c - 1 for c in counts.values()),
        "statuses": {
            names.get(s, str(s)): c for s, c in Counter(s for s, _ in first.values()).items()
        },
        "seconds": round(seconds, 2),
        "server_received": received,
        "server_answered": answered,
        "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "max": latency[-1] if latency else 0},
        "rss_mb": {"start": rss_start, "end": rss_end, "peak": rss_peak},
    }
    statuses = " ".join(f"{k}={v}" for k, v in sorted(result["statuses"].items()))
    if by_kind:
        statuses += "  (lost: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())) + ")"
    lat = result["latency_ms"]
    print(
        f"{name:<24} sent {result['sent']:>6}  answered {result['answered']:>6}  "
        f"lost {result['lost']:>4}  duplicated {result['duplicated']:>3}  {statuses}\n"
        f"{'':<24} the server (diagnostics): received {received}, answered {answered}\n"
        f"{'':<24} {seconds:.1f} s; latency (OK) p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms"
        f"  max {lat['max']:.1f} ms; server RSS {rss_start:.0f} -> {rss_end:.0f} MB "
        f"(peak {rss_peak:.0f})",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="queries per phase")
    parser.add_argument("--burst", type=int, default=2000, help="queries per burst")
    parser.add_argument("--rate", type=float, default=1000.0, help="steady phase: queries/s")
    parser.add_argument("--engine", default="stub", help="engine_backend (stub, vsre)")
    parser.add_argument("--model", default="stub:5", help="model (stub:<ms per call>, a preset)")
    parser.add_argument("--depth", type=int, default=1000, help="client QoS depth")
    parser.add_argument(
        "--answers-keep-last",
        action="store_true",
        help="answer topic subscription KEEP_LAST --depth instead of KEEP_ALL",
    )
    parser.add_argument("--image", type=int, default=64, help="inline image side, pixels")
    parser.add_argument("--wait", type=float, default=30.0, help="s without answers = lost")
    parser.add_argument("--phases", default="bursts,steady", help="bursts, steady or both")
    parser.add_argument("--json", default="", help="also write the figures to this file")
    parser.add_argument(
        "--ros-args", dest="ros_args", nargs=argparse.REMAINDER, default=[],
        help="server parameters, e.g. -p queue_size:=32",
    )  # fmt: skip
    args = parser.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    from vsre_ros.ros.conversions import numpy_to_imgmsg

    rgb = np.random.default_rng(0).integers(0, 255, (args.image, args.image, 3), dtype=np.uint8)
    image = numpy_to_imgmsg(rgb, "rgb8")
    server = Server(args.engine, args.model, args.ros_args)
    client = Client(server.prefix, args.depth, not args.answers_keep_last)
    results = []
    try:
        client.wait_ready()
        print(
            f"soak: server {args.engine}/{args.model} (pid {server.proc.pid}), client depth "
            f"{args.depth}, answer subscription "
            f"{'KEEP_LAST' if args.answers_keep_last else 'KEEP_ALL'}, "
            f"{args.image}x{args.image} inline images, mix per 20 queries: "
            f"{ROUND[0]} topic / {ROUND[1]} service / 1 goal of {ROUND[2]}",
            flush=True,
        )
        phases = args.phases.split(",")
        if "bursts" in phases:
            rss_start, start = server.rss()[0], time.monotonic()
            counts0 = client.server_counts()
            queries, ids = Queries(image, "b"), set()
            while len(ids) < args.n:
                burst = _send_rounds(client, queries, min(args.burst, args.n - len(ids)))
                _wait(client, burst, args.wait)
                ids |= burst
            results.append(
                _report(
                    f"bursts of {args.burst}", client, server, ids, rss_start,
                    time.monotonic() - start, counts0,
                )
            )  # fmt: skip
        if "steady" in phases:
            rss_start, start = server.rss()[0], time.monotonic()
            counts0 = client.server_counts()
            state = {"sent": 0}

            def pace(k: int) -> None:
                state["sent"] += k
                ahead = start + state["sent"] / args.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

            ids = _send_rounds(client, Queries(image, "s"), args.n, pace)
            _wait(client, ids, args.wait)
            results.append(
                _report(
                    f"steady {args.rate:g}/s", client, server, ids, rss_start,
                    time.monotonic() - start, counts0,
                )
            )  # fmt: skip
    finally:
        client.close()
        server.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
