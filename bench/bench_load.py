"""Peak memory of loading a real-size checkpoint, over the checkpoint's bytes.

Writes (once, then reused) a random fp16 Llama of about 370M parameters in the hub layout:
safetensors shards with `model.safetensors.index.json`, written tensor by tensor. Then, each
in a fresh process, measures the peak resident memory above the process's baseline (after
imports) of:
  preset   VSREModel built from a config naming that directory (transformers' loader, in the
           checkpoint's dtype);
  saved    VSREModel.from_pretrained of the same model saved by save_pretrained (built on the
           meta device, the file's tensors assigned as they are read).
Target: peak / checkpoint bytes <= 1.3 for both.

    python bench/bench_load.py [--dir /tmp/vsre-bench-load] [--layers 24]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

TARGET = 1.3


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def write_checkpoint(root: Path, layers: int) -> Path:
    """A LlamaForCausalLM-layout fp16 checkpoint in 4 shards, never whole in memory."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from vsre_ros.core.tokenizer import train_bpe

    lm_dir = root / "lm"
    if (lm_dir / "model.safetensors.index.json").is_file():
        return lm_dir
    lm_dir.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        dtype="float16",
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(str(lm_dir))
    train_bpe(1024).save_pretrained(str(lm_dir))
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{name}.weight"] = (h, h)
        shapes[f"{p}mlp.gate_proj.weight"] = (f, h)
        shapes[f"{p}mlp.up_proj.weight"] = (f, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, f)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    names = list(shapes)
    n_shards = 4
    per = -(-len(names) // n_shards)
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for s in range(n_shards):
        file = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        shard = {}
        for name in names[s * per : (s + 1) * per]:
            shape = shapes[name]
            if len(shape) == 1:
                shard[name] = torch.ones(shape, dtype=torch.float16)
            else:
                shard[name] = (torch.randn(shape, generator=gen) * 0.02).half()
            weight_map[name] = file
            total += shard[name].numel() * 2
        save_file(shard, str(lm_dir / file), metadata={"format": "pt"})
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (lm_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return lm_dir


def _config(lm_dir: Path):
    from vsre_ros.core.config import EncoderConfig, LMConfig, ModelConfig

    vit = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    return ModelConfig(
        name="bench-load",
        encoders=[EncoderConfig("clip", hf_config=vit)],
        projector_depth=2,
        lm=LMConfig(family="llama", path=str(lm_dir)),
        tokenizer="lm",
    )


def child(mode: str, root: Path) -> None:
    """Runs in a fresh process: prints {"base": MB, "peak": MB} as JSON."""
    import torch

    from vsre_ros.core.model import VSREModel

    torch.set_num_threads(1)
    # Warm up: the same code paths on a tiny saved model import every module first, so the
    # baseline holds the libraries and the peak above it is the model's.
    VSREModel.from_pretrained(root / "tiny")
    base = _rss_mb()
    if mode == "preset":
        model = VSREModel(_config(root / "lm"))
    else:
        model = VSREModel.from_pretrained(root / "saved")
    dtype = str(model.dtype)
    with torch.no_grad():  # read every weight once: lazily mapped pages become resident
        for param in model.parameters():
            param.sum()
    print(json.dumps({"base": base, "peak": _peak_mb(), "dtype": dtype}))


def _measure(mode: str, root: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--dir", str(root)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def stage_output(root: Path, lm_dir: Path) -> None:
    """What a stage-1 output (`save_pretrained(standalone=False)`) weighs against what the
    stage trained, and against a standalone save."""
    from vsre_ros.core.model import VSREModel

    model = VSREModel(_config(lm_dir))
    model.freeze(1)
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    out = model.save_pretrained(root / "stage1-final", standalone=False)
    weights = (out / "model.safetensors").stat().st_size
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"stage output: weights file {weights / 2**20:.2f} MB for {trained / 2**20:.2f} MB "
        f"of trained parameters ({weights / trained:.2f}x); whole directory "
        f"{total / 2**20:.2f} MB (tokenizer, config); the frozen LM "
        f"({sum(p.stat().st_size for p in lm_dir.glob('*.safetensors')) / 2**20:.0f} MB) "
        "is referenced, not copied"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/vsre-bench-load", help="checkpoint cache dir")
    parser.add_argument("--layers", type=int, default=24, help="Llama layers (24: ~370M)")
    parser.add_argument("--child", choices=["preset", "saved"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.dir)
    if args.child:
        child(args.child, root)
        return 0
    lm_dir = write_checkpoint(root, args.layers)
    ckpt = sum(p.stat().st_size for p in lm_dir.glob("*.safetensors"))
    if not (root / "saved" / "model.safetensors").is_file():
        from vsre_ros.core.model import VSREModel

        VSREModel(_config(lm_dir)).save_pretrained(root / "saved")
    saved = (root / "saved" / "model.safetensors").stat().st_size
    if not (root / "tiny" / "model.safetensors").is_file():
        from vsre_ros.core.config import tiny_lm
        from vsre_ros.core.model import VSREModel

        tiny = _config(lm_dir)
        tiny.lm, tiny.tokenizer = tiny_lm(hidden=32, layers=1, heads=2, ffn=64), "bpe"
        VSREModel(tiny).save_pretrained(root / "tiny")
    params = ckpt / 2
    print(f"checkpoint: {lm_dir} ({params / 1e6:.0f}M fp16 parameters, 4 shards)")
    print(f"{'load':<8} {'file MB':>9} {'peak MB':>9} {'ratio':>7}  dtype")
    ok = True
    for mode, size in (("preset", ckpt), ("saved", saved)):
        got = _measure(mode, root)
        extra = got["peak"] - got["base"]
        ratio = extra * 2**20 / size
        ok &= ratio <= TARGET
        print(f"{mode:<8} {size / 2**20:>9.0f} {extra:>9.0f} {ratio:>7.2f}  {got['dtype']}")
    print(f"target: peak above baseline <= {TARGET}x the file: {'met' if ok else 'NOT met'}")
    stage_output(root, lm_dir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
