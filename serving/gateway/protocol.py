"""OpenAI wire models: requests as the official client sends them, responses as it parses them.

Unknown request fields are ignored (as vLLM does) so newer clients keep
working; fields we know but cannot honour (``n > 1``, ``logprobs``, tools,
penalties) are refused with a 400 naming them, rather than silently ignored.

NodeAI's additions ride in extra fields OpenAI clients tolerate:
``usage.nodeai_receipt`` (the signed receipt), ``usage.nodeai_charged_total``
(the channel's running total, to base the next voucher on) and, on streams
without ``include_usage``, ``nodeai_receipt`` on the final chunk.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "StreamOptions",
    "CompletionRequest",
    "ChatMessageIn",
    "ChatCompletionRequest",
    "EmbeddingRequest",
    "UsageOut",
    "CompletionChoice",
    "CompletionResponse",
    "ChatMessageOut",
    "ChatChoice",
    "ChatCompletionResponse",
    "ChatDelta",
    "ChatChunkChoice",
    "ChatCompletionChunk",
    "CompletionChunkChoice",
    "CompletionChunk",
    "EmbeddingData",
    "EmbeddingResponse",
    "ModelOut",
    "ModelList",
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False
    """Send a last chunk with the request's usage (and, here, its receipt)."""


class _Sampling(_Request):
    model: str
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool | None = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class _TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessageIn(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[_TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = None
    response_format: _ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    logprobs: bool | None = False
    top_logprobs: int | None = None


class EmbeddingRequest(_Request):
    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


# -- responses --------------------------------------------------------------------------------------
class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class UsageOut(_Response):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    nodeai_receipt: dict[str, Any] | None = None
    nodeai_charged_total: str | None = None


def _now() -> int:
    return int(time.time())


class CompletionChoice(_Response):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class CompletionResponse(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut


class ChatMessageOut(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(_Response):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "content_filter"]
    logprobs: None = None


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=_now)
    model: str
    choices: list[ChatChoice]
    usage: UsageOut


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Response):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageOut | None = None


class CompletionChunkChoice(_Response):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    logprobs: None = None


class CompletionChunk(_Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: UsageOut | None = None


class EmbeddingData(_Response):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: UsageOut


class ModelOut(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    nodeai: dict[str, Any] | None = None
    """NodeAI: kind, context length, on-chain model id and price per 1k tokens."""


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelOut]
