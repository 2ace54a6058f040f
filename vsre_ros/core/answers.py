"""What a query asks and what it gets back, independent of ROS.

`Query` and `Answer` are the engine's input and output. The ROS layer converts
`vsre_ros/SpatialQuery` and `vsre_ros/SpatialAnswer` to and from them one field at a time, so
`Status` and `AnswerKind` carry the same integer values as the message constants (a test pins
them together).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np


class Status(enum.IntEnum):
    """Outcome of a query; values equal the SpatialAnswer.msg constants."""

    OK = 0
    NO_FRAME = 1
    STALE_FRAME = 2
    BAD_IMAGE = 3
    BAD_QUESTION = 4
    OVERLOADED = 5
    MODEL_NOT_READY = 6
    ERROR = 7
    CANCELLED = 8


class AnswerKind(enum.IntEnum):
    """What form of answer a query expects; values equal the SpatialQuery.msg KIND_* constants."""

    YES_NO = 0
    CHOICE = 1
    NUMBER = 2
    FREE_TEXT = 3

    @property
    def label(self) -> str:
        """The name used in dataset files: yes_no, choice, number, free_text."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> AnswerKind:
        try:
            return cls[label.upper()]
        except KeyError:
            known = ", ".join(k.label for k in cls)
            raise ValueError(f"unknown answer kind {label!r}; known: {known}") from None


@dataclass
class Query:
    """One question about one or more images (several cameras, frames or given images)."""

    question: str  # natural-language question
    images: list[np.ndarray] = field(default_factory=list)  # HxWx3 uint8 RGB, one per image
    answer_kind: AnswerKind = AnswerKind.YES_NO  # expected form of the answer
    options: list[str] = field(default_factory=list)  # choices for AnswerKind.CHOICE
    subj: str = ""  # optional structured form: subject object
    relation: str = ""  # optional structured form: relation (a VSR relation name)
    obj: str = ""  # optional structured form: reference object
    depth: list[np.ndarray | None] = field(default_factory=list)  # HxW float32 metres
    intrinsics: list[np.ndarray | None] = field(default_factory=list)  # 3x3 K per image
    image_keys: list[Hashable | None] = field(default_factory=list)  # cache keys (cam, stamp)
    query_id: str = ""  # caller's id, echoed in the answer


@dataclass(frozen=True)
class QueryLimits:
    """What a question may hold before it gets BAD_QUESTION (the server's parameters of the
    same names; the engine's `EngineConfig.max_question_chars`)."""

    max_question_chars: int = 2000  # longer questions are refused
    max_options: int = 64  # choice questions with more options are refused
    max_option_chars: int = 200  # longer options are refused


def question_problem(
    question: object, answer_kind: object, options: list, limits: QueryLimits = QueryLimits()
) -> str | None:
    """Why a question cannot be asked as it is (its BAD_QUESTION text), else None: the one rule
    the engine and the ROS layer apply."""
    from vsre_ros.core.prompts import IMAGE

    if not isinstance(question, str) or not question.strip():
        return "the question is empty; put the question text in `question`"
    if len(question) > limits.max_question_chars:
        return (
            f"the question has {len(question)} characters; the limit is "
            f"{limits.max_question_chars} (parameter max_question_chars)"
        )
    if IMAGE in question:
        return f"the question contains the reserved placeholder {IMAGE}; images go apart"
    try:
        kind = AnswerKind(answer_kind)
    except ValueError:
        known = ", ".join(f"{k.value}={k.name}" for k in AnswerKind)
        return f"unknown answer_kind {answer_kind!r}; known: {known}"
    if kind != AnswerKind.CHOICE:
        return None
    if len(options) < 2:
        return f"a choice question needs at least two options, got {len(options)}"
    if len(options) > limits.max_options:
        return (
            f"a choice question has {len(options)} options; the limit is {limits.max_options} "
            "(parameter max_options)"
        )
    for k, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            return f"option #{k} is empty; every option needs text"
        if len(option) > limits.max_option_chars:
            return (
                f"option #{k} has {len(option)} characters; the limit is "
                f"{limits.max_option_chars} (parameter max_option_chars)"
            )
    return None


class Source(enum.IntEnum):
    """Where an answer comes from; values equal the SpatialAnswer.msg SOURCE_* constants."""

    MODEL = 0  # the language model's answer
    GEOMETRY = 1  # measured from depth and camera intrinsics (core.geometry)


