"""Is model B better than model A on the same questions? The paired difference of two
`vsre evaluate` runs over one dataset split and wording (their `predictions.jsonl`), with a
scene-bootstrap interval: scenes are resampled, and both models' answers about a scene go
with it, so the interval is narrower than two separate ones and honest about shared images.

    python bench/research/paired.py ev/v1-random_test-item ev/new-random_test-item

Prints the difference (B minus A, points) overall and per task, with its 95% interval. Both
runs must have evaluated the same data, split and wording; each prediction is re-scored with
`training.scoring.score`. Figures only: nothing is run.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from vsre_ros.training.items import load_items
from vsre_ros.training.scoring import read_predictions, score

from vsre_ros.core import grammar


def correctness(run: Path) -> tuple[dict, dict[tuple[str, str], bool]]:
    """(report, {(item id, template id): right}) of one evaluation directory."""
    report = json.loads((run / "report.json").read_text())
    items = {item.id: item for item in load_items(report["data"], report["split"])}
    right = {}
    for prediction in read_predictions(run / "predictions.jsonl"):
        scored = score(items[prediction.item_id], prediction)
        right[(prediction.item_id, scored.template_id)] = scored.correct
    return report, {"items": items, "right": right}


def paired(a: dict, b: dict, keys: list, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean of B's minus A's correctness over `keys`, with a scene-bootstrap 95% interval."""
    items = a["items"]
    scene_of = {key: items[key[0]].scene_id or key[0] for key in keys}
    scenes = sorted(set(scene_of.values()))
    index = {s: k for k, s in enumerate(scenes)}
    n, diff = np.zeros(len(scenes)), np.zeros(len(scenes))
    for key in keys:
        k = index[scene_of[key]]
        n[k] += 1
        diff[k] += float(b["right"][key]) - float(a["right"][key])
    draws = np.random.default_rng(seed).integers(0, len(scenes), size=(n_boot, len(scenes)))
    counts = np.stack([np.bincount(d, minlength=len(scenes)) for d in draws])
    boot = (counts @ diff) / np.maximum(counts @ n, 1)
    return {"n": len(keys), "scenes": len(scenes), "a": _mean(a, keys), "b": _mean(b, keys),
            "diff": float(diff.sum() / n.sum()), "lo": float(np.quantile(boot, 0.025)),
            "hi": float(np.quantile(boot, 0.975))}  # fmt: skip


def _mean(run: dict, keys: list) -> float:
    return sum(run["right"][key] for key in keys) / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="evaluation directory of model A (the baseline)")
    parser.add_argument("b", type=Path, help="evaluation directory of model B")
    args = parser.parse_args()
    report_a, a = correctness(args.a)
    report_b, b = correctness(args.b)
    for field in ("data", "split", "templates"):
        if report_a[field] != report_b[field]:
            parser.error(f"the runs differ in {field}: {report_a[field]} / {report_b[field]}")
    shared = sorted(set(a["right"]) & set(b["right"]))
    by_task = defaultdict(list)
    for key in shared:
        by_task[a["items"][key[0]].task].append(key)
    for key in shared:  # grammar wordings: the seen and the held-out (unseen) ones
        framing, _ = grammar.framing_of(key[1])
        if framing:
            seen = grammar.wording_by_id(key[1]).seen
            by_task["wordings seen" if seen else "wordings unseen"].append(key)
    print(f"B ({report_b['model']}) minus A ({report_a['model']}) on {report_a['data']} "
          f"{report_a['split']}, wording {report_a['templates']}; points, 95% scene-bootstrap "
          "interval")  # fmt: skip
    print("| group | n | A | B | B - A [95%] |\n|---|---:|---:|---:|---|")
    for name, keys in [("all", shared), *sorted(by_task.items())]:
        r = paired(a, b, keys)
        a_pct, b_pct, diff, lo, hi = (100 * r[k] for k in ("a", "b", "diff", "lo", "hi"))
        interval = f"{diff:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        print(f"| {name} | {r['n']} | {a_pct:.1f} | {b_pct:.1f} | {interval} |")


if __name__ == "__main__":
    main()
