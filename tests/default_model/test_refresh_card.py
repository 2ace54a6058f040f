"""`vsre train-default --refresh-card`: a card's recipe history follows docs/recipes-tried.md."""

from __future__ import annotations

from vsre_ros.training.default_model import card as cards
from vsre_ros.training.default_model.export import EXPORT_DIR

from vsre_ros.cli import main

CARD = "# vsre-tiny\n\n## Evaluation\n\n| a | b |\n\n## Recipes tried\n\nold history\n"


def _history(tmp_path, monkeypatch, text: str) -> None:
    path = tmp_path / "recipes-tried.md"
    path.write_text(text)
    monkeypatch.setattr(cards, "RECIPES_TRIED", path)


def test_refresh_replaces_only_the_history(tmp_path, monkeypatch, capsys):
    _history(tmp_path, monkeypatch, "## Recipes tried\n\nrun 1\n\nrun 2\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "MODEL_CARD.md").write_text(CARD)
    assert main(["train-default", "--refresh-card", str(model)]) == 0
    card = (model / "MODEL_CARD.md").read_text()
    assert card == CARD.replace("old history", "run 1\n\nrun 2")
    assert "refreshed" in capsys.readouterr().out
    # A second refresh changes nothing.
    assert main(["train-default", "--refresh-card", str(model)]) == 0
    assert (model / "MODEL_CARD.md").read_text() == card


def test_a_card_without_history_gets_it_appended(tmp_path, monkeypatch):
    _history(tmp_path, monkeypatch, "## Recipes tried\n\nrun 1\n")
    card = cards.with_recipes_tried("# t\n\n## Limits\n\nsim only\n")
    assert card == "# t\n\n## Limits\n\nsim only\n\n## Recipes tried\n\nrun 1\n"


def test_refresh_refuses_a_missing_or_foreign_card(tmp_path, capsys):
    assert main(["train-default", "--refresh-card", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "MODEL_CARD.md").write_text("not a card")
    assert main(["train-default", "--refresh-card", str(tmp_path)]) == 2
    assert "not a card an export wrote" in capsys.readouterr().err
    assert (tmp_path / "MODEL_CARD.md").read_text() == "not a card"


def test_shipped_card_carries_the_current_history():
    card = (EXPORT_DIR / "MODEL_CARD.md").read_text()
    history = cards.RECIPES_TRIED.read_text().strip()
    assert card.endswith(history + "\n"), "run `vsre train-default --refresh-card` on the export"


def test_the_grounding_section_goes_before_the_limits_and_is_replaced(tmp_path, monkeypatch):
    (tmp_path / "vsre_config.json").write_text("{}")
    monkeypatch.setattr(cards, "grounding_section", lambda _: "a mask head")
    card = cards.with_grounding("# t\n\n## Evaluation\n\nx\n\n## Limits\n\nsim only\n", tmp_path)
    head = "## Grounding head\n\na mask head\n\n"
    assert card == f"# t\n\n## Evaluation\n\nx\n\n{head}## Limits\n\nsim only\n"
    monkeypatch.setattr(cards, "grounding_section", lambda _: "another head")
    assert cards.with_grounding(card, tmp_path) == card.replace("a mask head", "another head")


def test_shipped_card_describes_the_shipped_grounding_head():
    card = (EXPORT_DIR / "MODEL_CARD.md").read_text()
    section = f"{cards.GROUNDING_HEADING}\n\n{cards.grounding_section(EXPORT_DIR)}\n\n"
    assert section in card, "run `vsre train-default --refresh-card` on the export"
