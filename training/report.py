"""Writing an evaluation report: `report.json`, `report.md` and PNG plots in one directory."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

PLOTS = ("per_relation.png", "per_template.png", "reliability.png")
MAX_BARS = 80  # most bars in one plot


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)


def _group_table(title: str, cells: dict[str, dict]) -> list[str]:
    lines = [f"### {title}", "", "| group | n | accuracy % |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['n']} | {_pct(v['accuracy'])} |" for k, v in cells.items()]
    return lines + [""]


def markdown(report: dict) -> str:
    """The report as Markdown: a headline table with the baselines, then the breakdowns."""
    title = report.get("model", "predictions")
    lines = [
        f"# Evaluation: {title}",
        "",
        f"Data: `{report.get('data', '?')}` split `{report.get('split', '?')}`; "
        f"{report['n_items']} items, {report['n_predictions']} predictions.",
        "",
        "| row | accuracy % |",
        "|---|---:|",
        f"| model | {_pct(report['accuracy'])} |",
    ]
    baselines = report["baselines"]
    for name, row in baselines.items():
        if isinstance(row, dict):
            lines.append(f"| baseline: {name} | {_pct(row['accuracy'])} |")
    lines += ["", f"Baselines fitted on: {baselines['fitted_on']}.", ""]
    c, b, cal, m, o = (
        report["consistency"],
        report["bias"],
        report["calibration"],
        report["metric"],
        report["overlap"],
    )
    lines += [
        "| measure | value |",
        "|---|---:|",
        f"| instruction consistency % ({c['n_items']} items) | {_pct(c['share'])} |",
        f"| right under every template % | {_pct(c['share_all_correct'])} |",
        f"| predicted-true rate % | {_pct(b['predicted_true_rate'])} |",
        f"| label-true rate % | {_pct(b['label_true_rate'])} |",
        f"| unknown (unparsed yes/no) % | {_pct(b['unknown_rate'])} |",
        f"| precision / recall / F1 | {_num(b['precision'])} / {_num(b['recall'])} / "
        f"{_num(b['f1'])} |",
        f"| ECE ({cal['n']} answers) | {_num(cal['ece'])} |",
        f"| metric: within factor 2 % ({m['n']}) | {_pct(m['within_factor_2'])} |",
        f"| metric: mean relative accuracy | {_num(m['mean_relative_accuracy'])} |",
        f"| train/test overlap (items) | {o['n_overlapping'] if o['checked'] else 'not checked'}"
        f"{' (excluded)' if o['excluded'] else ''} |",
        "",
    ]
    lines += _blind_section(report)
    lines += _wording_section(report)
    lines += _interval_section(report)
    lines += _perturbation_section(report)
    for group, cells in report["by"].items():
        if len(cells) > 1 or group in ("task", "relation"):
            lines += _group_table(f"By {group.replace('_', ' ')}", cells)
    return "\n".join(lines)


def _section(title: str, note: str, columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown section: a title, an optional note and a table (the first column left
    aligned, the others right)."""
    lines = [f"### {title}", ""] + ([note, ""] if note else [])
    lines += ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _blind_section(report: dict) -> list[str]:
    blind = report["baselines"].get("blind_model")
    if not blind or "by_task" not in blind:
        return []
    rows = [
        [
            task,
            row["n"],
            _pct(row["sighted"]),
            _pct(row["blind"]),
            "-" if row["gap"] is None else f"{100 * row['gap']:+.1f}",
            "FLAG" if row["flagged"] else "",
        ]
        for task, row in blind["by_task"].items()
    ]
    note = (
        f"Flagged: a task whose blind accuracy comes within {100 * blind['margin']:.0f} points "
        "of sighted (the image adds little there)."
    )
    columns = ["task", "n", "sighted %", "blind %", "gap (points)", "flag"]
    return _section("Blind baseline (the same questions, grey image)", note, columns, rows)


