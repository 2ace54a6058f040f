"""Training for invariance: each item asked under two wordings, their verdicts pulled together."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_recipe_targets import five_step_recipe, generated, trained
from vsre_ros.training.config import StageConfig, TrainConfig
from vsre_ros.training.items import can_template, load_items
from vsre_ros.training.losses import consistency_loss
from vsre_ros.training.train import stage_items, stage_losses, stage_sampler, step_examples


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return generated(tmp_path_factory, 60, 3)


def paired_stage(**fields) -> StageConfig:
    fields = {"task_weights": {"relation": 1.0}, **fields}
    return StageConfig(name="p", freeze="all", steps=3, batch_size=8, templates="grammar",
                       paired=True, split="random_train", **fields)  # fmt: skip


def test_a_paired_step_asks_each_item_twice_in_two_framings(sim_data):
    items = load_items(sim_data, "random_train")
    stage = paired_stage()
    examples = step_examples(items, stage, stage_sampler(stage, 0), 0, 0)
    assert len(examples) == 8
    for a, b in zip(examples[0::2], examples[1::2], strict=True):
        assert a.item.id == b.item.id and a.truth == b.truth
        assert a.question != b.question
    assert examples == step_examples(items, stage, stage_sampler(stage, 0), 0, 0), "pure"
    with pytest.raises(ValueError, match="paired wordings need templates: grammar"):
        TrainConfig(stages=[StageConfig(paired=True, templates="train")]).validate()


def test_in_a_paired_stage_an_item_no_wording_can_ask_shares_its_rows_with_another(sim_data):
    stage = paired_stage(task_weights={})  # every task: localization, metric, ... as well
    items = stage_items(load_items(sim_data, "random_train"), stage)
    sampler = stage_sampler(stage, 0)
    pairs = [
        pair
        for step in range(12)
        for pair in zip(*[iter(step_examples(items, stage, sampler, 0, step))] * 2, strict=True)
    ]
    worded = [(a, b) for a, b in pairs if can_template(a.item)]
    assert worded and len(worded) < len(pairs)
    for a, b in pairs:
        if can_template(a.item):  # the same item in two framings
            assert a.item.id == b.item.id and a.question != b.question
        else:  # not the same question twice: a second item fills the pair's other row
            assert a.item.id != b.item.id


def _context(logits: torch.Tensor, truth: list[int], same_item: list[bool] | None = None):
    """Two-token vocabulary rows: verdict words 0 (positive) and 1, answer at position 1."""
    n = logits.shape[0]
    batch = {
        "same_item": torch.tensor([True] * (n // 2) if same_item is None else same_item),
        "truth": torch.tensor(truth),
        "verdict_ids": torch.tensor([[0, 1]] * n),
        "answer_start": torch.full((n,), 1),
        "verdict_at": torch.zeros(n, dtype=torch.long),
        "labels": torch.zeros(n, 2, dtype=torch.long),
    }
    full = torch.zeros(n, 2, 2)
    full[:, 0] = logits
    return SimpleNamespace(batch=batch, output=SimpleNamespace(logits=full))


def test_consistency_is_zero_for_agreeing_pairs_and_pulls_disagreeing_ones_together():
    agree = _context(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), [1, 1])
    assert float(consistency_loss(agree)) == pytest.approx(0.0)
    logits = torch.tensor([[2.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    apart = _context(logits, [1, 1])
    loss = consistency_loss(apart)
    assert float(loss) > 0.5
    loss.backward()
    # Descent lowers the first row's positive logit and raises the second's.
    assert float(logits.grad[0, 0]) > 0 > float(logits.grad[1, 0])
    not_verdicts = _context(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]), [-1, -1])
    assert consistency_loss(not_verdicts) is None
    two_items = _context(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]), [1, 1], [False])
    assert consistency_loss(two_items) is None  # rows that ask two items are not compared


def test_the_consistency_term_is_left_out_of_unpaired_stages():
    config = TrainConfig(aux_losses={"consistency": 1.0})
    assert "consistency" in stage_losses(config, paired_stage())
    assert "consistency" not in stage_losses(config, StageConfig(templates="grammar"))


def test_a_paired_recipe_trains_with_the_consistency_term(sim_data, tmp_path):
    config = five_step_recipe(sim_data, tmp_path, {"consistency": 1.0})
    config.stages = [paired_stage()]
    _, rows = trained(config)
    assert all("loss_consistency" in r for r in rows)
    assert all(torch.isfinite(torch.tensor(r["loss_consistency"])) for r in rows)
