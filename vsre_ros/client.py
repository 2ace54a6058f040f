"""Ask the VSRE server from Python: one answer per query, a timeout on every call, no hangs.

    from vsre_ros.client import VsreClient
    from vsre_ros.msg import SpatialQuery

    with VsreClient.standalone() as vsre:            # its own context, node and spin thread
        answer = vsre.ask(SpatialQuery(question="Is the cup left of the box?"), timeout=10.0)
        answers = vsre.ask_batch([query_a, query_b], timeout=30.0)

    vsre = VsreClient(node)                           # inside your node; spin the node elsewhere
    vsre.ask_async(query).add_done_callback(lambda future: use(future.result()))

`ask` goes through the AskSpatial service (or, with `transport="topic"`, the query and answer
topics, matched by `query_id`); `ask_batch` through the AskSpatial action. Every call ends with
exactly one `SpatialAnswer` per query, in query order:

- the server's answer;
- after OVERLOADED the query is asked again, after 0.05 s, 0.1 s, 0.2 s ... (at most
  `backoff_max`, with random jitter) while the call's deadline allows; then the last OVERLOADED;
- when no answer comes within `timeout` (no server, a killed or restarted server, a query lost
  on the way), an answer with status ERROR whose `error` starts with "timeout:" (`is_timeout`).
  The pending request is dropped, so a late response is ignored; nothing waits forever.

Topic transport and discovery: a DDS topic delivers only to readers matched at the time of
publishing, and matching is not simultaneous at both ends: the client can see the server's
endpoints before the server's endpoints see the client's, and what is published in between is
lost (20 queries in one test run lost all their answers that way). So the first query on the
topics waits until the server's topics have been matched for `settle` seconds (0.5); the
service and the action do not need it.

QoS: every endpoint is reliable with a history of `depth` (1000) messages, except the answer
topic subscription, which keeps all (KEEP_ALL; Fast DDS holds up to 5000). rclpy's default for
service clients, 10, drops responses when more than 10 arrive before the executor takes them
(2 calls in 10,000 were lost that way in a mixed soak). Size `depth` above the number of calls
you keep in flight, and the server's `service_depth` likewise.

Threads: `ask_async` and `ask_batch_async` never block and may be called from any thread,
including callbacks. `ask` and `ask_batch` block until the answer, so the node must be spun by
another thread (`standalone()` does that); do not call them from a callback of a
single-threaded executor that spins the same node.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_PREFIX = "timeout:"  # the start of `error` in the answers the client makes on timeout
DEFAULT_DEPTH = 1000
TRANSPORTS = ("service", "topic")
_POLL_S = 0.05  # how often to look for a server that is not there yet
DEFAULT_SETTLE_S = 0.5  # topic transport: wait this long after the server's topics match


def is_timeout(answer) -> bool:
    """True for the answers the client makes when no answer came in time."""
    from vsre_ros.msg import SpatialAnswer

    return answer.status == SpatialAnswer.ERROR and answer.error.startswith(TIMEOUT_PREFIX)


def timeout_answer(query_id: str, why: str):
    """A SpatialAnswer saying that no answer came (status ERROR, error "timeout: <why>")."""
    from vsre_ros.msg import SpatialAnswer

    return SpatialAnswer(
        query_id=query_id,
        status=SpatialAnswer.ERROR,
        error=f"{TIMEOUT_PREFIX} {why}",
        choice_index=-1,
        value=math.nan,
    )


class _Timers:
    """One thread that runs callables at given monotonic times (deadlines, retries, polls)."""

    def __init__(self, on_error: Callable[[str], None]) -> None:
        self._on_error = on_error
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vsre-client-timers", daemon=True)
        self._thread.start()

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._count), fn))
            self._cond.notify()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.call_at(time.monotonic() + delay, fn)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception as err:  # a timer must not take the thread down
                self._on_error(f"vsre_ros.client: a timer callback failed: {err}")


@dataclass
class _Call:
    """One ask or ask_batch on its way: state shared by its callbacks (under `lock`)."""

    queries: list[Any]  # SpatialQuery messages
    via: str  # "service", "topic" or "action"
    deadline: float  # time.monotonic() after which the call ends with timeouts
    timeout: float  # the caller's timeout, for messages
    result: concurrent.futures.Future  # resolved once, with a list of answers
    on_answer: Callable[[Any], None] | None = None  # per answer, as answers come (batches)
    answers: list[Any] = field(default_factory=list)  # one slot per query
    attempt: int = 0  # OVERLOADED retries so far
    waiting: list[int] = field(default_factory=list)  # indices asked in the current attempt
    pending: Any = None  # the rclpy future of the current attempt (service / goal / result)
    goal: Any = None  # the current goal handle (batches)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False


class VsreClient:
    """Asks the VSRE server over its service, action or topics (see the module docstring)."""

    def __init__(
        self,
        node,
        service_name: str = "vsre/ask",
        action_name: str = "vsre/ask_batch",
        *,
        transport: str = "service",
        query_topic: str = "vsre/queries",
        answer_topic: str = "vsre/answers",
        timeout: float = 30.0,
        depth: int = DEFAULT_DEPTH,
        retry_overloaded: bool = True,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        settle: float = DEFAULT_SETTLE_S,
        callback_group=None,
    ) -> None:
        from rclpy.action import ActionClient
        from rclpy.callback_groups import ReentrantCallbackGroup
        from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
        from rclpy.qos import HistoryPolicy, QoSProfile

        from vsre_ros.action import AskSpatial as AskSpatialAction
        from vsre_ros.msg import SpatialAnswer, SpatialQuery
        from vsre_ros.srv import AskSpatial

        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; known: {TRANSPORTS}")
        if timeout <= 0 or depth < 1 or settle < 0:
            raise ValueError(
                "timeout must be > 0, depth >= 1 and settle >= 0, "
                f"got {timeout}, {depth}, {settle}"
            )
        self.node = node
        self.transport = transport
        self.timeout = timeout
        self.retry_overloaded = retry_overloaded
        self.settle = settle
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._srv_type, self._action_type = AskSpatial, AskSpatialAction
        self._action_name = action_name
        self._overloaded = SpatialAnswer.OVERLOADED
        self._lock = threading.Lock()  # made first: endpoint callbacks may run at once
        group = callback_group or ReentrantCallbackGroup()
        qos = QoSProfile(depth=depth)
        self._service = node.create_client(
            AskSpatial, service_name, qos_profile=qos, callback_group=group
        )
        self._action = ActionClient(
            node,
            AskSpatialAction,
            action_name,
            callback_group=group,
            goal_service_qos_profile=qos,
            result_service_qos_profile=qos,
            cancel_service_qos_profile=qos,
            feedback_sub_qos_profile=qos,
        )
        self._pub = self._sub = None
        self._by_id: dict[str, _Call] = {}  # topic transport: query_id -> its call
        self._ids = itertools.count()
        self._id_prefix = f"{node.get_name()}/{random.getrandbits(32):08x}/"
        self._links = [0, 0]  # topic transport: matched subscriptions, matched publishers
        self._linked_at: float | None = None  # when both became non-zero
        if transport == "topic":
            self._pub = node.create_publisher(
                SpatialQuery,
                query_topic,
                qos,
                event_callbacks=PublisherEventCallbacks(matched=lambda s: self._link(0, s)),
            )
            # KEEP_ALL: the answer topic carries every client's answers; a client that falls
            # behind would lose its own at its reader with KEEP_LAST.
            self._sub = node.create_subscription(
                SpatialAnswer,
                answer_topic,
                self._on_topic_answer,
                QoSProfile(history=HistoryPolicy.KEEP_ALL),
                callback_group=group,
                event_callbacks=SubscriptionEventCallbacks(matched=lambda s: self._link(1, s)),
            )
        self._live: dict[int, _Call] = {}  # the calls not yet resolved, by id()
        self._timers = _Timers(lambda text: node.get_logger().error(text))
        self._standalone: tuple | None = None  # (context, executor, thread, stop) if owned

    # ---- construction helpers ----------------------------------------------------------------

    @classmethod
    def standalone(cls, node_name: str = "", **kwargs) -> VsreClient:
        """A client with its own rclpy context, node and spin thread; `close()` ends them."""
        import uuid

        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node(
            node_name or f"vsre_client_{uuid.uuid4().hex[:8]}", context=context
        )
        executor = MultiThreadedExecutor(num_threads=2, context=context)
        executor.add_node(node)
        stop = threading.Event()

        def spin() -> None:
            while context.ok() and not stop.is_set():
                executor.spin_once(timeout_sec=0.1)

        # The client makes its endpoints before the spin thread starts: rclpy's ActionClient
        # joins the node's waitables before it has its lock, and an executor that looks at it
        # then fails (AttributeError '_lock'), which ended the spin thread (6 of 520 runs of a
        # connect-and-ask loop under load).
        try:
            client = cls(node, **kwargs)
        except BaseException:
            executor.shutdown()
            node.destroy_node()
            context.try_shutdown()
            raise
        thread = threading.Thread(target=spin, name="vsre-client-spin", daemon=True)
        thread.start()
        client._standalone = (context, executor, thread, stop)
        return client

    def __enter__(self) -> VsreClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """End the calls in flight (timeout answers), stop the timer thread and, for a
        standalone client, its node and context."""
        with self._lock:
            live = list(self._live.values())
        for call in live:
            self._expire(call, "the client was closed before an answer came")
        self._timers.close()
        if self._standalone is not None:
            from vsre_ros.ros.bringup import shutdown_executor

            context, executor, thread, stop = self._standalone
            self._standalone = None
            stop.set()
            thread.join(timeout=5)
            shutdown_executor(executor)
            self.node.destroy_node()
            context.try_shutdown()

    # ---- asking ------------------------------------------------------------------------------

    def server_ready(self) -> bool:
        """Whether the server's endpoints for `ask` (and `ask_batch`) are discovered; for the
        topic transport, also `settle` seconds ago (see the module docstring)."""
        if self.transport == "topic":
            if self._pub.get_subscription_count() == 0 or self._sub.get_publisher_count() == 0:
                return False
            with self._lock:
                if self._linked_at is None:  # matched, and the events are still on their way
                    self._linked_at = time.monotonic()
                return time.monotonic() - self._linked_at >= self.settle
        return self._service.service_is_ready()

    def _link(self, which: int, status) -> None:
        """A matched event of the query publisher (0) or the answer subscription (1)."""
        with self._lock:
            self._links[which] = status.current_count
            if min(self._links) == 0:
                self._linked_at = None
            elif self._linked_at is None:
                self._linked_at = time.monotonic()

    def ask(self, query, timeout: float | None = None):
        """The answer to one SpatialQuery (blocks; see the module docstring on threads)."""
        return self.ask_async(query, timeout).result()

    def ask_batch(self, queries: Sequence, timeout: float | None = None, on_answer=None):
        """The answers to several queries through the action, in query order (blocks)."""
        return self.ask_batch_async(queries, timeout, on_answer).result()

    def ask_async(self, query, timeout: float | None = None) -> concurrent.futures.Future:
        """A Future of the SpatialAnswer to one query; never blocks."""
        outer: concurrent.futures.Future = concurrent.futures.Future()
        if self.transport == "topic":
            # Answers on the topic are told apart by query_id: it must be unique while asked.
            if not query.query_id:
                query.query_id = f"{self._id_prefix}{next(self._ids)}"
            with self._lock:
                if query.query_id in self._by_id:
                    raise ValueError(f"query_id {query.query_id!r} is already being asked")
                call = self._start([query], timeout, None, "topic")
                self._by_id[query.query_id] = call
        else:
            call = self._start([query], timeout, None, "service")
        call.result.add_done_callback(lambda f: outer.set_result(f.result()[0]))
        if self.transport == "topic":
            self._ask_topic(call)
        else:
            self._ask_service(call)
        return outer

    def ask_batch_async(
        self, queries: Sequence, timeout: float | None = None, on_answer=None
    ) -> concurrent.futures.Future:
        """A Future of the answers to `queries` (the action), in order; never blocks.

        `on_answer(answer)` is called with each final answer as it comes (from the action's
        feedback or its result), so a caller can show progress.
        """
        call = self._start(list(queries), timeout, on_answer, "action")
        if not call.queries:
            self._finish(call)
        else:
            call.waiting = list(range(len(call.queries)))
            self._ask_action(call)
        return call.result

    def _start(self, queries: list, timeout: float | None, on_answer, via: str) -> _Call:
        timeout = self.timeout if timeout is None else timeout
        call = _Call(
            queries=queries,
            via=via,
            deadline=time.monotonic() + timeout,
            timeout=timeout,
            result=concurrent.futures.Future(),
            on_answer=on_answer,
            answers=[None] * len(queries),
        )
        self._live[id(call)] = call
        self._timers.call_at(call.deadline, lambda: self._expire(call))
        return call

    # ---- service transport -------------------------------------------------------------------

    def _ask_service(self, call: _Call) -> None:
        with call.lock:
            if call.done:
                return
            if not self._service.service_is_ready():
                self._timers.call_later(_POLL_S, lambda: self._ask_service(call))
                return
            future = self._service.call_async(self._srv_type.Request(query=call.queries[0]))
            call.pending = future
        future.add_done_callback(lambda f: self._on_service_response(call, f))

    def _on_service_response(self, call: _Call, future) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            from vsre_ros.msg import SpatialAnswer

            failed = SpatialAnswer(
                query_id=call.queries[0].query_id,
                status=SpatialAnswer.ERROR,
                error=f"the service call failed: {future.exception()}",
                choice_index=-1,
                value=math.nan,
            )
            self._final(call, 0, failed)
            return
        self._answered(call, {0: future.result().answer}, lambda: self._ask_service(call))

    # ---- topic transport ---------------------------------------------------------------------

    def _ask_topic(self, call: _Call) -> None:
        with call.lock:
            if call.done:
                return
            if not self.server_ready():
                self._timers.call_later(_POLL_S, lambda: self._ask_topic(call))
                return
            call.pending = True
        self._pub.publish(call.queries[0])

    def _on_topic_answer(self, msg) -> None:
        with self._lock:
            call = self._by_id.get(msg.query_id)
        if call is None:
            return  # someone else's query, or a late answer to one that timed out
        self._answered(call, {0: msg}, lambda: self._ask_topic(call))

    # ---- action transport --------------------------------------------------------------------

    def _ask_action(self, call: _Call) -> None:
        with call.lock:
            if call.done:
                return
            if not self._action.server_is_ready():
                self._timers.call_later(_POLL_S, lambda: self._ask_action(call))
                return
            indices = list(call.waiting)
            goal = self._action_type.Goal(queries=[call.queries[i] for i in indices])
            future = self._action.send_goal_async(
                goal, feedback_callback=lambda fb: self._on_feedback(call, indices, fb)
            )
            call.pending = future
        future.add_done_callback(lambda f: self._on_goal(call, indices, f))

    def _on_feedback(self, call: _Call, indices: list[int], feedback) -> None:
        answer = feedback.feedback.answer
        k = feedback.feedback.answered - 1
        if 0 <= k < len(indices) and answer.status != self._overloaded:
            self._final(call, indices[k], answer, finish=False)

    def _on_goal(self, call: _Call, indices: list[int], future) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the deadline will answer
        handle = future.result()
        if not handle.accepted:
            from vsre_ros.msg import SpatialAnswer

            rejected = {
                k: SpatialAnswer(
                    query_id=call.queries[i].query_id,
                    status=SpatialAnswer.OVERLOADED,
                    error="the server rejected the goal; retry later",
                    choice_index=-1,
                    value=math.nan,
                )
                for k, i in enumerate(indices)
            }
            self._answered(call, rejected, lambda: self._ask_action(call), indices)
            return
        with call.lock:
            if call.done:
                handle.cancel_goal_async()
                return
            call.goal = handle
            result = handle.get_result_async()
            call.pending = result
        result.add_done_callback(lambda f: self._on_result(call, indices, f))

    def _on_result(self, call: _Call, indices: list[int], future) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        answers = list(future.result().result.answers)
        if len(answers) != len(indices):
            return  # not a result of this server's making; the deadline will answer
        with call.lock:
            call.goal = None
        self._answered(call, dict(enumerate(answers)), lambda: self._ask_action(call), indices)

    # ---- answers, retries, deadlines ---------------------------------------------------------

    def _answered(self, call: _Call, got: dict[int, Any], retry, indices=None) -> None:
        """Take an attempt's answers (by position in the attempt); retry the OVERLOADED ones."""
        indices = indices if indices is not None else [0]
        again = [indices[k] for k, a in got.items() if a.status == self._overloaded]
        delay = self._backoff(call.attempt)
        retrying = (
            bool(again)
            and self.retry_overloaded
            and time.monotonic() + delay < call.deadline
            and not call.done
        )
        for k, answer in got.items():
            if not (retrying and answer.status == self._overloaded):
                self._final(call, indices[k], answer, finish=False)
        if retrying:
            with call.lock:
                call.attempt += 1
                call.waiting = again
                call.pending = None
            self._timers.call_later(delay, retry)
        else:
            self._finish(call)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, self.backoff_initial * (2**attempt))
        return delay * random.uniform(0.5, 1.0)

    def _final(self, call: _Call, index: int, answer, finish: bool = True) -> None:
        """Record the final answer of query `index` (the first one recorded wins)."""
        with call.lock:
            if call.done or call.answers[index] is not None:
                return
            call.answers[index] = answer
        if call.on_answer is not None:
            call.on_answer(answer)
        if finish:
            self._finish(call)

    def _finish(self, call: _Call) -> None:
        with call.lock:
            if call.done or any(a is None for a in call.answers):
                return
            call.done = True
        self._forget(call)
        call.result.set_result(list(call.answers))

    def _expire(self, call: _Call, why: str = "") -> None:
        """The deadline passed: every query still without an answer gets a timeout answer."""
        with call.lock:
            if call.done:
                return
            pending, goal = call.pending, call.goal
            call.done = True
            missing = [i for i, a in enumerate(call.answers) if a is None]
        # Drop what is still pending, so a late response finds nothing to complete.
        if call.via == "service" and hasattr(pending, "done"):
            self._service.remove_pending_request(pending)
        elif call.via == "action" and hasattr(pending, "done") and not pending.done():
            for name in ("_remove_pending_goal_request", "_remove_pending_result_request"):
                remove = getattr(self._action, name, None)  # private in rclpy; best effort
                if remove is not None:
                    try:
                        remove(pending)
                    except Exception:  # not the future that map holds: nothing to drop
                        pass
        if goal is not None:
            goal.cancel_goal_async()  # best effort: the server stops working on it
        if not why:
            why = f"no answer from {self._where(call.via)} within {call.timeout:g} s" + (
                "" if pending else " (no server found: is it running?)"
            )
        for i in missing:
            answer = timeout_answer(call.queries[i].query_id, why)
            call.answers[i] = answer
            if call.on_answer is not None:
                call.on_answer(answer)
        self._forget(call)
        call.result.set_result(list(call.answers))

    def _forget(self, call: _Call) -> None:
        with self._lock:
            self._live.pop(id(call), None)
            if call.via == "topic":
                for query in call.queries:
                    if self._by_id.get(query.query_id) is call:
                        del self._by_id[query.query_id]

    def _where(self, via: str) -> str:
        if via == "action":
            return f"action {self._action_name}"
        if via == "topic":
            return f"topic {self._sub.topic_name}"
        return f"service {self._service.service_name}"
