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
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from vsre_ros.training.items import Item, meta_category

from vsre_ros.core.answers import canonical
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
        lines.append(
            "messages read: " + (", ".join(f"{k} {v}" for k, v in self.messages.items()) or "none")
        )
        if self.skipped:
            lines.append("skipped:")
            for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {count:5d}  {reason}  (e.g. {', '.join(self.examples[reason])})")
        for note in self.notes:
            lines.append(f"warning: {note}")
        return "\n".join(lines)


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
        self.answers: dict[str, object] = {}
        self.corrections: dict[str, tuple[int, object]] = {}  # query id -> (log time, msg)
        self.truth: dict[int, list[object]] = defaultdict(list)
        counts: Counter = Counter()
        for raw in messages:
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
                self.answers[str(msg.query_id)] = msg
            elif raw.msgtype == CORRECTION_TYPE:
                # The latest correction wins (across bags too, by recording time).
                self.corrections[str(msg.query_id)] = (raw.log_time, msg)
            elif raw.msgtype == TRUTH_TYPE:
                self.truth[_stamp_ns(msg.header.stamp)].append(msg)
        for name, count in counts.items():
            report.messages[name] = report.messages.get(name, 0) + count
        for frames in (*self.color.values(), *self.depth.values()):
            frames.sort(key=lambda f: f.stamp)

    def cameras(self, name: str) -> list[str]:
        """Colour topics that `name` (a topic or a frame_id; empty = all) refers to."""
        if not name:
            return sorted(self.color)
        by_topic = [t for t in self.color if t == name or t.lstrip("/") == name.lstrip("/")]
        if by_topic:
            return by_topic
        return sorted(t for t, frames in self.color.items() if frames[0].frame_id == name)

    def find_frame(self, query, answer, log_time: int, config: IngestConfig):
        """The frame a query was about, or (None, reason)."""
        if not self.color:
            return None, "no camera frames in the bag"
        if answer is not None and _stamp_ns(answer.header.stamp) > 0:
            wanted = _stamp_ns(answer.header.stamp)
            topics = self.cameras(str(answer.header.frame_id)) or self.cameras("")
            hits = [f for t in topics for f in self.color[t] if abs(f.stamp - wanted) <= 1_000_000]
            if hits:
                return hits[0], ""
        topics = self.cameras(str(query.camera))
        if not topics:
            return None, f"unknown camera {str(query.camera)!r}"
        stamp = _stamp_ns(query.stamp)
        candidates = [f for t in topics for f in self.color[t]]
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

    def depth_for(self, frame: Frame, config: IngestConfig) -> Frame | None:
        """The depth frame paired with a colour frame: same stamp (within max_skew), from a
        depth stream with the same frame_id, or the bag's only depth stream."""
        same_frame = [t for t, fs in self.depth.items() if fs[0].frame_id == frame.frame_id]
        topics = same_frame or (list(self.depth) if len(self.depth) == 1 else [])
        candidates = [f for t in topics for f in self.depth[t]]
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


def _split_group(bag_name: str, frame: Frame, scene_id: str, config: IngestConfig) -> str:
    """Items that must share a split: the frames of one simulated scene, else the frames of one
    camera within a `split_window` (neighbouring frames are near-duplicates; splitting them
    would put the same view in train and test)."""
    if scene_id:
        return f"scene/{scene_id}"
    window = max(1, int(config.split_window * 1e9))
    return f"{bag_name}/{frame.topic}/{frame.stamp // window}"


def _split_of(key: str, config: IngestConfig) -> str:
    digest = hashlib.sha256(f"{config.seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.val_fraction:
        return "val"
    return "train"


def ingest(bags: Iterable[Path | str], out: Path | str, config: IngestConfig | None = None):
    """Read `bags` and write a dataset into `out`; returns an IngestReport.

    Corrections apply across bags (an operator's station may record its own bag): every bag is
    indexed first, then each query takes the latest correction for its id from any of them.
    """
    config = config or IngestConfig()
    out = Path(out)
    for sub in ("images", "depth", "scenes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    store = make_typestore()
    report = IngestReport(out=str(out))
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    written: dict[tuple, str] = {}
    bags = [Path(b) for b in bags]
    indexed = []
    names: set[str] = set()
    for bag in bags:
        try:
            source = BagSource(bag, report.notes)
        except BagError as err:
            report.notes.append(str(err))
            continue
        contents = _BagContents(source.messages(), store, config, report)
        bag_name = base = _safe(bag.stem if bag.is_file() else bag.name)
        for k in range(2, len(bags) + 2):  # two bags named alike must not share file names
            if bag_name not in names:
                break
            bag_name = f"{base}-{k}"
        names.add(bag_name)
        indexed.append((bag, bag_name, source, contents))
    if bags and not indexed:
        raise BagError("no bag could be read: " + "; ".join(report.notes))
    corrections: dict[str, tuple[int, object]] = {}
    for *_, contents in indexed:
        for query_id, (log_time, correction) in contents.corrections.items():
            if query_id not in corrections or corrections[query_id][0] <= log_time:
                corrections[query_id] = (log_time, correction)
    known = {str(q.query_id) for *_, contents in indexed for _, q in contents.queries}
    for query_id in corrections:
        if query_id not in known:
            report.skip("correction for a query that is in no bag", query_id)
    for bag, bag_name, source, contents in indexed:
        contents.corrections = corrections
        planned = []
        for index, (log_time, query) in enumerate(contents.queries):
            query_id = str(query.query_id) or f"q{index}"
            plan = _make_item(
                query, query_id, log_time, index, bag_name, contents, config, report, out
            )
            if plan is not None:
                planned.append(plan)
        # Second pass: only the frames some item needs are decoded and written.
        needed = {key for plan in planned for key in plan["_frames"] if key is not None}
        files = _write_frames(source, needed, store, bag_name, out)
        for plan in planned:
            color_key, depth_key = plan.pop("_frames")
            item = plan
            if color_key is not None:
                result = files.get(color_key, "frame missing from the second read")
                if not result.startswith("images/"):
                    report.skip(result, item["_provenance"]["query_id"])
                    continue
                item["image"], item["images"] = result, [result]
                depth = files.get(depth_key, "") if depth_key is not None else ""
                item["depth"] = [depth if depth.startswith("depth/") else None]
            provenance = item.pop("_provenance")
            provenance.update(id=item["id"], bag=str(bag))
            splits[_split_of(item.pop("_split_key"), config)].append((item, provenance))
        written.update({(bag_name, *key): rel for key, rel in files.items()})
    with open(out / PROVENANCE_FILE, "w") as sidecar:
        for split, rows in splits.items():
            with open(out / f"{split}.jsonl", "w") as handle:
                for item, provenance in rows:
                    handle.write(json.dumps(Item(**item).to_json()) + "\n")
                    sidecar.write(json.dumps(provenance) + "\n")
            report.items[split] = len(rows)
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
        },
        "splits": dict(report.items),
        "created_by": "vsre ingest",
        "notes": report.notes,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return report


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
    correction = contents.corrections.get(query_id, (0, None))[1]
    if correction is not None:
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
    answer = contents.answers.get(query_id)
    images: list[str] = []
    depth: list[str | None] = []
    scene_id, camera, stamp, scene = "", "", 0, None
    if len(query.images):
        frames = (None, None)
        split_key = f"{bag_name}/{query_id}"
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
        split_key = _split_group(bag_name, frame, scene_id, config)
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
    item["_split_key"] = split_key
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
