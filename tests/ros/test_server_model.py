"""The server node on a tiny random VSRE model saved in the real checkpoint layout."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from ros_helpers import model_server_params
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.srv import AskSpatial

from vsre_ros.core.config import ModelConfig, tiny_encoders, tiny_lm
from vsre_ros.ros.conversions import numpy_to_imgmsg

pytestmark = pytest.mark.dds


def _save_tiny(directory, name: str) -> str:
    from vsre_ros.core.model import VSREModel

    torch.manual_seed(len(name))
    config = ModelConfig(
        name=name,
        encoders=tiny_encoders(hidden=32, layers=2, heads=2, image=32, patch=8),
        fusion="sequence",
        projector_depth=2,
        lm=tiny_lm(hidden=64, layers=2, heads=2, ffn=128),
    )
    model = VSREModel(config).eval()
    model.save_pretrained(directory / name)
    model.attach_lora()
    model.lm.save_pretrained(str(directory / f"{name}-lora"))
    return str(directory / name)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    return _save_tiny(root, "tiny-a"), _save_tiny(root, "tiny-b")


def _ask(client, service_name: str, query: SpatialQuery) -> SpatialAnswer:
    from vsre_ros.srv import AskSpatial as Srv

    cli = client.node.create_client(Srv, service_name)
    assert cli.wait_for_service(timeout_sec=20)
    return client.wait(cli.call_async(AskSpatial.Request(query=query)), 60).answer


PREFIX = f"/model_{uuid.uuid4().hex[:8]}"  # names private to this test session


def _image_query(kind=SpatialQuery.KIND_YES_NO, **fields) -> SpatialQuery:
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    return SpatialQuery(
        query_id="m1",
        question="Is the red cup left of the box?",
        answer_kind=kind,
        images=[numpy_to_imgmsg(image, "rgb8")],
        **fields,
    )


def test_real_model_answers_switches_model_and_lora(checkpoints, make_server, ros_client):
    first, second = checkpoints
    server = make_server(model_server_params(PREFIX, first))
    answer = _ask(ros_client, f"{PREFIX}/ask", _image_query())
    assert answer.status == SpatialAnswer.OK, answer.error
    assert answer.model_id == "tiny-a"
    assert answer.answer in ("yes", "no")
    assert 0.0 <= answer.probability <= 1.0
    assert answer.verdict == (answer.probability >= 0.5)
    assert answer.latency_model_ms > 0

    choice = _ask(ros_client, f"{PREFIX}/ask", _image_query(1, options=["the cup", "the box"]))
    assert choice.status == SpatialAnswer.OK and choice.choice_index in (0, 1)

    result = server.node.set_parameters([Parameter("model", value=second)])[0]
    assert result.successful, result.reason
    assert _ask(ros_client, f"{PREFIX}/ask", _image_query()).model_id == "tiny-b"

    result = server.node.set_parameters([Parameter("lora", value=second + "-lora")])[0]
    assert result.successful, result.reason
    assert _ask(ros_client, f"{PREFIX}/ask", _image_query()).model_id == "tiny-b+tiny-b-lora"

    refused = server.node.set_parameters([Parameter("model", value=first + "-missing")])[0]
    assert not refused.successful and "-missing" in refused.reason
    assert _ask(ros_client, f"{PREFIX}/ask", _image_query()).model_id == "tiny-b+tiny-b-lora"


def test_missing_checkpoint_fails_configure_with_the_reason(make_server, tmp_path):
    server = make_server(model_server_params(PREFIX, str(tmp_path / "nowhere")), activate=False)
    assert server.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert "nowhere" in server.node.last_error
    assert server.node.engine is None


def test_embedded_model_answers_numbers_with_value_unit_and_text(make_server, ros_client):
    """The shipped vsre-tiny writes bare numbers of metres; answers carry "m" ("1.13 m")."""
    make_server(model_server_params(PREFIX, "vsre-tiny"))
    for question in (
        "How far apart are the red cup and the blue box, in metres?",
        "How tall is the green book, in metres?",
    ):
        query = _image_query(SpatialQuery.KIND_NUMBER)
        query.question = question
        answer = _ask(ros_client, f"{PREFIX}/ask", query)
        assert answer.status == SpatialAnswer.OK, answer.error
        assert answer.model_id == "vsre-tiny"
        assert answer.unit == "m"
        number, unit = answer.answer.split(" ")
        assert unit == "m" and float(number) == pytest.approx(answer.value)
