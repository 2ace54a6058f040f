"""The engines the server node can run, by id: the VSRE model, or a stub without a model.

Both give the node the same things: `answer(list[Query]) -> list[Answer]`, `load(ref)`
(switch model or adapter at runtime), `model_id`, and `prepare(image, key, depth, k)` (encode a
camera frame before it is asked about; the server's `preencode_hz`). The stub answers from the
question's structured form without looking at pixels, in a fixed time; it exists so the ROS
plumbing can be measured (bench/bench_ros.py: overhead on top of the engine) and soak-tested
without a model.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from vsre_ros.core.answers import Answer, AnswerKind, Query, Status


class EngineLike(Protocol):
    """What the server node needs from an engine."""

    model_id: str  # id reported in answers
    note: str  # one line saying which weights were loaded from where
    random_weights: bool  # True when no trained weights were found (answers are meaningless)

    def answer(self, queries: list[Query]) -> list[Answer]: ...

    def load(self, model_ref: str, adapter: str | None = None) -> None: ...

    def prepare(self, image: Any, key: Any, depth: Any = None, k: Any = None) -> bool: ...


class StubEngine:
    """Answers without a model: a deterministic function of the question, after a fixed delay.

    Model refs: "stub" (no delay) or "stub:<ms>" (that many milliseconds per engine call).
    """

    def __init__(self, model_ref: str = "stub", lora: str = "", engine_config: Any = None):
        self.delay_s = 0.0
        self.model_id = ""
        self.note = "stub engine: answers without a model"
        self.random_weights = False
        self.prepared: list[Any] = []  # the keys of the frames `prepare` was given, in order
        self.load(model_ref, lora or None)

    def load(self, model_ref: str, adapter: str | None = None) -> None:
        name, _, ms = model_ref.partition(":")
        if name != "stub" or (ms and not ms.replace(".", "", 1).isdigit()):
            raise ValueError(
                f"the stub engine knows models 'stub' and 'stub:<ms per call>', not {model_ref!r}"
            )
        if adapter:
            raise ValueError("the stub engine has no LoRA adapters; leave `lora` empty")
        self.delay_s = float(ms or 0) / 1000.0
        self.model_id = model_ref

    def answer(self, queries: list[Query]) -> list[Answer]:
        start = time.perf_counter()
        if self.delay_s:
            time.sleep(self.delay_s)
        answers = [self._one(q) for q in queries]
        ms = (time.perf_counter() - start) * 1000.0
        for a, q in zip(answers, queries, strict=True):
            a.model_id, a.latency_model_ms, a.query_id = self.model_id, ms, q.query_id
        return answers

    def prepare(self, image: Any, key: Any, depth: Any = None, k: Any = None) -> bool:
        """Takes the stub's delay, as a model's encoding would, and records `key`."""
        if self.delay_s:
            time.sleep(self.delay_s)
        self.prepared.append(key)
        return True

    @staticmethod
    def _one(query: Query) -> Answer:
        digest = hashlib.sha256(query.question.encode()).digest()
        p = digest[0] / 255.0
        if query.answer_kind == AnswerKind.YES_NO:
            yes = p >= 0.5
            return Answer(text="yes" if yes else "no", verdict=yes, probability=p)
        if query.answer_kind == AnswerKind.CHOICE:
            if not query.options:
                return Answer.failure(Status.BAD_QUESTION, "a choice question needs options")
            index = digest[1] % len(query.options)
            return Answer(text=query.options[index], choice_index=index, probability=p)
        if query.answer_kind == AnswerKind.NUMBER:
            value = round(0.1 + 3.0 * p, 2)
            return Answer(text=f"{value} m", value=value, unit="m", probability=p)
        return Answer(text="unknown", probability=p)


EMBEDDED_MODELS = Path(__file__).resolve().parents[1] / "models"  # vsre_ros/models/<preset>/


def resolve_model_ref(model_ref: str) -> tuple[str, str, bool]:
    """(what to load, a note for the log, whether the weights are random) for `model`.

    A preset id loads the package's trained weights from vsre_ros/models/<id>/ when they are
    there; otherwise the preset's untrained random weights, which the note says plainly.
    """
    from vsre_ros.core.config import PRESETS
    from vsre_ros.core.model import CONFIG_FILE

    embedded = EMBEDDED_MODELS / model_ref
    if model_ref in PRESETS and (embedded / CONFIG_FILE).is_file():
        return str(embedded), f"model {model_ref!r}: trained weights from {embedded}", False
    if model_ref in PRESETS:
        note = (
            f"model {model_ref!r}: no trained weights at {embedded}; using the preset's RANDOM "
            "weights (answers are meaningless; train one with `vsre train` or pass a checkpoint)"
        )
        return model_ref, note, True
    return model_ref, f"model {model_ref!r}: checkpoint directory", False


class VsreEngine:
    """The core Engine, with `model` parameter values resolved as `resolve_model_ref` says."""

    def __init__(self, model_ref: str, lora: str, engine_config: Any) -> None:
        from vsre_ros.core.engine import Engine

        ref, self.note, self.random_weights = resolve_model_ref(model_ref)
        self.engine = Engine(ref, engine_config)
        if lora:
            self.engine.load_adapter(lora)

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    def load(self, model_ref: str, adapter: str | None = None) -> None:
        ref, note, random_weights = resolve_model_ref(model_ref)
        self.engine.load(ref, adapter=adapter or None)
        self.note, self.random_weights = note, random_weights

    def answer(self, queries: list[Query]) -> list[Answer]:
        return self.engine.answer(queries)

    def prepare(self, image: Any, key: Any, depth: Any = None, k: Any = None) -> bool:
        return self.engine.prepare(image, key, depth, k)


# engine registry id -> factory(model_ref, lora, engine_config)
ENGINE_BACKENDS: dict[str, Callable[[str, str, Any], EngineLike]] = {
    "vsre": VsreEngine,
    "stub": StubEngine,
}


def make_engine(backend: str, model_ref: str, lora: str, engine_config: Any) -> EngineLike:
    """Build and load an engine; ValueError for an unknown backend id."""
    try:
        factory = ENGINE_BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown engine_backend {backend!r}; known: {sorted(ENGINE_BACKENDS)}"
        ) from None
    return factory(model_ref, lora, engine_config)
