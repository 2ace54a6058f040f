"""Core Query/Answer <-> interface messages: the enums match the constants, fields carry over."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vsre_ros.msg import SpatialAnswer, SpatialQuery

from vsre_ros.core.answers import Answer, AnswerKind, GroundedObject, Source, Status
from vsre_ros.ros.messages import answer_to_msg, check_query, failure_msg, query_from_msg


def test_status_and_kind_values_equal_the_message_constants():
    for status in Status:
        assert getattr(SpatialAnswer, status.name) == status.value
    for kind in AnswerKind:
        assert getattr(SpatialQuery, f"KIND_{kind.name}") == kind.value
    for source in Source:
        assert getattr(SpatialAnswer, f"SOURCE_{source.name}") == source.value


def test_grounded_objects_carry_over_and_become_markers():
    from visualization_msgs.msg import Marker

    from vsre_ros.ros.messages import markers_msg

    placed = GroundedObject(
        "red cup", (0.1, 0.2, 0.3, 0.5), 0.7, (0.1, -0.2, 1.5), (0.08, 0.1, 0.05), True
    )
    flat = GroundedObject("blue box", (0.5, 0.5, 0.9, 0.9), 0.4)
    answer = Answer(
        text="0.42 m", value=0.42, unit="m", source=Source.GEOMETRY, objects=[placed, flat]
    )
    msg = answer_to_msg(answer, "q")
    msg.header.frame_id = "cam_optical"
    assert msg.source == SpatialAnswer.SOURCE_GEOMETRY
    first, second = msg.objects
    assert first.phrase == "red cup" and first.depth_used and first.score == pytest.approx(0.7)
    np.testing.assert_allclose(first.box, [0.1, 0.2, 0.3, 0.5], rtol=1e-6)
    assert (first.position.x, first.position.y, first.position.z) == (0.1, -0.2, 1.5)
    assert (first.extent.x, first.extent.y, first.extent.z) == (0.08, 0.1, 0.05)
    assert not second.depth_used and math.isnan(second.position.z)
    markers = markers_msg(msg).markers
    assert [m.type for m in markers[1:]] == [Marker.CUBE, Marker.TEXT_VIEW_FACING]
    assert markers[0].action == Marker.DELETEALL  # the previous answer's markers go
    assert markers[1].pose.position.z == 1.5 and markers[1].scale.x == pytest.approx(0.08)
    assert markers[2].text == "red cup" and markers[1].header.frame_id == "cam_optical"
    msg.objects = [second]
    assert markers_msg(msg) is None  # nothing measured in 3D: no markers


def test_query_fields_carry_over():
    msg = SpatialQuery(
        query_id="q", question="Which?", subj="cup", relation="left of", obj="box",
        answer_kind=SpatialQuery.KIND_CHOICE, options=["a", "b"],
    )  # fmt: skip
    image = np.zeros((2, 2, 3), np.uint8)
    query = query_from_msg(msg, [image], image_keys=[("cam", 5)])
    assert (query.question, query.subj, query.relation, query.obj) == (
        "Which?",
        "cup",
        "left of",
        "box",
    )
    assert query.answer_kind == AnswerKind.CHOICE and query.options == ["a", "b"]
    assert query.images[0] is image and query.depth == [None] and query.image_keys == [("cam", 5)]
    assert query.query_id == "q"


def test_answer_fields_carry_over_and_failures_have_nan_values():
    answer = Answer(text="1.5 m", value=1.5, unit="m", probability=0.8, model_id="m")
    msg = answer_to_msg(answer, "q1")
    assert (msg.query_id, msg.status, msg.answer, msg.value, msg.unit) == (
        "q1",
        SpatialAnswer.OK,
        "1.5 m",
        1.5,
        "m",
    )
    assert msg.model_id == "m" and msg.choice_index == -1
    failed = failure_msg(Status.NO_FRAME, "no frame", "q2")
    assert failed.status == SpatialAnswer.NO_FRAME and failed.error == "no frame"
    assert math.isnan(failed.value)


def test_check_query_accepts_a_plain_question():
    assert check_query(SpatialQuery(question="Is it left?"), 100) is None


def test_check_query_limits_and_max_age():
    from vsre_ros.ros.messages import Limits

    limits = Limits(max_question_chars=100, max_options=3, max_option_chars=4)

    def problem(**fields):
        found = check_query(SpatialQuery(question="Which?", **fields), limits)
        return found and (found[0], found[1])

    choice = SpatialQuery.KIND_CHOICE
    assert problem(answer_kind=choice, options=["a", "b", "c"]) is None
    assert "the limit is 3" in problem(answer_kind=choice, options=list("abcd"))[1]
    assert "option #1 has 5 characters" in problem(answer_kind=choice, options=["a", "bbbbb"])[1]
    assert "option #0 is empty" in problem(answer_kind=choice, options=[" ", "b"])[1]
    for bad in (-0.5, math.nan, math.inf):
        status, why = problem(max_age=bad)
        assert status == Status.BAD_QUESTION and "max_age" in why
    assert problem(max_age=0.0) is None and problem(max_age=2.5) is None


def test_errors_never_carry_an_object_repr():
    msg = failure_msg(Status.BAD_IMAGE, "cannot identify <_io.BytesIO object at 0x7f3a2c>", "q")
    assert msg.error == "cannot identify the data"
