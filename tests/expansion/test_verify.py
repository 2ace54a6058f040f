"""The detector-free checks on their own: strict boxes, depth, structure, change."""

from __future__ import annotations

import numpy as np
import pytest
from vsre_ros.training.expand import layout_boxes
from vsre_ros.training.expand.verify import (
    BOX_RELATIONS,
    Box,
    ObjectGeometry,
    check_relation,
    mean_change,
    relation_by_boxes,
    structure_correlation,
)

LEFT = Box(0, 10, 10, 20)
RIGHT = Box(20, 0, 30, 20)


def test_boxes_decide_only_when_strictly_separated():
    assert relation_by_boxes("left of", LEFT, RIGHT, margin=2) is True
    assert relation_by_boxes("right of", LEFT, RIGHT, margin=2) is False
    assert relation_by_boxes("left of", LEFT, RIGHT, margin=15) is None  # gap 10 < margin
    overlapping = Box(5, 0, 25, 5)
    assert relation_by_boxes("left of", LEFT, overlapping, margin=0) is None
    assert relation_by_boxes("facing", LEFT, RIGHT, margin=0) is None
    # Higher in the image is not higher in the world (it may just be farther away).
    assert relation_by_boxes("above", Box(0, 0, 5, 5), Box(0, 8, 5, 12), margin=1) is None


def test_check_relation_verdicts_and_depth_fallback():
    near = ObjectGeometry("cup", LEFT, depth=1.0)
    far = ObjectGeometry("box", RIGHT, depth=2.0)
    assert check_relation("left of", 1, near, far, box_margin=1)[0] == "confirmed"
    assert check_relation("left of", 0, near, far, box_margin=1)[0] == "contradicted"
    assert check_relation("in front of", 1, near, far, box_margin=1)[0] == "confirmed"
    assert check_relation("behind", 1, near, far, box_margin=1)[0] == "contradicted"
    status, reason = check_relation("in front of", 1, near, far, box_margin=1, use_depth=False)
    assert status == "unverifiable" and "do not separate" in reason
    status, reason = check_relation("touching", 1, near, far, box_margin=1)
    assert status == "unverifiable" and "without a detector" in reason
    assert check_relation("left of", 1, None, far, box_margin=1)[0] == "unverifiable"


def test_structure_correlation_separates_restyled_from_unrelated():
    rng = np.random.default_rng(0)
    source = np.zeros((32, 32, 3), np.uint8)
    source[8:24, 8:24] = 200
    restyled = (source * 0.5 + 40).astype(np.uint8)  # same edges, other colours
    noise = rng.integers(0, 255, source.shape, dtype=np.uint8)
    box = Box(4, 4, 28, 28)
    assert structure_correlation(source, restyled, box) > 0.9
    assert structure_correlation(source, noise, box) < 0.3


def test_mean_change_is_measured_inside_the_region_only():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[:2] = 100
    region = np.zeros((4, 4), bool)
    region[:2] = True
    assert mean_change(a, b, region) == 100 and mean_change(a, b, ~region) == 0


@pytest.mark.parametrize("relation", sorted(BOX_RELATIONS))
def test_layout_boxes_satisfy_their_relation(relation):
    for seed in range(20):
        subj, obj = layout_boxes(relation, np.random.default_rng(seed), margin=0.02)
        assert all(0 <= v <= 1 for v in (*subj, *obj))
        holds = relation_by_boxes(relation, Box(*subj), Box(*obj), margin=0.02)
        assert holds is True, (relation, seed, subj, obj)
