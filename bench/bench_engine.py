"""Engine benchmark: prints latency, compute floor, cache speed-up, visual tokens and memory.

    PYTHONPATH=. python bench/bench_engine.py --threads 1
    PYTHONPATH=. python bench/bench_engine.py --paper-paths config/vsre-paper-paths.yaml

Models: `embedded` is the shipped vsre-tiny (vsre_ros/models/vsre-tiny/); preset ids build
random weights, which time the same as trained ones. Every engine loads its model itself, so
it runs the served path (eval mode once, static-shape parts traced at load, `core.traced`).
Figures, with a new camera-sized frame (`--frame`, default 640x480) per question:
1. one question about a new frame and about a frame already encoded: p50/p95 wall and median
   CPU time of this thread (the machine is shared: CPU time is what the engine itself spent);
2. the compute floor: FLOPs of one question about a new frame (torch's FLOP counter: vision
   side, and the LM over the image prefix and the question) over a GEMM rate measured in the
   same run, against the new-frame p50 and CPU median;
3. 8 questions about one new frame: the engine (prefix KV cache, the questions packed into
   one pass) vs recomputing the whole prompt per question vs transformers `generate` per
   question, with the max |logit difference| and whether the answers are identical to the
   reference engine's (no prefix cache, no tracing). The engine compared runs without the
   grounding head, as the other two do; the engine as served, grounding each answer's
   objects, is timed beside it (`bench_grounding.py` times the head alone);
4. each answer kind about a new frame, one question a call (a yes/no question, an 8-option
   choice, a number), and the demo's three at once (one of each kind): the engine (a frame's
   questions in one LM pass, a choice's options as branches of its question, numbers decoded
   two tokens a pass) vs the reference engine (no prefix cache, no tracing: every option and
   every decoding step reruns), and whether the answers are identical;
5. visual tokens per image; peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vsre_ros.core.answers import AnswerKind, Query
from vsre_ros.core.config import EngineConfig
from vsre_ros.core.engine import Engine
from vsre_ros.core.model import VSREModel
from vsre_ros.ros.engines import EMBEDDED_MODELS

QUESTIONS = [
    f"Is the red cup {r} the blue box?"
    for r in ["left of", "right of", "above", "below", "near", "far from", "behind", "on"]
]


DIRECTIONS = [
    "left", "right", "above", "below", "above and to the left", "above and to the right",
    "below and to the left", "below and to the right",
]  # fmt: skip
KINDS = {
    "yes/no": Query(QUESTIONS[0], []),
    "choice (8 options)": Query(
        "Where is the red cup relative to the blue box?", [], AnswerKind.CHOICE, DIRECTIONS
    ),
    "number": Query("How far is the red cup from the blue box in metres?", [], AnswerKind.NUMBER),
}


def gemm_peak(windows: int = 8, n: int = 1024) -> float:
    """Best fp32 GEMM rate over short windows (the machine is shared, so take the best)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        best = max(best, 10 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def frame(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def single_query(engine: Engine, rng, shape, runs: int) -> dict[str, float]:
    """One question a call, like a robot asking about its camera: a new frame (its own key,
    as the server gives (camera, stamp)), then the same frame again (encoded)."""
    frames = [frame(rng, shape) for _ in range(4)]
    times: dict[str, list[float]] = {"new": [], "encoded": [], "new_cpu": [], "encoded_cpu": []}
    for i in range(runs + 3):
        for kind in ("new", "encoded"):
            q = Query(QUESTIONS[i % len(QUESTIONS)], [frames[i % 4]], image_keys=[("bench", i)])
            start, cpu = time.perf_counter(), time.thread_time()
            engine.answer([q])
            if i >= 3:  # warm-up
                times[kind].append((time.perf_counter() - start) * 1000)
                times[f"{kind}_cpu"].append((time.thread_time() - cpu) * 1000)
    out = {}
    for kind in ("new", "encoded"):
        out[f"{kind}_p50"] = percentile(times[kind], 50)
        out[f"{kind}_p95"] = percentile(times[kind], 95)
        out[f"{kind}_cpu"] = statistics.median(times[f"{kind}_cpu"])
    return out


def flops_per_query(model: VSREModel, image: np.ndarray) -> int:
    """FLOPs of one question about a new frame: the vision side, then the LM over the image
    prefix and the question (logits for the question's tokens), what the engine computes."""
    ids = model.prefix_ids(1) + model.suffix_ids(QUESTIONS[0])
    with FlopCounterMode(display=False) as counter:  # grad mode on: the counter's hooks need it
        embeds = model.embed(torch.tensor([ids]), model.encode_images(model.preprocess([image])))
        model.lm(inputs_embeds=embeds, logits_to_keep=len(ids) - len(model.prefix_ids(1)))
    return counter.get_total_flops()


def eight_questions(ref: str, rng, shape, runs: int) -> dict[str, float]:
    # Recomputing and `generate` give the answers' logits only, so the engine they are held
    # against answers without the grounding head; the engine as served (boxes for every
    # answer, one mask-head pass per new frame) is timed beside it.
    cached = Engine(ref, EngineConfig(device="cpu", grounding=False))
    model = cached.model  # the same weights for the others (a preset id builds new ones)
    served = Engine(model, EngineConfig(device="cpu"))
    reference = Engine(model, EngineConfig(device="cpu", reuse_prefix=False, trace=False))
    times: dict[str, list[float]] = {"cached": [], "served": [], "recompute": [], "generate": []}
    diffs = {"recompute": 0.0, "generate": 0.0}
    same = 0
    prompt = [model.prefix_ids(1) + model.suffix_ids(q) for q in QUESTIONS]
    for _ in range(runs + 1):
        image = frame(rng, shape)
        queries = [Query(q, [image]) for q in QUESTIONS]
        cached.clear_cache()
        start = time.perf_counter()
        answers = cached.answer(queries)
        times["cached"].append(time.perf_counter() - start)
        served.clear_cache()
        start = time.perf_counter()
        served.answer(queries)
        times["served"].append(time.perf_counter() - start)
        expected = reference.answer(queries)
        same += all(a.text == b.text for a, b in zip(answers, expected, strict=True))
        ref_logits = cached.next_token_logits(queries)
        with torch.inference_mode():
            # Recompute: every question runs the whole prompt, image encoding included.
            start = time.perf_counter()
            rec = []
            for ids in prompt:
                embeds = model.embed(
                    torch.tensor([ids]), model.encode_images(model.preprocess([image]))
                )
                rec.append(model.lm(inputs_embeds=embeds).logits[0, -1])
            times["recompute"].append(time.perf_counter() - start)
            diffs["recompute"] = max(
                diffs["recompute"], float((torch.stack(rec) - ref_logits).abs().max())
            )
            start = time.perf_counter()
            gen = []
            for ids in prompt:
                embeds = model.embed(
                    torch.tensor([ids]), model.encode_images(model.preprocess([image]))
                )
                out = model.lm.generate(
                    inputs_embeds=embeds,
                    max_new_tokens=1,
                    do_sample=False,
                    output_logits=True,
                    return_dict_in_generate=True,
                    pad_token_id=model.pad_token_id,
                )
                gen.append(out.logits[0][0])
            times["generate"].append(time.perf_counter() - start)
            diffs["generate"] = max(
                diffs["generate"], float((torch.stack(gen) - ref_logits).abs().max())
            )
    med = {f"{k}_ms": statistics.median(v[1:]) * 1000 for k, v in times.items()}
    # Ratios per round: the three methods ran back to back, under the same machine load.
    for other in ("recompute", "generate"):
        ratios = [o / c for o, c in zip(times[other][1:], times["cached"][1:], strict=True)]
        med[f"speedup_{other}"] = statistics.median(ratios)
    med["identical"] = f"{same}/{runs + 1}"
    return {**med, **{f"diff_{k}": v for k, v in diffs.items()}}


def by_kind(ref: str, rng, shape, runs: int) -> dict[str, dict[str, float | str]]:
    """Per kind (and the three at once): engine and reference p50 ms on new frames, the
    median per-round speed-up, and the rounds whose answers were identical."""
    engine = Engine(ref, EngineConfig(device="cpu"))
    reference = Engine(engine.model, EngineConfig(device="cpu", reuse_prefix=False, trace=False))
    plans = {name: [q] for name, q in KINDS.items()}
    plans["all three at once"] = list(KINDS.values())
    out = {}
    for name, plan in plans.items():
        times: dict[str, list[float]] = {"engine": [], "reference": []}
        same = 0
        for i in range(runs + 1):
            image = frame(rng, shape)
            answers = {}
            for which, eng in (("engine", engine), ("reference", reference)):
                queries = [
                    Query(q.question, [image], q.answer_kind, q.options, image_keys=[(name, i)])
                    for q in plan
                ]
                start = time.perf_counter()
                answers[which] = eng.answer(queries)
                times[which].append(time.perf_counter() - start)
            same += all(
                (a.text, a.choice_index) == (b.text, b.choice_index)
                and abs(a.probability - b.probability) < 1e-4
                for a, b in zip(answers["engine"], answers["reference"], strict=True)
            )
        ratios = [r / e for e, r in zip(times["engine"][1:], times["reference"][1:], strict=True)]
        out[name] = {
            "engine": statistics.median(times["engine"][1:]) * 1000,
            "reference": statistics.median(times["reference"][1:]) * 1000,
            "speedup": statistics.median(ratios),
            "identical": f"{same}/{runs + 1}",
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["embedded", "vsre-tiny", "vsre-tiny-channel"],
        help="`embedded` (the shipped model), preset ids (random weights) or directories",
    )
    parser.add_argument("--paper-paths", default="", help="YAML of local paper checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frame", default="640x480", help="camera frame WxH")
    parser.add_argument("--runs", type=int, default=30, help="timed single queries per model")
    parser.add_argument("--batch-runs", type=int, default=10, help="timed 8-question rounds")
    args = parser.parse_args()
    width, height = (int(v) for v in args.frame.split("x"))
    shape = (height, width)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    peak = gemm_peak()
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {args.threads} threads, GEMM rate {peak:.1f} GFLOP/s, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} (other work on the machine slows "
        f"every figure); frames {args.frame}"
    )
    refs = {m: str(EMBEDDED_MODELS / "vsre-tiny") if m == "embedded" else m for m in args.models}
    presets: dict[str, dict[str, str]] = {m: {} for m in refs}
    if args.paper_paths:
        refs["vsre-paper"] = "vsre-paper"
        presets["vsre-paper"] = {"paths_file": args.paper_paths}
    print(
        "\n| model | fusion | params (M) | visual tokens | new frame p50 / p95 ms (CPU) "
        "| encoded frame p50 / p95 ms (CPU) | MFLOP/query | floor ms | p50 / floor "
        "| CPU / floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, ref in refs.items():
        config = EngineConfig(device="cpu", threads=args.threads, preset_args=presets[name])
        engine = Engine(ref, config)
        model = engine.model
        r = single_query(engine, rng, shape, args.runs)
        flops = flops_per_query(model, frame(rng, shape))
        floor = flops / (peak * 1e9) * 1000
        params = sum(model.parameter_counts().values()) / 1e6
        print(
            f"| {name} | {model.config.fusion} | {params:.2f} | {model.num_image_tokens} "
            f"| {r['new_p50']:.1f} / {r['new_p95']:.1f} ({r['new_cpu']:.1f}) "
            f"| {r['encoded_p50']:.1f} / {r['encoded_p95']:.1f} ({r['encoded_cpu']:.1f}) "
            f"| {flops / 1e6:.0f} | {floor:.2f} | {r['new_p50'] / floor:.1f}x "
            f"| {r['new_cpu'] / floor:.1f}x |"
        )
        del engine, model
    print("\n8 questions about one new frame (medians over rounds; speed-up: median ratio):")
    print(
        "| model | engine ms | recompute ms | generate ms | speed-up vs recompute "
        "| vs generate | answers identical to the reference engine "
        "| max abs logit diff (recompute, generate) | engine as served, with grounding ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, ref in refs.items():
        r = eight_questions(ref, rng, shape, args.batch_runs)
        cached, rec, gen = r["cached_ms"], r["recompute_ms"], r["generate_ms"]
        print(
            f"| {name} | {cached:.1f} | {rec:.1f} | {gen:.1f} | {r['speedup_recompute']:.1f}x "
            f"| {r['speedup_generate']:.1f}x | {r['identical']} rounds "
            f"| {r['diff_recompute']:.2e}, {r['diff_generate']:.2e} | {r['served_ms']:.1f} |"
        )
    print("\nEach answer kind about a new frame (one call each; medians; speed-up: median ratio):")
    print(
        "| model | question(s) | engine ms | reference ms | speed-up | answers identical "
        "(text, choice, probability to 1e-4) |"
    )
    print("|---|---|---|---|---|---|")
    for name, ref in refs.items():
        for kind, r in by_kind(ref, rng, shape, args.batch_runs).items():
            print(
                f"| {name} | {kind} | {r['engine']:.1f} | {r['reference']:.1f} "
                f"| {r['speedup']:.1f}x | {r['identical']} rounds |"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process: {rss:.0f} MiB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
