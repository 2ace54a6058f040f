"""Bags written directly with `rosbags` (not the project's recorder), in both storage formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

MSG_DIR = Path(__file__).resolve().parents[2] / "msg"
SEC = 1_000_000_000


@pytest.fixture(scope="session")
def store():
    """A Kilted typestore that knows the vsre_ros messages, parsed here from the .msg text."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for path in MSG_DIR.glob("*.msg"):
        types.update(get_types_from_msg(path.read_text(), f"vsre_ros/msg/{path.stem}"))
    typestore.register(types)
    return typestore


class BagBuilder:
    """Collects (topic, type, log time, message) and writes them as one rosbag2 bag."""

    def __init__(self, store):
        self.store = store
        self.entries: list[tuple[str, str, int, object]] = []

    def t(self, name):
        return self.store.types[name]

    def stamp(self, ns: int):
        return self.t("builtin_interfaces/msg/Time")(sec=ns // SEC, nanosec=ns % SEC)

    def header(self, ns: int, frame_id: str = "cam"):
        return self.t("std_msgs/msg/Header")(stamp=self.stamp(ns), frame_id=frame_id)

    def image(self, pixels: np.ndarray, ns: int, encoding="rgb8", pad=0, frame_id="cam"):
        height, width = pixels.shape[:2]
        row = pixels.reshape(height, -1).view(np.uint8)
        step = row.shape[1] + pad
        data = np.zeros((height, step), np.uint8)
        data[:, : row.shape[1]] = row
        return self.t("sensor_msgs/msg/Image")(
            header=self.header(ns, frame_id),
            height=height,
            width=width,
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=data.reshape(-1),
        )

    def query(self, query_id, ns=0, camera="", kind=0, options=(), images=(), **structured):
        return self.t("vsre_ros/msg/SpatialQuery")(
            query_id=query_id,
            question=structured.pop("question", f"question {query_id}?"),
            subj=structured.get("subj", ""),
            relation=structured.get("relation", ""),
            obj=structured.get("obj", ""),
            answer_kind=kind,
            options=list(options),
            camera=camera,
            stamp=self.stamp(ns),
            max_age=0.0,
            images=list(images),
        )

    def answer(self, query_id, frame_ns=0, verdict=True, status=0, text="yes", frame_id="cam"):
        return self.t("vsre_ros/msg/SpatialAnswer")(
            header=self.header(frame_ns, frame_id),
            query_id=query_id,
            status=status,
            error="",
            answer=text,
            verdict=verdict,
            probability=0.9,
            choice_index=-1,
            value=float("nan"),
            unit="",
            source=0,
            objects=[],
            model_id="tiny",
            latency_total_ms=1.0,
            latency_model_ms=1.0,
        )

    def correction(
        self, query_id, ns, verdict=False, choice_index=-1, value=float("nan"), answer=""
    ):
        return self.t("vsre_ros/msg/SpatialCorrection")(
            header=self.header(ns, ""),
            query_id=query_id,
            answer=answer,
            verdict=verdict,
            choice_index=choice_index,
            value=value,
            unit="m" if value == value else "",
            source="operator",
        )

    def truth(self, scene_id, ns, text):
        return self.t("vsre_ros/msg/SceneTruth")(
            header=self.header(ns), scene_id=scene_id, json=text
        )

    def add(self, topic: str, log_ns: int, msg) -> None:
        self.entries.append((topic, msg.__msgtype__, log_ns, msg))

    def write(self, path: Path, storage: str = "mcap", compress: bool = False) -> Path:
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        writer = Writer(path, version=9, storage_plugin=plugin)
        if compress:
            writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        with writer:
            connections = {}
            for topic, msgtype, log_ns, msg in sorted(self.entries, key=lambda e: e[2]):
                if topic not in connections:
                    connections[topic] = writer.add_connection(
                        topic, msgtype, typestore=self.store
                    )
                writer.write(connections[topic], log_ns, self.store.serialize_cdr(msg, msgtype))
        return path


@pytest.fixture
def builder(store):
    return BagBuilder(store)
