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
    comparison = summary["comparison"]
    assert comparison["n_items"] > 0 and comparison["export"]
    current = tmp_path / "export" / "current"
    assert current.resolve() == (tmp_path / "export" / "model-0001").resolve()
    assert (current.resolve().stat().st_mode & 0o777) == 0o755
    reloaded = VSREModel.from_pretrained(current)
    assert reloaded.config.name == "retrain-tiny"
    history = (tmp_path / "export" / "history.jsonl").read_text().splitlines()
    assert json.loads(history[0])["model"] == "model-0001"

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
