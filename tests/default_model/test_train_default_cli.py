"""`vsre train-default` end to end at toy size: data, training, evaluation, export, ablation."""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil

import pytest
from vsre_ros.training import default_model
from vsre_ros.training.config import load_config
from vsre_ros.training.default_model.calibration import calibrate_verdict, fit_verdict_bias
from vsre_ros.training.default_model.export import EXPORT_DIR
from vsre_ros.training.recipes.curriculum import curriculum

STEPS = sum(s.steps for s in curriculum("relations-grow", 2, 2, 2))  # the default curriculum
LAST = curriculum("relations-grow", 2, 2, 2)[-1].name  # its last stage, which holds the model


# Every fresh-scene stage off (`--mix-steps 0 --filler-steps 0 ...`); a later flag turns one on.
NO_FRESH_STAGES = [a for f in default_model.FRESH_STAGES for a in (f"--{f.flag}-steps", "0")]


def args_for(tmp_path, out: str, **extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    default_model.add_arguments(parser)
    argv = [
        "--out", str(tmp_path / out), "--data", str(tmp_path / "data"), "--n", "40",
        "--steps-a", "2", "--steps-b", "2", "--batch-size", "2", "--val-every", "0",
        "--eval-items", "6", "--consistency-items", "1", "--no-progress",
        # The shipped model's pretraining, object tokens and fresh-scene stages are defaults; a
        # toy run skips them.
        "--pretrain-steps", "0", "--object-tokens", "0", *NO_FRESH_STAGES, "--threads", "1",
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


@pytest.fixture(scope="module")
def exported(ablated):
    """The full model's export, tabling the ablation run."""
    export = ablated / "export"
    runs = [str(ablated / "no-siglip")]
    args = args_for(ablated, "full", export=str(export), ablation_runs=runs)
    assert default_model.run(args) == 0
    return export


def test_the_export_tables_the_ablation_runs(ablated, exported):
    export = exported
    card = (export / "MODEL_CARD.md").read_text()
    table = card.split("## Ablation: each encoder family removed in turn")[1]
    row = next(line for line in table.splitlines() if line.startswith("| clip, sam, dinov2 |"))
    assert f"| siglip | relations-grow | {STEPS} | 0.5 | 0.0 | 0 |" in row, (
        "curriculum, steps, weights and seed of that run"
    )
    assert "--data " in card, "the reproduce command names the shared dataset"
    assert (export / "model.safetensors").stat().st_size > 0
    # The toy dataset's random_val has no labelled yes/no item: no bias, and the card says so.
    assert json.loads((ablated / "full" / "summary.json").read_text())["calibration"] is None
    assert "None: the verdict bias is 0" in card


def test_a_later_export_tables_the_ablation_rows_an_earlier_one_saved(ablated, exported, tmp_path):
    saved = exported / "ablation.json"
    rows = json.loads(saved.read_text())
    assert [r["families"] for r in rows] == [["clip", "sam", "dinov2"]]
    again = tmp_path / "again"
    args = args_for(ablated, "full", export=str(again), ablation_json=str(saved))
    assert default_model.run(args) == 0
    assert json.loads((again / "ablation.json").read_text()) == rows
    card = (again / "MODEL_CARD.md").read_text()
    assert f"| clip, sam, dinov2 | siglip | relations-grow | {STEPS} |" in card
    bad = tmp_path / "bad.json"
    bad.write_text('{"families": []}')
    args = args_for(ablated, "full", export=str(tmp_path / "x"), ablation_json=str(bad))
    assert default_model.run(args) == 2
    assert not (tmp_path / "x").exists(), "a bad ablation file stops the run before the export"


def test_the_verdict_bias_is_fitted_on_val_and_matches_its_true_rate(ablated, tmp_path):
    from vsre_ros.core.model import VSREModel

    # A dataset whose random_val is the toy zeroshot_train split (it has yes/no items).
    data = tmp_path / "data"
    data.mkdir()
    for entry in (ablated / "data").iterdir():
        (data / entry.name).symlink_to(entry)
    (data / "random_val.jsonl").unlink()
    (data / "random_val.jsonl").symlink_to(ablated / "data" / "zeroshot_train.jsonl")
    model = VSREModel.from_pretrained(ablated / "no-siglip" / "train" / LAST / "final").eval()
    result = calibrate_verdict(model, data, 60, tmp_path / "cal", seed=0)
    assert result["items"] >= 5
    assert model.config.verdict_bias == result["bias"] != 0.0
    assert abs(result["predicted_yes_rate_after"] - result["true_rate"]) <= 1 / result["items"]
    assert json.loads((tmp_path / "cal" / "calibration.json").read_text()) == result
    # The engine answers with the fitted bias: asked again, the same items say yes at the
    # fitted rate.
    from vsre_ros.training.evaluate import build_examples, resolve_templates
    from vsre_ros.training.items import load_items
    from vsre_ros.training.model_api import answer_examples

    items = [
        i
        for i in load_items(data, "random_val")
        if i.kind.label == "yes_no" and i.truth is not None
    ]
    assert len(items) == result["items"]
    answers = answer_examples(
        model, build_examples(items, resolve_templates("item")), progress=False
    )
    yes_rate = sum(p.probability >= 0.5 for p in answers) / len(answers)
    assert yes_rate == pytest.approx(result["predicted_yes_rate_after"])
    again = calibrate_verdict(model, data, 60, tmp_path / "cal2", seed=0)
    assert again == result, "refitting starts from bias 0, so it finds the same bias"


def test_a_shared_dataset_must_match_the_data_seed_and_a_training_seed_is_apart(
    ablated, tmp_path, capsys
):
    # The toy dataset is seed 0's: a run asking for seed 1's data stops before training.
    args = args_for(ablated, "seed1", export="none", seed="1")
    assert default_model.run(args) == 2
    err = capsys.readouterr().err
    assert "holds the dataset of data seed 0, 40 items, 64 px" in err
    assert "data seed 1, 40 items, 64 px" in err and "--data-seed" in err
    assert not (ablated / "seed1" / "train").exists()
    # Training seed 1 on data seed 0, with averaged weights: the card names both seeds.
    export = tmp_path / "export"
    args = args_for(ablated, "seed1", export=str(export), seed="1", data_seed="0", ema_decay="0.9")
    assert default_model.run(args) == 0
    card = (export / "MODEL_CARD.md").read_text()
    assert "vsre train-default --seed 1 --n 40" in card
    assert "--data-seed 0 " in card and "--ema-decay 0.9 " in card
    assert "simulated scenes (MuJoCo), seed 0, 40 items" in card
    assert "Weights averaged over steps (exponential, decay 0.9)" in card
    train = ablated / "seed1" / "train"
    assert (train / LAST / "final" / "last_weights.safetensors").stat().st_size > 0
    recipe = load_config(train / "train_config.yaml")
    assert recipe.seed == 1 and recipe.ema_decay == 0.9 and recipe.carry_optimizer


def test_the_v2_flags_set_data_wording_pairs_windows_and_widths(tmp_path):
    parser = argparse.ArgumentParser()
    default_model.add_arguments(parser)
    args = parser.parse_args(
        "--wording grammar --paired --consistency-weight 0.5 --length-window 8 "
        "--lm-hidden 192 --encoder-hidden 96 --data-version 2 --grounding-weight 1".split()
    )
    config = default_model.recipe_config(args, tmp_path / "d", tmp_path / "t", ["clip", "sam"])
    config.validate()
    assert {(s.templates, s.paired, s.length_window) for s in config.stages} == {
        ("grammar", True, 8)
    }
    assert config.aux_losses["consistency"] == 0.5 and config.aux_losses["grounding"] == 1.0
    assert config.model_overrides["tokenizer_text"] == 2  # data version 2: the grammar's words
    overrides = config.model_overrides
    assert overrides["lm"]["hf_config"]["hidden_size"] == 192
    assert overrides["lm"]["hf_config"]["intermediate_size"] == 768
    assert {e["hf_config"]["hidden_size"] for e in overrides["encoders"]} == {96}
    # the plain defaults are the shipped recipe: data version 2 in the grammar, the grounding
    # head, no consistency term, no window
    plain = default_model.recipe_config(parser.parse_args([]), tmp_path, tmp_path, ["clip"])
    assert "consistency" not in plain.aux_losses and plain.aux_losses["grounding"] == 1.0
    plain_stages = {(s.templates, s.paired, s.length_window) for s in plain.stages}
    assert plain_stages == {("grammar", False, 1)}
    # data version 1 asks through the templates unless told otherwise
    for flags, asked in (("--data-version 1", "train"), ("--data-version 1 --wording grammar",
                                                          "grammar")):  # fmt: skip
        v1 = default_model.recipe_config(
            parser.parse_args(flags.split()), tmp_path, tmp_path, ["clip"]
        )
        assert {s.templates for s in v1.stages} == {asked}
    with pytest.raises(ValueError, match="lm_hidden must be a positive multiple of 4"):
        default_model.recipe_config(
            parser.parse_args(["--lm-hidden", "130"]), tmp_path, tmp_path, ["clip"]
        )


def recipe_for(tmp_path, flags: str):
    """The recipe config that train-default's `flags` give after every fresh-scene stage is
    turned off, with data in tmp_path/d."""
    parser = argparse.ArgumentParser()
    default_model.add_arguments(parser)
    args = parser.parse_args([*NO_FRESH_STAGES, *flags.split()])
    config = default_model.recipe_config(args, tmp_path / "d", tmp_path / "t", ["clip"])
    config.validate()
    return args, config


def test_mix_steps_add_a_last_stage_restarted_on_fresh_scenes_of_both_data_versions(tmp_path):
    _, config = recipe_for(tmp_path, "--mix-steps 30 --data-seed 3")
    *curriculum_stages, last = config.stages
    assert (last.name, last.steps, last.lr, last.restart) == ("B5-mixed", 30, 1e-3, True)
    # version 2's fresh scenes join first, then version 1's; seeds apart from the data's
    assert last.data == [str(tmp_path / "d-mix-v2-s11"), str(tmp_path / "d-mix-v1-s10")]
    before = curriculum_stages[-1]
    assert (last.task_weights, last.templates, last.split) == (
        before.task_weights, before.templates, before.split)  # fmt: skip
    assert not any(s.restart or s.data for s in curriculum_stages)
    _, plain = recipe_for(tmp_path, "")
    assert [s.name for s in plain.stages] == [s.name for s in curriculum_stages]


def test_filler_steps_add_a_stage_with_filler_words_after_the_mixed_one(tmp_path):
    args, config = recipe_for(tmp_path, "--mix-steps 30 --filler-steps 20 --data-seed 3")
    mixed, filler = config.stages[-2:]
    assert mixed.name == "B5-mixed" and mixed.wording_noise == 0
    assert (filler.name, filler.steps, filler.lr, filler.restart) == ("B6-filler", 20, 5e-4, True)
    assert filler.wording_noise == 0.5 and filler.data == [str(tmp_path / "d-filler-v2-s12")]
    assert (filler.task_weights, filler.templates) == (mixed.task_weights, mixed.templates)
    text = default_model.recipe_file_text(args)
    assert "# - for B6-filler, beside it: data-filler-v2-s12, 60,000 items each" in text


def test_fresh_steps_add_b6s_stage_again_on_scenes_it_never_saw(tmp_path):
    args, config = recipe_for(tmp_path, "--filler-steps 20 --fresh-steps 10 --data-seed 3")
    filler, fresh = config.stages[-2:]
    assert (fresh.name, fresh.steps, fresh.restart) == ("B7-fresh", 10, True)
    assert fresh.data == [str(tmp_path / "d-fresh-v2-s13")]  # not B6's scenes (s12)
    same = ("lr", "warmup_steps", "decay_share", "wording_noise", "task_weights", "templates")
    assert [getattr(fresh, k) for k in same] == [getattr(filler, k) for k in same]
    assert "# - for B7-fresh, beside it: data-fresh-v2-s13, 60,000 items each" in (
        default_model.recipe_file_text(args)
    )


def test_robust_steps_add_b7s_stage_with_perturbed_pictures_on_other_scenes(tmp_path):
    args, config = recipe_for(tmp_path, "--fresh-steps 20 --robust-steps 10 --data-seed 3")
    fresh, robust = config.stages[-2:]
    assert (robust.name, robust.steps, robust.restart) == ("B8-robust", 10, True)
    assert robust.data == [str(tmp_path / "d-robust-v2-s23")]  # not B7's scenes (s13)
    assert (robust.augment, fresh.augment) == (0.5, 0.0)
    same = ("lr", "warmup_steps", "decay_share", "wording_noise", "task_weights", "templates")
    assert [getattr(robust, k) for k in same] == [getattr(fresh, k) for k in same]


def test_long_steps_add_b8s_stage_longer_on_other_scenes(tmp_path):
    args, config = recipe_for(
        tmp_path, "--robust-steps 20 --long-steps 10 --long-n 300 --data-seed 3"
    )
    robust, long = config.stages[-2:]
    assert (long.name, long.steps, long.restart) == ("B9-long", 10, True)
    assert long.data == [str(tmp_path / "d-long-v2-s33")]  # not B8's scenes (s23)
    same = ("lr", "wording_noise", "augment", "decay_share", "task_weights", "templates")
    assert [getattr(long, k) for k in same] == [getattr(robust, k) for k in same]
    assert long.warmup_steps == 200
    assert "# - for B9-long, beside it: data-long-v2-s33, 300 items each" in (
        default_model.recipe_file_text(args)
    )


def test_a_run_from_an_export_trains_only_the_stages_after_the_exports(ablated, exported):
    args = args_for(ablated, "filler", export=str(ablated / "export-filler"), filler_steps="2",
                    filler_n="30", from_export=str(exported))  # fmt: skip
    assert default_model.run(args) == 0
    summary = json.loads((ablated / "filler" / "summary.json").read_text())
    assert summary["steps"] == STEPS + 2
    train = ablated / "filler" / "train"
    assert (train / "B6-filler" / "final" / "vsre_config.json").is_file()
    assert not (train / LAST).exists(), "the export's stages are not trained again"
    # the learning curve's rows: the export's run, then the new stage
    rows = [json.loads(line) for line in (ablated / "export-filler" / "training_metrics.jsonl")
            .read_text().splitlines()]  # fmt: skip
    before = (exported / "training_metrics.jsonl").read_text().splitlines()
    assert [json.dumps(r) for r in rows[: len(before)]] == [
        json.dumps(json.loads(line)) for line in before
    ]
    assert {r["stage"] for r in rows[len(before) :]} == {"B6-filler"}
    meta = json.loads((ablated / "data-filler-v2-s9" / "dataset.json").read_text())
    assert meta["seed"] == 9 and meta["config"]["data_version"] == 2
    card = (ablated / "export-filler" / "MODEL_CARD.md").read_text()
    assert f"--from-export {exported}" in card and "get filler words" in card
    # an export whose stages do not begin this recipe's, or leave none to train, is refused
    again = args_for(ablated, "nothing-left", export="none", from_export=str(exported))
    assert default_model.run(again) == 2


def test_a_mixed_run_generates_both_versions_and_trains_its_last_stage_on_them(ablated):
    args = args_for(ablated, "mixed", export="none", mix_steps="2", mix_n="30")
    assert default_model.run(args) == 0
    summary = json.loads((ablated / "mixed" / "summary.json").read_text())
    assert summary["steps"] == STEPS + 2
    for version, seed in ((2, 8), (1, 7)):
        meta = json.loads((ablated / f"data-mix-v{version}-s{seed}" / "dataset.json").read_text())
        assert meta["seed"] == seed and meta["config"]["data_version"] == version
    recipe = load_config(ablated / "mixed" / "train" / "train_config.yaml")
    assert recipe.stages[-1].data == [
        str(ablated / "data-mix-v2-s8"),
        str(ablated / "data-mix-v1-s7"),
    ]
    assert (ablated / "mixed" / "train" / "B5-mixed" / "final" / "vsre_config.json").is_file()


def test_a_dataset_of_another_data_version_is_refused(ablated, capsys):
    args = args_for(ablated, "v1", export="none")
    args.data_version = 1
    assert default_model.run(args) == 2
    err = capsys.readouterr().err
    assert "data version 2; this run asks for data seed 0, 40 items, 64 px, data version 1" in err


def test_consistency_items_0_skips_that_test_and_eval_items_0_is_refused(ablated, capsys):
    # A copy of the finished ablation run: it is not trained again, only evaluated.
    shutil.copytree(ablated / "no-siglip", ablated / "no-siglip-again")
    args = args_for(
        ablated, "no-siglip-again", families="clip,sam,dinov2", export="none",
        bank_weight="0.5", verdict_weight="0", consistency_items="0",
    )  # fmt: skip
    assert default_model.run(args) == 0
    summary = json.loads((ablated / "no-siglip-again" / "summary.json").read_text())
    assert set(summary["accuracy"]) == {"random_test", "zeroshot_test"}
    assert default_model.run(args_for(ablated, "z", export="none", eval_items="0")) == 2
    assert "--eval-items must be >= 1" in capsys.readouterr().out


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
    recipe = load_config(first / "train" / "train_config.yaml")
    assert [s.task_weights for s in recipe.stages] == [{"localization": 1.0}]
    val = json.loads((first / "val.json").read_text())
    assert 0.0 <= val["accuracy"] <= 1.0 and val["by_task"]
    second = ablated / "exp-left"
    argv = [*common, "--out", str(second), "--init", str(first / "model")]
    assert experiment.main([*argv, "--relations", "left of"]) == 0
    recipe = load_config(second / "train" / "train_config.yaml")
    assert recipe.model == str(first / "model")
    assert recipe.stages[0].relations == ["left of"]


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_the_fitted_verdict_bias_matches_the_true_rate(rate):
    rng = random.Random(3)
    p_yes = [rng.random() for _ in range(200)]
    truth = [k < rate * 200 for k in range(200)]
    bias = fit_verdict_bias(p_yes, truth)
    yes = sum(math.log(p / (1 - p)) + bias >= 0 for p in p_yes)
    assert yes == round(rate * 200)


def test_the_verdict_bias_fit_refuses_mismatched_input():
    with pytest.raises(ValueError, match="one label per probability"):
        fit_verdict_bias([0.2, 0.9], [True])


def test_the_defaults_and_the_recipe_file_are_the_shipped_model():
    from vsre_ros.training.train import add_arguments as train_arguments
    from vsre_ros.training.train import config_from_args

    parser = argparse.ArgumentParser()
    default_model.add_arguments(parser)
    defaults = parser.parse_args([])
    # The shipped card's command, with nothing but its flags, parses to the defaults.
    card = (EXPORT_DIR / "MODEL_CARD.md").read_text()
    command = next(line for line in card.splitlines() if "vsre train-default --seed" in line)
    shipped = parser.parse_args(command.split("vsre train-default", 1)[1].split())
    differ = {k for k, v in vars(shipped).items() if v != getattr(defaults, k)}
    assert differ <= {"out", "data"}, differ
    # The recipe file is the config those defaults train, and `vsre train --recipe` reads it.
    assert default_model.RECIPE_FILE.read_text() == default_model.recipe_file_text(defaults)
    train_parser = argparse.ArgumentParser()
    train_arguments(train_parser)
    config, _ = config_from_args(train_parser.parse_args(["--recipe", "vsre-tiny"]))
    assert config.to_dict() == load_config(default_model.RECIPE_FILE).to_dict()
    assert config.carry_optimizer and config.ema_decay == 0.999 and config.pretrain_steps == 1000
    assert config.model_overrides["object_tokens"] == 8
    with pytest.raises(ValueError, match="unknown recipe 'nope'; known: \\["):
        config_from_args(train_parser.parse_args(["--recipe", "nope"]))
