"""Metric geometry of grounded objects: 2D boxes + a depth image + K -> 3D places and sizes.

Pure numpy, no model and no ROS. The camera's optical frame is REP 103's `_optical` frame
(OpenCV's pinhole model): x right, y down, z forward, metres. As in CameraInfo, integer pixel
coordinates are pixel centres: the pixel in column u, row v with depth z (metres along the
optical axis) back-projects to ((u - cx) z / fx, (v - cy) z / fy, z).

How an object's place is measured (`locate`), for a box that may hold background too:

1. the support surface (a table top or the floor) is the plane fitted (RANSAC, then least
   squares on its inliers) to the frame's points, once per frame (`FrameGeometry`);
2. the object's pixels are those of the box (grown by `SEARCH_MARGIN`: a grounded box may be a
   little small; a depth image of 480 rows or more is read at every n-th pixel,
   `GEOMETRY_SIDE`) standing at least `ABOVE_PLANE` above it (without a plane: all of them), cut
   apart where depth jumps or, with the colour image, where colour jumps (two objects touching
   at one depth); the connected piece covering most of the box's centre, with its neighbours
   near its depth, is the object: an occluder in front and background behind drop out. Given
   the object's mask, its pixels are the mask's in the box that lie near the mask's median
   depth (a mask's edge pixels may see past the object). The box they span is the object's
   box as measured;
3. with a plane, the object stands on it, or on another object when its lowest visible point
   is clearly above the plane (and, when its visible heights hardly spread, a surface at that
   height is seen around it: else it is a top seen from above, standing on the plane): its
   height runs from there to its highest point, its footprint is the least-area rectangle
   around its points seen from above, and its centre is the footprint's centre, half way up.
   Without one, the centre and the extent are those of its points' bounding box.

What a metric question asks is measured the way the simulator's questions define it
(`sim_data.questions.metric_items`): the distance between two objects' centres, an object's
centre's distance from the camera, its larger horizontal side and its vertical extent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

ABOVE_PLANE = 0.008  # metres: a pixel this far above the support plane belongs to an object
DEPTH_WINDOW = 0.35  # metres: an object's pixels lie at most this close in depth to its
MIN_DEPTH_WINDOW = 0.05  # centre's, and at least this close (else as deep as the box is wide)
STACKED = 0.02  # metres: an object whose lowest visible point is higher (and higher than
STACKED_PIXELS = 3  # this many pixels' height at its depth) stands on another...
SPREAD = 0.3  # ... when its visible heights span this share of its top's height (not a top
# seen from straight above)
MIN_PIXELS = 3  # fewer valid pixels in a box: no 3D place
GEOMETRY_SIDE = 240  # a depth image n times this size (its shorter side) is read at every n-th
# pixel (a 640x480 camera's at every 2nd: 320x240)
SEARCH_MARGIN = 0.15  # a grounded box is searched grown by this share of its size per side
JUMP = 0.03  # a depth step of this share of the depth between neighbours separates surfaces
COLOUR_JUMP = 40  # a step of this many levels (0..255) in a channel between neighbours too
PLANE_TOLERANCE = 0.006  # metres: RANSAC inlier distance
PLANE_MIN_SHARE = 0.2  # a plane must hold this share of the points outside the boxes
PLANE_ITERATIONS = 48  # RANSAC hypotheses (seeded: the same frame gives the same plane)
PLANE_SAMPLE = 1500  # at most this many points are used to fit the plane
FOOTPRINT_POINTS = 800  # at most about this many points find an object's footprint
BOX_TRIM = 2.0  # percent of a box's object points left out at each side of its footprint
# ... and of a mask's: fewer, as its pixels hold fewer strays, and a footprint's far side is
# seen by few pixels (a top at a grazing angle) while its near side is dense (its front face)
MASK_TRIM = 1.0
RING = 2  # pixels: the surfaces this close around an object's pixels may be what it stands on
RING_TOLERANCE = 0.02  # metres: such a surface is at its lowest points' height within this
RING_SHARE = 0.3  # ... for at least this share of the pixels around it


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera: focal lengths and principal point in pixels (CameraInfo's K)."""

    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_matrix(cls, k) -> Intrinsics:
        """From a 3x3 matrix or CameraInfo's row-major 9-vector; raises ValueError if unusable."""
        m = np.asarray(k, dtype=float).reshape(-1)
        if m.size != 9:
            raise ValueError(f"K must have 9 entries (3x3), got {m.size}")
        m = m.reshape(3, 3)
        if not np.all(np.isfinite(m)) or m[0, 0] <= 0 or m[1, 1] <= 0:
            raise ValueError(f"K has no positive finite focal lengths: fx={m[0, 0]}, fy={m[1, 1]}")
        return cls(float(m[0, 0]), float(m[1, 1]), float(m[0, 2]), float(m[1, 2]))

    def scaled(self, sx: float, sy: float) -> Intrinsics:
        """The same camera for an image resized by (sx, sy)."""
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)


