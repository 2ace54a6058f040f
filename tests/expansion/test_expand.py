"""Expansion mechanics with tiny random pipelines: each mode, masks, manifest, resume, shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from vsre_ros.training.expand import ExpandConfig, Shard, expand, merge
from vsre_ros.training.items import read_vsre

TINY = {"size": 32, "steps": 2, "guidance": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(source, out, mode, model, shard=None, **overrides):
    """One expansion. The tiny random pipelines draw noise, which the noise check rejects
    (tests/expansion/test_expand_trust.py); these tests are about the rest, so it is off unless
    asked for."""
    cfg = ExpandConfig(str(source), str(out), mode, str(model), generation=dict(TINY))
    cfg.min_smoothness = -1.0
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return expand(cfg, shard), cfg


def _manifest(out):
    return {
        row["unit"]: row
        for row in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    }


def _by_source(manifest):
    return {row["source_item"]: row for row in manifest.values()}


def test_txt2img_is_rejected_as_unverifiable_unless_kept(source, tmp_path, tiny_sdxl):
    report, _ = _run(source, tmp_path / "a", "txt2img", tiny_sdxl)
    assert report.verdicts == {"rejected": 5} and report.items == 0
    row = next(iter(_manifest(tmp_path / "a").values()))
    assert row["relation_check"] == "unverifiable" and row["mode"] == "txt2img"
    assert row["prompt"].startswith("a photo: The red cup is") and row["source"] == "sim"
    assert isinstance(row["seed"], int)

    report, _ = _run(source, tmp_path / "b", "txt2img", tiny_sdxl, keep_unverified=True)
    assert report.items == 5
    items = read_vsre(tmp_path / "b", "train")
    assert {i.label for i in items} == {1} and {i.source for i in items} == {"expand"}
    assert Image.open(items[0].image_paths()[0]).size == (32, 32)


def test_img2img_keeps_labels_the_geometry_confirms(source, tmp_path, tiny_sdxl):
    report, _ = _run(source, tmp_path / "out", "img2img", tiny_sdxl, min_structure=-1.0)
    rows = _by_source(_manifest(tmp_path / "out"))
    verdicts = {k: (r["verdict"], r["relation_check"]) for k, r in rows.items()}
    assert verdicts == {
        "left-true": ("accepted", "confirmed"),
        "right-false": ("accepted", "confirmed"),
        "front-true": ("accepted", "confirmed"),  # decided by the depth map
        "right-wrong": ("rejected", "contradicted"),
        "facing": ("rejected", "unverifiable"),
    }
    items = {i.id: i for i in read_vsre(tmp_path / "out", "train")}
    kept = items["right-false~img2img~0"]
    assert (kept.label, kept.relation, kept.answer) == (0, "right of", "no")
    image = np.asarray(Image.open(kept.image_paths()[0]))
    assert image.shape == (48, 48, 3)  # back at the source's size, where its boxes hold
    np.testing.assert_array_equal(
        np.load(tmp_path / "out" / kept.depth[0]), np.load(source / "depth" / "s0.npy")
    )
    assert report.reasons == {"relation_contradicted": 1, "relation_unverifiable": 1}
    # Boxes and mask ids describe the new image: the same layout, numbered like its scene file.
    mask = np.asarray(Image.open(tmp_path / "out" / kept.masks[0]))
    extra = kept.extra
    for name, mask_id, box in zip(
        extra["objects"], extra["mask_ids"], extra["boxes"], strict=True
    ):
        x0, y0, x1, y1 = box
        assert (mask[y0:y1, x0:x1] == mask_id).all(), name


def test_img2img_rejects_outputs_whose_layout_did_not_survive(source, tmp_path, tiny_sdxl):
    # A tiny random pipeline returns noise: nothing of the source's structure is left.
    report, _ = _run(source, tmp_path / "out", "img2img", tiny_sdxl, min_structure=0.5)
    assert report.verdicts == {"rejected": 5}
    assert report.reasons["layout_not_preserved"] == 5


def test_inpaint_swaps_the_subject_inside_its_box_only(source, source_boxes, tmp_path, tiny_sdxl):
    _run(source, tmp_path / "out", "inpaint", tiny_sdxl, mask_dilate=0)
    rows = _by_source(_manifest(tmp_path / "out"))
    assert rows["left-true"]["verdict"] == "accepted"
    assert rows["front-true"]["verdict"] == "rejected"  # depth of a new subject is unknown
    old, new = rows["left-true"]["swapped"]
    assert old == "red cup" and new not in ("red cup", "blue box")

    item = {i.id: i for i in read_vsre(tmp_path / "out", "train")}["left-true~inpaint~0"]
    assert item.subj == new and item.caption == f"The {new} is left of the blue box."
    assert new in item.question and item.label == 1
    src = np.asarray(Image.open(source / "images" / "s0.png"))
    out = np.asarray(Image.open(item.image_paths()[0]))
    x0, y0, x1, y1 = source_boxes["red cup"]
    outside = np.ones(src.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[outside], src[outside])
    assert not np.array_equal(out[y0:y1, x0:x1], src[y0:y1, x0:x1])
    # Instance mask and scene file name the new subject in the repainted box.
    mask = np.asarray(Image.open(tmp_path / "out" / item.masks[0]))
    scene = json.loads((tmp_path / "out" / "scenes" / f"{item.scene_id}.json").read_text())
    ids = {o["name"]: o["mask_id"] for o in scene["objects"]}
    assert (mask[y0:y1, x0:x1] == ids[new]).all()
    assert item.extra["objects"] == [new, "blue box"]
    assert item.extra["mask_ids"] == [ids[new], ids["blue box"]]
    assert item.extra["boxes"] == [list(source_boxes["red cup"]), list(source_boxes["blue box"])]
    bx0, by0, bx1, by1 = source_boxes["blue box"]
    assert (mask[by0:by1, bx0:bx1] == ids["blue box"]).all()


def test_inpaint_that_changed_nothing_is_rejected(source, tmp_path, tiny_sdxl):
    out = tmp_path / "out"
    report, _ = _run(source, out, "inpaint", tiny_sdxl, min_inpaint_change=1e9, save_rejected=True)
    assert report.items == 0
    assert report.reasons["not_repainted"] == 5
    # Rejected images are kept apart for inspection, never in the dataset.
    images = sorted(row["image"] for row in _manifest(out).values())
    assert images and all(i.startswith("rejected/") and (out / i).is_file() for i in images)
    assert not list((out / "images").iterdir())


def test_layout_draws_boxes_that_make_the_relation_hold(source, tmp_path, tiny_gligen):
    # The boxes hold by construction, so they verify nothing: without --keep-unverified no
    # layout output is kept.
    report, _ = _run(source, tmp_path / "strict", "layout", tiny_gligen, min_box_contrast=0)
    assert report.items == 0 and report.reasons == {"relation_unverifiable": 3}
    report, _ = _run(source, tmp_path / "out", "layout", tiny_gligen, keep_unverified=True,
                     min_box_contrast=0)  # fmt: skip
    assert report.not_expandable == {
        "no box layout expresses 'in front of'": 1,
        "no box layout expresses 'facing'": 1,
    }
    items = read_vsre(tmp_path / "out", "train")
    # Each image carries its relation (label 1) and the opposite relation (label 0).
    assert len(items) == 6 and sorted(i.label for i in items) == [0, 0, 0, 1, 1, 1]
    row = _by_source(_manifest(tmp_path / "out"))["left-true"]
    subj_box, obj_box = row["boxes"]
    assert subj_box[2] < obj_box[0] and row["phrases"] == ["red cup", "blue box"]
    item = next(i for i in items if i.id.startswith("left-true") and i.label == 1)
    mask = np.asarray(Image.open(tmp_path / "out" / item.masks[0]))
    left, right = np.nonzero(mask == 1)[1], np.nonzero(mask == 2)[1]
    assert left.max() < right.min()


def test_resume_skips_done_units_and_redoes_only_missing_ones(source, tmp_path, tiny_sdxl):
    out = tmp_path / "out"
    first, _ = _run(source, out, "inpaint", tiny_sdxl, per_item=2)
    assert first.generated == 10
    image = out / "images" / "left-true~inpaint~1.png"
    before = np.asarray(Image.open(image))
    again, _ = _run(source, out, "inpaint", tiny_sdxl, per_item=2)
    assert (again.generated, again.skipped_done) == (0, 10)
    # Lose one unit's manifest row (a process killed mid-unit): only it is made again,
    # with the same seed, so the same image comes back.
    part = out / "parts" / "manifest-00000.jsonl"
    rows = [r for r in part.read_text().splitlines() if "left-true~inpaint~1" not in r]
    part.write_text("\n".join(rows) + "\n")
    image.unlink()
    third, _ = _run(source, out, "inpaint", tiny_sdxl, per_item=2)
    assert third.generated == 1
    np.testing.assert_array_equal(np.asarray(Image.open(image)), before)
    assert len(_manifest(out)) == 10
    assert len(read_vsre(out, "train")) == first.items


def test_shards_split_the_work_and_merge_to_the_single_process_result(source, tmp_path, tiny_sdxl):
    single, _ = _run(source, tmp_path / "one", "inpaint", tiny_sdxl, per_item=2)
    shards = [Shard(index=k, count=2, is_main=False) for k in range(2)]
    reports = [
        _run(source, tmp_path / "two", "inpaint", tiny_sdxl, s, per_item=2)[0] for s in shards
    ]
    assert [r.mine for r in reports] == [5, 5]
    assert not (tmp_path / "two" / "manifest.jsonl").exists()  # no main process yet
    _, cfg = _run(source, tmp_path / "two", "inpaint", tiny_sdxl, per_item=2)  # merges only
    merged = _manifest(tmp_path / "two")
    alone = _manifest(tmp_path / "one")
    assert {u: (r["seed"], r["verdict"]) for u, r in merged.items()} == {
        u: (r["seed"], r["verdict"]) for u, r in alone.items()
    }
    assert {r["process"] for r in merged.values()} == {0, 1}
    unit = "left-true~inpaint~1"
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "two" / "images" / f"{unit}.png")),
        np.asarray(Image.open(tmp_path / "one" / "images" / f"{unit}.png")),
    )
    assert merge(cfg).items == single.items


def test_missing_model_directory_is_a_clear_error(source, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        _run(source, tmp_path / "out", "img2img", tmp_path / "nothing")


def test_cli_runs_a_mode_and_prints_the_counts(source, tmp_path, tiny_sdxl, capsys):
    from vsre_ros import cli

    argv = ["expand", "--data", str(source), "--out", str(tmp_path / "out"), "--mode", "inpaint"]
    argv += ["--model", str(tiny_sdxl), "--size", "32", "--steps", "1", "--guidance", "1"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "5 units planned" in printed and "rejected" in printed
    assert cli.main(["expand", "--data", str(source), "--out", "x", "--mode", "img2img"]) == 2
    assert "needs --model" in capsys.readouterr().err


def _vsr_source(root):
    """VSR's original jsonl (image, caption, label, relation) and a separate image folder."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
        root / "images" / "a.jpg"
    )
    row = {"image": "a.jpg", "caption": "The cat is left of the dog.", "label": 1,
           "relation": "left of"}  # fmt: skip
    (root / "train.jsonl").write_text(json.dumps(row) + "\n")
    return root


