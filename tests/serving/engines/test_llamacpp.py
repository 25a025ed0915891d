"""LlamaCppEngine with the real SmolLM2-135M-Instruct (Q4_1 GGUF).

Independent checks use llama-cpp-python's own high-level `Llama` (its
tokenizer, and its one-sequence generator) and a plain jinja2 rendering of the
GGUF's chat template."""

from __future__ import annotations

import asyncio
import json
from typing import Iterator

import jinja2
import pytest

from nodeai.errors import ContextLengthExceeded, EngineUnavailable, InvalidGenerationParams, ModelNotServed
from nodeai.serving.engines import packaged
from nodeai.serving.engines.base import ChatMessage, Completion, Delta, GenerationRequest, SamplingParams
from nodeai.serving.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    e = LlamaCppEngine(LlamaCppConfig(n_ctx=2048, n_seq_max=8))
    e.start_sync()
    yield e
    e.close_sync()


@pytest.fixture(scope="module")
def reference() -> Iterator[object]:
    """llama-cpp-python's high-level Llama on the same file, one sequence."""
    from llama_cpp import Llama

    # NOTE: same flash-attention setting as the engine: the kernels round differently.
    llm = Llama(model_path=str(packaged.smollm2_gguf()), n_ctx=512, n_threads=1, flash_attn=True, verbose=False)
    yield llm
    llm.close()


def chat(text: str, **params: object) -> GenerationRequest:
    return GenerationRequest(model=MODEL, messages=(ChatMessage("user", text),), params=SamplingParams(**params))


def prompt(text: str, **params: object) -> GenerationRequest:
    return GenerationRequest(model=MODEL, prompt=text, params=SamplingParams(**params))


def run(engine: LlamaCppEngine, request: GenerationRequest) -> Completion:
    return asyncio.run(engine.complete(request))


def collect(engine: LlamaCppEngine, request: GenerationRequest) -> list[Delta]:
    async def main() -> list[Delta]:
        return [d async for d in engine.stream(request)]

    return asyncio.run(main())


def render_independently(reference: object, messages: list[dict[str, str]]) -> str:
    template = reference.metadata["tokenizer.chat_template"]  # type: ignore[attr-defined]
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")


PARIS = (
    # NOTE: with the template's own default system prompt ("You are a helpful
    # AI assistant named SmolLM, ...") this Q4_1 135M model answers this
    # question in broken French at temperature 0 (llama-cpp-python's Llama
    # does too); with a system turn of the caller's it answers as expected.
    ChatMessage("system", "Answer the question in one short sentence."),
    ChatMessage("user", "What is the capital of France?"),
)


def test_chat_answers_paris(engine: LlamaCppEngine):
    result = run(engine, GenerationRequest(model=MODEL, messages=PARIS, params=SamplingParams(max_tokens=32)))
    assert "Paris" in result.text
    assert result.finish_reason == "stop"


def test_default_system_prompt_replaces_the_templates_own(engine: LlamaCppEngine, reference: object):
    e = LlamaCppEngine(LlamaCppConfig(n_ctx=256, n_seq_max=2, n_batch=64, default_system_prompt=""))
    e.start_sync()
    try:
        request = chat("What is the capital of France?", max_tokens=16)
        assert "SmolLM" in engine.render_chat(request.messages or ())
        rendered = e.render_chat(request.messages or ())
        assert "SmolLM" not in rendered
        assert rendered == render_independently(
            reference, [{"role": "system", "content": ""}, {"role": "user", "content": "What is the capital of France?"}]
        )
        assert "Paris" in run(e, request).text
    finally:
        e.close_sync()


def test_greedy_is_deterministic_and_equals_llama_cpp_python(engine: LlamaCppEngine, reference: object):
    request = GenerationRequest(model=MODEL, messages=PARIS, params=SamplingParams(max_tokens=40))
    first, second = run(engine, request), run(engine, request)
    assert first == second
    rendered = render_independently(reference, [{"role": m.role, "content": m.content} for m in PARIS])
    tokens = reference.tokenize(rendered.encode(), add_bos=False, special=True)  # type: ignore[attr-defined]
    theirs = reference.create_completion(tokens, max_tokens=40, temperature=0.0)  # type: ignore[attr-defined]
    assert first.text == theirs["choices"][0]["text"]
    assert first.usage.prompt_tokens == theirs["usage"]["prompt_tokens"] == len(tokens)
    # The end-of-generation token is sampled too, and counted (as vLLM does);
    # llama-cpp-python leaves it out.
    assert first.finish_reason == theirs["choices"][0]["finish_reason"] == "stop"
    assert first.usage.completion_tokens == theirs["usage"]["completion_tokens"] + 1


def test_usage_counts_are_exact(engine: LlamaCppEngine, reference: object):
    text = "Once upon a time, in a small village by the sea,"
    result = run(engine, prompt(text, max_tokens=7))
    expected_prompt = reference.tokenize(text.encode(), add_bos=True, special=True)  # type: ignore[attr-defined]
    assert result.usage.prompt_tokens == len(expected_prompt)
    assert result.usage.completion_tokens == 7
    assert result.finish_reason == "length"
    assert engine.count_tokens(MODEL, text) == len(expected_prompt)
    request = chat("Tell me about llamas.", max_tokens=3)
    assert engine.count_tokens(MODEL, request) == run(engine, request).usage.prompt_tokens


