"""The engine interface every model backend implements.

The gateway (``nodeai.serving.gateway``), the agent runtime and the provider
daemon only ever talk to this interface, so the embedded CPU engine
(llama.cpp + ONNX Runtime) and the supervised vLLM server are interchangeable.

Token counts come from the engine's own tokenizer: they are what the payer is
charged for and what the signed receipt states.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, Sequence

ModelKind = Literal["generate", "embed"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class ModelCard:
    """One model an engine serves, as `/v1/models` lists it."""

    id: str
    kind: ModelKind
    context_length: int
    owned_by: str = "nodeai"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # NOTE: a JSON schema constrains the output (grammar-guided decoding) where
    # the engine supports it; `{}` means "any JSON object".
    json_schema: dict | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Exactly one of `prompt` (completions) or `messages` (chat) is set."""

    model: str
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a generation request needs exactly one of prompt or messages")


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    usage: Usage


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed piece; the last one has `finish_reason` and `usage` set."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class EngineHealth:
    ok: bool
    detail: str = ""


class Engine(abc.ABC):
    """A model backend. Methods are async and safe to call concurrently: an
    engine batches concurrent requests itself rather than queueing them."""

    name: str = "engine"

    @abc.abstractmethod
    def models(self) -> list[ModelCard]: ...

    async def start(self) -> None:
        """Load models / launch processes. Idempotent."""

    async def close(self) -> None:
        """Release everything `start` acquired. Idempotent."""

    @abc.abstractmethod
    async def health(self) -> EngineHealth: ...

    @abc.abstractmethod
    def count_tokens(self, model: str, request: GenerationRequest | str) -> int:
        """Prompt tokens of a request (chat template applied) or of a text, as
        the engine will count them; used for limits and the price bound."""

    @abc.abstractmethod
    async def complete(self, request: GenerationRequest) -> Completion: ...

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]: ...

    async def embed(self, model: str, inputs: Sequence[str]) -> Embeddings:
        raise NotImplementedError(f"engine {self.name!r} serves no embedding model {model!r}")
