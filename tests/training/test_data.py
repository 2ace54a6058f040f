"""Dataset readers, template sampling, answer targets, balanced order and the image cache."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from vsre_ros.training.data import (
    ImageCache,
    TemplateSampler,
    ask,
    epoch_order,
    target_text,
    templates_by_ids,
)
from vsre_ros.training.items import Item, load_items, read_vsr, split_caption, write_items

from vsre_ros.core.answers import AnswerKind
from vsre_ros.core.templates import TEMPLATES


def test_vsre_reader_reads_every_field(colour_dataset):
    items = load_items(colour_dataset, "train")
    assert len(items) == 48
    first = items[0]
    assert first.kind is AnswerKind.YES_NO and first.truth is True
    assert first.meta_category == "Topological"
    assert first.image_paths()[0].is_file()


def test_vsre_reader_names_the_splits_it_has(colour_dataset):
    with pytest.raises(FileNotFoundError, match=r"no split 'val'; it has \['test', 'train'\]"):
        load_items(colour_dataset, "val")


def test_vsre_reader_keeps_fields_beyond_the_schema(colour_dataset, tmp_path):
    with open(colour_dataset / "extra.jsonl", "w") as handle:
        handle.write(json.dumps({"id": "x", "image": "a.png", "mask_ids": [3, 4]}) + "\n")
    (item,) = load_items(colour_dataset, "extra")
    assert item.extra == {"mask_ids": [3, 4]}
    write_items(tmp_path / "out.jsonl", [item])
    assert json.loads((tmp_path / "out.jsonl").read_text())["mask_ids"] == [3, 4]


def test_vsre_reader_says_which_line_is_bad(colour_dataset):
    with open(colour_dataset / "bad.jsonl", "w") as handle:
        handle.write(json.dumps({"id": "x", "image": "a.png"}) + "\n")
        handle.write(json.dumps({"image": "b.png"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: item row without 'id'"):
        load_items(colour_dataset, "bad")
    with open(colour_dataset / "kind.jsonl", "w") as handle:
        handle.write(json.dumps({"id": "x", "image": "a.png", "answer_kind": "essay"}) + "\n")
    with pytest.raises(ValueError, match=r"kind.jsonl:1: unknown answer kind 'essay'"):
        load_items(colour_dataset, "kind")


def test_unknown_format_names_the_known_ones(colour_dataset):
    with pytest.raises(ValueError, match="unknown dataset format 'coco'; known: vsre, vsr"):
        load_items(colour_dataset, "train", fmt="coco")


def test_vsr_jsonl_reads_with_an_image_folder(tmp_path):
    rows = [
        {"image": "0001.jpg", "caption": "The cat is on the bed.", "label": 1, "relation": "on"},
        {"image": "0002.jpg", "caption": "The box contains the ball.", "label": 0,
         "relation": "contains"},
        {"image": "0003.jpg", "caption": "The dog is left of the cup.", "label": 1,
         "relation": "left of", "subj": "brown dog", "obj": "cup"},
    ]  # fmt: skip
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_vsr(path, image_dir=tmp_path / "coco")
    pairs = [(i.subj, i.obj) for i in items]
    assert pairs == [("cat", "bed"), ("box", "ball"), ("brown dog", "cup")]
    assert [i.meta_category for i in items] == ["Topological", "Topological", "Projective"]
    assert items[1].truth is False and items[1].answer == "no"
    assert items[0].image_paths()[0] == tmp_path / "coco" / "0001.jpg"
    assert items[0].question == TEMPLATES[0].render("cat", "on", "bed")
    with pytest.raises(ValueError, match="give the image folder"):
        read_vsr(path)


def test_caption_that_does_not_name_its_relation_is_left_unsplit():
    assert split_caption("A cat sleeps.", "on") == ("", "")


def relation_item(label=1):
    return Item(
        id="r", image="a.png", label=label, relation="left of", subj="cup", obj="box",
        question="Is the cup left of the box?", answer="yes" if label else "no",
    )  # fmt: skip


def test_targets_exist_for_every_answer_kind():
    assert target_text(relation_item(0)) == "no"
    number = Item(id="n", image="a.png", answer_kind="number", value=1.234, task="distance")
    assert target_text(number) == "1.23"
    choice = Item(id="c", image="a.png", answer_kind="choice", options=["x", "y"], answer="y")
    assert target_text(choice) == "y"
    free = Item(id="f", image="a.png", answer_kind="free_text", answer="top left")
    assert target_text(free) == "top left"
    bad = Item(id="b", image="a.png", answer_kind="choice", options=["x", "y"], answer="z")
    with pytest.raises(ValueError, match="is not one of"):
        target_text(bad)


def test_templates_word_the_target_in_their_own_words():
    verify, choice_neg_first = templates_by_ids(["t20", "t36"])
    example = ask(relation_item(1), verify)
    assert example.target == "true" and example.kind is AnswerKind.YES_NO
    example = ask(relation_item(0), choice_neg_first)
    assert example.target == "A" and example.kind is AnswerKind.CHOICE
    assert example.options == ["A", "B"]
    assert "cup" in example.question and "box" in example.question
    with pytest.raises(ValueError, match="unknown template id 'zz'"):
        templates_by_ids(["zz"])


def test_template_sampling_is_per_item_and_per_epoch_and_reproducible():
    sampler = TemplateSampler(seed=3)
    item = relation_item()
    epoch0 = [sampler.example(item, i, 0).template_id for i in range(40)]
    assert epoch0 == [sampler.example(item, i, 0).template_id for i in range(40)]
    assert len(set(epoch0)) > 10  # items in one epoch get different templates
    per_epoch = {sampler.example(item, 0, e).template_id for e in range(40)}
    assert len(per_epoch) > 10  # one item gets different templates across epochs


def test_items_without_a_relation_keep_their_own_question():
    item = Item(id="l", image="a.png", answer_kind="free_text", answer="top left",
                question="Where is the cup?", task="localization")  # fmt: skip
    example = TemplateSampler(seed=0).example(item, 0, 0)
    assert example.question == "Where is the cup?" and example.template_id == ""


def skewed_items():
    items = [relation_item(1) for _ in range(90)] + [relation_item(0) for _ in range(10)]
    items += [
        Item(id=f"d{k}", image="a.png", answer_kind="number", value=1.0, task="distance")
        for k in range(5)
    ]
    for k, item in enumerate(items):
        item.id = f"i{k}"
    return items


def test_balanced_order_evens_out_labels_and_tasks():
    items = skewed_items()
    order = epoch_order(items, epoch=0, seed=1, length=4000)
    tasks = Counter(items[i].task for i in order)
    assert abs(tasks["relation"] - tasks["distance"]) < 300
    labels = Counter(items[i].truth for i in order if items[i].task == "relation")
    assert abs(labels[True] - labels[False]) < 200
    assert order == epoch_order(items, epoch=0, seed=1, length=4000)
    assert order != epoch_order(items, epoch=1, seed=1, length=4000)


def test_task_weights_mix_tasks_and_name_unknown_tasks():
    items = skewed_items()
    order = epoch_order(items, 0, task_weights={"relation": 1.0}, length=200)
    assert {items[i].task for i in order} == {"relation"}
    order = epoch_order(items, 0, task_weights={"distance": 1.0, "metric": 5.0}, length=50)
    assert {items[i].task for i in order} == {"distance"}
    with pytest.raises(ValueError, match=r"give no weight to the data's tasks"):
        epoch_order(items, 0, task_weights={"metric": 1.0})


def test_unbalanced_order_is_a_permutation():
    items = skewed_items()
    assert sorted(epoch_order(items, 0, balanced=False)) == list(range(len(items)))


def test_image_cache_decodes_each_file_once(tmp_path):
    for k in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
    calls = []

    def preprocess(rgb):
        calls.append(1)
        return rgb.astype(np.float32) / 255.0

    cache = ImageCache(preprocess, "scale-255", disk_dir=tmp_path / "cache")
    for _ in range(3):
        arrays = [cache.get(tmp_path / f"{k}.png") for k in range(3)]
    assert len(calls) == 3 and cache.decodes == 3 and cache.hits == 6
    assert arrays[2][0, 0, 0] == pytest.approx(80 / 255)
    # A new process finds the disk cache; another preprocessing signature does not.
    again = ImageCache(preprocess, "scale-255", disk_dir=tmp_path / "cache")
    again.get(tmp_path / "1.png")
    assert again.decodes == 0
    other = ImageCache(preprocess, "scale-128", disk_dir=tmp_path / "cache")
    other.get(tmp_path / "1.png")
    assert other.decodes == 1
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        cache.get(tmp_path / "missing.png")


def test_questions_with_more_context_than_a_template_are_not_reworded():
    item = relation_item()
    item.template_id = "mi1"  # a multi-image question: "In the second image, is ..."
    example = TemplateSampler(seed=0).example(item, 0, 0)
    assert example.question == item.question and example.template_id == ""


def test_step_examples_compute_an_epoch_order_once(monkeypatch):
    from vsre_ros.training import train as train_module
    from vsre_ros.training.config import StageConfig

    items = skewed_items()
    stage = StageConfig(name="s", steps=10, batch_size=3)
    sampler = train_module.stage_sampler(stage, 0)
    expected = epoch_order(items, 0, 0, stage.balanced, None)
    calls = []
    real = train_module.epoch_order
    monkeypatch.setattr(
        train_module, "epoch_order", lambda *a, **k: calls.append(a[1]) or real(*a, **k)
    )
    train_module._ORDERS.clear()
    steps = len(items) // 3
    got = [
        example.item.id
        for step in range(steps)
        for example in train_module.step_examples(items, stage, sampler, 0, step)
    ]
    assert got == [items[k].id for k in expected[: 3 * steps]]
    assert calls == [0], "one order per epoch, not one per step"


def varied_items(n=96):
    """Items whose questions run from 2 to 60 words, some over two images."""
    rng = np.random.default_rng(3)
    items = []
    for k in range(n):
        words = int(rng.integers(2, 60))
        images = ["a.png", "b.png"] if k % 7 == 0 else ["a.png"]
        items.append(
            Item(id=f"v{k}", image="a.png", images=images, answer_kind="free_text",
                 answer="top left", question=" ".join(["word"] * words) + "?")
        )  # fmt: skip
    return items


def _padding(batches):
    """Share of padded positions when each batch pads to its longest question (in words)."""
    lengths = [[len(e.question.split()) + 50 * len(e.item.images) for e in b] for b in batches]
    return 1 - sum(map(sum, lengths)) / sum(max(b) * len(b) for b in lengths)


@pytest.mark.parametrize("paired", [False, True])
def test_a_length_window_asks_the_same_examples_in_batches_of_near_length(paired):
    from vsre_ros.training import train as train_module
    from vsre_ros.training.config import StageConfig

    items = varied_items()
    templates = {"templates": "grammar", "paired": True} if paired else {}
    plain = StageConfig(name="s", steps=16, batch_size=4, balanced=False, **templates)
    windowed = StageConfig(**{**vars(plain), "length_window": 8})
    sampler = train_module.stage_sampler(plain, 0)

    def batches(stage, steps, world=1):
        return [
            train_module.step_examples(items, stage, sampler, 0, step, rank, world)
            for step in steps
            for rank in range(world)
        ]

    before, after = batches(plain, range(16)), batches(windowed, range(16))
    assert [len(b) for b in after] == [4] * 16
    key = lambda e: (e.item.id, e.question)  # noqa: E731
    for window in (slice(0, 8), slice(8, 16)):  # every example of a window, asked once
        assert sorted(key(e) for b in before[window] for e in b) == sorted(
            key(e) for b in after[window] for e in b
        )
    assert after != before
    # (a paired unit of two items pads to the longer of them, so it gains less)
    assert _padding(after) < (0.9 if paired else 0.5) * _padding(before)
    assert batches(windowed, range(16)) == after, "a pure function of (seed, step)"
    if paired:  # a unit's two rows stay adjacent (these items have no wordings: two items)
        assert all(b[k].item.id != b[k + 1].item.id for b in after for k in (0, 2))
    # two processes share each window's batches between them, none twice
    two = batches(windowed, range(8), world=2)
    assert sorted(key(e) for b in two for e in b) == sorted(
        key(e) for b in batches(plain, range(8), world=2) for e in b
    )


def test_grammar_wordings_are_drawn_seen_only_and_paired_across_framings():
    from vsre_ros.training.data import WordingSampler, reworded
    from vsre_ros.training.scoring import Prediction, score

    from vsre_ros.core import grammar

    sampler = WordingSampler(seed=1)
    item = relation_item(0)
    drawn = [sampler.example(item, i, 0) for i in range(60)]
    assert [e.template_id for e in drawn] == [
        sampler.example(item, i, 0).template_id for i in range(60)
    ]
    assert all(grammar.wording_by_id(e.template_id).seen for e in drawn)
    assert len({grammar.framing_of(e.template_id)[0] for e in drawn}) >= 5
    for i in range(20):
        a, b = sampler.pair(item, i, 0)
        assert grammar.framing_of(a.template_id)[0] != grammar.framing_of(b.template_id)[0]
        # the same item, so the same truth, each worded in its own answer words
        assert a.truth is b.truth is False
        assert a.target == grammar.wording_by_id(a.template_id).no
    with pytest.raises(ValueError, match="unknown wording split"):
        WordingSampler(split="nope")
    # an item generated through a wording is re-asked through another framing
    own = grammar.make_wording("claim", "true_false")
    item.template_id = own.id
    other = reworded(item, seed=0)
    assert grammar.framing_of(other.template_id)[0] != "claim"
    # a held-out vocabulary is scored in its own words
    unseen = grammar.make_wording("claim", "right_wrong")
    asked = ask(item, unseen)
    assert asked.target == "wrong"
    assert score(item, Prediction("r", "Wrong.", unseen.id)).correct
    assert not score(item, Prediction("r", "No.", unseen.id)).correct  # not its words
