"""vsre_ros.client: ask / ask_batch with timeouts, retries on OVERLOADED, dead servers."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import numpy as np
import pytest
from vsre_ros.msg import SpatialAnswer, SpatialQuery

from vsre_ros.client import VsreClient, is_timeout
from vsre_ros.ros.conversions import numpy_to_imgmsg

pytestmark = pytest.mark.dds

IMAGE = numpy_to_imgmsg(np.zeros((16, 16, 3), np.uint8), "rgb8")


def _q(i, **fields) -> SpatialQuery:
    return SpatialQuery(query_id=f"q{i}", question=f"Is thing {i} left?", images=[IMAGE], **fields)


def _names() -> dict:
    p = f"/c{uuid.uuid4().hex[:8]}"
    return {
        "service_name": f"{p}/ask",
        "action_name": f"{p}/ask_batch",
        "query_topic": f"{p}/queries",
        "answer_topic": f"{p}/answers",
        "annotated_topic": "",
        "cameras": [f"{p}/image"],
        "diagnostics_period": 0.0,
    }


def _client(names: dict, **kwargs) -> VsreClient:
    keys = ("service_name", "action_name", "query_topic", "answer_topic")
    extra = {k: names[k] for k in keys if k not in ("service_name", "action_name")}
    if kwargs.get("transport") != "topic":
        extra = {}
    return VsreClient.standalone(
        service_name=names["service_name"], action_name=names["action_name"], **extra, **kwargs
    )


def test_ask_and_ask_batch_return_the_servers_answers(make_server):
    names = _names()
    make_server({**names, "engine_backend": "stub", "model": "stub"})
    with _client(names) as vsre:
        answer = vsre.ask(_q(1), timeout=20)
        assert answer.status == SpatialAnswer.OK, answer.error
        assert answer.query_id == "q1" and answer.model_id == "stub"
        seen = []
        answers = vsre.ask_batch([_q(i) for i in range(10)], timeout=20, on_answer=seen.append)
        assert [a.query_id for a in answers] == [f"q{i}" for i in range(10)]
        assert all(a.status == SpatialAnswer.OK for a in answers)
        assert sorted(a.query_id for a in seen) == sorted(a.query_id for a in answers)
        assert vsre.ask_batch([], timeout=1) == []


def test_topic_transport_matches_answers_by_query_id(make_server):
    names = _names()
    make_server({**names, "engine_backend": "stub", "model": "stub"})
    with _client(names, transport="topic") as vsre:
        futures = [vsre.ask_async(_q(i), timeout=20) for i in range(20)]
        anonymous = vsre.ask_async(SpatialQuery(question="Is it?", images=[IMAGE]), timeout=20)
        answers = [f.result() for f in futures]
        assert [a.query_id for a in answers] == [f"q{i}" for i in range(20)]
        assert {a.status for a in answers} == {SpatialAnswer.OK}
        assert anonymous.result().status == SpatialAnswer.OK  # the client gave it an id
        assert anonymous.result().query_id


def test_topic_transport_waits_for_discovery_to_settle_before_the_first_query(make_server):
    # Right after the client sees the server's topics, the server may not see the client's yet;
    # an answer published then was lost (all 20 in one CI run). The first query waits `settle`.
    names = _names()
    make_server({**names, "engine_backend": "stub", "model": "stub"})
    with _client(names, transport="topic", settle=2.0) as vsre:
        start = time.monotonic()
        first = vsre.ask(_q(0), timeout=20)
        waited = time.monotonic() - start
        second = vsre.ask(_q(1), timeout=20)
        again = time.monotonic() - start - waited
    assert first.status == second.status == SpatialAnswer.OK
    assert waited >= 2.0 and again < 1.0  # only the first query waits
    with pytest.raises(ValueError, match="settle"):
        _client(names, transport="topic", settle=-1.0)


def test_overloaded_is_retried_with_backoff_until_answered(make_server):
    names = _names()
    make_server({**names, "engine_backend": "stub", "model": "stub:40", "queue_size": 1,
                 "batch_size": 1})  # fmt: skip
    with _client(names, retry_overloaded=False) as plain:
        first = [plain.ask_async(_q(i), timeout=20) for i in range(12)]
        assert SpatialAnswer.OVERLOADED in {f.result().status for f in first}
    with _client(names) as vsre:
        futures = [vsre.ask_async(_q(i), timeout=30) for i in range(12)]
        statuses = Counter(f.result().status for f in futures)
        assert statuses == {SpatialAnswer.OK: 12}, statuses
        # A batch whose queries come back OVERLOADED has those asked again too.
        answers = vsre.ask_batch([_q(i) for i in range(6)], timeout=30)
        assert {a.status for a in answers} == {SpatialAnswer.OK}


def test_no_server_ends_in_a_timeout_answer_not_a_hang():
    names = _names()
    with _client(names) as vsre:
        start = time.monotonic()
        answer = vsre.ask(_q(1), timeout=0.5)
        answers = vsre.ask_batch([_q(2), _q(3)], timeout=0.5)
        assert time.monotonic() - start < 3.0
    assert is_timeout(answer) and answer.status == SpatialAnswer.ERROR
    assert answer.query_id == "q1"
    assert "no server found" in answer.error and names["service_name"] in answer.error
    assert [is_timeout(a) for a in answers] == [True, True]
    assert [a.query_id for a in answers] == ["q2", "q3"]


def test_killed_server_times_out_in_flight_calls_and_a_restarted_one_answers(serve):
    slow = serve({"model": "stub:3000", "batch_size": 1})
    names = slow.names
    with _client(names) as vsre:
        assert vsre.ask(_q(0), timeout=60).status == SpatialAnswer.OK  # up and answering
        call = vsre.ask_async(_q(1), timeout=4.0)
        batch = vsre.ask_batch_async([_q(2), _q(3)], timeout=4.0)
        time.sleep(1.0)  # both are with the server now
        slow.kill()
        start = time.monotonic()
        answer, answers = call.result(timeout=10), batch.result(timeout=10)
        assert time.monotonic() - start < 4.0
        assert is_timeout(answer) and "within 4 s" in answer.error
        assert all(is_timeout(a) for a in answers)

        # A new server on the same names. While the killed one's endpoints linger in DDS, a
        # call can still go to it alone (the new one not yet discovered): it times out too.
        serve({**names, "model": "stub"})
        tries = [vsre.ask(_q(4), timeout=5.0)]
        while tries[-1].status != SpatialAnswer.OK and len(tries) < 8:
            tries.append(vsre.ask(_q(4), timeout=5.0))
        assert tries[-1].status == SpatialAnswer.OK, [a.error for a in tries]
        assert all(is_timeout(a) for a in tries[:-1])
        assert vsre.ask_batch([_q(5)], timeout=30)[0].status == SpatialAnswer.OK


def test_close_ends_the_calls_in_flight():
    vsre = _client(_names())
    future = vsre.ask_async(_q(1), timeout=60)
    vsre.close()
    answer = future.result(timeout=5)
    assert is_timeout(answer) and "closed" in answer.error