def test_max_tokens_and_stop_strings(engine: LlamaCppEngine):
    base = run(engine, prompt("The days of the week are Monday, Tuesday,", max_tokens=24))
    assert base.finish_reason == "length" and base.usage.completion_tokens == 24
    # A stop string taken from the middle of the greedy output cuts it there.
    stop = base.text[base.text.index(",", 3) : base.text.index(",", 3) + 2]
    cut = run(engine, prompt("The days of the week are Monday, Tuesday,", max_tokens=24, stop=(stop, "never-happens")))
    assert cut.finish_reason == "stop"
    assert cut.text == base.text[: base.text.index(stop)]
    assert stop not in cut.text
    assert cut.usage.completion_tokens < 24
    # A stop string that never occurs changes nothing.
    same = run(engine, prompt("The days of the week are Monday, Tuesday,", max_tokens=24, stop=("@@@",)))
    assert same == base


def test_streaming_equals_non_streaming(engine: LlamaCppEngine):
    request = chat("Write two sentences about the ocean.", max_tokens=48)
    deltas = collect(engine, request)
    whole = run(engine, request)
    assert len(deltas) > 5
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    assert deltas[-1].finish_reason == whole.finish_reason
    assert deltas[-1].usage == whole.usage
    assert "".join(d.text for d in deltas) == whole.text


def test_streaming_is_utf8_safe(engine: LlamaCppEngine):
    # Emoji and CJK are split over several byte-level tokens in this vocabulary.
    request = prompt("Emoji list: 🙂 😀 🚀 🎉 🙂 😀 🚀 🎉 🙂 😀", max_tokens=24)
    deltas = collect(engine, request)
    text = "".join(d.text for d in deltas)
    assert any(ord(ch) > 0xFFFF for ch in text), text
    assert "\ufffd" not in text
    assert text == run(engine, request).text


def test_temperature_and_seed(engine: LlamaCppEngine):
    request = prompt("My favourite animal is", max_tokens=12, temperature=1.0, top_p=0.95, seed=1234)
    assert run(engine, request) == run(engine, request)
    texts = {run(engine, prompt("My favourite animal is", max_tokens=12, temperature=1.0, seed=s)).text for s in range(6)}
    assert len(texts) > 1


def test_concurrent_requests_equal_sequential_ones(engine: LlamaCppEngine):
    questions = [
        "What is the capital of France?",
        "Name three primary colors.",
        "Why is the sky blue?",
        "Write a haiku about the sea.",
        "What does a CPU do?",
        "Give me a tip for learning Python.",
        "What is 12 times 12?",
        "Describe a cat in one sentence.",
    ]
    # Different lengths, so sequences start, run and finish at different steps.
    requests = [chat(q, max_tokens=8 + 4 * i) for i, q in enumerate(questions)]
    sequential = [run(engine, r) for r in requests]

    async def together() -> list[Completion]:
        return await asyncio.gather(*(engine.complete(r) for r in requests))

    before = engine.stats.max_sequences_in_step
    concurrent = asyncio.run(together())
    assert concurrent == sequential
    assert engine.stats.max_sequences_in_step >= 2 or before >= 2


def test_prompt_cache_reuses_a_slots_prefix_and_changes_no_answer(engine: LlamaCppEngine):
    plain = LlamaCppEngine(LlamaCppConfig(n_ctx=512, n_seq_max=2, prompt_cache=False))
    plain.start_sync()
    try:
        requests = [chat(q, max_tokens=12) for q in ("Name a fruit.", "Name a vegetable.", "Name a fruit.")]
        run(engine, chat("Hello!", max_tokens=2))  # now at least one slot holds the system turn
        before = engine.stats.prompt_tokens_reused
        cached = [run(engine, r) for r in requests]
        # Each request found the template's system turn (> 20 tokens) in a slot.
        assert engine.stats.prompt_tokens_reused - before >= 3 * 20
        assert cached == [run(plain, r) for r in requests]
        assert plain.stats.prompt_tokens_reused == 0
    finally:
        plain.close_sync()


def test_json_schema_constrains_the_output(engine: LlamaCppEngine):
    schema = {
        "type": "object",
        "properties": {"action": {"type": "string", "enum": ["buy", "sell", "hold"]}, "amount": {"type": "integer"}},
        "required": ["action", "amount"],
    }

    async def both() -> tuple[Completion, Completion]:
        constrained = engine.complete(chat("Should I buy ETH? Answer in JSON.", max_tokens=40, json_schema=schema))
        free = engine.complete(chat("Should I buy ETH? Answer in JSON.", max_tokens=40))
        return await asyncio.gather(constrained, free)

    constrained, free = asyncio.run(both())
    value = json.loads(constrained.text)
    assert value["action"] in ("buy", "sell", "hold") and isinstance(value["amount"], int)
    # The free sequence in the same batch is not constrained by its neighbour's grammar.
    assert free == run(engine, chat("Should I buy ETH? Answer in JSON.", max_tokens=40))
    any_object = run(engine, chat("Give me a JSON object describing a cat.", max_tokens=60, json_schema={}))
    if any_object.finish_reason == "stop":
        assert isinstance(json.loads(any_object.text), dict)
    else:
        assert any_object.text.lstrip().startswith("{")


