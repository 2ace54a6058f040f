"""Instruction templates: the wordings a spatial question is asked in.

A template turns the structured form (subject, relation, object) into a question and says how
its answer is worded. `TEMPLATES` are the 50 used for training and Test-G-style evaluation (the
VSRE paper's count): 20 yes/no questions, 15 statements to verify (true/false) and 15
two-option choices. `HELDOUT_TEMPLATES` (10, ids "hNN") are never trained on and measure how
answers survive new wording.

Every template puts the relation right after a form of "be" ("is", "be", "being"), so a
relation that VSR words as a verb ("contains", "has as a part", "consists of") is rendered as
its participle ("containing"); `caption()` gives VSR's own statement form ("The box contains
the ball."). Choice templates carry their two options in the text; `yes`/`no` name the option
that is right when the relation holds / does not hold, and half of them put the negative
option first so that an answer-position bias shows up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Relations VSR words as verbs: (statement form, participle used after "is").
VERB_RELATIONS: dict[str, str] = {
    "contains": "containing",
    "has as a part": "having as a part",
    "consists of": "consisting of",
}


def relation_after_be(relation: str) -> str:
    """The relation as it reads after a form of "be" ("containing" for "contains")."""
    return VERB_RELATIONS.get(relation, relation)


def caption(subj: str, relation: str, obj: str) -> str:
    """VSR's statement form: "The cup is left of the box." / "The box contains the ball."."""
    if relation in VERB_RELATIONS:
        return f"The {subj} {relation} the {obj}."
    return f"The {subj} is {relation} the {obj}."


@dataclass(frozen=True)
class Template:
    """One wording of a binary spatial relation question."""

    id: str  # stable id, e.g. "t07" or "h03"
    kind: str  # "yes_no" (question), "verify" (statement, true/false), "choice" (two options)
    text: str  # format string with {subj}, {relation}, {obj}
    yes: str = "yes"  # answer word when the relation holds
    no: str = "no"  # answer word when it does not
    options: tuple[str, ...] = ()  # choice: the option labels in the order the text lists them

    def render(self, subj: str, relation: str, obj: str) -> str:
        return self.text.format(subj=subj, relation=relation_after_be(relation), obj=obj)

    def answer(self, label: bool) -> str:
        """The answer word for a relation that holds (True) or not (False)."""
        return self.yes if label else self.no


def _yn(i: int, text: str) -> Template:
    return Template(f"t{i:02d}", "yes_no", text)


def _tf(i: int, text: str) -> Template:
    return Template(f"t{i:02d}", "verify", text, "true", "false")


def _ch(i: int, text: str, yes_first: bool) -> Template:
    yes, no = ("A", "B") if yes_first else ("B", "A")
    return Template(f"t{i:02d}", "choice", text, yes, no, ("A", "B"))


_HOLDS = "the {subj} is {relation} the {obj}"
_NOT = "the {subj} is not {relation} the {obj}"

