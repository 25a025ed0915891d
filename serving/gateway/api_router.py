"""HTTP routes of the gateway: read the body (size-limited), validate it, call the service, write the response.

No logic lives here; errors raised anywhere become OpenAI's error envelope in
``app.py``'s exception handlers.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from ..errors import BadRequest, BodyTooLarge, NotFound, PaymentRequired, UnknownModel
from ..payments import VOUCHER_HEADER
from .protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from .serving import GatewayService, Served

__all__ = ["router", "ServiceDep", "read_json", "validate"]

router = APIRouter()
M = TypeVar("M", bound=BaseModel)
# NOTE: bodies up to this many times the limit are drained before answering 413, so the client
# reads the error instead of a connection reset while it is still sending.
_DRAIN_FACTOR = 8


async def get_service(request: Request) -> GatewayService:
    # NOTE: async on purpose: FastAPI runs a sync dependency in its thread pool, a thread hop per request.
    return request.app.state.gateway


ServiceDep = Annotated[GatewayService, Depends(get_service)]


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit * _DRAIN_FACTOR:
        raise BodyTooLarge(limit)
    body = bytearray()
    too_large = False
    async for piece in request.stream():
        if too_large or len(body) + len(piece) > limit:
            too_large = True
            if len(body) + len(piece) > limit * _DRAIN_FACTOR:
                break
            body.extend(piece)  # NOTE: drained, then dropped below
            continue
        body.extend(piece)
    if too_large:
        raise BodyTooLarge(limit)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"the request body is not valid JSON ({exc}): send a JSON object") from None


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise BadRequest(f"invalid request: {where}: {first['msg']}{more}", param=where) from None


def _respond(result: Any) -> Response:
    if isinstance(result, Served):
        return Response(result.body.model_dump_json(), media_type="application/json", headers=result.headers)
    return StreamingResponse(result.events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **result.headers})


@router.get("/v1/models")
async def list_models(service: ServiceDep) -> Response:
    return Response((await service.list_models()).model_dump_json(), media_type="application/json")


@router.get("/v1/models/{model:path}")
async def get_model(model: str, service: ServiceDep) -> Response:
    for entry in (await service.list_models()).data:
        if entry.id == model:
            return Response(entry.model_dump_json(), media_type="application/json")
    raise UnknownModel(model, sorted(service.models))


@router.post("/v1/completions", openapi_extra={"requestBody": {"content": {"application/json": {
    "schema": CompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def completions(request: Request, service: ServiceDep) -> Response:
    raw = await read_json(request, service.limits.max_body_bytes)
    return _respond(await service.completions(validate(CompletionRequest, raw), raw, request.headers))


@router.post("/v1/chat/completions", openapi_extra={"requestBody": {"content": {"application/json": {
    "schema": ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def chat_completions(request: Request, service: ServiceDep) -> Response:
    raw = await read_json(request, service.limits.max_body_bytes)
    return _respond(await service.chat(validate(ChatCompletionRequest, raw), raw, request.headers))


@router.post("/v1/embeddings", openapi_extra={"requestBody": {"content": {"application/json": {
    "schema": EmbeddingRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def embeddings(request: Request, service: ServiceDep) -> Response:
    raw = await read_json(request, service.limits.max_body_bytes)
    return _respond(await service.embeddings(validate(EmbeddingRequest, raw), raw, request.headers))


@router.post("/v1/nodeai/vouchers")
async def submit_voucher(request: Request, service: ServiceDep) -> JSONResponse:
    """Hand in a voucher without a request, typically one for exactly the running total, so the
    provider can redeem precisely what it charged. Answers the channel's charged total."""
    header = request.headers.get(VOUCHER_HEADER)
    if header is None or not service.authorizer.takes_vouchers:
        raise PaymentRequired(f"send the voucher in the {VOUCHER_HEADER} header (this provider "
                              f"{'takes' if service.authorizer.takes_vouchers else 'does not take'} vouchers)",
                              code="voucher_required")
    return JSONResponse(service.authorizer.accept_settlement(header))


@router.get("/v1/nodeai/receipts/{request_hash}")
async def receipt_proof(request_hash: str, service: ServiceDep) -> JSONResponse:
    """A receipt by its request hash, with its batch's Merkle root and proof once batched."""
    try:
        key = bytes.fromhex(request_hash.removeprefix("0x"))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise BadRequest(f"{request_hash!r} is not a request hash (0x + 32 bytes hex)", param="request_hash")
    found = service.authorizer.ledger.store.receipt_proof(key)
    if found is None:
        raise NotFound(f"no receipt for request hash {request_hash} on this provider: check the hash "
                       "(nodeai.serving.receipts.request_hash)", param="request_hash", code="receipt_not_found")
    return JSONResponse({
        "receipt": found.receipt.to_json(), "root": "0x" + found.root.hex() if found.root else None,
        "proof": ["0x" + p.hex() for p in found.proof], "committed": found.committed,
    })  # fmt: skip


@router.get("/health")
async def health(service: ServiceDep) -> JSONResponse:
    ok, body = await service.health()
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    service.metrics.receipts_pending.set(service.authorizer.ledger.store.pending_receipts())
    return Response(await service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
