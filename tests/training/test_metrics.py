"""The evaluator's numbers against values computed by hand on hand-made predictions."""

from __future__ import annotations

import json

import pytest
from vsre_ros.training.items import Item
from vsre_ros.training.metrics import (
    accuracy_by,
    answer_bias,
    baseline_predictions,
    calibration,
    consistency,
    evaluate_predictions,
    find_overlap,
    metric_answers,
)
from vsre_ros.training.report import write_report
from vsre_ros.training.scoring import Prediction, relative_accuracy, score

from vsre_ros.core.answers import number_correct, parse_yes_no


def rel(item_id, label, relation="left of", subj="cup", obj="box", image=None, **kw):
    return Item(
        id=item_id,
        image=image or f"images/{item_id}.png",
        label=label,
        relation=relation,
        subj=subj,
        obj=obj,
        **{"answer": "yes" if label else "no", "answer_kind": "yes_no", **kw},
    )


def num(item_id, value):
    return Item(
        id=item_id,
        image=f"{item_id}.png",
        answer=f"{value}",
        answer_kind="number",
        value=value,
        unit="m",
        task="distance",
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", True),
        ("No, it is not.", False),
        ("yes and no", None),
        ("maybe", None),
        ("", None),
        ("Yesterday", None),
    ],
)
def test_yes_no_rule_follows_vlmevalkit(text, expected):
    assert parse_yes_no(text) is expected


def test_template_words_are_used_for_verify_and_choice_templates():
    item = rel("a", 1)
    assert score(item, Prediction("a", "True", template_id="t20")).correct
    assert not score(item, Prediction("a", "yes", template_id="t20")).correct  # Unknown
    # t36 lists the negative option first, so "B" means the relation holds.
    assert score(item, Prediction("a", "B", template_id="t36")).correct
    assert not score(item, Prediction("a", "A", template_id="t36")).correct


def test_probability_decides_when_there_is_no_text():
    item = rel("a", 0)
    assert score(item, Prediction("a", "", probability=0.2)).correct
    assert not score(item, Prediction("a", "", probability=0.7)).correct


