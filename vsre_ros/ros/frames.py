"""Per-camera buffers of recent frames, picked by stamp; messages are kept as received.

A subscription callback only appends the message (no decoding), so a 30 Hz camera costs the
executor almost nothing; the worker converts the one frame a query needs. Stamps are integer
nanoseconds. A buffer keeps the last `length` frames in stamp order (callbacks of a reentrant
group may deliver frames out of order). Frame drops are estimated from gaps in the stamps (ROS 2
headers carry no sequence number): a gap of 1.8 typical periods or more counts the frames that
should have been in it (an estimate: a publisher with jittery timing makes it count a few too
many).

Why a query by stamp can miss a frame that was never dropped: the buffer reaches back only
`length` frames, which is a time that depends on the camera's rate (the old default of 10
frames: 1 s at 10 Hz, 0.33 s at 30 Hz). A frame asked about a second after it was published
had already left the buffer, and the answer said only that the nearest frame was too far from
the stamp. `coverage()` and `miss_reason()` say which frames are held and why a stamp found
none; the server reports the buffer's span in seconds in /diagnostics.
"""

from __future__ import annotations

import bisect
import threading
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
    """The recent frames of one camera (thread-safe)."""

    def __init__(self, name: str, length: int, depth_tolerance_ns: int = 50_000_000):
        self.name = name  # the camera's image topic
        self.depth_topic = ""  # its depth topic, if any (named in error messages)
        self.frame_id = ""  # header.frame_id of the latest frame
        self.length = length  # most frames kept
        self._frames: list[Frame] = []  # sorted by stamp
        self._depth: list[tuple[int, Any]] = []  # sorted by stamp
        self._info = None
        self._lock = threading.Lock()
        self._period_ns = 0.0
        self.depth_tolerance_ns = depth_tolerance_ns
        self.received = 0  # frames received
        self.dropped = 0  # frames missing from the stamp sequence (estimate)
        self.evicted = 0  # frames that left the buffer by age or count

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
            stamps = [f.stamp for f in self._frames]
            self._frames.insert(bisect.bisect_right(stamps, stamp), Frame(stamp, msg))
            self.evicted += self._trim(self._frames)
            self.frame_id = msg.header.frame_id
            self.received += 1

    def add_depth(self, msg) -> None:
        stamp = stamp_ns(msg.header.stamp)
        with self._lock:
            stamps = [d[0] for d in self._depth]
            self._depth.insert(bisect.bisect_right(stamps, stamp), (stamp, msg))
            self._trim(self._depth)

    def _trim(self, items: list) -> int:
        """Drop the oldest items beyond `length`; how many were dropped."""
        cut = max(0, len(items) - self.length)
        del items[:cut]
        return cut

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

    def coverage(self) -> tuple[int, int, int]:
        """(frames held, oldest stamp, newest stamp); stamps 0 when empty."""
        with self._lock:
            if not self._frames:
                return 0, 0, 0
            return len(self._frames), self._frames[0].stamp, self._frames[-1].stamp

    def miss_reason(self, stamp: int, tolerance_ns: int) -> str:
        """Why no buffered frame lies within `tolerance_ns` of `stamp` (for STALE_FRAME)."""
        count, oldest, newest = self.coverage()
        head = (
            f"no frame of camera {self.name} within {tolerance_ns / 1e9:.3f} s (stamp_tolerance) "
            f"of the requested stamp {stamp / 1e9:.3f} s: "
        )
        if count == 0:
            return head + "no frame is buffered"
        if stamp < oldest:
            return head + (
                f"it is {(oldest - stamp) / 1e9:.3f} s older than the oldest frame held. The "
                f"buffer keeps the last {self.length} frames (frame_buffer), "
                f"{(newest - oldest) / 1e9:.3f} s at this camera's rate, so that frame has left "
                "it (or never came); ask sooner or raise frame_buffer"
            )
        if stamp > newest:
            return head + (
                f"it is {(stamp - newest) / 1e9:.3f} s newer than the newest frame received; "
                "that frame has not arrived (yet)"
            )
        with self._lock:
            gap = min(abs(f.stamp - stamp) for f in self._frames)
        return head + f"the nearest frame is {gap / 1e9:.3f} s away"

    def _complete(self, frame: Frame) -> Frame:
        depth = None
        if self._depth:
            stamp, msg = min(self._depth, key=lambda d: abs(d[0] - frame.stamp))
            if abs(stamp - frame.stamp) <= self.depth_tolerance_ns:
                depth = msg
        return Frame(frame.stamp, frame.image, depth, self._info)
