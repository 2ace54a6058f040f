"""The question grammar: size, held-out framings and vocabularies, ids, and readable text."""

from __future__ import annotations

import numpy as np
import pytest

from vsre_ros.core import grammar
from vsre_ros.core.templates import HELDOUT_TEMPLATES, TEMPLATES


def test_thousands_of_forms_with_the_fifty_templates_as_a_subset():
    assert grammar.count("seen") > 10_000 and grammar.count("unseen") > 10_000
    assert grammar.count("all") == grammar.count("seen") + grammar.count("unseen")
    for template in TEMPLATES:
        wording = grammar.wording_by_id(template.id)
        assert wording.framing == "vsre50" and wording.seen
        assert wording.render("cup", "left of", "box") == template.render("cup", "left of", "box")
    assert all(not grammar.wording_by_id(t.id).seen for t in HELDOUT_TEMPLATES)


def test_held_out_framings_and_vocabularies_never_come_from_the_seen_pool():
    rng = np.random.default_rng(0)
    seen = [grammar.sample(rng, "seen") for _ in range(2000)]
    unseen = [grammar.sample(rng, "unseen") for _ in range(2000)]
    assert all(w.seen for w in seen) and not any(w.seen for w in unseen)
    assert not {w.framing for w in seen} & grammar.HELD_OUT_FRAMINGS
    assert not {w.vocabulary for w in seen} & grammar.HELD_OUT_VOCABULARIES
    assert {w.framing for w in unseen} >= grammar.HELD_OUT_FRAMINGS
    assert {w.vocabulary for w in unseen} >= grammar.HELD_OUT_VOCABULARIES
    # the seen pool spans every framing that is not held out, in several vocabularies
    assert {w.framing for w in seen} == set(grammar.ALL_FRAMINGS) - grammar.HELD_OUT_FRAMINGS
    assert len({w.vocabulary for w in seen}) >= 3


def test_sampling_is_deterministic_by_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [grammar.sample(rng).id for _ in range(50)]

    assert draw(3) == draw(3) and draw(3) != draw(4)


def test_object_first_order_refers_back_with_a_pronoun():
    w = grammar.make_wording("question", "yes_no", order=1)
    assert w.render("cup", "left of", "box") == "Relative to the box, is the cup left of it?"
    assert w.render("cup", "between", "box and the ball").endswith("between them?")
    claim = grammar.make_wording("claim", "right_wrong", pre=1, verb=3, prep=1)
    assert claim.render("cup", "left of", "box") == (
        "Look at the image. The cup sits to the left of the box. Right or wrong?"
    )
    assert claim.answer(True) == "right" and claim.answer(False) == "wrong" and not claim.seen


@pytest.mark.parametrize(
    "bad, match",
    [
        ("g/nope/yes_no/0.0.0.0.0.0", "unknown framing"),
        ("g/question/true_false/0.0.0.0.0.0", "takes vocabularies"),
        ("g/claim/yes_no/0.0.0.0.9.0", "out of range"),
        ("g/claim/yes_no/0.x", "integers"),
        ("t99", "not a wording id"),
    ],
)
def test_bad_wording_ids_are_refused_with_a_reason(bad, match):
    with pytest.raises(ValueError, match=match):
        grammar.wording_by_id(bad)
    assert grammar.framing_of(bad) == ("", "")


def test_paired_wordings_differ_in_framing_and_stay_in_their_split():
    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = grammar.paired(rng)
        assert a.framing != b.framing and a.seen and b.seen
    first = grammar.make_wording("claim", "true_false")
    assert grammar.paired(rng, first)[0] is first


def test_one_wording_per_framing():
    words = grammar.one_per_framing(np.random.default_rng(0), "unseen")
    assert sorted(w.framing for w in words) == sorted({f for f, _ in grammar.pool("unseen")})
