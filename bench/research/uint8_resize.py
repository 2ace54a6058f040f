"""Does resizing camera frames in uint8 change the shipped model's answers? Counted, not assumed.

    PYTHONPATH=. python bench/research/uint8_resize.py --scenes 30 --sizes 128x128 640x480

`VSREModel.preprocess` resizes each frame to the encoders' 64x64 in uint8 (antialiased
bilinear, rounded to the nearest level: a tenth of the float resize's time at 640x480). This
renders the demo camera's scenes at each size, asks every view-0 question of the demo's kinds
with the engine, once with the model's uint8 resize and once with the float resize it replaced
(the same steps in float32, no rounding), and prints how many answers differ and the largest
change of an answer's probability. The training and evaluation data (64x64 renders) are not
resized at all, so their answers cannot change.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from vsre_ros.training.data import ask
from vsre_ros.training.items import Item
from vsre_ros.training.model_api import query_for

from vsre_ros.core.config import EngineConfig
from vsre_ros.core.engine import Engine
from vsre_ros.core.model import check_image
from vsre_ros.ros.engines import resolve_model_ref
from vsre_ros.ros.params import DemoClientParams


def float_preprocess(model, images):
    """The resize in float32 (what `preprocess` did before), for the squash-path encoders."""
    for i, image in enumerate(images):
        check_image(image, i)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    out = {}
    for name, enc in model.encoders.items():
        size = enc.image_size
        pixels = batch
        if batch.shape[-2:] != (size, size):
            pixels = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
        out[name] = ((pixels.to(model.device) - enc.mean) / enc.std).to(enc.dtype)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--sizes", nargs="+", default=["128x128", "640x480"])
    args = parser.parse_args()
    from vsre_ros.sim_data.dataset import GenConfig, build_scene
    from vsre_ros.sim_data.render import Simulator

    torch.set_num_threads(1)
    ref, note, _ = resolve_model_ref("vsre-tiny")
    config = EngineConfig(device="cpu", trace=False)
    uint8, reference = Engine(ref, config), Engine(ref, config)
    reference.model.preprocess = lambda images: float_preprocess(reference.model, images)
    print(note)
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        gen = GenConfig(seed=0, width=width, height=height)
        changed, asked, largest = 0, 0, 0.0
        with Simulator(width, height) as sim:
            for index in range(args.scenes):
                result = build_scene(sim, gen, index)
                items = [
                    it
                    for it in result.view_items(0)
                    if it["answer_kind"] in DemoClientParams().kinds
                ]
                images = [result.renders[0].rgb]
                queries = [query_for(ask(Item.from_json(it)), images) for it in items]
                for a, b in zip(uint8.answer(queries), reference.answer(queries), strict=True):
                    asked += 1
                    changed += a.text != b.text
                    largest = max(largest, abs(a.probability - b.probability))
        print(
            f"{size}: {asked} questions on {args.scenes} scenes, {changed} answers differ, "
            f"largest probability change {largest:.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
