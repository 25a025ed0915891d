"""Errors the gateway answers with: each knows its HTTP status and OpenAI error code.

The router turns any ``GatewayError`` into OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}`` with ``status``; the
message is built from the error's arguments and says what to do next::

    ServingError (nodeai.errors)
    +-- GatewayError                      status, type, code, param
        +-- BadRequest          400       invalid_request_error (unsupported parameter, bad value)
        |   +-- PromptTooLong   400       context_length_exceeded
        |   +-- ContentFiltered 400       content_filter
        +-- Unauthorized        401       invalid_api_key / invalid_signature
        +-- PaymentRequired     402       voucher_required, malformed_voucher, wrong_provider,
        |                                 wrong_chain, wrong_contract, wrong_model, voucher_expired,
        |                                 voucher_too_low, insufficient_deposit, withdrawal_pending,
        |                                 model_not_priced
        +-- NotFound            404       not_found
        |   +-- UnknownModel    404       model_not_found
        +-- BodyTooLarge        413       request_too_large
        +-- RateLimited         429       rate_limit_exceeded (carries Retry-After)
        +-- Unavailable         503       engine_unavailable, chain_unavailable
"""

from __future__ import annotations

from typing import Any

from nodeai.errors import ServingError

__all__ = [
    "GatewayError",
    "BadRequest",
    "PromptTooLong",
    "ContentFiltered",
    "Unauthorized",
    "PaymentRequired",
    "NotFound",
    "UnknownModel",
    "BodyTooLarge",
    "RateLimited",
    "Unavailable",
]


class GatewayError(ServingError):
    """An error with an HTTP status and the fields of OpenAI's error envelope."""

    status: int = 500
    type: str = "api_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        # NOTE: machine-readable details (e.g. the cumulative amount to sign) ride next
        # to OpenAI's four fields; clients that do not know them ignore them.
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.extra:
            error["nodeai"] = self.extra
        return {"error": error}

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(GatewayError, ValueError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class PromptTooLong(BadRequest):
    code = "context_length_exceeded"

    def __init__(self, model: str, prompt_tokens: int, limit: int, what: str = "the gateway's prompt limit"):
        super().__init__(
            f"the prompt has {prompt_tokens} tokens for model {model!r}, more than {what} of {limit} tokens: "
            "shorten the prompt",
            param="messages",
        )


class ContentFiltered(BadRequest):
    code = "content_filter"

    def __init__(self, reason: str, param: str):
        super().__init__(f"the request was refused by this provider's content filter ({reason}): rephrase it",
                         param=param)


class Unauthorized(GatewayError, PermissionError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class PaymentRequired(GatewayError, PermissionError):
    status, type, code = 402, "payment_required", "voucher_required"


class NotFound(GatewayError, LookupError):
    status, type, code = 404, "invalid_request_error", "not_found"


class UnknownModel(NotFound):
    code = "model_not_found"

    def __init__(self, model: str, served: list[str]):
        super().__init__(f"the model {model!r} does not exist on this provider: use one of "
                         f"{', '.join(served) or '(none)'} (GET /v1/models lists them)", param="model")


class BodyTooLarge(GatewayError, ValueError):
    status, type, code = 413, "invalid_request_error", "request_too_large"

    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than this provider's limit of {limit} bytes: "
                         "send a shorter prompt or fewer inputs per request")


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def __init__(self, who: str, rate: float, burst: int, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"rate limit of {rate:g} requests/s (burst {burst}) reached for {who}: "
                         f"retry after {retry_after:.2f} s")

    def headers(self) -> dict[str, str]:
        # NOTE: Retry-After takes whole seconds (RFC 9110); rounding up never invites an early retry.
        return {"Retry-After": str(max(1, int(-(-self.retry_after // 1))))}


class Unavailable(GatewayError, RuntimeError):
    status, type, code = 503, "service_unavailable", "engine_unavailable"
