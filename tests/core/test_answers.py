"""core.answers: which answer words a question invites, and the one parser and scoring set."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from vsre_ros.core.answers import (
    VOCABULARIES,
    Answer,
    Status,
    agrees_with_item,
    canonical,
    invited_vocabularies,
    number_correct,
    parse_number,
    parse_yes_no,
)


@pytest.mark.parametrize(
    "question, expected",
    [
        ("Is the cup left of the box?", ("yes_no", "true_false")),
        ("Is the cup right of the box? Is that correct?", ("yes_no", "true_false")),
        ("The cup is left of the box. True or false?", ("true_false",)),
        ("The cup is right of the box. Answer right or wrong.", ("right_wrong",)),
        ("Correct or incorrect: the cup is left of the box.", ("correct_incorrect",)),
        ("False/true? The cup is on the box.", ("true_false",)),
        # several pairs offered: the last one, closest to the answer, wins
        ("True or false? Never mind, answer yes or no.", ("yes_no",)),
    ],
)
def test_invited_vocabularies(question, expected):
    assert tuple(v.id for v in invited_vocabularies(question)) == expected


def test_yes_no_parsing_in_a_vocabulary_and_across_all():
    right_wrong = VOCABULARIES["right_wrong"]
    assert parse_yes_no("Wrong.", right_wrong) is False
    assert parse_yes_no("yes", right_wrong) is None  # not a word of the pair asked
    assert parse_yes_no("Incorrect") is False and parse_yes_no("Correct!") is True
    assert parse_yes_no("correct and incorrect") is None and parse_yes_no("") is None


@pytest.mark.parametrize(
    "text, expected",
    [("1.5 m", (1.5, "m")), ("150 cm", (1.5, "m")), (".5m", (0.5, "m")), ("20 mm", (0.02, "m"))],
)
def test_numbers_are_parsed_into_metres(text, expected):
    value, unit = parse_number(text)
    assert math.isclose(value, expected[0]) and unit == expected[1]


def test_canonical_units_and_the_one_number_rule():
    assert canonical(30, "cm") == pytest.approx((0.3, "m"))
    with pytest.raises(ValueError, match="unknown unit 'furlong'"):
        canonical(1, "furlong")
    assert number_correct(3.9, 2.0) and number_correct(1.1, 2.0)
    assert not number_correct(4.1, 2.0) and not number_correct(math.nan, 2.0)


def test_demo_scoring_uses_the_label_and_converts_units():
    item = {"answer_kind": "yes_no", "answer": "wrong", "label": 0}
    assert agrees_with_item(item, Answer(verdict=False))
    assert not agrees_with_item(item, Answer(verdict=True))
    number = {"answer_kind": "number", "value": 0.5, "unit": "m"}
    assert agrees_with_item(number, Answer(value=40.0, unit="cm"))
    assert not agrees_with_item(number, Answer(value=40.0, unit="furlong"))
    assert not agrees_with_item(number, Answer(status=Status.ERROR, value=0.5))
    assert agrees_with_item(number, SimpleNamespace(status=0, value=0.6, unit="m"))
