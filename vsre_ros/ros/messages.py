"""vsre_ros interface messages to and from the core `Query` / `Answer`, one field at a time."""

from __future__ import annotations

import math
import re

from vsre_ros.core.answers import (
    Answer,
    AnswerKind,
    GroundedObject,
    Query,
    QueryLimits,
    Status,
    question_problem,
)


class Limits(QueryLimits):
    """The server's query limits (`QueryLimits` read from its parameters)."""

    @classmethod
    def of(cls, params) -> Limits:
        """The limits set by a ServerParams (or anything with these attribute names)."""
        return cls(params.max_question_chars, params.max_options, params.max_option_chars)


def check_query(msg, limits: QueryLimits | int) -> tuple[Status, str] | None:
    """(BAD_QUESTION, why) when the query cannot be asked as it is, else None: the core's rule
    (`question_problem`) plus what only a message carries (`max_age`).

    `limits` is a QueryLimits, or an int: the question length limit with the other defaults.
    """
    if isinstance(limits, int):
        limits = QueryLimits(max_question_chars=limits)
    problem = question_problem(msg.question, msg.answer_kind, list(msg.options), limits)
    if problem is None and (not math.isfinite(msg.max_age) or msg.max_age < 0):
        problem = f"max_age is {msg.max_age}; give seconds >= 0 (0 = the server's max_frame_age)"
    return None if problem is None else (Status.BAD_QUESTION, problem)


def query_from_msg(msg, images, depth=None, image_keys=None, intrinsics=None) -> Query:
    """The core Query for a SpatialQuery, given the (already converted) images it is about
    and, per image, its depth in metres and its camera's K (CameraInfo.k) when known."""
    return Query(
        question=msg.question,
        images=list(images),
        answer_kind=AnswerKind(msg.answer_kind),
        options=list(msg.options),
        subj=msg.subj,
        relation=msg.relation,
        obj=msg.obj,
        depth=list(depth) if depth is not None else [None] * len(images),
        intrinsics=list(intrinsics) if intrinsics is not None else [None] * len(images),
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
    msg.error = readable(answer.error)
    msg.answer = answer.text
    msg.verdict = bool(answer.verdict)
    msg.probability = float(answer.probability)
    msg.choice_index = int(answer.choice_index)
    msg.value = float(answer.value) if answer.value is not None else math.nan
    msg.unit = answer.unit
    msg.model_id = answer.model_id
    msg.latency_model_ms = float(answer.latency_model_ms)
    msg.source = int(answer.source)
    msg.objects = [grounded_to_msg(o) for o in answer.objects]
    return msg


def grounded_to_msg(obj: GroundedObject):
    """A vsre_ros/GroundedObject for a core GroundedObject."""
    from geometry_msgs.msg import Point, Vector3

    from vsre_ros.msg import GroundedObject as GroundedObjectMsg

    x, y, z = (float(v) for v in obj.position)
    ex, ey, ez = (float(v) for v in obj.extent)
    return GroundedObjectMsg(
        phrase=obj.phrase,
        box=[float(v) for v in obj.box],
        score=float(obj.score),
        position=Point(x=x, y=y, z=z),
        extent=Vector3(x=ex, y=ey, z=ez),
        depth_used=bool(obj.depth_used),
    )


# "<_io.BytesIO object at 0x7f...>", "<function f at 0x...>": an object's repr says nothing to
# a caller and changes from run to run.
_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def readable(text: str) -> str:
    """`text` with object reprs (`<... at 0x...>`) taken out, for an answer's `error`."""
    return _OBJECT_REPR.sub("the data", text)


def failure_msg(status: Status, error: str, query_id: str, header=None, model_id: str = ""):
    """A SpatialAnswer reporting a problem instead of a result (object reprs taken out)."""
    answer = Answer.failure(status, error, query_id)
    answer.model_id = model_id
    return answer_to_msg(answer, query_id, header)


MARKER_NAMESPACE = "vsre"
_MARKER_RGBA = (0.1, 0.9, 0.2, 0.6)  # the boxes' colour; labels are white


def markers_msg(answer):
    """A visualization_msgs/MarkerArray showing a SpatialAnswer's objects measured in 3D: a
    box (CUBE at `position`, sized `extent`) and a label per object, in the answer's frame,
    after a DELETEALL that clears the previous answer's. None when no object has depth."""
    from visualization_msgs.msg import Marker, MarkerArray

    placed = [o for o in answer.objects if o.depth_used]
    if not placed:
        return None
    markers = [Marker(header=answer.header, ns=MARKER_NAMESPACE, action=Marker.DELETEALL)]
    for k, obj in enumerate(placed):
        box = Marker(header=answer.header, ns=MARKER_NAMESPACE, id=2 * k, type=Marker.CUBE)
        box.pose.position = obj.position
        box.pose.orientation.w = 1.0
        box.scale.x, box.scale.y, box.scale.z = (
            max(float(v), 0.01) for v in (obj.extent.x, obj.extent.y, obj.extent.z)
        )
        box.color.r, box.color.g, box.color.b, box.color.a = _MARKER_RGBA
        label = Marker(
            header=answer.header, ns=MARKER_NAMESPACE, id=2 * k + 1, type=Marker.TEXT_VIEW_FACING
        )
        label.pose.position.x = obj.position.x
        label.pose.position.y = obj.position.y - box.scale.y / 2 - 0.03  # above it (y is down)
        label.pose.position.z = obj.position.z
        label.pose.orientation.w = 1.0
        label.scale.z = 0.04
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = obj.phrase
        markers += [box, label]
    return MarkerArray(markers=markers)
