"""Per-camera buffers of recent frames, picked by stamp; messages are kept as received.

A subscription callback only appends the message (no decoding), so a 30 Hz camera costs the
executor almost nothing; the worker converts the one frame a query needs. Stamps are integer
nanoseconds. Frame drops are estimated from gaps in the stamps (ROS 2 headers carry no sequence
number): a gap of 1.8 typical periods or more counts the frames that should have been in it
(an estimate: a publisher with jittery timing makes it count a few too many).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time as integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass
class Frame:
    """One received image (Image or CompressedImage), with its depth and camera info if any."""

    stamp: int  # header stamp, ns
    image: Any  # sensor_msgs/Image or CompressedImage, as received
    depth: Any = None  # sensor_msgs/Image (32FC1 or 16UC1 millimetres) nearest in time, or None
    info: Any = None  # latest sensor_msgs/CameraInfo at the time of the lookup, or None


class FrameBuffer:
    """The last `length` frames of one camera (thread-safe)."""

    def __init__(self, name: str, length: int, depth_tolerance_ns: int = 50_000_000):
        self.name = name  # the camera's image topic
        self.frame_id = ""  # header.frame_id of the latest frame
        self._frames: deque[Frame] = deque(maxlen=length)
        self._depth: deque[tuple[int, Any]] = deque(maxlen=length)
        self._info = None
        self._lock = threading.Lock()
        self._period_ns = 0.0
        self.depth_tolerance_ns = depth_tolerance_ns
        self.received = 0  # frames received
        self.dropped = 0  # frames missing from the stamp sequence (estimate)

    def add_image(self, msg) -> None:
        stamp = stamp_ns(msg.header.stamp)
        with self._lock:
            if self._frames:
                gap = stamp - self._frames[-1].stamp
                if gap > 0:
                    if self._period_ns and gap >= 1.8 * self._period_ns:
                        self.dropped += max(0, round(gap / self._period_ns) - 1)
                    else:
                        # A slow moving average of the normal period; gaps do not feed it.
                        self._period_ns = (
                            gap if not self._period_ns else (0.9 * self._period_ns + 0.1 * gap)
                        )
            self._frames.append(Frame(stamp, msg))
            self.frame_id = msg.header.frame_id
            self.received += 1

    def add_depth(self, msg) -> None:
        with self._lock:
            self._depth.append((stamp_ns(msg.header.stamp), msg))

    def set_info(self, msg) -> None:
        with self._lock:
            self._info = msg

    def __len__(self) -> int:
        return len(self._frames)

    def latest(self) -> Frame | None:
        with self._lock:
            if not self._frames:
                return None
            return self._complete(self._frames[-1])

    def nearest(self, stamp: int) -> Frame | None:
        """The buffered frame whose stamp is nearest to `stamp` (ns)."""
        with self._lock:
            if not self._frames:
                return None
            best = min(self._frames, key=lambda f: abs(f.stamp - stamp))
            return self._complete(best)

    def _complete(self, frame: Frame) -> Frame:
        depth = None
        if self._depth:
            stamp, msg = min(self._depth, key=lambda d: abs(d[0] - frame.stamp))
            if abs(stamp - frame.stamp) <= self.depth_tolerance_ns:
                depth = msg
        return Frame(frame.stamp, frame.image, depth, self._info)
