"""MuJoCo offscreen rendering of scenes, with exact measurements.

One `Simulator` compiles ONE MuJoCo model per process and reuses it for every scene: the model
holds a pool of `MAX_OBJECTS` mocap bodies with `MAX_PARTS` geoms each, and a scene is shown by
rewriting those geoms' type, size, pose and colour (unused geoms go to a hidden geom group).
Recompiling XML per scene costs far more than rendering at small sizes (see bench/bench_sim.py).

A render of one view gives RGB (uint8 HxWx3), metric depth (float32 HxW, metres along the
optical axis), instance segmentation (uint8 HxW: 0 background, k = object index + 1), the
pinhole intrinsics K (OpenCV convention: u = fx x/z + cx with x right, y down, z forward) and
the camera pose (camera-to-world rotation and position). Per object: 2D box and pixel count of
its visible mask, its unoccluded pixel count (from one segmentation pass with only that object
shown) and so its visible fraction. Per scene: exact surface-to-surface distances between
objects (`mj_geomDistance`, capped at `GAP_CAP`).

Offscreen GL comes from `MUJOCO_GL` (egl here; osmesa is the software fallback). Call
`close()` (or use `with`) to free the GL context before the interpreter exits.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .catalog import BOX, COLOURS, LIT_RGBA
from .scene import MAX_OBJECTS, MAX_PARTS, Scene, View, yaw_quat

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco

N_SURFACE_MATERIALS = 5  # textures a surface can take (see _MATERIALS)
GAP_CAP = 1.0  # object distances at or beyond this many metres are reported as GAP_CAP
FOVY = 45.0  # vertical field of view, degrees
HIDDEN_GROUP, OBJECT_GROUP, SOLO_GROUP = 3, 1, 2

_MATERIALS = [
    '<texture name="tx0" type="2d" builtin="checker" rgb1=".9 .9 .9" rgb2=".55 .55 .55"'
    ' width="64" height="64"/><material name="m0" texture="tx0" texrepeat="6 6"/>',
    '<texture name="tx1" type="2d" builtin="flat" rgb1="1 1 1" width="8" height="8"/>'
    '<material name="m1" texture="tx1"/>',
    '<texture name="tx2" type="2d" builtin="gradient" rgb1=".95 .9 .8" rgb2=".5 .45 .4"'
    ' width="64" height="64"/><material name="m2" texture="tx2" texrepeat="3 3"/>',
    '<texture name="tx3" type="2d" builtin="checker" mark="edge" markrgb=".3 .3 .3"'
    ' rgb1=".85 .8 .7" rgb2=".85 .8 .7" width="64" height="64"/>'
    '<material name="m3" texture="tx3" texrepeat="8 8"/>',
    '<texture name="tx4" type="2d" builtin="flat" mark="random" random="0.05" rgb1=".8 .8 .8"'
    ' markrgb=".4 .4 .4" width="128" height="128"/><material name="m4" texture="tx4"'
    ' texrepeat="2 2"/>',
]


def _shadow_size(width: int, height: int) -> int:
    """Shadow map side: about 4x the image side, a power of two; small images need little."""
    side = 256
    while side < 4 * max(width, height) and side < 2048:
        side *= 2
    return side


def _model_xml(width: int, height: int) -> str:
    slots = []
    for k in range(MAX_OBJECTS):
        geoms = "".join(
            f'<geom name="s{k}_{p}" type="box" size=".01 .01 .01" group="{HIDDEN_GROUP}"'
            ' contype="0" conaffinity="0"/>'
            for p in range(MAX_PARTS)
        )
        slots.append(f'<body name="slot{k}" mocap="true" pos="0 0 -5">{geoms}</body>')
    legs = "".join(
        f'<geom name="leg{i}" type="box" size=".03 .03 .36" pos="{sx * 0.7} {sy * 0.55} -.39"'
        ' rgba=".35 .25 .15 1" contype="0" conaffinity="0"/>'
        for i, (sx, sy) in enumerate([(-1, -1), (-1, 1), (1, -1), (1, 1)])
    )
    return f"""<mujoco model="vsre_sim_pool">
  <statistic extent="2" center="0 0 0.2"/>
  <visual>
    <global offwidth="{width}" offheight="{height}" fovy="{FOVY}"/>
    <quality shadowsize="{_shadow_size(width, height)}"/>
    <map znear="0.01" zfar="5"/>
    <headlight ambient=".3 .3 .3" diffuse=".25 .25 .25" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1=".75 .8 .85" rgb2=".35 .4 .45"
      width="32" height="32"/>
    {"".join(_MATERIALS)}
  </asset>
  <worldbody>
    <light name="main" directional="true" pos="0 0 3" dir="0.3 0.2 -1" castshadow="true"
      diffuse=".7 .7 .7" specular=".1 .1 .1"/>
    <geom name="floor" type="plane" size="4 4 .1" pos="0 0 -0.75" material="m0"
      contype="0" conaffinity="0"/>
    <geom name="tabletop" type="box" size=".8 .62 .02" pos="0 0 -.02" material="m1"
      contype="0" conaffinity="0"/>
    {legs}
    {"".join(slots)}
  </worldbody>
