"""Instruction templates: the wordings a spatial question is asked in.

(Contract stub; the sim_data work fills in the 50 training templates and the held-out set.)

A template turns the structured form (subject, relation, object) into a question and says how
its answer is worded. `TEMPLATES` are the 50 used for training and Test-G-style evaluation;
`HELDOUT_TEMPLATES` are never trained on and measure how answers survive new wording.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    """One wording of a binary spatial relation question."""

    id: str  # stable id, e.g. "t07" or "h03"
    kind: str  # "yes_no" (question), "verify" (statement, true/false), "choice" (two options)
    text: str  # format string with {subj}, {relation}, {obj} (and {a}, {b} for choices)
    yes: str = "yes"  # answer word when the relation holds
    no: str = "no"  # answer word when it does not

    def render(self, subj: str, relation: str, obj: str) -> str:
        return self.text.format(subj=subj, relation=relation, obj=obj)


TEMPLATES: list[Template] = [
    Template("t00", "yes_no", "Is the {subj} {relation} the {obj}?"),
    Template(
        "t01", "verify", "The {subj} is {relation} the {obj}. True or false?", "true", "false"
    ),
]
HELDOUT_TEMPLATES: list[Template] = [
    Template("h00", "yes_no", "Would you say the {subj} is {relation} the {obj}?"),
]


def corpus() -> Iterator[str]:
    """Text the tiny presets' tokenizer is trained on: every template and answer word."""
    for template in TEMPLATES + HELDOUT_TEMPLATES:
        yield template.text
        yield f"{template.yes} {template.no}"