def _wording_section(report: dict) -> list[str]:
    w = report.get("wordings")
    if not w or not w["framing"]:
        return []
    held = w["held_out"]
    rows = [
        [
            f"{name}: {key}",
            c["n"],
            _pct(c["accuracy"]),
            _pct(c["consistency"]),
            _pct(c["predicted_true_rate"]),
            _pct(c["label_true_rate"]),
        ]
        for name in ("split", "framing", "vocabulary")
        for key, c in w[name].items()
    ]
    note = (
        f"Held out of training: framings {', '.join(held['framings'])}; vocabularies "
        f"{', '.join(held['vocabularies'])}. Consistency: share of answers that agree with the "
        "item's majority verdict over all its wordings."
    )
    if w["unseen_minus_seen"] is not None:
        note += f" Unseen minus seen: {100 * w['unseen_minus_seen']:+.1f} points."
    columns = ["group", "n", "accuracy %", "consistency %", "predicted-true %", "label-true %"]
    return _section("Wordings (binary answers)", note, columns, rows)


def _interval_section(report: dict) -> list[str]:
    ci = report.get("intervals")
    if not ci or not ci.get("all"):
        return []
    cells = [("all", ci["all"])] + [(f"task: {k}", v) for k, v in ci["by_task"].items()]
    cells += [(f"framing: {k}", v) for k, v in ci.get("by_framing", {}).items()]
    rows = [
        [key, c["n"], c["scenes"], _pct(c["accuracy"]), f"{_pct(c['lo'])}-{_pct(c['hi'])}"]
        for key, c in cells
    ]
    columns = ["group", "n", "scenes", "accuracy %", "95% interval"]
    return _section(f"Confidence intervals ({ci['method']})", "", columns, rows)


def _perturbation_section(report: dict) -> list[str]:
    flips = report.get("perturbation")
    if not flips:
        return []
    rows = [[k, _pct(v)] for k, v in flips["by_perturbation"].items()]
    rows.append(["any of them", _pct(flips["any"])])
    title = f"Answers that flip under a perturbation ({flips['n']} questions)"
    return _section(title, "", ["perturbation", "flipped %"], rows)


def _bar(ax, cells: dict[str, dict], title: str, baseline: float | None) -> None:
    names = list(cells)
    ax.bar(range(len(names)), [100 * cells[k]["accuracy"] for k in names], color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title(title)
    if baseline is not None:
        ax.axhline(100 * baseline, color="tab:red", ls="--", lw=1, label="majority baseline")
        ax.legend(fontsize=7)


def plot(report: dict, out_dir: str | Path) -> list[Path]:
    """Per-relation bars, per-template accuracy and the reliability diagram, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    majority = report["baselines"].get("majority", {}).get("accuracy")
    written = []
    # Grammar wordings give each item its own ids; past MAX_BARS templates, plot framings.
    many = len(report["by"]["template"]) > MAX_BARS
    for name, group, title in (
        ("per_relation.png", "relation", "Accuracy per relation"),
        (
            "per_template.png",
            "framing" if many else "template",
            "Accuracy per framing" if many else "Accuracy per instruction template",
        ),
    ):
        cells = report["by"][group]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(cells) + 2), 3.5))
        _bar(ax, cells, title, majority)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    fig, ax = plt.subplots(figsize=(4, 4))
    bins = [b for b in report["calibration"]["bins"] if b["n"]]
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    if bins:
        width = bins[0]["hi"] - bins[0]["lo"]
        ax.bar(
            [b["lo"] for b in bins],
            [b["accuracy"] for b in bins],
            width=width,
            align="edge",
            edgecolor="black",
            alpha=0.7,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {_num(report['calibration']['ece'])})")
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=100)
    plt.close(fig)
    written.append(out_dir / "reliability.png")
    return written


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write report.json, report.md and (optionally) the plots; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(markdown(report), encoding="utf-8")
    written = [out_dir / "report.json", out_dir / "report.md"]
    if plots:
        written += plot(report, out_dir)
    return written
