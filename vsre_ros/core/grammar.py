"""A question grammar for binary spatial relations: thousands of wordings from a few parts.

A wording is built from slots, each a short list of alternatives:

- a framing: how the claim is put to the model (a direct question, a claim to check, an
  imperative, a reported claim, a quoted statement, a caption followed by a question, a
  hypothetical), each with a few bodies;
- an answer vocabulary (`core.answers.VOCABULARIES`: yes/no, true/false, correct/incorrect,
  right/wrong), named in the text whenever it is not yes/no, so that the engine reads the
  verdict in the words the question invites (`core.answers.invited_vocabulary`);
- a verb ("is", "is located", "sits", ...) and a preposition variant ("to the left of");
- the subject first, or the reference object first ("Relative to the box, is the cup left of
  it?");
- an optional preamble ("Look at the image.").

The VSRE-style templates of `core.templates` are framings of their own ("vsre50", and the
older held-out ten as "vsre10"), so the 50 stay a subset of the grammar.

Whole framings and whole vocabularies are held out (`HELD_OUT_FRAMINGS`,
`HELD_OUT_VOCABULARIES`): a wording that uses either is "unseen" and never drawn for training.
Both sets are constants, not seed-dependent. A wording's id ("g/<framing>/<vocabulary>/<slot
indices>") decodes back to the same wording (`wording_by_id`), so an item records the wording
it was asked through, its framing and its vocabulary, and any reader rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .answers import VOCABULARIES
from .templates import HELDOUT_TEMPLATES, TEMPLATES, VERB_RELATIONS, Template

SPLITS = ("seen", "unseen", "all")  # wording pools: trainable, held out, both

# (claim form, question form) of the verb; {subj} is the subject phrase. Verb relations
# ("contains") are always asked with the first, as "is containing".
VERBS: tuple[tuple[str, str], ...] = (
    ("is", "is the {subj}"),
    ("is located", "is the {subj} located"),
    ("is positioned", "is the {subj} positioned"),
    ("sits", "does the {subj} sit"),
    ("appears to be", "does the {subj} appear to be"),
    ("can be found", "can the {subj} be found"),
)
# Relation -> its other wordings with the same meaning (index 0 is the relation itself).
PREPOSITIONS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "under": ("under", "underneath"),
    "close to": ("close to", "close by"),
    "on top of": ("on top of", "atop"),
}
# Subject first (""), or the reference object first; "{ref}" is "it" or "them".
ORDERS: tuple[str, ...] = (
    "",
    "relative to the {obj}",
    "with respect to the {obj}",
    "taking the {obj} as the reference",
    "as for the {obj}",
)
PREAMBLES: tuple[str, ...] = (
    "",
    "Look at the image.",
    "Here is a picture from the robot's camera.",
    "Consider the scene.",
    "Quick question.",
    "Please look carefully.",
    "About this image:",
    "From the camera's point of view:",
)


@dataclass(frozen=True)
class Framing:
    """One way of putting a claim to the model, with its bodies and answer tails.

    A body is a format string over {claim} / {Claim} (the declarative, lower / upper case)
    and {question} / {Question} (the yes/no question clause, without "?"); a tail, per
    vocabulary, ends the text and names the answer words (yes/no tails may name none).
    """

    id: str  # registry id, e.g. "claim"
    bodies: tuple[str, ...]  # format strings
    tails: dict[str, tuple[str, ...]] = field(default_factory=dict)  # vocabulary -> tails

    @property
    def vocabularies(self) -> tuple[str, ...]:
        return tuple(self.tails)


_TF = ("True or false?", "Is this true or false?", "Answer true or false.")
_CI = ("Correct or incorrect?", "Is that correct or incorrect?", "Reply correct or incorrect.")
_RW = ("Right or wrong?", "Is this right or wrong?", "Answer right or wrong.")
_ALL_TAILS = {
    "yes_no": ("Is that so?", "Yes or no?", "Does this hold? Answer yes or no."),
    "true_false": _TF,
    "correct_incorrect": _CI,
    "right_wrong": _RW,
}

FRAMINGS: dict[str, Framing] = {
    f.id: f
    for f in (
        Framing(
            "question",
            ("{Question}?", "{Question} in the image?", "Tell me, {question}?"),
            {"yes_no": ("", "Answer yes or no.", "Yes or no?", "Reply with yes or no.")},
        ),
        Framing(
            "is_it_true",
            (
                "Is it true that {claim}?",
                "Is it the case that {claim}?",
                "Can you confirm that {claim}?",
                "Would you say that {claim}?",
            ),
            {"yes_no": ("", "Answer yes or no.", "Yes or no?")},
        ),  # fmt: skip
        Framing("claim", ("{Claim}.", "Claim: {claim}."), _ALL_TAILS),
        Framing(
            "imperative",
            (
                "Tell me whether {claim}.",
                "Determine whether {claim}.",
                "Check whether {claim}.",
                "Decide if {claim}.",
            ),
            {
                "yes_no": ("Answer yes or no.", "Reply with yes or no."),
                "true_false": _TF[2:],
                "correct_incorrect": _CI[2:],
                "right_wrong": _RW[2:],
            },
        ),  # fmt: skip
        Framing(
            "reported",
            (
                "Someone says that {claim}.",
                "A colleague claims that {claim}.",
                "The operator reports that {claim}.",
                "According to my friend, {claim}.",
            ),
            _ALL_TAILS,
        ),  # fmt: skip
        Framing(
            "quoted",
            (
                'Statement: "{Claim}."',
                'Consider the sentence "{Claim}."',
                'Here is a sentence: "{Claim}."',
            ),
            _ALL_TAILS,
        ),  # fmt: skip
        Framing(
            "caption",
            (
                "Caption: {Claim}. Does the caption match the image?",
                "A caption reads: {claim}. Does it describe the picture?",
                "Image caption: {Claim}. Is the caption accurate?",
            ),
            {
                "yes_no": ("", "Answer yes or no.", "Yes or no?"),
                "true_false": _TF[:1],
                "correct_incorrect": _CI[:1],
                "right_wrong": _RW[:1],
            },
        ),  # fmt: skip
        Framing(
            "hypothetical",
            (
                "If I said {claim}, would I be right?",
                "Suppose someone says {claim}. Would they be correct?",
                "If the report says {claim}, is the report accurate?",
            ),
            {
                "yes_no": ("", "Answer yes or no."),
                "true_false": ("Answer true or false.",),
                "correct_incorrect": ("Answer correct or incorrect.",),
            },
        ),  # fmt: skip
    )
}
# The VSRE-style templates as framings of their own: (framing id, templates).
LEGACY: dict[str, tuple[Template, ...]] = {
    "vsre50": tuple(TEMPLATES),
    "vsre10": tuple(HELDOUT_TEMPLATES),
}
HELD_OUT_FRAMINGS = frozenset({"quoted", "hypothetical", "vsre10"})  # never trained on
HELD_OUT_VOCABULARIES = frozenset({"right_wrong"})  # never trained on
ALL_FRAMINGS = tuple(FRAMINGS) + tuple(LEGACY)


def _legacy_vocabulary(template: Template) -> str:
    """The vocabulary of a VSRE-style template: its answer words, or "letter" for A/B."""
    if template.kind == "choice":
        return "letter"
    for vocab in VOCABULARIES.values():
        if (vocab.yes, vocab.no) == (template.yes, template.no):
            return vocab.id
    raise ValueError(f"template {template.id} answers in unknown words {template.yes!r}")


def _ref_pronoun(obj: str) -> str:
    return "them" if " and the " in obj else "it"


@dataclass(frozen=True)
class Wording(Template):
    """One grammar wording: a Template (same render/answer interface) plus where it came from.

    `parts` are the slot indices (preamble, verb, order, preposition, body, tail); `text`
    renders relations that take every verb and preposition variant; `render` handles the
    rest (a verb relation always reads "is containing", a relation without preposition
    variants keeps its name).
    """

    framing: str = ""  # framing id
    vocabulary: str = ""  # answer vocabulary id ("letter" for A/B choices)
    parts: tuple[int, ...] = ()  # slot indices, see above

    def render(self, subj: str, relation: str, obj: str) -> str:
        if self.framing in LEGACY:
            return super().render(subj, relation, obj)
        pre, verb, order, prep, body, tail = self.parts
        if relation in VERB_RELATIONS:
            verb, rel = 0, VERB_RELATIONS[relation]
        else:
            variants = PREPOSITIONS.get(relation, (relation,))
            rel = variants[prep % len(variants)]
        return _compose(self.framing, self.vocabulary, pre, verb, order, body, tail).format(
            subj=subj, relation=rel, obj=obj, ref=_ref_pronoun(obj)
        )

    @property
    def seen(self) -> bool:
        """May be trained on: neither the framing nor the vocabulary is held out."""
        return self.framing not in HELD_OUT_FRAMINGS and self.vocabulary not in (
            HELD_OUT_VOCABULARIES
        )


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _compose(framing: str, vocab: str, pre: int, verb: int, order: int, body: int, tail: int):
    """The wording's text as a format string over {subj}, {relation}, {obj}, {ref}."""
    frame = FRAMINGS[framing]
    claim_verb, question_verb = VERBS[verb]
    if order == 0:
        claim = f"the {{subj}} {claim_verb} {{relation}} the {{obj}}"
        question = f"{question_verb} {{relation}} the {{obj}}"
    else:
        lead = ORDERS[order]
        claim = f"{lead}, the {{subj}} {claim_verb} {{relation}} {{ref}}"
        question = f"{lead}, {question_verb} {{relation}} {{ref}}"
    text = frame.bodies[body].format(
        claim=claim, Claim=_capital(claim), question=question, Question=_capital(question)
    )
    text = " ".join(p for p in (PREAMBLES[pre], _capital(text), frame.tails[vocab][tail]) if p)
    return text


