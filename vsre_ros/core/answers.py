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
    image_keys: list[Hashable | None] = field(default_factory=list)  # cache keys (cam, stamp)
    query_id: str = ""  # caller's id, echoed in the answer


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

    @classmethod
    def failure(cls, status: Status, error: str, query_id: str = "") -> Answer:
        """An answer that reports a problem instead of a result."""
        if status == Status.OK:
            raise ValueError("a failure answer needs a status other than OK")
        return cls(status=status, error=error, query_id=query_id)


# Parsing of generated answer text (used by the engine and by evaluators).

_NUMBER = re.compile(
    r"(?<![\w.])([-+]?\d+(?:\.\d+)?)\s*"
    r"(millimet(?:er|re)s?|centimet(?:er|re)s?|met(?:er|re)s?|mm|cm|m|degrees?|deg|°)?(?!\w)",
    re.IGNORECASE,
)
# unit word (lower case, plural stripped) -> (canonical unit, factor to it)
UNITS: dict[str, tuple[str, float]] = {
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


def parse_number(text: str) -> tuple[float, str] | None:
    """The first number in `text` and its unit, lengths converted to metres; None if none.

    "1.25 m" -> (1.25, "m"); "30 cm" -> (0.3, "m"); "about 3" -> (3.0, "").
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    unit_word = (match.group(2) or "").lower()
    if unit_word.endswith("s") and unit_word not in UNITS:
        unit_word = unit_word[:-1]
    if not unit_word:
        return value, ""
    unit, factor = UNITS[unit_word]
    return value * factor, unit


NUMBER_TOLERANCE = 0.25  # a number answer counts as right within 25 % (or 0.1 m) of the truth


def agrees_with_item(item: dict, answer) -> bool:
    """Does an answer (a core Answer or a SpatialAnswer message) agree with a dataset item's
    known answer? The demo's scoring, also used by `bench/research/demo_gap.py`."""
    if answer.status != Status.OK:
        return False
    kind = item["answer_kind"]
    if kind == "yes_no":
        truth = parse_yes_no(item["answer"])  # templates answer yes/no or true/false
        return truth is not None and answer.verdict == truth
    if kind == "choice":
        options = item["options"]
        return 0 <= answer.choice_index < len(options) and (
            options[answer.choice_index] == item["answer"]
        )
    if kind == "number":
        truth = float(item["value"])
        return math.isfinite(answer.value) and abs(answer.value - truth) <= max(
            0.1, NUMBER_TOLERANCE * abs(truth)
        )
    raise ValueError(f"answer kind {kind!r} is not scored")


def parse_yes_no(text: str) -> bool | None:
    """VLMEvalKit's rule: yes only if "yes" appears and "no" does not (and vice versa).

    "true"/"false" count as yes/no. Returns None when undecided.
    """
    words = set(re.findall(r"[a-z]+", text.lower()))
    yes = bool(words & {"yes", "true"})
    no = bool(words & {"no", "false"})
    if yes == no:
        return None
    return yes
