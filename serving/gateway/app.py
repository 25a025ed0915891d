"""``create_app``: the OpenAI-compatible, voucher-paid gateway as a FastAPI application.

Every error, including validation errors (400, not FastAPI's 422), unknown
routes and crashes, is answered with OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Mapping, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nodeai.errors import ServingError

from ..apikeys import ApiKeyStore
from ..chain_view import ChainView
from ..content_filter import BlocklistFilter, ContentFilter
from ..engines.base import Engine
from ..errors import BadRequest, GatewayError, NotFound
from ..ledger import Ledger
from ..limits import Limits, RateLimiter
from ..metrics import GatewayMetrics
from ..receipts import ReceiptSigner
from ..store import GatewayStore
from .api_router import router
from .auth import AuthMode, Authorizer
from .serving import GatewayService, _engine_error

__all__ = ["create_app"]

log = logging.getLogger(__name__)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
_ROUTES = {"/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/nodeai/vouchers",
           "/health", "/metrics"}


def _route_label(path: str) -> str:
    # NOTE: a fixed label set keeps the metric's cardinality bounded whatever paths clients try.
    if path in _ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/v1/nodeai/receipts/"):
        return "/v1/nodeai/receipts/{request_hash}"
    return "other"


class _MetricsMiddleware:
    """Counts requests by route and status and times them to their last byte (pure ASGI, no buffering)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = _route_label(scope["path"])
        started = time.perf_counter()
        status = 500
        self.metrics.in_flight.inc()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


def _error_response(metrics: GatewayMetrics, error: GatewayError) -> JSONResponse:
    metrics.errors.labels(type=error.code).inc()
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


def create_app(
    engines: Engine | Sequence[Engine],
    *,
    provider_key: bytes | str,
    database: str | Path | GatewayStore,
    chain: ChainView | None = None,
    model_ids: Mapping[str, int] | None = None,
    auth: AuthMode | None = None,
    api_keys: ApiKeyStore | None = None,
    limits: Limits | None = None,
    content_filter: ContentFilter | None = None,
    metrics: GatewayMetrics | None = None,
    receipt_domain: tuple[int, str] | None = None,
    offchain_prices: Mapping[str, int] | None = None,
    min_voucher_validity: int = 60,
    manage_engines: bool = True,
) -> FastAPI:
    """The gateway in front of ``engines``.

    ``provider_key`` signs receipts; its address is the provider vouchers must
    name. ``database`` (a path or an open ``GatewayStore``) keeps charges,
    vouchers and receipts. Vouchers are taken when ``chain`` is given
    (``model_ids`` maps served model names to on-chain model ids), API keys when
    ``api_keys`` is; ``auth`` narrows that down. Receipts are signed for
    ``chain``'s ReceiptRegistry, or for ``receipt_domain`` (chain id, registry
    address) without a chain. ``manage_engines=False`` leaves starting and
    closing the engines to the caller (who shares them between apps).
    """
    engine_list = [engines] if isinstance(engines, Engine) else list(engines)
    limits = limits or Limits()
    metrics = metrics or GatewayMetrics()
    if chain is not None:
        chain_id, registry = chain.chain_id, chain.receipts_address
    else:
        chain_id, registry = receipt_domain or (0, ZERO_ADDRESS)
    signer = ReceiptSigner(provider_key, chain_id, registry)
    if chain is not None and chain.provider != signer.address:
        raise ValueError(f"the chain view reads channels of provider {chain.provider}, but provider_key is "
                         f"{signer.address}'s: use the same provider for both")
    store = database if isinstance(database, GatewayStore) else GatewayStore(database, signer.address)
    owns_store = not isinstance(database, GatewayStore)
    mode: AuthMode = auth or ("both" if chain and api_keys else "voucher" if chain else "api_key")
    ids = dict(model_ids or {})
    authorizer = Authorizer(Ledger(store), signer.address, mode, RateLimiter(limits.rate_limit_per_s,
                            limits.rate_limit_burst), chain=chain, api_keys=api_keys, offchain_prices=offchain_prices,
                            min_validity=min_voucher_validity)  # fmt: skip
    service = GatewayService(engine_list, authorizer, signer, model_ids=ids, limits=limits,
                             content_filter=content_filter if content_filter is not None else BlocklistFilter(),
                             metrics=metrics)
    for engine in engine_list:
        text = getattr(engine, "metrics_text", None)
        if callable(text):
            metrics.add_source(engine.name, text)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started: list[Engine] = []
        try:
            if manage_engines:
                for engine in engine_list:
                    await engine.start()
                    started.append(engine)
            service.load_models()
            await service.health()
            yield
        finally:
            for engine in reversed(started):
                try:
                    await engine.close()
                except Exception:
                    log.exception("closing engine %s failed", engine.name)
            if owns_store:
                store.close()

    app = FastAPI(title="NodeAI Hub gateway", version="1", lifespan=lifespan,
                  description="OpenAI-compatible inference, paid per request with InferenceEscrow vouchers "
                              "(header X-NodeAI-Voucher) or API keys; every response carries a signed receipt.")
    app.state.gateway = service
    app.include_router(router)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(metrics, exc)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        return _error_response(metrics, _engine_error(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return _error_response(metrics, BadRequest(f"invalid request: {where}: {first.get('msg')}", param=where))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error: GatewayError = NotFound(f"no route {request.method} {request.url.path}: the API is under /v1 "
                                           "(GET /docs lists it)")
        else:
            error = GatewayError(str(exc.detail), code="http_error")
            error.status = exc.status_code
            error.type = "invalid_request_error" if exc.status_code < 500 else "api_error"
        return _error_response(metrics, error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(metrics, GatewayError(f"internal error ({type(exc).__name__}): the provider has "
                                                     "been told; retry later", code="internal_error"))

    return app
