"""`SimCamera`: simulated frames with exact ground truth and questions whose answers are known.

The ROS sim camera node and the demo use this; it never imports rclpy.

    from vsre_ros.sim_data import SimCamera
    with SimCamera(seed=0, width=320, height=240) as cam:
        rgb, depth, K, truth, items = cam.next()

`rgb` is HxWx3 uint8, `depth` HxW float32 metres along the optical axis, `K` the 3x3 pinhole
intrinsics (OpenCV convention), `truth` the scene as a JSON-able dict (the dataset's scene
file: objects with 3D poses, sizes, mask ids; the render's camera pose, per-object 2D boxes and
visible fractions; surface distances), and `items` the questions about this frame in the
dataset's item format (question, answer, answer_kind, options, value/unit, relation, subj,
obj, label, task, ...). Frames are deterministic: frame i of seed s is always the same.

`render(scene)` renders and questions a given layout instead (a `Scene` or its dict), e.g. a
dataset scene re-rendered with new lighting or camera (`restyle`), for data expansion.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import numpy as np

from .dataset import GenConfig, SceneResult, build_scene, scene_truth
from .questions import QuestionConfig, QuestionMaker
from .render import Simulator
from .scene import Scene, View, _sample_appearance


@dataclass
class SimFrame:
    """One simulated camera frame; unpacks as (rgb, depth, K, truth, items)."""

    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32 metres
    K: np.ndarray  # 3x3 intrinsics
    truth: dict  # JSON-able scene ground truth
    items: list[dict]  # questions about this frame with their answers
    seg: np.ndarray  # HxW uint8 instance mask (0 background, k = mask_id of object k-1)
    scene_id: str  # "<seed>-<index>"

    def __iter__(self):
        return iter((self.rgb, self.depth, self.K, self.truth, self.items))


class SimCamera:
    """An endless, deterministic stream of simulated frames (one scene per frame)."""

    def __init__(
        self,
        seed: int = 0,
        width: int = 320,
        height: int = 240,
        questions: QuestionConfig | None = None,
        start: int = 0,
    ):
        self.config = GenConfig(
            seed=seed,
            width=width,
            height=height,
            multi_view_share=0.0,
            moved_share=0.0,
            questions=questions or QuestionConfig(),
        )
        self._sim = Simulator(width, height)
        self.index = start  # index of the next scene

    def close(self) -> None:
        self._sim.close()

    def __enter__(self) -> SimCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next(self) -> SimFrame:
        """The next frame."""
        frame = self.frame(self.index)
        self.index += 1
        return frame

    def frame(self, index: int) -> SimFrame:
        """Frame `index` of this camera's seed (random access)."""
        return _frame(build_scene(self._sim, self.config, index))

    def render(self, scene: Scene | dict, seed: int = 0) -> SimFrame:
        """Render and question a given layout (its first view); `seed` picks the questions."""
        if isinstance(scene, dict):
            scene = Scene.from_dict(scene)
        self._sim.load(scene)
        gaps = self._sim.gaps()
        renders = [self._sim.render(v) for v in scene.views]
        names = [f"{scene.scene_id}_v{k}" for k in range(len(renders))]
        rng = np.random.default_rng([seed, 1])
        maker = QuestionMaker(scene, renders, gaps, rng, seed, self.config.questions, names)
        items = maker.all_items()
        for k, it in enumerate(items):
            it["id"] = f"{scene.scene_id}-{k:03d}"
        truth = scene_truth(scene, renders, gaps, names)
        return _frame(SceneResult(0, scene, renders, truth, items, {}))


def _frame(result: SceneResult) -> SimFrame:
    r = result.renders[0]
    items = [it for it in result.items if len(it["images"]) == 1 and it["view"] == 0]
    return SimFrame(r.rgb, r.depth, r.K, result.truth, items, r.seg, result.scene.scene_id)


def restyle(
    scene: Scene, rng: np.random.Generator, camera_jitter: float = 0.05, angle_jitter: float = 8.0
) -> Scene:
    """A copy of `scene` with new lighting and textures and slightly moved cameras.

    The layout is untouched, so world-frame relations keep their labels; camera-frame ones
    must be decided again on the new render (which `SimCamera.render` does).
    """
    new = copy.deepcopy(scene)
    new.appearance = _sample_appearance(rng)
    views = []
    for v in new.views:
        look = tuple(float(x + rng.normal(0, camera_jitter)) for x in v.lookat[:2]) + (
            v.lookat[2],
        )
        views.append(
            View(
                look,
                float(v.distance * math.exp(rng.normal(0, 0.05))),
                float((v.azimuth + rng.normal(0, angle_jitter)) % 360),
                float(np.clip(v.elevation + rng.normal(0, angle_jitter / 2), -89, -5)),
                v.kind,
            )
        )
    return replace(new, views=views)