def back_project(depth: np.ndarray, k: Intrinsics, us=None, vs=None) -> np.ndarray:
    """Points [N, 3] in the optical frame of pixels (us, vs) (default: every pixel, row by
    row) of a depth image in metres; pixels without a finite positive depth give NaN rows."""
    h, w = depth.shape
    if us is None:
        vs, us = np.mgrid[0:h, 0:w]
    us, vs = np.asarray(us).ravel(), np.asarray(vs).ravel()
    z = depth[vs, us].astype(np.float64)
    z = np.where(np.isfinite(z) & (z > 0), z, np.nan)
    x = (us - k.cx) * z / k.fx
    y = (vs - k.cy) * z / k.fy
    return np.stack([x, y, z], axis=1)


def project(points: np.ndarray, k: Intrinsics) -> np.ndarray:
    """Pixel coordinates [N, 2] (continuous) of optical-frame points [N, 3]."""
    p = np.asarray(points, dtype=float).reshape(-1, 3)
    return np.stack([k.fx * p[:, 0] / p[:, 2] + k.cx, k.fy * p[:, 1] / p[:, 2] + k.cy], axis=1)


def depth_metres(depth: np.ndarray) -> np.ndarray:
    """A depth image as float32 metres: uint16 is millimetres (REP 118), floats are metres;
    zeros and non-finite values stay invalid (NaN)."""
    arr = np.asarray(depth)
    if arr.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 1000.0
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
    else:
        raise ValueError(f"depth must be float metres or uint16 millimetres, got {arr.dtype}")
    return np.where(np.isfinite(out) & (out > 0), out, np.nan).astype(np.float32)


def _metres(depth: np.ndarray) -> np.ndarray:
    """`depth_metres` without marking invalid pixels (`back_project` does, pixel by pixel): a
    float32 image in metres is used as it is, without a copy of the whole frame."""
    arr = np.asarray(depth)
    if arr.ndim == 2 and arr.dtype == np.float32:
        return arr
    if arr.ndim == 2 and arr.dtype == np.uint16:
        return arr * np.float32(0.001)
    return depth_metres(arr)


@dataclass
class Plane:
    """n . p + d = 0 with unit normal n pointing towards the camera (the surface's up)."""

    normal: np.ndarray
    offset: float

    def height(self, points: np.ndarray) -> np.ndarray:
        return points @ self.normal + self.offset


@dataclass
class Located:
    """An object's measured place: centre and extent in the optical frame, and its sizes."""

    centre: np.ndarray  # [3] metres, optical frame
    extent: np.ndarray  # [3] metres: its points' bounding box along the optical axes
    width: float  # larger horizontal side (footprint), metres; NaN when unknown
    height: float  # vertical extent, metres; NaN when unknown
    pixels: int  # depth pixels it was measured from
    box: tuple[float, float, float, float]  # normalised box of those pixels in the image