def test_img2img_on_vsr_rows_has_no_boxes_so_only_the_whole_image_is_checked(tmp_path, tiny_sdxl):
    source = _vsr_source(tmp_path / "vsr")
    common = {"fmt": "vsr", "images": str(source / "images"), "splits": ("train",)}
    report, _ = _run(source, tmp_path / "a", "img2img", tiny_sdxl, **common)
    assert report.verdicts == {"rejected": 1}  # unverifiable without boxes
    report, _ = _run(source, tmp_path / "b", "img2img", tiny_sdxl, keep_unverified=True,
                     min_structure=0.9, **common)  # fmt: skip
    assert report.reasons == {"layout_not_preserved": 1}
    (row,) = _manifest(tmp_path / "b").values()
    assert row["reasons"][-1].startswith("layout not preserved: image structure r=")
    report, _ = _run(source, tmp_path / "c", "img2img", tiny_sdxl, keep_unverified=True,
                     min_structure=-1.0, **common)  # fmt: skip
    (item,) = read_vsre(tmp_path / "c", "train")
    assert (item.subj, item.obj, item.label, item.source) == ("cat", "dog", 1, "expand")
    assert Image.open(item.image_paths()[0]).size == (40, 40)


def test_unknown_diffusion_mode_names_the_known_ones():
    from vsre_ros.training.expand.diffusion import pipeline_spec

    with pytest.raises(ValueError, match="unknown diffusion mode 'gligen-xl'; known: txt2img"):
        pipeline_spec("gligen-xl")


