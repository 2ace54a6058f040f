"""Grounding + geometry benchmark: what grounded, depth-aware answers add to a query.

    PYTHONPATH=. python bench/bench_grounding.py --threads 1

On simulated frames with depth and K (the demo's 128x128 camera; `--size 640` for a camera
frame), for the embedded model with its grounding head:
1. the extra work alone, p50/p90 in ms per query, as the engine does it (`core.grounding.
   Grounder`: the question's object phrases, the head's boxes from the image tokens the engine
   already cached, the support plane, each object's 3D place and, for metric questions, the
   measure): for a new frame's first question (everything about the frame computed for it),
   with depth and without (boxes only), for a prepared frame's first question (the frame's
   parts computed before it, as `Engine.prepare` does for the server's `preencode_hz`), and
   for every question of a frame asked one after another (the frame's parts kept);
2. whole queries through the engine, p50 in ms, with the head and depth and with neither (the
   model as before): one question about a new frame, one about a prepared frame, and 8
   questions about one new frame in one call (per question). With the head, twice: grounding
   on its own thread while the model works (`EngineConfig.parallel_grounding`, the default)
   and after the LM on the caller's thread; for each, the latency it adds to the model's answer
   and the CPU time of the whole call (both threads: the work the grounding thread hides
   still costs a core).
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
from vsre_ros.core.engine import LRU, Engine
from vsre_ros.core.grounding import Grounder, object_phrases
from vsre_ros.ros.engines import resolve_model_ref


def frames(n: int, size: int, seed: int) -> list:
    from vsre_ros.sim_data import SimCamera

    with SimCamera(seed=seed, width=size, height=size * 3 // 4 if size > 128 else size) as cam:
        return [cam.frame(i) for i in range(n)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def grounded_query(grounder: Grounder, key, tokens, frame, item, k) -> None:
    """One question's grounding and geometry, as `Engine._ground` runs them."""
    phrases = object_phrases(item["question"])
    if not phrases:
        return
    found = grounder.frame(key, tokens, frame.rgb)
    found.objects(phrases)
    if k is None:  # boxes only (a camera without depth)
        return
    places = found.locate(phrases, frame.depth, k)
    asked = geometry.measure_asked(item["question"])
    if asked and item["answer_kind"] == "number" and None not in places:
        geometry.measure(asked, places[: geometry.MEASURES[asked]])


def query(item: dict, frame, k=None) -> Query:
    return Query(
        item["question"],
        [frame.rgb],
        AnswerKind[item["answer_kind"].upper()],
        list(item.get("options", [])),
        depth=[frame.depth] if k is not None else [],
        intrinsics=[k] if k is not None else [],
    )


