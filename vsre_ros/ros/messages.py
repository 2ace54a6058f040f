"""vsre_ros interface messages to and from the core `Query` / `Answer`, one field at a time."""

from __future__ import annotations

import math

from vsre_ros.core.answers import Answer, AnswerKind, Query, Status


def check_query(msg, max_chars: int) -> tuple[Status, str] | None:
    """(BAD_QUESTION, why) when the query cannot be asked as it is, else None."""
    question = msg.question.strip()
    if not question:
        return Status.BAD_QUESTION, "the question is empty; put the question text in `question`"
    if len(msg.question) > max_chars:
        return (
            Status.BAD_QUESTION,
            f"the question has {len(msg.question)} characters; the limit is {max_chars} "
            "(parameter max_question_chars)",
        )
    if msg.answer_kind not in {k.value for k in AnswerKind}:
        known = ", ".join(f"{k.value}={k.name}" for k in AnswerKind)
        return Status.BAD_QUESTION, f"unknown answer_kind {msg.answer_kind}; known: {known}"
    if msg.answer_kind == AnswerKind.CHOICE and len(msg.options) < 2:
        return (
            Status.BAD_QUESTION,
            f"a choice question needs at least two options, got {len(msg.options)}",
        )
    return None


def query_from_msg(msg, images, depth=None, image_keys=None) -> Query:
    """The core Query for a SpatialQuery, given the (already converted) images it is about."""
    return Query(
        question=msg.question,
        images=list(images),
        answer_kind=AnswerKind(msg.answer_kind),
        options=list(msg.options),
        subj=msg.subj,
        relation=msg.relation,
        obj=msg.obj,
        depth=list(depth) if depth is not None else [None] * len(images),
        image_keys=list(image_keys) if image_keys is not None else [None] * len(images),
        query_id=msg.query_id,
    )


def answer_to_msg(answer: Answer, query_id: str, header=None):
    """A SpatialAnswer carrying `answer` for the query `query_id` (latency_total left to set)."""
    from vsre_ros.msg import SpatialAnswer

    msg = SpatialAnswer()
    if header is not None:
        msg.header = header
    msg.query_id = query_id
    msg.status = int(answer.status)
    msg.error = answer.error
    msg.answer = answer.text
    msg.verdict = bool(answer.verdict)
    msg.probability = float(answer.probability)
    msg.choice_index = int(answer.choice_index)
    msg.value = float(answer.value) if answer.value is not None else math.nan
    msg.unit = answer.unit
    msg.model_id = answer.model_id
    msg.latency_model_ms = float(answer.latency_model_ms)
    return msg


def failure_msg(status: Status, error: str, query_id: str, header=None, model_id: str = ""):
    """A SpatialAnswer reporting a problem instead of a result."""
    answer = Answer.failure(status, error, query_id)
    answer.model_id = model_id
    return answer_to_msg(answer, query_id, header)
