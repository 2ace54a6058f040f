"""Why 16 clients get ~200 answers/s from the served model: a service whose answers come from a
worker thread, as the VSRE server's do, with a fake engine that either releases the GIL while
it works (sleeps) or holds it (runs Python), the same milliseconds per batch.

    python bench/research/gil_service.py [--ms 5] [--clients 16] [--seconds 8]

For each kind of fake engine it starts a server process (a MultiThreadedExecutor of 32
threads, the service in a reentrant callback group, each callback queueing its request and
waiting for the worker, which answers up to 8 queued requests per batch) and a client process
(`--clients` threads calling the service for `--seconds`), and prints answers per second and
one client's round trip. If holding the GIL costs most of the rate, the server's ROS side
cannot take requests while the engine runs, and the 16 clients' rate is set by the engine's
Python, not its arithmetic.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICE = "/gil_probe/ask"
BATCH = 8


def busy(ms: float) -> None:
    """Python work that holds the GIL for `ms` milliseconds."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def serve(kind: str, ms: float) -> None:
    import rclpy
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile
    from vsre_ros.srv import AskSpatial

    rclpy.init()
    node = rclpy.create_node("gil_probe_server")
    waiting: queue.Queue = queue.Queue()

    def worker() -> None:
        while True:
            batch = [waiting.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(waiting.get_nowait())
                except queue.Empty:
                    break
            time.sleep(ms / 1000) if kind == "releases" else busy(ms)
            for done in batch:
                done.set()

    def on_request(request, response):
        done = threading.Event()
        waiting.put(done)
        done.wait()
        return response

    threading.Thread(target=worker, daemon=True).start()
    node.create_service(AskSpatial, SERVICE, on_request, qos_profile=QoSProfile(depth=1000),
                        callback_group=ReentrantCallbackGroup())  # fmt: skip
    executor = MultiThreadedExecutor(num_threads=32)
    executor.add_node(node)
    executor.spin()


def ask(clients: int, seconds: float) -> tuple[float, float]:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.qos import QoSProfile
    from vsre_ros.srv import AskSpatial

    rclpy.init()
    node = rclpy.create_node("gil_probe_client")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    client = node.create_client(AskSpatial, SERVICE, qos_profile=QoSProfile(depth=100))
    if not client.wait_for_service(timeout_sec=30):
        raise RuntimeError("the probe server never came up")

    def call() -> None:
        done = threading.Event()
        client.call_async(AskSpatial.Request()).add_done_callback(lambda _f: done.set())
        if not done.wait(30):
            raise RuntimeError("no answer in 30 s")

    for _ in range(20):
        call()
    answered, stop = [0], time.monotonic() + seconds

    def load() -> None:
        while time.monotonic() < stop:
            call()
            answered[0] += 1  # one writer per increment is enough for a rate

    threads = [threading.Thread(target=load) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = answered[0] / (time.monotonic() - start)
    alone = []
    for _ in range(50):
        t0 = time.perf_counter()
        call()
        alone.append((time.perf_counter() - t0) * 1000)
    return rate, sorted(alone)[len(alone) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", type=float, default=5.0, help="fake engine time per batch")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--serve", choices=("releases", "holds"), help=argparse.SUPPRESS)
    parser.add_argument("--ask", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.ms)
        return
    if args.ask:
        rate, alone = ask(args.clients, args.seconds)
        print(f"{rate:.0f} {alone:.2f}", flush=True)
        os._exit(0)  # a probe: rclpy's teardown with the spin thread alive may abort
    env = {**os.environ, "ROS_DOMAIN_ID": str(random.randint(120, 200))}
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    for kind in ("releases", "holds"):
        command = [sys.executable, __file__, "--serve", kind, "--ms", str(args.ms)]
        server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            asking = [sys.executable, __file__, "--ask", "--clients", str(args.clients),
                      "--seconds", str(args.seconds)]  # fmt: skip
            out = subprocess.run(
                asking, env=env, capture_output=True, text=True, check=True, timeout=120
            )
            rate, alone = out.stdout.split()
        finally:
            server.kill()  # its worker may hold the GIL, so SIGTERM's handler may not run
            server.wait(timeout=10)
        print(
            f"fake engine that {kind} the GIL {args.ms:g} ms per batch of up to {BATCH}: "
            f"{args.clients} clients {rate} answers/s; one client's round trip p50 {alone} ms"
        )


if __name__ == "__main__":
    main()
