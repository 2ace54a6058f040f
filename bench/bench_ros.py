"""ROS figures of the VSRE server (prints them; asserts nothing).

The server runs in its own process (`vsre serve`), the clients in this one, over real DDS on
localhost. With the stub engine, the figures are the ROS layer's own cost:

1. service round trip minus engine time (p50/p95), default transport vs the shared-memory
   profile config/fastdds_shm.xml;
2. 640x480 rgb8 at 30 Hz into the server's camera subscription: frames received/dropped,
   and the CPU cost of converting one frame (what the worker pays per query);
3. answers per second with 1, 4 and 16 concurrent service clients (stub engine with 0 ms and
   with 5 ms per engine call, so batching shows).

With the embedded model (`vsre-tiny`, the latency a robot sees), a 640x480 rgb8 camera at 10 Hz
into the server (shm profile):

4. one question through the service about each new frame (by its stamp), then a second
   question about the same frame (already encoded): round trip p50/p95 and the server's
   model time;
4b. the camera streaming, one question about its latest frame at a random moment of the frame
   period (each about a frame no question asked about before), with the server's
   `preencode_hz` off and at the camera's rate: round trip p50/p95, the model's time, and the
   cores the server used;
5. answers per second with 16 concurrent service clients asking about the latest frame: all
   the same question (the engine answers a question asked twice in a batch once), and each
   client one of 8 questions (two clients per question).

`--model` picks the served model for 4 and 5: a preset id (its trained weights when they
ship) or a model directory, served with config/vsre-tiny.yaml.

Run: python bench/bench_ros.py [--quick] [--only model] [--model DIR] [--server-param N:=V]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHM_PROFILE = ROOT / "config" / "fastdds_shm.xml"
sys.path.insert(0, str(ROOT))  # the source tree, not an older installed copy


SERVER_PARAMS: list[str] = []  # --server-param NAME:=VALUE, after the bench's own


def _env(shm: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)  # the deprecated name would win
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if shm:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(SHM_PROFILE)
    return env


class Server:
    """`vsre serve` in a child process: the stub engine, or a model preset with its YAML."""

    def __init__(self, shm: bool, model: str = "stub", queue_size: int = 32, preencode_hz=0.0):
        preset = "stub" if model.startswith("stub") else "vsre-tiny"
        args = [
            sys.executable, "-m", "vsre_ros.cli", "serve",
            "--params-file", str(ROOT / "config" / f"{preset}.yaml"),
            "--ros-args", "-p", f"model:={model}", "-p", f"queue_size:={queue_size}",
            "-p", "cameras:=[/bench/image]", "-p", "camera_qos:=[reliable]",
            "-p", "depth_topics:=['']", "-p", "camera_info_topics:=['']",
            "-p", "camera_transports:=[raw]", "-p", "diagnostics_period:=0.5",
            "-p", "frame_buffer:=5", "-p", f"preencode_hz:={float(preencode_hz)}",
        ]  # fmt: skip
        for extra in SERVER_PARAMS:
            args += ["-p", extra]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=_env(shm), stderr=subprocess.DEVNULL)

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (Linux /proc), seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Client:
    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import QoSProfile
        from vsre_ros.srv import AskSpatial

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"bench_{random.randint(0, 1 << 30)}", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        # Deeper than the default 10, or concurrent calls lose responses in the client.
        self.service = self.node.create_client(
            AskSpatial, "vsre/ask", qos_profile=QoSProfile(depth=100)
        )
        if not self.service.wait_for_service(timeout_sec=60):
            raise RuntimeError("the server never came up")

    def request(self, i: int):
        from vsre_ros.msg import SpatialQuery
        from vsre_ros.srv import AskSpatial

        from vsre_ros.ros.conversions import numpy_to_imgmsg

        image = numpy_to_imgmsg(np.zeros((32, 32, 3), np.uint8), "rgb8")
        query = SpatialQuery(query_id=str(i), question="Is the cup left of the box?")
        query.images = [image]
        return AskSpatial.Request(query=query)

    def call(self, i: int, request=None):
        event = threading.Event()
        future = self.service.call_async(request or self.request(i))
        future.add_done_callback(lambda _f: event.set())
        if not event.wait(30):
            raise RuntimeError("no answer in 30 s")
        return future.result().answer

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def round_trip(shm: bool, n: int) -> None:
    server = Server(shm)
    try:
        client = Client()
        for i in range(20):
            client.call(i)  # warm up
        overhead, total = [], []
        for i in range(n):
            start = time.perf_counter()
            answer = client.call(i)
            rtt = (time.perf_counter() - start) * 1000.0
            assert answer.status == 0, answer.error
            total.append(rtt)
            overhead.append(rtt - answer.latency_model_ms)
        client.close()
    finally:
        server.close()
    name = "shm profile" if shm else "default    "
    print(
        f"service round trip [{name}] n={n}: total p50 {np.median(total):.2f} ms, "
        f"overhead on top of engine p50 {np.median(overhead):.2f} ms, "
        f"p95 {np.percentile(overhead, 95):.2f} ms"
    )


def camera_ingest(shm: bool, seconds: float) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    from vsre_ros.ros.conversions import numpy_to_imgmsg

    server = Server(shm)
    try:
        client = Client()
        pub = client.node.create_publisher(Image, "/bench/image", QoSProfile(depth=10))
        diags: list = []
        client.node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        sent, period = 0, 1.0 / 30.0
        start = time.monotonic()
        pack = []
        while time.monotonic() - start < seconds:
            t0 = time.perf_counter()
            msg = numpy_to_imgmsg(rgb, "rgb8")
            pack.append(time.perf_counter() - t0)
            msg.header.stamp = client.node.get_clock().now().to_msg()
            pub.publish(msg)
            sent += 1
            time.sleep(max(0.0, start + sent * period - time.monotonic()))
        time.sleep(1.5)  # let the last diagnostics arrive
        values = {kv.key: kv.value for kv in diags[-1].status[0].values} if diags else {}
        client.close()
    finally:
        server.close()
    received = values.get("frames_received /bench/image", "?")
    dropped = values.get("frames_dropped /bench/image", "?")
    name = "shm profile" if shm else "default    "
    print(
        f"640x480 rgb8 @30 Hz [{name}] {seconds:.0f} s: sent {sent}, server received {received}, "
        f"stamp-gap drop estimate {dropped}; numpy->Image {np.median(pack) * 1000:.2f} ms/frame"
    )


def conversion_cost(n: int = 200) -> None:
    from vsre_ros.ros.conversions import numpy_to_imgmsg, to_rgb8

    rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    for encoding, image in (("rgb8", rgb), ("bgr8", rgb[..., ::-1])):
        msg = numpy_to_imgmsg(np.ascontiguousarray(image), encoding)
        cpu = []
        for _ in range(n):
            t0 = time.process_time()
            to_rgb8(msg)
            cpu.append(time.process_time() - t0)
        print(f"Image {encoding} 640x480 -> RGB array: CPU {np.median(cpu) * 1000:.3f} ms/frame")


def throughput(
    shm: bool, model: str, clients: int, seconds: float, camera: bool = False, questions: int = 1
) -> None:
    """Answers per second with `clients` concurrent service clients, each asking about an
    inline 32x32 image or, with `camera`, about the latest frame of a 10 Hz 640x480 camera
    (client k asks question k % `questions` of QUESTIONS)."""
    server = Server(shm, model=model, queue_size=32)
    try:
        client = Client()
        source = Camera(client) if camera else None
        if source is not None:
            source.start()
            time.sleep(0.5)

        def request(i: int, k: int = 0):
            question = QUESTIONS[k % questions]
            return camera_request(i, question=question) if camera else client.request(i)

        for i in range(10):
            client.call(i, request(i))
        done = [0]
        lock = threading.Lock()
        stop = time.monotonic() + seconds

        def worker(k: int) -> None:
            i = 0
            while time.monotonic() < stop:
                answer = client.call(i, request(k * 1_000_000 + i, k))
                if answer.status == 0:
                    with lock:
                        done[0] += 1
                i += 1

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        if source is not None:
            source.stop()
        client.close()
    finally:
        server.close()
    where = ", latest frame of a 10 Hz 640x480 camera" if camera else ""
    asked = f", {questions} different questions" if questions > 1 else ""
    print(
        f"answers/s with {clients:>2} concurrent clients [engine {model}{where}{asked}]: "
        f"{done[0] / elapsed:.0f}"
    )


class Camera:
    """A 640x480 rgb8 camera publishing random frames on /bench/image at `rate` Hz."""

    def __init__(self, client: Client, rate: float = 10.0):
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import Image

        self.client = client
        self.pub = client.node.create_publisher(Image, "/bench/image", QoSProfile(depth=10))
        deadline = time.monotonic() + 30
        while self.pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        rng = np.random.default_rng(0)
        self.frames = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
        self.period = 1.0 / rate
        self.sent = 0
        self.stamp = None  # builtin_interfaces/Time of the last frame sent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self):
        from vsre_ros.ros.conversions import numpy_to_imgmsg

        msg = numpy_to_imgmsg(self.frames[self.sent % len(self.frames)], "rgb8")
        msg.header.stamp = self.client.node.get_clock().now().to_msg()
        self.pub.publish(msg)
        self.sent += 1
        self.stamp = msg.header.stamp
        return msg.header.stamp

    def start(self) -> None:
        def run() -> None:
            start = time.monotonic()
            while not self._stop.is_set():
                self.publish()
                time.sleep(max(0.0, start + self.sent * self.period - time.monotonic()))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


QUESTIONS = [
    f"Is the red cup {r} the blue box?"
    for r in ["left of", "right of", "above", "below", "near", "far from", "behind", "on"]
]


def camera_request(i: int, stamp=None, question: str = QUESTIONS[0]):
    """A question about the camera's frame at `stamp` (None: its latest frame)."""
    from vsre_ros.msg import SpatialQuery
    from vsre_ros.srv import AskSpatial

    query = SpatialQuery(query_id=str(i), question=question)
    if stamp is not None:
        query.stamp = stamp
    return AskSpatial.Request(query=query)


