"""Throughput of bag ingestion and of the expansion runner; prints medians of a few runs.

    MUJOCO_GL=egl python bench/bench_ingest_expand.py

Ingestion: a rosbag2 bag of 200 camera frames (320x240 rgb8), 200 queries and 200
corrections, written with rosbags in both storage formats, then read back into a dataset; plus
the salvage of the same MCAP bag cut at 60%. Expansion: `--mode sim` at 96x96, and the
diffusion runner's overhead with a tiny random SDXL pipeline (its images are noise; real SDXL
costs are the pipeline's own).
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


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bench_ingest(Path(tmp))
        bench_expand(Path(tmp))


if __name__ == "__main__":
    main()
