"""Issue 30's table, one test per case: bags written by `rosbags` alone (see conftest), cut
and combined the way a new user would, and what ingestion must do with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from vsre_ros.training import bags
from vsre_ros.training.items import read_vsre

SEC = 1_000_000_000
WHITE, BLACK = np.full((8, 8, 3), 255, np.uint8), np.zeros((8, 8, 3), np.uint8)


def _rows(root):
    """(item, provenance) pairs of every split, read through the training reader."""
    provenance = {
        row["id"]: row
        for row in map(json.loads, (root / "provenance.jsonl").read_text().splitlines())
    }
    return [
        (item, provenance[item.id])
        for split in ("train", "val", "test")
        for item in read_vsre(root, split)
    ]


def _labelled_run(builder, n, truth_is_white, offset=0):
    """n frames, each asked about with the demo's ids (`scene/counter`, which repeat between
    runs) and corrected: the answer is "yes" exactly when the frame is white."""
    for k in range(n):
        t = (offset + k + 1) * SEC
        white = (k % 2 == 0) == truth_is_white
        builder.add("/cam/color", t, builder.image(WHITE if white else BLACK, t))
        builder.add("/vsre/query", t + 1, builder.query(f"scene/{k}", ns=t))
        builder.add("vsre/corrections", t + 2, builder.correction(f"scene/{k}", t, verdict=white))


def test_repeated_query_ids_in_two_bags_label_each_bag_by_its_own_corrections(builder, tmp_path):
    _labelled_run(builder, 11, truth_is_white=True)
    first = builder.write(tmp_path / "monday")
    other = type(builder)(builder.store)
    _labelled_run(other, 11, truth_is_white=False, offset=100)
    second = other.write(tmp_path / "tuesday")
    with pytest.warns(UserWarning, match=r"11 query id\(s\) occur in more than one bag"):
        report = bags.ingest([first, second], tmp_path / "ds")
    rows = _rows(tmp_path / "ds")
    assert len(rows) == 22 and report.skipped == {}
    for item, _ in rows:
        white = np.asarray(Image.open(item.image_paths()[0])).mean() > 127
        assert item.label == int(white), item.id  # no label contradicts its own image


def test_a_query_id_repeated_within_a_bag_refuses_its_correction(builder, tmp_path):
    for k, pixels in enumerate((WHITE, BLACK), start=1):
        builder.add("/cam/color", k * SEC, builder.image(pixels, k * SEC))
        builder.add("/vsre/query", k * SEC + 1, builder.query("scene/0", ns=k * SEC))
    builder.add("vsre/corrections", 3 * SEC, builder.correction("scene/0", 3 * SEC, True))
    with pytest.warns(UserWarning, match=r"1 query id\(s\) repeat within the bag \(2 queries"):
        report = bags.ingest([builder.write(tmp_path / "restarted")], tmp_path / "ds")
    reason = next(r for r in report.skipped if r.startswith("query id repeats within its bag"))
    assert report.skipped[reason] == 2 and not _rows(tmp_path / "ds")


def _sqlite_bag(builder, path):
    builder.add("/cam/color", SEC, builder.image(WHITE, SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC))
    builder.add("vsre/corrections", SEC + 2, builder.correction("q", SEC, verdict=True))
    return builder.write(path, "sqlite3")


@pytest.mark.parametrize("size", [32, 99, 100, 1000, 4095])
@pytest.mark.parametrize("layout", ["bare", "with-metadata"])
def test_sqlite_cut_to_a_few_bytes_is_reported_and_the_good_bag_kept(
    builder, tmp_path, size, layout, capsys
):
    from vsre_ros import cli

    good = _sqlite_bag(builder, tmp_path / "good")
    cut = _sqlite_bag(type(builder)(builder.store), tmp_path / "cut")
    (db,) = cut.glob("*.db3")
    db.write_bytes(db.read_bytes()[:size])
    damaged = db if layout == "bare" else cut
    with pytest.raises(bags.BagError, match="no bag could be read"):
        bags.ingest([damaged], tmp_path / "alone")
    report = bags.ingest([damaged, good], tmp_path / "ds")
    assert len(report.unreadable) == 1 and str(db) in report.unreadable[0]
    assert sum(report.items.values()) == 1
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["unreadable"]
    # The command says so in its exit status: 3, some bags skipped.
    argv = ["ingest", str(damaged), str(good), "--out", str(tmp_path / "cli")]
    assert cli.main(argv) == 3
    assert "1 of 2 bags could not be read" in capsys.readouterr().err


def test_a_bag_with_junk_among_good_ones_is_skipped_not_fatal(builder, tmp_path):
    good = _sqlite_bag(builder, tmp_path / "good")
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap at all")
    report = bags.ingest([junk, good], tmp_path / "ds")
    assert report.unreadable == [f"{junk} is not an MCAP file (bad magic)"]
    assert sum(report.items.values()) == 1


def test_a_camera_without_its_own_depth_gets_none_unless_mapped(builder, tmp_path):
    for camera in ("cam_rgb", "cam_bgr"):
        builder.add(f"/{camera}/color", SEC, builder.image(WHITE, SEC, frame_id=camera))
    depth = builder.image(np.full((8, 8), 2.0, np.float32), SEC, "32FC1", frame_id="cam_rgb")
    builder.add("/cam_rgb/depth", SEC, depth)
    for camera in ("cam_rgb", "cam_bgr"):
        builder.add(
            "/vsre/query", SEC + 1, builder.query(camera, ns=SEC, camera=f"/{camera}/color")
        )
        builder.add("vsre/corrections", SEC + 2, builder.correction(camera, SEC, verdict=True))
    bag = builder.write(tmp_path / "two-cams")
    bags.ingest([bag], tmp_path / "ds")
    depth_of = {prov["query_id"]: item.depth[0] for item, prov in _rows(tmp_path / "ds")}
    assert depth_of["cam_bgr"] is None and depth_of["cam_rgb"] is not None
    # Mapped explicitly (say, an unaligned depth camera), it is paired.
    config = bags.IngestConfig(depth_topics={"/cam_bgr/color": "/cam_rgb/depth"})
    bags.ingest([bag], tmp_path / "mapped", config)
    depth_of = {prov["query_id"]: item.depth[0] for item, prov in _rows(tmp_path / "mapped")}
    assert depth_of["cam_bgr"] is not None


@pytest.mark.parametrize(
    ("kind", "fields", "options"),
    [
        (0, {"answer": "yes", "verdict": False}, ()),
        (1, {"answer": "left", "choice_index": 1}, ("left", "right")),
        (2, {"answer": "0.8 m", "value": 2.0}, ()),
    ],
)
def test_a_correction_that_contradicts_itself_is_refused_with_a_warning(
    builder, tmp_path, kind, fields, options
):
    builder.add("/cam/color", SEC, builder.image(WHITE, SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC, kind=kind, options=options))
    builder.add("vsre/corrections", SEC + 2, builder.correction("q", SEC, **fields))
    with pytest.warns(UserWarning, match="1 corrections contradict themselves"):
        report = bags.ingest([builder.write(tmp_path / "b")], tmp_path / "ds")
    assert report.skipped == {"correction contradicts itself (refused)": 1}
    assert not _rows(tmp_path / "ds")


def test_consistent_corrections_still_label(builder, tmp_path):
    builder.add("/cam/color", SEC, builder.image(WHITE, SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("yn", ns=SEC))
    builder.add("vsre/corrections", SEC + 2, builder.correction("yn", SEC, True, answer="yes"))
    builder.add("/vsre/query", SEC + 3, builder.query("m", ns=SEC, kind=2))
    builder.add("vsre/corrections", SEC + 4, builder.correction("m", SEC, value=0.8,
                                                                answer="80 cm"))  # fmt: skip
    report = bags.ingest([builder.write(tmp_path / "b")], tmp_path / "ds")
    assert report.skipped == {} and len(_rows(tmp_path / "ds")) == 2


def test_corrections_that_disagree_warn_and_the_latest_labels(builder, tmp_path):
    builder.add("/cam/color", SEC, builder.image(WHITE, SEC))
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC))
    builder.add("vsre/corrections", SEC + 2, builder.correction("q", SEC, verdict=False))
    builder.add("vsre/corrections", SEC + 3, builder.correction("q", SEC, verdict=True))
    with pytest.warns(UserWarning, match="1 queries were corrected more than once"):
        bags.ingest([builder.write(tmp_path / "b")], tmp_path / "ds")
    ((item, _),) = _rows(tmp_path / "ds")
    assert item.label == 1


def test_an_mcap_of_only_its_magic_is_warned_about_as_empty(tmp_path, builder):
    empty = tmp_path / "magic.mcap"
    empty.write_bytes(b"\x89MCAP0\r\n")
    good = _sqlite_bag(builder, tmp_path / "good")
    with pytest.warns(UserWarning) as caught:
        report = bags.ingest([empty, good], tmp_path / "ds")
    said = " ".join(str(w.message) for w in caught)
    assert "damaged or truncated bag" in said and "salvaged 0 readable messages" in said
    assert "holds no messages" in said and sum(report.items.values()) == 1


def test_an_intact_bag_with_nothing_to_learn_from_is_warned_about(builder, tmp_path):
    builder.add("/cam/color", SEC, builder.image(WHITE, SEC))
    with pytest.warns(UserWarning, match="no SpatialQuery or SpatialCorrection among its 1"):
        bags.ingest([builder.write(tmp_path / "frames-only")], tmp_path / "ds")


def test_a_query_naming_no_camera_among_several_is_not_guessed(builder, tmp_path):
    builder.add("/a/color", SEC, builder.image(WHITE, SEC, frame_id="a"))
    builder.add("/b/color", SEC, builder.image(BLACK, SEC, frame_id="b"))
    builder.add("/vsre/query", SEC + 1, builder.query("q", ns=SEC))  # camera="", equal stamps
    builder.add("vsre/corrections", SEC + 2, builder.correction("q", SEC, verdict=True))
    bag = builder.write(tmp_path / "two")
    report = bags.ingest([bag], tmp_path / "ds")
    (reason,) = report.skipped
    assert "names no camera and the bag has several" in reason and "--default-camera" in reason
    # Told which camera was the node's first, it takes that one, not the alphabetical first.
    bags.ingest([bag], tmp_path / "b", bags.IngestConfig(default_camera="/b/color"))
    ((item, prov),) = _rows(tmp_path / "b")
    assert (
        prov["camera"] == "/b/color" and np.asarray(Image.open(item.image_paths()[0])).max() == 0
    )