def model_latency(shm: bool, n: int, model: str = "vsre-tiny") -> None:
    """Part 4: a question about each new frame, then one about the same (encoded) frame."""
    server = Server(shm, model=model)
    try:
        client = Client()
        camera = Camera(client)
        times: dict[str, list[float]] = {"new": [], "encoded": []}
        engine: dict[str, list[float]] = {"new": [], "encoded": []}
        server_ms: dict[str, list[float]] = {"new": [], "encoded": []}
        next_frame = time.monotonic()
        for i in range(n + 5):
            time.sleep(max(0.0, next_frame - time.monotonic()))
            next_frame = time.monotonic() + camera.period  # 10 Hz, as the camera runs
            stamp = camera.publish()
            time.sleep(0.01)  # the frame reaches the server's buffer
            for kind in ("new", "encoded"):
                start = time.perf_counter()
                answer = client.call(i, camera_request(i, stamp))
                rtt = (time.perf_counter() - start) * 1000.0
                if answer.status != 0:
                    raise RuntimeError(f"answer status {answer.status}: {answer.error}")
                if i >= 5:  # warm-up
                    times[kind].append(rtt)
                    engine[kind].append(answer.latency_model_ms)
                    server_ms[kind].append(answer.latency_total_ms)
        client.close()
    finally:
        server.close()
    name = "shm profile" if shm else "default    "
    for kind, label in (("new", "new frame    "), ("encoded", "encoded frame")):
        print(
            f"{model} through the service [{name}], 640x480 rgb8 at 10 Hz, {label} n={n}: "
            f"round trip p50 {np.median(times[kind]):.2f} ms, "
            f"p95 {np.percentile(times[kind], 95):.2f} ms; "
            f"in the server p50 {np.median(server_ms[kind]):.2f} ms, of which the model "
            f"{np.median(engine[kind]):.2f} ms"
        )


