"""`vsre ask`: answers from image files; clear failures for a missing model or bad image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from core_helpers import small_config
from PIL import Image

from vsre_ros.cli import main
from vsre_ros.core import ask
from vsre_ros.core.model import VSREModel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return VSREModel(small_config()).save_pretrained(tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "frame.png"
    Image.fromarray(np.full((24, 32, 3), 200, np.uint8)).save(path)
    return path


def test_ask_prints_a_yes_no_answer(model_dir, image_file, capsys):
    code = main(["ask", "--model", str(model_dir), "--image", str(image_file), "Is it left?"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.split()[0] in ("yes", "no")


def test_ask_json_with_two_images_and_choice(model_dir, image_file, capsys):
    argv = ["ask", "--model", str(model_dir), "--image", str(image_file)]
    argv += ["--image", str(image_file), "--kind", "choice", "--option", "A", "--option", "B"]
    assert main([*argv, "--json", "Which one?"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "OK" and answer["text"] in ("A", "B")


def test_ask_without_default_model_says_what_to_do(image_file, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(ask, "DEFAULT_MODEL", tmp_path / "absent")
    assert main(["ask", "--image", str(image_file), "Is it?"]) == 2
    assert "--model" in capsys.readouterr().err


def test_ask_reports_unreadable_image_and_bad_question(model_dir, tmp_path, image_file, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["ask", "--model", str(model_dir), "--image", str(bad), "Is it?"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert main(["ask", "--model", str(model_dir), "--image", str(image_file), " "]) == 1
    assert "BAD_QUESTION" in capsys.readouterr().err


def test_ask_prefers_embedded_weights_for_a_preset_id(model_dir, image_file, capsys, monkeypatch):
    import shutil

    models = model_dir.parent / "models"
    shutil.copytree(model_dir, models / "vsre-tiny")
    monkeypatch.setattr(ask, "DEFAULT_MODEL", models / "vsre-tiny")
    argv = ["ask", "--model", "vsre-tiny", "--json", "--image", str(image_file), "Is it?"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == "test-tiny"
    monkeypatch.setattr(ask, "DEFAULT_MODEL", models / "absent")
    assert main(["ask", "--model", "vsre-tiny-channel", "--image", str(image_file), "Is it?"]) == 0
    assert "RANDOM" in capsys.readouterr().err
