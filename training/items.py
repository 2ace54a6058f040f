"""Dataset items and the readers that load them, one schema for every source.

A dataset is a directory with `dataset.json`, images and `<split>.jsonl` files (the
`vsre-dataset/1` schema written by the simulator, the bag ingestion and the expansion); VSR's
original jsonl with a separate image folder reads into the same `Item`. Readers are chosen by
id from `READERS`, never by looking at file names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vsre_ros.core.answers import AnswerKind
from vsre_ros.core.grammar import wording_by_id
from vsre_ros.core.templates import HELDOUT_TEMPLATES, TEMPLATES, Template

SCHEMA = "vsre-dataset/1"

# VSR's 66 relations by meta-category (Liu et al. 2023). "among" is listed twice in the paper;
# the first meta-category wins.
META_CATEGORIES: dict[str, tuple[str, ...]] = {
    "Adjacency": (
        "adjacent to", "alongside", "at the side of", "at the right side of",
        "at the left side of", "attached to", "at the back of", "ahead of", "against",
        "at the edge of",
    ),
    "Directional": (
        "off", "past", "toward", "down", "deep down", "up", "away from", "along", "around",
        "from", "into", "to", "across", "across from", "through", "down from",
    ),
    "Orientation": ("facing", "facing away from", "parallel to", "perpendicular to"),
    "Projective": (
        "on top of", "beneath", "beside", "behind", "left of", "right of", "under",
        "in front of", "below", "above", "over", "in the middle of",
    ),
    "Proximity": ("by", "close to", "near", "far from", "far away from"),
    "Topological": (
        "connected to", "detached from", "has as a part", "part of", "contains", "within", "at",
        "on", "in", "with", "surrounding", "among", "consists of", "out of", "between",
        "inside", "outside", "touching",
    ),
    "Unallocated": ("beyond", "next to", "opposite to", "after", "among", "enclosed by"),
}  # fmt: skip

RELATION_META: dict[str, str] = {}
for _meta, _relations in META_CATEGORIES.items():
    for _relation in _relations:
        RELATION_META.setdefault(_relation, _meta)

TASKS = (
    "relation", "direction", "distance", "localization", "composite", "metric", "compare",
    "multi_image",
)  # fmt: skip


def meta_category(relation: str) -> str:
    """VSR meta-category of a relation name, "" for relations outside VSR's 66."""
    return RELATION_META.get(relation.strip().lower(), "")


