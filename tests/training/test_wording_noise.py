"""Filler words around relation questions: what they may contain, where they go, what stays."""

from __future__ import annotations

import re

import numpy as np
import pytest
from vsre_ros.training import wording_noise
from vsre_ros.training.data import WordingSampler
from vsre_ros.training.items import Item

from vsre_ros.core import grammar
from vsre_ros.core.answers import invited_vocabulary


def _words(text):
    return set(re.findall(r"[a-z][a-z'\-]*", text.lower()))


def test_filler_holds_no_held_out_relation_answer_or_negation_word():
    bank = set(wording_noise.filler_words())
    assert len(bank) >= 80
    # every word of a held-out framing's text is barred, e.g. the hypothetical's "suppose"
    hypothetical = grammar.FRAMINGS["hypothetical"]
    assert {"suppose", "said", "would"} <= wording_noise.held_out_words()
    assert not bank & _words(" ".join(hypothetical.bodies).replace("{claim}", ""))
    assert not bank & {"right", "wrong", "left", "above", "behind", "not", "no", "true", "yes"}
    assert not bank & wording_noise.held_out_words()


@pytest.mark.parametrize("seed", range(40))
def test_noisy_keeps_the_relation_the_objects_and_the_offered_answer_words(seed):
    rng = np.random.default_rng(seed)
    wording = grammar.sample(rng, "seen")
    text = wording.render("red cup", "to the left of", "blue box")
    out = wording_noise.noisy(text, ["red cup", "blue box", "to the left of"], rng)
    assert out != text
    for phrase in ("red cup", "blue box", "to the left of"):
        assert out.lower().count(phrase) == text.lower().count(phrase)
    assert invited_vocabulary(out) == invited_vocabulary(text)
    added = _words(out) - _words(text)
    assert added and added <= set(wording_noise.filler_words())
    # filler is only inserted between words: the original words stay, whole and in order
    rest = iter(out.split())
    assert all(any(w == o for o in rest) for w in text.split())


def test_the_sampler_adds_filler_at_its_share_and_leaves_the_answer_alone():
    item = Item(
        id="r", image="a.png", label=0, relation="left of", subj="cup", obj="box",
        question="Is the cup left of the box?", answer="no",
    )  # fmt: skip
    plain = WordingSampler(seed=1)
    noisy = WordingSampler(seed=1, noise=0.5)
    changed = 0
    for i in range(200):
        a, b = plain.example(item, i, 0), noisy.example(item, i, 0)
        # the same wording is drawn with or without noise, and answered in its words
        assert (a.template_id, a.target) == (b.template_id, b.target)
        assert b == noisy.example(item, i, 0)  # deterministic
        changed += a.question != b.question
    assert 70 <= changed <= 130
    with pytest.raises(ValueError, match="noise must be within"):
        WordingSampler(noise=1.5)
    # items no wording can ask keep their own question
    number = Item(id="n", image="a.png", answer_kind="number", value=1.0, task="distance",
                  question="How far?")  # fmt: skip
    assert WordingSampler(noise=1.0).example(number, 0, 0).question == "How far?"
