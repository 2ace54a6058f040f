"""The inference engine: many questions about a few frames, answered quickly and repeatably.

- Visual tokens are cached per image key (the caller's (camera, stamp), or a hash of the
  pixels), least recently used first out; a frame is encoded once however often it is asked.
- The image prefix of the prompt is run once per image set and its KV cache reused for every
  question (never copied or mutated). A batch's questions about one image set run in ONE LM
  pass (with the prefix, for a new image set), packed after it with a block mask
  (`_answer_chunk`): yes/no questions are answered from the answer-token probabilities; a
  choice's question runs once with its options as branches after it, each option scored as
  the whole answer; numbers and free text by greedy decoding (never sampled), then parsed, a
  number two tokens a pass (drafted digits, kept only when greedy decoding picks them). A
  question asked twice in one batch is answered once.
- `answer` is thread-safe: concurrent callers queue their queries, and whichever caller holds
  the model runs every pending query in one batch.
- A model the engine loads itself (a directory or preset id) is put in eval mode once, and its
  static-shape parts (one frame's vision side, short LM passes) are traced at load
  (`core.traced`, `EngineConfig.trace`); a model object passed in runs eagerly in its own mode.
- It never raises for bad input: a bad question or image gets an Answer with BAD_QUESTION or
  BAD_IMAGE and a message saying what was wrong.
- With a grounding head (`core.grounding`), every answer also names where the question's
  objects are in its first image (`Answer.objects`); with that image's depth and intrinsics,
  where they are in 3D, and a metric number question is answered from that geometry
  (`core.geometry`, `Answer.source`). Without depth, the answers are the model's as before.
  The head and the geometry of a batch's frames run on a second thread while the encoders and
  the LM work (`EngineConfig.parallel_grounding`): on a CPU with a core to spare, a grounded
  answer about a new frame waits for the slower of the two, not for both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from vsre_ros.core import geometry
from vsre_ros.core.answers import (
    UNNAMED,
    VOCABULARIES,
    Answer,
    AnswerKind,
    Query,
    QueryLimits,
    Source,
    Status,
    invited_vocabularies,
    parse_number,
    question_problem,
)
from vsre_ros.core.config import PRESETS, EngineConfig, is_model_file, read_model_file
from vsre_ros.core.grounding import FrameGrounding, Grounder, object_phrases
from vsre_ros.core.model import VSREModel, check_image
from vsre_ros.core.templates import TEMPLATES
from vsre_ros.core.traced import TracedLM, TracedVision, lm_pass, trace_lm, trace_vision

# The wording of structured-only yes/no queries: the first (plainest) training template.
STRUCTURED_TEMPLATE = next(t for t in TEMPLATES if t.kind == "yes_no")

log = logging.getLogger(__name__)

GROUNDED_FRAMES = 8  # frames whose grounding (boxes, places) the engine keeps

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(config: EngineConfig) -> tuple[torch.device, torch.dtype]:
    """Device and dtype from the config: CUDA with bf16 (or fp16) when available, else fp32."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r} asked for, but CUDA is not available")
    if config.dtype == "auto":
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    elif config.dtype in DTYPES:
        dtype = DTYPES[config.dtype]
    else:
        raise ValueError(f"unknown dtype {config.dtype!r}; known: auto, {', '.join(DTYPES)}")
    return device, dtype


def load_model(
    ref: VSREModel | str | Path, preset_args: dict[str, str] | None = None
) -> VSREModel:
    """A model from itself, a saved directory, a preset id (built with `preset_args`) or a
    model file (a YAML naming a preset and its arguments, `config.read_model_file`).

    A preset id builds that preset's config with random weights; the package's trained weights
    for a preset are a directory (`vsre_ros.ros.engines.resolve_model_ref` maps an id to them,
    as the nodes, the demo and `vsre ask` do).
    """
    if isinstance(ref, VSREModel):
        return ref
    path = Path(ref)
    if path.is_dir():
        return VSREModel.from_pretrained(path)
    if str(ref) in PRESETS:
        return VSREModel.from_preset(str(ref), **(preset_args or {}))
    if is_model_file(ref):
        preset, args = read_model_file(ref)
        return VSREModel.from_preset(preset, **{**args, **(preset_args or {})})
    raise ValueError(
        f"model {str(ref)!r} is neither a directory nor a preset id; known presets: "
        f"{sorted(PRESETS)}"
    )