def test_json_schema_with_temperature_sampling(engine: LlamaCppEngine):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green"]}}, "required": ["colour"]}
    for seed in range(3):
        result = run(engine, chat("Pick a colour. Answer in JSON.", max_tokens=30, temperature=1.0, seed=seed, json_schema=schema))
        assert json.loads(result.text)["colour"] in ("red", "green")


def test_more_requests_than_slots_wait_their_turn():
    e = LlamaCppEngine(LlamaCppConfig(n_ctx=256, n_seq_max=2, n_batch=64))
    e.start_sync()
    try:
        requests = [prompt(f"Count from {i}:", max_tokens=6 + i) for i in range(5)]

        async def together() -> list[Completion]:
            return await asyncio.gather(*(e.complete(r) for r in requests))

        concurrent = asyncio.run(together())
        assert e.stats.max_sequences_in_step == 2
        assert concurrent == [run(e, r) for r in requests]
    finally:
        e.close_sync()


def test_unified_cache_reserves_cells_and_serves_everyone():
    e = LlamaCppEngine(LlamaCppConfig(n_ctx=256, n_seq_max=4, n_batch=256, kv_unified=True))
    e.start_sync()
    try:
        cells = e.context_length  # shared by all sequences
        # Long prompts (cheap to prefill): each request reserves prompt +
        # max_tokens, a bit less than half the cells, so at most two run at
        # once although there are four slots.
        requests = [prompt(f"{i}: " + "apple banana cherry " * 30, max_tokens=8) for i in range(5)]
        sizes = [e.count_tokens(MODEL, r) + 8 for r in requests]
        assert all(cells // 3 < n <= cells // 2 for n in sizes), (sizes, cells)

        async def together() -> list[Completion]:
            return await asyncio.gather(*(e.complete(r) for r in requests))

        results = asyncio.run(together())
        assert e.stats.max_sequences_in_step == 2
        assert e.stats.prompt_tokens_reused == 0
        assert all(r.usage.completion_tokens == 8 or r.finish_reason == "stop" for r in results)
    finally:
        e.close_sync()


def test_prompt_longer_than_the_context_is_refused(engine: LlamaCppEngine):
    long_prompt = "token " * 3000
    with pytest.raises(ContextLengthExceeded, match=r"context of 2048 tokens.*shorten the prompt or lower max_tokens"):
        run(engine, prompt(long_prompt))
    n = engine.count_tokens(MODEL, "hello " * 100)
    with pytest.raises(ContextLengthExceeded, match=f"{n} tokens and max_tokens is 2000"):
        run(engine, prompt("hello " * 100, max_tokens=2000))
    assert run(engine, prompt("hello", max_tokens=2)).usage.completion_tokens == 2


def test_bad_requests_say_what_is_wrong(engine: LlamaCppEngine):
    with pytest.raises(ModelNotServed, match="smollm2-135m-instruct"):
        run(engine, GenerationRequest(model="gpt-4", prompt="hi"))
    with pytest.raises(InvalidGenerationParams, match="invalid temperature"):
        run(engine, prompt("hi", temperature=-1.0))
    with pytest.raises(InvalidGenerationParams, match="invalid max_tokens"):
        run(engine, prompt("hi", max_tokens=0))


def test_a_cancelled_stream_frees_its_slot(engine: LlamaCppEngine):
    async def main() -> Completion:
        stream = engine.stream(prompt("Count: 1, 2, 3,", max_tokens=1000))
        await anext(stream)
        await stream.aclose()
        return await engine.complete(prompt("Count: 1, 2, 3,", max_tokens=4))

    assert asyncio.run(main()).usage.completion_tokens == 4
    assert asyncio.run(engine.health()).ok


def test_complete_sync_for_threads(engine: LlamaCppEngine):
    request = chat("What is the capital of France?", max_tokens=16)
    assert engine.complete_sync(request, timeout=60) == run(engine, request)


def test_health_and_lifecycle():
    e = LlamaCppEngine(LlamaCppConfig(n_ctx=256, n_seq_max=2, n_batch=64))
    assert not asyncio.run(e.health()).ok
    with pytest.raises(EngineUnavailable, match="start"):
        run(e, prompt("hi"))
    asyncio.run(e.start())
    asyncio.run(e.start())
    assert asyncio.run(e.health()).ok
    assert e.models()[0].context_length == 256
    assert run(e, prompt("hi", max_tokens=2)).usage.completion_tokens == 2
    asyncio.run(e.close())
    asyncio.run(e.close())
    assert asyncio.run(e.health()).detail == "closed"
    with pytest.raises(EngineUnavailable, match="closed"):
        run(e, prompt("hi"))
