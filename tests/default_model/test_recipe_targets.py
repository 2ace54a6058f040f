"""The default model's training-only targets and curriculum, on a tiny model and sim scenes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from vsre_ros.training.config import TrainConfig
from vsre_ros.training.data import ask
from vsre_ros.training.items import load_items
from vsre_ros.training.model_api import build_model, collate, image_cache
from vsre_ros.training.recipes.curriculum import ONE_POLARITY, curriculum, default_stages
from vsre_ros.training.recipes.targets import (
    BANK,
    COLOUR_IDS,
    TargetBuilder,
    batch_targets,
    token_grids,
    verdict_bits,
)
from vsre_ros.training.train import read_metrics, stage_items, train

from vsre_ros.core.config import tiny_encoders, tiny_lm


def tiny_overrides(fusion: str = "channel") -> dict:
    encoders = [dataclasses.asdict(e) for e in tiny_encoders(hidden=32, layers=1, heads=2)]
    lm = dataclasses.asdict(tiny_lm(hidden=64, layers=3, heads=4, ffn=128))
    lm["attn_implementation"] = "eager"
    return {"fusion": fusion, "fusion_grid": 8, "encoders": encoders, "lm": lm}


def generated(tmp_path_factory, n: int, seed: int):
    """A fresh simulator dataset of `n` items at 64 x 64."""
    from vsre_ros.sim_data.dataset import GenConfig, generate

    root = tmp_path_factory.mktemp("sim") / "data"
    generate(root, n, GenConfig(seed=seed, width=64, height=64), workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    return generated(tmp_path_factory, 60, 3)


@pytest.fixture(scope="module")
def model():
    return build_model("vsre-tiny", tiny_overrides(), seed=0)


def single_image_items(root, task=None):
    items = load_items(root, "random_train") + load_items(root, "random_test")
    return [i for i in items if len(i.images) == 1 and (task is None or i.task == task)]


def test_spans_cover_exactly_the_phrase_tokens(model):
    builder = TargetBuilder(model)
    question = "Is the red can left of the blue box?"
    subj, rel, missing = builder.spans(question, ["red can", "left of", "green ball"])
    suffix = model.suffix_ids(question)
    assert model.tokenizer.decode([suffix[t] for t in subj]).strip() == "red can"
    assert model.tokenizer.decode([suffix[t] for t in rel]).strip() == "left of"
    assert missing == []


def test_dense_targets_follow_the_mask_and_the_scene(sim_data, model):
    builder = TargetBuilder(model)
    item = next(i for i in single_image_items(sim_data, "localization"))
    target = builder.image(ask(item), 0)
    assert target is not None
    mask_id = item.extra["mask_ids"][0]
    colour = item.subj.split()[0]
    mostly_it = target.coverage[mask_id] > 0.5
    assert mostly_it.any(), "the localized object covers at least one patch"
    assert (target.colour[mostly_it] == COLOUR_IDS[colour]).all()
    assert target.colour.shape == (model.num_image_tokens,)
    assert torch.isfinite(torch.from_numpy(target.log_depth)).all()


def test_sequence_fusion_targets_cover_every_encoder_block(sim_data):
    seq = build_model("vsre-tiny", tiny_overrides("sequence"), seed=0)
    builder = TargetBuilder(seq)
    assert len(token_grids(seq)) == 4
    item = single_image_items(sim_data, "relation")[0]
    target = builder.image(ask(item), 0)
    assert target.category.shape == (seq.num_image_tokens,)


def test_batch_targets_point_at_image_tokens_and_phrases(sim_data, model):
    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data, "relation")[:6]]
    batch = collate(model, examples, image_cache(model))
    targets = batch_targets(builder, examples, batch)
    rows, query, keys, weights, depth, shape, pose, span, image = targets["hop1"]
    assert torch.allclose(weights.sum(-1), torch.ones(len(rows)))
    # The shape: a box inside the image around the object's patches, a visible area, depths
    # that bracket the mean.
    assert torch.isfinite(shape).all()
    x0, y0, x1, y1, area, d_min, d_max = shape.unbind(-1)
    assert ((0 <= x0) & (x0 < x1) & (x1 <= 1) & (0 <= y0) & (y0 < y1) & (y1 <= 1)).all()
    assert ((area > 0) & (area**2 <= (x1 - x0) * (y1 - y0) + 1e-6)).all(), "sqrt of the area"
    assert ((d_min <= depth + 1e-4) & (depth <= d_max + 1e-4)).all()
    cols = (torch.arange(model.num_image_tokens) % 8 + 0.5) / 8
    centre_x = (weights * cols).sum(-1)
    assert ((centre_x > x0 - 1 / 8) & (centre_x < x1 + 1 / 8)).all()
    assert torch.isfinite(depth).all() and (depth < 3).all(), "log depth of a tabletop object"
    ids = batch["input_ids"]
    assert (ids[rows[:, None], keys] == model.image_token_id).all()
    assert (query < batch["answer_start"][rows]).all(), "phrases are inside the question"
    assert span[torch.arange(len(rows)), query].all(), "a phrase's span ends at its last token"
    assert (span.sum(-1) >= 2).all(), "colour and category words"
    assert (image == rows).all(), "one image per row: the row's image"
    h_rows, heads, h_query, key_mask = targets["hop2"]
    assert (h_query == batch["answer_start"][h_rows] - 1).all()
    assert key_mask.any(-1).all()
    assert targets["colour"].shape == (len(examples), model.num_image_tokens)


def test_shape_term_of_the_probe_has_its_own_weight(sim_data, model):
    from vsre_ros.training.recipes.targets import PhraseProbe, probe_loss

    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data, "relation")[:4]]
    batch = collate(model, examples, image_cache(model))
    targets = batch_targets(builder, examples, batch)
    torch.manual_seed(0)
    probe = PhraseProbe(model.hidden_size, model.num_image_tokens)
    states = torch.randn(batch["input_ids"].shape + (model.hidden_size,))
    losses = [float(probe_loss(probe, states, targets, w)) for w in (0.0, 1.0, 2.0)]
    assert losses[0] < losses[1] < losses[2]
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)


def _render(heading: float, moved: bool = False) -> dict:
    """A render whose camera looks horizontally along world heading `heading`."""
    forward = np.array([np.cos(heading), np.sin(heading), 0.0])
    right = np.array([np.sin(heading), -np.cos(heading), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    return {
        "camera": {"cam_rot": np.stack([right, down, forward], axis=1).tolist()},
        "objects": [{"mask_id": 1, "center_cam": [0.1, 0.2, 1.5]}],
        "moved": moved,
    }


def _object(category: str, yaw: float, size: list[float], has_front: bool) -> dict:
    return {"mask_id": 1, "category": category, "yaw": yaw, "size": size, "has_front": has_front}


def test_object_poses_measure_headings_from_the_camera():
    from vsre_ros.training.recipes.targets import POSE_SIZE, object_poses

    # A chair whose front points 90 degrees left of where the camera looks, seen from two
    # cameras: the pose turns with the camera, not with the world.
    chair = {"objects": [_object("chair", np.pi / 2, [0.4, 0.4, 0.8], True)]}
    (pose,) = object_poses(chair, _render(0.0)).values()
    assert pose.shape == (POSE_SIZE,)
    np.testing.assert_allclose(pose[:3], [0.1, 0.2, 1.5])
    np.testing.assert_allclose(pose[3:5], [0.0, 1.0], atol=1e-6)
    (turned,) = object_poses(chair, _render(np.pi / 2)).values()
    np.testing.assert_allclose(turned[3:5], [1.0, 0.0], atol=1e-6)
    assert np.isnan(pose[5:7]).all(), "a square chair has no long axis"
    np.testing.assert_allclose(pose[7:], [0.4, 0.4, 0.8])
    # A book lying across the view: its long side is its y, so its axis is 90 degrees from
    # its yaw; an axis has no sign, so yaw and yaw + 180 degrees give the same pose.
    book = {"objects": [_object("book", 0.0, [0.1, 0.3, 0.03], False)]}
    (across,) = object_poses(book, _render(0.0)).values()
    assert np.isnan(across[3:5]).all(), "a book has no front"
    np.testing.assert_allclose(across[5:7], [-1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(across[7:], [0.3, 0.1, 0.03], rtol=1e-6)
    book["objects"][0]["yaw"] = np.pi
    (flipped,) = object_poses(book, _render(0.0)).values()
    np.testing.assert_allclose(flipped[5:7], across[5:7], atol=1e-6)
    assert object_poses(book, _render(0.0, moved=True)) == {}


def test_pose_targets_follow_the_scene_and_the_pose_term_learns(sim_data, model):
    from vsre_ros.training.recipes.targets import POSE_SIZE, BankProbe, pose_loss

    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data, "relation")[:8]]
    batch = collate(model, examples, image_cache(model))
    t = batch_targets(builder, examples, batch)["hop1"]
    assert torch.isfinite(t.pose[:, :3]).all() and (t.pose[:, 2] > 0).all(), "in front of the lens"
    assert torch.isfinite(t.pose[:, 7:]).all() and (t.pose[:, 7:] > 0).all()
    front = t.pose[:, 3:5]
    known = torch.isfinite(front).all(-1)
    assert torch.allclose(front[known].norm(dim=-1), torch.ones(int(known.sum())), atol=1e-5)
    assert (torch.isnan(front).all(-1) | known).all(), "both entries known or neither"
    # The term ignores unknown entries and a few steps fit it from fixed states.
    torch.manual_seed(0)
    probe = BankProbe(model.hidden_size, POSE_SIZE)
    states = torch.randn(batch["input_ids"].shape + (model.hidden_size,))
    optimizer = torch.optim.Adam(probe.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        loss = pose_loss(probe, states, {"hop1": t})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.2 * losses[0]


def test_hop0_points_from_the_phrase_end_to_its_other_words(sim_data, model):
    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data, "relation")[:6]]
    batch = collate(model, examples, image_cache(model))
    rows, heads, query, key_mask = batch_targets(builder, examples, batch)["hop0"]
    assert (heads == 0).all()
    ids = batch["input_ids"]
    for r, q, keys in zip(rows.tolist(), query.tolist(), key_mask, strict=True):
        positions = keys.nonzero().flatten().tolist()
        assert positions == list(range(positions[0], q)), "the tokens just before the query"
        phrase = model.tokenizer.decode(ids[r, positions[0] : q + 1].tolist()).strip()
        assert phrase in examples[r].item.extra["objects"], "together they spell one object"


def test_relation_bank_agrees_with_every_asked_relation(sim_data, model):
    builder = TargetBuilder(model)
    items = [i for i in single_image_items(sim_data, "relation") if i.relation in BANK]
    assert len(items) >= 20
    for item in items:
        truth = builder.bank(ask(item))
        assert truth is not None and truth.shape == (len(BANK),)
        assert truth[BANK.index(item.relation)] == item.label, (item.id, item.relation)
    # Opposites are opposite wherever both are decided.
    left, right = BANK.index("left of"), BANK.index("right of")
    lateral = np.stack([builder.bank(ask(i))[[left, right]] for i in items])
    decided = lateral[np.isfinite(lateral).all(1)]
    assert len(decided) > 0 and (decided.sum(1) == 1.0).all()


def test_relation_bank_targets_sit_at_the_answer_position(sim_data, model):
    builder = TargetBuilder(model)
    examples = [ask(i) for i in single_image_items(sim_data, "relation")[:6]]
    examples += [ask(i) for i in single_image_items(sim_data, "localization")[:2]]
    batch = collate(model, examples, image_cache(model))
    rows, query, truth = batch_targets(builder, examples, batch)["bank"]
    assert rows.tolist() == list(range(6)), "one-object questions have no pair to describe"
    assert (query == batch["answer_start"][rows] - 1).all()
    assert truth.shape == (6, len(BANK))
    assert set(truth[torch.isfinite(truth)].unique().tolist()) <= {0.0, 1.0}


def test_verdict_bits_name_the_truth_and_where_the_letters_put_it(sim_data, model):
    from vsre_ros.training.items import ALL_TEMPLATES

    items = single_image_items(sim_data, "relation")
    held, not_held = (next(i for i in items if i.label == v) for v in (1, 0))
    yes_first, yes_second = ALL_TEMPLATES["t35"], ALL_TEMPLATES["t36"]
    assert (yes_first.yes, yes_second.yes) == ("A", "B")
    assert verdict_bits(ask(held, yes_first)).tolist() == [1.0, 0.0]
    assert verdict_bits(ask(not_held, yes_second)).tolist() == [0.0, 1.0]
    truth, second = verdict_bits(ask(held, ALL_TEMPLATES["t00"]))
    assert truth == 1.0 and np.isnan(second), "a yes/no question lists no options"
    localization = single_image_items(sim_data, "localization")[0]
    assert verdict_bits(ask(localization)) is None
    examples = [ask(held, yes_second), ask(localization), ask(not_held, yes_first)]
    batch = collate(model, examples, image_cache(model))
    rows, query, bits = batch_targets(TargetBuilder(model), examples, batch)["verdict"]
    assert rows.tolist() == [0, 2] and (query == batch["answer_start"][rows] - 1).all()
    assert bits.tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_default_overrides_keep_the_named_families():
    from vsre_ros.training.recipes.curriculum import default_overrides

    full = [e["family"] for e in default_overrides()["encoders"]]
    assert full == ["clip", "siglip", "sam", "dinov2"]
    ablated = default_overrides(["clip", "sam", "dinov2"])
    assert [e["family"] for e in ablated["encoders"]] == ["clip", "sam", "dinov2"]
    assert ablated["lm"]["hf_config"]["num_hidden_layers"] == 4, "a layer per hop and one more"
    with pytest.raises(ValueError, match="unknown or no encoder families \\['vit'\\]"):
        default_overrides(["clip", "vit"])
    with pytest.raises(ValueError, match="known"):
        default_overrides([])


def test_more_lm_layers_are_added_after_the_hops():
    from vsre_ros.training.recipes.curriculum import default_overrides

    assert default_overrides(lm_layers=6)["lm"]["hf_config"]["num_hidden_layers"] == 6
    with pytest.raises(ValueError, match="at least 4"):
        default_overrides(lm_layers=3)


def test_hop_layers_must_exist_in_the_lm(sim_data, tmp_path):
    config = five_step_recipe(sim_data, tmp_path)
    config.hop_layers = [0, 1, 3]
    with pytest.raises(ValueError, match="below the LM's 3"):
        train(config, progress=False)


def test_first_stage_asks_one_polarity_only(sim_data):
    items = load_items(sim_data, "random_train")
    first = stage_items(items, default_stages(5, 5)[0])
    relations = {i.relation for i in first if i.task == "relation"}
    assert relations <= set(ONE_POLARITY)
    assert not relations & {"right of", "behind", "below", "far from"}


def test_curricula_are_looked_up_by_id():
    stages = curriculum("image-plane-first", 10, 10, 16)
    assert stages[0].relations == ["left of"]
    assert sum(s.steps for s in stages) == 20
    skills, one_polarity, every = curriculum("binding-first", 10, 10, 16)
    assert "relation" not in skills.task_weights, "basic skills before any relation"
    assert one_polarity.relations == ONE_POLARITY and not every.relations
    assert skills.steps + one_polarity.steps == 10
    with pytest.raises(ValueError, match="known: \\['basics-first'"):
        curriculum("nope", 1, 1, 1)


def test_relations_grow_binds_first_and_adds_each_opposite_after_its_polarity():
    from vsre_ros.training.recipes.curriculum import VERTICAL_DEPTH_OTHER

    stages = curriculum("relations-grow", 100, 200, 16)
    assert sum(s.steps for s in stages) == 300
    assert stages[0].task_weights == {"localization": 1.0}, "binding alone first"
    assert stages[1].relations == ["left of"]
    assert all("localization" in s.task_weights for s in stages), "binding kept alive"
    seen: set[str] = set()
    for stage in stages[1:-1]:
        new = set(stage.relations) - seen
        assert new, f"{stage.name} adds relations"
        assert not any(r in VERTICAL_DEPTH_OTHER for r in new) or "above" in seen, (
            "an opposite polarity only after its first polarity"
        )
        seen |= set(stage.relations)
    assert stages[-1].relations == [], "the last stage asks every relation"


def test_relations_grow_all_grows_every_generated_relation_one_polarity_first():
    from vsre_ros.sim_data.relations import GENERATED

    stages = curriculum("relations-grow-all", 100, 200, 16)
    assert sum(s.steps for s in stages) == 300
    assert [s.name for s in stages[:5]] == [
        s.name for s in curriculum("relations-grow", 100, 200, 16)[:5]
    ], "the projective stages of relations-grow come first"
    first_seen: dict[str, int] = {}
    for k, stage in enumerate(stages[:-1]):
        for r in stage.relations:
            first_seen.setdefault(r, k)
    assert set(first_seen) == set(GENERATED), "every generated relation is grown before the end"
    for polarity, opposite in [
        ("near", "far from"), ("inside", "outside"), ("inside", "contains"),
        ("facing", "facing away from"), ("parallel to", "perpendicular to"),
    ]:  # fmt: skip
        assert first_seen[polarity] < first_seen[opposite], f"{opposite} before {polarity}"
    assert stages[-1].relations == [] and "composite" in stages[-1].task_weights


def test_fusion_grid_sizes_the_image_tokens():
    from vsre_ros.training.recipes.curriculum import default_overrides

    assert default_overrides()["fusion_grid"] == 8
    model = build_model("vsre-tiny", default_overrides(fusion_grid=4), 0)
    assert model.num_image_tokens == 16
    with pytest.raises(ValueError, match="fusion_grid must be at least 1"):
        default_overrides(fusion_grid=0)


def test_a_larger_input_keeps_the_grid_with_a_larger_patch(sim_data):
    from vsre_ros.training.recipes.curriculum import default_overrides

    model = build_model("vsre-tiny", default_overrides(image_size=96), 0)
    small = build_model("vsre-tiny", default_overrides(), 0)
    assert {(e.image_size, tuple(e.grid)) for e in model.encoders.values()} == {(96, (8, 8))}
    assert model.num_image_tokens == small.num_image_tokens == 64
    # The patch embeddings see 12x12 pixels instead of 8x8: the input keeps its detail.
    item = load_items(sim_data, "random_train")[0]
    batch = collate(model, [ask(item)], image_cache(model))
    assert {tuple(p.shape[-2:]) for p in batch["pixel_values"].values()} == {(96, 96)}
    with pytest.raises(ValueError, match="multiple of 8"):
        default_overrides(image_size=100)


# The recipe's extra losses (training/default_model.py RECIPE_LOSSES), weight 1 each.
RECIPE_WEIGHTS = {
    "dense": 1.0, "hop0": 1.0, "objects": 1.0, "hop1": 1.0, "probe": 1.0, "bank": 1.0,
    "verdict_probe": 1.0, "hop2": 1.0,
}  # fmt: skip


def five_step_recipe(data, out, weights: dict | None = None, **fields) -> TrainConfig:
    """The tiny model through the recipe's first two stages (2 + 3 steps) on random_train,
    one optimizer across them, a metrics row each step."""
    stages = default_stages(2, 3, batch_size=4)
    for stage in stages:
        stage.split = "random_train"
    stages[-1].decay_share = 0.3
    fields.setdefault("model_overrides", tiny_overrides())
    return TrainConfig(
        data=str(data), output=str(out), stages=stages,
        aux_losses={**RECIPE_WEIGHTS, **(weights or {})}, carry_optimizer=True, log_every=1,
        eval_every=0, **fields,
    )  # fmt: skip


def trained(config: TrainConfig):
    """(the run's model, its metrics rows in order)."""
    from vsre_ros.core.model import VSREModel

    results = train(config, progress=False)
    out = Path(config.output)
    rows = [r for s in config.stages for r in read_metrics(out / s.name / "metrics.jsonl")]
    return VSREModel.from_pretrained(results[-1].final_dir), rows


def test_recipe_trains_and_writes_its_curve(sim_data, tmp_path):
    config = five_step_recipe(sim_data, tmp_path, {"pose": 1.0, "grounding": 1.0})
    model, rows = trained(config)
    assert rows[-1]["global_step"] == 5
    parts = ("lm", "dense", "hop0", "hop1", "hop2", "probe", "pose", "grounding", "bank",
             "verdict_probe")  # fmt: skip
    assert all(f"loss_{k}" in rows[-1] for k in parts)
    # The grounding head is exported: saved beside the run's model and loaded with it.
    assert (tmp_path / config.stages[-1].name / "final" / "grounding.safetensors").is_file()
    assert "grounding" in model.heads
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (tmp_path / "learning_curve.png").stat().st_size > 0


def test_weight_average_follows_its_formula_and_swaps_back():
    from vsre_ros.training.averaging import WeightAverage

    layer = torch.nn.Linear(2, 1, bias=False)
    frozen = torch.nn.Linear(1, 1)
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(layer, frozen)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average = WeightAverage(model, 0.5)
    assert len(average.live) == 1 and average.live[0] is layer.weight
    expected = 1.0
    for n, value in enumerate([3.0, 5.0, -1.0, 2.0]):
        with torch.no_grad():
            layer.weight.fill_(value)
        average.update()
        d = min(0.5, (1 + n) / (10 + n))  # 0.1, 0.18..., 0.25, 0.3...: the warm-up
        expected = d * expected + (1 - d) * value
    assert torch.allclose(average.average[0], torch.full((1, 2), expected))
    with average.swapped():
        assert torch.allclose(layer.weight, torch.full((1, 2), expected))
    assert torch.equal(layer.weight, torch.full((1, 2), 2.0))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="ema_decay must be in"):
            WeightAverage(model, bad)


