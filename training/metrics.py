"""The evaluator's numbers: accuracy by group, consistency, bias, calibration, metric answers,
train/test overlap and the baselines a model must beat.

Pure Python and numpy; a report is a plain dict (JSON-ready) built by `evaluate_predictions`.
The unit of scoring is one prediction (an item asked through one template); consistency groups
the predictions of one item across templates.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsre_ros.core import grammar
from vsre_ros.core.answers import AnswerKind

from .items import Item
from .scoring import Prediction, Scored, answer_words, normalize, score

REPORT_SCHEMA = "vsre-eval/1"
GROUPS = (
    "relation", "meta_category", "task", "template", "framing", "vocabulary", "answer_kind",
    "source",
)  # fmt: skip
ITEM_QUESTION = "(item question)"  # the framing of an answer to the item's own question


def wording_of(row: Scored) -> tuple[str, str]:
    """(framing, vocabulary) a row was asked in: a grammar wording's or a VSRE template's
    (core.grammar), else the item's recorded ones, else ITEM_QUESTION."""
    framing, vocabulary = grammar.framing_of(row.template_id) if row.template_id else ("", "")
    if not framing:
        framing = str(row.item.extra.get("framing", "")) or ITEM_QUESTION
        vocabulary = str(row.item.extra.get("vocabulary", "")) or vocabulary
    return framing, vocabulary or "(none)"


def _group_key(row: Scored, group: str) -> str:
    if group == "template":
        return row.template_id or ITEM_QUESTION
    if group == "framing":
        return wording_of(row)[0]
    if group == "vocabulary":
        return wording_of(row)[1]
    return str(getattr(row.item, group)) or "(none)"


