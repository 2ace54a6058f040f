"""Simulated-data generation throughput: scenes/s and questions/s, and what limits them.

Prints, for 96x96, 128x128 and 320x240:
- the full `generate` path (2 worker processes, files written), scenes/s and items/s;
- one process's time per scene split into layout sampling, rendering (RGB+depth, segmentation,
  one amodal segmentation pass per object), question generation and file encoding;
and the cost of the alternative design (compiling a fresh MuJoCo model per scene).

    MUJOCO_GL=egl python bench/bench_sim.py [--scenes 120] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
from vsre_ros.sim_data.dataset import (
    GenConfig,
    _resolve_images,
    build_scene,
    encode,
    generate,
)
from vsre_ros.sim_data.questions import QuestionMaker
from vsre_ros.sim_data.render import Simulator, _model_xml
from vsre_ros.sim_data.scene import sample_scene

SIZES = [(96, 96), (128, 128), (320, 240)]


def breakdown(width: int, height: int, scenes: int) -> dict[str, float]:
    """Median milliseconds per scene for each stage, in this process."""
    cfg = GenConfig(seed=1, width=width, height=height)
    keys = ("layout", "render", "no_amodal", "questions", "encode")
    stages: dict[str, list[float]] = {k: [] for k in keys}
    with Simulator(width, height) as sim:
        build_scene(sim, cfg, 0)  # warm up GL
        for i in range(scenes):
            t0 = time.perf_counter()
            scene = sample_scene(np.random.default_rng([1, i, 0]), str(i))
            t1 = time.perf_counter()
            sim.load(scene)
            gaps = sim.gaps()
            renders = [sim.render(v) for v in scene.views]
            t2 = time.perf_counter()
            QuestionMaker(scene, renders, gaps, np.random.default_rng(i), 1).all_items()
            t3 = time.perf_counter()
            result = build_scene(sim, cfg, i)
            _resolve_images(result)
            t4 = time.perf_counter()
            encode(result, cfg)
            t5 = time.perf_counter()
            sim.load(scene)
            for v in scene.views:
                sim.render(v, amodal=False)
            t6 = time.perf_counter()
            stages["no_amodal"].append(t6 - t5)
            stages["layout"].append(t1 - t0)
            stages["render"].append(t2 - t1)
            stages["questions"].append(t3 - t2)
            stages["encode"].append(t5 - t4)
    return {k: 1e3 * statistics.median(v) for k, v in stages.items()}


def full_run(width: int, height: int, scenes: int, workers: int) -> tuple[float, ...]:
    """(scenes/s, items/s, items per scene, scenes/s including start-up) of `generate`.

    Two runs of different sizes; the rate is their difference over the time difference, so the
    one-off start (worker processes, imports, model compile, GL context) cancels out.
    """
    cfg = GenConfig(seed=2, width=width, height=height)
    runs = []
    for n_scenes in (max(8, scenes // 4), scenes):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            meta = generate(tmp, n_scenes * 28, cfg, workers=workers, progress=False)
            runs.append((time.perf_counter() - t0, meta["counts"]))
    (t_a, c_a), (t_b, c_b) = runs
    dt = max(1e-9, t_b - t_a)
    per = c_b["items"] / c_b["scenes"]
    steady = (c_b["scenes"] - c_a["scenes"]) / dt, (c_b["items"] - c_a["items"]) / dt
    return (*steady, per, c_b["scenes"] / t_b)


def recompile_cost(width: int, height: int, reps: int = 5) -> float:
    """Milliseconds to compile the model XML and upload it to a GL context, per scene."""
    import mujoco

    ctx = mujoco.GLContext(width, height)
    ctx.make_current()
    times = []
    xml = _model_xml(width, height)
    for _ in range(reps):
        t0 = time.perf_counter()
        model = mujoco.MjModel.from_xml_string(xml)
        con = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        times.append(time.perf_counter() - t0)
        con.free()
    ctx.free()
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=240, help="scenes per full run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--breakdown-scenes", type=int, default=30)
    args = parser.parse_args()
    print(
        f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f} (other work on the "
        "machine lowers these figures)"
    )
    print(
        f"{'size':>9} | {'scenes/s':>8} {'items/s':>8} {'items/scene':>11} {'w/ start':>8} |"
        " per scene, one process (median ms): layout render (without amodal passes) questions"
        " encode"
    )
    limits = []
    for w, h in SIZES:
        sps, ips, per, total = full_run(w, h, args.scenes, args.workers)
        b = breakdown(w, h, args.breakdown_scenes)
        stages = {k: v for k, v in b.items() if k != "no_amodal"}
        top = max(stages, key=stages.get)
        limits.append(f"{w}x{h}: {top} {100 * stages[top] / sum(stages.values()):.0f}%")
        print(
            f"{w:>4}x{h:<4} | {sps:8.1f} {ips:8.0f} {per:11.1f} {total:8.1f} | "
            f"{b['layout']:6.1f} {b['render']:6.1f} ({b['no_amodal']:5.1f})"
            f" {b['questions']:9.1f} {b['encode']:6.1f}"
        )
    print("limited by (largest share of one process's time per scene): " + "; ".join(limits))
    print(
        f"alternative: compiling the model + GL upload per scene costs "
        f"{recompile_cost(96, 96):.1f} ms at 96x96 (the pooled model pays it once a process)"
    )


if __name__ == "__main__":
    main()
