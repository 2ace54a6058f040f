"""Held-out accuracy at the end of runs of several lengths, for two or more model sizes, and
what the curves predict (issue 24: "measure accuracy against samples for at least two model
sizes, and say what the curve predicts").

    PYTHONPATH=. python bench/research/scaling.py \\
        S1=runs/f16/S1/export:ev/f16-S1 S1=runs/f8/S1/export:ev/f8-S1 \\
        S2=runs/f16/S2/export:ev/f16-S2 S2=runs/f8/S2/export:ev/f8-S2 \\
        --rate S1=46 --rate S2=20 --target relation=0.92 --target all=0.9 --out scaling.png

Each point is LABEL=MODEL:EVAL: an exported model (its `training_metrics.jsonl` gives the
samples it trained on: each stage's last step times its batch, summed; or the count itself,
for a model directory without that file) and a `vsre evaluate`
directory of it (`report.json`: accuracy with its scene-bootstrap interval, overall and per
task). Points of one label are one model size at several budgets; the runs behind them are the
shipped recipe with every stage's steps divided alike (`vsre train-default --steps-a ...`,
docs/recipes-tried.md, "Accuracy against samples"). End-of-run points are the clean curve: a
run's own val points mix stages that train on narrower task mixes than the test asks.

Per label and measure it fits accuracy = a + b log10(samples) and prints the samples (and
hours at `--rate`, samples per second) at which the line reaches each `--target`, with a 95%
interval from refitting to draws of each point within its own interval. A straight line in
log samples predicts a trend, not a ceiling: curves of this kind bend down, so a predicted
budget is a lower bound. With points at four budgets or more it also fits a curve that levels
off, accuracy = c - d (samples / 1e5)^-alpha, and prints its level c with the same kind of
interval: a target above that interval is out of the size's reach at any budget. With
`--long-end N` it also fits the line to the points of N samples or more alone: the small
budgets set the whole-range slope, and the long end alone can be flat where that line is
steep. Figures only: nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np


def samples(model: Path) -> int:
    """Training samples of an exported model: per stage, its last step times its batch. (A
    row's `samples` counts from the start of the run that trained it, and a model exported
    `--from-export` holds two runs' rows: the batch is read from a stage's own rows.)"""
    rows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for line in (model / "training_metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "samples" in row and "step" in row:
            rows[row["stage"]].append((int(row["step"]), int(row["samples"])))
    total = 0
    for points in rows.values():
        (s0, n0), (s1, n1) = points[0], points[-1]
        batch = (n1 - n0) / (s1 - s0) if s1 > s0 else 16
        total += round(s1 * batch)
    return total


def measures(report: dict) -> dict[str, tuple[float, float, float]]:
    """{measure: (accuracy, lo, hi)} from a report's scene-bootstrap intervals: all, and each
    task."""
    intervals = report["intervals"]
    out = {"all": intervals["all"]}
    out.update(intervals["by_task"])
    return {k: (v["accuracy"], v["lo"], v["hi"]) for k, v in out.items()}


def fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """a, b of y = a + b x (b = 0 when x has one value)."""
    if np.ptp(x) == 0:
        return float(y.mean()), 0.0
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def arrays(points: list[tuple[int, tuple[float, float, float]]]) -> tuple[np.ndarray, ...]:
    """Samples, accuracies and the standard deviation each point's 95% interval implies."""
    n = np.array([n for n, _ in points], dtype=float)
    y = np.array([acc for _, (acc, _, _) in points])
    sd = np.array([max(hi - lo, 1e-6) / 3.92 for _, (_, lo, hi) in points])
    return n, y, sd


def refits(points: list[tuple[int, tuple[float, float, float]]], draws: int,
           seed: int) -> tuple[tuple[float, float], list[tuple[float, float]]]:  # fmt: skip
    """The line (a, b) in log10 samples through the points, and its refits to `draws` draws
    of each point from a normal whose 95% interval is the point's own."""
    n, y, sd = arrays(points)
    x = np.log10(n)
    rng = np.random.default_rng(seed)
    return fit(x, y), [fit(x, rng.normal(y, sd)) for _ in range(draws)]


