"""The server node answers from the hub-layout checkpoints (fp16, shards, processor files),
named through a model file: the `model` parameter takes the preset with its paths file."""

from __future__ import annotations

import importlib.util
import uuid

import numpy as np
import pytest
import torch
import yaml
from ros_helpers import ROOT, model_server_params
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.srv import AskSpatial

from vsre_ros.ros.conversions import numpy_to_imgmsg

pytestmark = pytest.mark.dds

PREFIX = f"/real_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.set_num_threads(1)
    path = ROOT / "tests" / "checkpoints" / "hub_fixture.py"
    spec = importlib.util.spec_from_file_location("hub_fixture_ros", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hub = module.build_hub(tmp_path_factory.mktemp("hub"))
    out = hub["paper_paths"].parent / "vsre-paper-model.yaml"
    out.write_text(yaml.safe_dump({"preset": "vsre-paper", "paths_file": "vsre-paper-paths.yaml"}))
    return str(out)


def test_server_answers_from_real_layout_checkpoints(model_file, make_server, ros_client):
    make_server(model_server_params(PREFIX, model_file, device="cpu"))
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    cli = ros_client.node.create_client(AskSpatial, f"{PREFIX}/ask")
    assert cli.wait_for_service(timeout_sec=20)

    def ask(n_images: int) -> SpatialAnswer:
        query = SpatialQuery(
            query_id="r1",
            question="Is the red cup left of the box?",
            answer_kind=SpatialQuery.KIND_YES_NO,
            images=[numpy_to_imgmsg(frame, "rgb8")] * n_images,
        )
        return ros_client.wait(cli.call_async(AskSpatial.Request(query=query)), 120).answer

    answer = ask(1)
    assert answer.status == SpatialAnswer.OK, answer.error
    assert answer.model_id == "vsre-paper" and answer.answer in ("yes", "no")
    too_long = ask(3)  # 3 x 1817 image tokens exceed the LM's 4096 positions
    assert too_long.status == SpatialAnswer.BAD_QUESTION and "4096" in too_long.error