def test_accuracy_by_relation_and_meta_category_by_hand():
    items = [
        rel("a", 1, "left of"),
        rel("b", 0, "left of"),
        rel("c", 1, "near"),
        rel("d", 0, "facing"),
    ]
    said = ["yes", "yes", "yes", "no"]
    rows = [score(i, Prediction(i.id, s)) for i, s in zip(items, said, strict=True)]
    by_rel = accuracy_by(rows, "relation")
    assert by_rel["left of"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert by_rel["near"]["accuracy"] == 1.0
    by_meta = accuracy_by(rows, "meta_category")
    assert by_meta["Projective"]["accuracy"] == 0.5
    assert by_meta["Proximity"]["n"] == 1
    assert by_meta["Orientation"]["correct"] == 1
    with pytest.raises(ValueError, match="unknown group 'colour'; known: relation"):
        accuracy_by(rows, "colour")


def test_consistency_counts_items_answered_alike_under_every_template():
    items = {i.id: i for i in [rel("a", 1), rel("b", 0), rel("c", 1), rel("d", 1)]}
    preds = [
        ("a", "t00", "yes"), ("a", "t20", "true"), ("a", "t36", "B"),  # same, all right
        ("b", "t00", "yes"), ("b", "t20", "false"),  # differ
        ("c", "t00", "no"), ("c", "t20", "false"),  # same, all wrong
        ("d", "t00", "yes"),  # one template only: not counted
    ]  # fmt: skip
    rows = [score(items[i], Prediction(i, text, template_id=t)) for i, t, text in preds]
    result = consistency(rows)
    assert result["n_items"] == 3
    assert result["consistent"] == 2
    assert result["share"] == pytest.approx(2 / 3)
    assert result["all_correct"] == 1


def test_answer_bias_precision_recall_f1_by_hand():
    items = [rel("a", 1), rel("b", 1), rel("c", 0), rel("d", 0)]
    said = ["yes", "yes", "yes", "perhaps"]
    rows = [score(i, Prediction(i.id, s)) for i, s in zip(items, said, strict=True)]
    bias = answer_bias(rows)
    assert bias["predicted_true_rate"] == 0.75
    assert bias["label_true_rate"] == 0.5
    assert bias["unknown_rate"] == 0.25
    assert bias["precision"] == pytest.approx(2 / 3)
    assert bias["recall"] == 1.0
    assert bias["f1"] == pytest.approx(0.8)
    assert bias["accuracy"] == 0.5


def test_ece_by_hand():
    items = [rel("a", 1), rel("b", 0), rel("c", 1), rel("d", 0)]
    probs = [0.9, 0.8, 0.3, 0.4]
    rows = [
        score(i, Prediction(i.id, "", probability=p)) for i, p in zip(items, probs, strict=True)
    ]
    result = calibration(rows, n_bins=10)
    # confidences 0.9 right, 0.8 wrong, 0.7 wrong, 0.6 right, each alone in its bin
    assert result["ece"] == pytest.approx((0.1 + 0.8 + 0.7 + 0.4) / 4)
    assert [b["n"] for b in result["bins"]] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert result["bins"][6]["accuracy"] == 0.0


def test_metric_answers_factor_two_and_mean_relative_accuracy_by_hand():
    assert number_correct(3.9, 2.0) and not number_correct(1.0, 2.0)
    assert not number_correct(-2.0, 2.0) and not number_correct(None, 2.0)
    assert relative_accuracy(2.2, 2.0) == pytest.approx(0.8)
    items = [num(f"n{k}", 2.0) for k in range(4)]
    said = ["3.9", "1.0", "2.2 m", "about 2 metres"]
    rows = [score(i, Prediction(i.id, s)) for i, s in zip(items, said, strict=True)]
    result = metric_answers(rows)
    assert result["within_factor_2"] == 0.75
    assert result["mean_relative_accuracy"] == pytest.approx((0 + 0 + 0.8 + 1) / 4)


def test_overlap_detection_finds_planted_duplicates(tmp_path):
    train = [rel(f"tr{k}", k % 2, subj=f"obj{k}") for k in range(6)]
    planted = [
        rel("te0", 0, subj="obj0", image=train[0].image),  # same image and claim
        rel("te1", 1, subj="obj3", image="elsewhere/" + train[3].image),  # path differs only
    ]
    fresh = [
        rel("te2", 1, subj="obj1", image="images/new.png"),  # same claim, other image
        rel("te3", 1, subj="obj0", image=train[0].image),  # same image, other claim
    ]
    found = find_overlap(train, planted + fresh)
    assert found == {"te0": ["tr0"], "te1": ["tr3"]}


def test_overlap_by_content_sees_renamed_copies(tmp_path):
    (tmp_path / "a.png").write_bytes(b"pixels-a")
    (tmp_path / "b.png").write_bytes(b"pixels-a")
    (tmp_path / "c.png").write_bytes(b"pixels-c")
    train = [rel("tr", 1, image="a.png", root=str(tmp_path))]
    test = [
        rel("copy", 1, image="b.png", root=str(tmp_path)),
        rel("other", 1, image="c.png", root=str(tmp_path)),
    ]
    assert find_overlap(train, test) == {}
    assert find_overlap(train, test, by_content=True) == {"copy": ["tr"]}


def test_baselines_majority_and_text_only():
    train = [rel("t1", 1, "left of"), rel("t2", 1, "left of"), rel("t3", 0, "near")]
    train += [rel("t4", 0, "near", subj="mug")]
    test = [rel("e1", 1, "near"), rel("e2", 0, "left of", subj="mug", obj="jar")]
    majority = {p.item_id: p.text for p in baseline_predictions("majority", test, train)}
    # ties (2 yes, 2 no) go to the alphabetically first answer
    assert majority == {"e1": "no", "e2": "no"}
    text = {p.item_id: p.text for p in baseline_predictions("text_only", test, train)}
    assert text == {"e1": "no", "e2": "yes"}
    with pytest.raises(ValueError, match="unknown baseline 'oracle'"):
        baseline_predictions("oracle", test, train)


def test_cross_fitted_baseline_never_sees_the_answer_it_predicts():
    # Every subject/relation/object triple is unique, so a leaky text-only fit would be 100%.
    items = [rel(f"i{k}", k % 2, subj=f"s{k}") for k in range(40)]
    preds = baseline_predictions("text_only", items, None)
    right = sum(score(i, p).correct for i, p in zip(items, preds, strict=True))
    assert right < 30


def test_full_report_excludes_overlap_and_writes_files(tmp_path):
    train = [rel("tr0", 1), rel("tr1", 0, subj="jar")]
    test = [rel("e0", 1, image=train[0].image), rel("e1", 0, subj="pen"), rel("e2", 1)]
    preds = [Prediction(i.id, t) for i, t in zip(test, ["yes", "no", "no"], strict=True)]
    report = evaluate_predictions(test, preds, train_items=train)
    assert report["overlap"]["n_overlapping"] == 1
    assert report["accuracy"] == pytest.approx(2 / 3)
    trimmed = evaluate_predictions(test, preds, train_items=train, exclude_overlap=True)
    assert trimmed["n_predictions"] == 2
    assert trimmed["accuracy"] == 0.5
    assert set(trimmed["baselines"]) == {"fitted_on", "majority", "text_only"}
    written = write_report(trimmed, tmp_path / "out")
    names = {p.name for p in written}
    assert {"report.json", "report.md", "per_relation.png", "reliability.png"} <= names
    assert json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"] == 0.5
    assert "baseline: majority" in (tmp_path / "out" / "report.md").read_text()


def test_predictions_for_unknown_items_are_refused():
    with pytest.raises(ValueError, match="name items not in the data"):
        evaluate_predictions([rel("a", 1)], [Prediction("zz", "yes")])


def test_relation_asked_as_a_choice_is_scored_by_polarity():
    item = rel("c", 1, answer_kind="choice", options=["A", "B"], answer="A", template_id="t45")
    assert score(item, Prediction("c", "A")).correct
    assert score(item, Prediction("c", "B")).verdict is False
    # Re-asked through a yes/no template, the same item is scored in that template's words.
    assert score(item, Prediction("c", "yes", template_id="t00")).correct
    rows = [score(item, Prediction("c", "A")), score(rel("y", 0), Prediction("y", "yes"))]
    assert answer_bias(rows)["n"] == 2


def test_baselines_are_scored_on_the_same_questions_as_the_model():
    train = [rel("t1", 1), rel("t2", 1), rel("t3", 0)]  # majority: yes
    item = rel("e", 1)
    preds = [Prediction("e", w, template_id=t) for t, w in [("t00", "no"), ("t20", "false")]]
    preds.append(Prediction("e", "B", template_id="t35"))
    report = evaluate_predictions([item], preds, train_items=train)
    assert report["accuracy"] == 0.0
    # The majority answer "yes", worded as yes / true / A, is right under every template.
    assert report["baselines"]["majority"] == {
        "n": 3,
        "accuracy": 1.0,
        "by_task": {"relation": {"n": 3, "correct": 3, "accuracy": 1.0}},
    }


# -- wordings, scene bootstrap, blind comparison, perturbations ---------------------------------


def test_wording_report_by_framing_with_consistency_and_true_rates():
    from vsre_ros.training.metrics import wording_report

    from vsre_ros.core import grammar

    claim = grammar.make_wording("claim", "true_false")
    quoted = grammar.make_wording("quoted", "true_false")  # a held-out framing
    items = [rel(f"i{k}", k % 2) for k in range(4)]
    predictions = []
    for item in items:
        predictions.append(Prediction(item.id, "yes" if item.label else "no", "t00"))
        predictions.append(Prediction(item.id, "true" if item.label else "false", claim.id))
        predictions.append(Prediction(item.id, "true", quoted.id))  # always true
    report = wording_report([score(by.item, by.prediction) for by in _scored(items, predictions)])
    assert report["framing"]["vsre50"]["accuracy"] == 1.0
    assert report["framing"]["quoted"]["accuracy"] == 0.5
    assert report["framing"]["quoted"]["predicted_true_rate"] == 1.0
    assert report["framing"]["quoted"]["label_true_rate"] == 0.5
    # the false items' majority is "no" (2 of 3), so "true" there disagrees
    assert report["framing"]["quoted"]["consistency"] == 0.5
    assert report["framing"]["claim"]["consistency"] == 1.0
    assert report["split"]["seen"]["accuracy"] == 1.0 and report["split"]["unseen"]["n"] == 4
    assert report["unseen_minus_seen"] == -0.5


def _scored(items, predictions):
    by_id = {i.id: i for i in items}
    return [score(by_id[p.item_id], p) for p in predictions]


def test_scene_bootstrap_interval_brackets_the_accuracy_and_is_reproducible():
    from vsre_ros.training.metrics import scene_bootstrap

    items = [rel(f"s{k}-{j}", 1, scene_id=f"s{k}") for k in range(20) for j in range(3)]
    # scenes 0-9 all right, 10-19 all wrong: accuracy 0.5, scene-level variance
    preds = [Prediction(i.id, "yes" if int(i.scene_id[1:]) < 10 else "no") for i in items]
    rows = _scored(items, preds)
    ci = scene_bootstrap(rows)["all"]
    assert ci["accuracy"] == 0.5 and ci["scenes"] == 20 and ci["n"] == 60
    assert 0.2 < ci["lo"] < 0.5 < ci["hi"] < 0.8
    assert scene_bootstrap(rows) == scene_bootstrap(rows)
    # one scene: no spread at all
    one = scene_bootstrap(rows[:3])["all"]
    assert one["lo"] == one["hi"] == 1.0


def test_blind_comparison_flags_tasks_the_image_barely_helps():
    from vsre_ros.training.metrics import blind_comparison

    items = [num(f"n{k}", 2.0) for k in range(4)] + [rel(f"r{k}", 1) for k in range(4)]
    sighted = _scored(items, [Prediction(i.id, "2.0" if i.value else "yes") for i in items])
    blind_said = ["2.0", "2.0", "2.0", "9", "no", "no", "no", "yes"]
    blind = _scored(items, [Prediction(i.id, s) for i, s in zip(items, blind_said, strict=True)])
    result = blind_comparison(sighted, blind)
    assert result["by_task"]["distance"]["blind"] == 0.75
    assert result["by_task"]["relation"]["gap"] == 0.75
    assert result["flagged"] == []  # distance gap 0.25, relation 0.75
    result = blind_comparison(sighted, blind, margin=0.3)
    assert result["flagged"] == ["distance"]


def test_flip_rates_count_changed_answers_per_perturbation():
    from vsre_ros.training.metrics import flip_rates

    items = [rel(f"f{k}", 1) for k in range(4)]
    base = [Prediction(i.id, "yes") for i in items]
    perturbed = {
        "dim": [Prediction(i.id, "yes") for i in items],
        "jpeg": [
            Prediction(i.id, s) for i, s in zip(items, ["no", "yes", "yes", "no"], strict=True)
        ],
        "shift": [
            Prediction(i.id, s) for i, s in zip(items, ["no", "yes", "no", "yes"], strict=True)
        ],
    }
    result = flip_rates(base, perturbed, items)
    assert result["by_perturbation"] == {"dim": 0.0, "jpeg": 0.5, "shift": 0.5}
    assert result["any"] == 0.75
    with pytest.raises(ValueError, match="3 answers, expected 4"):
        flip_rates(base, {"bad": base[:3]}, items)


def test_perturbations_change_pixels_as_named():
    import numpy as np
    from vsre_ros.training.perturb import PERTURBATIONS, brightness, shift

    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 3
    assert (brightness(1.2)(rgb) == np.clip(np.rint(rgb * 1.2), 0, 255)).all()
    moved = shift(1)(rgb)
    assert (moved[:, 1:] == rgb[:, :-1]).all() and (moved[:, 0] == rgb[:, 0]).all()
    assert (shift(-1, 1)(rgb)[1:, :-1] == rgb[:-1, 1:]).all()
    for name, transform in PERTURBATIONS.items():
        out = transform(rgb)
        assert out.shape == rgb.shape and out.dtype == np.uint8, name
        assert not np.array_equal(out, rgb), name
