"""Engine benchmark: prints latency, cache speed-up, visual tokens, memory and FLOP figures.

    PYTHONPATH=. python bench/bench_engine.py --threads 2
    PYTHONPATH=. python bench/bench_engine.py --paper-paths config/vsre-paper-paths.yaml

Figures (all on random weights, which time the same as trained ones):
1. single-query latency p50/p99 per preset and fusion mode at its native resolution, a new
   frame every query (encode + prefix + question);
2. 8 questions about one new frame: the engine (prefix KV cache reused, one batched forward)
   vs recomputing the whole prompt per question vs transformers `generate` per question, with
   the max |logit difference| between them;
3. visual tokens per image for each fusion mode; peak resident memory;
4. FLOPs per query (torch's FLOP counter) and achieved GFLOP/s against a GEMM peak measured
   in the same run.
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

from vsre_ros.core.answers import Query
from vsre_ros.core.config import EngineConfig
from vsre_ros.core.engine import Engine
from vsre_ros.core.model import VSREModel

QUESTIONS = [
    f"Is the red cup {r} the blue box?"
    for r in ["left of", "right of", "above", "below", "near", "far from", "behind", "on"]
]


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


def frame(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def native_size(model: VSREModel) -> int:
    return max(enc.image_size for enc in model.encoders.values())


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def single_query(engine: Engine, rng, runs: int) -> tuple[float, float]:
    size = native_size(engine.model)
    times = []
    for i in range(runs + 3):
        q = Query(QUESTIONS[i % len(QUESTIONS)], [frame(rng, size)])
        start = time.perf_counter()
        engine.answer([q])
        if i >= 3:  # warm-up
            times.append((time.perf_counter() - start) * 1000)
    return percentile(times, 50), percentile(times, 99)


def flops_per_query(engine: Engine, rng) -> int:
    q = Query(QUESTIONS[0], [frame(rng, native_size(engine.model))])
    with FlopCounterMode(display=False) as counter:
        engine.answer([q])
    return counter.get_total_flops()


def eight_questions(model: VSREModel, rng, runs: int) -> dict[str, float]:
    size = native_size(model)
    cached = Engine(model, EngineConfig(reuse_prefix=True))
    times: dict[str, list[float]] = {"cached": [], "recompute": [], "generate": []}
    diffs = {"recompute": 0.0, "generate": 0.0}
    prompt = [model.prefix_ids(1) + model.suffix_ids(q) for q in QUESTIONS]
    for _ in range(runs + 1):
        image = frame(rng, size)
        queries = [Query(q, [image]) for q in QUESTIONS]
        cached.clear_cache()
        start = time.perf_counter()
        cached.answer(queries)
        times["cached"].append(time.perf_counter() - start)
        ref = cached.next_token_logits(queries)
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
                diffs["recompute"], float((torch.stack(rec) - ref).abs().max())
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
            diffs["generate"] = max(diffs["generate"], float((torch.stack(gen) - ref).abs().max()))
    med = {f"{k}_ms": statistics.median(v[1:]) * 1000 for k, v in times.items()}
    # Ratios per round: the three methods ran back to back, under the same machine load.
    for other in ("recompute", "generate"):
        ratios = [o / c for o, c in zip(times[other][1:], times["cached"][1:], strict=True)]
        med[f"speedup_{other}"] = statistics.median(ratios)
    return {**med, **{f"diff_{k}": v for k, v in diffs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["vsre-tiny", "vsre-tiny-channel"])
    parser.add_argument("--paper-paths", default="", help="YAML of local paper checkpoints")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30, help="timed single queries per preset")
    parser.add_argument("--batch-runs", type=int, default=10, help="timed 8-question rounds")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    peak = gemm_peak()
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {args.threads} threads, GEMM peak {peak:.1f} GFLOP/s, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} (other work on the machine slows "
        "every figure)"
    )
    models = [(p, lambda p=p: VSREModel.from_preset(p)) for p in args.presets]
    if args.paper_paths:
        models.append(
            (
                "vsre-paper",
                lambda: VSREModel.from_preset("vsre-paper", paths_file=args.paper_paths),
            )
        )
    print(
        "\n| preset | fusion | params (M) | image px | visual tokens | p50 ms | p99 ms "
        "| GFLOP/query | GFLOP/s | % of GEMM peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    built = {}
    for name, make in models:
        model = make().eval()
        built[name] = model
        engine = Engine(model, EngineConfig(device="cpu", threads=args.threads))
        p50, p99 = single_query(engine, rng, args.runs)
        flops = flops_per_query(engine, rng)
        rate = flops / 1e9 / (p50 / 1000)
        params = sum(model.parameter_counts().values()) / 1e6
        print(
            f"| {name} | {model.config.fusion} | {params:.2f} | {native_size(model)} "
            f"| {model.num_image_tokens} | {p50:.1f} | {p99:.1f} | {flops / 1e9:.3f} "
            f"| {rate:.1f} | {100 * rate / peak:.0f}% |"
        )
    print("\n8 questions about one new frame (medians over rounds; speed-up: median ratio):")
    print(
        "| preset | engine (cached prefix) ms | recompute ms | generate ms | speed-up vs "
        "recompute | vs generate | max abs logit diff (recompute, generate) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, model in built.items():
        r = eight_questions(model, rng, args.batch_runs)
        cached, rec, gen = r["cached_ms"], r["recompute_ms"], r["generate_ms"]
        print(
            f"| {name} | {cached:.1f} | {rec:.1f} | {gen:.1f} | {r['speedup_recompute']:.1f}x "
            f"| {r['speedup_generate']:.1f}x "
            f"| {r['diff_recompute']:.2e}, {r['diff_generate']:.2e} |"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process: {rss:.0f} MiB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
