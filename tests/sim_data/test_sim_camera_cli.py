"""SimCamera (what the ROS sim camera node uses) and the `vsre generate` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from vsre_ros.sim_data import SimCamera, restyle
from vsre_ros.sim_data.cli import parse_size
from vsre_ros.sim_data.relations import Facts, decide
from vsre_ros.sim_data.scene import Scene

from vsre_ros.cli import main


@pytest.fixture(scope="module")
def camera():
    cam = SimCamera(seed=4, width=80, height=60)
    yield cam
    cam.close()


def test_next_gives_frame_truth_and_answered_questions(camera):
    rgb, depth, K, truth, items = camera.next()
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8
    assert depth.shape == (60, 80) and depth.dtype == np.float32
    assert K[0, 0] == K[1, 1] and K[0, 2] == 40 and K[1, 2] == 30
    json.dumps(truth)  # JSON-able
    assert truth["objects"] and truth["renders"][0]["camera"]["K"] == K.tolist()
    assert items and all(it["answer"] != "" and it["question"] for it in items)
    assert all(len(it["images"]) == 1 for it in items)


def test_frames_are_deterministic_and_advance(camera):
    a = camera.frame(7)
    b = camera.frame(7)
    c = camera.frame(8)
    assert np.array_equal(a.rgb, b.rgb) and a.items == b.items
    assert not np.array_equal(a.rgb, c.rgb)


def test_relation_answers_agree_with_the_truth_they_came_from(camera):
    frame = camera.frame(2)
    scene = Scene.from_dict(frame.truth)
    cam = np.array([o["center_cam"] for o in frame.truth["renders"][0]["objects"]])
    facts = Facts(scene, np.array(frame.truth["gaps"]), cam)
    rel_items = [it for it in frame.items if it["task"] == "relation"]
    assert rel_items
    for it in rel_items:
        idx = [m - 1 for m in it["mask_ids"]]
        assert decide(facts, it["relation"], *idx) is bool(it["label"])


def test_render_reproduces_a_frame_from_its_truth_and_restyle_changes_pixels(camera):
    frame = camera.frame(3)
    again = camera.render(frame.truth)
    assert np.array_equal(again.rgb, frame.rgb)
    new = camera.render(restyle(Scene.from_dict(frame.truth), np.random.default_rng(0)))
    assert not np.array_equal(new.rgb, frame.rgb)


def test_parse_size():
    assert parse_size("96") == (96, 96)
    assert parse_size("320x240") == (320, 240)
    with pytest.raises(Exception, match="too small"):
        parse_size("8")


def test_vsre_generate_writes_dataset_check_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(["generate", "--out", str(out), "--n", "40", "--seed", "2", "--size", "40",
                 "--workers", "1", "--no-progress", "--sheet", "8"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "wrote 40 items" in text and "split check: ok" in text
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width >= 4 * 200 and sheet.height >= 2 * 300
    assert json.loads((out / "split_check.json").read_text())["ok"]
    # A second run into the same directory is refused rather than mixing two datasets.
    assert main(["generate", "--out", str(out), "--n", "4", "--workers", "1"]) == 2
