"""Request limits of the gateway: sizes, token counts and per-payer rate limits.

The token bucket is a pure function of (state, time); ``RateLimiter`` keeps
one bucket per payer (wallet address or API key id) and forgets idle ones, so
a flood of fresh addresses cannot grow it without bound.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from .errors import BadRequest, PromptTooLong, RateLimited

__all__ = ["Limits", "TokenBucket", "take", "RateLimiter", "check_generation"]


class Limits(BaseModel):
    """Per-deployment request limits (every field is a gateway config option)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(1_000_000, ge=1_024)
    """Largest request body accepted; larger ones get 413."""
    max_prompt_tokens: int = Field(4_096, ge=1)
    """Longest prompt (chat template applied, engine's tokenizer) accepted; longer ones get 400."""
    max_tokens_cap: int = Field(1_024, ge=1)
    """Largest max_tokens a request may ask for; more gets 400 (it also bounds a voucher's price)."""
    default_max_tokens: int = Field(256, ge=1)
    """max_tokens of a chat request that does not set one (completions default to 16, as OpenAI's)."""
    max_embedding_inputs: int = Field(256, ge=1)
    """Most inputs in one embeddings request."""
    rate_limit_per_s: float = Field(20.0, gt=0)
    """Sustained requests per second per payer (token bucket refill rate)."""
    rate_limit_burst: int = Field(40, ge=1)
    """Requests a payer may send at once before the rate applies (bucket size)."""


@dataclass(frozen=True, slots=True)
class TokenBucket:
    tokens: float
    updated: float


def take(bucket: TokenBucket | None, now: float, rate: float, burst: int, cost: float = 1.0) -> tuple[TokenBucket, float]:
    """Try to take ``cost`` tokens at time ``now``.

    Returns the new bucket and 0.0 when allowed, or the unchanged (refilled)
    bucket and the seconds to wait before the same request would be allowed.
    A clock that goes backwards refills nothing (it never grants extra tokens).
    """
    if rate <= 0 or burst < 1 or cost <= 0:
        raise ValueError(f"rate ({rate}) must be > 0, burst ({burst}) >= 1, cost ({cost}) > 0")
    if cost > burst:
        raise ValueError(f"a request costing {cost} can never fit a bucket of {burst}")
    if bucket is None:
        bucket = TokenBucket(float(burst), now)
    elapsed = max(0.0, now - bucket.updated)
    tokens = min(float(burst), bucket.tokens + elapsed * rate)
    updated = max(now, bucket.updated)
    if tokens >= cost:
        return TokenBucket(tokens - cost, updated), 0.0
    return TokenBucket(tokens, updated), (cost - tokens) / rate


class RateLimiter:
    """One token bucket per payer; thread-safe; idle payers are forgotten (LRU, ``max_payers``)."""

    def __init__(self, rate: float, burst: int, max_payers: int = 100_000, clock=time.monotonic):
        self.rate, self.burst, self.max_payers, self.clock = rate, burst, max_payers, clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, payer: str) -> None:
        """Take one request for ``payer`` or raise ``RateLimited`` with the wait."""
        with self._lock:
            bucket, wait = take(self._buckets.get(payer), self.clock(), self.rate, self.burst)
            self._buckets[payer] = bucket
            self._buckets.move_to_end(payer)
            # NOTE: a forgotten payer restarts with a full bucket; with the LRU bound that can only
            # happen to a payer idle for longer than max_payers other payers' requests.
            while len(self._buckets) > self.max_payers:
                self._buckets.popitem(last=False)
        if wait > 0:
            raise RateLimited(payer, self.rate, self.burst, wait)


def check_generation(limits: Limits, model: str, prompt_tokens: int, max_tokens: int | None,
                     context_length: int, default: int) -> int:
    """Validate a generation request's sizes; return the max_tokens to use.

    ``default`` applies when the request sets none; it is lowered to what the
    context leaves, whereas an explicit max_tokens that does not fit is refused.
    """
    if prompt_tokens > limits.max_prompt_tokens:
        raise PromptTooLong(model, prompt_tokens, limits.max_prompt_tokens)
    if prompt_tokens >= context_length:
        raise PromptTooLong(model, prompt_tokens, context_length - 1, "the model's context minus one")
    if max_tokens is None:
        return max(1, min(default, limits.max_tokens_cap, context_length - prompt_tokens))
    if max_tokens < 1:
        raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    if max_tokens > limits.max_tokens_cap:
        raise BadRequest(f"max_tokens {max_tokens} is above this provider's cap of {limits.max_tokens_cap}: "
                         f"ask for at most {limits.max_tokens_cap}", param="max_tokens", code="max_tokens_too_large")
    if prompt_tokens + max_tokens > context_length:
        raise BadRequest(
            f"model {model!r} has a context of {context_length} tokens, but the prompt has {prompt_tokens} tokens and "
            f"max_tokens is {max_tokens} ({prompt_tokens + max_tokens} in all): shorten the prompt or lower max_tokens "
            f"to at most {context_length - prompt_tokens}",
            param="max_tokens", code="context_length_exceeded",
        )  # fmt: skip
    return max_tokens

