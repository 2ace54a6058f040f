"""The trainer: learning a trivial task, exact resume after SIGKILL, stages and freezing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from training_tiny import TINY, tiny_config
from vsre_ros.training.config import StageConfig, dump_config, load_config
from vsre_ros.training.items import load_items
from vsre_ros.training.model_api import build_model, freeze, trainable_names
from vsre_ros.training.train import latest_checkpoint, train, val_accuracy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tiny_run_lowers_loss_and_raises_accuracy(colour_dataset, tmp_path):
    stage = StageConfig(name="s", freeze="all", steps=30, batch_size=8, lr=2e-3,
                        warmup_steps=5, templates="none")  # fmt: skip
    config = tiny_config(colour_dataset, tmp_path / "run", [stage], val_split="test")
    test_items = load_items(colour_dataset, "test")
    before = val_accuracy(build_model("vsre-tiny", TINY, seed=0), test_items, 16)
    (result,) = train(config, progress=False)
    losses = [row["loss"] for row in result.metrics]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert result.metrics[-1]["val_acc"] >= 0.9 > before
    stage_dir = tmp_path / "run" / "s"
    assert (stage_dir / "curves.png").is_file()
    assert (stage_dir / "final" / "vsre_config.json").is_file()
    assert load_config(tmp_path / "run" / "train_config.yaml").stages[0].steps == 30
    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 30
    # The evaluator takes the trained model straight from the run directory.
    from vsre_ros.cli import main

    def evaluate(out, *extra):
        code = main(["evaluate", "--model", str(stage_dir / "final"), "--data",
                     str(colour_dataset), "--split", "test", "--out", str(out), "--no-plots",
                     "--batch-size", "16", *extra])  # fmt: skip
        assert code == 0
        return json.loads((out / "report.json").read_text())

    report = evaluate(tmp_path / "own", "--blind")
    blind = report["baselines"]["blind_model"]
    assert blind["n"] == len(test_items)
    # The model answers from the image: blank images take it back to a constant answer.
    assert report["accuracy"] >= 0.9 and blind["accuracy"] <= 0.6
    report = evaluate(tmp_path / "templated", "--templates", "t00,t20,t36", "--perturb", "4",
                      "--perturbations", "gamma_0.7,noise_6")  # fmt: skip
    assert set(report["perturbation"]["by_perturbation"]) == {"gamma_0.7", "noise_6"}
    assert report["perturbation"]["n"] == 4
    assert report["n_predictions"] == 3 * len(test_items)
    assert set(report["by"]["template"]) == {"t00", "t20", "t36"}
    assert report["consistency"]["n_items"] == len(test_items)


def test_stage_trainable_sets_are_exactly_as_specified():
    def names(mode):
        model = build_model("vsre-tiny", TINY, seed=0)
        freeze(model, mode)
        return model, set(trainable_names(model))

    model, stage1 = names("stage1")
    fusion = {n for n, _ in model.named_parameters() if n.startswith("fusion.")}
    assert stage1 == fusion and fusion

    model, stage2 = names("stage2")
    lora = {n for n in stage2 if "lora_" in n}
    assert lora and all(n.startswith("lm.") for n in lora)
    assert stage2 == fusion | lora
    every_lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    assert lora == every_lora

    model, with_encoders = names("stage2+encoders")
    encoders = {n for n, _ in model.named_parameters() if n.startswith("encoders.")}
    assert with_encoders == fusion | lora | encoders
    with pytest.raises(ValueError, match="unknown freeze mode 'stage3'; known: stage1"):
        freeze(model, "stage3")


def test_two_stages_chain_and_a_finished_stage_is_not_rerun(colour_dataset, tmp_path):
    stages = [
        StageConfig(name="stage1", freeze="stage1", steps=3, batch_size=4, warmup_steps=0),
        StageConfig(
            name="stage2",
            freeze="stage2",
            steps=3,
            batch_size=4,
            warmup_steps=0,
            aux_losses={"verdict": 1.0},
        ),  # fmt: skip
    ]
    config = tiny_config(colour_dataset, tmp_path / "run", stages)
    first, second = train(config, progress=False)
    assert (second.final_dir / "adapter" / "adapter_config.json").is_file()
    assert "loss_verdict" in second.metrics[-1]
    one = build_model(first.final_dir)
    two = build_model(second.final_dir)
    enc1 = dict(one.encoders.named_parameters())
    # Stage 2 started from stage 1's result: frozen encoders equal, projectors moved on.
    for name, param in two.encoders.named_parameters():
        assert torch.equal(param, enc1[name])
    proj1 = dict(one.fusion.named_parameters())
    assert any(not torch.equal(p, proj1[n]) for n, p in two.fusion.named_parameters())
    again = train(config, progress=False)
    assert [r.steps_run for r in again] == [0, 0]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in build_model(model_dir).named_parameters()}


def test_a_restarting_stage_is_the_previous_stage_then_train_init(colour_dataset, tmp_path):
    """`restart` starts a stage as `vsre train --init PREVIOUS/final` does (a new optimizer,
    average and heads) even though the run carries the optimizer; without it the stage
    continues the carried state and ends elsewhere. The stage reads its own `data`."""
    from conftest import make_colour_dataset

    other = [str(make_colour_dataset(tmp_path / "other", seed=5))]

    def run(name, stages, init=None):
        config = tiny_config(colour_dataset, tmp_path / name, stages, carry_optimizer=True,
                             ema_decay=0.9)  # fmt: skip
        return train(config, init=init, progress=False)[-1].final_dir

    def stage(name, **kw):
        return StageConfig(name=name, freeze="all", steps=3, batch_size=4, lr=5e-3,
                           warmup_steps=1, templates="none", **kw)  # fmt: skip

    restarted = run("chain", [stage("a"), stage("b", data=other, restart=True)])
    reference = run("then", [stage("b", data=other)], init=run("first", [stage("a")]))
    continued = run("carried", [stage("a"), stage("b", data=other)])
    restarted, reference, continued = map(_weights, (restarted, reference, continued))
    assert all(torch.equal(restarted[n], reference[n]) for n in reference)
    assert any(not torch.equal(continued[n], reference[n]) for n in reference)


def test_a_stage_trains_on_the_split_of_each_of_its_datasets_joined(
    colour_dataset, tmp_path, monkeypatch
):
    from conftest import make_colour_dataset
    from vsre_ros.training import train as train_module

    other = make_colour_dataset(tmp_path / "other", n_train=20, seed=5)
    seen = {}
    real = train_module.run_stage

    def spy(config, stage, init, items, *args, **kw):
        seen[stage.name] = sorted({str(i.root) for i in items}), len(items)
        return real(config, stage, init, items, *args, **kw)

    monkeypatch.setattr(train_module, "run_stage", spy)
    stages = [StageConfig(name="own", steps=1, batch_size=4, templates="none"),
              StageConfig(name="both", steps=1, batch_size=4, templates="none",
                          data=[str(colour_dataset), str(other)])]  # fmt: skip
    train(tiny_config(colour_dataset, tmp_path / "run", stages), progress=False)
    assert seen["own"] == ([str(colour_dataset)], 48)
    assert seen["both"] == (sorted([str(colour_dataset), str(other)]), 48 + 20)


def test_unknown_extra_loss_and_stage_are_refused(colour_dataset, tmp_path):
    stage = StageConfig(name="s", steps=1, aux_losses={"telepathy": 1.0})
    with pytest.raises(ValueError, match="unknown extra losses \\['telepathy'\\]"):
        train(tiny_config(colour_dataset, tmp_path / "r", [stage]), progress=False)
    with pytest.raises(ValueError, match="unknown stages \\['stage9'\\]"):
        train(tiny_config(colour_dataset, tmp_path / "r", [stage]), ["stage9"], progress=False)


def _step_losses(metrics_file: Path) -> dict[int, float]:
    # Complete lines only: the file may be read while a training process appends to it.
    lines = metrics_file.read_text().split("\n")[:-1]
    rows = [json.loads(line) for line in lines if line]
    return {r["step"]: r["step_loss"] for r in rows if "step_loss" in r}


def test_resume_after_sigkill_gives_the_same_next_step_loss(colour_dataset, tmp_path, kill_when):
    # Stage 2 (LoRA with dropout) so that resuming must restore the RNG as well as weights.
    def stage(steps):
        return StageConfig(name="s", freeze="stage2", steps=steps, batch_size=4, lr=1e-2,
                           warmup_steps=3, templates="train")  # fmt: skip

    reference = tiny_config(colour_dataset, tmp_path / "ref", [stage(14)], save_every=5)
    train(reference, progress=False)
    expected = _step_losses(tmp_path / "ref" / "s" / "metrics.jsonl")

    killed = tiny_config(colour_dataset, tmp_path / "killed", [stage(400)], save_every=5)
    config_file = tmp_path / "killed.yaml"
    dump_config(killed, config_file)
    metrics = tmp_path / "killed" / "s" / "metrics.jsonl"
    cmd = [sys.executable, "-m", "vsre_ros", "train", "--config", str(config_file),
           "--no-progress"]  # fmt: skip
    kill_when(cmd, lambda: metrics.is_file() and max(_step_losses(metrics), default=0) >= 8)
    resumed_from = latest_checkpoint(tmp_path / "killed" / "s")
    assert resumed_from is not None
    done = json.loads((resumed_from / "state.json").read_text())["step"]
    assert done >= 5 and done % 5 == 0

    killed.stages[0].steps = 400
    (result,) = train(killed, progress=False)
    after = {r["step"]: r["step_loss"] for r in result.metrics}
    assert min(after) == done + 1
    for step in range(done + 1, 15):
        assert after[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    # The metrics file holds each step once: lines logged after the checkpoint were dropped.
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 401))


def test_a_run_in_chunks_ends_as_an_uninterrupted_run(colour_dataset, tmp_path, monkeypatch):
    from vsre_ros.training import train as train_module

    def stages():  # the second stage perturbs half its rows' pictures, drawn per step
        return [StageConfig(name=n, freeze="stage2", steps=6, batch_size=4, lr=1e-2,
                            warmup_steps=2, templates="train", augment=augment)
                for n, augment in (("a", 0.0), ("b", 0.5))]  # fmt: skip

    reference = tiny_config(colour_dataset, tmp_path / "ref", stages(), save_every=4)
    train(reference, progress=False)
    expected = {n: _step_losses(tmp_path / "ref" / n / "metrics.jsonl") for n in ("a", "b")}

    # A clock that moves a minute per reading: each chunk's budget runs out after a step.
    clock = iter(range(0, 6000, 60))
    monkeypatch.setattr(train_module, "_now", lambda: next(clock))
    chunked = tiny_config(colour_dataset, tmp_path / "chunked", stages(), save_every=4)
    ends = []
    for _ in range(20):
        try:
            train(chunked, progress=False, max_minutes=1)
            break
        except train_module.ChunkEnded as end:
            ends.append((end.stage, end.step))
            assert "run the same command again to continue" in str(end)
    assert ends == [("a", k) for k in range(1, 6)] + [("b", k) for k in range(1, 6)]
    for n in ("a", "b"):
        assert _step_losses(tmp_path / "chunked" / n / "metrics.jsonl") == expected[n]
    assert (tmp_path / "chunked" / "b" / "final" / "vsre_config.json").is_file()


def test_vsre_train_exits_75_at_its_budget_and_the_same_command_continues(
    colour_dataset, tmp_path, monkeypatch, capsys
):
    import argparse

    from vsre_ros.training import train as train_module

    stage = StageConfig(name="s", freeze="stage1", steps=3, batch_size=4, templates="train")
    config_file = tmp_path / "run.yaml"
    dump_config(tiny_config(colour_dataset, tmp_path / "run", [stage]), config_file)
    parser = argparse.ArgumentParser()
    train_module.add_arguments(parser)
    args = parser.parse_args(["--config", str(config_file), "--no-progress", "--max-minutes", "1"])
    clock = iter(range(0, 6000, 60))
    monkeypatch.setattr(train_module, "_now", lambda: next(clock))
    codes = [train_module.run(args) for _ in range(3)]
    assert codes == [train_module.EXIT_CHUNK_ENDED, train_module.EXIT_CHUNK_ENDED, 0]
    out = capsys.readouterr().out
    assert "stopped after 1 minutes at stage s, step 1 of 3" in out
    assert "s: 1 steps" in out  # the last chunk ran the last step


def test_a_saved_model_starts_training_without_its_fitted_verdict_bias(tmp_path):
    from vsre_ros.training.train import prepare_model

    saved = build_model("vsre-tiny", TINY, seed=0)
    saved.config.verdict_bias = 0.4  # fitted for these weights; training will change them
    saved.save_pretrained(tmp_path / "m")
    stage = StageConfig(name="s", freeze="all", steps=1)
    model, _ = prepare_model(
        tmp_path / "m", tiny_config(tmp_path, tmp_path / "run", [stage]), stage
    )
    assert model.config.verdict_bias == 0.0


def test_train_accuracy_reads_the_first_token_that_decides_a_verdict():
    from vsre_ros.training.model_api import first_token_correct

    # row 0: a yes/no answer whose words share a lead token (id 5) at position 3, and differ
    # at position 4 (yes 7, no 8); row 1: a number answer starting at position 3 (id 9)
    labels = torch.tensor([[-100, -100, -100, 5, 7, 2], [-100, -100, -100, 9, 2, -100]])
    batch = {"labels": labels, "verdict_at": torch.tensor([3, 2])}
    logits = torch.zeros(2, 6, 10)
    logits[0, 2, 5] = logits[0, 3, 8] = 1.0  # predicts the lead, then "no": wrong
    logits[1, 2, 9] = 1.0  # predicts the number's first token: right
    assert first_token_correct(logits, batch).tolist() == [False, True]
    logits[0, 3, 7] = 2.0  # now "yes" at the deciding position
    assert first_token_correct(logits, batch).tolist() == [True, True]