def accuracy_by(rows: list[Scored], group: str) -> dict[str, dict]:
    """{group value: {"n", "correct", "accuracy"}} for one of GROUPS, sorted by key."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; known: {', '.join(GROUPS)}")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        cell = counts[_group_key(row, group)]
        cell[0] += 1
        cell[1] += int(row.correct)
    return {
        key: {"n": n, "correct": c, "accuracy": c / n} for key, (n, c) in sorted(counts.items())
    }


def consistency(rows: list[Scored]) -> dict:
    """Share of items answered the same way under every template they were asked through.

    Only items asked through two or more templates count; an Unknown answer is its own answer,
    so it breaks consistency with a "yes".
    """
    answers: dict[str, dict[str, str]] = defaultdict(dict)
    correct: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        answers[row.item.id][row.template_id] = row.answer
        correct[row.item.id].append(row.correct)
    multi = [item_id for item_id, by_template in answers.items() if len(by_template) >= 2]
    same = [i for i in multi if len(set(answers[i].values())) == 1]
    all_right = [i for i in multi if all(correct[i])]
    n = len(multi)
    return {
        "n_items": n,
        "consistent": len(same),
        "share": len(same) / n if n else None,
        "all_correct": len(all_right),
        "share_all_correct": len(all_right) / n if n else None,
    }


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def answer_bias(rows: list[Scored]) -> dict:
    """Yes/no bias as VLMEvalKit reports it over binary rows (yes/no questions and relations
    asked as two-option choices): the positive answer is the positive class, Unknown is not."""
    yes_no = [r for r in rows if r.binary]
    n = len(yes_no)
    tp = sum(1 for r in yes_no if r.verdict is True and r.item.truth)
    fp = sum(1 for r in yes_no if r.verdict is True and not r.item.truth)
    fn = sum(1 for r in yes_no if r.verdict is not True and r.item.truth)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    return {
        "n": n,
        "predicted_true_rate": _ratio(sum(1 for r in yes_no if r.verdict is True), n),
        "label_true_rate": _ratio(sum(1 for r in yes_no if r.item.truth), n),
        "unknown_rate": _ratio(sum(1 for r in yes_no if r.verdict is None), n),
        "accuracy": _ratio(sum(r.correct for r in yes_no), n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def confidence(row: Scored) -> float | None:
    """Confidence in the given answer: max(P(yes), P(no)) for yes/no, else as reported."""
    p = row.prediction.probability
    if p is None:
        return None
    if row.binary:
        return max(p, 1.0 - p)
    return p


def calibration(rows: list[Scored], n_bins: int = 10) -> dict:
    """Expected calibration error over equal-width confidence bins, and the bins themselves.

    For binary rows the probability is P(positive) and the answer taken is P >= 0.5, as the
    engine does.
    """
    conf, right = [], []
    for row in rows:
        c = confidence(row)
        if c is None:
            continue
        if row.binary:
            ok = (row.prediction.probability >= 0.5) == row.item.truth
        else:
            ok = row.correct
        conf.append(c)
        right.append(float(ok))
    if not conf:
        return {"n": 0, "ece": None, "bins": []}
    conf_a, right_a = np.asarray(conf), np.asarray(right)
    # Right-closed bins so that confidence 1.0 falls in the last one and 0.5 in the fifth.
    # Rounding first keeps 0.7 * 10 = 7.000000000000001 in the bin that ends at 0.7.
    index = np.clip(np.ceil(np.round(conf_a * n_bins, 9)).astype(int) - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        if count:
            acc, mean_conf = float(right_a[mask].mean()), float(conf_a[mask].mean())
            ece += count / len(conf_a) * abs(acc - mean_conf)
        else:
            acc = mean_conf = None
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "n": count,
                "accuracy": acc,
                "confidence": mean_conf,
            }
        )
    return {"n": len(conf_a), "ece": float(ece), "bins": bins}


def metric_answers(rows: list[Scored]) -> dict:
    """Number answers: share within a factor of 2 of the truth and mean relative accuracy."""
    numbers = [r for r in rows if r.item.kind is AnswerKind.NUMBER]
    n = len(numbers)
    return {
        "n": n,
        "within_factor_2": _ratio(sum(r.correct for r in numbers), n),
        "mean_relative_accuracy": (sum(r.mra for r in numbers) / n) if n else None,
        "unparsed": sum(1 for r in numbers if r.value is None),
    }


# -- wordings: per framing and vocabulary, seen against unseen ------------------------------


def wording_report(rows: list[Scored]) -> dict:
    """Binary answers by framing and by vocabulary: accuracy, predicted-True and label-True
    rates, and consistency, plus seen against unseen wordings (core.grammar's held-out
    framings and vocabularies).

    Consistency of a framing is the share of its answers that agree with the item's majority
    verdict over every wording it was asked in (ties: the first answer's); it needs items
    asked in two or more wordings and is None otherwise.
    """
    binary = [r for r in rows if r.binary]
    by_item: dict[str, list[Scored]] = defaultdict(list)
    for r in binary:
        by_item[r.item.id].append(r)
    majority: dict[str, bool | None] = {}
    for item_id, group in by_item.items():
        if len(group) >= 2:
            votes = Counter(r.verdict for r in group)
            top = max(votes.values())
            majority[item_id] = next(r.verdict for r in group if votes[r.verdict] == top)

    def cell(members: list[Scored]) -> dict:
        n = len(members)
        multi = [r for r in members if r.item.id in majority]
        return {
            "n": n,
            "accuracy": _ratio(sum(r.correct for r in members), n),
            "predicted_true_rate": _ratio(sum(r.verdict is True for r in members), n),
            "label_true_rate": _ratio(sum(bool(r.item.truth) for r in members), n),
            "consistency": _ratio(
                sum(r.verdict == majority[r.item.id] for r in multi), len(multi)
            ),
        }

    groups: dict[str, dict[str, list[Scored]]] = {
        "framing": defaultdict(list),
        "vocabulary": defaultdict(list),
        "split": defaultdict(list),
    }
    for r in binary:
        framing, vocabulary = wording_of(r)
        groups["framing"][framing].append(r)
        groups["vocabulary"][vocabulary].append(r)
        if framing != ITEM_QUESTION:
            held = framing in grammar.HELD_OUT_FRAMINGS or (
                vocabulary in grammar.HELD_OUT_VOCABULARIES
            )
            groups["split"]["unseen" if held else "seen"].append(r)
    out = {name: {k: cell(v) for k, v in sorted(g.items())} for name, g in groups.items()}
    seen, unseen = (out["split"].get(k, {}).get("accuracy") for k in ("seen", "unseen"))
    out["unseen_minus_seen"] = None if seen is None or unseen is None else unseen - seen
    out["held_out"] = {
        "framings": sorted(grammar.HELD_OUT_FRAMINGS),
        "vocabularies": sorted(grammar.HELD_OUT_VOCABULARIES),
    }
    return out


# -- confidence intervals by scene bootstrap --------------------------------------------------


def scene_bootstrap(
    rows: list[Scored],
    group: str | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Accuracy intervals by resampling scenes (the items of one scene are not independent:
    they share an image and objects). Overall, or per value of one of GROUPS.

    Returns {key: {"n", "scenes", "accuracy", "lo", "hi"}} ("all" for the overall row); the
    resampling is seeded, so a report is reproducible.
    """
    scenes = sorted({r.item.scene_id or r.item.id for r in rows})
    index = {s: k for k, s in enumerate(scenes)}
    keys = ["all"] if group is None else sorted({_group_key(r, group) for r in rows})
    n_scenes = len(scenes)
    out = {}
    if not n_scenes:
        return out
    draws = np.random.default_rng(seed).integers(0, n_scenes, size=(n_boot, n_scenes))
    counts = np.stack([np.bincount(d, minlength=n_scenes) for d in draws])  # [B, scenes]
    tail = (1.0 - level) / 2
    for key in keys:
        members = rows if group is None else [r for r in rows if _group_key(r, group) == key]
        n = np.zeros(n_scenes)
        right = np.zeros(n_scenes)
        for r in members:
            k = index[r.item.scene_id or r.item.id]
            n[k] += 1
            right[k] += float(r.correct)
        total_n, total_right = counts @ n, counts @ right
        ok = total_n > 0
        acc = total_right[ok] / total_n[ok]
        out[key] = {
            "n": len(members),
            "scenes": int((n > 0).sum()),
            "accuracy": _ratio(int(right.sum()), int(n.sum())),
            "lo": float(np.quantile(acc, tail)) if acc.size else None,
            "hi": float(np.quantile(acc, 1.0 - tail)) if acc.size else None,
        }
    return out


# -- blind baseline: the same questions with a grey image -------------------------------------

BLIND_MARGIN = 0.10  # a task whose blind accuracy comes this close to sighted is flagged


def blind_comparison(
    sighted: list[Scored], blind: list[Scored], margin: float = BLIND_MARGIN
) -> dict:
    """Per task, sighted and blind accuracy on the same questions, and the tasks where blind
    comes within `margin` of sighted (the image adds little: the task measures priors)."""
    seen, dark = accuracy_by(sighted, "task"), accuracy_by(blind, "task")
    tasks = {}
    for task in sorted(set(seen) | set(dark)):
        a = seen.get(task, {}).get("accuracy")
        b = dark.get(task, {}).get("accuracy")
        gap = None if a is None or b is None else a - b
        tasks[task] = {
            "n": seen.get(task, {}).get("n", 0),
            "sighted": a,
            "blind": b,
            "gap": gap,
            "flagged": gap is not None and gap < margin,
        }
    n = len(blind)
    return {
        "n": n,
        "accuracy": _ratio(sum(r.correct for r in blind), n),
        "margin": margin,
        "by_task": tasks,
        "flagged": [t for t, row in tasks.items() if row["flagged"]],
    }


# -- perturbations: answers that flip under changes that should not matter --------------------


def flip_rates(
    reference: list[Prediction], perturbed: dict[str, list[Prediction]], items: list[Item]
) -> dict:
    """Share of answers that change under each perturbation, and under at least one.

    Answers are compared as the scorer reads them (a binary verdict, a choice, a number's
    text); predictions are matched by position, so each list answers the same questions.
    """
    by_id = {item.id: item for item in items}

    def said(p: Prediction) -> str:
        return score(by_id[p.item_id], p).answer

    base = [said(p) for p in reference]
    n = len(base)
    flipped_any = [False] * n
    rates = {}
    for name, predictions in perturbed.items():
        if len(predictions) != n:
            raise ValueError(f"perturbation {name!r}: {len(predictions)} answers, expected {n}")
        flips = [said(p) != b for p, b in zip(predictions, base, strict=True)]
        flipped_any = [a or f for a, f in zip(flipped_any, flips, strict=True)]
        rates[name] = _ratio(sum(flips), n)
    return {"n": n, "by_perturbation": rates, "any": _ratio(sum(flipped_any), n)}


# -- train/test overlap -----------------------------------------------------------------------


def _file_digest(path: Path, cache: dict[Path, str]) -> str:
    if path not in cache:
        cache[path] = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else str(path)
    return cache[path]


def overlap_key(item: Item, by_content: bool = False, cache: dict | None = None) -> tuple:
    """What makes two items "the same": the images and the claim about them.

    Images are compared by file name (VSR's COCO names) or, with `by_content`, by the bytes;
    the claim is the caption, or subject/relation/object, or the question, with the answer.
    """
    cache = {} if cache is None else cache
    names = item.images or [item.image]
    if by_content:
        images = tuple(_file_digest(Path(item.root, n), cache) for n in names)
    else:
        images = tuple(Path(n).name for n in names)
    if item.caption:
        claim: tuple = ("caption", normalize(item.caption), item.label)
    elif item.subj and item.relation and item.obj:
        claim = ("triple", normalize(item.subj), item.relation, normalize(item.obj), item.truth)
    else:
        claim = ("question", normalize(item.question), normalize(item.answer))
    return images + claim


def find_overlap(
    train: Iterable[Item], test: Iterable[Item], by_content: bool = False
) -> dict[str, list[str]]:
    """{test item id: [ids of the training items it duplicates]} for every overlapping item."""
    cache: dict[Path, str] = {}
    seen: dict[tuple, list[str]] = defaultdict(list)
    for item in train:
        seen[overlap_key(item, by_content, cache)].append(item.id)
    found = {}
    for item in test:
        key = overlap_key(item, by_content, cache)
        if key in seen:
            found[item.id] = seen[key]
    return found


# -- baselines --------------------------------------------------------------------------------


@dataclass
class PriorModel:
    """Answers from counts over training answers, backing off through a list of keys.

    Binary items are answered "yes"/"no" (polarity); `as_asked` words them for a template.
    """

    keys: list[Callable[[Item], tuple]]  # from the most to the least specific
    tables: list[dict[tuple, Counter]]  # answer counts per key value, parallel to keys
    values: list[dict[tuple, list[float]]]  # numeric answers per key value, parallel to keys

    @classmethod
    def fit(cls, items: Iterable[Item], keys: list[Callable[[Item], tuple]]) -> PriorModel:
        tables: list[dict[tuple, Counter]] = [defaultdict(Counter) for _ in keys]
        values: list[dict[tuple, list[float]]] = [defaultdict(list) for _ in keys]
        for item in items:
            for key, table, vals in zip(keys, tables, values, strict=True):
                k = key(item)
                if item.kind is AnswerKind.NUMBER and item.value is not None:
                    vals[k].append(item.value)
                else:
                    table[k][_canonical(item)] += 1
        return cls(keys, tables, values)

    def predict(self, item: Item) -> Prediction:
        for key, table, vals in zip(self.keys, self.tables, self.values, strict=True):
            k = key(item)
            if item.kind is AnswerKind.NUMBER and vals.get(k):
                return Prediction(item.id, f"{statistics.median(vals[k]):g}", item.template_id)
            if item.kind is not AnswerKind.NUMBER and table.get(k):
                # Ties go to the alphabetically first answer, so the baseline is deterministic.
                best = min(table[k].items(), key=lambda kv: (-kv[1], kv[0]))[0]
                return Prediction(item.id, best, item.template_id)
        return Prediction(item.id, "", item.template_id)


def _canonical(item: Item) -> str:
    if item.binary:
        return "yes" if item.truth else "no"
    return normalize(item.answer)


def majority_baseline(items: Iterable[Item]) -> PriorModel:
    """The most common answer per task and answer kind (median for numbers)."""
    return PriorModel.fit(items, [lambda i: (i.task, i.answer_kind)])


def text_only_baseline(items: Iterable[Item]) -> PriorModel:
    """A model that reads only the text: the most common answer for the same subject, relation
    and object, backing off to the relation, then to the task's majority."""
    return PriorModel.fit(
        items,
        [
            lambda i: (i.task, i.answer_kind, normalize(i.subj), i.relation, normalize(i.obj)),
            lambda i: (i.task, i.answer_kind, i.relation, normalize(i.question)),
            lambda i: (i.task, i.answer_kind, i.relation),
            lambda i: (i.task, i.answer_kind),
        ],
    )


BASELINES: dict[str, Callable[[Iterable[Item]], PriorModel]] = {
    "majority": majority_baseline,
    "text_only": text_only_baseline,
}


def _fold(item: Item, n_folds: int) -> int:
    return int(hashlib.sha1(item.id.encode()).hexdigest(), 16) % n_folds


def baseline_predictions(
    name: str, items: list[Item], fit_items: list[Item] | None, n_folds: int = 2
) -> list[Prediction]:
    """One baseline's answer to every item (one question each).

    Fitted on `fit_items` (the training data) when given. Without them the baseline is
    cross-fitted on the evaluated items: each fold is answered by a fit on the other folds, so
    an item's own answer never leaks into its prediction.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    fit = BASELINES[name]
    if fit_items is not None:
        model = fit(fit_items)
        return [model.predict(item) for item in items]
    predictions: dict[str, Prediction] = {}
    for fold in range(n_folds):
        model = fit([i for i in items if _fold(i, n_folds) != fold])
        for item in items:
            if _fold(item, n_folds) == fold:
                predictions[item.id] = model.predict(item)
    return [predictions[item.id] for item in items]


def as_asked(prediction: Prediction, item: Item, template_id: str) -> Prediction:
    """A baseline's answer to an item, in the words of the template a question used."""
    text = prediction.text
    if item.binary and text in ("yes", "no"):
        text = answer_words(template_id or item.template_id)[text == "no"]
    return Prediction(item.id, text, template_id, value=prediction.value)


def baseline_rows(
    items: list[Item],
    fit_items: list[Item] | None,
    asked: list[tuple[str, str]] | None = None,
) -> dict[str, dict]:
    """Accuracy of every baseline, on the same questions the model was scored on.

    `asked` lists (item id, template id) of the model's scored answers, so a baseline row
    weighs items exactly as the model row does (an item asked through 50 templates counts 50
    times); without it every item counts once. See `baseline_predictions` for the fitting.
    """
    by_id = {item.id: item for item in items}
    asked = asked if asked is not None else [(item.id, "") for item in items]
    result = {}
    for name in BASELINES:
        answers = {p.item_id: p for p in baseline_predictions(name, items, fit_items)}
        rows = [
            score(by_id[i], as_asked(answers[i], by_id[i], template_id))
            for i, template_id in asked
        ]
        n = len(rows)
        result[name] = {
            "n": n,
            "accuracy": _ratio(sum(r.correct for r in rows), n),
            "by_task": accuracy_by(rows, "task"),
        }
    return result


# -- the whole report -------------------------------------------------------------------------


def evaluate_predictions(
    items: list[Item],
    predictions: list[Prediction],
    train_items: list[Item] | None = None,
    exclude_overlap: bool = False,
    overlap_by_content: bool = False,
    n_bins: int = 10,
) -> dict:
    """Everything the evaluator reports, as a JSON-ready dict.

    `train_items`, when given, are used to detect train/test overlap (reported, and removed
    from every number if `exclude_overlap`) and to fit the baselines; without them the
    baselines are cross-fitted on the evaluated items.
    """
    by_id = {item.id: item for item in items}
    if len(by_id) != len(items):
        dupes = [k for k, v in Counter(i.id for i in items).items() if v > 1]
        raise ValueError(f"item ids are not unique: {dupes[:5]}")
    unknown = sorted({p.item_id for p in predictions} - set(by_id))
    if unknown:
        raise ValueError(
            f"{len(unknown)} predictions name items not in the data, e.g. {unknown[:3]}; "
            "were they made on another split?"
        )
    overlap = find_overlap(train_items, items, overlap_by_content) if train_items else {}
    excluded = set(overlap) if exclude_overlap else set()
    kept_items = [i for i in items if i.id not in excluded]
    kept_predictions = [p for p in predictions if p.item_id not in excluded]
    rows = [score(by_id[p.item_id], p) for p in kept_predictions]
    answered = {r.item.id for r in rows}
    n = len(rows)
    return {
        "schema": REPORT_SCHEMA,
        "n_items": len(kept_items),
        "n_predictions": n,
        "n_items_unanswered": sum(1 for i in kept_items if i.id not in answered),
        "accuracy": _ratio(sum(r.correct for r in rows), n),
        "by": {group: accuracy_by(rows, group) for group in GROUPS},
        "consistency": consistency(rows),
        "bias": answer_bias(rows),
        "calibration": calibration(rows, n_bins),
        "metric": metric_answers(rows),
        "wordings": wording_report(rows),
        "intervals": {
            "method": "scene bootstrap, 1000 resamples, 95%",
            "all": scene_bootstrap(rows).get("all"),
            "by_task": scene_bootstrap(rows, "task"),
            "by_framing": scene_bootstrap([r for r in rows if r.binary], "framing"),
        },
        "overlap": {
            "checked": train_items is not None,
            "by_content": overlap_by_content,
            "n_overlapping": len(overlap),
            "share": _ratio(len(overlap), len(items)),
            "excluded": bool(excluded),
            "items": {k: v for k, v in sorted(overlap.items())},
        },
        "baselines": {
            "fitted_on": "train" if train_items else "evaluated items, 2-fold cross-fit",
            **baseline_rows(
                kept_items, train_items, [(p.item_id, p.template_id) for p in kept_predictions]
            ),
        },
    }
