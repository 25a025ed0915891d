"""One engine object serving both packaged CPU models (CompositeEngine)."""

from __future__ import annotations

import asyncio
from typing import Iterator

import numpy as np
import pytest

from nodeai.errors import InvalidGenerationParams, ModelNotServed
from nodeai.serving.engines import (
    ChatMessage,
    CompositeEngine,
    GenerationRequest,
    LlamaCppConfig,
    LlamaCppEngine,
    OnnxEmbeddingEngine,
    SamplingParams,
    embedded_cpu_engine,
)

LLM, EMB = "smollm2-135m-instruct", "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def engine() -> Iterator[CompositeEngine]:
    e = embedded_cpu_engine(LlamaCppConfig(n_ctx=512, n_seq_max=4))
    asyncio.run(e.start())
    yield e
    asyncio.run(e.close())


def test_models_are_listed_and_routed_by_id(engine: CompositeEngine):
    cards = {c.id: c for c in engine.models()}
    assert cards[LLM].kind == "generate" and cards[LLM].context_length == 512
    assert cards[EMB].kind == "embed" and cards[EMB].context_length == 256
    assert isinstance(engine.engine_for(LLM), LlamaCppEngine)
    assert isinstance(engine.engine_for(EMB), OnnxEmbeddingEngine)

    async def both():
        chat = GenerationRequest(
            model=LLM,
            messages=(ChatMessage("system", "Answer the question in one short sentence."),
                      ChatMessage("user", "What is the capital of France?")),
            params=SamplingParams(max_tokens=24),
        )
        deltas = [d async for d in engine.stream(chat)]
        return await engine.complete(chat), deltas, await engine.embed(EMB, ["A man is eating food.", "A man eats bread."])

    completion, deltas, vectors = asyncio.run(both())
    assert "Paris" in completion.text and "".join(d.text for d in deltas) == completion.text
    v = np.array(vectors.vectors)
    assert v.shape == (2, 384) and float(v[0] @ v[1]) > 0.5
    assert engine.count_tokens(LLM, "Hello there") == engine.engine_for(LLM).count_tokens(LLM, "Hello there")
    assert engine.count_tokens(EMB, "Hello there") == 4  # [CLS] hello there [SEP]


def test_unknown_models_and_wrong_kinds_are_refused(engine: CompositeEngine):
    with pytest.raises(ModelNotServed, match=f"use one of {EMB}, {LLM}"):
        asyncio.run(engine.complete(GenerationRequest(model="gpt-4o", prompt="hi")))
    with pytest.raises(ModelNotServed):
        asyncio.run(engine.embed("text-embedding-3-small", ["hi"]))
    with pytest.raises(InvalidGenerationParams, match="embedding model"):
        asyncio.run(engine.complete(GenerationRequest(model=EMB, prompt="hi")))
    with pytest.raises(InvalidGenerationParams, match="makes no embeddings"):
        asyncio.run(engine.embed(LLM, ["hi"]))


def test_health_reports_every_engine(engine: CompositeEngine):
    health = asyncio.run(engine.health())
    assert health.ok
    assert "llama.cpp: ok" in health.detail and "onnx-embed: ok" in health.detail


def test_two_engines_may_not_serve_the_same_id():
    with pytest.raises(InvalidGenerationParams, match="served by both"):
        CompositeEngine([LlamaCppEngine(), LlamaCppEngine()])
