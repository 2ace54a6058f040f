"""Grounding + geometry benchmark: what grounded, depth-aware answers add to a query.

    PYTHONPATH=. python bench/bench_grounding.py --threads 1

On simulated frames with depth and K (the demo's 128x128 camera), for the embedded model with
its grounding head, per query:
1. the extra work alone, p50/p90 in ms: finding the question's object phrases, the grounding
   head's boxes for them (from the image tokens the engine already cached), the support plane,
   each object's 3D place and, for metric questions, the measure;
2. the whole query through the engine, p50 in ms, with the head and depth and with neither
   (the model as before), each question asked about a new frame.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from vsre_ros.core import geometry
from vsre_ros.core.answers import AnswerKind, Query
from vsre_ros.core.config import EngineConfig
from vsre_ros.core.engine import Engine
from vsre_ros.core.grounding import ground, object_phrases
from vsre_ros.ros.engines import resolve_model_ref


def frames(n: int, size: int, seed: int) -> list:
    from vsre_ros.sim_data import SimCamera

    with SimCamera(seed=seed, width=size, height=size) as cam:
        return [cam.frame(i) for i in range(n)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vsre-tiny", help="model id or directory")
    parser.add_argument("--frames", type=int, default=40, help="simulated frames (default 40)")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--seed", type=int, default=303, help="generation seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from vsre_ros.sim_data.render import pixel_centre_K

    engine = Engine(resolve_model_ref(args.model)[0], EngineConfig(threads=args.threads))
    model = engine.model
    head = model.heads["grounding"]
    shots = frames(args.frames, args.size, args.seed)
    extra, with_ms, without_ms, objects = [], [], [], []
    for f in shots:
        k = pixel_centre_K(f.K)
        tokens = model.encode_images(model.preprocess([f.rgb]))[0]
        for item in f.items:
            start = time.perf_counter()
            phrases = object_phrases(item["question"])
            found = ground(model, head, tokens, f.rgb, phrases)
            places = geometry.locate_all(
                [o.box for o in found], f.depth, geometry.Intrinsics.from_matrix(k)
            )
            asked = geometry.measure_asked(item["question"])
            if asked and item["answer_kind"] == "number" and None not in places:
                geometry.measure(asked, places[: geometry.MEASURES[asked]])
            extra.append((time.perf_counter() - start) * 1000)
            objects.append(len(phrases))
        item = f.items[0]
        kind = AnswerKind[item["answer_kind"].upper()]
        options = list(item.get("options", []))
        grounded = Query(item["question"], [f.rgb], kind, options, depth=[f.depth],
                         intrinsics=[k])  # fmt: skip
        engine.clear_cache()
        start = time.perf_counter()
        engine.answer([grounded])
        with_ms.append((time.perf_counter() - start) * 1000)
        engine.clear_cache()
        model.heads.pop("grounding")
        start = time.perf_counter()
        engine.answer([Query(item["question"], [f.rgb], kind, options)])
        without_ms.append((time.perf_counter() - start) * 1000)
        model.heads["grounding"] = head
    print(
        f"grounding + geometry, {len(extra)} questions on {len(shots)} frames "
        f"{args.size}x{args.size}, {args.threads} thread(s), {statistics.mean(objects):.1f} "
        "object phrases per question:"
    )
    print(f"  extra work per query: p50 {pct(extra, 50):.2f} ms, p90 {pct(extra, 90):.2f} ms")
    print(
        f"  whole query, new frame: p50 {pct(with_ms, 50):.1f} ms grounded with depth, "
        f"{pct(without_ms, 50):.1f} ms without the head (ratio "
        f"{pct(with_ms, 50) / pct(without_ms, 50):.2f})"
    )


if __name__ == "__main__":
    main()
