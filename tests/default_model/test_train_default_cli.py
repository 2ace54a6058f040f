"""`vsre train-default` end to end at toy size: data, training, evaluation, export, ablation."""

from __future__ import annotations

import argparse
import json

import pytest
from vsre_ros.training import default_model
from vsre_ros.training.recipes.curriculum import curriculum

STEPS = sum(s.steps for s in curriculum("relations-grow", 2, 2, 2))  # the default curriculum


def args_for(tmp_path, out: str, **extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    default_model.add_arguments(parser)
    argv = [
        "--out", str(tmp_path / out), "--data", str(tmp_path / "data"), "--n", "40",
        "--steps-a", "2", "--steps-b", "2", "--batch-size", "2", "--val-every", "0",
        "--eval-items", "6", "--consistency-items", "1", "--no-progress",
    ]  # fmt: skip
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", *([value] if isinstance(value, str) else value)]
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    """An ablation run without SigLIP (it also generates the shared dataset)."""
    tmp = tmp_path_factory.mktemp("ablation")
    args = args_for(
        tmp, "no-siglip", families="clip,sam,dinov2", export="none", bank_weight="0.5",
        verdict_weight="0",
    )  # fmt: skip
    assert default_model.run(args) == 0
    return tmp


def test_an_ablation_run_records_its_families_and_task_figures(ablated):
    summary = json.loads((ablated / "no-siglip" / "summary.json").read_text())
    assert summary["families"] == ["clip", "sam", "dinov2"]
    assert summary["steps"] == STEPS
    assert set(summary["by_task"]) == {"random_test", "zeroshot_test", "consistency_random_test"}
    assert not (ablated / "no-siglip" / "export").exists()


def test_the_export_tables_the_ablation_runs(ablated):
    export = ablated / "export"
    runs = [str(ablated / "no-siglip")]
    args = args_for(ablated, "full", export=str(export), ablation_runs=runs)
    assert default_model.run(args) == 0
    card = (export / "MODEL_CARD.md").read_text()
    table = card.split("## Ablation: each encoder family removed in turn")[1]
    row = next(line for line in table.splitlines() if line.startswith("| clip, sam, dinov2 |"))
    assert f"| siglip | {STEPS} | 0.5 | 0.0 | 0 |" in row, "steps, weights and seed of that run"
    assert "--data " in card, "the reproduce command names the shared dataset"
    assert (export / "model.safetensors").stat().st_size > 0


def test_bad_families_and_missing_ablation_runs_are_named(tmp_path, capsys):
    assert default_model.run(args_for(tmp_path, "x", families="clip,vit", export="none")) == 2
    assert "unknown or no encoder families ['vit']" in capsys.readouterr().err
    missing = args_for(tmp_path, "y", export="none", ablation_runs=[str(tmp_path / "nope")])
    assert default_model.run(missing) == 2
    assert "has no summary.json" in capsys.readouterr().err


def test_an_experiment_narrows_tasks_and_continues_from_a_saved_model(ablated, capsys):
    from vsre_ros.training.recipes import experiment

    first = ablated / "exp-loc"
    common = ["--data", str(ablated / "data"), "--steps-a", "2", "--eval", "8", "--warmup", "1"]
    common += ["--split", "random_train"]  # the toy dataset's val split may be empty
    assert experiment.main([*common, "--out", str(first), "--tasks", "localization"]) == 0
    recipe = json.loads((first / "recipe.json").read_text())
    assert [s["task_weights"] for s in recipe["stages"]] == [{"localization": 1.0}]
    val = json.loads((first / "val.json").read_text())
    assert 0.0 <= val["accuracy"] <= 1.0 and val["by_task"]
    second = ablated / "exp-left"
    argv = [*common, "--out", str(second), "--init", str(first / "model")]
    assert experiment.main([*argv, "--relations", "left of"]) == 0
    recipe = json.loads((second / "recipe.json").read_text())
    assert recipe["init"] == str(first / "model")
    assert recipe["stages"][0]["relations"] == ["left of"]