@dataclass
class GroundedObject:
    """One object phrase of a question, found in the image (and, with depth, in 3D)."""

    phrase: str  # the phrase as the question names it ("red cup")
    box: tuple[float, float, float, float]  # normalised [x0, y0, x1, y1] in the image (with
    # depth: the box of the pixels its 3D place was measured from)
    score: float  # the grounding head's confidence, (0, 1]
    position: tuple[float, float, float] = (math.nan,) * 3  # centre, optical frame, metres
    extent: tuple[float, float, float] = (math.nan,) * 3  # size along the optical axes, metres
    depth_used: bool = False  # position and extent were measured from depth


@dataclass
class Answer:
    """The engine's answer to one Query; invalid fields keep their defaults."""

    status: Status = Status.OK  # outcome
    error: str = ""  # readable reason when status != OK
    text: str = ""  # the answer as text
    verdict: bool = False  # yes/no: True for yes
    probability: float = 0.0  # yes/no: P(yes); other kinds: confidence
    choice_index: int = -1  # choice: index into the options
    value: float = math.nan  # number: the value
    unit: str = ""  # number: unit of value
    model_id: str = ""  # which model answered
    latency_model_ms: float = 0.0  # time in the model for this query's batch
    query_id: str = ""  # the query's id
    source: Source = Source.MODEL  # where the value comes from (geometry: measured)
    objects: list[GroundedObject] = field(default_factory=list)  # the question's objects

    @classmethod
    def failure(cls, status: Status, error: str, query_id: str = "") -> Answer:
        """An answer that reports a problem instead of a result."""
        if status == Status.OK:
            raise ValueError("a failure answer needs a status other than OK")
        return cls(status=status, error=error, query_id=query_id)


# -- Answer vocabularies: the pairs of words a yes/no question can invite --------------------


@dataclass(frozen=True)
class Vocabulary:
    """A pair of answer words for a binary question: "true"/"false", "right"/"wrong", ..."""

    id: str  # registry id, e.g. "true_false"
    yes: str  # the word for a relation that holds
    no: str  # the word for one that does not


VOCABULARIES: dict[str, Vocabulary] = {
    v.id: v
    for v in (
        Vocabulary("yes_no", "yes", "no"),
        Vocabulary("true_false", "true", "false"),
        Vocabulary("correct_incorrect", "correct", "incorrect"),
        Vocabulary("right_wrong", "right", "wrong"),
    )
}
DEFAULT_VOCABULARY = "yes_no"  # the words an answer to a question naming no pair is given in
# The vocabularies a question that names no pair may be answered in: "Is the cup left of the
# box?" takes yes/no, but "Verify the statement: the cup is left of the box." is answered
# true/false by the VSRE templates, so both are read.
UNNAMED = ("yes_no", "true_false")


def vocabulary(vocabulary_id: str) -> Vocabulary:
    """The vocabulary with this id; an unknown id raises ValueError naming the known ones."""
    if vocabulary_id not in VOCABULARIES:
        known = ", ".join(VOCABULARIES)
        raise ValueError(f"unknown answer vocabulary {vocabulary_id!r}; known: {known}")
    return VOCABULARIES[vocabulary_id]


def _pair_pattern(v: Vocabulary) -> re.Pattern:
    # "true or false", "False/True", "correct, or incorrect": the two words offered together.
    a, b = re.escape(v.yes), re.escape(v.no)
    link = r"\s*(?:,\s*)?(?:or|/)\s*"
    return re.compile(rf"\b(?:{a}{link}{b}|{b}{link}{a})\b", re.IGNORECASE)


_PAIRS = {v.id: _pair_pattern(v) for v in VOCABULARIES.values()}


def pair_pattern(v: Vocabulary) -> re.Pattern:
    """The pattern of a vocabulary's two words offered together ("true or false")."""
    return _PAIRS[v.id]


def invited_vocabularies(question: str) -> tuple[Vocabulary, ...]:
    """The answer words a yes/no question invites, the words to answer in first.

    A question that offers a pair ("... True or false?", "Answer right or wrong.") invites
    that pair; when it offers several, the last one offered wins (it is the closest to the
    answer). Anything else ("Is the cup left of the box?", "Is this correct?") invites the
    `UNNAMED` vocabularies, yes/no first. A single word never decides: "right" may be a
    direction and "correct" an adjective.
    """
    best, at = None, -1
    for vocabulary_id, pattern in _PAIRS.items():
        for match in pattern.finditer(question or ""):
            if match.start() > at:
                best, at = VOCABULARIES[vocabulary_id], match.start()
    if best is not None:
        return (best,)
    return tuple(VOCABULARIES[v] for v in UNNAMED)


