"""How the runtime talks to a model: one small protocol, two implementations.

* `EngineModelClient` calls a serving ``Engine`` in-process (the embedded
  llama.cpp engine on a provider without a GPU, or any other engine object);
* `OpenAIModelClient` calls any OpenAI-compatible endpoint with the official
  ``openai`` client: the provider's own gateway or another provider's, with
  whatever headers its auth needs. Tools are offered as OpenAI function tools;
  a server that answers with ``tool_calls`` is understood, one that answers
  with text is parsed as JSON.

Both return a `ModelReply` (text, tool calls, token usage). The planner builds
the messages and parses the reply; it never sees which client ran it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from nodeai.agents.errors import ModelUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class ModelToolCall:
    name: str
    arguments: str
    """JSON text, as OpenAI returns it."""


@dataclass(frozen=True)
class ModelRequest:
    model: str
    messages: tuple[Mapping[str, str], ...]
    """``{"role": "system" | "user" | "assistant", "content": ...}``."""
    tools: tuple[Mapping[str, Any], ...] = ()
    """OpenAI function-tool definitions."""
    json_schema: Mapping[str, Any] | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = 0


@dataclass(frozen=True)
class ModelReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: tuple[ModelToolCall, ...] = ()
    finish_reason: str = "stop"


class ModelClient(Protocol):
    """Anything that turns a `ModelRequest` into a `ModelReply` (raises `ModelUnavailable`)."""

    def generate(self, request: ModelRequest) -> ModelReply: ...


class EngineModelClient:
    """Runs requests on a serving ``Engine`` (``nodeai.serving.engines.base.Engine``) in this process.

    Engines with a blocking ``complete_sync`` (the llama.cpp engine) are called
    directly from the worker thread. For other engines (async only) pass
    ``loop`` when the engine lives on a running event loop (the provider
    daemon's); otherwise the client starts one private loop thread and keeps the
    engine on it until `close`. ``start_engine``: start the engine now and close
    it in `close` (leave False when the daemon owns the engine).
    """

    def __init__(self, engine: Any, loop: asyncio.AbstractEventLoop | None = None, *, start_engine: bool = False,
                 timeout_s: float = 300.0):  # fmt: skip
        self.engine = engine
        self.timeout_s = timeout_s
        self._owns_engine = start_engine
        self._sync = loop is None and callable(getattr(engine, "complete_sync", None))
        self._own_loop = loop is None and not self._sync
        self._loop = loop if loop is not None else (asyncio.new_event_loop() if self._own_loop else None)
        self._thread: threading.Thread | None = None
        if self._own_loop:
            assert self._loop is not None
            self._thread = threading.Thread(target=self._loop.run_forever, name="agent-engine-loop", daemon=True)
            self._thread.start()
        if start_engine:
            if self._sync and callable(getattr(engine, "start_sync", None)):
                engine.start_sync()
            else:
                self._run(engine.start())

    @property
    def _name(self) -> str:
        return str(getattr(self.engine, "name", "engine"))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=self.timeout_s)

    def generate(self, request: ModelRequest) -> ModelReply:
        from nodeai.errors import EngineUnavailable
        from nodeai.serving.engines.base import ChatMessage, GenerationRequest, SamplingParams

        messages = tuple(ChatMessage(m["role"], m["content"]) for m in request.messages)  # type: ignore[arg-type]
        params = SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature, seed=request.seed,
                                json_schema=dict(request.json_schema) if request.json_schema is not None else None)  # fmt: skip
        generation = GenerationRequest(model=request.model, params=params, messages=messages)
        try:
            if self._sync:
                completion = self.engine.complete_sync(generation, timeout=self.timeout_s)
            else:
                completion = self._run(self.engine.complete(generation))
        except EngineUnavailable as exc:
            raise ModelUnavailable(self._name, str(exc)) from None
        except (ValueError, LookupError) as exc:
            # NOTE: this request cannot work on this engine (unknown model, context overflow): not transient
            raise ModelUnavailable(self._name, str(exc), retryable=False) from None
        except (OSError, RuntimeError, TimeoutError) as exc:
            raise ModelUnavailable(self._name, f"{type(exc).__name__}: {exc}") from None
        return ModelReply(completion.text, completion.usage.prompt_tokens, completion.usage.completion_tokens,
                          finish_reason=completion.finish_reason)  # fmt: skip

    def close(self) -> None:
        """Close the engine if this client started it, and stop the private loop."""
        if self._owns_engine:
            if self._sync and callable(getattr(self.engine, "close_sync", None)):
                self.engine.close_sync()
            elif self._loop is not None and self._loop.is_running():
                self._run(self.engine.close())
            self._owns_engine = False
        if self._own_loop and self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> "EngineModelClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class OpenAIModelClient:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint, through the official ``openai`` client."""

    base_url: str
    """E.g. ``http://127.0.0.1:8000/v1`` (a provider's gateway)."""
    api_key: str = "none"
    headers: Mapping[str, str] = field(default_factory=dict)
    """Extra headers (a voucher, an API key in another header)."""
    timeout_s: float = 60.0
    use_tools: bool = True
    """Offer tools as OpenAI function tools (switched off for good if the server refuses them)."""
    use_response_format: bool = True
    """Ask for JSON with ``response_format`` when tools are not used."""

    def __post_init__(self) -> None:
        import openai

        self._openai = openai
        # NOTE: max_retries=0: the worker loop retries, and records each try in the transcript
        self._client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, default_headers=dict(self.headers),
                                     timeout=self.timeout_s, max_retries=0)  # fmt: skip

    def generate(self, request: ModelRequest) -> ModelReply:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": request.model, "messages": [dict(m) for m in request.messages],
                                  "max_tokens": request.max_tokens, "temperature": request.temperature}  # fmt: skip
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if self.use_tools and request.tools:
            kwargs["tools"] = [dict(t) for t in request.tools]
        elif self.use_response_format and request.json_schema is not None:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "action", "schema": dict(request.json_schema)}}  # fmt: skip
        try:
            reply = self._client.chat.completions.create(**kwargs)
        except openai.BadRequestError as exc:
            if "tools" in kwargs or "response_format" in kwargs:
                # NOTE: a server without tool or schema support: fall back to plain JSON-in-text for good
                self.use_tools = self.use_tools and "tools" not in kwargs
                self.use_response_format = self.use_response_format and "response_format" not in kwargs
                return self.generate(request)
            raise ModelUnavailable(self.base_url, f"request refused: {exc.message}", retryable=False) from None
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            raise ModelUnavailable(self.base_url, f"{type(exc).__name__}: {exc}") from None
        except openai.APIStatusError as exc:
            raise ModelUnavailable(self.base_url, f"HTTP {exc.status_code}: {exc.message}", retryable=False) from None
        if not reply.choices:
            raise ModelUnavailable(self.base_url, "the reply has no choices")
        choice = reply.choices[0]
        calls = tuple(ModelToolCall(c.function.name, c.function.arguments or "{}")
                      for c in (choice.message.tool_calls or ()) if getattr(c, "function", None) is not None)  # fmt: skip
        usage = reply.usage
        return ModelReply(choice.message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, calls, choice.finish_reason or "stop")  # fmt: skip

    def close(self) -> None:
        self._client.close()


def tool_definitions(functions: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    """OpenAI function-tool definitions for `ToolFunction`s (``tool.function`` -> ``tool__function``)."""
    return tuple(
        {"type": "function", "function": {"name": openai_name(f.qualified_name), "description": f.description,
                                          "parameters": f.json_schema()}}  # fmt: skip
        for f in functions
    )


def openai_name(qualified: str) -> str:
    # NOTE: OpenAI function names allow [a-zA-Z0-9_-] only, so the dot becomes "__"
    return qualified.replace(".", "__")