def fit_plane(points: np.ndarray, seed: int = 0) -> Plane | None:
    """The dominant plane of points [N, 3] (RANSAC, refined by least squares), its normal
    turned towards the camera (origin); None when no plane holds `PLANE_MIN_SHARE`."""
    pts = points[np.all(np.isfinite(points), axis=1)]
    if len(pts) < 30:
        return None
    rng = np.random.default_rng(seed)
    if len(pts) > PLANE_SAMPLE:
        pts = pts[rng.choice(len(pts), PLANE_SAMPLE, replace=False)]
    # Every hypothesis at once: the planes through PLANE_ITERATIONS random triples of points.
    a, b, c = (pts[rng.integers(len(pts), size=PLANE_ITERATIONS)] for _ in range(3))
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    valid = norms > 1e-9
    if not valid.any():
        return None
    normals, a = normals[valid] / norms[valid, None], a[valid]
    counts = (np.abs(pts @ normals.T - (a * normals).sum(1)) < PLANE_TOLERANCE).sum(0)
    best = int(np.argmax(counts))
    if counts[best] < PLANE_MIN_SHARE * len(pts):
        return None
    n, a = normals[best], a[best]
    inliers = pts[np.abs((pts - a) @ n) < PLANE_TOLERANCE]
    mean = inliers.mean(0)
    normal = np.linalg.svd(inliers - mean, full_matrices=False)[2][-1]
    offset = -float(normal @ mean)
    if offset < 0:  # the camera (origin) is above the surface: n . 0 + d > 0
        normal, offset = -normal, -offset
    return Plane(normal, offset)


