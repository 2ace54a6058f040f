"""Training configs: round trips, clear errors, shipped recipes, command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from vsre_ros.training.config import StageConfig, TrainConfig, dump_config, load_config
from vsre_ros.training.losses import LOSSES
from vsre_ros.training.train import add_arguments, config_from_args, stage_items

RECIPES = sorted((Path(__file__).resolve().parents[2] / "training" / "recipes").glob("*.yaml"))


def test_config_round_trips_through_yaml(tmp_path):
    config = TrainConfig(data="d", stages=[StageConfig(name="a", betas=(0.8, 0.9))])
    dump_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == config


def test_unknown_fields_and_modes_are_named(tmp_path):
    (tmp_path / "c.yaml").write_text("stages:\n  - {name: a, lr_max: 1}\n")
    with pytest.raises(ValueError, match=r"unknown StageConfig fields \['lr_max'\]"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("stages:\n  - {name: a, freeze: stage3}\n")
    with pytest.raises(ValueError, match="unknown freeze mode 'stage3'; known: stage1, stage2"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text("epochs: 3\n")
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['epochs'\]"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipes_load_and_name_known_losses(recipe):
    config = load_config(recipe)
    assert config.stages
    for stage in config.stages:
        assert set(stage.aux_losses) <= set(LOSSES)


def test_command_line_overrides_the_chosen_stages_only(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--stages", "stage2", "--steps", "7", "--data", "x"])
    config, names = config_from_args(args)
    assert names == ["stage2"] and config.data == "x"
    assert [s.steps for s in config.stages] == [1000, 7]


def test_stage_filters_keep_one_polarity_and_the_task_mix():
    from vsre_ros.training.items import Item

    items = [
        Item(id="a", image="a.png", relation="left of", subj="x", obj="y", label=1),
        Item(id="b", image="b.png", relation="right of", subj="x", obj="y", label=1),
        Item(id="c", image="c.png", answer_kind="free_text", answer="top left",
             task="localization"),
        Item(id="d", image="d.png", answer_kind="number", value=1.0, task="metric"),
    ]  # fmt: skip
    stage = StageConfig(relations=["left of"], task_weights={"relation": 1, "localization": 1})
    assert [i.id for i in stage_items(items, stage)] == ["a", "c"]
    with pytest.raises(ValueError, match="no items left"):
        stage_items(items, StageConfig(relations=["above"], task_weights={"relation": 1}))
