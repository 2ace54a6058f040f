"""The verdict bias: one log-odds shift fitted on validation yes/no items so that the share of
yes answers matches the share of true labels (the answer-bias finding of the VSRE paper)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from ..items import load_items
from .data import sample

log = logging.getLogger(__name__)


def _log_odds(p: float, eps: float = 1e-6) -> float:
    return math.log(max(p, eps) / max(1.0 - p, eps))


def fit_verdict_bias(p_yes: Sequence[float], truth: Sequence[bool]) -> float:
    """The log-odds shift that makes the share of yes answers equal the share of true labels.

    Items are ranked by their yes log-odds; the shift puts the decision boundary halfway between
    the last item that should answer yes and the first that should not, so ties aside exactly
    round(rate * n) answers become yes. Only the rate is fitted (one number), never which items.
    """
    if not p_yes or len(p_yes) != len(truth):
        raise ValueError("fit_verdict_bias needs one label per probability, and at least one")
    z = sorted(map(_log_odds, p_yes), reverse=True)
    k = round(sum(map(bool, truth)) / len(truth) * len(z))
    if k == 0:
        return -(z[0] + 1.0)
    if k == len(z):
        return -(z[-1] - 1.0)
    return -(z[k - 1] + z[k]) / 2.0


def calibrate_verdict(model, data: Path, limit: int, out: Path, seed: int) -> dict | None:
    """Fit `model.config.verdict_bias` on the yes/no items of a seeded `random_val` sample and
    set it. Returns the fitted bias with the predicted-yes rate before and after, and the labels'
    true rate; None (bias left at 0) when the split has no labelled yes/no item. The test splits
    are never looked at."""
    from vsre_ros.core.answers import AnswerKind

    from ..evaluate import build_examples, resolve_templates
    from ..model_api import answer_examples

    items = [
        i
        for i in load_items(data, "random_val")
        if i.kind is AnswerKind.YES_NO and i.truth is not None
    ]
    items = sample(items, limit, seed)
    model.config.verdict_bias = 0.0
    if not items:
        log.warning("no labelled yes/no item in %s/random_val.jsonl: verdict bias left at 0", data)
        return None
    examples = build_examples(items, resolve_templates("item"))
    predictions = answer_examples(model, examples, batch_size=32, progress=False)
    p_yes = [p.probability for p in predictions]
    truth = [bool(ex.truth) for ex in examples]
    bias = fit_verdict_bias(p_yes, truth)
    model.config.verdict_bias = bias
    result = {"items": len(items), "bias": bias, "true_rate": sum(truth) / len(truth)}
    for when, shift in (("before", 0.0), ("after", bias)):
        yes = [_log_odds(p) + shift >= 0 for p in p_yes]
        result[f"predicted_yes_rate_{when}"] = sum(yes) / len(yes)
        result[f"accuracy_{when}"] = sum(y == t for y, t in zip(yes, truth, strict=True)) / len(
            yes
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(result, indent=2))
    return result