@dataclass
class Item:
    """One question about one or more images; field names follow the dataset schema."""

    id: str  # unique item id
    image: str  # path of the first image, relative to root (absolute for VSR folders)
    images: list[str] = field(default_factory=list)  # all images of the item
    depth: list[str | None] = field(default_factory=list)  # depth .npy files, parallel
    masks: list[str | None] = field(default_factory=list)  # instance mask PNGs, parallel
    caption: str = ""  # VSR-style statement, "" if not a relation item
    label: int | None = None  # 1 true / 0 false for binary relation items
    relation: str = ""  # VSR relation name, "" if none
    subj: str = ""  # subject phrase
    obj: str = ""  # reference object phrase
    meta_category: str = ""  # VSR meta-category, "" if none
    question: str = ""  # the question as asked
    answer: str = ""  # canonical answer text
    answer_kind: str = "yes_no"  # yes_no | choice | number | free_text
    options: list[str] = field(default_factory=list)  # choices for choice questions
    value: float | None = None  # numeric answer for number questions
    unit: str = ""  # unit of value
    template_id: str = ""  # template the question was rendered through
    task: str = "relation"  # relation | direction | distance | ... | multi_image
    scene_id: str = ""  # scene the item was generated from
    seed: int = 0  # generator seed
    source: str = ""  # sim | vsr | bag | expand
    extra: dict = field(default_factory=dict)  # producer-specific fields beyond the schema
    root: str = ""  # dataset directory the relative paths are under (not in the jsonl)

    def __post_init__(self) -> None:
        if not self.images:
            self.images = [self.image]
        if not self.meta_category and self.relation:
            self.meta_category = meta_category(self.relation)

    @property
    def kind(self) -> AnswerKind:
        return AnswerKind.from_label(self.answer_kind)

    @property
    def truth(self) -> bool | None:
        """Polarity of a binary item: the label if given (whatever the template's answer words),
        else a yes/no item's canonical answer; None for other items."""
        if self.label is not None:
            return bool(self.label)
        if self.kind is not AnswerKind.YES_NO:
            return None
        return self.answer.strip().lower() in ("yes", "true")

    @property
    def binary(self) -> bool:
        """Scored by polarity: a yes/no item, or a relation asked through a choice template."""
        if self.truth is None:
            return False
        return self.kind is AnswerKind.YES_NO or self.template_id in ALL_TEMPLATES

    def image_paths(self) -> list[Path]:
        """Absolute paths of the item's images."""
        return [Path(self.root, name) for name in (self.images or [self.image])]

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("root")
        return {**data.pop("extra"), **data}

    @classmethod
    def from_json(cls, data: dict, root: str | Path = "") -> Item:
        """An item from one jsonl row; fields beyond the schema (a simulator's object list,
        mask ids, view names) are kept in `extra` and written back by `to_json`."""
        known = {f.name for f in fields(cls)} - {"root", "extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        data = {k: v for k, v in data.items() if k in known}
        for required in ("id", "image"):
            if not data.get(required):
                raise ValueError(f"item row without {required!r}: {json.dumps(data)[:200]}")
        item = cls(**data, extra=extra, root=str(root))
        AnswerKind.from_label(item.answer_kind)  # validates the kind early
        return item


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON line ({err})") from None


def read_meta(root: str | Path) -> dict:
    """`dataset.json` of a dataset directory, checked for the schema id."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a {SCHEMA} dataset (no dataset.json); for VSR jsonl files use "
            "format 'vsr' with an image folder"
        )
    meta = json.loads(path.read_text())
    if meta.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {meta.get('schema')!r}, expected {SCHEMA!r}")
    return meta


def splits(root: str | Path) -> list[str]:
    """Names of the splits a dataset directory holds."""
    return sorted(p.stem for p in Path(root).glob("*.jsonl"))


def read_vsre(root: str | Path, split: str, image_dir: str | Path | None = None) -> list[Item]:
    """Items of one split of a vsre-dataset directory (simulator, bag ingestion, expansion)."""
    root = Path(root)
    read_meta(root)
    path = root / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no split {split!r}; it has {splits(root)}")
    image_root = Path(image_dir) if image_dir else root
    items = []
    for number, row in _read_jsonl(path):
        try:
            items.append(Item.from_json(row, root=image_root))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{number}: {err}") from None
    return items


_ARTICLE = re.compile(r"^(the|a|an)\s+", re.I)
_BE = re.compile(r"\s+(is|are)$", re.I)


def split_caption(caption: str, relation: str) -> tuple[str, str]:
    """(subject, object) of a VSR caption "The cat is on the bed.", ("", "") if it won't parse."""
    text = caption.strip().rstrip(".").strip()
    marker = f" {relation.strip()} "
    at = text.lower().find(marker.lower()) if relation.strip() else -1
    if at < 0:
        return "", ""
    subj = _ARTICLE.sub("", _BE.sub("", text[:at].strip()))
    obj = _ARTICLE.sub("", text[at + len(marker) :].strip())
    return (subj, obj) if subj and obj else ("", "")


def vsr_question(subj: str, relation: str, obj: str, caption: str) -> tuple[str, str]:
    """(question, template id) for a VSR row: the first template, or the caption as a claim."""
    if subj and obj:
        return TEMPLATES[0].render(subj, relation, obj), TEMPLATES[0].id
    return f"{caption.strip()} Is this correct?", ""


def read_vsr(path: str | Path, split: str = "", image_dir: str | Path | None = None) -> list[Item]:
    """VSR's original jsonl (image, caption, label, relation[, subj, obj]) with an image folder.

    `path` is a jsonl file, or a folder holding `<split>.jsonl`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no VSR jsonl at {path}")
    if image_dir is None:
        raise ValueError("VSR jsonl names images only; give the image folder (--images DIR)")
    items = []
    for number, row in _read_jsonl(path):
        missing = [k for k in ("image", "caption", "label", "relation") if k not in row]
        if missing:
            raise ValueError(f"{path}:{number}: VSR row without {missing}")
        relation = str(row["relation"])
        subj, obj = row.get("subj", ""), row.get("obj", "")
        if not (subj and obj):
            subj, obj = split_caption(row["caption"], relation)
        question, template_id = vsr_question(subj, relation, obj, row["caption"])
        label = int(row["label"])
        items.append(
            Item(
                id=f"vsr-{path.stem}-{number:06d}",
                image=str(row["image"]),
                images=[str(row["image"])],
                caption=str(row["caption"]),
                label=label,
                relation=relation,
                subj=subj,
                obj=obj,
                meta_category=meta_category(relation),
                question=question,
                answer="yes" if label else "no",
                answer_kind="yes_no",
                template_id=template_id,
                task="relation",
                source="vsr",
                root=str(image_dir),
            )
        )
    return items


# format id -> reader(path, split, image_dir). The bag ingestion and the expansion write the
# vsre schema, so "vsre" reads them too.
READERS: dict[str, Callable[..., list[Item]]] = {"vsre": read_vsre, "vsr": read_vsr}


def load_items(
    path: str | Path, split: str, fmt: str = "vsre", image_dir: str | Path | None = None
) -> list[Item]:
    """Items of `split` from a dataset in format `fmt` (one of READERS)."""
    if fmt not in READERS:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {', '.join(READERS)}")
    return READERS[fmt](path, split, image_dir)


def write_items(path: str | Path, items: Iterable[Item]) -> None:
    """Write items as a jsonl split file (the inverse of the vsre reader for one split)."""
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item.to_json()) + "\n")


class _Wordings(Mapping[str, Template]):
    """Every wording by id, for asking and scoring in the wording's own answer words: the
    VSRE templates (iterated) and the question grammar's ids ("g/claim/true_false/..."),
    which decode on lookup (`core.grammar.wording_by_id`) and are not iterated."""

    def __getitem__(self, wording_id: str) -> Template:
        if not isinstance(wording_id, str) or not wording_id:
            raise KeyError(wording_id)
        try:
            return wording_by_id(wording_id)
        except ValueError:
            raise KeyError(wording_id) from None

    def __iter__(self) -> Iterator[str]:
        return iter(t.id for t in TEMPLATES + HELDOUT_TEMPLATES)

    def __len__(self) -> int:
        return len(TEMPLATES) + len(HELDOUT_TEMPLATES)


ALL_TEMPLATES: Mapping[str, Template] = _Wordings()


def can_template(item: Item) -> bool:
    """Whether the item is a binary relation that any instruction template can ask.

    It needs a polarity, subject, relation and object, and a question that was itself
    rendered through an instruction template (or none): a question with more context, such
    as which of two images it is about, keeps its own wording.
    """
    if item.truth is None or not (item.subj and item.relation and item.obj):
        return False
    return not item.template_id or item.template_id in ALL_TEMPLATES