class LRU(OrderedDict):
    """A dict that forgets its least recently used entries beyond `capacity`."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get_fresh(self, key: Hashable) -> Any:
        if key not in self:
            return None
        self.move_to_end(key)
        return self[key]

    def put(self, key: Hashable, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > max(self.capacity, 0):
            self.popitem(last=False)


@dataclass
class _Prefix:
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer key/value [1, heads, P, dim]
    ids: list[int]  # prefix token ids
    image_embeds: torch.Tensor  # [n images * tokens, hidden]


@dataclass
class _Packed:
    """A packed LM pass after an image prefix, to be continued (greedy decoding)."""

    prefix: _Prefix
    cache: DynamicCache  # the prefix's keys and values, then every row token run so far
    owners: list[int]  # the row of each cached token after the prefix
    row_len: list[int]  # tokens of each row so far (a child row counts its parent's)


def _warm_groups(grounder: Grounder, features: dict | None, groups) -> None:
    """`Engine._warm`'s work for each (queries, image keys) group: without `features` (image
    tokens by key), only what needs none. Errors are left for `Engine._ground`, which meets
    them again, answer by answer, and reports them."""
    for queries, keys in groups:
        try:
            found = features[keys[0]] if features is not None else None
            frame = grounder.frame(keys[0], found, queries[0].images[0])
            phrases = [object_phrases(q.question, q.subj, q.obj) for q in queries]
            if found is not None:
                frame.objects([p for names in phrases for p in names])
            for query, names in zip(queries, phrases, strict=True):
                if query.depth and query.intrinsics:
                    k = geometry.Intrinsics.from_matrix(query.intrinsics[0])
                    frame.locate(names if found is not None else [], query.depth[0], k)
        except Exception:  # `_ground` meets it again and reports it
            continue


class _Pending:
    def __init__(self, queries: Sequence[Query]):
        self.queries = list(queries)
        self.answers: list[Answer] | None = None


class Engine:
    """Answers `Query`s with a VSREModel; see the module docstring."""

    def __init__(self, model: VSREModel | str | Path, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.device, self.dtype = resolve_device(self.config)
        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        self._run_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._features = LRU(self.config.feature_cache_size)
        self._prefixes = LRU(self.config.prefix_cache_size)
        self._adapter = ""
        self._batch_features: dict[Hashable, torch.Tensor] = {}
        self._ground_pool: ThreadPoolExecutor | None = None  # `_grounding_beside`'s thread
        # Traced static-shape parts (core.traced), for a model the engine loaded itself.
        self._owned = False
        self._vision: TracedVision | None = None
        self._lm_graphs: TracedLM | None = None
        self._stats: Counter[str] = Counter()
        self.model: VSREModel
        self.load(model)

    # ------------------------------------------------------------------------ model swaps

    @property
    def model_id(self) -> str:
        return self.model.model_id + (f"+{self._adapter}" if self._adapter else "")

    def load(self, model_ref: VSREModel | str | Path, adapter: str | Path | None = None) -> None:
        """Switch to another model (object, directory or preset id), optionally with LoRA."""
        model = load_model(model_ref, self.config.preset_args)
        owned = model is not model_ref
        if owned:
            # The engine's own model answers only: eval mode once, not a switch per call
            # (which walks every module, about a fifth of a call on the tiny model).
            model.eval()
        model.to(device=self.device, dtype=self.dtype)
        for head in model.heads.values():  # exported heads run in float32 on the same device
            head.to(device=self.device)
        with self._run_lock:
            self.model = model
            self._owned = owned
            self._adapter = ""
            self._reset_model_state()
        if adapter:
            self.load_adapter(adapter)

    def load_adapter(self, directory: str | Path) -> None:
        """Load a LoRA adapter onto the current model (replacing any adapter it had)."""
        with self._run_lock:
            self.model.load_adapter(directory)
            self.model.to(device=self.device, dtype=self.dtype)
            self._adapter = Path(directory).name
            self._reset_model_state()

    def stats(self) -> dict[str, int]:
        """Counters since start: queries, batches, feature and prefix cache hits and misses."""
        with self._queue_lock:
            return dict(self._stats)

    def clear_cache(self) -> None:
        """Forget every frame: its visual tokens, its prefix and its grounding. What belongs
        to the model alone stays: the token ids of prompt parts, each phrase's head part."""
        with self._run_lock:
            self._features.clear()
            self._prefixes.clear()
            if self._grounder is not None:
                self._grounder.forget_frames()

    def _reset_model_state(self) -> None:
        self._features.clear()
        self._prefixes.clear()
        # Token ids of prompt parts, by question and by image count: tokenizing them again for
        # every check and row cost about 0.4 ms a question. Read-only lists.
        self._suffixes = LRU(4096)
        self._answers = LRU(4096)  # choice options as answer token ids
        # The tokens drafted after each token of a number answer (`_decode`): the answer's
        # leading text, digits and point, as this tokenizer writes them.
        self._drafts = sorted(set(self.model.answer_ids("0.123456789", eos=False)))
        self._prefix_lists: dict[int, list[int]] = {}
        self._grounder: Grounder | None = None  # the grounding head's caches (`_ground`)
        # Recorded once here, never on the answer path; a recording of the old model (or of
        # the LM without its new adapter) would answer for the wrong weights.
        trace = self._owned and self.config.trace
        self._vision = trace_vision(self.model) if trace else None
        self._lm_graphs = trace_lm(self.model) if trace else None
        # Per reading (the vocabularies a question invites, core.answers): the tokens fed after
        # the question before the verdict (some tokenizers start every answer with the same
        # space token), then the first tokens of the positive and of the negative words.
        self._readings: dict[tuple[str, ...], tuple[list[int], list[int], list[int]]] = {}
        for ids in [(v,) for v in VOCABULARIES] + [UNNAMED]:
            try:
                self._readings[ids] = self._polarity_tokens(ids)
            except ValueError as err:
                # A tokenizer that cannot tell the words apart (unknown words) cannot read
                # this vocabulary; its questions are read as questions that name no pair.
                log.warning("answer words of %s: %s", "/".join(ids), err)
        if UNNAMED not in self._readings:
            raise ValueError(f"the tokenizer cannot tell the answer words of {UNNAMED} apart")

    def _polarity_tokens(self, invited: tuple[str, ...]) -> tuple[list[int], list[int], list[int]]:
        """(lead, positive ids, negative ids) of a reading: the invited vocabularies' words,
        then every other vocabulary's that the tokenizer tells apart after the same lead.

        The verdict is the answer's polarity in whichever answer words the model puts its
        mass on. A model never trained on the words a question invites ("Right or wrong?")
        answers in words it knows; read in the invited words alone, that question scored
        48% on fresh scenes, and 66% read this way, with seen wordings unchanged
        (docs/recipes-tried.md). The lead and the invited words stay one rule with the
        trainer's verdict targets (VSREModel.verdict_tokens); raises ValueError when the
        invited words themselves cannot be told apart.
        """
        pos = [VOCABULARIES[v].yes for v in invited]
        neg = [VOCABULARIES[v].no for v in invited]
        reading = self.model.verdict_tokens(pos, neg)
        for vocab in VOCABULARIES.values():
            if vocab.id in invited:
                continue
            try:
                wider = self.model.verdict_tokens(pos + [vocab.yes], neg + [vocab.no])
            except ValueError:
                continue  # unknown to this tokenizer, or sharing a first token across sides
            if wider[0] == reading[0]:
                pos, neg, reading = pos + [vocab.yes], neg + [vocab.no], wider
        return reading

    def _reading(self, question: str) -> tuple[str, ...]:
        """The vocabularies a yes/no question is read in (see core.answers)."""
        invited = tuple(v.id for v in invited_vocabularies(question))
        return invited if invited in self._readings else UNNAMED

    def _count(self, name: str) -> None:
        with self._queue_lock:
            self._stats[name] += 1

    def _suffix_ids(self, question: str) -> list[int]:
        ids = self._suffixes.get_fresh(question)
        if ids is None:
            ids = self.model.suffix_ids(question)
            self._suffixes.put(question, ids)
        return ids

    def _prefix_ids(self, n_images: int) -> list[int]:
        if n_images not in self._prefix_lists:
            self._prefix_lists[n_images] = self.model.prefix_ids(n_images)
        return self._prefix_lists[n_images]

    def _verdict_row(self, question: str) -> list[int]:
        """Token ids after which the next token is the yes/no verdict."""
        lead, _, _ = self._readings[self._reading(question)]
        return self._suffix_ids(question) + lead

    # ----------------------------------------------------------------------------- answers

    def answer(self, queries: Sequence[Query]) -> list[Answer]:
        """Answer queries (never raises for bad input); concurrent calls share a batch."""
        slot = _Pending(queries)
        with self._queue_lock:
            self._pending.append(slot)
        with self._run_lock:
            if slot.answers is None:
                with self._queue_lock:
                    batch, self._pending = self._pending, []
                flat = [q for pending in batch for q in pending.queries]
                with self._queue_lock:
                    self._stats["batches"] += 1
                    self._stats["queries"] += len(flat)
                try:
                    answers = self._process(flat)
                except Exception as err:  # every waiting caller must still get its answers
                    log.exception("engine failed")
                    answers = [
                        Answer.failure(
                            Status.ERROR,
                            f"engine failed: {type(err).__name__}: {err}",
                            str(getattr(q, "query_id", "")),
                        )
                        for q in flat
                    ]
                start = 0
                for pending in batch:
                    pending.answers = answers[start : start + len(pending.queries)]
                    start += len(pending.queries)
        assert slot.answers is not None
        return slot.answers

    def prepare(
        self,
        image: np.ndarray,
        key: Hashable,
        depth: np.ndarray | None = None,
        intrinsics: np.ndarray | None = None,
    ) -> bool:
        """Encode a frame before anyone asks about it: its visual tokens, its image prefix's
        KV cache, and (with a grounding head) the head's image part and, given depth and K,
        the frame's geometry, each cached under `key` as a question's `image_keys=[key]`
        would be. A question about it then costs what one about an encoded frame does.

        True when it did work; False when the frame was already prepared, or cannot be (a bad
        image, or a model failure: logged, never raised, since no question waits on it).
        Holds the model as `answer` does, so a question that comes meanwhile waits for it.
        """
        try:
            check_image(image, 0)
        except ValueError as err:
            log.warning("prepare %r: %s", key, err)
            return False
        keys = (("key", key),)
        with self._run_lock:
            head = self.model.heads.get("grounding") if self.config.grounding else None
            done = self._prefixes.get_fresh(keys) is not None and (
                head is None
                or (self._grounder is not None and self._grounder.has(keys[0], depth, intrinsics))
            )
            if done:
                return False
            try:
                with _eval_mode(self.model), torch.inference_mode():
                    self._prepare(image, keys, head, depth, intrinsics)
            except Exception:
                log.exception("prepare %r failed", key)
                return False
        self._count("prepared")
        return True

    def _prepare(self, image, keys: tuple, head, depth, intrinsics) -> None:
        measured = depth is not None and intrinsics is not None
        query = Query(
            "",
            [image],
            depth=[depth] if measured else [],
            intrinsics=[intrinsics] if measured else [],
        )
        with self._grounding_beside([([query], keys)]) as tokens:
            self._encode_missing([query], [keys])
            tokens.set_result(self._batch_features)
            prefix, known = self._prefix(keys)
            if not known:  # the prefix alone, as `_run_packed` runs it before a batch's rows
                n = len(prefix.ids)
                embeds = self.model.embed(self._tensor([prefix.ids]), prefix.image_embeds)
                causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril()
                cache = DynamicCache()
                self._lm(embeds, causal, torch.arange(n, device=self.device), cache, 1)
                self._keep_prefix(keys, prefix, cache)
        if head is None:
            return
        frame = self._grounder_for(head).frame(keys[0], self._batch_features[keys[0]], image)
        if depth is not None and intrinsics is not None:
            try:
                frame.locate([], depth, geometry.Intrinsics.from_matrix(intrinsics))
            except ValueError as err:  # unusable depth: questions will say so themselves
                log.warning("prepare: depth not used: %s", err)

    def next_token_logits(self, queries: Sequence[Query]) -> torch.Tensor:
        """Logits [n, vocab] for the first answer token of valid queries (checks and benches)."""
        with self._run_lock, _eval_mode(self.model), torch.inference_mode():
            keys = self._image_keys(queries)
            self._encode_missing(queries, keys)
            rows = []
            for q, k in zip(queries, keys, strict=True):
                logits = self._run_rows(k, [self._verdict_row(q.question)])
                rows.append(logits[0, -1])
            return torch.stack(rows).float()

    def _process(self, queries: list[Query]) -> list[Answer]:
        queries = [_worded(q) for q in queries]
        answers: list[Answer | None] = [None] * len(queries)
        valid = []
        for i, query in enumerate(queries):
            problem = self._validate(query)
            if problem is not None:
                problem.query_id = getattr(query, "query_id", "")
                problem.model_id = self.model_id
                answers[i] = problem
            else:
                valid.append(i)
        if valid:
            start = time.perf_counter()
            try:
                with _eval_mode(self.model), torch.inference_mode():
                    self._answer_valid([queries[i] for i in valid], answers, valid)
            except Exception as err:  # a model failure must become an answer, not a crash
                log.exception("engine failed")
                for i in valid:
                    if answers[i] is None:
                        answers[i] = Answer.failure(
                            Status.ERROR,
                            f"model failed: {type(err).__name__}: {err}",
                            queries[i].query_id,
                        )
            elapsed = (time.perf_counter() - start) * 1000.0
            for i in valid:
                answers[i].latency_model_ms = elapsed
                answers[i].model_id = self.model_id
                answers[i].query_id = queries[i].query_id
        return [a for a in answers if a is not None]

    def _validate(self, query: Any) -> Answer | None:
        if not isinstance(query, Query):
            return Answer.failure(
                Status.BAD_QUESTION, f"expected a Query, got {type(query).__name__}"
            )
        limits = QueryLimits(max_question_chars=self.config.max_question_chars)
        problem = question_problem(query.question, query.answer_kind, query.options, limits)
        if problem is not None:
            return Answer.failure(Status.BAD_QUESTION, problem)
        kind = AnswerKind(query.answer_kind)
        if not isinstance(query.images, (list, tuple)):
            return Answer.failure(
                Status.BAD_IMAGE,
                f"Query.images must be a list of HxWx3 uint8 arrays, got "
                f"{type(query.images).__name__}",
            )
        if not query.images:
            return Answer.failure(Status.BAD_IMAGE, "the query has no image; give at least one")
        if len(query.images) > self.config.max_images:
            return Answer.failure(
                Status.BAD_IMAGE,
                f"the query has {len(query.images)} images; the limit is {self.config.max_images}",
            )
        if not isinstance(query.image_keys, (list, tuple)):
            return Answer.failure(Status.BAD_IMAGE, "Query.image_keys must be a list")
        if query.image_keys and len(query.image_keys) != len(query.images):
            return Answer.failure(
                Status.BAD_IMAGE,
                f"{len(query.image_keys)} image keys for {len(query.images)} images; give one "
                "key per image or none",
            )
        for j, image in enumerate(query.images):
            try:
                check_image(image, j)
            except ValueError as err:
                return Answer.failure(Status.BAD_IMAGE, str(err))
        return self._check_context(query, kind)

    def _check_context(self, query: Query, kind: AnswerKind) -> Answer | None:
        """BAD_QUESTION, with the numbers, for a prompt longer than the LM's context."""
        limit = self.model.max_positions
        if limit is None:
            return None
        n_images = len(query.images)
        image_tokens = n_images * self.model.num_image_tokens
        text = len(self._prefix_ids(n_images)) - image_tokens
        text += len(self._suffix_ids(query.question))
        lead = self._readings[self._reading(query.question)][0]
        answer = len(lead) + 1 if kind == AnswerKind.YES_NO else 1
        needed = image_tokens + text + answer
        if needed <= limit:
            return None
        return Answer.failure(
            Status.BAD_QUESTION,
            f"the prompt needs {needed} tokens ({n_images} images x "
            f"{self.model.num_image_tokens} image tokens + {text} text tokens + {answer} to "
            f"answer), but the LM takes {limit} positions; ask about fewer images",
        )

    # --------------------------------------------------------------------- model work

    def _image_keys(self, queries: Sequence[Query]) -> list[tuple[Hashable, ...]]:
        """Each query's image keys: the caller's, or a digest of the pixels (computed once per
        array, however many questions of the batch ask about it: 1.4 ms for 640x480)."""
        digests: dict[int, Hashable] = {}  # id(array) -> key; the arrays live through the call
        out = []
        for query in queries:
            keys = []
            for j, image in enumerate(query.images):
                given = query.image_keys[j] if query.image_keys else None
                if given is not None:
                    keys.append(("key", given))
                    continue
                if id(image) not in digests:
                    digest = hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()
                    digests[id(image)] = ("pixels", image.shape, digest)
                keys.append(digests[id(image)])
            out.append(tuple(keys))
        return out

    def _encode_missing(self, queries: Sequence[Query], keys: list[tuple]) -> None:
        # The batch keeps its own references, so a small LRU cannot evict what it still needs.
        self._batch_features = {}
        missing: dict[Hashable, np.ndarray] = {}
        for query, qkeys in zip(queries, keys, strict=True):
            for key, image in zip(qkeys, query.images, strict=True):
                cached = self._features.get_fresh(key)
                if cached is not None:
                    self._batch_features[key] = cached
                    self._count("feature_hits")
                elif key not in missing:
                    missing[key] = image
                    self._count("feature_misses")
        items = list(missing.items())
        # The traced vision side holds one image: two new frames in a batch (the latest frame
        # changed while clients asked about it) run it twice, not the eager model once.
        step = 1 if self._vision is not None else max(1, self.config.max_batch)
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            pixels = self.model.preprocess([image for _, image in chunk])
            feats = (self._vision or self.model.encode_images)(pixels)
            for (key, _), feat in zip(chunk, feats, strict=True):
                self._features.put(key, feat)
                self._batch_features[key] = feat

    def _answer_valid(
        self, queries: list[Query], answers: list[Answer | None], slots: list[int]
    ) -> None:
        keys = self._image_keys(queries)
        groups: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        grouped = [([queries[i] for i in m], k) for k, m in groups.items()]
        with self._grounding_beside(grouped) as tokens:
            self._encode_missing(queries, keys)
            tokens.set_result(self._batch_features)
            for k, members in groups.items():
                if self.config.reuse_prefix:
                    self._answer_packed(
                        k, [queries[i] for i in members], [slots[i] for i in members], answers
                    )
                else:
                    self._answer_reference(
                        k, [queries[i] for i in members], [slots[i] for i in members], answers
                    )
        for k, members in groups.items():
            self._ground([queries[i] for i in members], k, [answers[slots[i]] for i in members])

    @contextlib.contextmanager
    def _grounding_beside(self, groups: list[tuple[list[Query], tuple]]) -> Iterator[Future]:
        """Ground each (queries, image keys) group on the grounding thread while the model
        works (`parallel_grounding`): what needs no image tokens (the head's part of the
        frame's pixels, the depth's geometry) while the encoders run, and the rest once the
        future yielded holds the batch's image tokens by key (None: stop) while the LM
        answers. The job ends with the block, so that `_ground` then finds every part
        computed (and meets again, and reports, whatever failed there)."""
        tokens: Future = Future()
        head = self.model.heads.get("grounding")
        job = None
        if head is not None and self.config.grounding and self.config.parallel_grounding:
            if self._ground_pool is None:
                self._ground_pool = ThreadPoolExecutor(1, thread_name_prefix="vsre-grounding")
            job = self._ground_pool.submit(self._warm, self._grounder_for(head), tokens, groups)
        try:
            yield tokens
        finally:
            if not tokens.done():
                tokens.set_result(None)
            if job is not None:
                job.exception()

    @staticmethod
    def _warm(grounder: Grounder, tokens: Future, groups: list[tuple[list[Query], tuple]]):
        """What `_ground` computes for each group, into `grounder`'s caches: the frames'
        pixels and geometry while the encoders run, the rest once `tokens` is set."""
        with torch.inference_mode():
            _warm_groups(grounder, None, groups)
            features = tokens.result()
            if features is not None:
                _warm_groups(grounder, features, groups)

    def _ground(self, queries: list[Query], keys: tuple, answers: list[Answer]) -> None:
        """Fill each answer's `objects` from the grounding head (in the first image of `keys`,
        every phrase of the questions in one head call), their 3D places from its depth and K
        when both are given, and answer a metric number question from those places (see the
        module docstring). Per frame and phrase, each part is computed once (`Grounder`)."""
        head = self.model.heads.get("grounding")
        if head is None or not self.config.grounding:
            return
        phrases = [object_phrases(q.question, q.subj, q.obj) for q in queries]
        if not any(phrases):
            return
        try:
            frame = self._grounder_for(head).frame(
                keys[0], self._batch_features[keys[0]], queries[0].images[0]
            )
            frame.objects([p for found in phrases for p in found])
        except Exception:  # grounding adds to answers; its failure must not cost them
            log.exception("grounding failed")
            return
        for query, found, answer in zip(queries, phrases, answers, strict=True):
            try:
                self._ground_one(frame, query, found, answer)
            except Exception:
                log.exception("grounding query %s failed", query.query_id)

    def _grounder_for(self, head) -> Grounder:
        if self._grounder is None or self._grounder.head is not head:
            # A few frames' grounding (each holds its image and, with depth, its geometry:
            # 2 MB at 640x480); the phrases' parts are small and recur across frames.
            self._grounder = Grounder(self.model, head, LRU(GROUNDED_FRAMES), LRU(4096))
        return self._grounder

    def _ground_one(
        self, frame: FrameGrounding, query: Query, phrases: list[str], answer: Answer
    ) -> None:
        if not phrases:
            return
        answer.objects = frame.objects(phrases)
        depth = query.depth[0] if query.depth else None
        k = query.intrinsics[0] if query.intrinsics else None
        if depth is None or k is None:
            return
        try:
            places = frame.locate(phrases, depth, geometry.Intrinsics.from_matrix(k))
        except ValueError as err:  # unusable depth or K: the answer stays the model's
            log.warning("query %s: depth not used: %s", query.query_id, err)
            return
        for obj, place in zip(answer.objects, places, strict=True):
            if place is not None:
                obj.box = place.box  # the pixels measured: tighter than the head's box
                obj.position = tuple(float(v) for v in place.centre)
                obj.extent = tuple(float(v) for v in place.extent)
                obj.depth_used = True
        asked = geometry.measure_asked(query.question)
        if query.answer_kind != AnswerKind.NUMBER or asked is None:
            return
        used = places[: geometry.MEASURES[asked]]
        if any(p is None for p in used):
            return
        value = geometry.measure(asked, used)
        if value is None:
            return
        answer.status, answer.error = Status.OK, ""
        answer.value, answer.unit, answer.text = value, NUMBER_UNIT, f"{value:.2f} {NUMBER_UNIT}"
        # A measurement is as sure as the grounding of the objects it measured.
        answer.probability = min(o.score for o in answer.objects[: len(used)])
        answer.source = Source.GEOMETRY

    def _answer_reference(
        self, keys: tuple, queries: list[Query], slots: list[int], answers: list[Answer | None]
    ) -> None:
        """The reference path (`reuse_prefix` off): each question recomputes its whole prompt;
        a choice runs once per option, a generated answer decodes alone."""
        yes_no = [
            j for j, q in enumerate(queries) if AnswerKind(q.answer_kind) == AnswerKind.YES_NO
        ]
        if yes_no:
            rows = [self._verdict_row(queries[j].question) for j in yes_no]
            logits = self._run_rows(keys, rows)
            last = logits[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
            for j, ans in zip(
                yes_no, self._verdicts([queries[j] for j in yes_no], last), strict=True
            ):
                answers[slots[j]] = ans
        for query, slot in zip(queries, slots, strict=True):
            kind = AnswerKind(query.answer_kind)
            if kind == AnswerKind.CHOICE:
                suffix, options = self._suffix_ids(query.question), self._option_ids(query)
                logits = self._run_rows(keys, [suffix + o for o in options])
                n = len(suffix) - 1  # the logits of option token t are at n + t
                per_option = [logits[r, n : n + len(o)] for r, o in enumerate(options)]
                answers[slot] = self._pick(query, options, per_option)
            elif kind != AnswerKind.YES_NO:
                answers[slot] = _finish(*self._generate(keys, query), kind)

    def _answer_packed(
        self, keys: tuple, queries: list[Query], slots: list[int], answers: list[Answer | None]
    ) -> None:
        """The questions about one image set, `max_batch` at a time, each chunk in one LM pass
        (`_answer_chunk`). A question asked twice in the batch (the same words, kind and
        options: clients asking about the latest frame) is answered once."""
        first: dict[tuple, int] = {}  # what a query asks -> the first query asking it
        asks = []
        for j, query in enumerate(queries):
            ask = (AnswerKind(query.answer_kind), query.question, tuple(query.options))
            asks.append(first.setdefault(ask, j))
        unique = sorted(set(asks))
        step = max(1, self.config.max_batch)
        chunks = [unique[start : start + step] for start in range(0, len(unique), step)]
        got: dict[int, Answer] = {}
        for chunk in chunks:
            answered = self._answer_chunk(keys, [queries[j] for j in chunk])
            got.update(zip(chunk, answered, strict=True))
        for j, (slot, asked) in enumerate(zip(slots, asks, strict=True)):
            # Each query gets its own Answer: grounding and the caller fill in their own fields.
            answers[slot] = got[j] if asked == j else dataclasses.replace(got[asked], objects=[])

    def _query_rows(self, query: Query) -> list[list[int]]:
        """The rows a query runs in a packed pass: its question (a yes/no question's up to
        where the verdict is read), then its branches: a choice's options (the last token of
        an option is only predicted, never fed), a number's drafts (see `_decode`)."""
        kind = AnswerKind(query.answer_kind)
        if kind == AnswerKind.YES_NO:
            return [self._verdict_row(query.question)]
        question = self._suffix_ids(query.question)
        if kind == AnswerKind.CHOICE:
            return [question] + [o[:-1] for o in self._option_ids(query)]
        if kind == AnswerKind.NUMBER:
            return [question] + [[t] for t in self._drafts]
        return [question]

    def _answer_chunk(self, keys: tuple, queries: list[Query]) -> list[Answer]:
        """Answers from ONE LM pass after the image prefix (with the prefix itself, for a new
        image set): a yes/no question's row ends where its verdict is read; a choice's question
        runs once, its options as branches after it (each sees the question, not the other
        options); a number or free text's question gives its first token (a number's also
        its drafts, see `_decode`), then those decode together. Every row keeps the positions
        it would have alone, so the logits are those of the reference path (each question and
        option run alone), to float rounding."""
        rows: list[list[int]] = []
        parents: dict[int, int] = {}  # a branch row -> the row it continues
        plan: list[tuple[AnswerKind, int, list[list[int]]]] = []  # kind, row, option ids
        for query in queries:
            kind = AnswerKind(query.answer_kind)
            row = len(rows)
            own = self._query_rows(query)
            rows += own
            parents.update(dict.fromkeys(range(row + 1, row + len(own)), row))
            options = self._option_ids(query) if kind == AnswerKind.CHOICE else []
            plan.append((kind, row, options))
        state, flat = self._run_packed(keys, rows, parents)
        ends = np.cumsum([len(r) for r in rows]).tolist()
        last = {row: flat[ends[row] - 1] for _, row, _ in plan}  # the logits of a row's end
        out: list[Answer | None] = [None] * len(queries)
        yes_no = [j for j, (kind, _, _) in enumerate(plan) if kind == AnswerKind.YES_NO]
        if yes_no:
            verdicts = self._verdicts(
                [queries[j] for j in yes_no], torch.stack([last[plan[j][1]] for j in yes_no])
            )
            for j, ans in zip(yes_no, verdicts, strict=True):
                out[j] = ans
        generated = []
        for j, (kind, row, options) in enumerate(plan):
            if kind == AnswerKind.CHOICE:
                per_option = [
                    torch.cat([last[row][None], flat[ends[b] - len(rows[b]) : ends[b]]])
                    for b in range(row + 1, row + 1 + len(options))
                ]
                out[j] = self._pick(queries[j], options, per_option)
            elif kind != AnswerKind.YES_NO:
                generated.append(j)
        if generated:
            heads = []
            for j in generated:
                row = plan[j][1]
                kids = {  # a draft token -> its index among the pass's tokens
                    rows[b][0]: ends[b] - 1 for b, p in parents.items() if p == row
                }
                drafts = self._drafts if plan[j][0] == AnswerKind.NUMBER else []
                heads.append((row, last[row], {t: (i, flat[i]) for t, i in kids.items()}, drafts))
            texts = self._decode(state, heads)
            for j, (text, conf) in zip(generated, texts, strict=True):
                out[j] = _finish(text, conf, plan[j][0])
        return [a for a in out if a is not None]

    def _prefix(self, keys: tuple) -> tuple[_Prefix, bool]:
        """The image prefix of `keys`: the cached one (True), or a new one whose KV cache the
        caller fills (False)."""
        cached = self._prefixes.get_fresh(keys)
        if cached is not None:
            self._count("prefix_hits")
            return cached, True
        self._count("prefix_misses")
        image_embeds = torch.cat([self._batch_features[key] for key in keys])
        return _Prefix(kv=[], ids=self._prefix_ids(len(keys)), image_embeds=image_embeds), False

    def _run_packed(
        self, keys: tuple, rows: list[list[int]], parents: dict[int, int] | None = None
    ) -> tuple[_Packed, torch.Tensor]:
        """`rows` packed into ONE LM pass after the image prefix of `keys` (see
        `_packed_forward`; a new prefix runs in the same pass, and its KV cache is kept), and
        their flat logits [sum of row lengths, vocab]. The returned state continues the pass."""
        prefix, known = self._prefix(keys)
        state = _Packed(prefix=prefix, cache=DynamicCache(), owners=[], row_len=[0] * len(rows))
        embeds = None
        if known:
            state.cache = DynamicCache(ddp_cache_data=list(prefix.kv))
        else:
            embeds = self.model.embed(self._tensor([prefix.ids]), prefix.image_embeds)
        logits = self._packed_forward(state, list(enumerate(rows)), embeds, parents)
        if not known:
            self._keep_prefix(keys, prefix, state.cache)
        return state, logits

    def _keep_prefix(self, keys: tuple, prefix: _Prefix, cache: DynamicCache) -> None:
        """Cache `prefix` under `keys`, with its part of `cache` (the keys and values of its
        tokens, which a pass's first positions hold)."""
        n = len(prefix.ids)
        prefix.kv = [(x.keys[:, :, :n], x.values[:, :, :n]) for x in cache.layers]
        self._prefixes.put(keys, prefix)

    def _lm(
        self,
        embeds: torch.Tensor,
        allowed: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        keep: int,
    ) -> torch.Tensor:
        """Logits [keep, vocab] of the last `keep` of `embeds` [1, new, hidden] run after
        `cache` (updated), each new token seeing the positions `allowed` [new, cached + new]
        marks, at `positions` [new]: from a recorded pass when one fits, else eagerly."""
        # Additive form, so eager and sdpa attention read the same mask.
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        args = (embeds, mask[None, None], positions[None], cache, keep)
        logits = self._lm_graphs(*args) if self._lm_graphs is not None else None
        if logits is None:  # no recorded pass of this shape
            logits = lm_pass(self.model.lm, *args)[0]
        return logits

    def _tensor(self, rows: list[list[int]]) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), self.model.pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(self.device)

    def _run_rows(self, keys: tuple, rows: list[list[int]]) -> torch.Tensor:
        """Logits [R, max_len, vocab] of suffix rows after the image prefix, zero after each
        row's end: packed after the cached prefix (`_run_packed`), or with `reuse_prefix` off,
        each row's whole prompt recomputed (the reference path)."""
        outs = []
        step = max(1, self.config.max_batch)
        width = max(len(r) for r in rows)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            if self.config.reuse_prefix:
                logits = _unpack(self._run_packed(keys, chunk)[1], chunk, width)
            else:
                prefix, known = self._prefix(keys)
                if not known:
                    self._prefixes.put(keys, prefix)
                full = self._tensor([prefix.ids + r for r in chunk])
                images = prefix.image_embeds.repeat(len(chunk), 1)
                embeds = self.model.embed(full, images)
                logits = self.model.lm(inputs_embeds=embeds, use_cache=False).logits
                logits = logits[:, len(prefix.ids) :].float()
                pad = width - logits.shape[1]
                if pad:
                    logits = torch.nn.functional.pad(logits, (0, 0, 0, pad))
            outs.append(logits)
        return torch.cat(outs)

    def _packed_forward(
        self,
        state: _Packed,
        rows: list[tuple[int, list[int]]],
        prefix_embeds: torch.Tensor | None = None,
        parents: dict[int, int] | None = None,
    ) -> torch.Tensor:
        """Run several rows' new tokens as ONE sequence after a shared cache; logits [Q, V].

        Each new token sees the prefix, its own row's earlier tokens in the cache
        (`state.owners` says which row each cached token after the prefix belongs to), its
        own row's new tokens before it and, for a branch row (`parents`: row id -> the row it
        continues), all of its parent's tokens, cached and new; it keeps the position it would
        have in a separate run (a branch continues after its parent), so its logits equal a
        separate run, without copying the prefix's keys and values per row. With
        `prefix_embeds` [1, n_prefix, hidden] (and an empty cache), the prefix itself runs
        first in the same pass, causally and blind to the rows.
        """
        device = self.device
        n_prefix = len(state.prefix.ids)
        parents = parents or {}
        sizes = dict(rows)
        starts = [
            state.row_len[parents[i]] + len(sizes.get(parents[i], ()))
            if i in parents
            else state.row_len[i]
            for i, _ in rows
        ]
        new_owner = torch.tensor([i for i, toks in rows for _ in toks], device=device)
        new_local = torch.tensor([j for _, toks in rows for j in range(len(toks))], device=device)
        new_parent = torch.tensor(
            [parents.get(i, NO_ROW) for i, toks in rows for _ in toks],
            device=device,
        )
        positions = torch.tensor(
            [
                n_prefix + s + j
                for (_, toks), s in zip(rows, starts, strict=True)
                for j in range(len(toks))
            ],
            device=device,
        )
        old_owner = torch.tensor(state.owners, dtype=torch.long, device=device)
        allowed = torch.cat(
            [
                torch.ones(len(new_owner), n_prefix, dtype=torch.bool, device=device),
                (old_owner[None, :] == new_owner[:, None])
                | (old_owner[None, :] == new_parent[:, None]),
                (new_owner[None, :] == new_owner[:, None])
                & (new_local[None, :] <= new_local[:, None])
                | (new_owner[None, :] == new_parent[:, None]),
            ],
            dim=1,
        )
        flat = torch.tensor([t for _, toks in rows for t in toks], device=device)[None]
        embeds = self.model.embed(flat, None)
        if prefix_embeds is not None:
            n = n_prefix
            causal = torch.ones(n, n, dtype=torch.bool, device=device).tril()
            blind = torch.zeros(n, allowed.shape[1] - n, dtype=torch.bool, device=device)
            allowed = torch.cat([torch.cat([causal, blind], dim=1), allowed])
            positions = torch.cat([torch.arange(n, device=device), positions])
            embeds = torch.cat([prefix_embeds, embeds], dim=1)
        logits = self._lm(embeds, allowed, positions, state.cache, len(new_owner))
        state.owners.extend(new_owner.tolist())
        for (i, toks), s in zip(rows, starts, strict=True):
            state.row_len[i] = s + len(toks)
        return logits.float()

    def _verdicts(self, queries: list[Query], last: torch.Tensor) -> list[Answer]:
        """Yes/no answers from the logits [n, vocab] of the token before each verdict."""
        # Each question is read in the answer words it invites (yes/no, true/false, ...) and
        # every other vocabulary's (`_polarity_tokens`); the text is in the invited words.
        readings = [self._reading(q.question) for q in queries]
        logp = last.log_softmax(-1)
        # P(positive words) against the negative words, as log-odds, shifted by the model's
        # calibrated bias (ModelConfig.verdict_bias, 0 for an uncalibrated model).
        log_odds = torch.stack(
            [
                logp[i, self._readings[r][1]].logsumexp(-1)
                - logp[i, self._readings[r][2]].logsumexp(-1)
                for i, r in enumerate(readings)
            ]
        )
        share = torch.sigmoid(log_odds + self.model.config.verdict_bias).tolist()
        out = []
        for p, reading in zip(share, readings, strict=True):
            vocab = VOCABULARIES[reading[0]]
            verdict = p >= 0.5
            out.append(
                Answer(
                    text=vocab.yes if verdict else vocab.no,
                    verdict=verdict,
                    probability=float(p),
                )
            )
        return out

    def _option_ids(self, query: Query) -> list[list[int]]:
        """Each option as the whole answer the model was trained to emit, end-of-answer token
        included. Without it an option that is a prefix of another ("up" of "up and left")
        could never lose: the longer one only adds log-probabilities below zero."""
        out = []
        for option in query.options:
            ids = self._answers.get_fresh(option)
            if ids is None:
                ids = self.model.answer_ids(option, eos=True)
                self._answers.put(option, ids)
            out.append(ids)
        return out

    def _pick(
        self, query: Query, options: list[list[int]], per_option: list[torch.Tensor]
    ) -> Answer:
        """The best option by the log-likelihood of its tokens; `per_option[r]` holds the
        logits [len(option r), vocab] that predict option r's tokens."""
        scores = []
        for logits, opt in zip(per_option, options, strict=True):
            logp = logits.log_softmax(-1)
            targets = torch.tensor(opt, device=logp.device)
            scores.append(logp[torch.arange(len(opt), device=logp.device), targets].sum())
        score_t = torch.stack(scores)
        best = int(score_t.argmax())
        return Answer(
            text=query.options[best],
            choice_index=best,
            probability=float(score_t.softmax(0)[best]),
        )

    def _decode(
        self,
        state: _Packed,
        heads: list[tuple[int, torch.Tensor, dict[int, tuple[int, Any]], list[int]]],
    ) -> list[tuple[str, float]]:
        """Greedy decoding of several rows of a packed pass at once; `heads` holds, per row,
        its id, the logits [vocab] after its last token, the drafts run after that token (a
        token -> (its index in the cache after the prefix, the logits after it)), and the
        tokens to draft after each token it picks.

        A draft is a guessed next token run as a branch of the row in the same pass (a number's
        digits, its point and the answer's leading space: `_drafts`). When greedy decoding
        picks a drafted token, its branch becomes part of the row (its cached key and value,
        its logits), so a pass decodes two tokens; a draft never picked is never seen. The
        tokens are those of plain greedy decoding; only fewer passes run."""
        n = len(heads)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        texts = [""] * n
        rows = [row for row, _, _, _ in heads]
        pending: dict[int, int] = {}  # unfinished row -> its chosen token, not yet run

        def take(j: int, logits: torch.Tensor, kids: dict[int, tuple[int, Any]]) -> None:
            while True:
                step_logp = logits.log_softmax(-1)
                token = int(step_logp.argmax())
                if token == self.model.eos_token_id:
                    return
                tokens[j].append(token)
                logps[j].append(float(step_logp[token]))
                texts[j] = self.model.tokenizer.decode(tokens[j], skip_special_tokens=True)
                if "\n" in texts[j]:
                    texts[j] = texts[j].split("\n", 1)[0]
                    return
                if len(tokens[j]) >= self.config.max_new_tokens:
                    return
                if token not in kids:
                    pending[j] = token
                    return
                index, logits = kids.pop(token)
                state.owners[index] = rows[j]  # the drafted token is the row's next token
                state.row_len[rows[j]] += 1
                kids = {}

        for j, (_, logits, kids, _) in enumerate(heads):
            take(j, logits, dict(kids))
        while pending:
            step, children = [], []
            parents: dict[int, int] = {}
            for j, token in pending.items():
                step.append((rows[j], [token]))
                for draft in heads[j][3]:
                    child = len(state.row_len)
                    state.row_len.append(0)
                    parents[child] = rows[j]
                    children.append((j, draft, child))
                    step.append((child, [draft]))
            base = len(state.owners)
            logits = self._packed_forward(state, step, parents=parents)
            for index, (row, _) in enumerate(step):
                if row in parents:
                    state.owners[base + index] = DROPPED  # a draft not (yet) picked
            at = {row: index for index, (row, _) in enumerate(step)}
            kids: dict[int, dict[int, tuple[int, Any]]] = {j: {} for j in pending}
            for j, draft, child in children:
                kids[j][draft] = (base + at[child], logits[at[child]])
            todo, pending = list(pending), {}
            for j in todo:
                take(j, logits[at[rows[j]]], kids[j])
        return [(t.strip(), _confidence(lp)) for t, lp in zip(texts, logps, strict=True)]

    def _generate(self, keys: tuple, query: Query) -> tuple[str, float]:
        """Greedy decoding of one question by recomputing its whole prompt first."""
        prefix, _ = self._prefix(keys)
        suffix = self._suffix_ids(query.question)
        out = self.model.lm(
            inputs_embeds=self.model.embed(
                self._tensor([prefix.ids + suffix]), prefix.image_embeds
            ),
            use_cache=True,
        )
        tokens: list[int] = []
        logps: list[float] = []
        text = ""
        for _ in range(self.config.max_new_tokens):
            step_logp = out.logits[0, -1].float().log_softmax(-1)
            token = int(step_logp.argmax())
            if token == self.model.eos_token_id:
                break
            tokens.append(token)
            logps.append(float(step_logp[token]))
            text = self.model.tokenizer.decode(tokens, skip_special_tokens=True)
            if "\n" in text:
                text = text.split("\n", 1)[0]
                break
            out = self.model.lm(
                inputs_embeds=self.model.embed(self._tensor([[token]]), None),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return text.strip(), _confidence(logps)


# Row ids that match no row: a row without a parent, and a draft branch nobody picked.
NO_ROW, DROPPED = -1, -2


def _worded(query: Any) -> Any:
    """A yes/no query given only in structured form (subj, relation, obj) gets the first
    template's wording; the caller's Query is not changed."""
    if not isinstance(query, Query) or (
        isinstance(query.question, str) and query.question.strip()
    ):
        return query
    parts = (query.subj, query.relation, query.obj)
    if query.answer_kind != AnswerKind.YES_NO or not all(
        isinstance(p, str) and p.strip() for p in parts
    ):
        return query
    text = STRUCTURED_TEMPLATE.render(*(p.strip() for p in parts))
    return dataclasses.replace(query, question=text)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for answering; a model shared with a training loop keeps its mode.

    A model already in eval mode (`model.eval()` sets every module) is left alone: switching
    walks every module, which costs more than the tiny model's whole LM pass.
    """
    if not model.training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        model.train()


def _unpack(flat: torch.Tensor, rows: list[list[int]], width: int) -> torch.Tensor:
    """Packed logits [sum of row lengths, V] -> [rows, width, V], zero after each row's end."""
    out = torch.zeros(len(rows), width, flat.shape[-1], device=flat.device)
    start = 0
    for i, row in enumerate(rows):
        out[i, : len(row)] = flat[start : start + len(row)]
        start += len(row)
    return out


def _confidence(logps: list[float]) -> float:
    """Geometric-mean probability of the generated tokens."""
    return math.exp(sum(logps) / len(logps)) if logps else 0.0


# The model learns metric answers as bare numbers of metres ("1.13": every metric template asks
# "in metres", sim_data writes two decimals), so a number given without a unit is in metres.
NUMBER_UNIT = "m"


def _finish(text: str, confidence: float, kind: AnswerKind) -> Answer:
    """An Answer from generated text: free text as is, numbers parsed with their unit.

    A number without a unit gets NUMBER_UNIT, in `unit` and in the text ("1.13" -> "1.13 m").
    """
    if kind == AnswerKind.FREE_TEXT:
        return Answer(text=text, probability=confidence)
    parsed = parse_number(text)
    if parsed is None:
        answer = Answer.failure(Status.ERROR, f"the model's answer {text!r} has no number")
        answer.text = text
        return answer
    value, unit = parsed
    if not unit:
        unit, text = NUMBER_UNIT, f"{text.strip()} {NUMBER_UNIT}"
    return Answer(text=text, value=value, unit=unit, probability=confidence)
