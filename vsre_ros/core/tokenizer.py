"""The tiny presets' tokenizer: byte-level BPE trained locally on the template and grammar text.

Byte-level means any text encodes (no unknown token). Answer words are forced to be single
tokens by adding them to the vocabulary as whole words, and digits are split one by one, so a
number is decoded digit by digit and the yes/no verdict is one token's probability.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from vsre_ros.core import grammar, templates

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<image>"]
# Every word an answer may be: each must come out as one token after a space.
ANSWER_WORDS = [
    "yes", "no", "true", "false", "correct", "incorrect", "wrong",
    "A", "B", "C", "D", "E", "F", "G", "H",
    "m", "cm", "mm", "meters", "metres", "degrees",
    "left", "right", "above", "below", "top", "bottom", "front", "behind", "center",
    "centre", "middle", "up", "down", "near", "far", "closer", "farther", "taller",
    "shorter", "bigger", "smaller", "wider", "none", "first", "second", "third",
]  # fmt: skip
# VSR's relation names, so relation words in questions merge into few tokens.
VSR_RELATIONS = (
    "adjacent to, alongside, at the side of, at the right side of, at the left side of, "
    "attached to, at the back of, ahead of, against, at the edge of, off, past, toward, down, "
    "deep down, up, away from, along, around, from, into, to, across, across from, through, "
    "down from, facing, facing away from, parallel to, perpendicular to, on top of, beneath, "
    "beside, behind, left of, right of, under, in front of, below, above, over, in the middle "
    "of, by, close to, near, far from, far away from, connected to, detached from, has as a "
    "part, part of, contains, within, at, on, in, with, surrounding, among, consists of, out "
    "of, between, inside, outside, touching, beyond, next to, opposite to, after, enclosed by"
)
EXTRA_TEXT = [
    "USER: ASSISTANT: Image 1: Image 2: Image 3: Image 4:",
    "How far is the box from the chair? Which object is closer to the camera?",
    "Where is the red cup in the image? top left, top right, bottom left, bottom right.",
    "What is the distance between them in meters? 0.25 m 1.5 m 3 cm",
    VSR_RELATIONS,
    "red green blue yellow orange purple pink brown black white gray grey cyan",
]


# The BPE's training text by version; a version's tokenizer stays reproducible bit for bit.
TEXT_VERSIONS: dict[int, str] = {
    1: "the 50 templates and the fixed text: what the shipped vsre-tiny was built with",
    2: "also the question grammar's text (core/grammar.py), and correct/incorrect/wrong as "
    "single answer tokens",
}
# Answer words that text version 1 did not force to single tokens.
_SINCE_2 = ("correct", "incorrect", "wrong")


def train_bpe(
    vocab_size: int = 1024, extra: Iterable[str] = (), text_version: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the corpus of `text_version` (TEXT_VERSIONS; plus `extra`)."""
    if text_version not in TEXT_VERSIONS:
        known = ", ".join(f"{k} ({v})" for k, v in TEXT_VERSIONS.items())
        raise ValueError(f"unknown tokenizer text version {text_version}; known: {known}")
    words = [w for w in ANSWER_WORDS if text_version >= 2 or w not in _SINCE_2]
    tok = Tokenizer(models.BPE())
    # Digits are isolated before the byte-level split so numbers never merge into one token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = list(templates.corpus())
    text += list(grammar.corpus()) if text_version >= 2 else []
    text += EXTRA_TEXT + list(extra)
    # Repeating each answer word after a space makes its merges frequent enough to complete.
    text += [" ".join(f" {w}" for w in words)] * 50
    tok.train_from_iterator(text, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
    )
    broken = [w for w in words if len(fast.encode(" " + w, add_special_tokens=False)) != 1]
    if broken:
        raise ValueError(
            f"answer words {broken} are not single tokens with vocab_size={vocab_size}; "
            "raise tokenizer_vocab"
        )
    return fast
