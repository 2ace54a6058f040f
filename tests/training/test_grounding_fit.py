"""`vsre grounding`: the head fitted on a frozen model, and the evaluation's report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vsre_ros.training import grounding as tg

from vsre_ros.core.config import ModelConfig, tiny_encoders, tiny_lm
from vsre_ros.core.grounding import box_loss, phrase_embeddings


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from vsre_ros.core.model import VSREModel

    torch.manual_seed(0)
    config = ModelConfig(
        name="ground-tiny",
        encoders=tiny_encoders(hidden=32, layers=1, heads=2, image=32, patch=8),
        fusion="channel",
        fusion_grid=4,
        object_tokens=2,
        lm=tiny_lm(hidden=64, layers=1, heads=2, ffn=128),
    )
    return VSREModel(config).eval().save_pretrained(tmp_path_factory.mktemp("g") / "m")


@pytest.fixture(scope="module")
def frames():
    return tg.render(seed=11, frames=6, sizes=((64, 64), (80, 60)))


def _loss(model, head, frames) -> float:
    tokens = tg.image_tokens(model, [f.rgb for f in frames])
    rows, names, boxes = [], [], []
    for i, frame in enumerate(frames):
        for name, _, box in tg.visible_objects(frame):
            rows.append(i)
            names.append(name)
            boxes.append(box)
    with torch.no_grad():
        colours = head.colours([frames[i].rgb for i in rows])
        pred, _ = head(tokens[rows], phrase_embeddings(model, names), colours)
        return float(box_loss(pred, torch.from_numpy(np.stack(boxes))))


def test_fit_trains_only_the_head_and_saves_it_beside_the_model(model_dir, frames):
    from vsre_ros.core.grounding import for_model
    from vsre_ros.core.model import VSREModel

    torch.set_num_threads(1)
    weights = (model_dir / "model.safetensors").read_bytes()
    model = VSREModel.from_pretrained(model_dir)
    torch.manual_seed(11)
    untrained = for_model(model)
    head = tg.fit(model, frames, steps=200, batch=16, seed=11, log=lambda _: None)
    assert _loss(model, head, frames) < 0.8 * _loss(model, untrained, frames)
    head.save(model_dir)
    assert (model_dir / "model.safetensors").read_bytes() == weights  # the model is untouched
    loaded = VSREModel.from_pretrained(model_dir).heads["grounding"]
    assert _loss(model, loaded, frames) == pytest.approx(_loss(model, head, frames), rel=1e-5)


def test_a_fit_of_any_length_runs_its_schedule(model_dir, frames):
    from vsre_ros.core.model import VSREModel

    model = VSREModel.from_pretrained(model_dir)
    for steps in (1, 2, 3, 20, 21):  # 20 once ended its warm-up at step 0 and divided by zero
        head = tg.fit(model, frames, steps=steps, batch=4, seed=0, log=lambda _: None)
        assert all(bool(torch.isfinite(p).all()) for p in head.parameters()), steps


def test_fit_can_train_a_head_further_and_leaves_the_start_untouched(model_dir, frames):
    from vsre_ros.core.grounding import for_model
    from vsre_ros.core.model import VSREModel

    torch.set_num_threads(1)
    model = VSREModel.from_pretrained(model_dir)
    torch.manual_seed(12)
    start = for_model(model)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    head = tg.fit(model, frames, steps=40, batch=16, seed=11, start=start, log=lambda _: None)
    after = head.state_dict()
    assert all(torch.equal(v, start.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(after[k], v) for k, v in before.items())


def test_evaluation_reports_grounding_baselines_and_metric_answers(model_dir, frames, tmp_path):
    import shutil

    from vsre_ros.core.grounding import for_model
    from vsre_ros.core.model import VSREModel

    grounded = shutil.copytree(model_dir, tmp_path / "m")
    for_model(VSREModel.from_pretrained(grounded)).save(grounded)
    report = tg.evaluate(str(grounded), frames[:2], frames[2:])
    grounding = report["grounding"]
    named = grounding["named_objects"]
    assert named > 0
    for way in ("image", "depth", "grey", "prior"):
        entry = grounding[f"iou>=0.5_{way}"]
        assert entry["n"] == named and 0.0 <= entry["share"] <= 1.0
        assert entry["ci95"][0] <= entry["share"] <= entry["ci95"][1]
    assert grounding["phrase_found"]["share"] == 1.0  # every named object's phrase is read
    # Every named object is in one size bin, as a hit or a miss with its cause; hits are the
    # image-only IoU >= 0.5 share.
    bins = report["misses_by_size"]
    assert sum(row["n"] for row in bins) == named
    assert all(row["n"] == sum(row[why] for why in tg.MISSES) for row in bins)
    hits = sum(row["hit"] for row in bins)
    assert hits == round(grounding["iou>=0.5_image"]["share"] * named)
    assert sum(row["no phrase"] for row in bins) == 0
    metric = report["metric"]["all"]
    assert metric["source_geometry"]["n"] == sum(
        1 for f in frames[:2] for it in f.items if it["task"] == "metric"
    )
    bound = metric["geometry_of_mask_boxes"]["within_x2"]
    assert bound["n"] == metric["source_geometry"]["n"] and 0.0 <= bound["share"] <= 1.0
    assert "within 10%" in tg.summary(report)


def test_a_miss_says_why():
    objects = {
        "red cup": np.array([0.1, 0.1, 0.3, 0.3]),
        "blue box": np.array([0.6, 0.6, 0.9, 0.9]),
    }
    assert tg._miss([0.1, 0.1, 0.3, 0.3], "red cup", objects) == (pytest.approx(0.04), "hit")
    assert tg._miss([0.6, 0.6, 0.9, 0.9], "red cup", objects)[1] == "other object"
    assert tg._miss([0.05, 0.05, 0.45, 0.45], "red cup", objects)[1] == "imprecise"
    assert tg._miss([0.35, 0.0, 0.5, 0.2], "red cup", objects)[1] == "off"
    assert tg._miss(None, "red cup", objects)[1] == "no phrase"


def test_a_stage_starting_from_a_model_with_a_grounding_head_trains_that_head(model_dir):
    """Only training-only heads start afresh in a new stage; the shipped grounding head of the
    model it starts from goes on training (a fresh one once cost 12 points of IoU)."""
    from vsre_ros.training.losses import HEADS, build_heads

    from vsre_ros.core.grounding import for_model
    from vsre_ros.core.model import VSREModel

    model = VSREModel.from_pretrained(model_dir)
    torch.manual_seed(5)
    model.heads["grounding"] = trained = for_model(model)
    torch.manual_seed(0)
    heads = build_heads(model, ["dense", "grounding"])
    assert heads["grounding"] is trained
    # the other heads draw the same init as in a run whose model has no grounding head
    bare = VSREModel.from_pretrained(model_dir)
    bare.heads.pop("grounding", None)
    torch.manual_seed(0)
    fresh = build_heads(bare, ["dense", "grounding"])
    assert list(heads) == list(fresh) == [n for n in HEADS if n in ("dense", "grounding")]
    dense, dense_fresh = heads["dense"].state_dict(), fresh["dense"].state_dict()
    assert all(torch.equal(v, dense_fresh[k]) for k, v in dense.items())
    assert not all(
        torch.equal(v, fresh["grounding"].state_dict()[k]) for k, v in trained.state_dict().items()
    )


def _mask_loss(model, head, frames) -> float:
    tokens = tg.image_tokens(model, [f.rgb for f in frames])
    rows, names, masks = [], [], []
    for i, frame in enumerate(frames):
        for name, mask in tg.object_masks(frame, head.side // 2):
            rows.append(i)
            names.append(name)
            masks.append(mask)
    with torch.no_grad():
        pixels = head.frame_inputs([frames[i].rgb for i in rows])
        logits = head(tokens[rows], phrase_embeddings(model, names), pixels)
        return float(tg.mask_loss(logits, torch.stack(masks)))


def test_fit_masks_learns_the_objects_masks_on_the_frozen_model(model_dir, frames):
    from vsre_ros.core.grounding import mask_head_for
    from vsre_ros.core.model import VSREModel

    torch.set_num_threads(1)
    model = VSREModel.from_pretrained(model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    untrained = mask_head_for(model).eval()
    head = tg.fit_masks(model, frames, steps=60, batch=4, seed=11, log=lambda _: None)
    assert not head.training
    assert _mask_loss(model, head, frames) < 0.8 * _mask_loss(model, untrained, frames)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_mirrored_fit_reads_each_frame_and_its_mirror_image_with_its_masks_mirrored(
    model_dir, frames, monkeypatch
):
    from vsre_ros.core.model import VSREModel

    torch.set_num_threads(1)
    model = VSREModel.from_pretrained(model_dir)
    seen, drawn = [], []
    tokens, loss = tg.image_tokens, tg.mask_loss
    monkeypatch.setattr(
        tg, "image_tokens", lambda m, images: seen.extend(images) or tokens(m, images)
    )
    monkeypatch.setattr(tg, "mask_loss", lambda lg, truth: drawn.append(truth) or loss(lg, truth))
    tg.fit_masks(model, frames[:2], steps=1, batch=4, seed=11, mirror=True, log=lambda _: None)
    assert len(seen) == 4
    for frame, image, mirrored in zip(frames[:2], seen[:2], seen[2:], strict=True):
        assert np.array_equal(image, frame.rgb) and np.array_equal(mirrored, frame.rgb[:, ::-1])
    # the step's masks: each object's, and the same mirrored for the mirror image's
    [truth] = drawn
    masks = [m for f in frames[:2] for _, m in tg.object_masks(f, 64)]
    expected = masks + [m.flip(-1) for m in masks]
    assert len(truth) == len(expected)
    got = sorted(truth.flatten(1).tolist())
    assert got == sorted(((m * 255).round() / 255).flatten().tolist() for m in expected)


def test_object_masks_are_each_named_objects_share_of_each_pixel(frames):
    for frame in frames[:2]:  # 64x64: four pixels per mask pixel; 80x60: overlapping areas
        masks = tg.object_masks(frame, 32)
        named = tg.visible_objects(frame)
        assert [n for n, _ in masks] == [n for n, _, _ in named] and masks
        for (_, mask), (_, mask_id, box) in zip(masks, named, strict=True):
            assert mask.shape == (32, 32) and 0 <= float(mask.min()) <= float(mask.max()) <= 1
            if frame.seg.shape == (64, 64):
                truth = (frame.seg == mask_id).reshape(32, 2, 32, 2).mean((1, 3))
                np.testing.assert_allclose(mask.numpy(), truth, atol=1e-6)
            rows, cols = np.nonzero(mask.numpy() > 0)
            pad = 1 / 32
            assert cols.min() / 32 <= box[0] + pad and (cols.max() + 1) / 32 >= box[2] - pad
            assert rows.min() / 32 <= box[1] + pad and (rows.max() + 1) / 32 >= box[3] - pad


def test_the_fit_command_writes_a_mask_head_that_records_its_fit(model_dir, tmp_path):
    import shutil

    from vsre_ros.cli import main
    from vsre_ros.core.grounding import MaskHead
    from vsre_ros.core.model import VSREModel

    model = shutil.copytree(model_dir, tmp_path / "m")
    argv = [
        "--frames",
        "4",
        "--steps",
        "3",
        "--seed",
        "11",
        "--batch",
        "2",
        "--widths",
        "4,8,8,16",
        "--mirror",
    ]
    assert main(["grounding", "fit", "--model", str(model), *argv]) == 0
    head = VSREModel.from_pretrained(model).heads["grounding"]
    assert isinstance(head, MaskHead) and head.widths == (4, 8, 8, 16)
    assert head.fitted["command"].startswith(
        "vsre grounding fit --head mask --seed 11 --frames 4 --steps 3"
    )
    assert head.fitted["command"].endswith("--widths 4,8,8,16 --mirror")
    assert head.fitted["seconds"] >= 0 and head.fitted["threads"] == 1
    first = head.fitted
    # trained further: the record says so, and keeps the record of the head it started from
    assert main(["grounding", "fit", "--model", str(model), *argv, "--from-head"]) == 0
    further = VSREModel.from_pretrained(model).heads["grounding"].fitted
    assert further["command"].endswith("--widths 4,8,8,16 --mirror --from-head")
    assert further["started_from"] == first
    from vsre_ros.training.default_model.card import grounding_section

    section = grounding_section(model)
    assert further["command"] in section and first["command"] in section


def test_a_stage_starting_from_a_mask_head_trains_a_box_head_and_says_so(model_dir, caplog):
    from vsre_ros.training.losses import build_heads

    from vsre_ros.core.grounding import GroundingHead, mask_head_for
    from vsre_ros.core.model import VSREModel

    model = VSREModel.from_pretrained(model_dir)
    model.heads["grounding"] = mask_head_for(model)
    with caplog.at_level("WARNING"):
        heads = build_heads(model, ["grounding"])
    assert isinstance(heads["grounding"], GroundingHead)
    assert "vsre grounding fit" in caplog.text and "MaskHead" in caplog.text
