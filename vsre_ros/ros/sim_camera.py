"""A camera that films simulated scenes: RGB, depth, camera_info and the ground truth.

Scenes come from `vsre_ros.sim_data` (MuJoCo, the same generator as the training data: scene i
of a seed is always the same). Each frame publishes, with one stamp:
- `image_topic`: sensor_msgs/Image rgb8;
- `depth_topic`: sensor_msgs/Image 32FC1, metres along the optical axis;
- `info_topic`: sensor_msgs/CameraInfo (K from the renderer in CameraInfo's pixel-centre
  convention, `sim_data.render.pixel_centre_K`; no distortion);
- `truth_topic`: vsre_ros/SceneTruth, the scene file as JSON plus `"questions"`: the generated
  questions about this view with their known answers (dataset item format), so a client can
  ask them and check the answers.

Rendering runs in one thread that owns the GL context (EGL contexts belong to one thread) and
renders the next scene while the current one is halfway shown: not at the change of scene,
when clients ask about the new one (in `vsre demo`, rendering in the same process took the
CPU the server needed for its answers). The timer only publishes.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
from dataclasses import dataclass

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from vsre_ros.msg import SceneTruth
from vsre_ros.ros import bringup
from vsre_ros.ros import params as node_params
from vsre_ros.ros.conversions import numpy_to_imgmsg

NODE_NAME = "vsre_sim_camera"


@dataclass
class SimFrame:
    """One scene as the camera sees it (view 0)."""

    scene_id: str  # the generator's scene id ("<seed>-<index>")
    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32 metres
    K: np.ndarray  # 3x3 intrinsics
    truth: dict  # the scene file (sim_data schema) plus "questions" for this view


class SceneSource:
    """Renders scene 0, 1, 2, ... of a seed in a background thread, each when asked for
    (`ask`; the first at once)."""

    def __init__(
        self, seed: int, width: int, height: int, max_scenes: int = 0, data_version: int = 1
    ):
        from vsre_ros.sim_data.dataset import GenConfig  # raises on an unknown data version

        self.config = GenConfig(seed=seed, width=width, height=height, data_version=data_version)
        self.max_scenes = max_scenes
        self._ready: queue.Queue[SimFrame | BaseException | None] = queue.Queue(maxsize=2)
        self._asked = threading.Semaphore(1)  # scenes asked for and not yet rendered
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vsre-sim-render", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            from vsre_ros.sim_data.dataset import build_scene
            from vsre_ros.sim_data.render import Simulator

            with Simulator(self.config.width, self.config.height) as sim:
                index = 0
                while not self._stop.is_set():
                    if not self._asked.acquire(timeout=0.1):
                        continue
                    if self.max_scenes and index >= self.max_scenes:
                        self._put(None)
                        return
                    self._put(self._frame(build_scene(sim, self.config, index)))
                    index += 1
        except BaseException as err:  # report in the node, not as a dead thread
            self._put(err)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    @staticmethod
    def _frame(result) -> SimFrame:
        render = result.renders[0]
        truth = dict(result.truth)
        truth["questions"] = result.view_items(0)
        return SimFrame(
            result.scene.scene_id, render.rgb, render.depth.astype(np.float32), render.K, truth
        )

    def ask(self) -> None:
        """Render one more scene."""
        self._asked.release()

    def next(self, timeout: float) -> SimFrame | None:
        """The next scene; None when max_scenes are done. Raises what the renderer raised."""
        item = self._ready.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise RuntimeError(f"scene rendering failed: {item}") from item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def camera_info(K: np.ndarray, width: int, height: int, header: Header) -> CameraInfo:
    """A distortion-free CameraInfo for the renderer's intrinsics K (converted to
    CameraInfo's convention: integer pixel coordinates are pixel centres)."""
    from vsre_ros.sim_data.render import pixel_centre_K  # loads MuJoCo: only when rendering

    K = pixel_centre_K(K)
    info = CameraInfo(header=header, width=width, height=height, distortion_model="plumb_bob")
    info.k = [float(v) for v in np.asarray(K, dtype=float).reshape(9)]
    info.d = [0.0] * 5
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    p = np.zeros((3, 4))
    p[:, :3] = K
    info.p = [float(v) for v in p.reshape(12)]
    return info


class SimCameraNode(Node):
    """Publishes sim_data scenes as a camera (see the module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        node_params.declare(self, node_params.SimCameraParams)
        self.params = p = node_params.read(self, node_params.SimCameraParams)
        qos = qos_profile_sensor_data if p.qos == "sensor_data" else QoSProfile(depth=10)
        self.image_pub = self.create_publisher(Image, p.image_topic, qos)
        self.depth_pub = self.create_publisher(Image, p.depth_topic, qos)
        self.info_pub = self.create_publisher(CameraInfo, p.info_topic, qos)
        self.truth_pub = self.create_publisher(SceneTruth, p.truth_topic, QoSProfile(depth=10))
        self.source = SceneSource(p.seed, p.width, p.height, p.max_scenes, p.data_version)
        self.current: SimFrame | None = None
        self._truth_json = ""
        self.frames_in_scene = 0
        self.scenes = 0  # scenes shown so far
        self.frames_published = 0  # frames published so far
        self.finished = False  # True once max_scenes were all shown
        self.create_timer(1.0 / p.rate, self.tick)

    def tick(self) -> None:
        if self.finished:
            return
        if self.current is None or self.frames_in_scene >= self.params.frames_per_scene:
            try:
                frame = self.source.next(timeout=0.0 if self.current is not None else 30.0)
            except queue.Empty:
                frame = self.current  # the renderer is behind: show the old scene a bit longer
            if frame is None:
                self.finished = True
                self.get_logger().info(f"published all {self.scenes} scenes")
                return
            if frame is not self.current:
                self.current, self.frames_in_scene = frame, 0
                self._truth_json = json.dumps(frame.truth)
                self.scenes += 1
        self.publish(self.current)
        self.frames_in_scene += 1
        self.frames_published += 1
        if self.frames_in_scene == max(1, self.params.frames_per_scene // 2):
            self.source.ask()  # the next scene renders while this one is halfway shown

    def publish(self, frame: SimFrame) -> None:
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params.frame_id)
        self.image_pub.publish(numpy_to_imgmsg(frame.rgb, "rgb8", header=header))
        self.depth_pub.publish(numpy_to_imgmsg(frame.depth, "32FC1", header=header))
        height, width = frame.rgb.shape[:2]
        self.info_pub.publish(camera_info(frame.K, width, height, header))
        self.truth_pub.publish(
            SceneTruth(header=header, scene_id=frame.scene_id, json=self._truth_json)
        )

    def destroy_node(self) -> None:
        self.source.close()
        super().destroy_node()


# ---- the `vsre sim-camera` sub-command and the vsre_sim_camera console script ----------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    node_params.add_ros_cli_arguments(parser)


def run(args: argparse.Namespace) -> int:
    rclpy.init()
    node = SimCameraNode(cli_args=node_params.ros_cli_args(args))
    bringup.spin_alone(node, SingleThreadedExecutor(), until=lambda: node.finished)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console script `vsre_sim_camera`."""
    parser = argparse.ArgumentParser(prog="vsre_sim_camera", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
