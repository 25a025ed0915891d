"""A small deterministic engine for the daemon's tests (importable by subprocess daemons and workers).

NOTE: it stands in for the CPU engine (serving/engines/llamacpp.py) until
llama-cpp-python is installed on this machine; the daemon only sees the
`Engine` interface, so the executor and the settlement path are exercised
unchanged. Its answer is the prompt's words reversed, one token per word,
and `delay` seconds per completion let tests catch a job mid-execution.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from nodeai.serving.engines.base import (
    Completion, Delta, Engine, EngineHealth, GenerationRequest, ModelCard, Usage,
)  # fmt: skip


class WordEngine(Engine):
    name = "words"

    def __init__(self, model: str = "words-1", delay: float = 0.0):
        self.model = model
        self.delay = delay

    def models(self) -> list[ModelCard]:
        return [ModelCard(self.model, "generate", 2048)]

    async def health(self) -> EngineHealth:
        return EngineHealth(True)

    def _text(self, request: GenerationRequest | str) -> str:
        if isinstance(request, str):
            return request
        if request.prompt is not None:
            return request.prompt
        return " ".join(m.content for m in request.messages or ())

    def count_tokens(self, model: str, request: GenerationRequest | str) -> int:
        return len(self._text(request).split())

    async def complete(self, request: GenerationRequest) -> Completion:
        if request.model != self.model:
            raise ValueError(f"model {request.model!r} is not served (serving {self.model!r})")
        if self.delay:
            await asyncio.sleep(self.delay)
        words = self._text(request).split()
        answer = list(reversed(words))[: request.params.max_tokens]
        finish = "length" if len(words) > request.params.max_tokens else "stop"
        return Completion(" ".join(answer), finish, Usage(len(words), len(answer)))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        completion = await self.complete(request)
        yield Delta(completion.text, completion.finish_reason, completion.usage)