TEMPLATES: list[Template] = [
    # 20 yes/no questions.
    _yn(0, "Is the {subj} {relation} the {obj}?"),
    _yn(1, "Is the {subj} {relation} the {obj}? Answer yes or no."),
    _yn(2, "Look at the image. Is the {subj} {relation} the {obj}?"),
    _yn(3, "In this picture, is the {subj} {relation} the {obj}?"),
    _yn(4, "Would you say that the {subj} is {relation} the {obj}?"),
    _yn(5, "Can you confirm that the {subj} is {relation} the {obj}?"),
    _yn(6, "Does the {subj} appear to be {relation} the {obj}?"),
    _yn(7, "Is it the case that the {subj} is {relation} the {obj}?"),
    _yn(8, "Question: is the {subj} {relation} the {obj}? Reply with yes or no."),
    _yn(9, "From the camera's point of view, is the {subj} {relation} the {obj}?"),
    _yn(10, "Judging by the image, is the {subj} {relation} the {obj}?"),
    _yn(11, "In the scene shown, is the {subj} {relation} the {obj}?"),
    _yn(12, "Based on what you see, is the {subj} {relation} the {obj}?"),
    _yn(13, "Tell me: is the {subj} {relation} the {obj}?"),
    _yn(14, "Please answer: is the {subj} {relation} the {obj}?"),
    _yn(15, "Is the {subj} {relation} the {obj} in this image?"),
    _yn(16, "Would it be correct to say the {subj} is {relation} the {obj}?"),
    _yn(17, "Check the scene: is the {subj} {relation} the {obj}?"),
    _yn(18, "Is the {subj} {relation} the {obj}? Say yes or no."),
    _yn(19, "Considering the whole image, is the {subj} {relation} the {obj}?"),
    # 15 statements to verify.
    _tf(20, "The {subj} is {relation} the {obj}. True or false?"),
    _tf(21, "True or false: the {subj} is {relation} the {obj}."),
    _tf(22, "Statement: the {subj} is {relation} the {obj}. Is this true or false?"),
    _tf(23, "Decide whether this is true or false: the {subj} is {relation} the {obj}."),
    _tf(24, "Here is a caption: the {subj} is {relation} the {obj}. True or false?"),
    _tf(25, "Verify the statement about the image: the {subj} is {relation} the {obj}."),
    _tf(26, "Someone says the {subj} is {relation} the {obj}. Is that true or false?"),
    _tf(27, "Is the following true or false? The {subj} is {relation} the {obj}."),
    _tf(28, "Caption: the {subj} is {relation} the {obj}. Answer true or false."),
    _tf(29, "Evaluate the claim that the {subj} is {relation} the {obj}: true or false?"),
    _tf(30, "Does this description match the image, true or false: {subj} {relation} {obj}?"),
    _tf(31, "The image shows the {subj} being {relation} the {obj}. True or false?"),
    _tf(32, "Answer true or false. The {subj} is {relation} the {obj}."),
    _tf(33, "Given the image, is the claim that the {subj} is {relation} the {obj} true?"),
    _tf(34, "Read the caption and say true or false: the {subj} is {relation} the {obj}."),
    # 15 two-option choices (A/B); odd ids put the negative option first.
    _ch(35, "Which is correct? A: " + _HOLDS + ". B: " + _NOT + ".", True),
    _ch(36, "Which is correct? A: " + _NOT + ". B: " + _HOLDS + ".", False),
    _ch(37, "Is the {subj} {relation} the {obj}? A. yes B. no", True),
    _ch(38, "Is the {subj} {relation} the {obj}? A. no B. yes", False),
    _ch(39, "Pick the option that describes the image. A) " + _HOLDS + ". B) " + _NOT + ".", True),
    _ch(
        40, "Pick the option that describes the image. A) " + _NOT + ". B) " + _HOLDS + ".", False
    ),
    _ch(41, "Choose A or B. A: " + _HOLDS + ". B: " + _NOT + ".", True),
    _ch(42, "Choose A or B. A: " + _NOT + ". B: " + _HOLDS + ".", False),
    _ch(43, "The {subj} is {relation} the {obj}. A. true B. false. Answer with a letter.", True),
    _ch(44, "The {subj} is {relation} the {obj}. A. false B. true. Answer with a letter.", False),
    _ch(45, "Which statement fits the scene, A or B? A: " + _HOLDS + ". B: " + _NOT + ".", True),
    _ch(46, "Which statement fits the scene, A or B? A: " + _NOT + ". B: " + _HOLDS + ".", False),
    _ch(47, "Is the {subj} {relation} the {obj}? Options: A. it is B. it is not", True),
    _ch(48, "Is the {subj} {relation} the {obj}? Options: A. it is not B. it is", False),
    _ch(49, "Select the true description. A: " + _HOLDS + ". B: " + _NOT + ".", True),
]

HELDOUT_TEMPLATES: list[Template] = [
    Template("h00", "yes_no", "Would you say the {subj} is {relation} the {obj}?"),
    Template("h01", "yes_no", "Looking carefully, is the {subj} {relation} the {obj}?"),
    Template("h02", "yes_no", "Is the {subj} really {relation} the {obj} here?"),
    Template("h03", "yes_no", "My robot asks: is the {subj} {relation} the {obj}?"),
    Template("h04", "verify", "Fact check: the {subj} is {relation} the {obj}.", "true", "false"),
    Template(
        "h05",
        "verify",
        "Is this caption true or false? The {subj} is {relation} the {obj}.",
        "true",
        "false",
    ),
    Template(
        "h06",
        "verify",
        "A person claims the {subj} is {relation} the {obj}. True or false?",
        "true",
        "false",
    ),
    Template(
        "h07",
        "choice",
        "Which holds in the picture? A: " + _HOLDS + ". B: " + _NOT + ".",
        "A",
        "B",
        ("A", "B"),
    ),
    Template(
        "h08",
        "choice",
        "Which holds in the picture? A: " + _NOT + ". B: " + _HOLDS + ".",
        "B",
        "A",
        ("A", "B"),
    ),
    Template(
        "h09", "choice", "Is the {subj} {relation} the {obj}? (A) no (B) yes", "B", "A", ("A", "B")
    ),
]


