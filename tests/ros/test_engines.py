"""Engine registry of the server: model refs, the stub engine, unknown ids."""

from __future__ import annotations

import pytest

from vsre_ros.core.answers import AnswerKind, Query, Status
from vsre_ros.ros import engines


def test_preset_without_embedded_weights_says_random(monkeypatch, tmp_path):
    monkeypatch.setattr(engines, "EMBEDDED_MODELS", tmp_path)
    ref, note, random_weights = engines.resolve_model_ref("vsre-tiny")
    assert (ref, random_weights) == ("vsre-tiny", True)
    assert "RANDOM" in note and str(tmp_path / "vsre-tiny") in note


def test_preset_with_embedded_weights_loads_the_directory(monkeypatch, tmp_path):
    from vsre_ros.core.model import CONFIG_FILE

    (tmp_path / "vsre-tiny").mkdir()
    (tmp_path / "vsre-tiny" / CONFIG_FILE).write_text("{}")
    monkeypatch.setattr(engines, "EMBEDDED_MODELS", tmp_path)
    ref, note, random_weights = engines.resolve_model_ref("vsre-tiny")
    assert ref == str(tmp_path / "vsre-tiny") and not random_weights
    assert "trained weights" in note


def test_checkpoint_directory_is_passed_through():
    ref, _, random_weights = engines.resolve_model_ref("/data/ckpt")
    assert ref == "/data/ckpt" and not random_weights


def test_unknown_engine_backend_names_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown engine_backend 'gpu'; known: \['stub', 'vsre'\]"
    ):
        engines.make_engine("gpu", "stub", "", None)


def test_stub_engine_answers_every_kind_deterministically():
    engine = engines.make_engine("stub", "stub:1", "", None)
    queries = [
        Query("Is it left?", query_id="a"),
        Query("Which?", answer_kind=AnswerKind.CHOICE, options=["x", "y"], query_id="b"),
        Query("How far?", answer_kind=AnswerKind.NUMBER, query_id="c"),
        Query("Where?", answer_kind=AnswerKind.FREE_TEXT, query_id="d"),
    ]
    first, again = engine.answer(queries), engine.answer(queries)
    assert [a.query_id for a in first] == ["a", "b", "c", "d"]
    assert all(a.status == Status.OK and a.model_id == "stub:1" for a in first)
    assert [a.text for a in first] == [a.text for a in again]
    assert first[1].text == ["x", "y"][first[1].choice_index]
    assert first[2].unit == "m" and first[2].value > 0
    assert first[0].latency_model_ms >= 1.0


def test_stub_engine_refuses_other_models_and_adapters():
    engine = engines.StubEngine()
    with pytest.raises(ValueError, match="knows models 'stub' and 'stub:<ms per call>'"):
        engine.load("vsre-tiny")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        engine.load("stub", adapter="/x")
    assert engine.model_id == "stub"
