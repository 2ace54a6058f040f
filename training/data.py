"""From items to training examples: templates, answer targets, balanced order, image cache.

Everything here is deterministic in (seed, epoch, position), which is what lets a killed run
resume with exactly the batch it would have seen: the order of an epoch is recomputed, not
stored. A relation item is asked through one instruction template drawn per item and per
epoch; the answer target is written in that template's words.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vsre_ros.core import grammar
from vsre_ros.core.answers import AnswerKind
from vsre_ros.core.templates import TEMPLATES, VERB_RELATIONS, Template

from . import wording_noise
from .items import ALL_TEMPLATES, Item, can_template
from .scoring import normalize


@dataclass
class Example:
    """One question with its answer target, ready to be batched for the model."""

    item: Item  # the item asked
    question: str  # the question text as the model sees it
    target: str  # the answer text the model is trained to produce
    kind: AnswerKind  # form of the answer as asked (a choice template makes it CHOICE)
    options: list[str] = field(default_factory=list)  # choice options, in the question's order
    template_id: str = ""  # template used, "" for the item's own question

    @property
    def truth(self) -> bool | None:
        return self.item.truth


def target_text(item: Item) -> str:
    """The answer target of an item asked through its own question, for every answer kind."""
    kind = item.kind
    if kind is AnswerKind.YES_NO:
        template = ALL_TEMPLATES.get(item.template_id)
        if template is not None:
            return template.answer(bool(item.truth))
        return "yes" if item.truth else "no"
    if kind is AnswerKind.NUMBER:
        if item.answer.strip():
            return item.answer.strip()
        if item.value is None:
            raise ValueError(f"number item {item.id!r} has neither an answer nor a value")
        return f"{item.value:.2f}"
    if kind is AnswerKind.CHOICE:
        if normalize(item.answer) not in [normalize(o) for o in item.options]:
            raise ValueError(
                f"choice item {item.id!r}: answer {item.answer!r} is not one of {item.options}"
            )
        return item.answer
    if not item.answer.strip():
        raise ValueError(f"free-text item {item.id!r} has an empty answer")
    return item.answer


def ask(item: Item, template: Template | None = None) -> Example:
    """The item as a question: through `template` if given (relation items), else its own."""
    if template is None:
        return Example(item, item.question, target_text(item), item.kind, list(item.options))
    if not can_template(item):
        raise ValueError(
            f"item {item.id!r} is not a yes/no relation with subject, relation and object; "
            "only those can be asked through an instruction template"
        )
    kind = AnswerKind.CHOICE if template.kind == "choice" else AnswerKind.YES_NO
    return Example(
        item,
        template.render(item.subj, item.relation, item.obj),
        template.answer(bool(item.truth)),
        kind,
        list(template.options),
        template.id,
    )


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


@dataclass
class TemplateSampler:
    """Draws one instruction template per item and per epoch."""

    templates: Sequence[Template] = tuple(TEMPLATES)  # pool drawn from
    share: float = 1.0  # chance a relation item is re-asked; else its own question
    seed: int = 0  # run seed

    def __post_init__(self) -> None:
        if not self.templates and self.share > 0:
            raise ValueError("TemplateSampler needs templates to draw from (or share=0)")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"template share must be within [0, 1], got {self.share}")

    def example(self, item: Item, index: int, epoch: int) -> Example:
        """`item` (at `index` of its dataset) as asked in `epoch`."""
        rng = _rng(self.seed, 1, epoch, index)
        return _reask(
            item, rng, self.share, lambda: self.templates[int(rng.integers(len(self.templates)))]
        )


def _reask(item: Item, rng: np.random.Generator, share: float, draw) -> Example:
    """A relation item re-asked through `draw()` with chance `share`, else its own question."""
    if not can_template(item) or share == 0 or rng.random() >= share:
        return ask(item)
    return ask(item, draw())


@dataclass
class WordingSampler:
    """Draws one question-grammar wording (`core.grammar`) per item and per epoch, from the
    seen wordings only; `pair` gives the same item under two wordings of different framings
    (a consistency term compares their verdicts)."""

    split: str = "seen"  # wording pool: "seen" for training; "unseen" is the held-out test
    share: float = 1.0  # chance a relation item is re-asked; else its own question
    seed: int = 0  # run seed
    noise: float = 0.0  # chance a re-asked question gets filler words (training.wording_noise)

    def __post_init__(self) -> None:
        if self.split not in grammar.SPLITS:
            raise ValueError(f"unknown wording split {self.split!r}; known: {grammar.SPLITS}")
        for name in ("share", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"wording {name} must be within [0, 1], got {getattr(self, name)}"
                )

    def example(self, item: Item, index: int, epoch: int) -> Example:
        """`item` (at `index` of its dataset) as asked in `epoch`."""
        rng = _rng(self.seed, 3, epoch, index)
        example = _reask(item, rng, self.share, lambda: grammar.sample(rng, self.split))
        if self.noise == 0 or not example.template_id:
            return example
        noise_rng = _rng(self.seed, 6, epoch, index)  # apart: noise 0 keeps the draws above
        if noise_rng.random() >= self.noise:
            return example
        phrases = [item.subj, item.obj, *relation_phrases(item.relation)]
        example.question = wording_noise.noisy(example.question, phrases, noise_rng)
        return example

    def pair(self, item: Item, index: int, epoch: int) -> tuple[Example, Example]:
        """The item under two wordings with different framings (deterministic in seed, epoch
        and index); an item no wording can ask comes back twice as its own question."""
        if not can_template(item):
            return ask(item), ask(item)
        first, second = grammar.paired(_rng(self.seed, 4, epoch, index), split=self.split)
        return ask(item, first), ask(item, second)


def relation_phrases(relation: str) -> list[str]:
    """Every way the grammar and the templates write `relation` ("left of", "to the left of",
    "is containing" for "contains")."""
    out = [relation, *grammar.PREPOSITIONS.get(relation, ())]
    if relation in VERB_RELATIONS:
        out.append(VERB_RELATIONS[relation])
    return out


def reworded(item: Item, seed: int = 0, split: str = "seen") -> Example:
    """The item asked through another framing than the one it was generated with (its paired
    rewording); an item no wording can ask comes back as its own question."""
    if not can_template(item):
        return ask(item)
    rng = _rng(seed, 5, int(hashlib.sha1(item.id.encode()).hexdigest()[:8], 16))
    own = ALL_TEMPLATES.get(item.template_id)
    if isinstance(own, grammar.Wording) and own.framing in {f for f, _ in grammar.pool(split)}:
        return ask(item, grammar.paired(rng, own, split)[1])
    return ask(item, grammar.sample(rng, split))


def templates_by_ids(ids: Sequence[str]) -> list[Template]:
    """Templates for a list of ids; an unknown id raises ValueError naming the known ids."""
    out = []
    for template_id in ids:
        if template_id not in ALL_TEMPLATES:
            known = ", ".join(sorted(ALL_TEMPLATES))
            raise ValueError(
                f"unknown template id {template_id!r}; known: {known}, or a grammar wording id "
                "g/<framing>/<vocabulary>/<slots>"
            )
        out.append(ALL_TEMPLATES[template_id])
    return out


def balance_key(item: Item) -> tuple:
    """The stratum an item is balanced in: relation and label for binary items, task
    and answer for choices and short free text, task alone for numbers."""
    if item.truth is not None:
        return (item.task, item.relation, item.truth)
    if item.kind is AnswerKind.NUMBER:
        return (item.task,)
    return (item.task, normalize(item.answer))


def epoch_order(
    items: Sequence[Item],
    epoch: int,
    seed: int = 0,
    balanced: bool = True,
    task_weights: dict[str, float] | None = None,
    length: int | None = None,
) -> list[int]:
    """Indices of the items an epoch visits, in order.

    Unbalanced: a permutation. Balanced: drawn with replacement so that each task gets its
    weight (default: equal per task present), and within a task every stratum of
    `balance_key` (relation x label) is equally likely.
    """
    if not items:
        raise ValueError("no items to sample from")
    length = len(items) if length is None else length
    rng = _rng(seed, 2, epoch)
    if not balanced and task_weights is None:
        order = rng.permutation(len(items))
        return [int(i) for i in np.resize(order, length)]
    strata: dict[str, dict[tuple, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, item in enumerate(items):
        key = balance_key(item) if balanced else (index,)
        strata[item.task][key].append(index)
    tasks = sorted(strata)
    weights = np.array([(task_weights or {}).get(t, 0.0 if task_weights else 1.0) for t in tasks])
    if weights.sum() <= 0:
        # Weights for tasks a dataset lacks are ignored, so one recipe fits several datasets.
        raise ValueError(f"task weights {task_weights} give no weight to the data's tasks {tasks}")
    weights = weights / weights.sum()
    task_keys = {t: sorted(strata[t]) for t in tasks}
    order = []
    for _ in range(length):
        task = tasks[int(rng.choice(len(tasks), p=weights))]
        keys = task_keys[task]
        members = strata[task][keys[int(rng.integers(len(keys)))]]
        order.append(members[int(rng.integers(len(members)))])
    return order


Preprocessed = np.ndarray | dict[str, np.ndarray]


class ImageCache:
    """Preprocessed images by file, so epochs after the first do not decode again.

    Keyed by the file's path, size and modification time plus `signature` (what the
    preprocessing depends on, e.g. image size and normalisation), kept in memory (LRU, up to
    `max_items`) and optionally on disk under `disk_dir` (.npy for an array, .npz for a dict of
    arrays such as one tensor per encoder; never pickled).
    """

    def __init__(
        self,
        preprocess: Callable[[np.ndarray], Preprocessed],
        signature: str,
        max_items: int = 4096,
        disk_dir: str | Path | None = None,
    ) -> None:
        self.preprocess = preprocess  # HxWx3 uint8 RGB -> what the model takes
        self.signature = signature  # changes whenever preprocessing would change
        self.max_items = max_items  # in-memory entries kept
        self.disk_dir = Path(disk_dir) if disk_dir else None  # optional persistent cache
        self.decodes = 0  # images read from their files and preprocessed
        self.hits = 0  # images served from the cache
        self._memory: OrderedDict[str, Preprocessed] = OrderedDict()
        if self.disk_dir:
            self.disk_dir.mkdir(parents=True, exist_ok=True)

    def _key(self, path: Path) -> str:
        stat = path.stat()
        text = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.signature}"
        return hashlib.sha1(text.encode()).hexdigest()

    def get(
        self, path: str | Path, transform: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> Preprocessed:
        """The image's preprocessed pixels; with `transform` (a training augmentation), the
        file's pixels through it, preprocessed afresh and not cached."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image {path} does not exist")
        if transform is not None:
            self.decodes += 1
            return self.preprocess(transform(load_rgb(path)))
        key = self._key(path)
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        value = self._from_disk(key)
        if value is None:
            value = self.preprocess(load_rgb(path))
            self.decodes += 1
            self._to_disk(key, value)
        else:
            self.hits += 1
        self._memory[key] = value
        if len(self._memory) > self.max_items:
            self._memory.popitem(last=False)
        return value

    def _from_disk(self, key: str) -> Preprocessed | None:
        if not self.disk_dir:
            return None
        for suffix in (".npy", ".npz"):
            path = self.disk_dir / f"{key}{suffix}"
            if path.is_file():
                loaded = np.load(path, allow_pickle=False)
                if suffix == ".npy":
                    return loaded
                with loaded:
                    return {name: loaded[name] for name in loaded.files}
        return None

    def _to_disk(self, key: str, value: Preprocessed) -> None:
        if not self.disk_dir:
            return
        suffix = ".npz" if isinstance(value, dict) else ".npy"
        fd, tmp = tempfile.mkstemp(dir=self.disk_dir, suffix=suffix)
        with os.fdopen(fd, "wb") as handle:
            if isinstance(value, dict):
                np.savez(handle, **value)
            else:
                np.save(handle, value, allow_pickle=False)
        os.replace(tmp, self.disk_dir / f"{key}{suffix}")


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
