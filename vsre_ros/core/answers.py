"""What a query asks and what it gets back, independent of ROS.

`Query` and `Answer` are the engine's input and output. The ROS layer converts
`vsre_ros/SpatialQuery` and `vsre_ros/SpatialAnswer` to and from them one field at a time, so
`Status` and `AnswerKind` carry the same integer values as the message constants (a test pins
them together).
"""

from __future__ import annotations

import enum
import math
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
