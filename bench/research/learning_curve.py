"""Accuracy against training samples for several runs (model sizes), and what the curves predict.

    PYTHONPATH=. python bench/research/learning_curve.py S=runs/curve-S M=runs/curve-M \\
        --samples-per-second 60 --hours 6 --out runs/curves.png

Each argument is LABEL=RUN_DIR (or LABEL=METRICS_FILE, e.g. a model's training_metrics.jsonl):
a `vsre train-default` (or `vsre train`) run whose stages logged `val_acc` (and `val_acc_ema`
with weight averaging) every `val_every` steps; a run still under way gives its points so far. For
each run it prints the val accuracy at each point with a binomial 95% interval (val sets are
small: 96 items give +-10 points), fits accuracy = a + b * log10(samples) to the later half of
the points, and prints what that line predicts for a budget of `--hours` at
`--samples-per-second`, capped at 100%. A log-linear fit over one decade predicts a trend, not
a ceiling: read the prediction as "still rising / flat", with the fit's residual beside it.
Within a curriculum the early stages train on a narrower mix than the val set asks (one
polarity, fewer tasks), and the last stage's lr decay lifts its last points: the clean curve is
the end-of-run accuracy of runs of several lengths, which this prints as each run's last point.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import yaml


def curve(run: Path, averaged: bool = False) -> list[tuple[int, float, str]]:
    """(samples, val accuracy, key) at each val point of a run (a run directory, or a metrics
    file such as a model's training_metrics.jsonl), in training order; with `averaged`, the
    averaged weights' figure where the run has one."""
    train = run / "train" if (run / "train").is_dir() else run
    if run.is_file():
        files = [(run, 16)]
    elif (train / "train_config.yaml").is_file():  # the stages' own files: a run under way too
        stages = yaml.safe_load((train / "train_config.yaml").read_text())["stages"]
        files = [(train / s["name"] / "metrics.jsonl", s["batch_size"]) for s in stages]
    else:  # a finished run of the older loop: one combined file
        files = [(train / "metrics.jsonl", 16)]
    points = []
    for path, batch in files:
        if not path.is_file():
            break
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = "val_acc_ema" if averaged and "val_acc_ema" in row else "val_acc"
            if key in row:
                samples = row.get("samples") or row["global_step"] * batch
                points.append((int(samples), float(row[key]), key))
    return points


def wilson(p: float, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion p over n items."""
    if n <= 0:
        return 0.0, 1.0
    z = 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def fit(points: list[tuple[int, float, str]]) -> tuple[float, float, float]:
    """a, b of accuracy = a + b log10(samples) on the later half of the points, and the RMS
    residual."""
    later = points[len(points) // 2 :]
    x = np.log10([p[0] for p in later])
    y = np.array([p[1] for p in later])
    if len(later) < 2 or np.ptp(x) == 0:
        return float(y.mean()), 0.0, 0.0
    b, a = np.polyfit(x, y, 1)
    residual = float(np.sqrt(np.mean((a + b * x - y) ** 2)))
    return float(a), float(b), residual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--val-items", type=int, default=96, help="items per val point (96)")
    parser.add_argument("--hours", type=float, default=6.0, help="budget predicted for (6)")
    parser.add_argument(
        "--samples-per-second",
        type=float,
        default=60.0,
        help="training throughput of the budget (60: 2 cores at bench_train's 33 samples per "
        "CPU-second with the length window; a larger model trains proportionally slower, so "
        "give each run's own figure with LABEL=RUN_DIR@RATE)",
    )
    parser.add_argument(
        "--averaged",
        action="store_true",
        help="the averaged weights' val accuracy (val_acc_ema), where logged; an average over "
        "the last ~1/(1 - decay) steps lags early in a run, so the default is the weights'",
    )
    parser.add_argument("--out", default="", help="plot to this PNG")
    args = parser.parse_args()
    series = {}
    for spec in args.runs:
        label, _, rest = spec.partition("=")
        path, _, rate = rest.partition("@")
        rate = float(rate) if rate else args.samples_per_second
        points = curve(Path(path), args.averaged)
        if not points:
            print(f"{label}: no val points in {path}")
            continue
        series[label] = points
        print(f"{label} ({path}, {points[-1][2]}):")
        for samples, acc, _ in points:
            lo, hi = wilson(acc, args.val_items)
            print(f"  {samples:>9,d} samples  {acc:6.1%}  [{lo:.1%}, {hi:.1%}]")
        a, b, residual = fit(points)
        budget = args.hours * 3600 * rate
        later = points[len(points) // 2 :]
        rise = b * math.log10(later[-1][0] / later[0][0])  # what the fit moves over its span
        p = later[-1][1]
        noise = 2 * math.sqrt(p * (1 - p) / args.val_items)  # two binomial standard errors
        line = f"  fit on the later half: {a:.3f} + {b:.3f} log10(samples) (RMS {residual:.1%})"
        if rise <= noise:
            print(f"{line}: it rises {rise:+.1%} over its span, inside the val noise "
                  f"(+-{noise:.1%}): flat, no prediction")  # fmt: skip
            continue
        predicted = min(1.0, a + b * math.log10(budget))
        print(
            f"{line}; {b:+.1%} per 10x samples; at {budget:,.0f} samples ({args.hours:g} h at "
            f"{rate:g}/s): {predicted:.1%}"
        )
    if args.out and series:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in series.items():
            x = [p[0] for p in points]
            y = [p[1] for p in points]
            err = np.array([wilson(v, args.val_items) for v in y]).T
            ax.errorbar(x, y, yerr=[np.array(y) - err[0], err[1] - np.array(y)], marker="o",
                        capsize=2, label=label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.set_ylabel("val accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
