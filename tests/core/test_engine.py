"""Engine: cached answers equal recomputed ones, caches work, bad input becomes a status."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from core_helpers import random_image, small_config

from vsre_ros.core.answers import (
    VOCABULARIES,
    AnswerKind,
    Query,
    Status,
    parse_number,
    parse_yes_no,
)
from vsre_ros.core.config import EngineConfig
from vsre_ros.core.engine import LRU, Engine, load_model, resolve_device
from vsre_ros.core.model import VSREModel

RELATIONS = ["left of", "right of", "above", "below", "near", "far from", "behind", "on"]


@pytest.fixture(scope="module")
def engines(tiny_model):
    return Engine(tiny_model), Engine(tiny_model, EngineConfig(reuse_prefix=False))


def _queries(rng, n=8):
    image = random_image(rng)
    return [Query(f"Is the red cup {r} the box?", [image], query_id=r) for r in RELATIONS[:n]]


def test_cached_prefix_gives_the_same_logits_as_recomputing(engines, rng):
    cached, recomputed = engines
    queries = _queries(rng)
    a = cached.next_token_logits(queries)
    b = recomputed.next_token_logits(queries)
    assert a.shape == (8, len(cached.model.tokenizer))
    assert (a - b).abs().max() <= 1e-4


def test_cached_and_recomputed_answers_agree_for_every_kind(engines, rng):
    image = random_image(rng)
    queries = _queries(rng) + [
        Query("Which is nearer?", [image], AnswerKind.CHOICE, ["the red cup", "B", "the box"]),
        Query("How far apart are they?", [image], AnswerKind.NUMBER),
        Query("Describe them.", [image, random_image(rng)], AnswerKind.FREE_TEXT),
    ]
    cached, recomputed = engines
    for a, b in zip(cached.answer(queries), recomputed.answer(queries), strict=True):
        assert a.status == b.status
        assert a.text == b.text
        assert a.choice_index == b.choice_index
        assert math.isclose(a.probability, b.probability, abs_tol=1e-4)


def test_the_fast_path_answers_as_the_reference_path(tiny_model, tmp_path, rng):
    """A model the engine loads itself runs the fast path: eval mode set once, the vision side
    traced, a new frame's prefix in one pass with its questions. Its answers equal those of
    the reference path (no tracing, the whole prompt recomputed per question), for a new
    camera-sized frame and then for the same frame already encoded."""
    tiny_model.save_pretrained(tmp_path / "m")
    fast = Engine(tmp_path / "m")
    reference = Engine(tmp_path / "m", EngineConfig(reuse_prefix=False, trace=False))
    # The path under test: recorded vision side and LM passes, eval mode set once.
    assert fast._vision is not None and fast._lm_graphs is not None
    assert not fast.model.training
    frame = random_image(rng, 480, 640)
    questions = _queries(rng)
    queries = [Query(q.question, [frame]) for q in questions] + [
        Query("Which is nearer?", [frame], AnswerKind.CHOICE, ["the red cup", "the box"]),
        Query("How far apart are they?", [frame], AnswerKind.NUMBER),
    ]
    expected = reference.answer(queries)
    assert [a.status for a in expected[:-1]] == [Status.OK] * (len(queries) - 1)
    for answers in (fast.answer(queries[:1]) + fast.answer(queries[1:]), fast.answer(queries)):
        for a, b in zip(answers, expected, strict=True):
            assert a.status == b.status  # a random model's "number" may hold none: ERROR
            assert (a.text, a.verdict, a.choice_index) == (b.text, b.verdict, b.choice_index)
            assert math.isclose(a.probability, b.probability, abs_tol=1e-5)
    assert fast.stats()["feature_misses"] == 1 and fast.stats()["prefix_misses"] == 1


def test_traced_vision_equals_the_eager_model_and_falls_back_for_other_batches(tiny_model, rng):
    from vsre_ros.core.traced import trace_vision

    traced = trace_vision(tiny_model)
    assert traced is not None
    with torch.inference_mode():
        for n in (1, 3):  # one image: the recording; three: the eager fallback
            pixels = tiny_model.preprocess([random_image(rng) for _ in range(n)])
            assert traced.fits(pixels) == (n == 1)
            assert torch.equal(traced(pixels), tiny_model.encode_images(pixels))


def test_traced_lm_pads_to_a_recorded_shape_and_updates_the_cache_like_the_lm(tiny_model):
    from transformers import DynamicCache

    from vsre_ros.core.traced import trace_lm

    traced = trace_lm(tiny_model)
    assert traced is not None
    torch.manual_seed(1)
    prefix, hidden = traced.prefix, tiny_model.hidden_size
    with torch.inference_mode():
        for keep in (5, 16, 17):  # padded to 16, recorded as is, padded to 32
            # A new frame's pass, one after its cache, and a decoding step after a longer
            # cache (padded up to a recorded length).
            for cached in (0, prefix, prefix + 5):
                new = keep + (prefix if cached == 0 else 0)
                embeds = torch.randn(1, new, hidden)
                mask = torch.zeros(1, 1, new, cached + new)
                mask[..., cached:] = torch.full((new, new), torch.finfo(torch.float32).min).triu(1)
                positions = torch.arange(cached, cached + new)[None]
                past = [
                    (torch.randn(1, *shape[:1], cached, shape[1]),) * 2
                    for shape in traced.kv_shape
                ]
                caches = [
                    DynamicCache(ddp_cache_data=past) if cached else DynamicCache() for _ in "ab"
                ]
                got = traced(embeds, mask, positions, caches[0], keep)
                want = tiny_model.lm(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=caches[1],
                    use_cache=True,
                    logits_to_keep=keep,
                ).logits[0]
                assert got is not None and (got - want).abs().max() <= 1e-4
                for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
                    assert a.keys.shape == b.keys.shape and (a.keys - b.keys).abs().max() <= 1e-4
        # Longer than the last bucket, or after a cache longer than any recorded: not recorded.
        n = traced.buckets[-1] + 1
        embeds = torch.randn(1, n, hidden)
        assert (
            traced(embeds, torch.zeros(1, 1, n, n), torch.arange(n)[None], DynamicCache(), n)
            is None
        )
        cached = traced.rooms[-1] + 1
        long = DynamicCache(
            ddp_cache_data=[(torch.randn(1, h, cached, d),) * 2 for h, d in traced.kv_shape]
        )
        one = torch.randn(1, 1, hidden)
        assert (
            traced(one, torch.zeros(1, 1, 1, cached + 1), torch.tensor([[cached]]), long, 1)
            is None
        )


def test_object_tokens_are_part_of_every_images_prefix(rng):
    torch.manual_seed(0)
    model = VSREModel(small_config("channel", object_tokens=3)).eval()
    assert model.num_image_tokens == 16 + 3
    two = [random_image(rng), random_image(rng)]
    queries = _queries(rng, 3) + [Query("Is the cup in both images?", two)]
    cached, recomputed = Engine(model), Engine(model, EngineConfig(reuse_prefix=False))
    assert (
        cached.next_token_logits(queries) - recomputed.next_token_logits(queries)
    ).abs().max() <= 1e-4
    answers = cached.answer(queries)
    assert [a.status for a in answers] == [Status.OK] * 4


def test_packed_greedy_decoding_matches_one_by_one(engines, rng):
    image = random_image(rng)
    questions = ["How far is the cup?", "Describe the scene.", "Where is the box?"]
    kinds = [AnswerKind.NUMBER, AnswerKind.FREE_TEXT, AnswerKind.FREE_TEXT]
    queries = [Query(q, [image], k) for q, k in zip(questions, kinds, strict=True)]
    cached, recomputed = engines
    together = cached.answer(queries)
    alone = [recomputed.answer([q])[0] for q in queries]
    for a, b in zip(together, alone, strict=True):
        assert a.text == b.text and a.status == b.status
        assert math.isclose(a.probability, b.probability, abs_tol=1e-4)
    assert all(a.text for a in together)


def test_a_training_model_keeps_its_mode(rng):
    model = VSREModel(small_config())
    model.freeze(2)  # LoRA dropout makes train mode random once the adapter is non-zero
    with torch.no_grad():
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    model.train()
    engine = Engine(model)
    q = _queries(rng, 2)
    first = [a.probability for a in engine.answer(q)]
    engine.clear_cache()
    assert [a.probability for a in engine.answer(q)] == first
    assert model.training


def test_yes_no_answer_fields(engines, rng):
    answers = engines[0].answer(_queries(rng, 3))
    for ans, rel in zip(answers, RELATIONS, strict=False):
        assert ans.status == Status.OK
        assert 0.0 <= ans.probability <= 1.0
        assert ans.verdict == (ans.probability >= 0.5)
        assert ans.text == ("yes" if ans.verdict else "no")
        assert ans.query_id == rel
        assert ans.model_id == "test-tiny"
        assert ans.latency_model_ms > 0


def test_choice_answer_is_one_of_the_options(engines, rng):
    options = ["top left", "top right", "bottom left"]
    q = Query("Where is the cup?", [random_image(rng)], AnswerKind.CHOICE, options)
    (ans,) = engines[0].answer([q])
    assert ans.status == Status.OK
    assert ans.text == options[ans.choice_index]
    assert 0.0 < ans.probability <= 1.0


def test_choice_scores_each_option_as_a_whole_answer(tiny_model, engines, rng):
    """An option that is a prefix of another ("up" of "up and left") must pay for ending there:
    each option's score is the log-likelihood of the full answer, end token included."""
    options = ["up", "up and left", "left"]
    image = random_image(rng)
    question = "In which direction is the cup from the box?"
    q = Query(question, [image], AnswerKind.CHOICE, options)
    (ans,) = engines[0].answer([q])
    batch = tiny_model.build_batch(
        [{"images": [image], "question": question, "answer": o} for o in options]
    )
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
        logp = tiny_model(**inputs).logits.float().log_softmax(-1)
    labels = batch["labels"]
    known = labels[:, 1:] != -100
    picked = logp[:, :-1].gather(-1, labels[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)
    scores = (picked * known).sum(-1)
    assert ans.choice_index == int(scores.argmax())
    assert ans.probability == pytest.approx(float(scores.softmax(0).max()), abs=1e-4)


def test_answers_are_deterministic(engines, rng):
    image = random_image(rng, 40, 52)  # a frame no other test asks about (nothing cached)
    q = [Query("What is it?", [image], AnswerKind.FREE_TEXT), Query("Is it?", [image])]
    first = engines[0].answer(q)
    engines[0].clear_cache()
    second = engines[0].answer(q)
    assert [a.text for a in first] == [a.text for a in second]
    assert [a.probability for a in first] == [a.probability for a in second]
    # A new frame's prefix runs in one pass with its first questions, an encoded one's is
    # read from the cache: the same answers, to float rounding (summation order).
    third = engines[0].answer(q)
    assert [a.text for a in third] == [a.text for a in second]
    for a, b in zip(third, second, strict=True):
        assert math.isclose(a.probability, b.probability, abs_tol=1e-6)


def test_a_frame_is_encoded_once_per_key(tiny_model, rng, monkeypatch):
    engine = Engine(tiny_model)
    calls = []
    original = tiny_model.encode_images

    def counting(pixels):
        calls.append(next(iter(pixels.values())).shape[0])
        return original(pixels)

    monkeypatch.setattr(tiny_model, "encode_images", counting)
    image = random_image(rng)
    keyed = [Query(f"Is it {r}?", [image], image_keys=[("cam", 7)]) for r in RELATIONS]
    engine.answer(keyed)
    engine.answer(keyed[:2])
    assert calls == [1]
    # Without keys the pixels are the key: an equal copy hits, another frame misses.
    engine.answer([Query("Is it?", [image.copy()])])
    engine.answer([Query("Is it?", [random_image(rng)])])
    assert calls == [1, 1, 1]
    stats = engine.stats()
    assert stats["queries"] == 12 and stats["batches"] == 4
    assert stats["feature_misses"] == 3 and stats["feature_hits"] == 2  # per image looked up
    assert stats["prefix_misses"] == 3 and stats["prefix_hits"] == 1


def test_feature_cache_forgets_least_recently_used(tiny_model, rng):
    engine = Engine(tiny_model, EngineConfig(feature_cache_size=2))
    images = [random_image(rng) for _ in range(3)]
    answers = engine.answer([Query("Is it?", [im]) for im in images])
    assert all(a.status == Status.OK for a in answers)
    assert len(engine._features) == 2
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.get_fresh("a")
    lru.put("c", 3)
    assert list(lru) == ["a", "c"]


@pytest.mark.parametrize(
    "query, status, message",
    [
        (Query("", [np.zeros((8, 8, 3), np.uint8)]), Status.BAD_QUESTION, "empty"),
        (Query("   ", [np.zeros((8, 8, 3), np.uint8)]), Status.BAD_QUESTION, "empty"),
        (Query("Is <image> it?", [np.zeros((8, 8, 3), np.uint8)]), Status.BAD_QUESTION, "<image>"),
        (
            Query("Which?", [np.zeros((8, 8, 3), np.uint8)], AnswerKind.CHOICE, ["a"]),
            Status.BAD_QUESTION,
            "at least two",
        ),
        (Query("Is it?", []), Status.BAD_IMAGE, "no image"),
        (Query("Is it?", [np.zeros((8, 8, 3), np.float32)]), Status.BAD_IMAGE, "uint8"),
        (Query("Is it?", [np.zeros((8, 8, 4), np.uint8)]), Status.BAD_IMAGE, "HxWx3"),
        (Query("Is it?", [np.zeros((0, 8, 3), np.uint8)]), Status.BAD_IMAGE, "zero size"),
        (Query("Is it?", [None]), Status.BAD_IMAGE, "numpy array"),
        (
            Query("Is it?", [np.zeros((8, 8, 3), np.uint8)], image_keys=[1, 2]),
            Status.BAD_IMAGE,
            "one key per image",
        ),
        ("Is it left?", Status.BAD_QUESTION, "expected a Query"),
        (Query("Is it?", np.zeros((8, 8, 3), np.uint8)), Status.BAD_IMAGE, "must be a list"),
        (Query(None, [np.zeros((8, 8, 3), np.uint8)]), Status.BAD_QUESTION, "empty"),
    ],
)
def test_bad_input_gets_a_status_and_message_never_an_exception(engines, query, status, message):
    good = Query("Is it?", [np.zeros((8, 8, 3), np.uint8)], query_id="good")
    bad, ok = engines[0].answer([query, good])
    assert bad.status == status
    assert message in bad.error
    assert ok.status == Status.OK and ok.query_id == "good"


def test_overlong_question_and_too_many_images(tiny_model):
    engine = Engine(tiny_model, EngineConfig(max_question_chars=10, max_images=1))
    img = np.zeros((8, 8, 3), np.uint8)
    long_q, two = engine.answer([Query("x" * 11, [img]), Query("Is it?", [img, img])])
    assert long_q.status == Status.BAD_QUESTION and "limit is 10" in long_q.error
    assert two.status == Status.BAD_IMAGE and "limit is 1" in two.error


def test_concurrent_callers_get_their_own_answers(engines, rng):
    engine = engines[0]
    queries = _queries(rng)
    expected = [a.probability for a in engine.answer(queries)]
    results: dict[int, list] = {}

    def ask(i):
        results[i] = engine.answer([queries[i]])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, query in enumerate(queries):
        (ans,) = results[i]
        assert ans.query_id == query.query_id
        assert math.isclose(ans.probability, expected[i], abs_tol=1e-5)


def test_load_switches_model_and_adapter(tmp_path, rng):
    torch.manual_seed(3)
    model = VSREModel(small_config(name="first"))
    engine = Engine(model)
    assert engine.model_id == "first"
    other = VSREModel(small_config(name="second"))
    other.freeze(2)
    with torch.no_grad():
        for name, p in other.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    other.lm.save_pretrained(tmp_path / "lora-a")
    other.drop_adapter()
    other.save_pretrained(tmp_path / "second")
    engine.load(tmp_path / "second")
    assert engine.model_id == "second"
    q = _queries(rng, 1)
    before = engine.answer(q)[0].probability
    engine.load_adapter(tmp_path / "lora-a")
    assert engine.model_id == "second+lora-a"
    after = engine.answer(q)[0].probability
    assert after != before
    # The engine loaded "second" itself, so its LM passes were traced; they are traced again
    # with the adapter, and answer as an engine that traces nothing.
    reference = Engine(tmp_path / "second", EngineConfig(trace=False))
    reference.load_adapter(tmp_path / "lora-a")
    assert math.isclose(after, reference.answer(q)[0].probability, abs_tol=1e-5)
    with pytest.raises(ValueError, match="neither a directory nor a preset.*vsre-tiny"):
        engine.load("no-such-model")


def test_device_and_dtype_come_from_the_config():
    assert resolve_device(EngineConfig(device="cpu")) == (torch.device("cpu"), torch.float32)
    assert resolve_device(EngineConfig(device="cpu", dtype="bfloat16"))[1] == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        resolve_device(EngineConfig(dtype="int3"))
    with pytest.raises(ValueError, match="neither a directory nor a preset"):
        load_model("/no/such/dir")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1.25 m", (1.25, "m")),
        ("about 30 cm away", (0.3, "m")),
        ("2 metres", (2.0, "m")),
        ("45 degrees", (45.0, "deg")),
        ("3", (3.0, "")),
        ("far away", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


def test_parse_yes_no_follows_vlmevalkit():
    assert parse_yes_no("Yes, it is.") is True
    assert parse_yes_no("False") is False
    assert parse_yes_no("yes and no") is None
    assert parse_yes_no("maybe") is None


def test_verdict_is_read_after_a_shared_leading_space_token(rng):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", " ", "yes", "no", "true", "false"]
    words += ["USER:", "ASSISTANT:", "\n", "Is", "it", "left?", "or", "false?"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    # Spaces and newlines become tokens of their own, like a sentencepiece "▁" piece.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r" |\n"), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<image>"],
    )
    model = VSREModel(small_config(tokenizer="lm"), tokenizer=tok).eval()
    engine = Engine(model)
    space = tok.convert_tokens_to_ids(" ")
    # "correct"/"incorrect" and "right"/"wrong" are both <unk> here: those questions fall back,
    # and no reading adds them.
    assert engine._readings[("yes_no", "true_false")][0] == [space]
    assert set(engine._readings) == {("yes_no",), ("true_false",), ("yes_no", "true_false")}
    image = random_image(rng)
    # Every question is read in yes/no and true/false, the words it names first.
    asked = (
        ("Is it left?", ("yes", "true", "no", "false")),
        ("Is it true or false?", ("true", "yes", "false", "no")),
    )
    for question, words in asked:
        (ans,) = engine.answer([Query(question, [image])])
        ids = model.prefix_ids(1) + model.suffix_ids(question) + [space]
        with torch.no_grad():
            pixels = model.preprocess([image])
            logits = model(torch.tensor([ids]), pixels).logits[0, -1].softmax(-1)
        ids = [tok.convert_tokens_to_ids(w) for w in words]
        half = len(ids) // 2
        yes, no = logits[ids[:half]].sum(), logits[ids[half:]].sum()
        assert math.isclose(ans.probability, float(yes / (yes + no)), abs_tol=1e-5)
        assert ans.text == words[0 if ans.verdict else half]


def test_a_verdict_is_read_in_every_vocabulary_the_tokenizer_knows(tiny_model, rng):
    """A question inviting words the model may never have answered in ("Right or wrong?") is
    read from the mass on every vocabulary's positive against negative words; its text keeps
    the words it invited."""
    engine = Engine(tiny_model)
    tok = tiny_model.tokenizer

    def first(words):
        return sorted(tok.encode(" " + w, add_special_tokens=False)[0] for w in words)

    positive = first(v.yes for v in VOCABULARIES.values())
    negative = first(v.no for v in VOCABULARIES.values())
    for reading in engine._readings.values():
        assert (sorted(reading[1]), sorted(reading[2])) == (positive, negative)
    image = random_image(rng)
    question = "The cup is left of the box. Right or wrong?"
    (ans,) = engine.answer([Query(question, [image])])
    lead, _, _ = engine._readings[("right_wrong",)]
    ids = tiny_model.prefix_ids(1) + tiny_model.suffix_ids(question) + lead
    with torch.no_grad():
        logits = tiny_model(torch.tensor([ids]), tiny_model.preprocess([image])).logits[0, -1]
    p = logits.softmax(-1)
    yes, no = p[positive].sum(), p[negative].sum()
    assert math.isclose(ans.probability, float(yes / (yes + no)), abs_tol=1e-5)
    assert ans.text == ("right" if ans.verdict else "wrong")


def test_a_model_failure_becomes_an_error_answer(tiny_model, rng, monkeypatch):
    engine = Engine(tiny_model)

    def broken(pixels):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tiny_model, "encode_images", broken)
    bad = Query("", [random_image(rng)])
    answers = engine.answer([Query("Is it?", [random_image(rng)], query_id="q1"), bad])
    assert answers[0].status == Status.ERROR and "out of memory" in answers[0].error
    assert answers[0].query_id == "q1"
    assert answers[1].status == Status.BAD_QUESTION


def test_structured_yes_no_query_is_worded_by_the_first_template(engines, rng):
    from vsre_ros.core.engine import STRUCTURED_TEMPLATE

    image = random_image(rng)
    structured = Query("", [image], subj="red cup", relation="left of", obj="box")
    worded = Query(STRUCTURED_TEMPLATE.render("red cup", "left of", "box"), [image])
    a, b = engines[0].answer([structured, worded])
    assert a.status == Status.OK and math.isclose(a.probability, b.probability, abs_tol=1e-5)
    assert structured.question == ""
    (missing,) = engines[0].answer([Query("", [image], subj="cup", relation="left of")])
    assert missing.status == Status.BAD_QUESTION


def test_verdict_bias_shifts_the_yes_log_odds(tiny_model, rng):
    engine = Engine(tiny_model)
    queries = _queries(rng, 4)
    raw = [a.probability for a in engine.answer(queries)]
    tiny_model.config.verdict_bias = 1.5
    try:
        shifted = engine.answer(queries)
    finally:
        tiny_model.config.verdict_bias = 0.0
    for p, a in zip(raw, shifted, strict=True):
        assert math.log(a.probability / (1 - a.probability)) == pytest.approx(
            math.log(p / (1 - p)) + 1.5, abs=1e-3
        )
        assert a.verdict == (a.probability >= 0.5)


def _spy_passes(engine, monkeypatch) -> list[int]:
    """The token count of every packed LM pass `engine` runs from now on."""
    passes: list[int] = []
    real = engine._packed_forward

    def spy(state, rows, *args, **kwargs):
        passes.append(sum(len(toks) for _, toks in rows))
        return real(state, rows, *args, **kwargs)

    monkeypatch.setattr(engine, "_packed_forward", spy)
    return passes


def test_a_frames_yes_no_and_choice_questions_share_one_pass_and_score_as_per_option(
    tiny_model, rng, monkeypatch
):
    """A new frame's yes/no and choice questions run in ONE LM pass with its prefix: each
    choice's question once, its options as branches after it. Answers and scores equal the
    reference path's, where every option reruns the whole prompt."""
    engine = Engine(tiny_model)
    reference = Engine(tiny_model, EngineConfig(reuse_prefix=False))
    image = random_image(rng)
    options = ["up", "up and left", "left", "the red cup"]  # one a prefix of another
    queries = _queries(rng, 3) + [
        Query("In which direction is the cup from the box?", [image], AnswerKind.CHOICE, options),
        Query("Which is nearer?", [image], AnswerKind.CHOICE, ["the red cup", "the box"]),
    ]
    queries = [Query(q.question, [image], q.answer_kind, q.options) for q in queries]
    passes = _spy_passes(engine, monkeypatch)
    got, expected = engine.answer(queries), reference.answer(queries)
    assert len(passes) == 1
    for a, b in zip(got, expected, strict=True):
        assert a.status == b.status == Status.OK
        assert (a.text, a.verdict, a.choice_index) == (b.text, b.verdict, b.choice_index)
        assert math.isclose(a.probability, b.probability, abs_tol=1e-5)


def test_drafted_number_decoding_equals_greedy_decoding_in_fewer_passes(
    tiny_model, rng, monkeypatch
):
    """A number answer's drafted tokens (verified against the greedy choice) decode two tokens
    a pass; the text and confidence are plain greedy decoding's. With every token drafted,
    every pass keeps its draft."""
    engine = Engine(tiny_model)
    reference = Engine(tiny_model, EngineConfig(reuse_prefix=False))
    image = random_image(rng)
    questions = ["How far is the cup?", "How far apart are they?", "How big is the box?"]
    queries = [Query(q, [image], AnswerKind.NUMBER) for q in questions]
    expected = reference.answer(queries)
    every = [t for t in range(len(tiny_model.tokenizer)) if t != tiny_model.image_token_id]
    for drafts in (engine._drafts, every):
        engine.clear_cache()
        monkeypatch.setattr(engine, "_drafts", drafts)
        passes = _spy_passes(engine, monkeypatch)
        got = engine.answer(queries)
        for a, b in zip(got, expected, strict=True):
            assert (a.status, a.text) == (b.status, b.text)
            assert math.isclose(a.probability, b.probability, abs_tol=1e-5)
        monkeypatch.undo()
    # All drafted: each pass decoded two tokens (the random model never stops by itself).
    assert all(len(a.text) >= engine.config.max_new_tokens for a in expected)
    assert len(passes) == engine.config.max_new_tokens // 2


def test_a_question_asked_twice_in_a_batch_is_answered_once(tiny_model, rng, monkeypatch):
    engine = Engine(tiny_model)
    image = random_image(rng)
    options = ["left", "right"]
    queries = [
        Query("Is the cup left of the box?", [image], query_id="a"),
        Query("Where is the cup?", [image], AnswerKind.CHOICE, options, query_id="b"),
        Query("Is the cup left of the box?", [image], query_id="c"),
        Query("Where is the cup?", [image], AnswerKind.CHOICE, options, query_id="d"),
        Query("Where is the cup?", [image], AnswerKind.CHOICE, ["right", "left"], query_id="e"),
    ]
    asked: list[int] = []
    real = engine._answer_chunk
    monkeypatch.setattr(
        engine, "_answer_chunk", lambda keys, qs: asked.append(len(qs)) or real(keys, qs)
    )
    answers = engine.answer(queries)
    assert asked == [3]  # the options in another order are another question
    assert [a.query_id for a in answers] == ["a", "b", "c", "d", "e"]
    assert (answers[0].text, answers[0].probability) == (answers[2].text, answers[2].probability)
    assert answers[1].choice_index == answers[3].choice_index
    assert answers[4].text == answers[1].text
    assert len({id(a) for a in answers}) == 5 and answers[0].objects is not answers[2].objects


def test_new_frames_in_one_call_each_run_the_traced_vision_side(tiny_model, tmp_path, rng):
    """The traced vision side holds one image; two new frames in a batch (the latest frame
    changed while clients asked) run it once each instead of the eager model."""
    tiny_model.save_pretrained(tmp_path / "m")
    engine = Engine(tmp_path / "m")
    vision = engine._vision
    traced, calls = vision._traced, []

    def counted(*pixels):
        calls.append(pixels[0].shape[0])
        return traced(*pixels)

    def eager(pixels):
        raise AssertionError("the eager vision side ran")

    vision._traced, vision._eager = counted, eager
    frames = [random_image(rng), random_image(rng)]
    answers = engine.answer([Query("Is the cup left of the box?", [f]) for f in frames])
    assert [a.status for a in answers] == [Status.OK] * 2
    assert calls == [1, 1]


def test_a_prepared_frame_is_answered_as_an_encoded_one(tiny_model, tmp_path, rng, monkeypatch):
    """`prepare` encodes a frame before anyone asks (the server's `preencode_hz`): the questions
    about it then run no vision side and no prefix pass, and answer as the reference path does
    about the same frame new. The fast path's prefix-only pass runs eagerly (no recording of
    that shape), and the traced question pass continues its cache."""
    tiny_model.save_pretrained(tmp_path / "m")
    fast = Engine(tmp_path / "m")
    reference = Engine(tmp_path / "m", EngineConfig(reuse_prefix=False, trace=False))
    frame = random_image(rng, 480, 640)
    queries = [Query(q.question, [frame], image_keys=[("cam", 3)]) for q in _queries(rng)]
    queries.append(Query("Which is nearer?", [frame], AnswerKind.CHOICE, ["the cup", "the box"]))
    queries[-1].image_keys = [("cam", 3)]
    expected = reference.answer(queries)
    assert fast.prepare(frame, ("cam", 3))
    assert not fast.prepare(frame, ("cam", 3))  # already prepared: nothing to do
    encoded = []
    monkeypatch.setattr(fast, "_encode_missing", lambda *a: encoded.append(a))
    for answers in (fast.answer(queries[:1]), fast.answer(queries)):
        for a, b in zip(answers, expected, strict=False):
            assert (a.status, a.text, a.choice_index) == (b.status, b.text, b.choice_index)
            assert math.isclose(a.probability, b.probability, abs_tol=1e-5)
    stats = fast.stats()
    assert stats["prepared"] == 1 and stats["feature_misses"] == 1
    assert stats["prefix_misses"] == 1 and stats["prefix_hits"] == 2


def test_prepare_refuses_a_bad_image_and_survives_a_model_failure(tiny_model, rng, monkeypatch):
    engine = Engine(tiny_model)
    assert not engine.prepare(np.zeros((4, 4), np.uint8), ("cam", 1))  # not HxWx3
    monkeypatch.setattr(engine.model, "encode_images", lambda *_: 1 / 0)
    assert not engine.prepare(random_image(rng), ("cam", 2))  # logged, not raised
    monkeypatch.undo()
    answer = engine.answer([Query("Is it?", [random_image(rng)], image_keys=[("cam", 2)])])[0]
    assert answer.status == Status.OK
    assert "prepared" not in engine.stats()