def test_two_image_items_are_left_alone_and_choice_wording_is_replaced(
    source, tmp_path, tiny_sdxl
):
    rows = [json.loads(line) for line in (source / "random_train.jsonl").read_text().splitlines()]
    pair = dict(rows[0], id="pair", images=["images/s0.png", "images/s0.png"], task="multi_image")
    choice = dict(rows[0], id="choice", template_id="t35")
    (source / "random_train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (pair, choice))
    )
    report, _ = _run(source, tmp_path / "out", "inpaint", tiny_sdxl, mask_dilate=0)
    assert report.not_expandable == {"not a yes/no relation item about one image": 1}
    (item,) = read_vsre(tmp_path / "out", "train")
    assert item.id.startswith("choice") and item.template_id == "t00"
    assert item.answer == "yes" and item.question.endswith("?")


def test_without_masks_the_sim_scene_files_boxes_are_used(
    source, source_boxes, tmp_path, tiny_sdxl
):
    rows = [json.loads(line) for line in (source / "random_train.jsonl").read_text().splitlines()]
    (source / "random_train.jsonl").write_text(
        "".join(json.dumps(dict(r, masks=[None])) + "\n" for r in rows)
    )
    scene = json.loads((source / "scenes" / "s0.json").read_text())
    boxes = [{"mask_id": k, "bbox": list(source_boxes[o["name"]])}
             for k, o in enumerate(scene["objects"], start=1)]  # fmt: skip
    scene["renders"] = [{"image": "images/s0.png", "objects": boxes}]
    (source / "scenes" / "s0.json").write_text(json.dumps(scene))
    _run(source, tmp_path / "out", "inpaint", tiny_sdxl, mask_dilate=0)
    rows = _by_source(_manifest(tmp_path / "out"))
    assert rows["left-true"]["verdict"] == "accepted"
    assert rows["right-wrong"]["relation_check"] == "contradicted"
    item = {i.id: i for i in read_vsre(tmp_path / "out", "train")}["left-true~inpaint~0"]
    assert item.extra["boxes"][1] == list(source_boxes["blue box"])
    assert item.masks == [None]  # boxes are not instance masks
