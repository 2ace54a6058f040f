"""Fixtures for the ROS layer tests: a private rclpy context, and peer processes over DDS."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest
from ros_helpers import ROOT, overrides

READY_TIMEOUT_S = 60.0  # a loaded 2-core box can take long to import torch in a peer


class RosClient:
    """A node in its own rclpy context, with a single-threaded executor to wait on futures."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"test_client_{uuid.uuid4().hex[:8]}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def wait(self, future, timeout: float = 20.0):
        """The future's result; fails the test after `timeout` seconds."""
        self.executor.spin_until_future_complete(future, timeout_sec=timeout)
        assert future.done(), f"no reply within {timeout} s"
        return future.result()

    def spin_until(self, predicate, timeout: float = 20.0) -> bool:
        """Spin until predicate() is true or the timeout passes; returns predicate()."""
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        return bool(predicate())

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


@pytest.fixture
def ros_client():
    client = RosClient()
    yield client
    client.close()


class Peer:
    """A child Python process that prints READY when its ROS endpoints exist."""

    def __init__(self, args: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line and self.proc.poll() is not None:
                    break
                self.output.append(line)
                if line.strip() == "READY":
                    return
        self.close()
        raise AssertionError(f"peer {args} never became ready:\n{''.join(self.output)}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the peer exits when its stdin closes
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def spawn():
    """spawn(args) starts a peer process; all are stopped at teardown."""
    peers: list[Peer] = []

    def _spawn(args: list[str]) -> Peer:
        peers.append(Peer(args))
        return peers[-1]

    yield _spawn
    for peer in peers:
        peer.close()


class ServerHarness:
    """A VsreServer in its own context, spun by a multi-threaded executor in a thread."""

    def __init__(self, params: dict, activate: bool = True) -> None:
        import threading

        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        from vsre_ros.ros.server import VsreServer, executor_threads

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        name = f"vsre_server_{uuid.uuid4().hex[:6]}"
        self.node = VsreServer(name, context=self.context, parameter_overrides=overrides(params))
        self.executor = MultiThreadedExecutor(
            num_threads=executor_threads(self.node.params), context=self.context
        )
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        if activate:
            from rclpy.lifecycle import TransitionCallbackReturn

            assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
            assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        self.node.active = False
        self.node._release()
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(timeout=10)


@pytest.fixture
def make_server():
    """make_server(params, activate=True) -> ServerHarness; all are closed at teardown."""
    made: list[ServerHarness] = []

    def _make(params: dict, activate: bool = True) -> ServerHarness:
        made.append(ServerHarness(params, activate))
        return made[-1]

    yield _make
    for harness in made:
        harness.close()


class ServeProcess:
    """`vsre serve` in its own process under private names (stub engine unless told)."""

    def __init__(self, params: dict, activate: bool = True) -> None:
        self.name = f"vsre_server_{uuid.uuid4().hex[:6]}"
        prefix = f"/{self.name}"
        self.names = {
            "service_name": f"{prefix}/ask",
            "action_name": f"{prefix}/ask_batch",
            "query_topic": f"{prefix}/queries",
            "answer_topic": f"{prefix}/answers",
            "annotated_topic": f"{prefix}/annotated",
            "markers_topic": f"{prefix}/markers",
            "cameras": [f"{prefix}/image"],
        }
        # The YAML is keyed by the default node name; a renamed node needs every value itself.
        values = {"engine_backend": "stub", "model": "stub", **self.names, **params}
        args = ["-r", f"__node:={self.name}"]
        for key, value in values.items():
            text = f"[{','.join(value)}]" if isinstance(value, list) else str(value)
            args += ["-p", f"{key}:={text}"]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vsre_ros.cli", "serve"]
            + ([] if activate else ["--no-activate"])
            + ["--params-file", str(ROOT / "config" / "stub.yaml"), "--ros-args", *args],
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word (its DDS endpoints linger)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def serve():
    """serve(params, activate=True) -> ServeProcess; all are stopped at teardown."""
    made: list[ServeProcess] = []

    def _serve(params: dict | None = None, activate: bool = True) -> ServeProcess:
        made.append(ServeProcess(params or {}, activate))
        return made[-1]

    yield _serve
    for process in made:
        process.close()
