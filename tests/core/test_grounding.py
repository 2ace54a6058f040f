"""core.grounding: object phrases, the head's file beside a model, grounded engine answers."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from core_helpers import small_config

from vsre_ros.core.answers import AnswerKind, Query, Source, Status
from vsre_ros.core.grounding import (
    GROUNDING_FILE,
    SUB_CELLS,
    GroundingHead,
    cell_colours,
    for_model,
    image_colours,
    iou,
    object_phrases,
    phrase_embeddings,
)
from vsre_ros.core.templates import TASK_TEMPLATES, TEMPLATES


@pytest.fixture(scope="module")
def grid_model():
    """A tiny model with one token grid (channel fusion) and object tokens: groundable."""
    from vsre_ros.core.model import VSREModel

    torch.manual_seed(0)
    return VSREModel(small_config(fusion="channel", object_tokens=2)).eval()


@pytest.mark.parametrize("template", TEMPLATES[:20], ids=lambda t: t.id)
def test_relation_questions_name_their_two_objects(template):
    question = template.render("green side table", "at the left side of", "red cup")
    assert object_phrases(question) == ["green side table", "red cup"]


@pytest.mark.parametrize(
    "template",
    [t for task in ("metric", "direction", "distance", "localization", "compare")
     for t in TASK_TEMPLATES[task]],
    ids=lambda t: t.id,
)  # fmt: skip
def test_task_questions_name_their_objects(template):
    names = {"subj": "yellow long box", "obj": "blue ball", "a": "blue ball", "b": "pink can"}
    question = template.text.replace("{options}", "top left, center").format(**names)
    wanted = [n for n in dict.fromkeys(names.values()) if n in question]
    assert object_phrases(question) == sorted(wanted, key=question.index)


def test_structured_fields_come_first():
    assert object_phrases("Is it left of that?", subj="red cup", obj="box") == ["red cup", "box"]
    assert object_phrases("How far is the camera from the image?") == []
    # the text's other objects follow: the reference of a question whose query names options
    question = "Which is closer to the black cup: the black crate or the red ball?"
    assert object_phrases(question, subj="black crate", obj="red ball") == [
        "black crate",
        "red ball",
        "black cup",
    ]
    # a text phrase naming a given object again, in more or fewer words, is not repeated
    assert object_phrases("Is the red cup left of the box?", subj="cup", obj="box") == [
        "cup",
        "box",
    ]


def test_head_gives_one_box_per_phrase_inside_the_image(grid_model):
    head = for_model(grid_model)
    tokens = torch.randn(3, grid_model.num_image_tokens, grid_model.hidden_size)
    colours = head.colours([np.zeros((24, 32, 3), np.uint8)] * 3)
    boxes, scores = head(tokens, torch.randn(3, grid_model.hidden_size), colours)
    assert boxes.shape == (3, 4) and scores.shape == (3,)
    assert bool(((boxes >= 0) & (boxes <= 1)).all())
    assert bool(((scores > 0) & (scores <= 1)).all())


def test_head_is_saved_beside_the_weights_and_loaded_with_the_model(grid_model, tmp_path):
    from vsre_ros.core.model import VSREModel

    bare = grid_model.save_pretrained(tmp_path / "bare")
    assert VSREModel.from_pretrained(bare).heads == {}  # optional: models without one load
    grid_model.heads["grounding"] = for_model(grid_model)
    try:
        out = grid_model.save_pretrained(tmp_path / "grounded")
    finally:
        del grid_model.heads["grounding"]
    # The weights file is the same with or without the head.
    assert (out / "model.safetensors").read_bytes() == (bare / "model.safetensors").read_bytes()
    loaded = VSREModel.from_pretrained(out).heads["grounding"]
    tokens = torch.randn(2, grid_model.num_image_tokens, grid_model.hidden_size)
    phrases = torch.randn(2, grid_model.hidden_size)
    colours = torch.rand(2, 16, 3 * SUB_CELLS**2)
    original = grid_model.heads.get("grounding") or GroundingHead(
        grid_model.hidden_size, (4, 4), 2
    )
    original.load_state_dict(loaded.state_dict())
    torch.testing.assert_close(
        loaded(tokens, phrases, colours)[0], original(tokens, phrases, colours)[0]
    )


def test_a_corrupt_or_foreign_grounding_file_fails_loading_with_the_reason(grid_model, tmp_path):
    from vsre_ros.core.model import ModelLoadError, VSREModel

    out = grid_model.save_pretrained(tmp_path / "m")
    (out / GROUNDING_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="grounding.safetensors is corrupt"):
        VSREModel.from_pretrained(out)
    GroundingHead(grid_model.hidden_size * 2, (4, 4), 2).save(out)
    with pytest.raises(ModelLoadError, match="fitted for hidden 128"):
        VSREModel.from_pretrained(out)


def test_a_format_1_head_loads_reading_4x4_colours(grid_model, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from vsre_ros.core.grounding import load_grounding

    head = GroundingHead(grid_model.hidden_size, (4, 4), 2, sub_cells=4)
    path = head.save(tmp_path)
    sizes = {k: v for k, v in head.sizes.items() if k != "sub_cells"}
    meta = {"format": "vsre-grounding/1", "sizes": json.dumps(sizes)}
    save_file(load_file(path), str(path), metadata=meta)
    loaded = load_grounding(tmp_path, grid_model.hidden_size, grid_model.num_image_tokens)
    assert loaded.sub_cells == 4
    assert loaded.colours([np.zeros((8, 8, 3), np.uint8)]).shape == (1, 16, 48)


class FixedBoxes(torch.nn.Module):
    """A stand-in for a fitted head: a fixed box per phrase (told by its embedding; the first
    box for a phrase it does not know). Counts its `decode` calls."""

    def __init__(self, model, boxes: dict[str, list[float]]):
        super().__init__()
        self.phrases = phrase_embeddings(model, list(boxes))
        self.boxes = torch.tensor(list(boxes.values()), dtype=torch.float32)
        self.calls = 0

    def frame_inputs(self, images):
        return torch.zeros(len(images), 1)

    def pixel_part(self, colours):
        return colours

    def join(self, tokens, pixels):
        return tokens

    def phrase_part(self, embeddings):  # each phrase's index
        return (embeddings[:, None] == self.phrases[None]).all(-1).float().argmax(1)

    def decode(self, image, index):
        self.calls += 1
        return self.boxes[index], torch.full((len(index),), 0.9)


def _tabletop_query(question, kind, with_depth=True):
    from test_geometry import _tabletop

    depth, k, rot, pos = _tabletop((0.05, 1.0, 0.06), (0.16, 0.1, 0.12))
    image = np.full((*depth.shape, 3), 120, np.uint8)
    kmat = [[k.fx, 0, k.cx], [0, k.fy, k.cy], [0, 0, 1]]
    return Query(
        question=question,
        images=[image],
        answer_kind=kind,
        depth=[depth] if with_depth else [],
        intrinsics=[np.array(kmat)] if with_depth else [],
    ), (rot, pos)


# The box of the box on the table in `_tabletop`'s image (160x120), and one of empty table.
BOX = [77 / 160, 56 / 120, 91 / 160, 69 / 120]
TABLE = [0.1, 0.8, 0.2, 0.9]


def test_engine_answers_with_grounded_objects_and_measures_with_depth(grid_model):
    from vsre_ros.core.engine import Engine

    engine = Engine(grid_model)
    grid_model.heads["grounding"] = FixedBoxes(grid_model, {"grey box": BOX, "red cup": TABLE})
    try:
        query, (rot, pos) = _tabletop_query(
            "How tall is the grey box, in metres?", AnswerKind.NUMBER
        )
        tall = engine.answer([query])[0]
        far, _ = _tabletop_query("How far is the grey box from the camera?", AnswerKind.NUMBER)
        camera = engine.answer([far])[0]
        plain, _ = _tabletop_query("How tall is the grey box?", AnswerKind.NUMBER, False)
        unmeasured = engine.answer([plain])[0]
        yes_no, _ = _tabletop_query("Is the grey box left of the red cup?", AnswerKind.YES_NO)
        relation = engine.answer([yes_no])[0]
    finally:
        del grid_model.heads["grounding"]
    assert tall.status == Status.OK and tall.source == Source.GEOMETRY
    assert tall.value == pytest.approx(0.12, abs=0.01) and tall.unit == "m"
    assert tall.text == f"{tall.value:.2f} m"
    [obj] = tall.objects
    assert obj.phrase == "grey box" and obj.depth_used
    assert iou(obj.box, BOX) > 0.9  # with depth: the box of the pixels measured
    truth = rot.T @ (np.array([0.05, 1.0, 0.06]) - pos)
    np.testing.assert_allclose(obj.position, truth, atol=0.015)
    assert camera.value == pytest.approx(np.linalg.norm(truth), rel=0.02)
    # Without depth: the head's box, no 3D place, and the model's own number.
    assert unmeasured.source == Source.MODEL and not unmeasured.objects[0].depth_used
    assert unmeasured.objects[0].box == pytest.approx(BOX)
    assert all(math.isnan(v) for v in unmeasured.objects[0].position)
    # A yes/no question keeps the model's verdict; both its objects are placed, one on the
    # table where nothing stands (no pixels above the plane: no 3D place).
    assert relation.source == Source.MODEL and relation.text in ("yes", "no")
    assert [o.phrase for o in relation.objects] == ["grey box", "red cup"]
    assert [o.depth_used for o in relation.objects] == [True, False]


def test_engine_without_a_head_or_with_bad_depth_answers_as_before(grid_model):
    from vsre_ros.core.engine import Engine

    engine = Engine(grid_model)
    query, _ = _tabletop_query("How tall is the grey box, in metres?", AnswerKind.NUMBER)
    answer = engine.answer([query])[0]
    assert answer.objects == [] and answer.source == Source.MODEL
    grid_model.heads["grounding"] = FixedBoxes(grid_model, {"grey box": BOX})
    try:
        query.intrinsics = [np.zeros((3, 3))]  # a CameraInfo never filled in
        bad_k = engine.answer([query])[0]
    finally:
        del grid_model.heads["grounding"]
    assert bad_k.source == Source.MODEL and not bad_k.objects[0].depth_used
    assert bad_k.objects[0].phrase == "grey box"


def test_cell_colours_are_each_cells_blocks_in_token_order():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:8, 8:16] = (255, 0, 0)  # grid cell (0, 1): token 1
    image[56:, :4] = (0, 0, 255)  # the left half of cell (7, 0): token 56
    colours = image_colours([image], (8, 8), 4)[0].reshape(64, 3, 4, 4)
    red, blue = colours[1], colours[56]
    assert float(red[0, 1:3, 1:3].min()) == pytest.approx(1.0)  # its inner blocks: all red
    assert float(red[1:].max()) == 0.0
    assert float(blue[2, :, 0].min()) > 0.8 and float(blue[2, :, 3].max()) < 0.1
    assert float(colours[[18, 36, 63]].max()) == 0.0  # cells away from both: black
    same = cell_colours(torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0, (8, 8), 4)
    torch.testing.assert_close(same[0], colours.reshape(64, 48))


def test_iou():
    assert iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
    assert iou([0, 0, 0.5, 1], [0.5, 0, 1, 1]) == 0.0
    assert iou([0, 0, 1, 1], [0, 0, 0.5, 1]) == pytest.approx(0.5)


def test_a_frames_questions_share_one_head_call_and_each_phrase_is_grounded_once(grid_model):
    from vsre_ros.core.engine import Engine

    engine = Engine(grid_model)
    head = FixedBoxes(grid_model, {"grey box": BOX, "red cup": TABLE})
    grid_model.heads["grounding"] = head
    try:
        questions = ["Is the grey box left of the red cup?", "Is the red cup near the grey box?"]
        queries = [_tabletop_query(q, AnswerKind.YES_NO, False)[0] for q in questions]
        first = engine.answer(queries)
        again = engine.answer([_tabletop_query(questions[1], AnswerKind.YES_NO, False)[0]])[0]
    finally:
        del grid_model.heads["grounding"]
    assert head.calls == 1  # both questions' phrases in one call; the frame's boxes are kept
    assert [o.phrase for o in first[1].objects] == ["red cup", "grey box"]
    np.testing.assert_allclose([o.box for o in first[1].objects], [TABLE, BOX], atol=1e-6)
    assert again.objects == first[1].objects and again.objects[0] is not first[1].objects[0]


def test_frame_grounding_gives_the_heads_boxes(grid_model):
    from vsre_ros.core.engine import LRU
    from vsre_ros.core.grounding import Grounder

    torch.manual_seed(1)
    head = for_model(grid_model).eval()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    tokens = torch.randn(grid_model.num_image_tokens, grid_model.hidden_size)
    phrases = ["red cup", "green side table", "blue ball"]
    with torch.inference_mode():
        frame = Grounder(grid_model, head, LRU(2), LRU(8)).frame("k", tokens, image)
        found = frame.objects(phrases[:1]) + frame.objects(phrases[1:])
        boxes, scores = head(
            tokens[None].expand(3, -1, -1),
            phrase_embeddings(grid_model, phrases),
            head.colours([image]).expand(3, -1, -1),
        )
    np.testing.assert_allclose([o.box for o in found], boxes.numpy(), atol=1e-6)
    np.testing.assert_allclose([o.score for o in found], scores.numpy(), atol=1e-6)


def test_a_camera_frame_is_read_at_strided_pixels_close_to_its_area_means():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)  # smooth at the cell scale
    frame = np.repeat(np.repeat(coarse, 40, axis=0), 40, axis=1)  # 480x640
    strided = image_colours([frame], (8, 8), 8)
    full = cell_colours(torch.from_numpy(frame).permute(2, 0, 1)[None] / 255.0, (8, 8), 8)
    assert float((strided - full).abs().mean()) < 0.02


# -- the mask head ---------------------------------------------------------------------------


def _mask_head(model, side=32):
    from vsre_ros.core.grounding import MaskHead

    torch.manual_seed(3)
    return MaskHead(model.hidden_size, (4, 4), model.num_object_tokens, side=side).eval()


def test_mask_head_gives_each_phrase_a_mask_and_the_box_of_that_mask(grid_model):
    from vsre_ros.core.engine import LRU
    from vsre_ros.core.grounding import Grounder, mask_box

    head = _mask_head(grid_model)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    tokens = torch.randn(grid_model.num_image_tokens, grid_model.hidden_size)
    phrases = ["red cup", "green side table"]
    with torch.inference_mode():
        frame = Grounder(grid_model, head, LRU(2), LRU(8)).frame("k", tokens, image)
        found = frame.objects(phrases)
        logits = head(
            tokens[None].expand(2, -1, -1),
            phrase_embeddings(grid_model, phrases),
            head.frame_inputs([image] * 2),
        )
    assert logits.shape == (2, 16, 16)  # half the head's side
    for obj, logit in zip(found, logits, strict=True):
        mask = frame.masks[obj.phrase]
        assert mask.shape == (32, 32) and mask.dtype == bool and mask.any()
        prob = torch.sigmoid(
            torch.nn.functional.interpolate(logit[None, None], (32, 32), mode="bilinear")
        )[0, 0].numpy()
        box, score, _ = mask_box(prob)
        assert obj.box == pytest.approx(box) and obj.score == pytest.approx(score, abs=1e-6)
        rows, cols = np.nonzero(mask)
        assert obj.box == pytest.approx(
            [cols.min() / 32, rows.min() / 32, (cols.max() + 1) / 32, (rows.max() + 1) / 32]
        )


def test_a_frame_is_measured_again_for_another_depth_image_not_for_the_same_one(grid_model):
    """A frame's geometry is kept per depth image (by its digest): the same array or a copy
    of it reuses the geometry; another depth image under the same frame key is measured."""
    from vsre_ros.core import geometry
    from vsre_ros.core.engine import LRU
    from vsre_ros.core.grounding import Grounder

    query, _ = _tabletop_query("How tall is the grey box, in metres?", AnswerKind.NUMBER)
    depth, k = query.depth[0], geometry.Intrinsics.from_matrix(query.intrinsics[0])
    tokens = torch.randn(grid_model.num_image_tokens, grid_model.hidden_size)
    head = FixedBoxes(grid_model, {"grey box": BOX})
    with torch.inference_mode():
        frame = Grounder(grid_model, head, LRU(2), LRU(8)).frame("k", tokens, query.images[0])
        [first] = frame.locate(["grey box"], depth, k)
        measured = frame.geometry
        assert frame.locate(["grey box"], depth, k) == [first]
        assert frame.locate(["grey box"], depth.copy(), k) == [first]
        assert frame.geometry is measured
        [nearer] = frame.locate(["grey box"], depth * 0.5, k)
    assert frame.geometry is not measured
    assert nearer.centre[2] == pytest.approx(first.centre[2] * 0.5, rel=0.02)


def test_a_mask_box_is_the_surest_piece_with_the_pieces_just_beside_it():
    from vsre_ros.core.grounding import mask_box

    prob = np.full((32, 32), 0.05)
    prob[2:8, 3:9] = 0.9  # the object
    prob[25:27, 25:27] = 0.6  # a speck elsewhere: 4 pixels against 36
    box, score, mask = mask_box(prob)
    assert box == pytest.approx([3 / 32, 2 / 32, 9 / 32, 8 / 32])
    assert score == pytest.approx(0.9) and mask.sum() == 36
    # the same object's far side, cut off by a thin thing in front of it (one pixel): kept
    prob[2:8, 10:15] = 0.8
    assert mask_box(prob)[0] == pytest.approx([3 / 32, 2 / 32, 15 / 32, 8 / 32])
    # another object of its colour, larger but less sure and further off: left out
    prob[14:30, 3:20] = 0.7
    assert mask_box(prob)[0] == pytest.approx([3 / 32, 2 / 32, 15 / 32, 8 / 32])
    # the surest piece is the object even when it is not the largest
    prob[2:8, 3:9] = prob[2:8, 10:15] = 0.6
    assert mask_box(prob)[0] == pytest.approx([3 / 32, 14 / 32, 20 / 32, 30 / 32])
    faint = np.full((20, 20), 0.05)
    faint[10:12, 4:10] = 0.3  # nothing above the threshold: the piece above half the peak
    assert mask_box(faint)[0] == pytest.approx([4 / 20, 10 / 20, 10 / 20, 12 / 20])
    assert mask_box(np.full((4, 4), np.nan))[:2] == ((0.0, 0.0, 1.0, 1.0), 0.0)


def test_a_camera_frame_and_a_small_one_are_read_at_the_heads_side():
    from vsre_ros.core.grounding import frame_pixels

    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 320:] = 255  # right half white
    pixels = frame_pixels([frame, frame[::10, ::10]], 32)
    assert pixels.shape == (2, 3, 32, 32)
    assert float(pixels[:, :, :, :15].max()) == -0.5 and float(pixels[:, :, :, 17:].min()) == 0.5


def test_a_mask_head_is_saved_beside_the_weights_and_loaded_with_the_model(grid_model, tmp_path):
    from vsre_ros.core.grounding import MaskHead
    from vsre_ros.core.model import ModelLoadError, VSREModel

    head = _mask_head(grid_model)
    grid_model.heads["grounding"] = head
    try:
        out = grid_model.save_pretrained(tmp_path / "m")
    finally:
        del grid_model.heads["grounding"]
    loaded = VSREModel.from_pretrained(out).heads["grounding"]
    assert isinstance(loaded, MaskHead) and loaded.sizes == head.sizes and not loaded.training
    tokens = torch.randn(2, grid_model.num_image_tokens, grid_model.hidden_size)
    phrases = torch.randn(2, grid_model.hidden_size)
    pixels = torch.rand(2, 3, 32, 32) - 0.5
    with torch.inference_mode():
        torch.testing.assert_close(loaded(tokens, phrases, pixels), head(tokens, phrases, pixels))
    MaskHead(grid_model.hidden_size, (4, 4), 5, side=32).save(out)  # fitted for other tokens
    with pytest.raises(ModelLoadError, match="21 image tokens; this model has hidden 64 and 18"):
        VSREModel.from_pretrained(out)


def test_engine_places_a_mask_heads_object_from_its_mask(grid_model):
    """With depth, a MaskHead's object is measured from its mask's pixels: a loose box that
    holds the table around the object still gives the object's own place and size."""
    from test_geometry import _tabletop

    from vsre_ros.core.engine import Engine
    from vsre_ros.core.grounding import MaskHead

    query, (rot, pos) = _tabletop_query("How tall is the grey box, in metres?", AnswerKind.NUMBER)
    depth = query.depth[0]
    table, _, _, _ = _tabletop((9.0, 9.0, -9.0), (0.0, 0.0, 0.0))
    on_object = depth < table - 1e-4  # the box's pixels: nearer than the table
    loose = [0.1, 0.1, 0.9, 0.9]

    class FixedMask(MaskHead):
        def decode_masks(self, image, phrase):
            n = len(phrase)
            return torch.tensor([loose] * n), torch.full((n,), 0.8), [self.mask] * n

    head = FixedMask(grid_model.hidden_size, (4, 4), 2, side=32)
    grid_model.heads["grounding"] = head
    try:
        head.mask = on_object
        tall = Engine(grid_model).answer([query])[0]
        head.mask = on_object & (np.arange(on_object.shape[1]) < 84)  # its left part only
        part = Engine(grid_model).answer([query])[0]
    finally:
        del grid_model.heads["grounding"]
    assert tall.source == Source.GEOMETRY and tall.value == pytest.approx(0.12, abs=0.01)
    [obj] = tall.objects
    assert obj.depth_used and iou(obj.box, BOX) > 0.9  # the mask's pixels, not the loose box
    truth = rot.T @ (np.array([0.05, 1.0, 0.06]) - pos)
    np.testing.assert_allclose(obj.position, truth, atol=0.015)
    # The pixels measured are the mask's: half a mask, half the object's box.
    assert part.objects[0].box[2] == pytest.approx(84 / 160)
    assert part.objects[0].box[0] == pytest.approx(obj.box[0])


