"""Side by side, the figures issue 24 sets floors and targets on, read from `vsre evaluate`
reports (report.json), one column per report:

    python bench/research/floors.py v1=ev/v1-random_test-grammar/report.json \\
        v2=ev/v2-random_test-grammar/report.json

Rows: accuracy with its scene-bootstrap interval; binary relations and each VSR
meta-category; each task sighted and its gap over the blind (grey image) baseline; seen
against unseen wordings; consistency across an item's wordings; the predicted-True rate's
worst distance from the true rate over the framings; the perturbation flip rate; metric
answers within x2. A report of `--templates grammar` fills the wording rows; `item` leaves
them at "-". Figures only: nothing is run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vsre_ros.training.report import _pct as pct  # the figures as report.md writes them


def rows(report: dict) -> dict[str, str]:
    """Row label -> cell for one report."""
    out: dict[str, str] = {}
    whole = report["intervals"]["all"]
    out["accuracy [95% scene bootstrap]"] = (
        f"{pct(whole['accuracy'])} [{pct(whole['lo'])}, {pct(whole['hi'])}]"
    )
    out["binary relations"] = pct(report["by"]["task"].get("relation", {}).get("accuracy"))
    for meta, cell in sorted(report["by"].get("meta_category", {}).items()):
        if meta != "(none)":
            out[f"  {meta}"] = pct(cell["accuracy"])
    blind = report["baselines"].get("blind_model", {})  # absent from a --no-blind report
    for task, cell in sorted(blind.get("by_task", {}).items()):
        out[f"task {task}: sighted (gap over blind)"] = (
            f"{pct(cell['sighted'])} ({100 * cell['gap']:+.1f})"
        )
    split = report["wordings"].get("split", {})
    for part in ("seen", "unseen"):
        out[f"{part} wordings"] = pct(split.get(part, {}).get("accuracy"))
    gap = report["wordings"].get("unseen_minus_seen")
    out["unseen minus seen (points)"] = "-" if gap is None else f"{100 * gap:+.1f}"
    consistency = report.get("consistency") or {}
    out["items answered alike under every wording"] = pct(consistency.get("share"))
    framings = [
        f
        for name, f in report["wordings"].get("framing", {}).items()
        if name != "(item question)" and f.get("n", 0) >= 50
    ]
    worst = max(
        (abs(f["predicted_true_rate"] - f["label_true_rate"]) for f in framings), default=None
    )
    out["predicted-True rate: worst distance from the true rate over framings (points)"] = (
        "-" if worst is None else f"{100 * worst:.1f}"
    )
    out["perturbation: answers that flip"] = pct(report.get("perturbation", {}).get("any"))
    out["metric within x2"] = pct(report.get("metric", {}).get("within_factor_2"))
    return out


def table(named: dict[str, dict]) -> str:
    columns = {name: rows(report) for name, report in named.items()}
    labels = list(dict.fromkeys(label for cells in columns.values() for label in cells))
    lines = [
        "| | " + " | ".join(named) + " |",
        "|---|" + "---:|" * len(named),
    ]
    for label in labels:
        cells = [columns[name].get(label, "-") for name in named]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", metavar="NAME=REPORT_JSON")
    args = parser.parse_args(argv)
    named = {}
    for spec in args.reports:
        name, _, path = spec.partition("=")
        named[name] = json.loads(Path(path).read_text())
    print(table(named))


if __name__ == "__main__":
    main()
