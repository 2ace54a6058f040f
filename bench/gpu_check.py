"""One-command check of the full-size model on a GPU: load, answer, train a few steps.

Loads `vsre-paper` from a paths file (the real CLIP, SigLIP, SAM, DINOv2 and Vicuna / LLaVA-1.5
LM directories) in bf16, answers N yes/no questions through the Engine (one at a time for
latency, then all at once for throughput), runs a few stage-2 steps (projectors + LoRA, fp32
trainable weights on the bf16 base) and prints tokens/s, latency and peak GPU memory.

    python bench/gpu_check.py --paths-file config/vsre-paper-paths.yaml
    python bench/gpu_check.py --model my-model.yaml --questions 32 --steps 5

On a machine without CUDA it runs on the CPU (`--device cpu --dtype float32`), which is how
the test suite checks it on tiny checkpoints; the figures then say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np
import torch

QUESTIONS = [
    "Is the cup left of the box?",
    "Is the chair behind the table?",
    "Is the bottle on the shelf?",
    "Is the lamp above the desk?",
]


def _peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU, allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (CPU RSS)"


def check(args: argparse.Namespace) -> dict[str, float]:
    from vsre_ros.core.answers import Query, Status
    from vsre_ros.core.config import EngineConfig
    from vsre_ros.core.engine import Engine, load_model

    # The frozen parts load straight in the dtype asked for (no fp16 copy on the way).
    preset_args = {"dtype": args.dtype}
    if args.paths_file:
        preset_args["paths_file"] = args.paths_file
    t0 = time.perf_counter()
    model = load_model(args.model, preset_args)
    config = EngineConfig(device=args.device, dtype=args.dtype, threads=args.threads)
    engine = Engine(model, config)
    load_s = time.perf_counter() - t0
    device = engine.device
    print(f"model {args.model}: loaded in {load_s:.1f} s on {device} as {engine.dtype}")
    print(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{model.num_image_tokens} image tokens per frame")  # fmt: skip

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(args.questions)]
    queries = [Query(QUESTIONS[i % len(QUESTIONS)], [f]) for i, f in enumerate(frames)]
    prompt_tokens = [
        len(model.prefix_ids(1)) + len(model.suffix_ids(q.question)) + 1 for q in queries
    ]
    engine.answer(queries[:1])  # warm-up (kernels, allocator)
    engine.clear_cache()
    latencies = []
    for query in queries:
        start = time.perf_counter()
        (answer,) = engine.answer([query])
        latencies.append(time.perf_counter() - start)
        if answer.status != Status.OK:
            raise RuntimeError(f"the engine answered {answer.status.name}: {answer.error}")
    engine.clear_cache()
    start = time.perf_counter()
    answers = engine.answer(queries)
    batch_s = time.perf_counter() - start
    if any(a.status != Status.OK for a in answers):
        raise RuntimeError("the engine did not answer every query of the batch")
    figures = {
        "latency_ms_p50": 1000 * statistics.median(latencies),
        "latency_ms_max": 1000 * max(latencies),
        "prompt_tokens_per_s_single": sum(prompt_tokens) / sum(latencies),
        "prompt_tokens_per_s_batch": sum(prompt_tokens) / batch_s,
        "questions_per_s_batch": len(queries) / batch_s,
    }
    print(f"answering {len(queries)} questions (one frame each, new frames, no cache hits):")
    print(f"  one at a time: latency p50 {figures['latency_ms_p50']:.0f} ms, max "
          f"{figures['latency_ms_max']:.0f} ms, {figures['prompt_tokens_per_s_single']:.0f} "
          "prompt tokens/s")  # fmt: skip
    print(f"  all at once:   {figures['questions_per_s_batch']:.2f} questions/s, "
          f"{figures['prompt_tokens_per_s_batch']:.0f} prompt tokens/s")  # fmt: skip
    print(f"  peak memory so far: {_peak_memory(device)}")

    if args.steps:
        model.freeze(2)  # projectors + LoRA; trainable weights become fp32
        model.to(device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        examples = [
            {"images": [frames[i % len(frames)]], "question": QUESTIONS[i % 4], "answer": "yes"}
            for i in range(args.batch_size)
        ]
        batch = model.build_batch(examples)
        inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask", "labels")}
        step_times, losses = [], []
        for _ in range(args.steps):
            start = time.perf_counter()
            loss = model(**inputs).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
        tokens = int(batch["attention_mask"].sum())
        figures["train_step_s"] = statistics.median(step_times)
        figures["train_tokens_per_s"] = tokens / figures["train_step_s"]
        print(f"stage-2 training, {args.steps} steps of {args.batch_size} examples "
              f"({tokens} tokens a step):")  # fmt: skip
        print(f"  {figures['train_step_s']:.2f} s a step (median), "
              f"{figures['train_tokens_per_s']:.0f} tokens/s, loss {losses[0]:.3f} -> "
              f"{losses[-1]:.3f}")  # fmt: skip
        print(f"  peak memory: {_peak_memory(device)}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vsre-paper", help="preset id, model file or dir")
    parser.add_argument("--paths-file", default="", help="vsre-paper's paths YAML")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:1, cpu")
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16, float16, float32")
    parser.add_argument("--questions", type=int, default=16, help="questions to answer")
    parser.add_argument("--steps", type=int, default=3, help="stage-2 steps (0: none)")
    parser.add_argument("--batch-size", type=int, default=2, help="examples per step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.questions < 1:
        parser.error("--questions must be >= 1")
    try:
        check(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