EARLY = 0.025  # s: about a new frame's model time; a question before it may find it encoding


def latest_latency(shm: bool, n: int, model: str, preencode_hz: float) -> None:
    """Part 4b: the camera streams at 10 Hz; each question asks about its latest frame at a
    random moment of the frame period, once a frame no question has asked about is there (so
    every answer is about a frame new to the asker). With `preencode_hz` the server encodes
    the newest frame before it is asked about; its CPU use over the run shows what that costs.
    """
    server = Server(shm, model=model, preencode_hz=preencode_hz)
    try:
        client = Client()
        camera = Camera(client)
        camera.start()
        rng = random.Random(0)
        times, engine, delays, last = [], [], [], None
        cpu, wall = server.cpu_seconds(), time.monotonic()
        for i in range(n + 5):
            while camera.stamp == last:
                time.sleep(0.001)
            delay = rng.uniform(0.0, camera.period)
            time.sleep(delay)
            start = time.perf_counter()
            answer = client.call(i, camera_request(i))
            rtt = (time.perf_counter() - start) * 1000.0
            if answer.status != 0:
                raise RuntimeError(f"answer status {answer.status}: {answer.error}")
            # A frame asked about before (the newest had not reached the server): not counted.
            fresh, last = answer.header.stamp != last, answer.header.stamp
            if i == 4:  # warm-up done
                cpu, wall = server.cpu_seconds(), time.monotonic()
            if i >= 5 and fresh:
                times.append(rtt)
                engine.append(answer.latency_model_ms)
                delays.append(delay)
        cores = (server.cpu_seconds() - cpu) / (time.monotonic() - wall)
        camera.stop()
        client.close()
    finally:
        server.close()
    print(
        f"{model} through the service, 640x480 rgb8 at 10 Hz, the latest frame asked at a "
        f"random moment, preencode_hz {preencode_hz:g}, n={len(times)}: round trip p50 "
        f"{np.median(times):.2f} ms, p95 {np.percentile(times, 95):.2f} ms; the model p50 "
        f"{np.median(engine):.2f} ms; the server used {cores:.2f} cores"
    )
    late = np.array(delays) >= EARLY
    for name, rows in (("before", ~late), ("after", late)):
        print(
            f"  asked {name} {EARLY * 1000:.0f} ms into the frame period (n={rows.sum()}): "
            f"round trip p50 {np.median(np.array(times)[rows]):.2f} ms, the model p50 "
            f"{np.median(np.array(engine)[rows]):.2f} ms"
        )


