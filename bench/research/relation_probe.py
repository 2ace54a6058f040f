"""Where does a trained model lose the binary relations? Prints, per relation, the model's
answer accuracy beside the accuracy of a linear probe on its own hidden state.

    PYTHONPATH=. python bench/research/relation_probe.py --model vsre_ros/models/vsre-tiny \
        --data runs/vsre-tiny/data --threads 2

For relation items of `random_val` (one image, two named objects), the model is run once on
each item's own question; the hidden state at the answer position after one LM layer
(`--layer`, the recipe's hop-2 layer by default) is kept. A logistic-regression probe per
relation (the relation bank's targets: every generated relation's truth for that pair,
decided by the simulator) is fitted on the first part of the items and scored on the rest.

Both are balanced over True and False (the asked items are balanced by construction).

- probe accuracy high, answer accuracy low: the pair's geometry reaches the answer position,
  and the last layers fail to pick the bit the relation word names;
- both low: the geometry never gets there (perception or binding).

The last line splits the answers by the form the question asks for: a yes/no word, or a
letter (two options, the statement or its negation first). A letter is the statement's truth
exclusive-or its option's place, so a model that knows the truth can still be at chance there.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm
from vsre_ros.training.data import ask
from vsre_ros.training.items import load_items
from vsre_ros.training.model_api import answer_examples, collate, image_cache
from vsre_ros.training.recipes.targets import BANK, LayerOutput, TargetBuilder
from vsre_ros.training.scoring import score

from vsre_ros.core.model import VSREModel


def states_and_truths(model, items, layer: int, batch_size: int):
    builder = TargetBuilder(model)
    hook = LayerOutput(model, layer)
    cache = image_cache(model)
    states, truths, kept = [], [], []
    try:
        for start in tqdm(range(0, len(items), batch_size), desc="states", unit="batch"):
            chunk = [ask(i) for i in items[start : start + batch_size]]
            rows = [(k, builder.bank(ex)) for k, ex in enumerate(chunk)]
            rows = [(k, t) for k, t in rows if t is not None]
            if not rows:
                continue
            batch = collate(model, chunk, cache)
            with torch.no_grad():
                inputs = ("pixel_values", "input_ids", "attention_mask")
                model(**{k: batch[k] for k in inputs})
            pos = batch["answer_start"] - 1
            for k, truth in rows:
                states.append(hook.states[k, pos[k]].float().numpy())
                truths.append(truth)
                kept.append(items[start + k])
    finally:
        hook.remove()
    return np.stack(states), np.stack(truths), kept


def probe_accuracy(x: np.ndarray, y: np.ndarray, n_fit: int, epochs: int = 300) -> np.ndarray:
    """Held-out balanced accuracy (the mean of the True and the False pairs' accuracies, so
    always-False scores 50% however rare True is) of one logistic regression per column of y;
    nan where the held-out pairs are never both True and False."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    xt = (xt - xt[:n_fit].mean(0)) / xt[:n_fit].std(0).clamp_min(1e-6)
    yt = torch.as_tensor(y, dtype=torch.float32)
    known = torch.isfinite(yt)
    w = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    b = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    fit = known.clone()
    fit[n_fit:] = False
    # Each column's True and False pairs weigh the same, as the balanced accuracy counts them.
    y0 = torch.nan_to_num(yt)
    pos = (y0 * fit).sum(0).clamp_min(1)
    neg = ((1 - y0) * fit).sum(0).clamp_min(1)
    weight = torch.where(y0 > 0.5, 0.5 / pos, 0.5 / neg) * fit
    for _ in range(epochs):
        logits = xt @ w + b
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits, y0, reduction="none")
            * weight
        ).sum() / y.shape[1] + 1e-4 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = ((xt @ w + b) > 0).float() == yt
    test = known.clone()
    test[:n_fit] = False
    recalls = []
    for value in (0.0, 1.0):
        group = test & (yt == value)
        recalls.append((right & group).sum(0).float() / group.sum(0).clamp_min(1))
        recalls[-1][group.sum(0) == 0] = float("nan")
    return ((recalls[0] + recalls[1]) / 2).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="saved model directory")
    parser.add_argument("--data", required=True, help="dataset directory (train-default's)")
    parser.add_argument("--items", type=int, default=6000, help="random_val relation items")
    parser.add_argument("--layer", type=int, default=2, help="LM layer read (2: hop 2's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = VSREModel.from_pretrained(args.model).eval()
    items = [
        i
        for i in load_items(args.data, "random_val")
        if i.task == "relation" and len(i.images) == 1 and i.relation in BANK
    ][: args.items]
    x, y, items = states_and_truths(model, items, args.layer, 32)
    n_fit = int(0.7 * len(items))
    probe = probe_accuracy(x, y, n_fit)
    test = items[n_fit:]
    predictions = answer_examples(model, [ask(i) for i in test], batch_size=32, progress=False)
    answered: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    forms: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for item, pred in zip(test, predictions, strict=True):
        right = int(score(item, pred).correct)
        answered[item.relation][0] += right
        answered[item.relation][1] += 1
        form = "letter" if item.options else "yes/no word"
        forms[form][0] += right
        forms[form][1] += 1
    print(f"{len(items)} items ({n_fit} fit the probes); layer {args.layer}\n")
    print("| relation | asked (n) | answer accuracy | probe balanced accuracy |")
    print("|---|---:|---:|---:|")
    order = sorted(BANK, key=lambda r: -answered[r][1])
    for rel in order:
        ok, n = answered[rel]
        acc = f"{ok / n:.1%}" if n else "-"
        print(f"| {rel} | {n} | {acc} | {probe[BANK.index(rel)]:.1%} |")
    total = sum(v[1] for v in answered.values())
    weighted = sum(
        probe[BANK.index(r)] * answered[r][1]
        for r in BANK
        if answered[r][1] and np.isfinite(probe[BANK.index(r)])
    )
    answers = sum(v[0] for v in answered.values()) / max(1, total)
    probed = weighted / max(1, total)
    print(f"| all (weighted by asked) | {total} | {answers:.1%} | {probed:.1%} |")
    print(
        "\nanswer accuracy by answer form: "
        + ", ".join(f"{form} {ok / n:.1%} of {n}" for form, (ok, n) in sorted(forms.items()))
    )


if __name__ == "__main__":
    main()
