"""The embedded default model `vsre_ros/models/vsre-tiny/`: loads, is fused, small, answers."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from vsre_ros.training.data import ask
from vsre_ros.training.default_model.export import EXPORT_DIR, MAX_EXPORT_MB
from vsre_ros.training.items import load_items
from vsre_ros.training.model_api import answer_examples
from vsre_ros.training.scoring import normalize, score

from vsre_ros.core.answers import AnswerKind
from vsre_ros.core.config import EngineConfig
from vsre_ros.core.engine import Engine
from vsre_ros.core.model import VSREModel

pytestmark = pytest.mark.skipif(
    not (EXPORT_DIR / "vsre_config.json").is_file(), reason="no embedded model exported yet"
)


@pytest.fixture(scope="module")
def shipped() -> VSREModel:
    return VSREModel.from_pretrained(EXPORT_DIR)


@pytest.fixture(scope="module")
def fresh_items(tmp_path_factory):
    """Questions from scenes the model never saw (other seeds than its training data), of
    both data versions it learned from (version 1's templates bring the lettered ones)."""
    from vsre_ros.sim_data.dataset import GenConfig, generate

    items = []
    for version, seed, n in ((2, 987, 400), (1, 988, 1200)):
        root = tmp_path_factory.mktemp("fresh") / f"v{version}"
        config = GenConfig(seed=seed, width=64, height=64, data_version=version)
        generate(root, n, config, workers=1, progress=False)
        for split in ("random_train", "random_val", "random_test"):
            items += [i for i in load_items(root, split) if len(i.images) == 1]
    return items


def test_checkpoint_is_small_and_fuses_all_four_families(shipped):
    size = sum(p.stat().st_size for p in Path(EXPORT_DIR).rglob("*") if p.is_file()) / 1e6
    assert size <= MAX_EXPORT_MB
    assert set(shipped.encoders) == {"clip", "siglip", "sam", "dinov2"}
    assert shipped.model_id == "vsre-tiny"
    payload = json.loads((EXPORT_DIR / "vsre_config.json").read_text())
    assert payload["config"]["lm"]["attn_implementation"] == "sdpa"


def test_the_shipped_recipe_rebuilds_the_shipped_tokenizer(shipped):
    """`vsre train-default` with no flags starts from the same vocabulary as the shipped
    model: tokenizer text version 2, which holds the question grammar's words (version 1, the
    VSRE templates' text alone, rebuilds vsre-tiny v1's)."""
    from vsre_ros.training.config import load_config
    from vsre_ros.training.default_model import RECIPE_FILE
    from vsre_ros.training.model_api import build_model

    recipe = load_config(RECIPE_FILE)
    assert recipe.model_overrides["tokenizer_text"] == 2
    rebuilt = build_model(recipe.model, recipe.model_overrides, 0)
    assert rebuilt.tokenizer.get_vocab() == shipped.tokenizer.get_vocab()
    assert len(shipped.tokenizer.encode(" incorrect", add_special_tokens=False)) == 1
    templates = build_model(recipe.model, {**recipe.model_overrides, "tokenizer_text": 1}, 0)
    assert len(templates.tokenizer) < len(shipped.tokenizer)


def test_card_curve_and_reports_ship_beside_the_weights():
    assert (EXPORT_DIR / "learning_curve.png").stat().st_size > 0
    card = (EXPORT_DIR / "MODEL_CARD.md").read_text()
    assert "vsre train-default" in card
    for name in ("random_test", "zeroshot_test"):
        report = json.loads((EXPORT_DIR / "eval" / name / "report.json").read_text())
        assert report["n_predictions"] > 0


def test_engine_answers_fresh_questions_in_their_own_form(shipped, fresh_items):
    engine = Engine(shipped, EngineConfig(device="cpu"))
    assert engine.model_id == "vsre-tiny"
    examples = [ask(i) for i in fresh_items[:24]]
    predictions = answer_examples(shipped, examples, batch_size=8, progress=False)
    for ex, pred in zip(examples, predictions, strict=True):
        if ex.kind is AnswerKind.CHOICE:
            assert pred.text in ex.options
        elif ex.kind is AnswerKind.YES_NO:
            assert pred.probability is not None and 0.0 <= pred.probability <= 1.0


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


@pytest.mark.parametrize("task", ["localization", "direction", "relation", "relation, lettered"])
def test_fresh_questions_beat_the_majority_answer(shipped, fresh_items, task):
    """The skills the model learned (MODEL_CARD.md), on scenes it never saw: localization,
    direction, binary relations, and the relations asked for a letter ("A: the cup is left of
    the box. B: the cup is not left of the box."), which earlier models answered "A" to
    whatever the image showed. The bar is what always giving the most common answer scores
    (for relations in all their wordings: the most common truth value; for letters: the most
    common letter), with a one-sided binomial test."""
    name, _, form = task.partition(", ")
    items = [i for i in fresh_items if i.task == name and (not form or i.options)]
    assert len(items) >= 20
    answers = [i.truth if task == "relation" else normalize(i.answer) for i in items]
    majority = Counter(answers).most_common(1)[0][1] / len(items)
    examples = [ask(i) for i in items]
    predictions = answer_examples(shipped, examples, batch_size=16, progress=False)
    correct = sum(score(i, p).correct for i, p in zip(items, predictions, strict=True))
    p_value = binomial_tail(correct, len(items), majority)
    print(f"{task} {correct}/{len(items)}, majority {majority:.2f}, p={p_value:.2g}")
    assert p_value < 0.01, f"{correct}/{len(items)} vs majority {majority:.2f}: p={p_value:.3f}"
