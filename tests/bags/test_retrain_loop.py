"""`vsre retrain` end to end on a tiny model: bag -> ingest -> sim expand -> stage 2 -> compare.

The bag is written here with rosbags: rendered sim frames, their SceneTruth (the scene file,
which the sim expansion re-renders), relation queries and the operator's corrections.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vsre_ros.training import retrain as loop

SEC = 1_000_000_000


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from vsre_ros.core.config import ModelConfig, tiny_encoders, tiny_lm
    from vsre_ros.core.model import VSREModel

    torch.manual_seed(0)
    config = ModelConfig(
        name="retrain-tiny",
        encoders=tiny_encoders(hidden=32, layers=1, heads=2, image=32, patch=8),
        fusion="sequence",
        fusion_grid=4,
        projector_depth=2,
        lm=tiny_lm(hidden=64, layers=2, heads=2, ffn=128),
    )
    folder = tmp_path_factory.mktemp("model") / "deployed"
    VSREModel(config).save_pretrained(folder)
    return folder


def _sim_bag(builder, path, frames=10):
    from vsre_ros.sim_data.relations import Facts, decide
    from vsre_ros.sim_data.render import Simulator
    from vsre_ros.sim_data.scene import LayoutConfig, sample_scene

    with Simulator(48, 48) as sim:
        for k in range(frames):
            scene = sample_scene(
                np.random.default_rng(k),
                f"{k}-0",
                config=LayoutConfig(min_objects=2, max_objects=3),
            )
            sim.load(scene)
            view = sim.render(scene.views[0])
            facts = Facts(scene, sim.gaps(), np.array([o["center_cam"] for o in view.objects]))
            t = (k + 1) * SEC
            builder.add("/cam/color", t, builder.image(view.rgb, t))
            truth = builder.truth(scene.scene_id, t, json.dumps(scene.to_dict()))
            builder.add("/sim/truth", t + 1, truth)
            subj, obj = scene.objects[0].name, scene.objects[1].name
            for j, relation in enumerate(("left of", "right of")):
                holds = decide(facts, relation, 0, 1)
                if holds is None:
                    continue
                query_id = f"f{k}-{j}"
                question = f"Is the {subj} {relation} the {obj}?"
                query = builder.query(query_id, ns=t, subj=subj, relation=relation, obj=obj,
                                      question=question)  # fmt: skip
                builder.add("/vsre/query", t + 10 + j, query)
                fix = builder.correction(query_id, t + 20 + j, verdict=bool(holds))
                builder.add("vsre/corrections", t + 20 + j, fix)
    return builder.write(path)


def test_loop_exports_only_a_model_that_is_not_worse(builder, tiny_model_dir, tmp_path, capsys):
    from vsre_ros.core.model import VSREModel

    bag = _sim_bag(builder, tmp_path / "week1")
    cfg = loop.RetrainConfig(
        bags=[str(bag)],
        current=str(tiny_model_dir),
        export=str(tmp_path / "export"),
        work=str(tmp_path / "work"),
        test_fraction=0.4,
        expand_mode="sim",
        steps=2,
        batch_size=4,
        tolerance=1.0,  # any new model counts as not worse
        progress=False,
    )
    summary = loop.retrain(cfg)
    printed = capsys.readouterr().out
    assert "previous" in printed and "decision: export" in printed
    assert summary["expanded_items"] > 0 and summary["train_items"] > summary["expanded_items"]
    assert summary["ingest"]["unreadable"] == []
    comparison = summary["comparison"]
    assert comparison["n_items"] > 0 and comparison["export"]
    current = tmp_path / "export" / "current"
    assert current.resolve() == (tmp_path / "export" / "model-0001").resolve()
    assert (current.resolve().stat().st_mode & 0o777) == 0o755
    reloaded = VSREModel.from_pretrained(current)
    assert reloaded.config.name == "retrain-tiny"
    history = (tmp_path / "export" / "history.jsonl").read_text().splitlines()
    assert json.loads(history[0])["model"] == "model-0001"

    # The same command again: the turn resumes, its model is byte-identical to model-0001,
    # and it is not exported a second time.
    summary = loop.retrain(cfg)
    assert "byte-identical to" in capsys.readouterr().out
    assert not summary["exported"] and summary["identical_to"] == "model-0001"
    assert sorted(p.name for p in (tmp_path / "export").glob("model-*")) == ["model-0001"]

    # The same turn with a bar no model can clear: nothing new is exported.
    cfg.tolerance = -1.01
    summary = loop.retrain(cfg)
    assert "decision: keep the previous model" in capsys.readouterr().out
    assert not summary["exported"]
    assert sorted(p.name for p in (tmp_path / "export").glob("model-*")) == ["model-0001"]


@pytest.mark.parametrize(
    ("previous", "new", "tolerance", "export"),
    [(0.6, 0.6, 0.0, True), (0.6, 0.59, 0.0, False), (0.6, 0.59, 0.02, True), (None, 0.5, 0, True),
     (0.5, None, 0.0, False)],
)  # fmt: skip
def test_export_decision(previous, new, tolerance, export):
    assert loop.decide_export(previous, new, tolerance)[0] is export


def test_loop_without_corrections_says_what_to_do(builder, tiny_model_dir, tmp_path):
    builder.add("/cam/color", SEC, builder.image(np.zeros((8, 8, 3), np.uint8), SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC))
    bag = builder.write(tmp_path / "quiet")
    cfg = loop.RetrainConfig([str(bag)], str(tiny_model_dir), str(tmp_path / "export"),
                             work=str(tmp_path / "work"), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="nothing to train on.*--use-model-answers"):
        loop.retrain(cfg)


def test_a_new_bag_or_model_starts_a_fresh_turn(tmp_path):
    bag, model = tmp_path / "bag", tmp_path / "model"
    bag.mkdir()
    model.mkdir()
    (bag / "b.mcap").write_bytes(b"x")
    (model / "weights").write_bytes(b"w")
    cfg = loop.RetrainConfig([str(bag)], str(model), str(tmp_path / "export"))
    first = loop.fingerprint(cfg)
    cfg.tolerance = 0.5  # the export bar is not an input of the turn
    assert loop.fingerprint(cfg) == first
    (bag / "b.mcap").write_bytes(b"xy")
    assert loop.fingerprint(cfg) != first
    second = loop.fingerprint(cfg)
    (model / "weights").write_bytes(b"w2")
    assert loop.fingerprint(cfg) not in (first, second)


def test_cli_reports_a_missing_model(tmp_path, capsys):
    from vsre_ros import cli

    argv = ["retrain", "--bags", str(tmp_path), "--current", str(tmp_path / "nope")]
    assert cli.main([*argv, "--export", str(tmp_path / "export")]) == 2
    assert "is not a model directory" in capsys.readouterr().err


class Trained(Exception):
    """Raised by a stand-in for training: the loop got that far."""


def _short_bag(builder, path, seconds=6, cameras=("/a/color", "/b/color")):
    """A bag shorter than the default 10 s window: frames of two cameras at the same instants,
    one corrected query per frame."""
    for k in range(seconds):
        t = (k + 1) * SEC
        for c, camera in enumerate(cameras):
            stamp = t + 2_000_000 * c  # the second camera's stamp lags by 2 ms
            pixels = np.full((8, 8, 3), 20 * k, np.uint8)
            builder.add(camera, stamp, builder.image(pixels, stamp, frame_id=camera))
            query_id = f"{camera}/{k}"
            builder.add("/vsre/query", stamp + 1, builder.query(query_id, ns=stamp, camera=camera))
            fix = builder.correction(query_id, stamp + 2, verdict=bool(k % 2))
            builder.add("vsre/corrections", stamp + 2, fix)
    return builder.write(path)


def test_held_out_split_is_checked_before_training(builder, tmp_path, monkeypatch):
    from vsre_ros.training import train as train_module

    def refuse(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(train_module, "train", refuse)
    bag = _short_bag(builder, tmp_path / "short")
    model = tmp_path / "model"
    model.mkdir()
    cfg = loop.RetrainConfig([str(bag)], str(model), str(tmp_path / "export"),
                             work=str(tmp_path / "work"), expand_mode="none",
                             progress=False)  # fmt: skip
    # One 10 s window holds every frame: nothing can be held out, and it says so untrained.
    with pytest.raises(ValueError, match=r"1 split group.*--split-window 10 s.*shorter"):
        loop.retrain(cfg)
    # A 1 s window gives six groups; one at least is held out, and training starts.
    cfg.split_window = 1.0
    with pytest.raises(Trained):
        loop.retrain(cfg)


def test_split_window_is_an_option_of_the_command():
    from vsre_ros import cli

    argv = ["retrain", "--bags", "b", "--current", "m", "--export", "e", "--split-window", "1.5"]
    assert cli.build_parser(argv).parse_args(argv).split_window == 1.5


def test_frames_of_one_instant_stay_on_one_side(builder, tmp_path):
    from vsre_ros.training import bags
    from vsre_ros.training.items import read_vsre

    bag = _short_bag(builder, tmp_path / "short", seconds=12)
    config = bags.IngestConfig(split_window=1.0, val_fraction=0.0, test_fraction=0.5)
    bags.ingest([bag], tmp_path / "ds", config)
    by_instant = {}  # the frame number (the same for both cameras) -> splits its items took
    for split in ("train", "test"):
        for item in read_vsre(tmp_path / "ds", split):
            by_instant.setdefault(item.question.split("/")[-1], set()).add(split)
    assert len(by_instant) == 12
    assert all(len(sides) == 1 for sides in by_instant.values())
    assert {s for sides in by_instant.values() for s in sides} == {"train", "test"}


def test_an_export_identical_to_an_earlier_one_is_found(tmp_path):
    model = tmp_path / "run" / "final"
    model.mkdir(parents=True)
    (model / "weights.safetensors").write_bytes(b"weights")
    export = tmp_path / "export"
    digest = loop.model_digest(model)
    assert loop.exported_copy(digest, export) == ""
    loop.export_model(model, export, {"digest": digest})
    assert loop.exported_copy(digest, export) == "model-0001"
    (model / "weights.safetensors").write_bytes(b"weights, tuned")
    assert loop.exported_copy(loop.model_digest(model), export) == ""