def quantiles(values: list[float]) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles of `values` (nearest rank)."""
    ranked = np.sort(values)
    last = len(ranked) - 1
    return float(ranked[round(0.025 * last)]), float(ranked[round(0.975 * last)])


def needed(a: float, b: float, target: float) -> float:
    """log10 samples where a + b log10(samples) reaches target (inf when it never rises)."""
    return (target - a) / b if b > 0 else math.inf


def predict(points: list[tuple[int, tuple[float, float, float]]], target: float,
            draws: int = 2000, seed: int = 0) -> tuple[float, float, float, float]:  # fmt: skip
    """(b per decade, log10 samples needed, and its 2.5% / 97.5% quantiles over refits to draws
    of each point from a normal whose 95% interval is the point's own)."""
    (a, b), sims = refits(points, draws, seed)
    lo, hi = quantiles([needed(*sim, target) for sim in sims])  # inf sorts last
    return b, needed(a, b, target), lo, hi


def slope(points: list[tuple[int, tuple[float, float, float]]], draws: int = 2000,
          seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """The line's points per decade, with its 2.5% / 97.5% quantiles over refits to draws of
    each point within its own interval."""
    (_, b), sims = refits(points, draws, seed)
    return (b, *quantiles([sim[1] for sim in sims]))


def saturating(n: np.ndarray, c: float, d: float, alpha: float) -> np.ndarray:
    """accuracy = c - d (n / 1e5)^-alpha: rising, and levelling off at c."""
    return c - d * (n / 1e5) ** -alpha


def ceiling(points: list[tuple[int, tuple[float, float, float]]], draws: int = 500,
            seed: int = 0) -> tuple[float, float, float] | None:  # fmt: skip
    """The level c a saturating curve fitted to the points approaches, with the 2.5% / 97.5%
    quantiles over refits to draws of each point within its interval (None below 4 budgets:
    three parameters need a spare point)."""
    if len({n for n, _ in points}) < 4:
        return None
    x, y, sd = arrays(points)
    rng = np.random.default_rng(seed)
    sims = np.array([fit_saturating(x, rng.normal(y, sd))[0] for _ in range(draws)])
    lo, hi = np.nanquantile(sims, [0.025, 0.975])
    return fit_saturating(x, y)[0], float(lo), float(hi)


def fit_saturating(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """c, d, alpha of `saturating` fitted to (samples, accuracy); NaNs when no fit converges."""
    from scipy.optimize import curve_fit

    bounds = ([0.0, 0.0, 0.01], [1.0, 5.0, 3.0])
    try:
        return curve_fit(saturating, x, y, p0=(y.max(), 0.2, 0.5), bounds=bounds, maxfev=20000)[0]
    except RuntimeError:
        return np.full(3, math.nan)


def _budget(log_n: float, rate: float) -> str:
    if not math.isfinite(log_n):
        return "never (the line does not rise)"
    n = 10**log_n
    hours = f", {n / rate / 3600:,.0f} h at {rate:g}/s" if rate else ""
    return f"{n:,.3g} samples{hours}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", nargs="+", metavar="LABEL=MODEL:EVAL")
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="MEASURE=ACCURACY",
        help="a measure (all, or a task: relation, compare, ...) and the accuracy to predict "
        "the budget of (repeatable; default relation=0.92, issue 24's floor)",
    )
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="LABEL=SAMPLES_PER_SECOND",
        help="a label's training throughput, to turn samples into hours (bench_train.py)",
    )
    parser.add_argument(
        "--long-end",
        type=int,
        default=0,
        metavar="SAMPLES",
        help="also fit the line to the points of at least this many samples alone: the slope "
        "where the runs stop, which the low budgets dominate in the whole-range fit",
    )
    parser.add_argument("--out", default="", help="plot to this PNG")
    args = parser.parse_args()
    targets = dict(t.split("=") for t in args.target) or {"relation": "0.92"}
    rates = {k: float(v) for k, v in (r.split("=") for r in args.rate)}
    series: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for spec in args.points:
        label, _, rest = spec.partition("=")
        model, _, ev = rest.rpartition(":")
        report = json.loads((Path(ev) / "report.json").read_text())
        n = int(model) if model.isdigit() else samples(Path(model))
        series[label].append((n, measures(report)))
    names = sorted({m for pts in series.values() for _, ms in pts for m in ms})
    names.remove("all")
    names.insert(0, "all")
    print("| size | samples | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for label, pts in series.items():
        pts.sort(key=lambda p: p[0])
        for n, ms in pts:
            cells = [
                f"{ms[m][0]:.1%} [{ms[m][1]:.1%}, {ms[m][2]:.1%}]" if m in ms else "-"
                for m in names
            ]
            print(f"| {label} | {n:,d} | " + " | ".join(cells) + " |")
    print()
    for measure, target in targets.items():
        for label, pts in series.items():
            got = [(n, ms[measure]) for n, ms in pts if measure in ms]
            if len({n for n, _ in got}) < 2:
                print(f"{label} {measure}: needs points at two budgets")
                continue
            b, log_n, lo, hi = predict(got, float(target))
            rate = rates.get(label, 0.0)
            print(
                f"{label} {measure}: {b:+.1%} per 10x samples; {float(target):.0%} at "
                f"{_budget(log_n, rate)} [95%: {_budget(lo, rate)} .. {_budget(hi, rate)}]"
            )
            long_end = [(n, v) for n, v in got if n >= args.long_end] if args.long_end else []
            if len({n for n, _ in long_end}) >= 2:
                b, lo, hi = slope(long_end)
                print(
                    f"{label} {measure} from {args.long_end:,d} samples ({len(long_end)} "
                    f"points): {b:+.1%} per 10x samples [95%: {lo:+.1%} .. {hi:+.1%}]"
                )
            level = ceiling(got)
            if level:
                print(
                    f"{label} {measure}: a saturating fit levels off at {level[0]:.1%} "
                    f"[95%: {level[1]:.1%} .. {level[2]:.1%}]"
                )
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = list(dict.fromkeys(["all", *targets]))
        fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 3.8), squeeze=False)
        for ax, measure in zip(axes[0], shown, strict=True):
            for label, pts in series.items():
                got = [(n, ms[measure]) for n, ms in pts if measure in ms]
                x = np.array([n for n, _ in got])
                y = np.array([v[0] for _, v in got])
                err = [y - np.array([v[1] for _, v in got]), np.array([v[2] for _, v in got]) - y]
                line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
                xs = np.logspace(np.log10(x.min()), np.log10(x.max()) + 1, 40)
                if len(set(x)) >= 4:  # the curve that levels off
                    params = fit_saturating(x.astype(float), y)
                    ax.plot(xs, saturating(xs, *params), ls="--", color=line[0].get_color())
                elif len(set(x)) > 1:  # the straight line in log samples
                    a, b = fit(np.log10(x), y)
                    fitted = np.clip(a + b * np.log10(xs), 0.0, 1.0)
                    ax.plot(xs, fitted, ls=":", color=line[0].get_color())
            if measure in targets:
                ax.axhline(float(targets[measure]), color="grey", lw=0.8, ls="--")
            ax.set_ylim(top=1.0)
            ax.set_xscale("log")
            ax.set_xlabel("training samples")
            ax.set_title(f"{measure} (held out)")
            ax.grid(alpha=0.3)
            ax.legend()
        axes[0][0].set_ylabel("accuracy")
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