PARTS = ("roundtrip", "ingest", "conversion", "throughput", "model", "latest")


def run_part(part: str, shm: bool, quick: bool, model: str = "vsre-tiny") -> None:
    n = 100 if quick else 500
    seconds = 3.0 if quick else 10.0
    if part == "roundtrip":
        round_trip(shm, n)
    elif part == "ingest":
        camera_ingest(shm, seconds)
    elif part == "conversion":
        conversion_cost()
    elif part == "throughput":
        for model in ("stub", "stub:5"):
            for clients in (1, 4, 16):
                throughput(shm, model, clients, seconds / 2)
    elif part == "latest":
        for hz in (0.0, 10.0):
            latest_latency(shm, n // 2, model, hz)
    elif part == "model":
        model_latency(shm, n // 2, model)
        throughput(shm, model, 16, seconds, camera=True)
        throughput(shm, model, 16, seconds, camera=True, questions=len(QUESTIONS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--part", choices=PARTS, help="run one part only (in this process)")
    parser.add_argument("--shm", action="store_true", help="with --part: use the shm profile")
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run these parts of the plan")
    parser.add_argument(
        "--model", default="vsre-tiny", help="the model of parts 4-5 (a preset id or directory)"
    )
    parser.add_argument(
        "--server-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="a server parameter for every part, after the bench's own (repeatable)",
    )
    args = parser.parse_args()
    SERVER_PARAMS.extend(args.server_param)
    if args.part:
        run_part(args.part, args.shm, args.quick, args.model)
        return
    # Fast DDS reads its XML profile once per process, so every configuration gets its own.
    domain = str(random.randint(102, 200))
    print(
        f"cores: {os.cpu_count()}; ROS_DOMAIN_ID {domain}; load average {os.getloadavg()[0]:.1f} "
        "(other work on the machine slows every figure)",
        flush=True,
    )
    plan = [("roundtrip", False), ("roundtrip", True), ("conversion", False)]
    plan += [("ingest", False), ("ingest", True), ("throughput", True), ("model", True)]
    plan += [("latest", True)]
    for part, shm in plan:
        if args.only and part not in args.only:
            continue
        env = _env(shm)
        env["ROS_DOMAIN_ID"] = domain
        cmd = [sys.executable, __file__, "--part", part, "--model", args.model]
        cmd += [f"--server-param={p}" for p in args.server_param]
        cmd += ["--shm"] if shm else []
        subprocess.run(cmd + (["--quick"] if args.quick else []), env=env, check=True)


if __name__ == "__main__":
    main()