@dataclass(frozen=True)
class TaskTemplate:
    """One wording of a question of another task (direction, distance, metric, ...)."""

    id: str  # stable id, e.g. "dir0"
    task: str  # dataset task name: "direction", "distance", "localization", ...
    text: str  # format string; its fields are listed in TASK_FIELDS[task]

    def render(self, **fields: str) -> str:
        return self.text.format(**fields)


def _tt(task: str, *texts: str) -> list[TaskTemplate]:
    prefix = {"composite": "path", "compare": "cmp", "multi_image": "mi"}.get(task, task[:3])
    return [TaskTemplate(f"{prefix}{i}", task, t) for i, t in enumerate(texts)]


DIRECTIONS = (
    "left",
    "right",
    "up",
    "down",
    "up and left",
    "up and right",
    "down and left",
    "down and right",
)  # image-plane directions, answers of the direction task
GRID_CELLS = (
    "top left",
    "top center",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom center",
    "bottom right",
)  # 3x3 image grid, answers of the localization task

# Wordings of the non-relation tasks. Placeholders: {subj}, {obj}, {a}, {b}, {start},
# {others}, {quantity}, {options}.
TASK_TEMPLATES: dict[str, list[TaskTemplate]] = {
    "direction": _tt(
        "direction",
        "In the image, in which direction is the {subj} from the {obj}? Options: {options}.",
        "Where is the {subj} relative to the {obj} in the picture? Choose from: {options}.",
    ),
    "distance": _tt(
        "distance",
        "Which is closer to the {subj}: the {a} or the {b}?",
        "Which of these is nearer to the {subj}, the {a} or the {b}?",
    ),
    "localization": _tt(
        "localization",
        "In which part of the image is the {subj}? Options: {options}.",
        "Where in the picture is the {subj}? Answer with one of: {options}.",
    ),
    "composite": _tt(
        "composite",
        "Starting at the {start}, which order visits the {others} by the shortest path?"
        " Options: {options}.",
        "A robot starts at the {start} and must visit the {others}, each once. Which order"
        " gives the shortest route? Options: {options}.",
    ),
    "metric": _tt(
        "metric",
        "How far apart are the {subj} and the {obj}, in metres?",
        "What is the distance between the {subj} and the {obj} in metres?",
        "How far is the {subj} from the camera, in metres?",
        "How wide is the {subj}, in metres?",
        "How tall is the {subj}, in metres?",
    ),
    "compare": _tt(
        "compare",
        "Which is bigger, the {a} or the {b}?",
        "Which is taller, the {a} or the {b}?",
        "Which is wider, the {a} or the {b}?",
    ),
    "multi_image": _tt(
        "multi_image",
        "In which image is the {subj} left of the {obj}? Options: {options}.",
        "In the first image the {subj} is {relation} the {obj}. Is it also {relation} the"
        " {obj} in the second image?",
        "Which object moved between the two images? Options: {options}.",
    ),
}


def template_by_id(template_id: str) -> Template:
    """The template with this id; an unknown id raises ValueError naming the known ids."""
    for template in TEMPLATES + HELDOUT_TEMPLATES:
        if template.id == template_id:
            return template
    known = ", ".join(t.id for t in TEMPLATES + HELDOUT_TEMPLATES)
    raise ValueError(f"unknown template id {template_id!r}; known: {known}")


def corpus() -> Iterator[str]:
    """Text the tiny presets' tokenizer is trained on: every template and answer word."""
    for template in TEMPLATES + HELDOUT_TEMPLATES:
        yield template.text
        yield f"{template.yes} {template.no}"
    for task_templates in TASK_TEMPLATES.values():
        for task_template in task_templates:
            yield task_template.text
    yield ", ".join(DIRECTIONS)
    yield ", ".join(GRID_CELLS)
    yield "first image, second image, none, 0.25 m 1.50 m"
