"""One engine in front of several: the embedded CPU engine of a provider.

`CompositeEngine` routes each call by model id to the engine that serves it,
so one process (the gateway, the agent runtime) serves SmolLM2 completions
and MiniLM embeddings side by side; `embedded_cpu_engine` builds the default
pair from the packaged models.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Sequence

from nodeai.errors import InvalidGenerationParams, ModelNotServed

from .base import Completion, Delta, Embeddings, Engine, EngineHealth, GenerationRequest, ModelCard
from .llamacpp import LlamaCppConfig, LlamaCppEngine
from .onnx_embed import OnnxEmbeddingConfig, OnnxEmbeddingEngine

__all__ = ["CompositeEngine", "embedded_cpu_engine"]


class CompositeEngine(Engine):
    """Several engines under one `Engine`, each model id served by exactly one."""

    name = "composite"

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise InvalidGenerationParams("engines", "a composite engine needs at least one engine")
        self.engines = tuple(engines)
        self._routes: dict[str, Engine] = {}
        for engine in self.engines:
            for card in engine.models():
                if card.id in self._routes:
                    raise InvalidGenerationParams(
                        "engines", f"model id {card.id!r} is served by both {self._routes[card.id].name!r} "
                        f"and {engine.name!r}: give one of them another model_id"
                    )
                self._routes[card.id] = engine

    def engine_for(self, model: str) -> Engine:
        """The engine that serves `model`; `ModelNotServed` lists the served ids."""
        try:
            return self._routes[model]
        except KeyError:
            raise ModelNotServed(model, sorted(self._routes)) from None

    def models(self) -> list[ModelCard]:
        return [card for engine in self.engines for card in engine.models()]

    async def start(self) -> None:
        # NOTE: one at a time: loading two models at once on two cores is no
        # faster, and a failure leaves fewer half-started engines to close.
        started: list[Engine] = []
        try:
            for engine in self.engines:
                await engine.start()
                started.append(engine)
        except BaseException:
            for engine in reversed(started):
                await engine.close()
            raise

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in self.engines))

    async def health(self) -> EngineHealth:
        results = await asyncio.gather(*(e.health() for e in self.engines))
        detail = "; ".join(f"{e.name}: {'ok' if h.ok else 'DOWN'} ({h.detail})" for e, h in zip(self.engines, results))
        return EngineHealth(all(h.ok for h in results), detail)

    def count_tokens(self, model: str, request: GenerationRequest | str) -> int:
        return self.engine_for(model).count_tokens(model, request)

    async def complete(self, request: GenerationRequest) -> Completion:
        return await self.engine_for(request.model).complete(request)

    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        return self.engine_for(request.model).stream(request)

    async def embed(self, model: str, inputs: Sequence[str]) -> Embeddings:
        return await self.engine_for(model).embed(model, inputs)


def embedded_cpu_engine(
    llm: LlamaCppConfig | None = None, embeddings: OnnxEmbeddingConfig | None = None
) -> CompositeEngine:
    """SmolLM2-135M-Instruct (`smollm2-135m-instruct`) and all-MiniLM-L6-v2
    (`all-minilm-l6-v2`) from their packages, or the models the configs name.
    Call `await engine.start()` before use and `await engine.close()` after."""
    return CompositeEngine([LlamaCppEngine(llm), OnnxEmbeddingEngine(embeddings)])
