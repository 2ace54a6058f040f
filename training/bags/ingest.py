"""Pairing queries with frames, answers and corrections, and writing the dataset.

Which frame a query was about, in order of trust:
1. the answer's header (the node stamps it with the frame it actually used);
2. the query's own `stamp` on its `camera` (nearest frame within `max_skew`);
3. a zero stamp means "latest": the newest frame at or before the query was recorded, no older
   than `max_age`.
Inline images sent with the query are used as they are.

A bag is read twice: an index first (frame stamps, queries, answers, corrections, scene truth),
then only the frames some item uses are decoded and written.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from vsre_ros.training.items import Item, meta_category

from vsre_ros.core.answers import UNITS, canonical, parse_number, parse_yes_no
from vsre_ros.core.templates import caption

from .reader import (
    ANSWER_TYPE,
    COMPRESSED_TYPE,
    CORRECTION_TYPE,
    DEPTH_ENCODINGS,
    IMAGE_TYPE,
    QUERY_TYPE,
    TRUTH_TYPE,
    BagError,
    BagSource,
    RawMessage,
    decode_compressed,
    decode_image,
    make_typestore,
    register_embedded,
)

SCHEMA = "vsre-dataset/1"
CORRECTIONS_TOPIC = "vsre/corrections"  # documented topic for SpatialCorrection
# Per-item facts the dataset schema has no field for (query id, label source, camera, stamp).
PROVENANCE_FILE = "provenance.jsonl"
# Answer kinds by the SpatialQuery KIND_* value; the names are the dataset's answer_kind.
KIND_LABELS = {0: "yes_no", 1: "choice", 2: "number", 3: "free_text"}
SELF_CONTRADICTION = "correction contradicts itself (refused)"


# --------------------------------------------------------------------------------------------
# Pairing queries, frames, answers and corrections


@dataclass
class IngestConfig:
    """How bags become a dataset."""

    max_skew: float = 0.05  # s: a query stamp matches a frame at most this far away
    max_age: float = 1.0  # s: a "latest frame" query accepts frames at most this old
    use_model_answers: bool = False  # keep uncorrected queries, labelled with the model's answer
    min_confidence: float = 0.0  # ... only if the model's confidence reached this (0.5..1)
    val_fraction: float = 0.1  # share of split groups whose items go to val.jsonl
    test_fraction: float = 0.1  # share of split groups whose items go to test.jsonl
    split_window: float = 10.0  # s: frames of one camera this close share a split group
    seed: int = 0  # salt of the group -> split hash
    image_topics: tuple[str, ...] = ()  # only these camera topics (empty = every image topic)
    # colour topic -> depth topic, for depth streams whose frame_id differs from the colour
    # camera's (unaligned depth); without an entry a camera gets only its own frame's depth
    depth_topics: dict[str, str] = field(default_factory=dict)
    default_camera: str = ""  # the camera a query with camera="" meant, when a bag has several
    # operator's bag -> the bag whose queries its corrections are about (paths as given)
    correction_bags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Frame:
    """Where a camera frame is in a bag; its pixels are read only if an item needs them."""

    topic: str  # topic it came on
    frame_id: str  # header.frame_id
    stamp: int  # header stamp, ns
    log_time: int  # recording time, ns
    depth: bool  # a depth image (16UC1/mono16/32FC1 or compressedDepth)

    @property
    def key(self) -> tuple[str, int]:
        return (self.topic, self.stamp)


@dataclass
class IngestReport:
    """What ingestion produced and what it left out, and why."""

    out: str = ""  # dataset directory
    items: dict[str, int] = field(default_factory=dict)  # split -> items written
    frames: int = 0  # distinct frames written
    messages: dict[str, int] = field(default_factory=dict)  # ROS type -> messages read
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few query ids
    notes: list[str] = field(default_factory=list)  # warnings: damaged bags and the like
    unreadable: list[str] = field(default_factory=list)  # bags skipped whole, with the reason
    groups: dict[str, int] = field(default_factory=dict)  # split -> split groups it holds
    contradicted: int = 0  # queries whose corrections disagree (the latest one labels them)

    def skip(self, reason: str, what: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(what)

    def summary(self) -> str:
        lines = [
            f"ingested into {self.out}: " + ", ".join(f"{k} {v}" for k, v in self.items.items())
        ]
        lines.append(f"frames written: {self.frames}")
        if self.groups:
            lines.append("split groups: " + ", ".join(f"{k} {v}" for k, v in self.groups.items()))
        lines.append(
            "messages read: " + (", ".join(f"{k} {v}" for k, v in self.messages.items()) or "none")
        )
        if self.skipped:
            lines.append("skipped:")
            for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {count:5d}  {reason}  (e.g. {', '.join(self.examples[reason])})")
        for note in self.notes:
            lines.append(f"warning: {note}")
        for bag in self.unreadable:
            lines.append(f"error: bag skipped: {bag}")
        return "\n".join(lines)

    def warn(self, note: str) -> None:
        self.notes.append(note)
        warnings.warn(note, stacklevel=3)


def _stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _is_depth_message(msg, compressed: bool) -> bool:
    if compressed:
        return "compresseddepth" in str(msg.format).lower()
    return str(msg.encoding) in DEPTH_ENCODINGS


def _decode(msg, compressed: bool) -> np.ndarray:
    return decode_compressed(msg) if compressed else decode_image(msg)


class _BagContents:
    """The messages of one bag, sorted into the kinds ingestion cares about."""

    def __init__(self, messages: Iterable[RawMessage], store, config: IngestConfig, report):
        self.color: dict[str, list[Frame]] = defaultdict(list)
        self.depth: dict[str, list[Frame]] = defaultdict(list)
        self.queries: list[tuple[int, object]] = []
        self.answers: dict[str, list[tuple[int, object]]] = defaultdict(list)
        self.corrections: list[tuple[int, object]] = []  # this bag's, in recording order
        self.truth: dict[int, list[object]] = defaultdict(list)
        self.read = 0  # messages read (decodable or not)
        counts: Counter = Counter()
        for raw in messages:
            self.read += 1
            register_embedded(store, raw.msgtype, raw.msgdef)
            try:
                msg = store.deserialize_cdr(raw.data, raw.msgtype)
            except Exception as err:
                report.skip(
                    f"message of type {raw.msgtype} does not deserialize", f"{raw.topic}: {err}"
                )
                continue
            counts[raw.msgtype] += 1
            if raw.msgtype in (IMAGE_TYPE, COMPRESSED_TYPE):
                if config.image_topics and raw.topic not in config.image_topics:
                    continue
                depth = _is_depth_message(msg, raw.msgtype == COMPRESSED_TYPE)
                frame = Frame(
                    raw.topic,
                    str(msg.header.frame_id),
                    _stamp_ns(msg.header.stamp),
                    raw.log_time,
                    depth,
                )
                (self.depth if depth else self.color)[raw.topic].append(frame)
            elif raw.msgtype == QUERY_TYPE:
                self.queries.append((raw.log_time, msg))
            elif raw.msgtype == ANSWER_TYPE:
                self.answers[str(msg.query_id)].append((raw.log_time, msg))
            elif raw.msgtype == CORRECTION_TYPE:
                self.corrections.append((raw.log_time, msg))
            elif raw.msgtype == TRUTH_TYPE:
                self.truth[_stamp_ns(msg.header.stamp)].append(msg)
        for name, count in counts.items():
            report.messages[name] = report.messages.get(name, 0) + count
        for frames in (*self.color.values(), *self.depth.values()):
            frames.sort(key=lambda f: f.stamp)
        self.query_ids = Counter(str(q.query_id) for _, q in self.queries if str(q.query_id))
        self.bound: dict[str, list[tuple[int, object]]] = defaultdict(list)  # id -> corrections

    def answer_for(self, query_id: str, log_time: int):
        """The answer to the query recorded at `log_time`: the first one recorded after it
        (a query id that repeats in the bag is answered once per asking)."""
        after = [(t, a) for t, a in self.answers.get(query_id, []) if t >= log_time]
        if after:
            return min(after, key=lambda ta: ta[0])[1]
        answers = self.answers.get(query_id, [])
        return answers[-1][1] if answers and self.query_ids[query_id] <= 1 else None

    def cameras(self, name: str) -> list[str]:
        """Colour topics that `name` (a topic or a frame_id) refers to."""
        by_topic = [t for t in self.color if t == name or t.lstrip("/") == name.lstrip("/")]
        if by_topic:
            return by_topic
        return sorted(t for t, frames in self.color.items() if frames[0].frame_id == name)

    def query_cameras(self, camera: str, config: IngestConfig) -> tuple[list[str], str]:
        """(colour topics a query's `camera` means, why none). An empty `camera` meant the
        node's first configured camera, which the bag does not record: it is the bag's only
        camera, or `default_camera`; with several cameras and no default it is unknown."""
        if camera:
            topics = self.cameras(camera)
            return topics, "" if topics else f"unknown camera {camera!r}"
        if len(self.color) == 1:
            return list(self.color), ""
        if config.default_camera:
            topics = self.cameras(config.default_camera)
            why = f"default camera {config.default_camera!r} is not in the bag"
            return topics, "" if topics else why
        return [], (
            "query names no camera and the bag has several (the node's first camera is not "
            "recorded; pass --default-camera)"
        )

    def find_frame(self, query, answer, log_time: int, config: IngestConfig):
        """The frame a query was about, or (None, reason)."""
        if not self.color:
            return None, "no camera frames in the bag"
        asked, why = self.query_cameras(str(query.camera), config)
        if answer is not None and _stamp_ns(answer.header.stamp) > 0:
            wanted = _stamp_ns(answer.header.stamp)
            topics = self.cameras(str(answer.header.frame_id))
            if len(topics) > 1 and asked:  # cameras sharing a frame_id: the query names one
                topics = [t for t in topics if t in asked] or topics
            hits = [f for t in topics for f in self.color[t] if abs(f.stamp - wanted) <= 1_000_000]
            if len({f.topic for f in hits}) == 1:
                return hits[0], ""
        if not asked:
            return None, why
        if len(asked) > 1:
            return None, f"camera {str(query.camera)!r} names several topics ({', '.join(asked)})"
        candidates = self.color[asked[0]]
        stamp = _stamp_ns(query.stamp)
        if stamp > 0:
            best = min(candidates, key=lambda f: abs(f.stamp - stamp))
            if abs(best.stamp - stamp) > config.max_skew * 1e9:
                return None, "no frame within max_skew of the query stamp"
            return best, ""
        earlier = [f for f in candidates if f.log_time <= log_time]
        if not earlier:
            return None, "no frame recorded before the query"
        best = max(earlier, key=lambda f: f.log_time)
        if log_time - best.log_time > config.max_age * 1e9:
            return None, "latest frame older than max_age"
        return best, ""

    def depth_topic(self, color: str, config: IngestConfig) -> str:
        """The depth stream of a colour topic: the one mapped to it in `depth_topics`, else the
        one depth stream with its frame_id (and, when several colour topics share that frame_id,
        its namespace). Never another camera's: no depth beats the wrong depth."""
        if color in config.depth_topics:
            return config.depth_topics[color]
        frame_id = self.color[color][0].frame_id
        same = [t for t, fs in self.depth.items() if fs[0].frame_id == frame_id]
        if sum(1 for fs in self.color.values() if fs[0].frame_id == frame_id) > 1:
            namespace = color.rsplit("/", 1)[0]
            same = [t for t in same if t.rsplit("/", 1)[0] == namespace]
        return same[0] if len(same) == 1 else ""

    def depth_for(self, frame: Frame, config: IngestConfig) -> Frame | None:
        """The depth frame paired with a colour frame: same stamp (within max_skew), from the
        camera's own depth stream (`depth_topic`)."""
        candidates = self.depth.get(self.depth_topic(frame.topic, config), [])
        if not candidates:
            return None
        best = min(candidates, key=lambda f: abs(f.stamp - frame.stamp))
        return best if abs(best.stamp - frame.stamp) <= config.max_skew * 1e9 else None


def _confidence(query, answer) -> float:
    """How sure the model was: max(P(yes), P(no)) for yes/no, else its reported confidence."""
    probability = float(answer.probability)
    if int(query.answer_kind) == 0:
        return max(probability, 1.0 - probability)
    return probability


def _label_key(query, correction) -> tuple:
    """What a correction says about a query, comparable between corrections."""
    kind = int(query.answer_kind)
    if kind == 0:
        return (bool(correction.verdict),)
    if kind == 1:
        return (int(correction.choice_index),)
    if kind == 2:
        return (round(float(correction.value), 9), str(correction.unit))
    return (str(correction.answer).strip(),)


def _self_contradiction(query, correction) -> str:
    """Why a correction's `answer` text disagrees with its own structured field, or "".

    A correction carries the answer twice (text, and verdict / choice_index / value); when
    both are given and disagree, no label can be trusted (an operator's tool that fills one
    and forgets the other)."""
    text = str(correction.answer).strip()
    if not text:
        return ""
    kind = int(query.answer_kind)
    if kind == 0:
        said = parse_yes_no(text)
        if said is not None and said != bool(correction.verdict):
            return f"answer {text!r} but verdict {str(bool(correction.verdict)).lower()}"
    elif kind == 1:
        options = [str(o) for o in query.options]
        index = int(correction.choice_index)
        if text in options and 0 <= index < len(options) and options[index] != text:
            return f"answer {text!r} but choice_index {index} ({options[index]!r})"
    elif kind == 2:
        parsed, value = parse_number(text), float(correction.value)
        if parsed is not None and math.isfinite(value):
            number, unit = parsed
            scale = UNITS.get(str(correction.unit).lower().rstrip("s"), ("", 1.0))[1]
            if not unit:
                scale = 1.0  # a bare number is in the message's own unit
            if abs(number - value * scale) > 1e-3 * max(1.0, abs(value * scale)):
                return f"answer {text!r} but value {value:g} {correction.unit}".rstrip()
    return ""


def _label_fields(query, truth, label_source: str) -> dict | str:
    """Answer fields of an item from a correction or an answer; a string says why not."""
    kind = KIND_LABELS.get(int(query.answer_kind))
    if kind is None:
        return f"unknown answer kind {int(query.answer_kind)}"
    options = [str(o) for o in query.options]
    fields = {"answer_kind": kind, "options": options, "value": None, "unit": "", "label": None}
    if kind == "yes_no":
        verdict = bool(truth.verdict)
        fields["answer"] = "yes" if verdict else "no"
        fields["label"] = int(verdict)
    elif kind == "choice":
        index = int(truth.choice_index)
        if not 0 <= index < len(options):
            return f"{label_source} choice_index out of range of the options"
        fields["answer"] = options[index]
    elif kind == "number":
        value = float(truth.value)
        if math.isnan(value):
            return f"{label_source} has no value for a number question"
        try:  # the evaluator and the demo compare numbers in canonical units (metres)
            value, unit = canonical(value, str(truth.unit))
        except ValueError as err:
            return f"{label_source}: {err}"
        fields.update(value=value, unit=unit, answer=f"{value:g}")
    else:
        text = str(truth.answer).strip()
        if not text:
            return f"{label_source} has an empty free-text answer"
        fields["answer"] = text
    return fields


# Frames of different cameras whose stamps differ by at most this were taken at one instant:
# a split-window boundary never falls between them.
INSTANT = 0.005  # s


def _split_keys(groups: list[tuple], config: IngestConfig) -> list[str]:
    """One split key per item; items with the same key share a split.

    A group is ("inline", key) for a query with inline images, or ("frame", bag, stamp,
    scene_id). A simulated frame's key is its scene (every frame of one scene shares a split).
    Other frames of a bag are cut into windows of `split_window` seconds across all its
    cameras (neighbouring frames are near-duplicates, and two cameras' frames at one instant
    show the same moment; splitting them would put the same view in train and test), and a
    window boundary never falls between stamps within INSTANT. Frames at one instant join
    (union-find), so a scene and another camera's frame of that moment share a split too.
    """
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    plain: dict[str, set[int]] = defaultdict(set)
    at: dict[str, list[tuple[int, str]]] = defaultdict(list)  # bag -> (stamp, key), sorted
    for group in groups:
        if group[0] == "frame" and not group[3]:
            plain[group[1]].add(group[2])
    window, instant = config.split_window * 1e9, INSTANT * 1e9
    window_of: dict[tuple[str, int], str] = {}
    for bag, found in plain.items():
        start = previous = None
        number = 0
        for stamp in sorted(found):
            if start is None or (stamp - start >= window and stamp - previous > instant):
                start, number = stamp, number + 1
            window_of[(bag, stamp)] = f"{bag}/window{number}"
            previous = stamp
    keys = []
    for group in groups:
        if group[0] == "inline":
            keys.append(group[1])
            continue
        _, bag, stamp, scene_id = group
        key = f"scene/{scene_id}" if scene_id else window_of[(bag, stamp)]
        at[bag].append((stamp, key))
        keys.append(key)
    for moments in at.values():
        moments.sort()
        for (stamp, key), (next_stamp, next_key) in itertools.pairwise(moments):
            if next_stamp - stamp <= instant:
                parent[find(next_key)] = find(key)
    return [find(key) for key in keys]


def _unit(key: str, config: IngestConfig) -> float:
    digest = hashlib.sha256(f"{config.seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_of(key: str, config: IngestConfig) -> str:
    u = _unit(key, config)
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def assign_splits(keys: list[str], config: IngestConfig, report: IngestReport) -> list[str]:
    """The split of each key: by its hash (stable when bags are added), except that a split
    asked for (fraction > 0) that drew no group takes the train group of lowest hash, as long
    as a train group remains: a short bag has few groups, and the hash alone can leave the
    held-out split empty."""
    groups = sorted(set(keys))
    split = {key: _split_of(key, config) for key in groups}
    for name, fraction in (("test", config.test_fraction), ("val", config.val_fraction)):
        train = sorted((k for k in groups if split[k] == "train"), key=lambda k: _unit(k, config))
        if fraction > 0 and name not in split.values() and len(train) >= 2:
            split[train[0]] = name
            report.notes.append(
                f"the hash gave {name} none of the {len(groups)} split groups; it takes one "
                f"({train[0]})"
            )
    report.groups = {name: sum(1 for v in split.values() if v == name) for name in SPLITS}
    return [split[key] for key in keys]


SPLITS = ("train", "val", "test")


def _index_bag(bag: Path, store, config: IngestConfig, report: IngestReport):
    """(source, contents) of one bag, or None after recording why it cannot be read."""
    try:
        source = BagSource(bag, report.notes)
    except BagError as err:
        report.unreadable.append(str(err))
        return None
    try:
        return source, _BagContents(source.messages(), store, config, report)
    except Exception as err:  # rosbags failing mid-stream: the bag looked intact but is not
        why = f"{type(err).__name__}: {err}"
    if not source.salvaged:
        try:
            source.salvage(f"reading stopped: {why}")
            return source, _BagContents(source.messages(), store, config, report)
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
    report.unreadable.append(f"{bag}: unreadable ({why})")
    return None


@dataclass
class _Bag:
    path: Path  # as given
    name: str  # unique file-name prefix
    source: BagSource
    contents: _BagContents


def _resolved(path) -> str:
    return str(Path(path).resolve())


def _bind_corrections(indexed: list[_Bag], config: IngestConfig, report: IngestReport) -> None:
    """Bind every correction to one (bag, query id).

    A correction binds to the query of its own bag; a bag mapped with `correction_bags`
    (an operator's station) binds to the bag it is mapped to. A correction from a bag without
    that query binds to the one bag that has the id, and is refused when several do: query ids
    are chosen by callers (the demo's `scene/counter` ids repeat between runs), so an id alone
    does not say which question a correction answers.
    """
    holders: dict[str, list[_Bag]] = defaultdict(list)
    for bag in indexed:
        for query_id in bag.contents.query_ids:
            holders[query_id].append(bag)
    by_path = {_resolved(bag.path): bag for bag in indexed}
    mapped: dict[str, _Bag] = {}
    for operator, target in config.correction_bags.items():
        if _resolved(target) not in by_path or _resolved(operator) not in by_path:
            report.warn(f"--corrections-for {operator}={target}: both must be among the bags")
            continue
        mapped[_resolved(operator)] = by_path[_resolved(target)]
    across = 0
    for bag in indexed:
        target_bag = mapped.get(_resolved(bag.path))
        for log_time, correction in bag.contents.corrections:
            query_id = str(correction.query_id)
            where = f"{bag.name}:{query_id}"
            if target_bag is not None:
                if query_id not in target_bag.contents.query_ids:
                    report.skip("correction for a query that is not in the bag it is mapped to",
                                where)  # fmt: skip
                    continue
                target = target_bag
            elif query_id in bag.contents.query_ids:
                target = bag
            elif not holders.get(query_id):
                report.skip("correction for a query that is in no bag", query_id)
                continue
            elif len(holders[query_id]) > 1:
                report.skip(
                    "correction from a bag without its query, whose id is in several bags "
                    "(refused; name the bag with --corrections-for)",
                    where,
                )
                continue
            else:
                target, across = holders[query_id][0], across + 1
            target.contents.bound[query_id].append((log_time, correction))
    if across:
        report.notes.append(
            f"{across} correction(s) from bags without their query bound to the only bag "
            "that holds the query id"
        )
    shared = {q: len(b) for q, b in holders.items() if len(b) > 1}
    if shared:
        report.warn(
            f"{len(shared)} query id(s) occur in more than one bag ({sum(shared.values())} "
            "queries, e.g. " + ", ".join(sorted(shared)[:3]) + "); each bag's corrections "
            "label only its own queries"
        )
    for bag in indexed:
        repeated = {q: n for q, n in bag.contents.query_ids.items() if n > 1}
        if repeated:
            report.warn(
                f"{bag.path}: {len(repeated)} query id(s) repeat within the bag "
                f"({sum(repeated.values())} queries, e.g. {', '.join(sorted(repeated)[:3])}); "
                "their corrections are refused (which asking they answer is unknown)"
            )


def ingest(bags: Iterable[Path | str], out: Path | str, config: IngestConfig | None = None):
    """Read `bags` and write a dataset into `out`; returns an IngestReport.

    Every bag is indexed first; corrections are bound to (bag, query id) (`_bind_corrections`);
    then each bag's items are made and its frames written. A bag that cannot be read is
    reported in `report.unreadable` and skipped; the others are ingested. BagError only when
    no bag could be read.
    """
    config = config or IngestConfig()
    out = Path(out)
    for sub in ("images", "depth", "scenes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    store = make_typestore()
    report = IngestReport(out=str(out))
    bags = [Path(b) for b in bags]
    indexed: list[_Bag] = []
    names: set[str] = set()
    for bag in bags:
        found = _index_bag(bag, store, config, report)
        if found is None:
            continue
        source, contents = found
        bag_name = base = _safe(bag.stem if bag.is_file() else bag.name)
        for k in range(2, len(bags) + 2):  # two bags named alike must not share file names
            if bag_name not in names:
                break
            bag_name = f"{base}-{k}"
        names.add(bag_name)
        indexed.append(_Bag(bag, bag_name, source, contents))
        if contents.read == 0:
            report.warn(f"{bag}: the bag holds no messages (an empty recording)")
        elif not contents.queries and not contents.corrections:
            report.warn(
                f"{bag}: no SpatialQuery or SpatialCorrection among its {contents.read} "
                "messages; nothing to learn from it"
            )
    if bags and not indexed:
        raise BagError("no bag could be read: " + "; ".join(report.unreadable))
    _bind_corrections(indexed, config, report)
    rows: list[tuple[dict, dict, tuple]] = []
    written: dict[tuple, str] = {}
    for bag in indexed:
        try:
            made, files = _bag_items(bag, store, config, report, out)
        except Exception as err:  # a bag that indexed but fails on its second read
            report.unreadable.append(f"{bag.path}: frames unreadable ({type(err).__name__}: "
                                     f"{err}); its items are left out")  # fmt: skip
            continue
        rows.extend(made)
        written.update({(bag.name, *key): rel for key, rel in files.items()})
    refused = report.skipped.get(SELF_CONTRADICTION, 0)
    if refused:
        report.warn(
            f"{refused} corrections contradict themselves (answer text vs verdict, option or "
            "value) and label nothing, e.g. " + "; ".join(report.examples[SELF_CONTRADICTION])
        )
    if report.contradicted:
        report.warn(
            f"{report.contradicted} queries were corrected more than once with different "
            "answers; the latest correction labels each"
        )
    keys = _split_keys([group for *_, group in rows], config)
    splits: dict[str, list[tuple[dict, dict]]] = {name: [] for name in SPLITS}
    for (item, provenance, _group), split in zip(rows, assign_splits(keys, config, report),
                                                 strict=True):  # fmt: skip
        splits[split].append((item, provenance))
    with open(out / PROVENANCE_FILE, "w") as sidecar:
        for split, chosen in splits.items():
            with open(out / f"{split}.jsonl", "w") as handle:
                for item, provenance in chosen:
                    handle.write(json.dumps(Item(**item).to_json()) + "\n")
                    sidecar.write(json.dumps(provenance) + "\n")
            report.items[split] = len(chosen)
    report.frames = sum(1 for rel in written.values() if rel.startswith("images/"))
    meta = {
        "schema": SCHEMA,
        "source": "bag",
        "seed": config.seed,
        "config": {**asdict(config), "bags": [str(b) for b in bags]},
        "counts": {
            "items": sum(report.items.values()),
            "frames": report.frames,
            "skipped": report.skipped,
            "split_groups": report.groups,
        },
        "splits": dict(report.items),
        "created_by": "vsre ingest",
        "notes": report.notes,
        "unreadable": report.unreadable,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return report


def _bag_items(bag: _Bag, store, config: IngestConfig, report: IngestReport, out: Path):
    """([(item, provenance, split group)], frame files) of one indexed bag."""
    contents = bag.contents
    planned = []
    for index, (log_time, query) in enumerate(contents.queries):
        query_id = str(query.query_id) or f"q{index}"
        plan = _make_item(
            query, query_id, log_time, index, bag.name, contents, config, report, out
        )
        if plan is not None:
            planned.append(plan)
    # Second pass: only the frames some item needs are decoded and written.
    needed = {key for plan in planned for key in plan["_frames"] if key is not None}
    files = _write_frames(bag.source, needed, store, bag.name, out)
    made = []
    for item in planned:
        color_key, depth_key = item.pop("_frames")
        if color_key is not None:
            result = files.get(color_key, "frame missing from the second read")
            if not result.startswith("images/"):
                report.skip(result, item["_provenance"]["query_id"])
                continue
            item["image"], item["images"] = result, [result]
            depth = files.get(depth_key, "") if depth_key is not None else ""
            item["depth"] = [depth if depth.startswith("depth/") else None]
        provenance = item.pop("_provenance")
        provenance.update(id=item["id"], bag=str(bag.path))
        made.append((item, provenance, item.pop("_group")))
    return made, files


def _write_frames(source: BagSource, needed: set, store, bag_name: str, out: Path) -> dict:
    """Decode and write the needed frames; key -> relative path, or why it failed."""
    from tqdm import tqdm

    files: dict[tuple[str, int], str] = {}
    if not needed:
        return files
    topics = {topic for topic, _ in needed}
    with tqdm(total=len(needed), desc=f"frames {bag_name}", unit="frame", disable=None) as bar:
        for raw in source.messages(topics):
            if raw.msgtype not in (IMAGE_TYPE, COMPRESSED_TYPE):
                continue
            try:
                msg = store.deserialize_cdr(raw.data, raw.msgtype)
            except Exception:  # already counted as undeserializable in the first pass
                continue
            key = (raw.topic, _stamp_ns(msg.header.stamp))
            if key not in needed or key in files:
                continue
            compressed = raw.msgtype == COMPRESSED_TYPE
            name = f"{bag_name}_{_safe(raw.topic)}_{key[1]}"
            try:
                pixels = _decode(msg, compressed)
            except ValueError as err:
                files[key] = f"frame does not decode: {err}"
                continue
            if _is_depth_message(msg, compressed):
                files[key] = f"depth/{name}.npy"
                np.save(out / files[key], pixels.astype(np.float32), allow_pickle=False)
            else:
                files[key] = f"images/{name}.png"
                PILImage.fromarray(pixels).save(out / files[key])
            bar.update(1)
    return files


def _choose_label(query, query_id, answer, contents, config, report, sim_item):
    """(source of the label, the message or sim item holding it), or None if there is none."""
    bound = sorted(contents.bound.get(query_id, []), key=lambda tc: tc[0])
    if bound and contents.query_ids[query_id] > 1:
        report.skip(
            "query id repeats within its bag: its correction is refused (which asking it "
            "answers is unknown)",
            query_id,
        )
        return None
    if bound:
        correction = bound[-1][1]  # the latest correction wins
        conflict = _self_contradiction(query, correction)
        if conflict:
            report.skip(SELF_CONTRADICTION, f"{query_id}: {conflict}")
            return None
        labels = {_label_key(query, c) for _, c in bound}
        if len(labels) > 1:
            report.contradicted += 1
        return "correction", correction
    if sim_item is not None:
        return "sim_truth", sim_item
    if not config.use_model_answers:
        report.skip(
            "no correction (pass --use-model-answers to keep the model's answer)", query_id
        )
        return None
    if answer is None:
        report.skip("no answer and no correction", query_id)
        return None
    if int(answer.status) != 0:
        report.skip("model answer is a failure and nothing corrected it", query_id)
        return None
    if _confidence(query, answer) < config.min_confidence:
        report.skip("model answer below --min-confidence and not corrected", query_id)
        return None
    return "model", answer


def _sim_item(scene: dict | None, query) -> dict | None:
    """The simulator's own item for this question, if the frame's SceneTruth lists it: the sim
    camera publishes the generated questions of each view with their exact answers."""
    if not scene:
        return None
    wanted = " ".join(str(query.question).split()).lower()
    kind = KIND_LABELS.get(int(query.answer_kind))
    for item in scene.get("questions") or []:
        same_text = " ".join(str(item.get("question", "")).split()).lower() == wanted
        if same_text and item.get("answer_kind") == kind:
            if kind != "choice" or list(item.get("options", [])) == [
                str(o) for o in query.options
            ]:
                return item
    return None


def _sim_fields(sim_item: dict) -> dict:
    """Label fields (and the sim's per-object extras) from a simulator item."""
    schema = {f for f in Item.__dataclass_fields__} - {"root", "extra"}
    keep = ("answer_kind", "options", "value", "unit", "label", "answer", "caption", "relation",
            "meta_category", "template_id", "task")  # fmt: skip
    fields = {k: sim_item[k] for k in keep if k in sim_item}
    fields["extra"] = {k: v for k, v in sim_item.items() if k not in schema}
    return fields


def _make_item(query, query_id, log_time, index, bag_name, contents, config, report, out):
    """The item a query makes, with `_frames` (colour, depth keys) still to be written."""
    answer = contents.answer_for(query_id, log_time)
    images: list[str] = []
    depth: list[str | None] = []
    scene_id, camera, stamp, scene = "", "", 0, None
    if len(query.images):
        frames = (None, None)
        group = ("inline", f"{bag_name}/{query_id}/{index}")
    else:
        frame, reason = contents.find_frame(query, answer, log_time, config)
        if frame is None:
            report.skip(reason, query_id)
            return None
        depth_frame = contents.depth_for(frame, config)
        frames = (frame.key, depth_frame.key if depth_frame else None)
        images.append("")  # filled in once the frame is written
        depth.append(None)
        scene_id, scene = _write_scene(contents.truth.get(frame.stamp, []), frame, out, report)
        group = ("frame", bag_name, frame.stamp, scene_id)
        camera, stamp = frame.topic, frame.stamp
    sim_item = _sim_item(scene, query)
    chosen = _choose_label(query, query_id, answer, contents, config, report, sim_item)
    if chosen is None:
        return None
    label_source, truth = chosen
    if label_source == "sim_truth":
        fields = _sim_fields(truth)
    else:
        fields = _label_fields(query, truth, label_source)
        if isinstance(fields, str):
            report.skip(fields, query_id)
            return None
    for i, inline in enumerate(query.images):
        try:
            pixels = decode_image(inline)
        except ValueError as err:
            report.skip(f"inline image does not decode: {err}", query_id)
            return None
        if pixels.ndim != 3:
            report.skip("inline image is a depth image", query_id)
            return None
        rel = f"images/{bag_name}_{_safe(query_id)}_{i}.png"
        PILImage.fromarray(pixels).save(out / rel)
        images.append(rel)
        depth.append(None)
    subj, relation, obj = str(query.subj), str(query.relation), str(query.obj)
    is_relation = bool(subj and relation and obj) and fields["answer_kind"] == "yes_no"
    if len(images) > 1:
        task = "multi_image"
    elif fields["answer_kind"] == "number":
        task = "metric"
    elif is_relation:
        task = "relation"
    else:
        task = "composite"
    item = {
        "id": f"{bag_name}-{_safe(query_id)}-{index}",
        "image": images[0],
        "images": images,
        "depth": depth,
        "masks": [None] * len(images),
        "caption": caption(subj, relation, obj) if is_relation else "",
        "relation": relation if is_relation else "",
        "subj": subj,
        "obj": obj,
        "meta_category": meta_category(relation) if is_relation else "",
        "question": str(query.question),
        "template_id": "",
        "task": task,
        "scene_id": scene_id,
        "seed": config.seed,
        "source": "bag",
    }
    item.update(fields)
    item["_provenance"] = {
        "query_id": query_id,
        "label_source": label_source,
        "camera": camera,
        "stamp": stamp,
    }
    item["_group"] = group
    item["_frames"] = frames
    return item


def _write_scene(
    truths: list, frame: Frame, out: Path, report: IngestReport
) -> tuple[str, dict | None]:
    """Write the frame's SceneTruth as a scene file; (scene id, the parsed scene) or ("", None)."""
    for truth in truths:
        if str(truth.header.frame_id) not in ("", frame.frame_id):
            continue
        scene_id = _safe(str(truth.scene_id)) or f"scene_{frame.stamp}"
        try:
            scene = json.loads(str(truth.json))
        except json.JSONDecodeError:
            report.skip("scene truth is not valid JSON (item kept without it)", scene_id)
            return "", None
        (out / "scenes" / f"{scene_id}.json").write_text(json.dumps(scene))
        return scene_id, scene
    return "", None
