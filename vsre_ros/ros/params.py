"""Every ROS parameter of the package's nodes, declared in one place and mapped to core configs.

One dataclass per node lists its parameters (name = field name, default, and a `help` text that
becomes the parameter's description and the README table): `ServerParams` (the VSRE server),
`SimCameraParams` (the sim camera), `DemoClientParams` (the demo client). `declare(node, cls)`
declares a class's parameters on a node; `read(node, cls)` reads them back, validated.
`ServerParams.engine_config()` maps the model-side ones onto `vsre_ros.core.config.EngineConfig`.
The per-preset YAML files in `config/` set these names under each node's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vsre_ros.core.config import documented

QOS_CHOICES = (
    "sensor_data",
    "reliable",
)  # best effort + volatile (live drivers) | reliable (bags)
TRANSPORTS = ("raw", "compressed")  # sensor_msgs/Image | sensor_msgs/CompressedImage


_p = documented  # a parameter: its default and its description


@dataclass
class ServerParams:
    """The server node's parameters; each field is one ROS parameter of the same name."""

    model: str = _p("vsre-tiny", "model preset id or checkpoint directory to load")
    lora: str = _p("", "LoRA adapter directory applied on top of `model`; empty = none")
    engine_backend: str = _p("vsre", "engine registry id: vsre (the model) | stub (no model)")
    device: str = _p("auto", "torch device: auto (CUDA if present, else CPU), cpu, cuda, cuda:1")
    dtype: str = _p("auto", "weights dtype: auto, float32, bfloat16, float16")
    threads: int = _p(0, "torch intra-op threads; 0 keeps torch's default")
    cameras: list[str] = _p(
        ["/camera/image_raw"], "image topics, one per camera (queries name one by topic or frame)"
    )
    camera_transports: list[str] = _p(
        [], "per camera: raw (Image) or compressed (CompressedImage); empty = all raw"
    )
    depth_topics: list[str] = _p(
        [], "per camera: 32FC1/16UC1 depth image topic, '' for none; empty = no depth"
    )
    camera_info_topics: list[str] = _p(
        [], "per camera: sensor_msgs/CameraInfo topic, '' for none; empty = none"
    )
    camera_qos: list[str] = _p(
        ["sensor_data"],
        "per camera (or one value for all): sensor_data (best effort, live drivers) or "
        "reliable (bag replay, reliable publishers)",
    )
    frame_buffer: int = _p(
        60,
        "frames kept per camera, for picking a frame by stamp; at R Hz they reach back "
        "frame_buffer / R seconds (diagnostics: frames_buffered)",
    )
    max_frame_age: float = _p(1.0, "seconds: default oldest frame accepted (STALE_FRAME)")
    stamp_tolerance: float = _p(0.05, "seconds: max distance to a requested stamp")
    queue_size: int = _p(16, "queries waiting for the model; beyond this: OVERLOADED at once")
    batch_size: int = _p(8, "queries answered in one engine call")
    intake_depth: int = _p(
        0,
        "DDS history of the query topic subscription: 0 = KEEP_ALL (a burst waits in DDS, "
        "flow-controlled back to the sender, and every query that arrives is answered); "
        "N = KEEP_LAST N (queries beyond N unread are dropped by DDS, unanswered)",
    )
    service_depth: int = _p(
        10000,
        "QoS depth of the service and the action's services: requests waiting to be taken, "
        "responses on their way (KEEP_LAST: a backlog beyond it is dropped by DDS); memory is "
        "taken only by requests actually waiting",
    )
    answer_depth: int = _p(
        1000, "QoS depth of the answer topic and the action feedback publishers"
    )
    max_goals: int = _p(
        4, "action goals answered at once; the queries of further goals get OVERLOADED"
    )
    max_batch_wait: float = _p(
        0.0,
        "seconds the worker waits for more queries to fill a batch; 0 takes what is queued "
        "(queries queue up while the engine is busy, so batches form without waiting)",
    )
    preencode_hz: float = _p(
        0.0,
        "encode each camera's newest frame before it is asked about, while no query waits, "
        "frames about 1/preencode_hz s apart by their stamps; a question about it then costs "
        "what one about an encoded frame does. Each frame costs a new frame's model time "
        "(vsre-tiny: about 25 ms of one core). 0 = off",
    )
    max_question_chars: int = _p(2000, "longer questions get BAD_QUESTION")
    max_options: int = _p(64, "choice questions with more options get BAD_QUESTION")
    max_option_chars: int = _p(200, "longer options get BAD_QUESTION")
    max_images: int = _p(8, "more inline images than this get BAD_IMAGE")
    request_timeout: float = _p(60.0, "seconds a service/action call waits for its answer")
    query_topic: str = _p("vsre/queries", "SpatialQuery input topic")
    answer_topic: str = _p("vsre/answers", "SpatialAnswer output topic (answers to topic queries)")
    service_name: str = _p("vsre/ask", "AskSpatial service name")
    action_name: str = _p("vsre/ask_batch", "AskSpatial action name")
    annotated_topic: str = _p("vsre/annotated", "annotated image output; '' disables it")
    grounding: bool = _p(
        True, "name each answer's objects (box; 3D place with depth); false: no head time"
    )
    markers_topic: str = _p(
        "vsre/markers", "MarkerArray of the answers' objects measured in 3D; '' disables it"
    )
    diagnostics_period: float = _p(1.0, "seconds between /diagnostics messages; 0 disables")

    def camera_specs(self) -> list[CameraSpec]:
        """One CameraSpec per camera, with per-camera lists expanded and checked."""
        n = len(self.cameras)
        if n == 0:
            raise ValueError("parameter cameras is empty; give at least one image topic")

        def per_camera(name: str, values: list[str], default: str) -> list[str]:
            if not values:
                return [default] * n
            if len(values) == 1 and name == "camera_qos":
                return values * n
            if len(values) != n:
                raise ValueError(
                    f"parameter {name} has {len(values)} entries for {n} cameras; give one "
                    f"per camera (in the order of `cameras`) or leave it empty"
                )
            return list(values)

        transports = per_camera("camera_transports", self.camera_transports, "raw")
        qos = per_camera("camera_qos", self.camera_qos, "sensor_data")
        depth = per_camera("depth_topics", self.depth_topics, "")
        info = per_camera("camera_info_topics", self.camera_info_topics, "")
        for value in transports:
            if value not in TRANSPORTS:
                raise ValueError(f"unknown camera transport {value!r}; known: {TRANSPORTS}")
        for value in qos:
            if value not in QOS_CHOICES:
                raise ValueError(f"unknown camera_qos {value!r}; known: {QOS_CHOICES}")
        return [
            CameraSpec(topic, transport, q, d, i)
            for topic, transport, q, d, i in zip(
                self.cameras, transports, qos, depth, info, strict=True
            )
        ]

    def validate(self) -> None:
        """Raise ValueError naming the first bad parameter."""
        self.camera_specs()
        for name in (
            "frame_buffer",
            "queue_size",
            "batch_size",
            "max_question_chars",
            "max_options",
            "max_option_chars",
            "service_depth",
            "answer_depth",
            "max_goals",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.max_options < 2:
            raise ValueError(f"parameter max_options must be >= 2, got {self.max_options}")
        if self.intake_depth < 0:
            raise ValueError(
                f"parameter intake_depth must be >= 0 (0 = KEEP_ALL), got {self.intake_depth}"
            )
        for name in (
            "max_frame_age",
            "stamp_tolerance",
            "max_batch_wait",
            "request_timeout",
            "preencode_hz",
        ):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"parameter {name} must be a finite number >= 0, got {value}")
        if not self.model:
            raise ValueError("parameter model is empty; give a preset id or checkpoint directory")

    def engine_config(self):
        """The core EngineConfig these parameters ask for."""
        from vsre_ros.core.config import EngineConfig

        return EngineConfig(
            device=self.device,
            dtype=self.dtype,
            threads=self.threads,
            max_batch=self.batch_size,
            max_question_chars=self.max_question_chars,
            max_images=self.max_images,
            grounding=self.grounding,
        )


