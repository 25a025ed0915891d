"""The engine interface every model backend implements.

The gateway (``nodeai.serving.gateway``), the agent runtime and the provider
daemon only ever talk to this interface, so the embedded CPU engine
(llama.cpp + ONNX Runtime) and the supervised vLLM server are interchangeable.

Token counts come from the engine's own tokenizer: they are what the payer is
charged for and what the signed receipt states.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, Sequence

from nodeai.errors import EngineUnavailable

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


class WorkerEngine(Engine):
    """An engine that loads its model once and serves it from one worker thread.

    The life cycle is written here once: ``start``/``start_sync`` load and start
    the worker (idempotent; refused after ``close``), ``close``/``close_sync``
    stop it (idempotent) and fail whatever was still queued. Subclasses give
    ``_load`` (runs under the lock, before the worker starts), ``_worker``,
    ``_wake_worker`` (make the worker see ``_stopping``) and ``_after_close``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._failure: str | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    def start_sync(self) -> None:
        """Load the model and start the worker thread (idempotent)."""
        with self._lock:
            if self._closed:
                raise EngineUnavailable(self.name, "it was closed; create a new engine")
            if self._thread is not None:
                return
            self._load()
            self._thread = threading.Thread(target=self._worker, name=f"{self.name}-worker", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        """Stop the worker, fail what is queued, free the model (idempotent)."""
        with self._lock:
            self._closed = True
            self._stopping = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._wake_worker()
            thread.join()
        self._after_close()

    def _worker_health(self, detail: str) -> EngineHealth:
        """Health from the worker's state; ``detail`` describes a healthy engine."""
        if self._failure is not None:
            return EngineHealth(False, f"worker failed: {self._failure}")
        if self._thread is None or not self._thread.is_alive():
            return EngineHealth(False, "closed" if self._closed else "not started")
        return EngineHealth(True, detail)

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _worker(self) -> None: ...

    @abc.abstractmethod
    def _wake_worker(self) -> None: ...

    @abc.abstractmethod
    def _after_close(self) -> None: ...
