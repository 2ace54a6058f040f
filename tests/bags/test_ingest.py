"""`vsre ingest`: queries paired with frames, labels from corrections, what is skipped and why."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image
from vsre_ros.training import bags
from vsre_ros.training.items import read_vsre

SEC = 1_000_000_000


def _frames(n=4, size=(12, 16)):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _scenario(builder, frames):
    """Four frames 1 s apart, a depth stream, and queries covering each pairing rule."""
    for k, pixels in enumerate(frames, start=1):
        builder.add("/cam/color", k * SEC + 5, builder.image(pixels, k * SEC, pad=4))
        depth = np.full(pixels.shape[:2], float(k), np.float32)
        builder.add("/cam/depth", k * SEC + 6, builder.image(depth, k * SEC, encoding="32FC1"))
    builder.add("/sim/truth", 2 * SEC + 7, builder.truth("scene 7", 2 * SEC, '{"objects": []}'))
    # q-stamp: asks about the frame at 2 s by stamp; the operator says the answer is "no".
    q = builder.query("q-stamp", ns=2 * SEC, subj="cup", relation="left of", obj="box")
    builder.add("/vsre/query", 2 * SEC + 100, q)
    builder.add("/vsre/answer", 2 * SEC + 200, builder.answer("q-stamp", 2 * SEC))
    builder.add("vsre/corrections", 2 * SEC + 300, builder.correction("q-stamp", 2 * SEC + 300))
    # q-latest: zero stamp; the answer header says the node used the frame at 3 s.
    q = builder.query("q-latest", kind=1, options=["left", "right"])
    builder.add("/vsre/query", 3 * SEC + 100, q)
    builder.add("/vsre/answer", 3 * SEC + 200, builder.answer("q-latest", 3 * SEC, text="left"))
    fix = builder.correction("q-latest", 3 * SEC + 300, choice_index=1, answer="right")
    builder.add("vsre/corrections", 3 * SEC + 300, fix)
    # q-open: answered, never corrected.
    builder.add("/vsre/query", 4 * SEC + 100, builder.query("q-open", ns=4 * SEC))
    builder.add("/vsre/answer", 4 * SEC + 200, builder.answer("q-open", 4 * SEC, verdict=False))
    # q-far: its stamp is nowhere near a frame.
    builder.add("/vsre/query", 4 * SEC + 150, builder.query("q-far", ns=int(2.5 * SEC)))
    builder.add("vsre/corrections", 4 * SEC + 400, builder.correction("q-far", 4 * SEC + 400))
    # q-inline: a number question about an inline bgr8 image.
    inline = builder.image(frames[0][:, :, ::-1].copy(), 0, encoding="bgr8")
    q = builder.query("q-inline", kind=2, images=[inline], question="How far is it?")
    builder.add("/vsre/query", 4 * SEC + 500, q)
    builder.add("vsre/corrections", 4 * SEC + 600, builder.correction("q-inline", 0, value=0.8))
    # A correction for a query that was never recorded.
    builder.add("vsre/corrections", 4 * SEC + 700, builder.correction("ghost", 4 * SEC + 700))


def _items(root):
    """Items by query id, with their provenance merged in; read through the training reader."""
    provenance = {
        row["id"]: row
        for row in map(json.loads, (root / "provenance.jsonl").read_text().splitlines())
    }
    items = {}
    for split in ("train", "val", "test"):
        for item in read_vsre(root, split):
            row = {**item.to_json(), **provenance[item.id]}
            items[row["query_id"]] = row
    return items


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_ingest_pairs_queries_with_frames_and_corrections(builder, tmp_path, storage):
    frames = _frames()
    _scenario(builder, frames)
    bag = builder.write(tmp_path / "run1", storage)
    report = bags.ingest([bag], tmp_path / "ds")
    root = tmp_path / "ds"
    items = _items(root)
    assert set(items) == {"q-stamp", "q-latest", "q-inline"}

    by_stamp = items["q-stamp"]
    assert (by_stamp["answer"], by_stamp["label"], by_stamp["label_source"]) == (
        "no",
        0,
        "correction",
    )
    assert by_stamp["caption"] == "The cup is left of the box."
    assert by_stamp["task"] == "relation" and by_stamp["source"] == "bag"
    assert by_stamp["meta_category"] == "Projective" and by_stamp["camera"] == "/cam/color"
    np.testing.assert_array_equal(np.asarray(Image.open(root / by_stamp["image"])), frames[1])
    np.testing.assert_array_equal(np.load(root / by_stamp["depth"][0]), np.full((12, 16), 2.0))
    scene = by_stamp["scene_id"]
    assert json.loads((root / "scenes" / f"{scene}.json").read_text()) == {"objects": []}

    latest = items["q-latest"]
    assert latest["answer"] == "right" and latest["answer_kind"] == "choice"
    np.testing.assert_array_equal(np.asarray(Image.open(root / latest["image"])), frames[2])

    inline = items["q-inline"]
    assert inline["value"] == pytest.approx(0.8) and inline["unit"] == "m"
    assert inline["task"] == "metric" and inline["scene_id"] == ""
    np.testing.assert_array_equal(np.asarray(Image.open(root / inline["image"])), frames[0])

    assert report.skipped == {
        "no correction (pass --use-model-answers to keep the model's answer)": 1,
        "no frame within max_skew of the query stamp": 1,
        "correction for a query that is in no bag": 1,
    }
    # Only what the items use is decoded and written: frames 2 and 3, their depth, the inline.
    assert len(list((root / "images").iterdir())) == 3 and report.frames == 2
    assert len(list((root / "depth").iterdir())) == 2
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["schema"] == "vsre-dataset/1" and meta["source"] == "bag"
    assert sum(meta["splits"].values()) == 3 and meta["counts"]["skipped"] == report.skipped


def test_model_answers_are_kept_only_when_asked_and_marked(builder, tmp_path):
    _scenario(builder, _frames())
    bag = builder.write(tmp_path / "run1")
    bags.ingest([bag], tmp_path / "ds", bags.IngestConfig(use_model_answers=True))
    kept = _items(tmp_path / "ds")["q-open"]
    assert (kept["answer"], kept["label"], kept["label_source"]) == ("no", 0, "model")


def test_unsure_model_answers_are_left_out(builder, tmp_path):
    _scenario(builder, _frames())  # q-open is answered, uncorrected, with confidence 0.9
    bag = builder.write(tmp_path / "run1")
    config = bags.IngestConfig(use_model_answers=True, min_confidence=0.95)
    report = bags.ingest([bag], tmp_path / "ds", config)
    assert report.skipped["model answer below --min-confidence and not corrected"] == 1
    assert "q-open" not in _items(tmp_path / "ds")


def test_failed_model_answer_is_not_a_label(builder, tmp_path):
    builder.add("/cam/color", SEC, builder.image(_frames(1)[0], SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC))
    builder.add("/vsre/answer", SEC + 2, builder.answer("q", SEC, status=7))
    bag = builder.write(tmp_path / "run")
    report = bags.ingest([bag], tmp_path / "ds", bags.IngestConfig(use_model_answers=True))
    assert report.skipped == {"model answer is a failure and nothing corrected it": 1}


def test_unknown_camera_and_stale_latest_frame_are_reported(builder, tmp_path):
    builder.add("/cam/color", SEC, builder.image(_frames(1)[0], SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("cam?", camera="/other/camera"))
    builder.add("/vsre/query", 5 * SEC, builder.query("stale"))
    for query_id in ("cam?", "stale"):
        builder.add("vsre/corrections", 6 * SEC, builder.correction(query_id, 6 * SEC))
    report = bags.ingest([builder.write(tmp_path / "b")], tmp_path / "ds")
    assert report.skipped == {
        "unknown camera '/other/camera'": 1,
        "latest frame older than max_age": 1,
    }


def _big_bag(builder, n=60, size=(64, 64)):
    rng = np.random.default_rng(1)
    for k in range(n):
        pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        builder.add("/cam/color", (k + 1) * SEC, builder.image(pixels, (k + 1) * SEC))
        builder.add("/vsre/query", (k + 1) * SEC + 1, builder.query(f"q{k}", ns=(k + 1) * SEC))
        builder.add("vsre/corrections", (k + 1) * SEC + 2, builder.correction(f"q{k}", SEC))
    return n


@pytest.mark.parametrize(
    ("storage", "compress", "keep", "metadata"),
    [
        ("mcap", False, 0.6, False),  # a recorder that crashed never writes metadata.yaml
        ("mcap", True, 0.6, False),
        ("sqlite3", False, 0.7, False),
        ("mcap", False, 0.8, True),  # a finished bag whose file was cut in a copy
        ("sqlite3", False, 0.8, True),
    ],
)
def test_truncated_bag_yields_its_readable_messages(
    builder, tmp_path, storage, compress, keep, metadata
):
    n = _big_bag(builder)
    bag = builder.write(tmp_path / "crashed", storage, compress=compress)
    (storage_file,) = [p for p in bag.iterdir() if p.suffix in (".mcap", ".db3")]
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[: int(len(data) * keep)])
    if not metadata:
        (bag / "metadata.yaml").unlink()

    notes: list[str] = []
    with pytest.warns(UserWarning, match="truncated bag"):
        messages = bags.read_bag(bag, notes)
    assert 0 < len(messages) < 3 * n
    assert [m.log_time for m in messages] == sorted(m.log_time for m in messages)
    assert "salvaged" in notes[0]

    with pytest.warns(UserWarning):
        report = bags.ingest([bag], tmp_path / "ds")
    assert 0 < sum(report.items.values()) < n
    assert report.notes and "truncated" in report.notes[0]


def test_intact_bag_without_metadata_reads_everything(builder, tmp_path):
    n = _big_bag(builder, n=5, size=(8, 8))
    bag = builder.write(tmp_path / "nometa")
    (bag / "metadata.yaml").unlink()
    with pytest.warns(UserWarning, match="metadata.yaml is missing"):
        messages = bags.read_bag(bag, [])
    assert len(messages) == 3 * n


def test_bare_mcap_file_reads_without_warning(builder, tmp_path, recwarn):
    n = _big_bag(builder, n=3, size=(8, 8))
    bag = builder.write(tmp_path / "plain")
    messages = bags.read_bag(bag / "plain.mcap", [])
    assert len(messages) == 3 * n and not recwarn.list


def test_unreadable_bags_raise_with_the_reason(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.mcap").write_bytes(b"not an mcap file")
    with pytest.raises(bags.BagError, match="not an MCAP file"):
        bags.ingest([tmp_path / "junk"], tmp_path / "ds")
    with pytest.raises(bags.BagError, match="does not exist"):
        bags.read_bag(tmp_path / "missing", [])


def test_cli_ingests_and_prints_what_it_skipped(builder, tmp_path, capsys):
    from vsre_ros import cli

    _scenario(builder, _frames())
    bag = builder.write(tmp_path / "run1")
    assert (
        cli.main(["ingest", str(bag), "--out", str(tmp_path / "ds"), "--test-fraction", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert "no frame within max_skew" in out and "ingested into" in out
    assert cli.main(["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "ds2")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_nan_value_correction_is_not_a_number_label(builder, tmp_path):
    builder.add("/cam/color", SEC, builder.image(_frames(1)[0], SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("n", ns=SEC, kind=2))
    builder.add("vsre/corrections", SEC + 2, builder.correction("n", SEC, value=math.nan))
    report = bags.ingest([builder.write(tmp_path / "b")], tmp_path / "ds")
    assert report.skipped == {"correction has no value for a number question": 1}


def test_depth_pairs_with_the_stream_of_the_same_frame_id(builder, tmp_path):
    pixels = _frames(1)[0]
    builder.add("/left/color", SEC, builder.image(pixels, SEC, frame_id="left"))
    for frame_id, metres in (("left", 1.0), ("right", 3.0)):
        depth = np.full(pixels.shape[:2], metres, np.float32)
        msg = builder.image(depth, SEC, encoding="32FC1", frame_id=frame_id)
        builder.add(f"/{frame_id}/depth", SEC + 1, msg)
    builder.add("/vsre/query", SEC + 2, builder.query("q", ns=SEC))
    builder.add("vsre/corrections", SEC + 3, builder.correction("q", SEC + 3))
    bags.ingest([builder.write(tmp_path / "stereo")], tmp_path / "ds")
    item = _items(tmp_path / "ds")["q"]
    np.testing.assert_array_equal(np.load(tmp_path / "ds" / item["depth"][0]), 1.0)


def test_compressed_frames_and_several_bags(builder, tmp_path):
    import io

    from PIL import Image as PILImage

    pixels = np.full((16, 16, 3), (200, 40, 10), np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    compressed = builder.t("sensor_msgs/msg/CompressedImage")(
        header=builder.header(SEC), format="png", data=np.frombuffer(buffer.getvalue(), np.uint8)
    )
    builder.add("/cam/compressed", SEC, compressed)
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC))
    builder.add("vsre/corrections", SEC + 2, builder.correction("q", SEC + 2, verdict=True))
    first = builder.write(tmp_path / "monday")
    second = builder.write(tmp_path / "tuesday", "sqlite3")
    report = bags.ingest([first, second], tmp_path / "ds")
    assert sum(report.items.values()) == 2 and report.frames == 2
    rows = [
        json.loads(line)
        for line in (tmp_path / "ds" / "provenance.jsonl").read_text().splitlines()
    ]
    assert sorted(row["bag"].rsplit("/", 1)[1] for row in rows) == ["monday", "tuesday"]
    assert len({row["id"] for row in rows}) == 2
    for split in ("train", "val", "test"):
        for item in read_vsre(tmp_path / "ds", split):
            np.testing.assert_array_equal(np.asarray(Image.open(item.image_paths()[0])), pixels)


def test_corrections_from_another_bag_apply_and_like_named_bags_stay_apart(builder, tmp_path):
    builder.add("/cam/color", SEC, builder.image(_frames(1)[0], SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC))
    robot = builder.write(tmp_path / "a" / "run")
    operator = type(builder)(builder.store)  # the operator station records its own bag
    operator.add("vsre/corrections", 5 * SEC, operator.correction("q", 5 * SEC, verdict=True))
    station = operator.write(tmp_path / "b" / "run")
    report = bags.ingest([robot, station], tmp_path / "ds")
    item = _items(tmp_path / "ds")["q"]
    assert (item["answer"], item["label_source"]) == ("yes", "correction")
    assert report.skipped == {}
    # Another recording named "run" that also asked "q": its files and ids do not collide
    # with the first, and the station's correction, now ambiguous, is refused ...
    other = builder.write(tmp_path / "c" / "run")
    with pytest.warns(UserWarning, match="1 query id.*more than one bag"):
        report = bags.ingest([robot, other, station], tmp_path / "ds2")
    assert report.skipped == {
        "correction from a bag without its query, whose id is in several bags (refused; "
        "name the bag with --corrections-for)": 1,
        "no correction (pass --use-model-answers to keep the model's answer)": 2,
    }
    # ... unless the station's bag is bound to one robot's bag.
    config = bags.IngestConfig(correction_bags={str(station): str(other)})
    with pytest.warns(UserWarning):
        report = bags.ingest([robot, other, station], tmp_path / "ds3", config)
    rows = [json.loads(line) for line in (tmp_path / "ds3" / "provenance.jsonl").open()]
    assert [row["bag"] for row in rows] == [str(other)] and report.frames == 1
    assert rows[0]["id"].startswith("run-2-")


def test_sim_truth_questions_label_queries_without_an_operator(builder, tmp_path):
    question = "Is the red cup left of the blue box?"
    known = {
        "question": question,
        "answer_kind": "yes_no",
        "answer": "no",
        "label": 0,
        "relation": "left of",
        "caption": "The red cup is left of the blue box.",
        "template_id": "t00",
        "task": "relation",
        "boxes": [[1, 2, 3, 4], [5, 6, 7, 8]],
    }
    scene = {"scene_id": "s", "objects": [], "questions": [known]}
    builder.add("/cam/color", SEC, builder.image(_frames(1)[0], SEC))
    builder.add("/sim/truth", SEC + 1, builder.truth("s", SEC, json.dumps(scene)))
    for query_id in ("asked", "corrected"):
        query = builder.query(query_id, ns=SEC, question=question, subj="red cup",
                              relation="left of", obj="blue box")  # fmt: skip
        builder.add("/vsre/query", SEC + 2, query)
        builder.add("/vsre/answer", SEC + 3, builder.answer(query_id, SEC, verdict=True))
    builder.add("vsre/corrections", SEC + 4, builder.correction("corrected", SEC, verdict=True))
    bags.ingest([builder.write(tmp_path / "sim")], tmp_path / "ds")
    items = _items(tmp_path / "ds")
    asked, corrected = items["asked"], items["corrected"]
    assert (asked["label"], asked["answer"], asked["label_source"]) == (0, "no", "sim_truth")
    assert asked["boxes"] == [[1, 2, 3, 4], [5, 6, 7, 8]] and asked["template_id"] == "t00"
    assert (corrected["label"], corrected["label_source"]) == (1, "correction")


def test_neighbouring_frames_and_one_scene_never_straddle_splits(builder, tmp_path):
    pixels = _frames(1)[0]
    for k in range(40):  # 40 frames, 0.1 s apart: one 10 s window
        t = SEC + k * SEC // 10
        builder.add("/cam/color", t, builder.image(pixels, t))
        builder.add("/vsre/query", t + 1, builder.query(f"q{k}", ns=t))
        builder.add("vsre/corrections", t + 2, builder.correction(f"q{k}", t + 2))
    config = bags.IngestConfig(val_fraction=0.3, test_fraction=0.3)
    report = bags.ingest([builder.write(tmp_path / "burst")], tmp_path / "ds", config)
    assert sorted(report.items.values()) == [0, 0, 40]
    # With a window shorter than the frame gap, frames split on their own.
    config.split_window = 0.05
    report = bags.ingest([tmp_path / "burst"], tmp_path / "ds2", config)
    assert sum(1 for n in report.items.values() if n) > 1


def test_number_labels_are_stored_in_the_scorers_canonical_unit():
    from types import SimpleNamespace

    from vsre_ros.training.bags.ingest import _label_fields

    query = SimpleNamespace(answer_kind=2, options=[])
    fields = _label_fields(query, SimpleNamespace(value=80.0, unit="cm"), "correction")
    assert fields["value"] == pytest.approx(0.8) and fields["unit"] == "m"
    bad = _label_fields(query, SimpleNamespace(value=1.0, unit="furlong"), "correction")
    assert isinstance(bad, str) and "unknown unit 'furlong'" in bad