def invited_vocabulary(question: str) -> Vocabulary:
    """The vocabulary a yes/no question's answer is worded in (see invited_vocabularies)."""
    return invited_vocabularies(question)[0]


_WORD = re.compile(r"[a-z]+")


def parse_yes_no(text: str, vocab: Vocabulary | None = None) -> bool | None:
    """VLMEvalKit's rule: positive only if a positive word appears and no negative word does
    (and the reverse); None when undecided.

    With `vocab` only its two words count (a true/false question is scored in true/false);
    without, the words of every registered vocabulary do ("yes", "true", "correct", "right"
    against "no", "false", "incorrect", "wrong").
    """
    vocabs = [vocab] if vocab is not None else list(VOCABULARIES.values())
    words = set(_WORD.findall((text or "").lower()))
    yes = any(v.yes in words for v in vocabs)
    no = any(v.no in words for v in vocabs)
    if yes == no:
        return None
    return yes


# -- Numbers: one parser, one unit table, one scoring rule -----------------------------------

_NUMBER = re.compile(
    r"(?<![\w.])([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
    r"(millimet(?:er|re)s?|centimet(?:er|re)s?|met(?:er|re)s?|mm|cm|m|degrees?|deg|°)?(?!\w)",
    re.IGNORECASE,
)
# unit word (lower case, plural stripped) -> (canonical unit, factor to it)
UNITS: dict[str, tuple[str, float]] = {
    "": ("", 1.0),
    "m": ("m", 1.0),
    "meter": ("m", 1.0),
    "metre": ("m", 1.0),
    "cm": ("m", 0.01),
    "centimeter": ("m", 0.01),
    "centimetre": ("m", 0.01),
    "mm": ("m", 0.001),
    "millimeter": ("m", 0.001),
    "millimetre": ("m", 0.001),
    "degree": ("deg", 1.0),
    "deg": ("deg", 1.0),
    "°": ("deg", 1.0),
}


def canonical(value: float, unit: str) -> tuple[float, str]:
    """A value in its canonical unit: (30, "cm") -> (0.3, "m"); an unknown unit raises
    ValueError naming the known ones."""
    word = (unit or "").strip().lower()
    if word not in UNITS and word.endswith("s"):
        word = word[:-1]
    if word not in UNITS:
        known = ", ".join(sorted(u for u in UNITS if u))
        raise ValueError(f"unknown unit {unit!r}; known: {known}")
    unit_out, factor = UNITS[word]
    return float(value) * factor, unit_out


def parse_number(text: str) -> tuple[float, str] | None:
    """The first number in `text` and its unit, lengths converted to metres; None if none.

    "1.25 m" -> (1.25, "m"); "30 cm" -> (0.3, "m"); "about 3" -> (3.0, ""); ".5m" -> (0.5, "m").
    """
    match = _NUMBER.search(text or "")
    if match is None:
        return None
    return canonical(float(match.group(1)), match.group(2) or "")


NUMBER_FACTOR = 2.0  # a number answer is right within a factor of 2 of the truth (VQASynth)


def number_correct(pred: float | None, truth: float, factor: float = NUMBER_FACTOR) -> bool:
    """The one rule for number answers: the ratio of prediction and truth is below `factor`
    either way (both in the same canonical unit); a missing or non-finite value is wrong."""
    if pred is None or not math.isfinite(pred):
        return False
    if truth == 0 or pred == 0:
        return pred == truth
    if (pred > 0) != (truth > 0):
        return False
    ratio = pred / truth
    return max(ratio, 1.0 / ratio) < factor


def agrees_with_item(item: dict, answer) -> bool:
    """Does an answer (a core Answer or a SpatialAnswer message) agree with a dataset item's
    known answer? The demo's scoring (also `bench/research/demo_gap.py`); the evaluator's
    `training.scoring.score` applies the same rules to text predictions."""
    if answer.status != Status.OK:
        return False
    kind = item["answer_kind"]
    if kind == "yes_no":
        label = item.get("label")
        truth = bool(label) if label is not None else parse_yes_no(item["answer"])
        return truth is not None and bool(answer.verdict) == truth
    if kind == "choice":
        options = item["options"]
        return 0 <= answer.choice_index < len(options) and (
            options[answer.choice_index] == item["answer"]
        )
    if kind == "number":
        truth, _ = canonical(float(item["value"]), item.get("unit", "") or "")
        value = float(answer.value)
        unit = str(getattr(answer, "unit", "") or "")
        if math.isfinite(value) and unit:
            try:
                value, _ = canonical(value, unit)
            except ValueError:
                return False
        return number_correct(value, truth)
    raise ValueError(f"answer kind {kind!r} is not scored")
