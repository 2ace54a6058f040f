"""How well `core.geometry` measures the simulator's metric questions from PERFECT grounding.

    PYTHONPATH=. python bench/research/geometry_truth.py --seed 202 --frames 150
    PYTHONPATH=. python bench/research/geometry_truth.py --seed 101 --frames 150 --diagnose
    PYTHONPATH=. python bench/research/geometry_truth.py --seed 202 --before HEAD
    PYTHONPATH=. python bench/research/geometry_truth.py --size 640x480 --before HEAD

Renders simulated frames (`training.grounding.render`: sizes 64x64 and 160x120 in turn, or
`--size`'s), and
for every metric question of a frame (`item["task"] == "metric"`) whose objects are all visible
(`training.grounding.visible_objects`, as the questions' objects are named) measures the asked
quantity (`geometry.measure_asked`, `geometry.measure`) with the frame's depth and K
(`sim_data.render.pixel_centre_K`) from:

- `box`:  each object's mask box (`FrameGeometry.locate(box)`: what perfect boxes give),
- `mask`: each object's true instance mask (`frame.seg == k + 1`) with its box
  (`FrameGeometry.locate(box, mask=mask)`; a geometry module without the mask argument on
  `FrameGeometry.locate` gets the mask through the module's `locate`, as it always took one);

with `--before REF`, also both with the geometry module of git revision REF (`box@REF`,
`mask@REF`), on the same frames. It reports per measure (between, camera, width, height,
distances = between + camera, all) the share within 10% of the truth and within a factor of 2
(`core.answers.number_correct`, the scoring rule of number answers), with 95% Wilson intervals.

What the truth is (`sim_data.questions.Questions.metric_items`): the distance between the
centres of two objects' own bounding boxes (in the object's frame, turned by its yaw: the
`center` of `truth["objects"]`), from the camera's optical centre (`cam_pos`) to that centre,
the larger horizontal side of that box, and its vertical extent (`size`). `--diagnose` also
compares, for every visible object of the frames (not only those questions name), the measured
centre with the true one in the camera frame (`center_cam`), per category and per method: the
median error and its part along the horizontal viewing direction (positive: measured too near).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

from vsre_ros.core import geometry
from vsre_ros.core.answers import number_correct

MEASURES = ("between", "camera", "width", "height")
GROUPS = {"distances": ("between", "camera"), "all": MEASURES}
REPO = Path(__file__).resolve().parents[2]


def frames_of(seed: int, count: int, cache: str = "", size: str = "") -> list:
    """The `count` frames of generation `seed` (pickled in `cache` when given), of the
    training renders' sizes in turn or, with `size` ("WxH"), all of that size."""
    from vsre_ros.training.grounding import DEFAULT_SIZES, render

    sizes = [tuple(int(v) for v in size.split("x"))] if size else DEFAULT_SIZES
    name = f"frames_{seed}_{count}" + (f"_{size}" if size else "")
    path = Path(cache) / f"{name}.pkl" if cache else None
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())
    frames = render(seed, count, sizes)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(frames))
    return frames


def module_at(ref: str) -> types.ModuleType:
    """`vsre_ros/core/geometry.py` as it is at git revision `ref`, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{ref}:vsre_ros/core/geometry.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType(f"geometry_at_{ref}")
    module.__dict__["__name__"] = module.__name__
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"geometry.py@{ref}", "exec"), module.__dict__)
    return module


def locators(geo: types.ModuleType, frame, k: np.ndarray):
    """(by box, by mask) functions of an object's (mask id, box) for one frame and one module."""
    scene = geo.FrameGeometry(
        frame.depth, geo.Intrinsics.from_matrix(k), frame.rgb.shape[:2], frame.rgb
    )
    takes_mask = "mask" in inspect.signature(scene.locate).parameters

    def by_box(mask_id, box):
        return scene.locate(box)

    def by_mask(mask_id, box):
        mask = frame.seg == mask_id
        if takes_mask:
            return scene.locate(box, mask=mask)
        grown = geo.widened(box, geo.SEARCH_MARGIN)
        return geo.locate(grown, scene.depth, scene.k, scene.plane, mask=mask, rgb=scene.rgb)

    return by_box, by_mask


