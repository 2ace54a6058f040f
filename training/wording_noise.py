"""Filler words around a relation question: training for wordings the grammar does not hold.

The grammar (core/grammar.py) has a few framings; a model trained on them alone learns their
exact shape, and a framing it never saw ("If I said ..., would I be right?") costs it 12-18
points. `noisy` adds words that say nothing about the answer, in places a real speaker might
put them: a clause before the question, words between its parts, a clause after it. The
relation, the two object phrases and the answer words the question offers are never split,
so the answer target is unchanged.

The words come from `FILLER_TEXT`, minus every word of the held-out framings, templates and
answer vocabularies (`held_out_words`): filler never teaches a held-out wording, and the
unseen-wording figures stay a test of generalization. Relation words, answer words and
negations are left out too: "not", "left" or "false" would change the meaning.
"""

from __future__ import annotations

import re
from functools import cache

import numpy as np

from vsre_ros.core import grammar
from vsre_ros.core.answers import VOCABULARIES, invited_vocabularies, pair_pattern
from vsre_ros.core.templates import HELDOUT_TEMPLATES, VERB_RELATIONS

# Words with no bearing on a spatial verdict: people, places, time, hedges, chatter.
FILLER_TEXT = """
    please kindly now okay ok so well hey hi hello thanks cheers quickly briefly honestly
    really actually basically simply just also again still here today tonight anyway then
    robot camera picture photo shot frame view scene room kitchen office table shelf lab
    we us our you your me my they their he she team operator user student engineer
    need want like wonder ask asking check checking see seeing looking watch notice guess
    know knowing think tell help answer reply respond quick small simple short single one
    question query task request test job thing point detail part moment second minute
    this these those what about regarding concerning on for from with by at of and as
    good great fine nice sure certain careful clear visible shown displayed captured current
    first last next latest recent given following attached provided new old same
    image's picture's photo's while after before during once whenever because since
    hmm um uh oh alright meanwhile otherwise besides moreover
"""
# Words whose presence could change a verdict or name an answer.
NEGATIONS = ("not", "no", "never", "none", "nothing", "neither", "nor", "without", "isn't",
             "doesn't", "aren't", "false", "wrong", "incorrect", "untrue", "opposite")  # fmt: skip

_WORD = re.compile(r"[a-z][a-z'\-]*")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


@cache
def held_out_words() -> frozenset[str]:
    """Every word of the held-out framings, the held-out templates and the held-out answer
    vocabularies: filler never contains them."""
    out: set[str] = set()
    for framing in grammar.HELD_OUT_FRAMINGS & set(grammar.FRAMINGS):
        frame = grammar.FRAMINGS[framing]
        for text in frame.bodies + tuple(t for tails in frame.tails.values() for t in tails):
            out |= _words(text.replace("{claim}", "").replace("{Claim}", ""))
    for template in HELDOUT_TEMPLATES:
        out |= _words(re.sub(r"\{\w+\}", " ", template.text))
    for vocab in grammar.HELD_OUT_VOCABULARIES:
        out |= {VOCABULARIES[vocab].yes, VOCABULARIES[vocab].no}
    return frozenset(out)


@cache
def _meaningful() -> frozenset[str]:
    """Words that name a relation, an answer or a negation."""
    out = set(NEGATIONS)
    for vocab in VOCABULARIES.values():
        out |= {vocab.yes, vocab.no}
    for relation in grammar.PREPOSITIONS.keys() | set(VERB_RELATIONS.values()):
        out |= _words(relation)
    for variants in grammar.PREPOSITIONS.values():
        for variant in variants:
            out |= _words(variant)
    from vsre_ros.core.tokenizer import ANSWER_WORDS, VSR_RELATIONS

    out |= _words(VSR_RELATIONS) | {w.lower() for w in ANSWER_WORDS}
    return frozenset(out)


@cache
def filler_words() -> tuple[str, ...]:
    """The filler bank: `FILLER_TEXT` minus held-out and meaningful words, sorted."""
    bank = set(FILLER_TEXT.split()) - held_out_words() - _meaningful()
    return tuple(sorted(w for w in bank if _WORD.fullmatch(w)))


def _clause(rng: np.random.Generator, lo: int, hi: int) -> str:
    bank = filler_words()
    return " ".join(bank[int(i)] for i in rng.integers(len(bank), size=int(rng.integers(lo, hi))))


def _protected(text: str, phrases: list[str]) -> list[tuple[int, int]]:
    """Character spans that filler must not split: each phrase and the offered answer pair."""
    spans = []
    lower = text.lower()
    for phrase in phrases:
        phrase = phrase.lower().strip()
        if not phrase:
            continue
        for m in re.finditer(re.escape(phrase), lower):
            spans.append((m.start(), m.end()))
    for vocab in invited_vocabularies(text):
        spans += [(m.start(), m.end()) for m in pair_pattern(vocab).finditer(text)]
    return spans


def noisy(text: str, phrases: list[str], rng: np.random.Generator) -> str:
    """`text` with filler in one to three places (a clause before, words between, a clause
    after), never inside a span of `phrases` (the relation and object phrases) or inside
    the answer pair the text offers. Deterministic in the generator's state."""
    spans = _protected(text, phrases)
    gaps = [
        m.start() for m in re.finditer(r" ", text) if not any(a < m.start() < b for a, b in spans)
    ]
    inserts: list[tuple[int, str]] = []
    for _ in range(int(rng.integers(1, 4))):
        where = int(rng.integers(3))
        if where == 0:
            inserts.append((0, _clause(rng, 2, 7) + rng.choice([",", ".", ":", " -"]) + " "))
        elif where == 1 and gaps:
            inserts.append((gaps[int(rng.integers(len(gaps)))], " " + _clause(rng, 1, 4)))
        else:
            end = _clause(rng, 2, 7)
            inserts.append((len(text), " " + end[:1].upper() + end[1:] + "."))
    for at, piece in sorted(inserts, key=lambda x: -x[0]):
        text = text[:at] + piece + text[at:]
    return text
