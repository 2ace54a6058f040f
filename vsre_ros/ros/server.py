"""The VSRE server: a lifecycle node that answers spatial questions about camera frames.

Queries come by topic (SpatialQuery -> SpatialAnswer), by the AskSpatial service and by the
AskSpatial action (a batch; feedback per answer; cancellable). Callbacks only check the query,
pick its frame and put it on a bounded queue (full queue: OVERLOADED at once); one worker thread
takes batches off the queue, decodes the frames and calls the engine, so model work never runs
in a ROS callback. Every query gets exactly one answer with its id, whatever happens.

Intake never drops a query silently. The query topic is read with a KEEP_ALL history by default
(`intake_depth` 0): a burst far larger than the queue waits in DDS, flow-controlled back to the
sender, and each query is taken and answered (OK or OVERLOADED); with KEEP_LAST, DDS would
overwrite what the executor had not yet taken. The service and answer publishers keep
`service_depth` / `answer_depth` samples. A waiting service call holds an executor thread only
while its query is queued or in the engine (OVERLOADED returns at once), and at most `max_goals`
action goals run at once, so the executor always has threads left to take new queries.

Lifecycle: the model loads in on_configure (a failed load fails the transition and says why),
answers are given only while active (otherwise MODEL_NOT_READY), on_cleanup frees the model,
shutdown finalizes the node (`vsre serve` then exits). `vsre serve` stays up when its own
configure fails: it answers MODEL_NOT_READY with the reason until configured again.
The `model` and `lora` parameters can be changed at runtime: the new model loads between batches
and the parameter change is refused, with the reason, if it cannot load.

Outputs besides answers, while someone subscribes: an annotated image topic (frame + question,
answer, confidence, the question's objects' boxes) and a MarkerArray of those objects measured
in 3D (cameras with a depth topic and CameraInfo); and /diagnostics (queue depth, latency,
dropped frames, model id).
"""

from __future__ import annotations

import argparse
import gc
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from vsre_ros.action import AskSpatial as AskSpatialAction
from vsre_ros.core.answers import Status
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.ros import bringup
from vsre_ros.ros import params as server_params
from vsre_ros.ros.conversions import (
    ImageConversionError,
    imgmsg_to_numpy,
    numpy_to_imgmsg,
    to_rgb8,
)
from vsre_ros.ros.engines import make_engine
from vsre_ros.ros.frames import Frame, FrameBuffer, stamp_ns
from vsre_ros.ros.messages import (
    Limits,
    answer_to_msg,
    check_query,
    failure_msg,
    markers_msg,
    query_from_msg,
)
from vsre_ros.srv import AskSpatial

NODE_NAME = "vsre_server"
LATENCY_WINDOW = 200  # answers whose latencies feed the diagnostics percentiles


@dataclass
class Pending:
    """One query on its way to an answer; `reply` is called exactly once."""

    msg: Any  # the SpatialQuery
    received: float  # time.perf_counter() at receipt
    on_answer: Any  # callable(SpatialAnswer)
    frames: list[Frame] = field(default_factory=list)  # camera frame(s) picked, or []
    buffer: FrameBuffer | None = None  # the camera the frame came from
    header: Header = field(default_factory=Header)  # stamp/frame of the frame used
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _done: bool = False

    def reply(self, answer) -> bool:
        """Send `answer` unless an answer was already sent; True if this call sent it."""
        with self._lock:
            if self._done:
                return False
            self._done = True
        answer.query_id = self.msg.query_id
        answer.latency_total_ms = float((time.perf_counter() - self.received) * 1000.0)
        self.on_answer(answer)
        return True