def evaluate(frames: list, modules: dict[str, types.ModuleType], diagnose: bool) -> dict:
    """Per method and measure: the ratios measured / truth; with `diagnose`, per method and
    category the centre errors of every visible object."""
    from vsre_ros.sim_data.render import pixel_centre_K
    from vsre_ros.training.grounding import visible_objects

    ratios: dict[str, dict[str, list[float]]] = {}
    errors: dict[str, dict[str, list]] = {}
    for frame in frames:
        k = pixel_centre_K(frame.K)
        objects = {name: (mask_id, box) for name, mask_id, box in visible_objects(frame)}
        methods = {}
        for label, geo in modules.items():
            by_box, by_mask = locators(geo, frame, k)
            methods[f"box{label}"] = (geo, by_box)
            methods[f"mask{label}"] = (geo, by_mask)
        for method, (geo, locate) in methods.items():
            placed = {name: locate(*objects[name]) for name in objects}
            for item in frame.items:
                if item["task"] != "metric":
                    continue
                asked = geo.measure_asked(item["question"])
                names = item.get("objects", [])[: geo.MEASURES.get(asked, 0)]
                if asked is None or not names or any(n not in objects for n in names):
                    continue
                places = [placed[n] for n in names]
                value = None if None in places else geo.measure(asked, places)
                truth = float(item["value"])
                ratio = value / truth if value is not None and truth else math.nan
                ratios.setdefault(method, {m: [] for m in MEASURES})[asked].append(ratio)
            if diagnose:
                _centre_errors(frame, placed, errors.setdefault(method, {}))
    return {"ratios": ratios, "errors": errors}


def _centre_errors(frame, placed: dict, out: dict) -> None:
    """Each visible object's measured centre against its true one (camera frame): the error's
    length, its part along the horizontal viewing direction (positive: too near), the true
    distance from the camera, and measured / true width and height."""
    truth = frame.truth
    camera = truth["renders"][0]["camera"]
    rot = np.array(camera["cam_rot"])
    by_name = {
        obj["name"]: (obj, seen)
        for obj, seen in zip(truth["objects"], truth["renders"][0]["objects"], strict=True)
    }
    for name, place in placed.items():
        obj, seen = by_name[name]
        true = np.array(seen["center_cam"])
        row = out.setdefault(obj["category"], [])
        if place is None:
            row.append((math.nan,) * 5)
            continue
        world_err = rot @ (place.centre - true)  # measured - true, world frame
        view = rot @ true
        view[2] = 0.0
        view /= max(float(np.linalg.norm(view)), 1e-9)
        size = np.array(obj["size"])
        row.append(
            (
                float(np.linalg.norm(world_err)),
                float(-world_err @ view),
                float(np.linalg.norm(true)),
                place.width / max(size[0], size[1]),
                place.height / size[2],
            )
        )


def scored(ratios: list[float]) -> dict:
    from vsre_ros.training.grounding import share

    return {
        "within_10%": share([math.isfinite(r) and abs(r - 1) <= 0.1 for r in ratios]),
        "within_x2": share([number_correct(r, 1.0) for r in ratios]),
    }


def report(result: dict) -> dict:
    out = {}
    for method, by_measure in result["ratios"].items():
        rows = {m: scored(by_measure[m]) for m in MEASURES}
        for group, names in GROUPS.items():
            rows[group] = scored(sum((by_measure[m] for m in names), []))
        out[method] = rows
    return out


def _fmt(entry: dict) -> str:
    lo, hi = entry["ci95"]
    return f"{100 * entry['share']:5.1f}% [{100 * lo:4.1f}, {100 * hi:5.1f}]"


def summary(rep: dict, errors: dict) -> str:
    lines = []
    for measure in (*MEASURES, *GROUPS):
        n = next(iter(rep.values()))[measure]["within_10%"]["n"]
        lines.append(f"{measure} (n={n}): within 10% | within x2")
        for method, rows in rep.items():
            row = rows[measure]
            lines.append(f"  {method:14s} {_fmt(row['within_10%'])} | {_fmt(row['within_x2'])}")
    if errors:
        lines.append(
            "centre error per category, medians: |error| m, too near m, |error|/distance, "
            "width ratio, height ratio (n)"
        )
        for method, by_cat in errors.items():
            lines.append(f"  {method}")
            for cat, rows in sorted(by_cat.items()):
                a = np.array(rows, dtype=float)
                med = np.nanmedian(a, axis=0)
                rel = np.nanmedian(a[:, 0] / a[:, 2])
                lines.append(
                    f"    {cat:11s} {med[0]:.3f} {med[1]:+.3f} {rel:.3f}"
                    f" {med[3]:.2f} {med[4]:.2f} ({len(a)})"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=202, help="generation seed (default 202)")
    parser.add_argument("--frames", type=int, default=150, help="frames (default 150)")
    parser.add_argument(
        "--before", default="", help="also measure the geometry module of this git revision"
    )
    parser.add_argument(
        "--diagnose", action="store_true", help="centre errors per category and method"
    )
    parser.add_argument(
        "--size", default="", help="WxH: every frame this size (default 64x64 and 160x120)"
    )
    parser.add_argument("--cache", default="", help="directory to keep the rendered frames in")
    parser.add_argument("--json", default="", help="also write the report to this file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    frames = frames_of(args.seed, args.frames, args.cache, args.size)
    modules = {"": geometry}
    if args.before:
        modules[f"@{args.before}"] = module_at(args.before)
    result = evaluate(frames, modules, args.diagnose)
    rep = report(result)
    print(f"seed {args.seed}, {len(frames)} frames, {time.perf_counter() - start:.0f} s")
    print(summary(rep, result["errors"]))
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
