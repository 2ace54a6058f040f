"""Throughput of bag ingestion and of the expansion runner; prints medians of a few runs.

    MUJOCO_GL=egl python bench/bench_ingest_expand.py [ingest] [expand] [noise]

Ingestion: a rosbag2 bag of 200 camera frames (320x240 rgb8), 200 queries and 200
corrections, written with rosbags in both storage formats, then read back into a dataset; plus
the salvage of the same MCAP bag cut at 60%. Expansion: `--mode sim` at 96x96, and the
diffusion runner's overhead with a tiny random SDXL pipeline (its images are noise; real SDXL
costs are the pipeline's own). Noise: the noise check's measure on sim renders, pixel noise
and the tiny pipelines' outputs, and the noise share an inpaint expansion reports.
"""

from __future__ import annotations

import importlib.util
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SEC = 1_000_000_000


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _median(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_ingest(tmp: Path) -> None:
    from vsre_ros.training import bags

    helpers = _load("bag_helpers", ROOT / "tests" / "bags" / "conftest.py")
    store = helpers.store.__wrapped__()
    rng = np.random.default_rng(0)
    n = 200
    for storage in ("mcap", "sqlite3"):
        builder = helpers.BagBuilder(store)
        for k in range(n):
            pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            t = (k + 1) * SEC // 10
            builder.add("/cam/color", t, builder.image(pixels, t))
            builder.add("/vsre/query", t + 1, builder.query(f"q{k}", ns=t))
            builder.add("vsre/corrections", t + 2, builder.correction(f"q{k}", t + 2))
        bag = builder.write(tmp / f"bag-{storage}", storage)
        outs = iter(tmp / f"ds-{storage}-{k}" for k in range(100))
        seconds = _median(lambda b=bag, o=outs: bags.ingest([b], next(o)))
        print(
            f"ingest {storage}: {n} frames+queries in {seconds:.2f} s median "
            f"({n / seconds:.0f} items/s)"
        )
    mcap = tmp / "bag-mcap" / "bag-mcap.mcap"
    data = mcap.read_bytes()
    mcap.write_bytes(data[: int(len(data) * 0.6)])
    (tmp / "bag-mcap" / "metadata.yaml").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = []
        seconds = _median(lambda: found.append(len(bags.read_bag(tmp / "bag-mcap", []))))
    print(
        f"salvage truncated mcap (60% of {len(data) / 1e6:.1f} MB): {found[0]} of {3 * n} "
        f"messages in {seconds * 1000:.0f} ms median"
    )


def bench_expand(tmp: Path) -> None:
    from vsre_ros.training.expand import ExpandConfig, expand

    helpers = _load("expand_helpers", ROOT / "tests" / "expansion" / "conftest.py")
    sim_source = helpers.write_sim_source(tmp / "sim-src")
    runs = iter(range(100))
    per = 5
    seconds = _median(
        lambda: expand(
            ExpandConfig(str(sim_source), str(tmp / f"sim-{next(runs)}"), "sim", per_item=per)
        )
    )
    print(
        f"expand sim (64x64): {2 * per} variants in {seconds:.2f} s median "
        f"({seconds / (2 * per):.3f} s/variant)"
    )
    source = helpers.write_source(tmp / "src")
    sdxl = helpers.build_tiny_sdxl(tmp / "sdxl")
    tiny = {"size": 64, "steps": 2, "guidance": 1.0}
    for batch in (1, 5):
        seconds = _median(
            lambda b=batch: expand(
                ExpandConfig(
                    str(source),
                    str(tmp / f"inp-{b}-{next(runs)}"),
                    "inpaint",
                    str(sdxl),
                    per_item=2,
                    batch_size=b,
                    generation=dict(tiny),
                )
            )
        )
        print(
            f"expand inpaint, tiny SDXL 64 px, 2 steps, batch {batch}: 10 units in "
            f"{seconds:.2f} s median (incl. pipeline load)"
        )


def bench_noise(tmp: Path) -> None:
    """The noise check's measure (neighbour-pixel correlation) on what it must tell apart:
    simulator renders, the tiny random pipelines' outputs, pixel noise; and the noise share an
    expansion reports. The threshold (--min-smoothness, default 0.6) sits between them."""
    from vsre_ros.sim_data.render import Simulator
    from vsre_ros.sim_data.scene import sample_scene
    from vsre_ros.training.expand import ExpandConfig, expand
    from vsre_ros.training.expand.diffusion import DiffusionBackend, GenerationConfig, Request
    from vsre_ros.training.expand.verify import neighbour_correlation

    def show(name: str, values: list[float]) -> None:
        print(
            f"neighbour correlation, {name}: min {min(values):.3f} median "
            f"{statistics.median(values):.3f} max {max(values):.3f} (n={len(values)})"
        )

    helpers = _load("expand_helpers", ROOT / "tests" / "expansion" / "conftest.py")
    with Simulator(64, 64) as sim:
        renders = []
        for k in range(16):
            scene = sample_scene(np.random.default_rng(k), f"{k}")
            sim.load(scene)
            renders.append(neighbour_correlation(sim.render(scene.views[0]).rgb))
    show("sim renders 64 px", renders)
    rng = np.random.default_rng(0)
    show(
        "uniform pixel noise 64 px",
        [neighbour_correlation(rng.integers(0, 256, (64, 64, 3))) for _ in range(16)],
    )
    boxes = ((0.05, 0.2, 0.35, 0.6), (0.55, 0.2, 0.9, 0.6))
    for mode, build in (
        ("txt2img", helpers.build_tiny_sdxl),
        ("layout", helpers.build_tiny_gligen),
    ):
        backend = DiffusionBackend(
            mode, build(tmp / f"noise-{mode}"), GenerationConfig(size=64, steps=2, guidance=1.0)
        )
        requests = [
            Request("a photo: a cup left of a box", s, phrases=("cup", "box"), boxes=boxes)
            for s in range(8)
        ]
        show(
            f"tiny random {mode} pipeline 64 px",
            [neighbour_correlation(im) for im in backend.generate(requests)],
        )
    source = helpers.write_source(tmp / "noise-src")
    report = expand(
        ExpandConfig(
            str(source),
            str(tmp / "noise-inpaint"),
            "inpaint",
            str(tmp / "noise-txt2img"),
            per_item=2,
            generation={"size": 32, "steps": 2, "guidance": 1.0},
        )
    )
    noise, checked = report.noise
    print(
        f"expand inpaint, tiny SDXL: noise {noise} of {checked} outputs; rejected by check "
        f"{report.reasons}"
    )


SECTIONS = {"ingest": bench_ingest, "expand": bench_expand, "noise": bench_noise}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    chosen = parser.parse_args().sections or list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            SECTIONS[name](Path(tmp))


if __name__ == "__main__":
    main()
