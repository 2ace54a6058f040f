"""`vsre evaluate` end to end on a predictions file (the model path is tested with training)."""

from __future__ import annotations

import json

import pytest
from vsre_ros.training.evaluate import build_examples, resolve_templates
from vsre_ros.training.items import load_items
from vsre_ros.training.scoring import Prediction, write_predictions

from vsre_ros.cli import main


def test_evaluate_scores_a_predictions_file(colour_dataset, tmp_path, capsys):
    items = load_items(colour_dataset, "test")
    # Always "yes": right on exactly the red half.
    write_predictions(tmp_path / "p.jsonl", [Prediction(i.id, "Yes.") for i in items])
    out = tmp_path / "report"
    code = main(
        ["evaluate", "--data", str(colour_dataset), "--split", "test", "--predictions",
         str(tmp_path / "p.jsonl"), "--train-split", "train", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == 0.5
    assert report["bias"]["predicted_true_rate"] == 1.0
    assert report["overlap"]["checked"] and report["overlap"]["n_overlapping"] == 0
    assert (out / "per_template.png").is_file()
    assert "accuracy 50.0%" in capsys.readouterr().out


def test_evaluate_reports_bad_input_without_a_traceback(colour_dataset, tmp_path, capsys):
    code = main(
        ["evaluate", "--data", str(colour_dataset), "--split", "nope", "--predictions",
         str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o")]
    )  # fmt: skip
    assert code == 2
    assert "no split 'nope'" in capsys.readouterr().err
    write_predictions(tmp_path / "p.jsonl", [])
    code = main(
        ["evaluate", "--data", str(colour_dataset), "--split", "test", "--predictions",
         str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"), "--perturbations",
         "jpeg_70,fog"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown perturbations ['fog']" in err and "gamma_0.7" in err


def test_train_templates_ask_every_relation_item_fifty_times(colour_dataset):
    items = load_items(colour_dataset, "test")[:2]
    examples = build_examples(items, resolve_templates("train"))
    assert len(examples) == 100
    assert len({e.template_id for e in examples}) == 50
    assert len(build_examples(items, resolve_templates("item"))) == 2
    assert [e.template_id for e in build_examples(items, resolve_templates("t00,h04"))] == [
        "t00",
        "h04",
        "t00",
        "h04",
    ]
    with pytest.raises(ValueError, match="unknown template set 'everything'"):
        resolve_templates("everything")


def test_vsr_zero_shot_with_planted_overlap_is_detected_and_excluded(tmp_path):
    def write(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def row(image, caption, label, relation="on"):
        return {"image": image, "caption": caption, "label": label, "relation": relation}

    train = [row("1.jpg", "The cat is on the bed.", 1), row("2.jpg", "The cup is on the box.", 0)]
    test = [
        row("1.jpg", "The cat is on the bed.", 1),  # verbatim in training: overlap
        row("3.jpg", "The dog is on the sofa.", 1),
        row("2.jpg", "The cup is near the box.", 0, "near"),  # same image, new claim
    ]
    write(tmp_path / "random" / "train.jsonl", train)
    write(tmp_path / "zeroshot" / "test.jsonl", test)
    items = load_items(tmp_path / "zeroshot", "test", fmt="vsr", image_dir=tmp_path / "coco")
    write_predictions(tmp_path / "p.jsonl", [Prediction(i.id, "no") for i in items])
    out = tmp_path / "report"
    code = main(
        ["evaluate", "--format", "vsr", "--data", str(tmp_path / "zeroshot"), "--split", "test",
         "--images", str(tmp_path / "coco"), "--train-data", str(tmp_path / "random"),
         "--train-split", "train", "--exclude-overlap", "--predictions",
         str(tmp_path / "p.jsonl"), "--out", str(out), "--no-plots"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["overlap"]["n_overlapping"] == 1
    assert list(report["overlap"]["items"]) == [items[0].id]
    assert report["n_items"] == 2 and report["accuracy"] == 0.5


def test_grammar_set_asks_each_relation_item_once_per_framing(colour_dataset):
    from vsre_ros.training.evaluate import perturbation_sample

    from vsre_ros.core import grammar

    items = load_items(colour_dataset, "test")[:3]
    examples = build_examples(items, resolve_templates("grammar", seed=1))
    framings = {f for f, _ in grammar.pool("all")}
    assert len(examples) == 3 * len(framings)
    for item in items:
        asked = [e for e in examples if e.item is item]
        assert {grammar.framing_of(e.template_id)[0] for e in asked} == framings
    again = build_examples(items, resolve_templates("grammar", seed=1))
    assert [e.question for e in again] == [e.question for e in examples]
    unseen = build_examples(items, resolve_templates("grammar-unseen"))
    assert all(not grammar.wording_by_id(e.template_id).seen for e in unseen)
    sample = perturbation_sample(examples, 5)
    assert len(sample) == 5 and sample == perturbation_sample(list(reversed(examples)), 5)
