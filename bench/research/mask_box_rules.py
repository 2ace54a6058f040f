"""Which pieces of a mask head's probability map make an object's box? The rule
`core.grounding.mask_box` uses against the ones it was chosen over, on held-out frames:

    PYTHONPATH=. python bench/research/mask_box_rules.py --seed 505 --frames 150
    PYTHONPATH=. python bench/research/mask_box_rules.py --seed 202 --frames 150

For every object a question may name in each frame (`training.grounding.visible_objects`), the
embedded model's head draws the object's map once; each rule turns the map into a box, and the
share of boxes with IoU >= 0.5 against the object's mask box is printed per rule (with a 95%
Wilson interval). Seed 505 chose the rule; 202 is the seed `vsre grounding eval` reports on.
The pieces are the connected parts of the map above MASK_THRESHOLD (or half the peak).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from vsre_ros.training.grounding import image_tokens, render, visible_objects, wilson

from vsre_ros.core.grounding import MASK_THRESHOLD, iou, mask_box, phrase_embeddings


def pieces_box(prob: np.ndarray, main: str, keep: float, gap: int | None) -> tuple:
    """The box of a map's pieces: the `main` one ("largest" by mass, or "surest" by peak), with
    the others of at least `keep` of its mass at most `gap` pixels from it (None: anywhere)."""
    from scipy import ndimage

    labels, n = ndimage.label(prob > min(MASK_THRESHOLD, float(prob.max()) / 2))
    mask = labels > 0
    if n > 1:
        ids = np.arange(1, n + 1)
        mass = ndimage.sum_labels(prob, labels, ids)
        rank = mass if main == "largest" else ndimage.maximum(prob, labels, ids)
        first = 1 + int(np.argmax(rank))
        near = labels > 0
        if gap is not None:
            near = ndimage.binary_dilation(labels == first, iterations=gap + 1)
        kept = [i for i in np.unique(labels[near]) if i and mass[i - 1] >= keep * mass[first - 1]]
        mask = np.isin(labels, kept + [first])
    rows, cols = np.nonzero(mask)
    h, w = prob.shape
    return (cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h)


RULES = {
    "every piece of 1/4 the largest's mass (before session 15)": ("largest", 0.25, None),
    "the largest piece only": ("largest", 2.0, None),
    "the surest piece only": ("surest", 2.0, None),
    "the surest piece, pieces 2 px from it": ("surest", 0.25, 2),
    "the surest piece, pieces 8 px from it": ("surest", 0.25, 8),
    "the surest piece, pieces 16 px from it": ("surest", 0.25, 16),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vsre_ros/models/vsre-tiny", help="model directory")
    parser.add_argument("--seed", type=int, default=505, help="generation seed of the frames")
    parser.add_argument("--frames", type=int, default=150, help="frames to render")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from vsre_ros.core.model import VSREModel

    model = VSREModel.from_pretrained(args.model).eval()
    head = model.heads["grounding"]
    maps = []
    with torch.inference_mode():
        for frame in render(args.seed, args.frames):
            objects = visible_objects(frame)
            if not objects:
                continue
            tokens = image_tokens(model, [frame.rgb])
            image = head.image_part(tokens, head.frame_inputs([frame.rgb]))
            phrases = head.phrase_part(phrase_embeddings(model, [name for name, _, _ in objects]))
            logits = head.logits(image, phrases)[:, None].float()
            probs = torch.sigmoid(F.interpolate(logits, (head.side, head.side), mode="bilinear"))
            maps += [(p[0].numpy(), box) for p, (_, _, box) in zip(probs, objects, strict=True)]
    print(f"seed {args.seed}: {len(maps)} objects in {args.frames} frames; IoU >= 0.5 [95%]:")
    rules = {name: lambda p, r=rule: pieces_box(p, *r) for name, rule in RULES.items()}
    rules["`mask_box` (this tree)"] = lambda p: mask_box(p)[0]
    for name, rule in rules.items():
        hits = sum(iou(rule(p), box) >= 0.5 for p, box in maps)
        lo, hi = wilson(hits, len(maps))
        print(f"  {name:58s} {100 * hits / len(maps):5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")


if __name__ == "__main__":
    main()
