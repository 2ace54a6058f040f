"""Frame buffers: picking frames by stamp, depth pairing, drop estimate (no DDS)."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from vsre_ros.ros.frames import FrameBuffer, stamp_ns

MS = 1_000_000


def _msg(ms: int, frame_id: str = "cam") -> Image:
    msg = Image()
    msg.header.stamp = Time(sec=ms // 1000, nanosec=(ms % 1000) * MS)
    msg.header.frame_id = frame_id
    return msg


def test_latest_and_nearest_pick_by_stamp_within_the_buffer():
    buffer = FrameBuffer("/cam", length=3)
    assert buffer.latest() is None and buffer.nearest(0) is None
    for ms in (100, 200, 300, 400):
        buffer.add_image(_msg(ms))
    assert len(buffer) == 3  # 100 fell out
    assert buffer.latest().stamp == 400 * MS
    assert buffer.nearest(240 * MS).stamp == 200 * MS
    assert buffer.nearest(0).stamp == 200 * MS
    assert buffer.frame_id == "cam"


def test_depth_pairs_with_the_nearest_stamp_within_tolerance():
    buffer = FrameBuffer("/cam", length=5, depth_tolerance_ns=20 * MS)
    buffer.add_image(_msg(100))
    buffer.add_image(_msg(200))
    buffer.add_depth(_msg(105))
    assert stamp_ns(buffer.nearest(100 * MS).depth.header.stamp) == 105 * MS
    assert buffer.nearest(200 * MS).depth is None  # 95 ms away: not this frame's depth
    info = object()
    buffer.set_info(info)
    assert buffer.latest().info is info


def test_drop_estimate_counts_missing_periods_only():
    buffer = FrameBuffer("/cam", length=10)
    for ms in range(0, 1000, 100):  # steady 10 Hz
        buffer.add_image(_msg(ms))
    assert buffer.dropped == 0
    buffer.add_image(_msg(1030))  # 30 ms late: jitter, not a drop
    assert buffer.dropped == 0
    buffer.add_image(_msg(1430))  # 1130, 1230 and 1330 missing
    assert buffer.dropped == 3
    assert buffer.received == 12


def test_frames_out_of_order_are_kept_in_stamp_order_and_evicted_oldest_first():
    buffer = FrameBuffer("/cam", length=3)
    for ms in (100, 300, 200, 400):  # a reentrant callback group may deliver 300 before 200
        buffer.add_image(_msg(ms))
    assert buffer.coverage() == (3, 200 * MS, 400 * MS)
    assert buffer.dropped == 0 and buffer.evicted == 1


def test_miss_reason_says_whether_the_frame_left_the_buffer_or_has_not_come():
    buffer = FrameBuffer("/cam", length=3)
    for ms in (1000, 1100, 1200, 1300):
        buffer.add_image(_msg(ms))
    old = buffer.miss_reason(900 * MS, 50 * MS)
    assert "0.200 s older than the oldest frame held" in old
    assert "last 3 frames (frame_buffer), 0.200 s" in old and "raise frame_buffer" in old
    assert "has not arrived" in buffer.miss_reason(1500 * MS, 50 * MS)
    assert "the nearest frame is 0.050 s away" in buffer.miss_reason(1150 * MS, 20 * MS)