def support_plane(depth: np.ndarray, k: Intrinsics) -> Plane | None:
    """The support surface: the dominant plane of the frame's points (`fit_plane`) from
    PLANE_SAMPLE pixels spread evenly over the frame (the same frame gives the same plane)."""
    h, w = depth.shape
    pick = np.linspace(0, h * w - 1, min(PLANE_SAMPLE, h * w)).astype(np.int64)
    return fit_plane(back_project(depth, k, pick % w, pick // w))


def _pixel_box(box, w: int, h: int) -> tuple[int, int, int, int]:
    """A normalised [x0, y0, x1, y1] box as pixel bounds, at least one pixel wide."""
    x0 = int(np.clip(math.floor(box[0] * w), 0, w - 1))
    y0 = int(np.clip(math.floor(box[1] * h), 0, h - 1))
    x1 = int(np.clip(math.ceil(box[2] * w), x0 + 1, w))
    y1 = int(np.clip(math.ceil(box[3] * h), y0 + 1, h))
    return x0, y0, x1, y1


def locate(
    box,
    depth: np.ndarray,
    k: Intrinsics,
    plane: Plane | None = None,
    mask=None,
    rgb: np.ndarray | None = None,
) -> Located | None:
    """The 3D place of the object in normalised box `box` (see the module docstring); `mask`
    (bool, covering the whole frame at any size: the depth's, or a grounding head's own; read
    at the depth's pixels by the nearest one), when known, gives its pixels instead (those of
    the box, near the mask's depth: `_mask_pixels`); `rgb` (HxWx3, the depth's size), when
    given, also separates surfaces where colour jumps. None when too few pixels have depth."""
    h, w = depth.shape
    x0, y0, x1, y1 = _pixel_box(box, w, h)
    # A large frame is read at every n-th pixel: its objects span many more pixels than their
    # places and sizes need (and a grounding head's mask has far fewer).
    n = max(1, min(h, w) // GEOMETRY_SIDE)
    vs, us = np.mgrid[y0:y1:n, x0:x1:n]
    pts = back_project(depth, k, us, vs).reshape(*us.shape, 3)
    valid = np.all(np.isfinite(pts), axis=2)
    grid = k.scaled(1 / n, 1 / n)  # the camera of the pixels read: its focal lengths in them
    if mask is not None:
        inside = _nearest(np.asarray(mask, dtype=bool), (h, w), slice(y0, y1, n), slice(x0, x1, n))
        ok = _mask_pixels(pts, valid & inside, grid)
    else:
        colour = rgb[y0:y1:n, x0:x1:n] if rgb is not None else None
        ok = _object_pixels(pts, valid, grid, plane, colour)
    if ok.sum() < MIN_PIXELS:
        return None
    rows, cols = np.nonzero(ok)
    seen = (
        (x0 + n * cols.min()) / w,
        (y0 + n * rows.min()) / h,
        min(x0 + n * (cols.max() + 1), x1) / w,
        min(y0 + n * (rows.max() + 1), y1) / h,
    )
    if plane is None:
        lo, hi = percentiles(pts[ok], (2, 98))
        return Located((lo + hi) / 2, hi - lo, float(hi[0] - lo[0]), math.nan, int(ok.sum()), seen)
    from scipy import ndimage

    # The surfaces right around the object (what it may stand on), as heights over the plane.
    around = ndimage.binary_dilation(ok, iterations=RING) & ~ok & valid
    trim = MASK_TRIM if mask is not None else BOX_TRIM
    return _on_plane(pts[ok], plane.height(pts[around]), k, plane, trim, seen)


def _on_plane(
    pts: np.ndarray, around: np.ndarray, k: Intrinsics, plane: Plane, trim: float, seen
) -> Located:
    """The place of an object of points `pts` [N, 3] standing on `plane` (or on another
    object): `around` are the heights of the surfaces seen right around it; its footprint's
    rectangle leaves out `trim` percent of its points at each side."""
    heights = plane.height(pts)
    # x, y, z and the height over the plane: 2nd and 98th percentiles, and medians.
    (lo, bottom), (hi, top), (mid, _) = (
        (v[:3], float(v[3])) for v in percentiles(np.c_[pts, heights], (2, 98, 50))
    )
    # The lowest pixels that are seen may stand a few pixels' height above the plane.
    floor = max(STACKED, STACKED_PIXELS * float(mid[2]) / k.fy)
    # A flat thing high over the plane is a top seen from above (standing on the plane) unless
    # a surface at its lowest points' height is seen around it: what it lies on.
    supported = len(around) > 0 and (
        np.mean(np.abs(around - bottom) < max(floor, RING_TOLERANCE)) >= RING_SHARE
    )
    if bottom < floor or (top - bottom < SPREAD * top and not supported):
        bottom = 0.0  # it stands on the support surface
    # The footprint: points dropped onto the plane, in a 2D basis of the plane.
    e1 = np.cross(plane.normal, [0.0, 0.0, 1.0])
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.cross(plane.normal, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(plane.normal, e1)
    # The footprint from at most FOOTPRINT_POINTS of its points, evenly spread over them.
    step = max(1, len(pts) // FOOTPRINT_POINTS)
    flat = np.stack([pts[::step] @ e1, pts[::step] @ e2], axis=1)
    centre2, sides = _min_area_rectangle(flat, trim)
    foot = centre2[0] * e1 + centre2[1] * e2
    on_plane = foot - (foot @ plane.normal + plane.offset) * plane.normal
    centre = on_plane + plane.normal * (top + bottom) / 2
    return Located(centre, hi - lo, float(max(sides)), top - bottom, len(pts), seen)


def _mask_pixels(pts: np.ndarray, ok: np.ndarray, k: Intrinsics) -> np.ndarray:
    """A mask's pixels (`ok`, of points [h, w, 3]) near its median depth, within the depth an
    object as wide or tall as the mask may span (as `_object_pixels`): a mask's edge pixels may
    see what is behind or in front of the object (the mask and the depth disagree there)."""
    if ok.sum() < MIN_PIXELS:
        return ok
    z = pts[..., 2]
    ref = float(percentiles(z[ok], (50,))[0])
    rows, cols = np.nonzero(ok)
    size = max((np.ptp(cols) + 1) / k.fx, (np.ptp(rows) + 1) / k.fy) * ref
    window = min(max(size, MIN_DEPTH_WINDOW), DEPTH_WINDOW)
    return ok & (np.abs(np.nan_to_num(z, nan=np.inf) - ref) <= window)


def _object_pixels(
    pts: np.ndarray,
    ok: np.ndarray,
    k: Intrinsics,
    plane: Plane | None,
    rgb=None,
) -> np.ndarray:
    """Which of a box's pixels (points [h, w, 3], `ok` those with depth) are its object's: above
    the plane, cut apart where depth (or the colour `rgb` [h, w, 3], when given) jumps, the
    connected piece holding most of the box's centre, and near that piece's depth."""
    from scipy import ndimage

    z = np.where(ok, pts[..., 2], np.nan)
    if plane is not None:
        ok = ok & (plane.height(np.nan_to_num(pts)) > ABOVE_PLANE)
    if ok.sum() < MIN_PIXELS:
        return ok
    # A depth jump between neighbours larger than JUMP of the depth separates two surfaces.
    jump = np.zeros_like(ok)
    with np.errstate(invalid="ignore"):
        dx = np.abs(np.diff(z, axis=1)) > JUMP * z[:, 1:]
        dy = np.abs(np.diff(z, axis=0)) > JUMP * z[1:, :]
    if rgb is not None:  # two objects touching at one depth: the colour changes
        c = rgb.astype(np.int16)
        dx |= np.abs(np.diff(c, axis=1)).max(-1) > COLOUR_JUMP
        dy |= np.abs(np.diff(c, axis=0)).max(-1) > COLOUR_JUMP
    jump[:, 1:] |= dx
    jump[1:, :] |= dy
    labels, n = ndimage.label(ok & ~jump)
    h, w = ok.shape
    centre = np.zeros_like(ok)
    centre[h // 4 : h - h // 4 or None, w // 4 : w - w // 4 or None] = True
    if n:
        counts = np.bincount(labels[centre & (labels > 0)], minlength=n + 1)
        if counts[1:].max(initial=0) == 0:
            counts = np.bincount(labels[labels > 0], minlength=n + 1)
        piece = labels == int(counts[1:].argmax() + 1)
    else:
        piece = ok
    ref = float(percentiles(z[piece], (50,))[0])
    # An object is about as deep as the box is wide or tall, at its depth.
    size = max(w / k.fx, h / k.fy) * ref
    window = min(max(size, MIN_DEPTH_WINDOW), DEPTH_WINDOW)
    near = ok & (np.abs(np.nan_to_num(z, nan=np.inf) - ref) <= window)
    # The piece, plus the box's pixels near its depth that a jump cut off (its edge pixels).
    grown = ndimage.binary_dilation(piece, iterations=1) & near
    return piece | grown


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """`np.percentile(values, qs, axis=0)` (its default, linear method) without its overhead,
    about 0.2 ms a call, which is most of its cost on an object's few hundred points."""
    n = len(values)
    at = np.asarray(qs, dtype=float) / 100 * (n - 1)
    below = np.floor(at).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    part = np.partition(values, np.unique(np.r_[below, above]), axis=0)
    t = (at - below).reshape(-1, *([1] * (values.ndim - 1)))
    a, b = part[below], part[above]
    # numpy's lerp: from the nearer end, so that t = 0 and t = 1 give the values themselves
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)


def _min_area_rectangle(points: np.ndarray, trim: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Centre [2] and sides [2] of the least-area rectangle around 2D points (robust to `trim`
    percent of outliers per side), searched over rotations in 3-degree steps (all at once)."""
    angles = np.radians(np.arange(0, 90, 3))
    c, s = np.cos(angles), np.sin(angles)
    axes = np.stack([np.stack([c, s], 0), np.stack([-s, c], 0)], 2)  # [2, A, 2]: u, v axes
    proj = points @ axes.reshape(2, -1)  # [N, A * 2]
    lo, hi = percentiles(proj, (trim, 100 - trim)).reshape(2, len(angles), 2)
    sides = hi - lo
    best = int(np.argmin(sides.prod(-1)))
    mid = (lo[best] + hi[best]) / 2
    return axes[:, best, :] @ mid, sides[best]


class FrameGeometry:
    """One depth frame, read once: its depth in metres, the camera scaled to it and its support
    plane; `locate` places an object's box in it."""

    def __init__(
        self,
        depth: np.ndarray,
        k: Intrinsics,
        image_shape: tuple[int, int] | None,
        image: np.ndarray | None = None,
    ):
        """`k` is the camera of an image of `image_shape` (H, W); a depth image of another size
        (registered to it) gets K scaled to its own size. `image` (HxWx3, registered to the
        depth), when given, helps tell touching objects apart. Raises ValueError for an
        unusable depth image."""
        self.depth = _metres(depth)
        h, w = self.depth.shape
        if image_shape is not None and tuple(image_shape) != (h, w):
            k = k.scaled(w / image_shape[1], h / image_shape[0])
        self.k = k
        self._image = image
        self._rgb: np.ndarray | None = None
        # The plane of the whole frame: the objects are too few of its points to hold a plane
        # (PLANE_MIN_SHARE), and every object of the frame is placed against the same plane.
        self.plane = support_plane(self.depth, k)

    @property
    def rgb(self) -> np.ndarray | None:
        """The colour image at the depth's size (the nearest pixel), made when first read:
        only a box without a mask reads it (`_object_pixels`)."""
        if self._rgb is None and self._image is not None:
            self._rgb = _nearest(self._image, self.depth.shape)
        return self._rgb

    def locate(self, box, mask=None) -> Located | None:
        """The place of the object in normalised `box` (searched grown by SEARCH_MARGIN);
        `mask` (bool, covering the whole frame at any size: the image's, or a grounding head's
        own), when given, holds the object's pixels (see `locate`)."""
        rgb = self.rgb if mask is None else None
        return locate(widened(box, SEARCH_MARGIN), self.depth, self.k, self.plane, mask, rgb)


def _nearest(image: np.ndarray, shape: tuple[int, int], rows=None, cols=None) -> np.ndarray:
    """Rows `rows` and columns `cols` (slices; default all) of `image` resized to `shape`
    (H, W) by the nearest pixel; `image` itself when it has that size already."""
    h, w = shape
    if image.shape[:2] == (h, w) and rows is None and cols is None:
        return image
    ys = np.arange(h)[rows or slice(None)] * image.shape[0] // h
    xs = np.arange(w)[cols or slice(None)] * image.shape[1] // w
    return image[ys[:, None], xs[None, :]]


def locate_all(
    boxes: list, depth: np.ndarray, k: Intrinsics, image_shape: tuple[int, int] | None = None
) -> list[Located | None]:
    """The places of the objects in normalised `boxes` of one frame (`FrameGeometry`)."""
    frame = FrameGeometry(depth, k, image_shape)
    return [frame.locate(box) for box in boxes]


def widened(box, margin: float) -> np.ndarray:
    """A normalised box grown by `margin` of its width and height on every side, clipped."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = margin * (x1 - x0), margin * (y1 - y0)
    return np.clip([x0 - dx, y0 - dy, x1 + dx, y1 + dy], 0.0, 1.0)


# -- metric questions ------------------------------------------------------------------------

# What a metric question asks, from its wording: (measure, number of objects it needs).
MEASURES: dict[str, int] = {"between": 2, "camera": 1, "width": 1, "height": 1}
_MEASURE_WORDS = [
    ("camera", re.compile(r"\b(from|to) the camera\b|\bdistance from the camera\b")),
    ("between", re.compile(r"\bhow far (apart|is)\b|\bdistance between\b|\bhow far\b")),
    ("width", re.compile(r"\bhow wide\b|\bwidth\b")),
    ("height", re.compile(r"\bhow tall\b|\bheight\b|\bhow high\b")),
]


def measure_asked(question: str) -> str | None:
    """Which `MEASURES` entry a number question asks for, or None (not a metric question)."""
    text = (question or "").lower()
    for name, pattern in _MEASURE_WORDS:
        if pattern.search(text):
            return name
    return None


def measure(name: str, places: list[Located]) -> float | None:
    """The value of measure `name` for the question's objects' places (metres), or None when
    they do not give it (too few objects located, a size unknown without a plane)."""
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; known: {', '.join(MEASURES)}")
    if len(places) < MEASURES[name]:
        return None
    first = places[0]
    if name == "between":
        value = float(np.linalg.norm(first.centre - places[1].centre))
    elif name == "camera":
        value = float(np.linalg.norm(first.centre))
    elif name == "width":
        value = first.width
    else:
        value = first.height
    return value if math.isfinite(value) else None