def test_averaged_run_trains_the_same_and_keeps_its_last_weights(sim_data, tmp_path):
    from safetensors.torch import load_file, save_file
    from vsre_ros.training.train import LAST_WEIGHTS

    from vsre_ros.core.model import ModelLoadError

    runs = {}
    for decay in (0.0, 0.9):
        config = five_step_recipe(sim_data, tmp_path / str(decay), ema_decay=decay)
        config.val_split, config.val_items = "random_train", 4
        runs[decay] = trained(config)
    (plain, plain_rows), (averaged, averaged_rows) = runs[0.0], runs[0.9]
    # Averaging only watches: the same losses, and the last step's weights kept beside.
    assert [r["loss"] for r in plain_rows] == [r["loss"] for r in averaged_rows]
    final = tmp_path / "0.9" / "B-all" / "final"
    assert not (tmp_path / "0.0" / "B-all" / "final" / LAST_WEIGHTS).exists()
    vals = [r for r in averaged_rows if "val_acc" in r]
    assert len(vals) == 2 and all(0.0 <= r["val_acc_ema"] <= 1.0 for r in vals)
    assert not any("val_acc_ema" in r for r in plain_rows)
    plain_state = plain.state_dict()
    moved = [k for k, v in averaged.state_dict().items() if not torch.equal(v, plain_state[k])]
    assert moved, "the returned model should carry the averages, not the last weights"
    last = final / LAST_WEIGHTS
    averaged.load_weights(last)
    for name, tensor in averaged.state_dict().items():
        assert torch.equal(tensor, plain_state[name]), name
    wrong = tmp_path / "wrong.safetensors"
    save_file({**load_file(str(last)), "no.such.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ModelLoadError, match="unexpected"):
        averaged.load_weights(wrong)
    state = load_file(str(last))
    name = next(iter(state))
    save_file({**state, name: torch.zeros(3, 1, 2)}, str(wrong))
    with pytest.raises(ModelLoadError, match="has shape"):
        averaged.load_weights(wrong)


def test_decay_share_sets_where_the_stage_lr_starts_falling():
    from vsre_ros.training.config import StageConfig
    from vsre_ros.training.train import learning_rate

    for decay, start in ((0.3, 70), (0.6, 40)):
        stage = StageConfig(steps=100, lr=1e-3, warmup_steps=0, decay_share=decay)
        assert learning_rate(stage, start - 1) == pytest.approx(1e-3)
        assert learning_rate(stage, start + 1) < 1e-3
        assert 1e-4 <= learning_rate(stage, 99) < 1.5e-4  # down to 10% at the end
    flat = StageConfig(steps=100, lr=1e-3, warmup_steps=0)
    assert learning_rate(flat, 99) == pytest.approx(1e-3), "no decay unless asked"
    stages = curriculum("relations-grow", 10, 20, 4, final_decay=0.3)
    assert [s.decay_share for s in stages] == [0.0] * (len(stages) - 1) + [0.3]
    with pytest.raises(ValueError, match="decay_share is a share"):
        TrainConfig(stages=[StageConfig(decay_share=1.5)]).validate()