@dataclass(frozen=True)
class CameraSpec:
    """One camera's inputs, resolved from the per-camera parameter lists."""

    topic: str  # image topic
    transport: str  # raw | compressed
    qos: str  # sensor_data | reliable
    depth_topic: str  # depth image topic or ""
    info_topic: str  # CameraInfo topic or ""


@dataclass
class SimCameraParams:
    """The sim camera node's parameters."""

    seed: int = _p(0, "scene generator seed; scene i of seed s is always the same scene")
    data_version: int = _p(
        1,
        "scene generator data version (sim_data.dataset.DATA_VERSIONS): 1, the VSRE templates; "
        "2, real-scale scenes and the question grammar's wordings",
    )
    width: int = _p(160, "image width, pixels")
    height: int = _p(120, "image height, pixels")
    rate: float = _p(10.0, "frames per second")
    frames_per_scene: int = _p(20, "frames published of each scene before the next one")
    max_scenes: int = _p(0, "stop publishing after this many scenes; 0 = never stop")
    frame_id: str = _p("sim_camera_optical", "header.frame_id of every message")
    image_topic: str = _p("/sim_camera/image_raw", "sensor_msgs/Image (rgb8) output")
    depth_topic: str = _p("/sim_camera/depth", "sensor_msgs/Image (32FC1 metres) output")
    info_topic: str = _p("/sim_camera/camera_info", "sensor_msgs/CameraInfo output")
    truth_topic: str = _p("/sim_camera/truth", "vsre_ros/SceneTruth output (JSON, with questions)")
    qos: str = _p("reliable", "publisher QoS: reliable or sensor_data")

    def validate(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size {self.width}x{self.height}; use at least 16x16")
        if self.rate <= 0 or self.frames_per_scene < 1:
            raise ValueError("rate must be > 0 and frames_per_scene >= 1")
        if self.qos not in QOS_CHOICES:
            raise ValueError(f"unknown qos {self.qos!r}; known: {QOS_CHOICES}")


@dataclass
class DemoClientParams:
    """The demo client's parameters: which questions it asks, where, and how many."""

    truth_topic: str = _p("/sim_camera/truth", "SceneTruth input (frames' ground truth)")
    query_topic: str = _p("vsre/queries", "SpatialQuery output (the server's query_topic)")
    answer_topic: str = _p("vsre/answers", "SpatialAnswer input (the server's answer_topic)")
    camera: str = _p("", "camera the questions name; '' = the server's first camera")
    questions: int = _p(24, "questions to ask in all; the client finishes after their answers")
    per_scene: int = _p(3, "questions asked about each new scene")
    kinds: list[str] = _p(
        ["yes_no", "choice", "number"], "answer kinds asked: yes_no, choice, number"
    )
    seed: int = _p(0, "seed for picking questions")
    answer_timeout: float = _p(
        60.0, "seconds the client (vsre_ros.client) waits for an answer; then TIMEOUT"
    )

    def validate(self) -> None:
        if self.questions < 1 or self.per_scene < 1:
            raise ValueError("questions and per_scene must be >= 1")
        known = {"yes_no", "choice", "number"}
        if not self.kinds or set(self.kinds) - known:
            raise ValueError(f"kinds {self.kinds} must be a non-empty subset of {sorted(known)}")


def parameter_docs(cls: type = ServerParams) -> list[tuple[str, str, Any]]:
    """(name, help, default) of every parameter of `cls`, in order (README tables)."""
    return [(f.name, f.metadata["help"], getattr(cls(), f.name)) for f in dataclasses.fields(cls)]


def declare(node, cls: type = ServerParams) -> None:
    """Declare every field of `cls` as a parameter of `node`, with its help as description."""
    from rcl_interfaces.msg import ParameterDescriptor, ParameterType
    from rclpy.parameter import Parameter

    types = {
        str: ParameterType.PARAMETER_STRING,
        int: ParameterType.PARAMETER_INTEGER,
        float: ParameterType.PARAMETER_DOUBLE,
        bool: ParameterType.PARAMETER_BOOL,
    }
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if isinstance(value, list):
            kind = ParameterType.PARAMETER_STRING_ARRAY
            if not value:
                # rclpy types an empty list as a byte array; declare the type alone instead
                # (the parameter stays unset until given, and `read` treats unset as []).
                value = Parameter.Type.STRING_ARRAY
        else:
            kind = types[type(value)]
        descriptor = ParameterDescriptor(description=f.metadata["help"], type=kind)
        node.declare_parameter(f.name, value, descriptor)


def read(node, cls: type = ServerParams):
    """The node's current parameter values as a validated `cls` instance."""
    from rclpy.exceptions import ParameterUninitializedException

    values = {}
    for f in dataclasses.fields(cls):
        try:
            value = node.get_parameter(f.name).value
        except ParameterUninitializedException:
            value = []  # only the empty-default string arrays can be unset
        values[f.name] = list(value) if isinstance(value, (list, tuple)) else value
    params = cls(**values)
    params.validate()
    return params


# ---- command lines of the node executables -------------------------------------------------


def add_ros_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every node executable shares: a params YAML and raw ROS arguments."""
    parser.add_argument("--params-file", default="", help="ROS parameters YAML (config/*.yaml)")
    parser.add_argument(
        "--ros-args",
        dest="ros_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="everything after it goes to ROS (-p name:=value, -r remaps, --log-level ...)",
    )


def ros_cli_args(args: argparse.Namespace, **overrides: str) -> list[str]:
    """The node's `cli_args`: the params file, then `overrides` as -p, then raw ROS arguments.

    Empty override values are left out, so an unset command-line option keeps the YAML's value.
    """
    cli = ["--ros-args"] + (["--params-file", args.params_file] if args.params_file else [])
    for name, value in overrides.items():
        if value:
            cli += ["-p", f"{name}:={value}"]
    return cli + [a for a in args.ros_args if a != "--ros-args"]
