"""Instruction templates: counts, ids, and a grammatical sentence for every relation and pair."""

from __future__ import annotations

import re
import zlib
from collections import Counter

import numpy as np
import pytest
from vsre_ros.sim_data.catalog import CATEGORIES, COLOURS, concept
from vsre_ros.sim_data.relations import CATALOG

from vsre_ros.core import grammar
from vsre_ros.core.answers import invited_vocabularies
from vsre_ros.core.templates import (
    HELDOUT_TEMPLATES,
    TASK_TEMPLATES,
    TEMPLATES,
    VERB_RELATIONS,
    caption,
    corpus,
    template_by_id,
)

NAMES = [concept(cat, col) for cat, col in zip(CATEGORIES, list(COLOURS) * 2, strict=False)]
# (one name per category; colours do not change the grammar, so they rotate)
OBJ_PHRASES = NAMES + ["blue box and the red cup"]  # "between" takes two reference objects


def grammar_problems(text: str, relation: str) -> list[str]:
    """Cheap checks that catch every way a template has gone wrong so far."""
    problems = []
    if re.search(r"[{}]", text):
        problems.append("unfilled placeholder")
    if "  " in text or text != text.strip():
        problems.append("stray whitespace")
    if not text[0].isupper():
        problems.append("does not start with a capital")
    if text[-1] not in "?.:" and not text.endswith(("it is", "it is not", "no", "yes")):
        problems.append("no closing punctuation")
    if re.search(r"\b(the the|is is|a a|is (contains|has as a part|consists of))\b", text):
        problems.append("doubled or broken words")
    if relation in VERB_RELATIONS and f" {relation} " in text:
        problems.append("verb relation not turned into its participle after 'is'")
    return problems


@pytest.mark.parametrize("relation", sorted(CATALOG))
def test_every_template_renders_grammatically_for_every_relation_and_pair(relation):
    # Every ordered pair of categories (colours rotate), plus the two-object phrase of "between".
    pairs = [(a, b) for a in NAMES for b in NAMES if a != b] + [(NAMES[0], OBJ_PHRASES[-1])]
    for t in TEMPLATES + HELDOUT_TEMPLATES:
        for subj, obj in pairs:
            text = t.render(subj, relation, obj)
            assert not grammar_problems(text, relation), (t.id, text)
            assert f"{subj} " in text and text.count(obj) >= 1


def test_fifty_training_templates_of_three_kinds_and_disjoint_heldout():
    assert len(TEMPLATES) == 50
    kinds = Counter(t.kind for t in TEMPLATES)
    assert set(kinds) == {"yes_no", "verify", "choice"}
    assert min(kinds.values()) >= 10
    assert len(HELDOUT_TEMPLATES) == 10
    ids = [t.id for t in TEMPLATES + HELDOUT_TEMPLATES]
    assert len(set(ids)) == len(ids)
    assert {t.text for t in TEMPLATES}.isdisjoint({t.text for t in HELDOUT_TEMPLATES})


def test_choice_templates_put_the_right_option_first_about_half_the_time():
    choice = [t for t in TEMPLATES if t.kind == "choice"]
    firsts = Counter(t.yes for t in choice)
    assert abs(firsts["A"] - firsts["B"]) <= 1
    for t in choice:
        assert {t.yes, t.no} == set(t.options)


def test_answers_and_lookup():
    t = template_by_id("t20")
    assert (t.answer(True), t.answer(False)) == ("true", "false")
    with pytest.raises(ValueError, match="unknown template id"):
        template_by_id("t99")


def test_caption_keeps_vsr_verb_forms():
    assert caption("red crate", "contains", "blue ball") == "The red crate contains the blue ball."
    assert caption("red cup", "left of", "blue box") == "The red cup is left of the blue box."


def test_task_templates_render_with_their_fields():
    fields = dict(
        subj="red cup",
        obj="blue box",
        a="green ball",
        b="white can",
        start="red cup",
        others="blue box and green ball",
        options="left, right",
        relation="left of",
    )
    for task, templates in TASK_TEMPLATES.items():
        for t in templates:
            text = t.render(**fields)
            assert t.task == task
            assert not grammar_problems(text, "left of"), text


def test_corpus_covers_every_wording():
    text = "\n".join(corpus())
    for t in TEMPLATES + HELDOUT_TEMPLATES:
        assert t.text in text
    for ts in TASK_TEMPLATES.values():
        for t in ts:
            assert t.text in text


@pytest.mark.parametrize("relation", sorted(CATALOG))
def test_grammar_wordings_read_well_and_invite_their_own_answer_words(relation):
    rng = np.random.default_rng(zlib.crc32(relation.encode()))
    obj = "blue box and the red cup" if CATALOG[relation].arity == 3 else "blue box"
    for _ in range(300):
        wording = grammar.sample(rng, "all")
        text = wording.render("green chair", relation, obj)
        assert not grammar_problems(text, relation), (wording.id, text)
        assert "green chair" in text and "blue box" in text
        if wording.vocabulary != "letter":
            invited = [v.id for v in invited_vocabularies(text)]
            assert wording.vocabulary in invited, (wording.id, text)
        assert grammar.wording_by_id(wording.id) == wording