def _kind(vocab: str) -> tuple[str, str, str]:
    """(template kind, yes word, no word) of a vocabulary."""
    v = VOCABULARIES[vocab]
    return ("yes_no" if vocab == "yes_no" else "verify"), v.yes, v.no


def make_wording(
    framing: str,
    vocabulary: str,
    pre: int = 0,
    verb: int = 0,
    order: int = 0,
    prep: int = 0,
    body: int = 0,
    tail: int = 0,
) -> Wording:
    """The wording with these slot choices; a bad framing, vocabulary or index raises
    ValueError naming what is allowed."""
    if framing not in FRAMINGS:
        known = ", ".join(ALL_FRAMINGS)
        raise ValueError(f"unknown framing {framing!r}; known: {known}")
    frame = FRAMINGS[framing]
    if vocabulary not in frame.tails:
        raise ValueError(
            f"framing {framing!r} takes vocabularies {list(frame.tails)}, not {vocabulary!r}"
        )
    sizes = _sizes(framing, vocabulary)
    parts = (pre, verb, order, prep, body, tail)
    if any(not 0 <= p < n for p, n in zip(parts, sizes, strict=True)):
        raise ValueError(f"slot indices {parts} out of range {sizes} for {framing}/{vocabulary}")
    kind, yes, no = _kind(vocabulary)
    wording_id = f"g/{framing}/{vocabulary}/" + ".".join(str(p) for p in parts)
    text = _compose(framing, vocabulary, pre, verb, order, body, tail).replace("{ref}", "it")
    return Wording(wording_id, kind, text, yes, no, (), framing, vocabulary, parts)


