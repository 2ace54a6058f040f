"""How often a topic request/answer exchange loses messages right after discovery.

Two rclpy contexts in one process: a "server" that answers each String on /q by publishing it
on /a, and a "client" that publishes 5 queries once both of its own endpoints are matched, after
waiting `--settle` seconds. Each run uses fresh topics and contexts. A run counts as lost when a
query or an answer did not arrive within 2 s. `--load N` keeps N busy processes running, like
the CI machine under the test suite.

    python bench/discovery_race.py --runs 300 --settle 0 --load 3
    python bench/discovery_race.py --runs 300 --settle 0.5 --load 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
import uuid


def _busy() -> None:
    while True:
        pass


def _endpoint(name: str):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join()
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()

    return node, close


def one_run(settle: float, n: int = 5) -> tuple[int, int]:
    """(queries received by the server, answers received by the client) of one exchange."""
    from rclpy.qos import HistoryPolicy, QoSProfile
    from std_msgs.msg import String

    prefix = f"/race{uuid.uuid4().hex[:8]}"
    server, close_server = _endpoint("race_server")
    queries: list[str] = []
    answers: list[str] = []
    answer_pub = server.create_publisher(String, f"{prefix}/a", QoSProfile(depth=100))

    def on_query(msg) -> None:
        queries.append(msg.data)
        answer_pub.publish(msg)

    server.create_subscription(String, f"{prefix}/q", on_query, QoSProfile(depth=100))
    client, close_client = _endpoint("race_client")
    query_pub = client.create_publisher(String, f"{prefix}/q", QoSProfile(depth=100))
    answer_sub = client.create_subscription(
        String, f"{prefix}/a", lambda m: answers.append(m.data),
        QoSProfile(history=HistoryPolicy.KEEP_ALL),
    )  # fmt: skip
    while not (query_pub.get_subscription_count() and answer_sub.get_publisher_count()):
        time.sleep(0.001)
    time.sleep(settle)
    for i in range(n):
        query_pub.publish(String(data=str(i)))
    deadline = time.monotonic() + 2.0
    while len(answers) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    close_client()
    close_server()
    return len(queries), len(answers)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300, help="exchanges to try (300)")
    parser.add_argument("--settle", type=float, default=0.0, help="seconds to wait (0)")
    parser.add_argument("--load", type=int, default=0, help="busy processes beside it (0)")
    args = parser.parse_args(argv)
    busy = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
    for process in busy:
        process.start()
    lost_queries = lost_answers = 0
    try:
        for _ in range(args.runs):
            got_queries, got_answers = one_run(args.settle)
            lost_queries += got_queries < 5
            lost_answers += got_queries == 5 and got_answers < 5
    finally:
        for process in busy:
            process.terminate()
    print(
        f"settle {args.settle:g} s, load {args.load}: {args.runs} runs; queries lost in "
        f"{lost_queries}, answers lost in {lost_answers}"
    )


if __name__ == "__main__":
    main()