</mujoco>"""


@dataclass
class ViewRender:
    """Everything measured in one rendered view."""

    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32, metres along the optical axis (far plane where empty)
    seg: np.ndarray  # HxW uint8, 0 background, k = object index + 1
    K: np.ndarray  # 3x3 intrinsics
    cam_rot: np.ndarray  # 3x3 camera-to-world rotation (columns: camera x right, y down, z fwd)
    cam_pos: np.ndarray  # camera position, world metres
    objects: list[dict]  # per object: bbox, pixels, visible fraction, camera-frame centre...

    def world_to_camera(self, p: np.ndarray) -> np.ndarray:
        return self.cam_rot.T @ (np.asarray(p, dtype=float) - self.cam_pos)

    def project(self, p: np.ndarray) -> np.ndarray:
        """Pixel coordinates (u, v) of a world point (continuous; pixel i spans [i, i+1))."""
        c = self.world_to_camera(p)
        uvw = self.K @ c
        return uvw[:2] / uvw[2]

    def camera_dict(self) -> dict:
        return {
            "K": self.K.tolist(),
            "cam_rot": self.cam_rot.tolist(),
            "cam_pos": self.cam_pos.tolist(),
            "width": int(self.rgb.shape[1]),
            "height": int(self.rgb.shape[0]),
            "convention": "opencv: x right, y down, z forward; cam_rot maps camera to world",
        }


class Simulator:
    """Renders scenes and measures them; one per process (owns a GL context)."""

    def __init__(self, width: int = 96, height: int = 96):
        if width < 16 or height < 16:
            raise ValueError(f"image size {width}x{height} is too small; use at least 16x16")
        self.width, self.height = int(width), int(height)
        self.model = mujoco.MjModel.from_xml_string(_model_xml(self.width, self.height))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._slot_geoms = np.array(
            [[m.geom(f"s{k}_{p}").id for p in range(MAX_PARTS)] for k in range(MAX_OBJECTS)]
        )
        # The pooled geoms compile at their body's origin, which MuJoCo marks as "same frame"
        # and then skips their offsets in kinematics; parts are offset, so clear the mark.
        m.geom_sameframe[self._slot_geoms.ravel()] = 0
        self._geom_obj = np.zeros(m.ngeom + 1, dtype=np.int32)  # geom id -> object index + 1
        self._floor = m.geom("floor").id
        self._table = [m.geom("tabletop").id] + [m.geom(f"leg{i}").id for i in range(4)]
        self._ctx = mujoco.GLContext(self.width, self.height)
        self._ctx.make_current()
        self._con = mujoco.MjrContext(m, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._con)
        self._scn = mujoco.MjvScene(m, maxgeom=200)
        self._opt = mujoco.MjvOption()
        self._pert = mujoco.MjvPerturb()
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        self._rect = mujoco.MjrRect(0, 0, self.width, self.height)
        self._rgb = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        self._depth = np.zeros((self.height, self.width), dtype=np.float32)
        self._n = 0
        self._closed = False
        extent = m.stat.extent
        self._near, self._far = m.vis.map.znear * extent, m.vis.map.zfar * extent

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Free the GL context; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._con.free()
            self._ctx.free()

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- scene setup ----------------------------------------------------------------------
    def load(self, scene: Scene) -> None:
        """Show `scene` in the pooled model (geoms, poses, colours, surface, lights)."""
        if len(scene.objects) > MAX_OBJECTS:
            raise ValueError(f"scene has {len(scene.objects)} objects; at most {MAX_OBJECTS}")
        m, d = self.model, self.data
        self._geom_obj[:] = 0
        for k in range(MAX_OBJECTS):
            ids = self._slot_geoms[k]
            if k >= len(scene.objects):
                m.geom_group[ids] = HIDDEN_GROUP
                d.mocap_pos[k] = (0, 0, -5)
                continue
            obj = scene.objects[k]
            if len(obj.shape.parts) > MAX_PARTS:
                raise ValueError(f"{obj.name} has more than {MAX_PARTS} parts")
            d.mocap_pos[k] = obj.pos
            d.mocap_quat[k] = yaw_quat(obj.yaw)
            rgba = (*COLOURS[obj.colour], 1.0)
            for p, gid in enumerate(ids):
                if p >= len(obj.shape.parts):
                    m.geom_group[gid] = HIDDEN_GROUP
                    m.geom_type[gid] = BOX
                    m.geom_size[gid] = (0.001, 0.001, 0.001)
                    m.geom_rbound[gid] = 0.002
                    m.geom_aabb[gid] = (0, 0, 0, 0.001, 0.001, 0.001)
                    continue
                part = obj.shape.parts[p]
                m.geom_group[gid] = OBJECT_GROUP
                m.geom_type[gid] = part.type
                m.geom_size[gid] = part.size
                m.geom_pos[gid] = part.pos
                m.geom_quat[gid] = part.quat
                m.geom_rgba[gid] = LIT_RGBA if part.lit else rgba
                m.geom_rbound[gid] = _rbound(part.type, part.size)
                half = _geom_half(part.type, part.size)
                m.geom_aabb[gid] = (0, 0, 0, *half)
                self._geom_obj[gid + 1] = k + 1
        app = scene.appearance
        table = app.surface == "table"
        m.geom_pos[self._floor][2] = -0.75 if table else 0.0
        m.geom_group[self._table] = 0 if table else HIDDEN_GROUP
        top = self._table[0] if table else self._floor
        m.geom_matid[top] = app.surface_material
        m.mat_rgba[app.surface_material] = app.surface_rgba
        if table:
            m.geom_matid[self._floor] = app.floor_material
        direction = np.array(app.light_dir, dtype=float)
        m.light_dir[0] = direction / np.linalg.norm(direction)
        m.light_pos[0] = -2.0 * m.light_dir[0]
        m.light_diffuse[0] = (app.light_diffuse,) * 3
        m.light_castshadow[0] = bool(app.shadows)
        m.vis.headlight.ambient[:] = (app.ambient,) * 3
        mujoco.mj_kinematics(m, d)
        self._scene = scene

    def gaps(self) -> np.ndarray:
        """Surface-to-surface distance between every pair of objects, metres (<= GAP_CAP)."""
        n = len(self._scene.objects)
        out = np.zeros((n, n))
        m, d = self.model, self.data
        parts = [self._slot_geoms[k][: len(self._scene.objects[k].shape.parts)] for k in range(n)]
        for i in range(n):
            for j in range(i + 1, n):
                best = GAP_CAP
                for gi in parts[i]:
                    for gj in parts[j]:
                        best = min(
                            best, mujoco.mj_geomDistance(m, d, int(gi), int(gj), GAP_CAP, None)
                        )
                out[i, j] = out[j, i] = max(best, 0.0)
        return out

    # -- rendering ------------------------------------------------------------------------
    def _set_camera(self, view: View) -> None:
        self._cam.lookat[:] = view.lookat
        self._cam.distance = view.distance
        self._cam.azimuth = view.azimuth
        self._cam.elevation = view.elevation

    def _draw(self, segment: bool, groups: tuple[int, ...]) -> None:
        self._opt.geomgroup[:] = 0
        for g in groups:
            self._opt.geomgroup[g] = 1
        flags = self._scn.flags
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = segment
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = segment
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = not segment
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = not segment
        mujoco.mjv_updateScene(
            self.model,
            self.data,
            self._opt,
            self._pert,
            self._cam,
            mujoco.mjtCatBit.mjCAT_ALL,
            self._scn,
        )
        mujoco.mjr_render(self._rect, self._scn, self._con)

    def _read_seg(self) -> np.ndarray:
        mujoco.mjr_readPixels(self._rgb, None, self._rect, self._con)
        ids = (
            self._rgb[..., 0].astype(np.int32)
            + (self._rgb[..., 1].astype(np.int32) << 8)
            + (self._rgb[..., 2].astype(np.int32) << 16)
        )
        lut = np.zeros(self._scn.ngeom + 1, dtype=np.uint8)
        for s in range(self._scn.ngeom):
            g = self._scn.geoms[s]
            if g.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lut[s + 1] = self._geom_obj[g.objid + 1]
        return lut[np.clip(ids, 0, self._scn.ngeom)][::-1].copy()

    def render(self, view: View, amodal: bool = True) -> ViewRender:
        """Render one view of the loaded scene and measure every object in it."""
        self._ctx.make_current()
        self._set_camera(view)
        self._draw(False, (0, OBJECT_GROUP))
        mujoco.mjr_readPixels(self._rgb, self._depth, self._rect, self._con)
        rgb = self._rgb[::-1].copy()
        z = self._depth[::-1]
        depth = (self._near / (1.0 - z * (1.0 - self._near / self._far))).astype(np.float32)
        # The scene holds a left and a right eye; the mono image is rendered from their average.
        cam = mujoco.mjv_averageCamera(self._scn.camera[0], self._scn.camera[1])
        forward = np.array(cam.forward, dtype=float)
        up = np.array(cam.up, dtype=float)
        right = np.cross(forward, up)
        cam_rot = np.stack([right, -up, forward], axis=1)
        cam_pos = np.array(cam.pos, dtype=float)
        f = 0.5 * self.height / math.tan(math.radians(FOVY) / 2)
        K = np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1.0]])
        self._draw(True, (0, OBJECT_GROUP))
        seg = self._read_seg()
        out = ViewRender(rgb, depth, seg, K, cam_rot, cam_pos, [])
        counts = np.bincount(seg.ravel(), minlength=MAX_OBJECTS + 1)
        for k, obj in enumerate(self._scene.objects):
            visible = int(counts[k + 1])
            if amodal:
                full = self._solo_pixels(k)
            else:
                full = visible
            ys, xs = np.nonzero(seg == k + 1) if visible else (np.array([]), np.array([]))
            bbox = (
                [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                if visible
                else None
            )
            centre = obj.center()
            cc = out.world_to_camera(centre)
            uv = out.project(centre) if cc[2] > 1e-6 else np.array([math.nan, math.nan])
            out.objects.append(
                {
                    "bbox": bbox,
                    "pixels": visible,
                    "amodal_pixels": int(full),
                    "visible_fraction": float(visible / full) if full else 0.0,
                    "center_cam": [float(v) for v in cc],
                    "center_px": [float(v) for v in uv],
                }
            )
        self._n += 1
        return out

    def _solo_pixels(self, k: int) -> int:
        ids = self._slot_geoms[k][: len(self._scene.objects[k].shape.parts)]
        self.model.geom_group[ids] = SOLO_GROUP
        try:
            self._draw(True, (SOLO_GROUP,))
            mujoco.mjr_readPixels(self._rgb, None, self._rect, self._con)
            return int(np.count_nonzero(self._rgb.any(axis=2)))
        finally:
            self.model.geom_group[ids] = OBJECT_GROUP


def pixel_centre_K(K: np.ndarray) -> np.ndarray:
    """The renderer's K (pixel i spans [i, i + 1)) in CameraInfo's convention, where integer
    coordinates are pixel centres: the principal point moves half a pixel up and left."""
    out = np.array(K, dtype=float)
    out[0, 2] -= 0.5
    out[1, 2] -= 0.5
    return out


def _geom_half(t: int, s) -> tuple[float, float, float]:
    if t == BOX:
        return (s[0], s[1], s[2])
    if t == mujoco.mjtGeom.mjGEOM_SPHERE:
        return (s[0], s[0], s[0])
    if t == mujoco.mjtGeom.mjGEOM_CYLINDER:
        return (s[0], s[0], s[1])
    return (s[0], s[0], s[1] + s[0])  # capsule


def _rbound(t: int, s) -> float:
    return float(np.linalg.norm(_geom_half(t, s))) if t != mujoco.mjtGeom.mjGEOM_SPHERE else s[0]