_PREP_VARIANTS = max(len(v) for v in PREPOSITIONS.values())


def _sizes(framing: str, vocabulary: str) -> tuple[int, ...]:
    frame = FRAMINGS[framing]
    return (
        len(PREAMBLES),
        len(VERBS),
        len(ORDERS),
        _PREP_VARIANTS,
        len(frame.bodies),
        len(frame.tails[vocabulary]),
    )


def _legacy_wording(template: Template, framing: str) -> Wording:
    return Wording(
        template.id,
        template.kind,
        template.text,
        template.yes,
        template.no,
        template.options,
        framing,
        _legacy_vocabulary(template),
    )


LEGACY_WORDINGS: dict[str, Wording] = {
    t.id: _legacy_wording(t, framing) for framing, ts in LEGACY.items() for t in ts
}


def wording_by_id(wording_id: str) -> Wording:
    """The wording an id names: a grammar id ("g/claim/true_false/0.1.0.0.1.2") or a VSRE
    template id ("t07", "h03"); anything else raises ValueError."""
    if wording_id in LEGACY_WORDINGS:
        return LEGACY_WORDINGS[wording_id]
    pieces = wording_id.split("/")
    if len(pieces) != 4 or pieces[0] != "g":
        raise ValueError(
            f"{wording_id!r} is not a wording id (g/<framing>/<vocabulary>/<slots>, or a "
            "template id t00-t49, h00-h09)"
        )
    try:
        parts = tuple(int(p) for p in pieces[3].split("."))
    except ValueError:
        raise ValueError(f"{wording_id!r}: slot indices must be integers") from None
    if len(parts) != 6:
        raise ValueError(f"{wording_id!r}: expected 6 slot indices, got {len(parts)}")
    return make_wording(pieces[1], pieces[2], *parts)


def _in_split(framing: str, vocabulary: str, split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"unknown wording split {split!r}; known: {', '.join(SPLITS)}")
    unseen = framing in HELD_OUT_FRAMINGS or vocabulary in HELD_OUT_VOCABULARIES
    return split == "all" or (split == "unseen") == unseen


