"""Scoring one prediction against one item, the way the public benchmarks do it.

The rules and parsers are `vsre_ros.core.answers`' (the demo's too): yes/no answers follow
VLMEvalKit's rule, in the answer words of the wording the question was asked through ("yes" only
if the yes word appears and the no word does not, "no" the reverse, anything else is Unknown and
wrong); numbers are parsed with their unit into metres and count as right within a factor of 2
of the truth (VQASynth), and also get a mean relative accuracy.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from vsre_ros.core.answers import (
    AnswerKind,
    Vocabulary,
    canonical,
    number_correct,
    parse_number,
    parse_yes_no,
)

from .items import ALL_TEMPLATES, Item

# Thresholds of mean relative accuracy: right at theta if |pred - gt| / gt < 1 - theta.
MRA_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))

_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


@dataclass
class Prediction:
    """A model's answer to one item, asked through one template."""

    item_id: str  # id of the item answered
    text: str = ""  # the answer as text
    template_id: str = ""  # template the question was asked through ("" = the item's question)
    probability: float | None = None  # yes/no: P(yes); other kinds: confidence; None if unknown
    value: float | None = None  # number answers: the value, if the model gave one directly

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Prediction:
        if "item_id" not in data:
            raise ValueError(f"prediction row without 'item_id': {json.dumps(data)[:200]}")
        return cls(**data)


def read_predictions(path: str | Path) -> list[Prediction]:
    with open(path, encoding="utf-8") as handle:
        return [Prediction.from_json(json.loads(line)) for line in handle if line.strip()]


def write_predictions(path: str | Path, predictions: list[Prediction]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for prediction in predictions:
            handle.write(json.dumps(prediction.to_json()) + "\n")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, words single-spaced."""
    return " ".join(_WORD.findall(text.lower()))


def answer_words(template_id: str) -> tuple[str, str]:
    """(yes word, no word) of a template; ("yes", "no") for the item's own question."""
    template = ALL_TEMPLATES.get(template_id)
    if template is None:
        return "yes", "no"
    return template.yes.lower(), template.no.lower()


def _number(text: str) -> float | None:
    """The first number of a text in its canonical unit (metres for lengths), None if none."""
    parsed = parse_number(text)
    return None if parsed is None else parsed[0]


def relative_accuracy(pred: float | None, truth: float) -> float:
    """Mean relative accuracy: the share of thresholds at which the relative error is small."""
    if pred is None or not math.isfinite(pred):
        return 0.0
    if truth == 0:
        return float(pred == 0)
    error = abs(pred - truth) / abs(truth)
    return sum(error < 1.0 - t for t in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


@dataclass
class Scored:
    """One prediction scored against its item."""

    item: Item  # the item
    prediction: Prediction  # the prediction
    template_id: str  # template actually used
    correct: bool  # whether the answer is right under the kind's rule
    answer: str  # the prediction normalised for comparisons (consistency): "yes", "no", ...
    verdict: bool | None = None  # binary: parsed polarity, None for Unknown
    value: float | None = None  # number: parsed value
    mra: float | None = None  # number: mean relative accuracy
    binary: bool = False  # scored by polarity (yes/no, or a relation as a two-option choice)


def choice_answer(text: str, options: list[str]) -> str:
    """The option a free-form answer names: exact match first, else the only option mentioned."""
    said = normalize(text)
    normalized = [normalize(o) for o in options]
    if said in normalized:
        return said
    mentioned = [o for o in normalized if o and re.search(rf"\b{re.escape(o)}\b", said)]
    return mentioned[0] if len(mentioned) == 1 else said


def score(item: Item, prediction: Prediction) -> Scored:
    """Score one prediction under the rule of the item's answer kind."""
    template_id = prediction.template_id or item.template_id
    kind = item.kind
    if item.truth is not None and (item.binary or template_id in ALL_TEMPLATES):
        # A binary item (yes/no, or a relation asked as a two-option choice): scored by
        # polarity, in the answer words of the template it was asked through.
        vocab = Vocabulary("asked", *answer_words(template_id))
        verdict = parse_yes_no(prediction.text, vocab) if prediction.text.strip() else None
        if verdict is None and not prediction.text.strip() and prediction.probability is not None:
            verdict = prediction.probability >= 0.5
        answer = {True: "yes", False: "no", None: "unknown"}[verdict]
        correct = verdict == item.truth
        return Scored(item, prediction, template_id, correct, answer, verdict, binary=True)
    if kind is AnswerKind.NUMBER:
        value = prediction.value if prediction.value is not None else _number(prediction.text)
        if item.value is not None:
            truth = canonical(item.value, item.unit)[0]
        else:
            truth = _number(item.answer)
        if truth is None:
            raise ValueError(f"number item {item.id!r} has neither a value nor a numeric answer")
        return Scored(
            item,
            prediction,
            template_id,
            number_correct(value, truth),
            "" if value is None else f"{value:g}",
            value=value,
            mra=relative_accuracy(value, truth),
        )
    if kind is AnswerKind.CHOICE:
        said = choice_answer(prediction.text, item.options)
        return Scored(item, prediction, template_id, said == normalize(item.answer), said)
    said = normalize(prediction.text)
    truth = normalize(item.answer)
    if truth in ("yes", "no"):
        verdict = parse_yes_no(prediction.text)
        said = {True: "yes", False: "no", None: said}[verdict]
    return Scored(item, prediction, template_id, said == truth, said)