class Stats:
    """Counters and recent latencies for /diagnostics (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0  # queries taken in (topic, service, action)
        self.answered = 0
        self.by_status: dict[int, int] = {}
        self.latency = deque(maxlen=LATENCY_WINDOW)
        self.model_latency = deque(maxlen=LATENCY_WINDOW)

    def receive(self, count: int = 1) -> None:
        with self.lock:
            self.received += count

    def record(self, msg) -> None:
        with self.lock:
            self.answered += 1
            self.by_status[msg.status] = self.by_status.get(msg.status, 0) + 1
            if msg.status == Status.OK:
                self.latency.append(msg.latency_total_ms)
                self.model_latency.append(msg.latency_model_ms)


class VsreServer(LifecycleNode):
    """The VSRE lifecycle node (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        server_params.declare(self)
        self.params = server_params.read(self)
        self.engine = None
        self.engine_lock = threading.Lock()  # held while answering or switching models
        self.active = False
        self.finalized = False  # lifecycle shutdown: nothing more will be answered
        self.on_finalized = lambda: None  # called once finalized (`vsre serve` exits then)
        self.last_error = ""
        self.stats = Stats()
        self.queue: queue.Queue[Pending] = queue.Queue(maxsize=self.params.queue_size)
        self.buffers: dict[str, FrameBuffer] = {}
        self._camera_subs: list[Any] = []
        self._worker: threading.Thread | None = None
        self._preencoder: threading.Thread | None = None
        self._new_frame = threading.Event()  # set by every camera frame (`preencode_hz`)
        self.preencoded = 0  # frames encoded before a question (diagnostics)
        self._stop = threading.Event()
        self._group = ReentrantCallbackGroup()
        self._goals = 0  # action goals being answered
        self._goals_lock = threading.Lock()
        p = self.params
        # Intake QoS is read once, here, like the topic and service names.
        answers_qos = QoSProfile(depth=p.answer_depth)
        service_qos = QoSProfile(depth=p.service_depth)
        self.answer_pub = self.create_publisher(SpatialAnswer, p.answer_topic, answers_qos)
        self.create_subscription(
            SpatialQuery,
            p.query_topic,
            self._on_topic_query,
            intake_qos(p.intake_depth),
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.create_service(
            AskSpatial,
            p.service_name,
            self._on_service,
            # rclpy's default depth (10) drops requests when more callers than that ask at once.
            qos_profile=service_qos,
            callback_group=self._group,
        )
        self._action = ActionServer(
            self,
            AskSpatialAction,
            p.action_name,
            execute_callback=self._execute_goal,
            goal_callback=lambda _goal: GoalResponse.ACCEPT,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=self._group,
            goal_service_qos_profile=service_qos,
            result_service_qos_profile=service_qos,
            cancel_service_qos_profile=service_qos,
            # A batch sends one feedback per answer in a burst; keep them all for the client.
            feedback_pub_qos_profile=answers_qos,
        )
        self.annotated_pub = (
            self.create_publisher(Image, p.annotated_topic, 5) if p.annotated_topic else None
        )
        self.markers_pub = (
            self.create_publisher(MarkerArray, p.markers_topic, 5) if p.markers_topic else None
        )
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if p.diagnostics_period > 0:
            self.create_timer(p.diagnostics_period, self.publish_diagnostics)
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # ---- lifecycle ---------------------------------------------------------------------------

    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            params = server_params.read(self)
        except ValueError as err:
            return self._fail(f"bad parameters: {err}")
        try:
            engine = make_engine(
                params.engine_backend, params.model, params.lora, params.engine_config()
            )
        except Exception as err:  # any load failure fails the transition, with its reason
            return self._fail(
                f"cannot load model {params.model!r} (engine {params.engine_backend!r}): {err}"
            )
        self.params = params
        self.engine = engine
        self.last_error = ""
        self.queue = queue.Queue(maxsize=params.queue_size)
        self._make_cameras(params)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="vsre-worker", daemon=True)
        self._worker.start()
        if params.preencode_hz > 0 and not callable(getattr(engine, "prepare", None)):
            self.get_logger().warning(
                f"preencode_hz {params.preencode_hz:g}: engine {params.engine_backend!r} cannot "
                "encode frames ahead (no prepare()); frames are encoded when asked about"
            )
        elif params.preencode_hz > 0:
            self._preencoder = threading.Thread(
                target=self._preencode, name="vsre-preencoder", daemon=True
            )
            self._preencoder.start()
        cameras = [c.topic for c in params.camera_specs()]
        if engine.random_weights:
            self.get_logger().warning(engine.note)
        else:
            self.get_logger().info(engine.note)
        self.get_logger().info(f"configured: model {engine.model_id!r}, cameras {cameras}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        self.active = True
        self.get_logger().info("active: answering queries")
        return super().on_activate(state)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self.active = False
        self._drain(Status.MODEL_NOT_READY, "the server was deactivated before answering")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self.active = False
        self.finalized = True
        self._release()
        self.get_logger().info("shut down (finalized): answering no more queries")
        self.on_finalized()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state) -> TransitionCallbackReturn:
        self.active = False
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _fail(self, message: str) -> TransitionCallbackReturn:
        self.last_error = message
        self.get_logger().error(message)
        return TransitionCallbackReturn.FAILURE

    def _release(self) -> None:
        self._stop.set()
        self._new_frame.set()
        for thread in (self._worker, self._preencoder):
            if thread is not None:
                thread.join(timeout=30)
        self._worker = self._preencoder = None
        self._drain(Status.MODEL_NOT_READY, "the server was cleaned up before answering")
        for sub in self._camera_subs:
            self.destroy_subscription(sub)
        self._camera_subs.clear()
        self.buffers.clear()
        with self.engine_lock:
            self.engine = None
        gc.collect()

    def _drain(self, status: Status, why: str) -> None:
        while True:
            try:
                pending = self.queue.get_nowait()
            except queue.Empty:
                return
            self._send(pending, failure_msg(status, why, pending.msg.query_id))

    # ---- cameras -----------------------------------------------------------------------------

    def _make_cameras(self, params) -> None:
        tolerance = int(params.stamp_tolerance * 1e9)
        for spec in params.camera_specs():
            qos = (
                qos_profile_sensor_data
                if spec.qos == "sensor_data"
                else QoSProfile(depth=params.frame_buffer)
            )
            buffer = FrameBuffer(spec.topic, params.frame_buffer, tolerance)
            buffer.depth_topic = spec.depth_topic
            self.buffers[spec.topic] = buffer
            kind = CompressedImage if spec.transport == "compressed" else Image
            group = self._group
            self._camera_subs.append(
                self.create_subscription(
                    kind, spec.topic, self._on_frame(buffer), qos, callback_group=group
                )
            )
            if spec.depth_topic:
                self._camera_subs.append(
                    self.create_subscription(
                        Image, spec.depth_topic, buffer.add_depth, qos, callback_group=group
                    )
                )
            if spec.info_topic:
                self._camera_subs.append(
                    self.create_subscription(
                        CameraInfo, spec.info_topic, buffer.set_info, qos, callback_group=group
                    )
                )

    def _on_frame(self, buffer: FrameBuffer):
        def on_frame(msg) -> None:
            buffer.add_image(msg)
            self._new_frame.set()

        return on_frame

    def _preencode(self) -> None:
        """While no query waits, encode each camera's newest frame (`Engine.prepare`, under the
        key a question about it uses), frames about 1 / `preencode_hz` apart by their stamps
        (a camera's own clock: a schedule by the wall clock would drift behind it). A stamp
        older than the last one encoded (a bag replayed from its start) is encoded at once."""
        spacing = int(1e9 / self.params.preencode_hz * 0.9)  # ns; a camera's jitter is slack
        done: dict[str, int] = {}  # camera -> stamp of the frame last encoded
        timeout = 0.1
        while not self._stop.is_set():
            self._new_frame.wait(timeout=timeout)
            self._new_frame.clear()
            timeout = 0.1
            for name, buffer in list(self.buffers.items()):
                frame = buffer.latest()
                last = done.get(name)
                if frame is None or (last is not None and 0 <= frame.stamp - last < spacing):
                    continue  # encoded already, or too soon after the last one encoded
                if not self.active or not self.queue.empty():
                    timeout = 0.002  # questions first: look again when they are answered
                    continue
                done[name] = frame.stamp
                try:
                    self._prepare_frame(buffer, frame)
                except Exception as err:  # the frame is answered about, with reasons, later
                    self.get_logger().warning(
                        f"pre-encoding a frame of {name}: {err!r}", throttle_duration_sec=5.0
                    )

    def _prepare_frame(self, buffer: FrameBuffer, frame: Frame) -> None:
        image, depth = _decode_frame(buffer, frame)
        k = _camera_k(frame)
        with self.engine_lock:
            engine = self.engine
            if engine is not None and engine.prepare(image, (buffer.name, frame.stamp), depth, k):
                self.preencoded += 1

    def _buffer_for(self, camera: str) -> FrameBuffer | None:
        if not self.buffers:
            return None
        if not camera:
            return next(iter(self.buffers.values()))
        for topic, buffer in self.buffers.items():
            if camera in (topic, topic.lstrip("/"), "/" + topic.lstrip("/")):
                return buffer
            if buffer.frame_id and camera == buffer.frame_id:
                return buffer
        return None

    # ---- receiving queries -------------------------------------------------------------------

    def _on_topic_query(self, msg) -> None:
        self.submit(msg, self._publish_answer)

    def _publish_answer(self, answer) -> None:
        self.answer_pub.publish(answer)

    def submit(self, msg, on_answer) -> Pending:
        """Check `msg`, pick its frame and queue it; failures are answered at once."""
        pending = Pending(msg, time.perf_counter(), on_answer)
        self.stats.receive()
        if not self.active or self.engine is None:
            if self.finalized:
                why = "the server was shut down (lifecycle finalized); start a new one"
            elif self.last_error:
                why = f"no model is loaded: {self.last_error}"
            else:
                why = "the server is not active; configure and activate it (lifecycle)"
            self._send(pending, failure_msg(Status.MODEL_NOT_READY, why, msg.query_id))
            return pending
        problem = check_query(msg, Limits.of(self.params)) or self._pick_frames(pending)
        if problem is not None:
            self._send(pending, failure_msg(*problem, msg.query_id, pending.header))
            return pending
        try:
            self.queue.put_nowait(pending)
        except queue.Full:
            self._send(
                pending,
                failure_msg(
                    Status.OVERLOADED,
                    f"the request queue is full ({self.params.queue_size} waiting); retry later",
                    msg.query_id,
                    model_id=self._model_id(),
                ),
            )
        return pending

    def _pick_frames(self, pending: Pending) -> tuple[Status, str] | None:
        msg = pending.msg
        if msg.images:
            if len(msg.images) > self.params.max_images:
                return (
                    Status.BAD_IMAGE,
                    f"{len(msg.images)} inline images; the limit is {self.params.max_images}",
                )
            pending.header = Header(stamp=msg.images[0].header.stamp, frame_id="inline")
            return None
        buffer = self._buffer_for(msg.camera)
        if buffer is None:
            known = ", ".join(self.buffers) or "none"
            return Status.NO_FRAME, f"unknown camera {msg.camera!r}; configured cameras: {known}"
        wanted = stamp_ns(msg.stamp)
        frame = buffer.latest() if wanted == 0 else buffer.nearest(wanted)
        if frame is None:
            return Status.NO_FRAME, f"no frame received yet from camera {buffer.name}"
        pending.frames = [frame]
        pending.buffer = buffer
        pending.header = Header(
            stamp=frame.image.header.stamp, frame_id=frame.image.header.frame_id
        )
        if wanted == 0:
            max_age = msg.max_age if msg.max_age > 0 else self.params.max_frame_age
            age = (self.get_clock().now().nanoseconds - frame.stamp) / 1e9
            if max_age > 0 and age > max_age:
                return (
                    Status.STALE_FRAME,
                    f"the latest frame from {buffer.name} is {age:.3f} s old; max_age is "
                    f"{max_age:.3f} s (is the camera publishing?)",
                )
        else:
            gap = abs(frame.stamp - wanted) / 1e9
            if gap > self.params.stamp_tolerance:
                tolerance = int(self.params.stamp_tolerance * 1e9)
                return Status.STALE_FRAME, buffer.miss_reason(wanted, tolerance)
        return None

    def _on_service(self, request, response):
        done = threading.Event()
        box: list[Any] = []

        def on_answer(answer) -> None:
            box.append(answer)
            done.set()

        pending = self.submit(request.query, on_answer)
        if not done.wait(self.params.request_timeout):
            self._send(
                pending,
                failure_msg(
                    Status.ERROR,
                    f"no answer within request_timeout={self.params.request_timeout} s",
                    request.query.query_id,
                ),
            )
            done.wait(1.0)  # if the worker won the race, its answer is being delivered
        response.answer = box[0]
        return response

    def _execute_goal(self, goal_handle):
        """Answer a batch: submit `batch_size` queries at a time, feedback after each answer."""
        queries = list(goal_handle.request.queries)
        with self._goals_lock:
            busy = self._goals >= self.params.max_goals
            if not busy:
                self._goals += 1
        if busy:
            return self._overloaded_goal(goal_handle, queries)
        try:
            return self._answer_goal(goal_handle, queries)
        finally:
            with self._goals_lock:
                self._goals -= 1

    def _overloaded_goal(self, goal_handle, queries):
        """OVERLOADED for every query of a goal that came while max_goals goals were running."""
        why = (
            f"{self.params.max_goals} action goals are being answered (parameter max_goals); "
            "retry later"
        )
        self.stats.receive(len(queries))
        answers = []
        for query in queries:
            answer = failure_msg(Status.OVERLOADED, why, query.query_id, model_id=self._model_id())
            self.stats.record(answer)
            answers.append(answer)
        goal_handle.succeed()
        return AskSpatialAction.Result(answers=answers)

    def _answer_goal(self, goal_handle, queries):
        answers: list[Any] = [None] * len(queries)
        events = [threading.Event() for _ in queries]
        pendings: list[Pending | None] = [None] * len(queries)
        deadline = time.monotonic() + self.params.request_timeout
        chunk = max(1, self.params.batch_size)

        def collector(i: int):
            def on_answer(answer) -> None:
                answers[i] = answer
                events[i].set()

            return on_answer

        answered, stopped = 0, False
        for start in range(0, len(queries), chunk):
            if stopped or goal_handle.is_cancel_requested:
                break
            for i in range(start, min(start + chunk, len(queries))):
                pendings[i] = self.submit(queries[i], collector(i))
            for i in range(start, min(start + chunk, len(queries))):
                while not events[i].wait(0.02):
                    if goal_handle.is_cancel_requested or time.monotonic() > deadline:
                        break
                if not events[i].is_set():
                    stopped = True
                    break
                answered += 1
                feedback = AskSpatialAction.Feedback(
                    answer=answers[i], answered=answered, total=len(queries)
                )
                goal_handle.publish_feedback(feedback)
        cancelled = goal_handle.is_cancel_requested
        if cancelled:
            status, why = Status.CANCELLED, "the goal was cancelled before this query was answered"
        else:
            status, why = (
                Status.ERROR,
                (f"no answer within request_timeout={self.params.request_timeout} s"),
            )
        for i, query in enumerate(queries):
            if events[i].is_set():
                continue
            failure = failure_msg(status, why, query.query_id)
            if pendings[i] is None:
                answers[i] = failure  # never submitted
            elif not self._send(pendings[i], failure):
                events[i].wait(1.0)  # the worker answered just now; its answer is on the way
        if cancelled:
            goal_handle.canceled()
        else:
            goal_handle.succeed()
        return AskSpatialAction.Result(answers=answers)

    # ---- answering ---------------------------------------------------------------------------

    def _send(self, pending: Pending, answer) -> bool:
        """Answer `pending` unless it already was; True if this answer was the one sent."""
        if pending.reply(answer):
            self.stats.record(answer)
            return True
        return False

    def _model_id(self) -> str:
        engine = self.engine
        return engine.model_id if engine is not None else ""

    def _work(self) -> None:
        params = self.params
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            batch = [first]
            until = time.perf_counter() + params.max_batch_wait
            while len(batch) < params.batch_size:
                remaining = until - time.perf_counter()
                try:
                    batch.append(
                        self.queue.get(timeout=remaining)
                        if remaining > 0
                        else self.queue.get_nowait()
                    )
                except queue.Empty:
                    break
            try:
                self._answer_batch(batch)
            except Exception as err:  # the worker must survive anything and still answer
                self.get_logger().error(f"batch failed: {err!r}")
                for pending in batch:
                    self._send(pending, failure_msg(Status.ERROR, f"internal error: {err}", ""))

    def _answer_batch(self, batch: list[Pending]) -> None:
        decoded: dict[tuple, tuple[np.ndarray, Any]] = {}
        ready: list[tuple[Pending, Any]] = []
        for pending in batch:
            try:
                ready.append((pending, self._to_query(pending, decoded)))
            except ImageConversionError as err:
                self._send(
                    pending,
                    failure_msg(Status.BAD_IMAGE, f"cannot use {err}", "", pending.header),
                )
        if not ready:
            return
        with self.engine_lock:
            engine = self.engine
            if engine is None or not self.active:
                for pending, _ in ready:
                    self._send(
                        pending,
                        failure_msg(
                            Status.MODEL_NOT_READY, "no model is loaded", "", pending.header
                        ),
                    )
                return
            try:
                answers = engine.answer([q for _, q in ready])
            except Exception as err:
                self.get_logger().error(f"engine failed: {err!r}")
                for pending, _ in ready:
                    self._send(
                        pending,
                        failure_msg(
                            Status.ERROR,
                            f"the engine failed: {err}",
                            "",
                            pending.header,
                            engine.model_id,
                        ),
                    )
                return
        if len(answers) != len(ready):
            raise RuntimeError(f"the engine gave {len(answers)} answers to {len(ready)} queries")
        for (pending, query), answer in zip(ready, answers, strict=True):
            msg = answer_to_msg(answer, pending.msg.query_id, pending.header)
            if not msg.model_id:
                msg.model_id = engine.model_id
            self._send(pending, msg)
            if pending.frames and msg.status == Status.OK:
                self._annotate(query.images[0], pending, msg)
                self._publish_markers(msg)

    def _to_query(self, pending: Pending, decoded: dict):
        """The core Query of a pending query; ImageConversionError names the image at fault."""
        msg = pending.msg
        if msg.images:
            images = []
            for k, image in enumerate(msg.images):
                try:
                    images.append(to_rgb8(image))
                except ImageConversionError as err:
                    raise ImageConversionError(f"inline image #{k}: {err}") from err
            return query_from_msg(msg, images)
        frame, buffer = pending.frames[0], pending.buffer
        key = (buffer.name, frame.stamp)
        if key not in decoded:
            decoded[key] = _decode_frame(buffer, frame)
        image, depth = decoded[key]
        return query_from_msg(msg, [image], [depth], [key], [_camera_k(frame)])

    def _annotate(self, image: np.ndarray, pending: Pending, answer) -> None:
        pub = self.annotated_pub
        if pub is None or pub.get_subscription_count() == 0:
            return  # drawing costs a few ms per answer; skip it when nobody looks
        from PIL import Image as PILImage
        from PIL import ImageDraw

        pil = PILImage.fromarray(np.ascontiguousarray(image))
        draw = ImageDraw.Draw(pil)
        lines = [
            pending.msg.question[:80],
            f"{answer.answer}  (p={answer.probability:.2f}, {answer.latency_total_ms:.0f} ms)",
        ]
        for obj in answer.objects:  # the question's objects: box and phrase
            x0, y0, x1, y1 = (float(v) for v in obj.box)
            box = [x0 * pil.width, y0 * pil.height, x1 * pil.width, y1 * pil.height]
            draw.rectangle(box, outline=(0, 255, 0), width=2)
            label = obj.phrase + (f" {obj.position.z:.2f} m" if obj.depth_used else "")
            draw.text((box[0] + 2, max(box[1] - 12, 0)), label, fill=(0, 255, 0))
        height = 14 * len(lines) + 6
        draw.rectangle([0, 0, pil.width, height], fill=(0, 0, 0))
        for row, text in enumerate(lines):
            draw.text((4, 3 + 14 * row), text, fill=(255, 255, 0) if row else (255, 255, 255))
        pub.publish(numpy_to_imgmsg(np.asarray(pil), "rgb8", header=pending.header))

    def _publish_markers(self, answer) -> None:
        pub = self.markers_pub
        if pub is None or pub.get_subscription_count() == 0:
            return
        markers = markers_msg(answer)
        if markers is not None:
            pub.publish(markers)

    # ---- runtime model switch ----------------------------------------------------------------

    def _on_set_parameters(self, changes) -> SetParametersResult:
        wanted = {p.name: p.value for p in changes if p.name in ("model", "lora")}
        if not wanted or self.engine is None:
            return SetParametersResult(successful=True)
        model = wanted.get("model", self.params.model)
        lora = wanted.get("lora", self.params.lora)
        with self.engine_lock:
            try:
                self.engine.load(model, adapter=lora or None)
            except Exception as err:
                reason = f"cannot switch to model {model!r} lora {lora!r}: {err}"
                self.get_logger().error(reason)
                return SetParametersResult(successful=False, reason=reason)
            self.params.model, self.params.lora = model, lora
        self.get_logger().info(f"switched to model {self.engine.model_id!r}")
        return SetParametersResult(successful=True)

    # ---- diagnostics -------------------------------------------------------------------------

    def diagnostics(self) -> DiagnosticStatus:
        """The node's health as one DiagnosticStatus."""
        with self.stats.lock:
            latency = sorted(self.stats.latency)
            model_latency = sorted(self.stats.model_latency)
            by_status = dict(self.stats.by_status)
            answered = self.stats.answered
            received = self.stats.received

        def pct(values, q):
            return f"{values[min(len(values) - 1, int(q * len(values)))]:.2f}" if values else "nan"

        values = {
            "model_id": self._model_id(),
            "active": str(self.active),
            "queue_depth": str(self.queue.qsize()),
            "queue_size": str(self.params.queue_size),
            "received": str(received),
            "answered": str(answered),
            "latency_p50_ms": pct(latency, 0.5),
            "latency_p95_ms": pct(latency, 0.95),
            "model_latency_p50_ms": pct(model_latency, 0.5),
            "frames_preencoded": str(self.preencoded),
        }
        for status in Status:
            values[f"status_{status.name.lower()}"] = str(by_status.get(int(status), 0))
        for topic, buffer in list(self.buffers.items()):
            count, oldest, newest = buffer.coverage()
            values[f"frames_received {topic}"] = str(buffer.received)
            values[f"frames_dropped {topic}"] = str(buffer.dropped)
            values[f"frames_buffered {topic}"] = f"{count} ({(newest - oldest) / 1e9:.3f} s)"
        if self.finalized:
            level, message = DiagnosticStatus.ERROR, "shut down (finalized)"
        elif self.engine is None:
            level, message = DiagnosticStatus.ERROR, self.last_error or "no model loaded"
        elif not self.active:
            level, message = DiagnosticStatus.WARN, "configured, not active"
        elif self.queue.full():
            level, message = DiagnosticStatus.WARN, "request queue full"
        else:
            level, message = DiagnosticStatus.OK, "serving"
        return DiagnosticStatus(
            level=level,
            name=f"{self.get_name()}: VSRE server",
            message=message,
            hardware_id=self._model_id(),
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )

    def publish_diagnostics(self) -> None:
        msg = DiagnosticArray(status=[self.diagnostics()])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def intake_qos(depth: int) -> QoSProfile:
    """Reliable QoS for the query topic: KEEP_ALL when `depth` is 0, else KEEP_LAST `depth`."""
    if depth == 0:
        # KEEP_ALL: DDS holds what the executor has not taken yet (Fast DDS: up to 5000 samples)
        # and flow-controls a faster sender, instead of overwriting unread queries.
        return QoSProfile(
            history=HistoryPolicy.KEEP_ALL, depth=1, reliability=ReliabilityPolicy.RELIABLE
        )
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def _decode_frame(buffer: FrameBuffer, frame: Frame) -> tuple[np.ndarray, np.ndarray | None]:
    """A camera frame's RGB image and its depth in metres (None without one);
    ImageConversionError names the image at fault."""
    at = f"stamp {frame.stamp / 1e9:.3f} s"
    try:
        image = to_rgb8(frame.image)
    except ImageConversionError as err:
        raise ImageConversionError(f"the frame of camera {buffer.name} ({at}): {err}") from err
    if frame.depth is None:
        return image, None
    try:
        return image, _depth_metres(frame.depth)
    except ImageConversionError as err:
        raise ImageConversionError(
            f"the depth image of camera {buffer.name} (topic {buffer.depth_topic}, {at}): {err}"
        ) from err


def _camera_k(frame: Frame) -> np.ndarray | None:
    """The 3x3 K of the frame's CameraInfo, or None without one."""
    return np.asarray(frame.info.k, dtype=float) if frame.info is not None else None


def _depth_metres(msg) -> np.ndarray:
    """A depth image as float32 metres (32FC1 as is; 16UC1/mono16 millimetres, REP 118)."""
    if msg.encoding not in ("32FC1", "16UC1", "mono16"):
        raise ImageConversionError(
            f"encoding {msg.encoding!r}; depth must be 32FC1 (metres) or 16UC1 (millimetres)"
        )
    depth = imgmsg_to_numpy(msg)
    if msg.encoding != "32FC1":
        depth = depth.astype(np.float32) / 1000.0
    return depth


def executor_threads(params) -> int:
    """Threads for the executor, so that blocked callbacks never take them all.

    A service call waits on its thread while its query is queued or in the engine (queue_size
    + batch_size at most; OVERLOADED answers return at once), and each running action goal holds
    one (max_goals); four more keep the topic intake, timers and lifecycle services going.
    """
    return params.queue_size + params.batch_size + params.max_goals + 4


# ---- the `vsre serve` sub-command and the vsre_server console script ------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="", help="override the `model` parameter")
    parser.add_argument(
        "--no-activate",
        action="store_true",
        help="stay unconfigured; a lifecycle manager configures and activates the node",
    )
    server_params.add_ros_cli_arguments(parser)


SHUTDOWN_GRACE_S = 0.5  # after lifecycle shutdown: time for the change_state response to leave


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C, SIGTERM or lifecycle shutdown; a failed configure keeps serving."""
    rclpy.init(args=None)
    try:
        node = VsreServer(cli_args=server_params.ros_cli_args(args, model=args.model))
    except BaseException:
        rclpy.try_shutdown()
        raise
    executor = MultiThreadedExecutor(num_threads=executor_threads(node.params))
    if not args.no_activate:
        if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        else:
            node.get_logger().error(
                f"configure failed: {node.last_error}. The node stays up: queries get "
                "MODEL_NOT_READY with this reason and /diagnostics shows it; fix the parameters "
                f"and configure again (ros2 lifecycle set {node.get_fully_qualified_name()} "
                "configure)"
            )
    # Spin until lifecycle shutdown (plus a grace for the transition's reply), Ctrl-C or SIGTERM.
    # spin_until_future_complete without a timeout waits on the wait set alone; a spin_once loop
    # with a timeout would build a timer for every callback it runs.
    finished = Future()
    node.on_finalized = lambda: threading.Timer(
        SHUTDOWN_GRACE_S, lambda: finished.set_result(True)
    ).start()
    executor.add_node(node)
    try:
        executor.spin_until_future_complete(finished)
    except KeyboardInterrupt:
        pass
    finally:
        bringup.shutdown_executor(executor)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console script `vsre_server`."""
    parser = argparse.ArgumentParser(prog="vsre_server", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
