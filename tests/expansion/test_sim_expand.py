"""`--mode sim`: the source layout re-rendered, subjects swapped, labels decided again."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from vsre_ros.training.expand import ExpandConfig, expand
from vsre_ros.training.items import read_vsre


def test_sim_variants_carry_labels_the_simulator_confirms(sim_source, tmp_path):
    from vsre_ros.sim_data.relations import Facts, decide
    from vsre_ros.sim_data.render import Simulator
    from vsre_ros.sim_data.scene import Scene, View

    out = tmp_path / "out"
    report = expand(ExpandConfig(str(sim_source), str(out), "sim", per_item=2))
    assert report.not_expandable == {"the simulator does not decide 'with'": 1}
    assert report.planned == 4 and sum(report.verdicts.values()) == 4
    items = read_vsre(out, "train")
    assert items and len(items) == report.verdicts.get("accepted", 0)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {row["mode"] for row in manifest} == {"sim"}

    with Simulator(64, 64) as sim:
        for item in items:
            scene_file = json.loads((out / "scenes" / f"{item.scene_id}.json").read_text())
            scene = Scene.from_dict(scene_file)
            names = [o.name for o in scene.objects]
            assert item.subj in names and item.obj in names
            # Rendering the saved scene from the saved view gives the saved image and label.
            sim.load(scene)
            view = sim.render(View.from_dict(scene_file["view"]))
            np.testing.assert_array_equal(np.asarray(Image.open(item.image_paths()[0])), view.rgb)
            facts = Facts(scene, sim.gaps(), np.array([o["center_cam"] for o in view.objects]))
            subj, obj = names.index(item.subj), names.index(item.obj)
            assert int(decide(facts, item.relation, subj, obj)) == item.label
            mask = np.asarray(Image.open(out / item.masks[0]))
            assert (mask == subj + 1).any() and np.load(out / item.depth[0]).shape == (64, 64)
            assert item.extra["objects"] == [item.subj, item.obj]
            assert item.extra["mask_ids"] == [subj + 1, obj + 1]


def test_sim_variants_differ_from_the_source_and_swap_the_subject(sim_source, tmp_path):
    out = tmp_path / "out"
    expand(ExpandConfig(str(sim_source), str(out), "sim", per_item=2))
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    swaps = [row["swapped"] for row in manifest if row["swapped"]]
    assert swaps and all(old != new for old, new in swaps)
    source = np.asarray(Image.open(sim_source / "images" / "s1.png"))
    for item in read_vsre(out, "train"):
        if item.id.startswith("s1-"):
            assert not np.array_equal(np.asarray(Image.open(item.image_paths()[0])), source)