def test_an_engine_told_not_to_ground_answers_without_objects(grid_model):
    from vsre_ros.core.config import EngineConfig
    from vsre_ros.core.engine import Engine

    head = FixedBoxes(grid_model, {"grey box": BOX})
    grid_model.heads["grounding"] = head
    try:
        query, _ = _tabletop_query("How tall is the grey box, in metres?", AnswerKind.NUMBER)
        answer = Engine(grid_model, EngineConfig(grounding=False)).answer([query])[0]
        grounded = Engine(grid_model).answer([query])[0]
    finally:
        del grid_model.heads["grounding"]
    assert answer.objects == [] and answer.source == Source.MODEL and head.calls == 1
    assert [o.phrase for o in grounded.objects] == ["grey box"]


def test_a_prepared_frame_is_grounded_and_measured_before_the_question(grid_model, monkeypatch):
    """`Engine.prepare` with depth and K runs the head's image part (its pixels' part and the
    join of the frame's tokens) and the frame's geometry ahead of the question: the question
    runs none of them, and its objects, 3D places and measured
    number equal those of the same question about the frame new."""
    from vsre_ros.core import geometry
    from vsre_ros.core.engine import Engine

    head = _mask_head(grid_model)
    grid_model.heads["grounding"] = head
    try:
        query, _ = _tabletop_query("How tall is the grey box, in metres?", AnswerKind.NUMBER)
        expected = Engine(grid_model).answer([query])[0]
        engine = Engine(grid_model)
        key = ("cam", 9)
        assert engine.prepare(query.images[0], key, query.depth[0], query.intrinsics[0])
        assert not engine.prepare(query.images[0], key, query.depth[0], query.intrinsics[0])
        calls = []
        pixel_part, join, frame_geometry = head.pixel_part, head.join, geometry.FrameGeometry
        monkeypatch.setattr(head, "pixel_part", lambda *a: calls.append("pix") or pixel_part(*a))
        monkeypatch.setattr(head, "join", lambda *a: calls.append("tokens") or join(*a))
        monkeypatch.setattr(
            geometry, "FrameGeometry", lambda *a: calls.append("geometry") or frame_geometry(*a)
        )
        query.image_keys = [key]
        got = engine.answer([query])[0]
    finally:
        del grid_model.heads["grounding"]
    assert calls == []
    assert (got.status, got.source, got.text) == (expected.status, expected.source, expected.text)
    [a], [b] = got.objects, expected.objects
    assert a.phrase == b.phrase and a.depth_used == b.depth_used
    np.testing.assert_allclose(a.box, b.box, atol=1e-6)
    np.testing.assert_allclose(a.position, b.position, atol=1e-6, equal_nan=True)