def pool(split: str = "seen") -> list[tuple[str, str]]:
    """The (framing, vocabulary) pairs of a split, legacy framings as (framing, "")."""
    out = [(f.id, v) for f in FRAMINGS.values() for v in f.tails if _in_split(f.id, v, split)]
    legacy = [(name, "") for name in LEGACY if _in_split(name, "", split)]
    return out + legacy


def count(split: str = "all", relation: str = "left of") -> int:
    """How many distinct surface forms a split holds for one relation (relations differ only
    in how many preposition variants they have)."""
    total = 0
    for framing, vocab in pool(split):
        if framing in LEGACY:
            total += len(LEGACY[framing])
            continue
        sizes = list(_sizes(framing, vocab))
        sizes[3] = 1 if relation in VERB_RELATIONS else len(PREPOSITIONS.get(relation, "x"))
        sizes[1] = 1 if relation in VERB_RELATIONS else sizes[1]
        total += math.prod(sizes)
    return total


def sample(
    rng: np.random.Generator,
    split: str = "seen",
    framing: str | None = None,
    vocabulary: str | None = None,
) -> Wording:
    """A wording drawn from a split: a framing uniformly (or the one given), then a vocabulary
    it takes, then every slot uniformly. Deterministic in the generator's state."""
    pairs = pool(split)
    if framing is not None:
        pairs = [p for p in pairs if p[0] == framing]
    if vocabulary is not None:
        pairs = [p for p in pairs if p[1] == vocabulary]
    if not pairs:
        raise ValueError(
            f"no wording in split {split!r} with framing {framing!r} and vocabulary {vocabulary!r}"
        )
    framings = sorted({f for f, _ in pairs}, key=ALL_FRAMINGS.index)
    chosen = framings[int(rng.integers(len(framings)))]
    if chosen in LEGACY:
        templates = LEGACY[chosen]
        return LEGACY_WORDINGS[templates[int(rng.integers(len(templates)))].id]
    vocabs = [v for f, v in pairs if f == chosen]
    vocab = vocabs[int(rng.integers(len(vocabs)))]
    parts = [int(rng.integers(n)) for n in _sizes(chosen, vocab)]
    return make_wording(chosen, vocab, *parts)


def paired(
    rng: np.random.Generator, first: Wording | None = None, split: str = "seen"
) -> tuple[Wording, Wording]:
    """Two wordings of one split with different framings (for a consistency term: the same
    item asked both ways must get the same verdict). `first`, if given, is kept."""
    first = first if first is not None else sample(rng, split)
    others = sorted({f for f, _ in pool(split)} - {first.framing}, key=ALL_FRAMINGS.index)
    if not others:
        raise ValueError(f"split {split!r} has a single framing; nothing to pair with")
    return first, sample(rng, split, framing=others[int(rng.integers(len(others)))])


def one_per_framing(rng: np.random.Generator, split: str = "all") -> list[Wording]:
    """One wording of every framing of a split (vocabulary drawn among those it takes): the
    set an evaluation asks each relation item through."""
    framings = sorted({f for f, _ in pool(split)}, key=ALL_FRAMINGS.index)
    return [sample(rng, split, framing=f) for f in framings]


def subject_first(wording: Wording) -> Wording:
    """The same wording with the subject first (a compound relation, "left of the box and
    behind", cannot take a pronoun for its last object)."""
    if wording.framing in LEGACY or wording.parts[2] == 0:
        return wording
    pre, verb, _order, prep, body, tail = wording.parts
    return make_wording(wording.framing, wording.vocabulary, pre, verb, 0, prep, body, tail)


def framing_of(wording_id: str) -> tuple[str, str]:
    """(framing, vocabulary) of a wording id; ("", "") for an id that is not a wording."""
    try:
        w = wording_by_id(wording_id)
    except ValueError:
        return "", ""
    return w.framing, w.vocabulary


def corpus() -> Iterator[str]:
    """Every part of the grammar's text, for a tokenizer's training corpus."""
    for frame in FRAMINGS.values():
        yield from frame.bodies
        for tails in frame.tails.values():
            yield from tails
    yield from (p for p in PREAMBLES if p)
    for claim, question in VERBS:
        yield f"{claim} {question}"
    yield from ORDERS[1:]
    for variants in PREPOSITIONS.values():
        yield ", ".join(variants)
    yield " ".join(f"{v.yes} {v.no}" for v in VOCABULARIES.values())