def timed_answer(engine: Engine, queries: list[Query], prepare: bool = False) -> tuple:
    """(wall, CPU) milliseconds `engine` takes to answer `queries` about a frame it has not
    seen; with `prepare`, after `Engine.prepare` encoded that frame (untimed) under the
    queries' key. The CPU time is the process's: every thread's."""
    engine.clear_cache()
    if prepare:
        q = queries[0]
        engine.prepare(q.images[0], "frame", *(q.depth or [None]), *(q.intrinsics or [None]))
        for q in queries:
            q.image_keys = ["frame"]
    start, cpu = time.perf_counter(), time.process_time()
    engine.answer(queries)
    return (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vsre-tiny", help="model id or directory")
    parser.add_argument("--frames", type=int, default=40, help="simulated frames (default 40)")
    parser.add_argument("--size", type=int, default=128, help="frame width in pixels")
    parser.add_argument("--seed", type=int, default=303, help="generation seed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from vsre_ros.sim_data.render import pixel_centre_K

    engine = Engine(resolve_model_ref(args.model)[0], EngineConfig(threads=args.threads))
    model = engine.model
    head = model.heads["grounding"]
    shots = frames(args.frames, args.size, args.seed)
    first, every, boxes_only, prepared, objects = [], [], [], [], []
    # The phrases' parts are kept across frames, as in the engine (a robot's objects recur).
    phrases = LRU(4096)
    with torch.inference_mode():
        for n, f in enumerate(shots):
            k = geometry.Intrinsics.from_matrix(pixel_centre_K(f.K))
            tokens = model.encode_images(model.preprocess([f.rgb]))[0]
            start = time.perf_counter()
            grounded_query(Grounder(model, head, LRU(1), phrases), n, tokens, f, f.items[0], None)
            boxes_only.append((time.perf_counter() - start) * 1000)
            grounder = Grounder(model, head, LRU(1), phrases)
            grounder.frame(n, tokens, f.rgb).locate([], f.depth, k)  # as Engine.prepare does
            start = time.perf_counter()
            grounded_query(grounder, n, tokens, f, f.items[0], k)
            prepared.append((time.perf_counter() - start) * 1000)
            grounder = Grounder(model, head, LRU(1), phrases)
            for j, item in enumerate(f.items):
                start = time.perf_counter()
                grounded_query(grounder, n, tokens, f, item, k)
                (first if j == 0 else every).append((time.perf_counter() - start) * 1000)
                objects.append(len(object_phrases(item["question"])))
    every += first
    # Per case and setting: (wall, CPU) ms of each call; per question for 8 questions.
    cases = ("one question about a new frame", "one question about a prepared frame",
             "8 questions about a new frame, per question")  # fmt: skip
    settings = ("grounded on its own thread", "grounded after the LM", "without the head")
    timed: dict = {(c, s): [] for c in cases for s in settings}
    for f in shots:
        k = pixel_centre_K(f.K)
        items = (f.items * 8)[:8]
        for setting in settings:
            engine.config.parallel_grounding = setting == settings[0]
            plain = setting == settings[2]
            if plain:
                model.heads.pop("grounding", None)
            else:
                model.heads["grounding"] = head
            one = [query(items[0], f, None if plain else k)]
            timed[cases[0], setting].append(timed_answer(engine, one))
            timed[cases[1], setting].append(timed_answer(engine, one, prepare=True))
            eight = timed_answer(engine, [query(it, f, None if plain else k) for it in items])
            timed[cases[2], setting].append((eight[0] / 8, eight[1] / 8))
    model.heads["grounding"] = head
    h, w = shots[0].rgb.shape[:2]
    print(
        f"grounding + geometry, {len(every)} questions on {len(shots)} frames {w}x{h}, "
        f"{args.threads} thread(s), {statistics.mean(objects):.1f} object phrases per question:"
    )
    print(
        f"  extra work, a new frame's first question: p50 {pct(first, 50):.2f} ms, "
        f"p90 {pct(first, 90):.2f} ms"
    )
    print(
        f"  extra work, a new frame's first question without depth (boxes only): p50 "
        f"{pct(boxes_only, 50):.2f} ms, p90 {pct(boxes_only, 90):.2f} ms"
    )
    print(
        f"  extra work, a prepared frame's first question: p50 {pct(prepared, 50):.2f} ms, "
        f"p90 {pct(prepared, 90):.2f} ms"
    )
    print(
        f"  extra work, every question of a frame:    p50 {pct(every, 50):.2f} ms, "
        f"p90 {pct(every, 90):.2f} ms"
    )
    for case in cases:
        base = pct([t for t, _ in timed[case, settings[2]]], 50)
        row = []
        for setting in settings:
            wall = pct([t for t, _ in timed[case, setting]], 50)
            cpu = pct([c for _, c in timed[case, setting]], 50)
            added = f", +{wall - base:.1f}" if setting != settings[2] else ""
            row.append(f"{setting} {wall:.1f}{added} (CPU {cpu:.1f})")
        print(f"  engine, {case}, p50 ms: " + "; ".join(row))


if __name__ == "__main__":
    main()