def test_clear_cache_forgets_the_frames_grounding_and_keeps_the_phrases_parts(
    grid_model, monkeypatch
):
    from vsre_ros.core.engine import Engine

    head = _mask_head(grid_model)
    grid_model.heads["grounding"] = head
    calls = []
    for name in ("pixel_part", "phrase_part"):
        part = getattr(head, name)
        monkeypatch.setattr(head, name, lambda *a, n=name, f=part: calls.append(n) or f(*a))
    try:
        engine = Engine(grid_model)
        query, _ = _tabletop_query("How tall is the grey box, in metres?", AnswerKind.NUMBER)
        first = engine.answer([query])[0]
        engine.clear_cache()
        again = engine.answer([query])[0]
    finally:
        del grid_model.heads["grounding"]
    assert calls == ["pixel_part", "phrase_part", "pixel_part"]
    assert (again.text, again.objects[0].box) == (first.text, first.objects[0].box)


def test_grounding_on_its_own_thread_gives_the_answers_of_grounding_after_the_lm(
    grid_model, monkeypatch
):
    """`parallel_grounding` runs the head and the geometry on the grounding thread while the
    model works; the answers (objects, boxes, 3D places, measured numbers) are those of the
    same questions grounded after the LM on the caller's thread. When the thread's work fails,
    the answers still come, grounded on the caller's thread."""
    from vsre_ros.core.config import EngineConfig
    from vsre_ros.core.engine import Engine

    grid_model.heads["grounding"] = _mask_head(grid_model)
    questions = [
        ("How tall is the grey box, in metres?", AnswerKind.NUMBER),
        ("How far is the grey box from the camera?", AnswerKind.NUMBER),
        ("Is the grey box left of the red cup?", AnswerKind.YES_NO),
    ]
    try:
        queries = [_tabletop_query(q, kind)[0] for q, kind in questions]
        serial = Engine(grid_model, EngineConfig(parallel_grounding=False)).answer(queries)
        engine = Engine(grid_model, EngineConfig(parallel_grounding=True))
        threads = []
        warm = engine._warm
        monkeypatch.setattr(
            engine, "_warm", lambda *a: threads.append(threading.current_thread()) or warm(*a)
        )
        parallel = engine.answer(queries)
        failing = Engine(grid_model, EngineConfig(parallel_grounding=True))
        monkeypatch.setattr(failing, "_warm", lambda *a: 1 / 0)
        despite = failing.answer(queries)
    finally:
        del grid_model.heads["grounding"]
    assert len(threads) == 1 and threading.current_thread() not in threads
    assert any(a.source == Source.GEOMETRY for a in serial)
    for got in (parallel, despite):
        for a, b in zip(got, serial, strict=True):
            assert (a.status, a.source, a.text) == (b.status, b.source, b.text)
            assert [o.phrase for o in a.objects] == [o.phrase for o in b.objects]
            for x, y in zip(a.objects, b.objects, strict=True):
                assert x.box == y.box and x.depth_used == y.depth_used
                np.testing.assert_array_equal(x.position, y.position)


@pytest.mark.parametrize("shape, size", [((2, 3, 4, 5), (8, 10)), ((1, 2, 4, 4), (4, 4)),
                                         ((1, 2, 3, 3), (7, 5))])  # fmt: skip
def test_nearest_is_interpolate_bit_for_bit(shape, size):
    from vsre_ros.core.grounding import nearest

    x = torch.randn(shape)
    assert torch.equal(nearest(x, size), torch.nn.functional.interpolate(x, size))
