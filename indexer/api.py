"""HTTP API of the indexer: the database view, read-only, for dApp frontends and providers.

``create_app`` builds a FastAPI application on top of a ``Store`` factory. Every
endpoint reads; nothing here writes to the database. Each request thread keeps its
own ``Store`` (one connection), made by the factory on first use and closed when the
application shuts down.

Finality: a row is ``final`` when its last update is at or below the finalized
height, ``head - confirmations`` of the chain's cursor (no cursor yet: nothing is
final), and ``pending`` otherwise. ``/signals`` (what a keeper or a provider should
act on: money moves) reads final rows only, so a reorg cannot make it act on a
state that never was.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}`` with a message
that says what to do next; validation errors are 400, not FastAPI's 422.
"""

import asyncio
import base64
import binascii
import inspect
import json
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Callable, Generic, Literal, Sequence, TypeVar

import anyio
from eth_utils import is_address, to_checksum_address
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from nodeai.chain.jobs import JobState

from .metrics import IndexerMetrics
from .projections import FILTERS
from .store import Cursor, Entity, Store, sort_key

__all__ = ["create_app", "ApiError", "encode_cursor", "decode_cursor"]

MAX_LIMIT = 500
PAGE_PARAMS = ("limit", "cursor")
SIGNAL_JOB_STATES = {"SUBMITTED": "finalizable", "DISPUTED": "finalizable",
                     "OPEN": "refundable", "CLAIMED": "refundable"}  # fmt: skip


# -- errors -----------------------------------------------------------------------------------------
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
                503: "unavailable_error"}  # fmt: skip
_ERROR_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 503: "unavailable"}
# NOTE: validation errors of these parameters read better as one fixed sentence than pydantic's.
_PARAM_MESSAGES = {
    "limit": f"limit must be 1..{MAX_LIMIT}",
    "now": "now must be a unix timestamp in seconds (a non-negative integer)",
    "after": "after must be a change id (a non-negative integer): the id of the last event received",
    "once": "once must be true or false",
}


class ApiError(StarletteHTTPException):
    """An HTTP error with the fields of the JSON error envelope."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(status_code, message)
        self.message, self.param, self.code = message, param, code or _ERROR_CODES.get(status_code, "error")


def _error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "api_error"), "param": param,
                      "code": code or _ERROR_CODES.get(status, "error")}}  # fmt: skip


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        body = _error_body(exc.status_code, exc.message, exc.param, exc.code)
    elif exc.status_code == 404:
        body = _error_body(404, f"no route {request.method} {request.url.path}: see /docs for the endpoints")
    elif exc.status_code == 405:
        body = _error_body(405, f"{request.method} is not allowed on {request.url.path}: this API is read-only (GET)")
    else:
        body = _error_body(exc.status_code, str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ())]
    param = loc[-1] if len(loc) > 1 else None
    where = loc[0] if loc else "request"
    if param in _PARAM_MESSAGES and where == "query":
        message = _PARAM_MESSAGES[param]
    else:
        message = f"{where} parameter {param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg"))
    return JSONResponse(_error_body(400, message, param, "invalid_parameter"), status_code=400)


# -- response models ----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and what to do next")
    type: str = Field(description="invalid_request_error, not_found_error or unavailable_error")
    param: str | None = Field(description="The parameter at fault, if one is")
    code: str = Field(description="Machine-readable reason, e.g. unknown_filter, malformed_cursor, not_found")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool = Field(description="True once the indexer has caught up with the chain head")
    indexed_height: int | None = Field(description="Last block ingested (null before the first block)")
    head: int | None = Field(description="Chain head last seen by the indexer")
    lag: int | None = Field(description="head - indexed_height, in blocks")


class EntityOut(BaseModel):
    """An entity: its key, finality and the fields of its document."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    kind: str = Field(description="Entity kind (for models: \"model\" or \"agent\")")
    key: str = Field(description="Primary key of the entity")
    status: Literal["final", "pending"] = Field(
        description="final: last updated at or below head - confirmations; pending: could still be reorged away")
    created_block: int
    updated_block: int = Field(description="Block of the last event that changed the entity")


class ModelOut(EntityOut):
    model_id: int | None = None
    owner: str | None = Field(None, description="Owner address (checksummed)")
    base_model_id: int | None = Field(None, description="Model this one is fine-tuned from (0: none)")
    version: int | None = None
    artifact_cid: str | None = None
    manifest_cid: str | None = None
    price_per_1k_tokens: int | None = Field(None, description="Price per 1,000 tokens, in token base units")
    revenue_share_bps: int | None = None
    pending_revenue_share_bps: int | None = Field(None, description="A share increase waiting for share_effective_at")
    share_effective_at: int | None = None
    deprecated: bool | None = None
    versions: list[dict[str, Any]] | None = None


class ProviderOut(EntityOut):
    address: str | None = None
    registered: bool | None = None
    endpoint: str | None = None
    peer_id: Any = None
    stake: int | None = None
    bonded: int | None = Field(None, description="Stake bonded to running jobs")
    unbonding: int | None = None
    unbonding_ready_at: int | None = None
    jobs_completed: int | None = None
    jobs_failed: int | None = None
    disputes_lost: int | None = None
    total_slashed: int | None = None
    models: dict[str, int] | None = Field(None, description="Served model id -> price per 1,000 tokens")


class JobOut(EntityOut):
    job_id: int | None = None
    state: str | None = Field(None, description="OPEN, CLAIMED, SUBMITTED, DISPUTED, SETTLED or REFUNDED")
    requester: str | None = None
    provider: str | None = Field(None, description="Claiming provider (zero address while open)")
    model_id: int | None = None
    model_owner: str | None = None
    input_hash: str | None = None
    input_cid: str | None = None
    output_hash: str | None = None
    output_cid: str | None = None
    max_payment: int | None = None
    charge: int | None = None
    deadline: int | None = Field(None, description="Unix time after which an unsubmitted job is refundable")
    window_ends: int | None = Field(None, description="End of the challenge (or arbitration) window")
    priority_provider: str | None = None
    priority_until: int | None = None
    revenue_share_bps: int | None = None
    protocol_fee_bps: int | None = None
    challenge_window: int | None = None
    bond: int | None = None
    usage: Any = None
    settlement: dict[str, Any] | None = None
    refund: dict[str, Any] | None = None
    provider_won_dispute: bool | None = None


class ChannelOut(EntityOut):
    payer: str | None = None
    provider: str | None = None
    balance: int | None = None
    unlock_at: int | None = Field(None, description="When the payer may withdraw (0: no withdrawal requested)")
    redeemed: dict[str, int] | None = Field(None, description="Model id -> amount redeemed by vouchers")
    total_redeemed: int | None = None
    deposited: int | None = None
    withdrawn: int | None = None


class ReceiptBatchOut(EntityOut):
    provider: str | None = None
    root: str | None = Field(None, description="Merkle root of the receipts")
    count: int | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    amount: int | None = None
    from_timestamp: int | None = None
    to_timestamp: int | None = None
    block_number: int | None = None


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= to get the next page (with the same filters); null on the last page")


class EventOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    block_number: int
    log_index: int
    block_hash: str
    tx_hash: str
    contract: str
    event: str = Field(description="Event name, e.g. JobCreated")
    args: dict[str, Any]


class EventPage(BaseModel):
    items: list[EventOut]
    next_after: str | None = Field(
        description="Pass as ?after= for the next page (block:logIndex); null on the last page")


class JobHistory(BaseModel):
    job_id: int
    items: list[EventOut] = Field(description="The job's events in chain order")


class Signal(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["finalizable", "refundable", "withdrawal_requested"] = Field(
        description="finalizable: the job's window is over, anyone can settle it; refundable: the deadline passed "
        "without a submission; withdrawal_requested: the payer asked to withdraw the channel, the provider should "
        "redeem its highest voucher before unlock_at")
    job_id: int | None = None
    payer: str | None = None
    provider: str | None = None


class Signals(BaseModel):
    now: int = Field(description="The time the signals were computed for (unix seconds)")
    finalized_height: int = Field(description="Only rows updated at or below this block were considered")
    items: list[Signal]


# -- per-process context ------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """What one request reads: a store, the chain's cursor and the finalized height it implies."""

    store: Store
    chain_id: int
    cursor: Cursor | None
    finalized_height: int

    def entity_json(self, entity: Entity) -> dict[str, Any]:
        return entity.as_json(self.finalized_height)


class ApiContext:
    def __init__(self, store_factory: Callable[[], Store], chain_id: int, confirmations: int, metrics: IndexerMetrics,
                 is_ready: Callable[[], bool] | None, poll_interval: float, heartbeat_interval: float):  # fmt: skip
        if confirmations < 0:
            raise ValueError(f"confirmations must be >= 0, got {confirmations}")
        self.store_factory, self.chain_id, self.confirmations = store_factory, chain_id, confirmations
        self.metrics, self.is_ready = metrics, is_ready
        self.poll_interval, self.heartbeat_interval = poll_interval, heartbeat_interval
        self._local = threading.local()
        self._stores: list[Store] = []
        self._lock = threading.Lock()

    def store(self) -> Store:
        """This thread's store (stores are not shared between threads)."""
        store = getattr(self._local, "store", None)
        if store is None:
            store = self.store_factory()
            self._local.store = store
            with self._lock:
                self._stores.append(store)
        return store

    def view(self) -> View:
        store = self.store()
        cursor = store.cursor(self.chain_id)
        finalized = cursor.head - self.confirmations if cursor else -1
        return View(store, self.chain_id, cursor, finalized)

    def close(self) -> None:
        with self._lock:
            stores, self._stores = self._stores, []
        for store in stores:
            try:
                store.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass


async def _context(request: Request) -> ApiContext:
    return request.app.state.indexer


Ctx = Annotated[ApiContext, Depends(_context)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1..{MAX_LIMIT}")]
PageCursor = Annotated[str | None, Query(description="Opaque: the next_cursor of the previous page")]
JobId = Annotated[int, Path(ge=0, description="Job id")]
ModelId = Annotated[int, Path(ge=0, description="Model id")]
AddressPath = Annotated[str, Path(description="0x address, any letter case")]
RootPath = Annotated[str, Path(description="Merkle root, 0x and 64 hex digits")]
Now = Annotated[int | None, Query(ge=0, description="Unix time to evaluate deadlines at (default: the server's clock)")]
EventName = Annotated[str | None, Query(description="Event name, e.g. JobCreated")]
EventPosition = Annotated[str | None, Query(description="block:logIndex: events strictly after this position")]
ChangeAfter = Annotated[str | None, Query(description="Change id to resume after (default 0: from the start)")]
Once = Annotated[bool, Query(description="Send the changes there are now and close (no live tail)")]
LastEventId = Annotated[str | None, Header(description="Set by EventSource on reconnect; wins over ?after=")]


# -- helpers ------------------------------------------------------------------------------------------
def encode_cursor(last_sort_key: str) -> str:
    """The opaque page cursor: base64url (unpadded) of the last sort key of a page."""
    return base64.urlsafe_b64encode(last_sort_key.encode()).decode().rstrip("=")


def decode_cursor(token: str, kind: str) -> str:
    """The sort key in a cursor; ApiError 400 when it is not one this API made."""
    bad = ApiError(400, "malformed cursor: pass the next_cursor of a previous page", param="cursor",
                   code="malformed_cursor")  # fmt: skip
    if not token or len(token) > 1024 or not re.fullmatch(r"[A-Za-z0-9_-]+", token):
        raise bad
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        key = raw.decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if encode_cursor(key) != token or not key or not key.isprintable() or any(c.isspace() for c in key):
        raise bad
    if kind in ("model", "job") and not (key.isascii() and key.isdigit()):
        raise bad
    return key


def _checksum(value: str, param: str) -> str:
    value = value.strip()
    if not is_address(value):
        raise ApiError(400, f"{param}: {value!r} is not an address (want 0x and 40 hex digits)", param=param,
                       code="invalid_address")  # fmt: skip
    return to_checksum_address(value)


def _bytes32(value: str, param: str) -> str:
    hex_part = value.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{64}", hex_part):
        raise ApiError(400, f"{param}: {value!r} is not 32 bytes of hex (want 0x and 64 hex digits)", param=param,
                       code="invalid_hex")  # fmt: skip
    return "0x" + hex_part


def _reject_unknown(request: Request, allowed: Sequence[str], filters: Sequence[str] = ()) -> None:
    unknown = sorted(set(request.query_params.keys()) - set(allowed))
    if not unknown:
        return
    if filters:
        message = (f"unknown filter {', '.join(unknown)}: allowed filters are {', '.join(sorted(filters))} "
                   f"(and {', '.join(p for p in allowed if p not in filters)})")  # fmt: skip
        code = "unknown_filter"
    else:
        message = f"unknown query parameter {', '.join(unknown)}: allowed are {', '.join(allowed) or 'none'}"
        code = "unknown_parameter"
    raise ApiError(400, message, param=unknown[0], code=code)


# NOTE: how each filterable field is written in the query and compared in the store.
_FILTER_DOCS: dict[str, tuple[str, str]] = {
    "owner": ("address", "Owner address (any letter case)"),
    "requester": ("address", "Requester address (any letter case)"),
    "provider": ("address", "Provider address (any letter case)"),
    "payer": ("address", "Payer address (any letter case)"),
    "model_id": ("int", "Model id"),
    "base_model_id": ("int", "Base model id (0: models that are not fine-tunes)"),
    "deprecated": ("bool", "true or false"),
    "registered": ("bool", "true or false"),
    "state": ("job_state", "Job state: " + ", ".join(s.name for s in JobState)),
    "kind": ("model_kind", "model or agent (default on /models: model)"),
}


def _normalise_filter(store: Store, name: str, value: str) -> str:
    """The filter value as the store compares it (document fields compared as text)."""
    kind = _FILTER_DOCS.get(name, ("text", ""))[0]
    value = value.strip()
    if kind == "address":
        return _checksum(value, name)
    if kind == "int":
        if not (value.isascii() and value.isdigit()):
            raise ApiError(400, f"{name} must be a non-negative integer, got {value!r}", param=name,
                           code="invalid_filter")  # fmt: skip
        return str(int(value))
    if kind == "bool":
        lowered = value.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise ApiError(400, f"{name} must be true or false, got {value!r}", param=name, code="invalid_filter")
        truth = lowered in ("true", "1")
        # NOTE: the store compares JSON fields as text: PostgreSQL's ->> reads a JSON
        # boolean as 'true'/'false', SQLite's json_extract as 1/0.
        if store.dialect == "postgres":
            return "true" if truth else "false"
        return "1" if truth else "0"
    if kind == "job_state":
        upper = value.upper()
        if upper not in JobState.__members__:
            raise ApiError(400, f"state must be one of {', '.join(JobState.__members__)}, got {value!r}", param=name,
                           code="invalid_filter")  # fmt: skip
        return upper
    if kind == "model_kind":
        if value.lower() not in ("model", "agent"):
            raise ApiError(400, f"kind must be model or agent, got {value!r}", param=name, code="invalid_filter")
        return value.lower()
    return value


def _page(view: View, kind: str, filters: dict[str, str], limit: int, cursor: str | None) -> dict[str, Any]:
    after = decode_cursor(cursor, kind) if cursor is not None else None
    rows = view.store.list_entities(view.chain_id, kind, filters, limit + 1, after)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(sort_key(kind, rows[-1].key)) if more and rows else None
    return {"items": [view.entity_json(e) for e in rows], "next_cursor": next_cursor}


def _all_entities(view: View, kind: str, filters: dict[str, str] | None = None) -> list[Entity]:
    found: list[Entity] = []
    after = None
    while True:
        rows = view.store.list_entities(view.chain_id, kind, filters, MAX_LIMIT, after)
        found += rows
        if len(rows) < MAX_LIMIT:
            return found
        after = sort_key(kind, rows[-1].key)


def _not_found(view: View, what: str, hint: str = "") -> ApiError:
    where = f"indexed up to block {view.cursor.height}" if view.cursor else "nothing indexed yet"
    return ApiError(404, f"{what} not found on chain {view.chain_id} ({where}){hint}", code="not_found")


def _get(view: View, kind: str, keys: Sequence[str], what: str) -> Entity:
    found = view.store.load_entities(view.chain_id, [(kind, k) for k in keys])
    for key in keys:
        if (kind, key) in found:
            return found[(kind, key)]
    raise _not_found(view, what, ": it may not be indexed yet, or the key is wrong")


def _parse_event_position(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+):(\d+)", value.strip())
    if not match:
        raise ApiError(400, f"malformed after {value!r}: pass block:logIndex, e.g. 120:3 (the next_after of a page)",
                       param="after", code="malformed_after")  # fmt: skip
    return int(match[1]), int(match[2])


def _parse_change_id(value: str, param: str) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        raise ApiError(400, f"malformed {param} {value!r}: pass the id of the last event received (a non-negative "
                       "integer)", param=param, code="malformed_event_id")  # fmt: skip
    return int(value)


def _sse(change_id: int, op: str, data: dict[str, Any]) -> str:
    return f"id: {change_id}\nevent: {op}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def _stream_changes(ctx: ApiContext, after: int, once: bool) -> AsyncIterator[str]:
    batch = MAX_LIMIT
    yield f"retry: {max(int(ctx.poll_interval * 1000), 1000)}\n\n"
    last_sent = time.monotonic()
    while True:
        changes = await anyio.to_thread.run_sync(lambda: ctx.store().changes_since(ctx.chain_id, after, batch))
        for change in changes:
            yield _sse(change.id, change.op, change.as_json())
            after = change.id
        if changes:
            last_sent = time.monotonic()
            if len(changes) == batch:
                continue
        if once:
            return
        if time.monotonic() - last_sent >= ctx.heartbeat_interval:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(ctx.poll_interval)


# -- routes -------------------------------------------------------------------------------------------
_ERRORS_400 = {400: {"model": ErrorResponse, "description": "Bad parameter"}}
_ERRORS_404 = {**_ERRORS_400, 404: {"model": ErrorResponse, "description": "Not indexed (yet)"}}

router = APIRouter()


@router.get("/health", response_model=Health, tags=["operations"], summary="Liveness")
def health() -> dict[str, str]:
    """Always 200 while the process serves requests; does not touch the database."""
    return {"status": "ok"}


@router.get("/ready", response_model=Readiness, tags=["operations"], summary="Readiness",
            responses={503: {"model": Readiness, "description": "Catching up (the body also has an error)"}})  # fmt: skip
def ready(ctx: Ctx) -> Response:
    """200 once the indexer has caught up with the chain head (indexed height >= head - 1), 503 before."""
    view = ctx.view()
    cursor = view.cursor
    body: dict[str, Any] = {
        "indexed_height": cursor.height if cursor else None,
        "head": cursor.head if cursor else None,
        "lag": max(cursor.head - cursor.height, 0) if cursor else None,
    }
    if ctx.is_ready is not None:
        is_ready = bool(ctx.is_ready())
    else:
        is_ready = cursor is not None and cursor.height >= cursor.head - 1
    body = {"ready": is_ready, **body}
    if is_ready:
        return JSONResponse(body)
    lag = f"{body['lag']} blocks behind the head" if cursor else "no block indexed yet"
    body.update(_error_body(503, f"indexer not ready: {lag}; retry later", code="not_ready"))
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics",
            response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})  # fmt: skip
def metrics(ctx: Ctx) -> Response:
    """Prometheus text format; head lag and indexed height are refreshed from the cursor on each scrape."""
    cursor = ctx.view().cursor
    if cursor is not None:
        ctx.metrics.indexed_height.set(cursor.height)
        ctx.metrics.head_lag.set(max(cursor.head - cursor.height, 0))
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _add_list_route(path: str, kind: str, model: type, summary: str, description: str, *,
                    fixed: dict[str, str] | None = None, default: dict[str, str] | None = None) -> None:  # fmt: skip
    """GET path: a page of entities of kind, filtered by the fields projections.FILTERS allows."""
    filters = sorted(FILTERS[kind] - set(fixed or {}))
    allowed = [*filters, *PAGE_PARAMS]

    def endpoint(request: Request, ctx: Ctx, limit: int = 50, cursor: str | None = None, **given: str | None) -> Any:
        _reject_unknown(request, allowed, filters)
        view = ctx.view()
        wanted = {name: _normalise_filter(view.store, name, value) for name, value in given.items()
                  if value is not None}  # fmt: skip
        wanted = {**(default or {}), **wanted, **(fixed or {})}
        return _page(view, kind, wanted, limit, cursor)

    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("request", kw, annotation=Request),
        inspect.Parameter("ctx", kw, annotation=Ctx),
        *(inspect.Parameter(name, kw, default=None, annotation=Annotated[str | None, Query(
            description=_FILTER_DOCS.get(name, ("text", f"Exact value of the {name} field"))[1])])
          for name in filters),
        inspect.Parameter("limit", kw, default=50, annotation=Limit),
        inspect.Parameter("cursor", kw, default=None, annotation=PageCursor),
    ]  # fmt: skip
    endpoint.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    endpoint.__name__ = f"list_{path.strip('/')}"
    endpoint.__doc__ = (f"{description}\n\nFilters (exact match): {', '.join(filters)}. Any other query parameter is "
                        f"refused (400). Items are in key order; follow next_cursor until it is null.")  # fmt: skip
    router.add_api_route(path, endpoint, methods=["GET"], response_model=Page[model], response_model_exclude_unset=True,
                         tags=["entities"], summary=summary, responses=_ERRORS_400)  # fmt: skip


_add_list_route("/models", "model", ModelOut, "List models", "Registered models (kind model unless ?kind= is given).",
                default={"kind": "model"})
_add_list_route("/agents", "model", ModelOut, "List agents", "Registered agents (models of kind agent).",
                fixed={"kind": "agent"})
_add_list_route("/providers", "provider", ProviderOut, "List providers", "Providers, with stake and reputation.")
_add_list_route("/jobs", "job", JobOut, "List jobs", "Jobs of the job market, in job id order.")
_add_list_route("/channels", "channel", ChannelOut, "List channels", "Payment channels of the inference escrow.")
_add_list_route("/receipts", "receipt_batch", ReceiptBatchOut, "List receipt batches", "Committed receipt batches.")


@router.get("/models/{model_id}", response_model=ModelOut, response_model_exclude_unset=True, tags=["entities"],
            summary="One model (or agent)", responses=_ERRORS_404)  # fmt: skip
def get_model(ctx: Ctx, model_id: ModelId) -> dict[str, Any]:
    view = ctx.view()
    return view.entity_json(_get(view, "model", [str(model_id)], f"model {model_id}"))


@router.get("/agents/{model_id}", response_model=ModelOut, response_model_exclude_unset=True, tags=["entities"],
            summary="One agent", responses=_ERRORS_404)  # fmt: skip
def get_agent(ctx: Ctx, model_id: ModelId) -> dict[str, Any]:
    view = ctx.view()
    entity = _get(view, "model", [str(model_id)], f"agent {model_id}")
    if entity.doc.get("kind") != "agent":
        raise ApiError(404, f"model {model_id} is not an agent: see /models/{model_id}", code="not_found")
    return view.entity_json(entity)


@router.get("/providers/{address}", response_model=ProviderOut, response_model_exclude_unset=True, tags=["entities"],
            summary="One provider", responses=_ERRORS_404)  # fmt: skip
def get_provider(ctx: Ctx, address: AddressPath) -> dict[str, Any]:
    view = ctx.view()
    key = _checksum(address, "address")
    return view.entity_json(_get(view, "provider", [key], f"provider {key}"))


@router.get("/jobs/{job_id}", response_model=JobOut, response_model_exclude_unset=True, tags=["entities"],
            summary="One job", responses=_ERRORS_404)  # fmt: skip
def get_job(ctx: Ctx, job_id: JobId) -> dict[str, Any]:
    view = ctx.view()
    return view.entity_json(_get(view, "job", [str(job_id)], f"job {job_id}"))


@router.get("/jobs/{job_id}/history", response_model=JobHistory, tags=["entities"], summary="Events of one job",
            responses=_ERRORS_404)  # fmt: skip
def job_history(ctx: Ctx, job_id: JobId) -> dict[str, Any]:
    """The job's events in chain order (JobCreated first)."""
    view = ctx.view()
    events = view.store.history(view.chain_id, "job", str(job_id))
    if not events:
        _get(view, "job", [str(job_id)], f"job {job_id}")  # 404 when the job is unknown
    return {"job_id": job_id, "items": [e.as_json() for e in events]}


@router.get("/channels/{payer}/{provider}", response_model=ChannelOut, response_model_exclude_unset=True,
            tags=["entities"], summary="One payment channel", responses=_ERRORS_404)  # fmt: skip
def get_channel(ctx: Ctx, payer: AddressPath, provider: AddressPath) -> dict[str, Any]:
    view = ctx.view()
    key = f"{_checksum(payer, 'payer')}:{_checksum(provider, 'provider')}"
    return view.entity_json(_get(view, "channel", [key], f"channel {key}"))


@router.get("/receipts/{provider}/{root}", response_model=ReceiptBatchOut, response_model_exclude_unset=True,
            tags=["entities"], summary="One receipt batch", responses=_ERRORS_404)  # fmt: skip
def get_receipt_batch(ctx: Ctx, provider: AddressPath, root: RootPath) -> dict[str, Any]:
    view = ctx.view()
    address, normal = _checksum(provider, "provider"), _bytes32(root, "root")
    keys = list(dict.fromkeys([f"{address}:{normal}", f"{address}:{root}", f"{address}:{normal[2:]}"]))
    return view.entity_json(_get(view, "receipt_batch", keys, f"receipt batch {address}:{normal}"))


@router.get("/signals", response_model=Signals, tags=["signals"], summary="What to act on (final rows only)",
            responses=_ERRORS_400)  # fmt: skip
def signals(ctx: Ctx, request: Request, now: Now = None) -> dict[str, Any]:
    """Money-moving signals, computed from final rows only (a pending row never signals):

    * ``finalizable``: a SUBMITTED or DISPUTED job whose window_ends <= now;
    * ``refundable``: an OPEN or CLAIMED job whose deadline <= now;
    * ``withdrawal_requested``: a channel with unlock_at != 0: its provider should redeem its highest voucher
      before unlock_at.
    """
    _reject_unknown(request, ["now"])
    view = ctx.view()
    at = int(time.time()) if now is None else now
    items: list[dict[str, Any]] = []
    for state, signal in SIGNAL_JOB_STATES.items():
        for job in _all_entities(view, "job", {"state": state}):
            if job.updated_block > view.finalized_height or job.doc.get("state") != state:
                continue
            when_field = "window_ends" if signal == "finalizable" else "deadline"
            when = job.doc.get(when_field)
            if isinstance(when, int) and when <= at:
                items.append({"type": signal, "job_id": int(job.doc.get("job_id", job.key)), "key": job.key,
                              "state": state, when_field: when, "updated_block": job.updated_block})  # fmt: skip
    for channel in _all_entities(view, "channel"):
        unlock_at = channel.doc.get("unlock_at") or 0
        if channel.updated_block > view.finalized_height or not unlock_at:
            continue
        items.append({"type": "withdrawal_requested", "key": channel.key, "payer": channel.doc.get("payer"),
                      "provider": channel.doc.get("provider"), "unlock_at": unlock_at,
                      "balance": channel.doc.get("balance"), "updated_block": channel.updated_block})  # fmt: skip
    order = {"finalizable": 0, "refundable": 1, "withdrawal_requested": 2}
    items.sort(key=lambda s: (order[s["type"]], sort_key("job", s["key"]) if "job_id" in s else s["key"]))
    return {"now": at, "finalized_height": view.finalized_height, "items": items}


@router.get("/events", response_model=EventPage, tags=["events"], summary="Raw events", responses=_ERRORS_400)
def events(ctx: Ctx, request: Request, name: EventName = None, limit: Limit = 100,
           after: EventPosition = None) -> dict[str, Any]:  # fmt: skip
    """Decoded protocol events in chain order; follow next_after until it is null."""
    _reject_unknown(request, ["name", "limit", "after"])
    position = _parse_event_position(after) if after is not None else None
    view = ctx.view()
    rows = view.store.events(view.chain_id, name=name or None, limit=limit + 1, after=position)
    more = len(rows) > limit
    rows = rows[:limit]
    next_after = f"{rows[-1].block_number}:{rows[-1].log_index}" if more and rows else None
    return {"items": [e.as_json() for e in rows], "next_after": next_after}


@router.get("/stream", tags=["events"], summary="Live change log (Server-Sent Events)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}, **_ERRORS_400})
async def stream(ctx: Ctx, request: Request, after: ChangeAfter = None, once: Once = False,
                 last_event_id: LastEventId = None) -> Response:
    """Every change of the view as an event: ``id: <change id>``, ``event: upsert|delete|reorg``,
    ``data: {"id", "block_number", "op", "kind", "key", "doc"}``. A ``reorg`` event means rows above its
    block_number were rebuilt (the upserts that follow carry the new documents). A comment line is sent
    every ~10 s while idle. Resume with the Last-Event-ID header (EventSource does it) or ?after=."""
    _reject_unknown(request, ["after", "once"])
    if last_event_id is not None:
        start = _parse_change_id(last_event_id, "Last-Event-ID")
    elif after is not None:
        start = _parse_change_id(after, "after")
    else:
        start = 0
    return StreamingResponse(_stream_changes(ctx, start, once), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip


# -- application --------------------------------------------------------------------------------------
def create_app(store_factory: Callable[[], Store], chain_id: int, confirmations: int, metrics: IndexerMetrics,
               is_ready: Callable[[], bool] | None = None, *, poll_interval: float = 0.2,
               heartbeat_interval: float = 10.0, cors_origins: Sequence[str] = ("*",)) -> FastAPI:  # fmt: skip
    """The indexer's HTTP API for chain ``chain_id``.

    ``store_factory`` opens a Store; it is called once per request thread. A row is final at or
    below ``head - confirmations``. ``is_ready`` (when given) decides /ready; otherwise the
    cursor does (indexed height >= head - 1). ``poll_interval`` and ``heartbeat_interval``
    pace /stream; ``cors_origins`` may read the API from a browser (default: any, read-only).
    """
    context = ApiContext(store_factory, chain_id, confirmations, metrics, is_ready, poll_interval, heartbeat_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            context.close()

    app = FastAPI(
        title="NodeAI Hub indexer",
        version="1.0",
        description=(
            f"Read-only view of the NodeAI Hub contracts on chain {chain_id}: models, agents, providers, jobs, "
            f"payment channels and receipt batches, built from contract events.\n\n"
            f"Every entity has `status`: `final` once its last update is {confirmations} blocks below the head, "
            "`pending` before (a reorg may still change it). Lists page with an opaque `cursor`; `/stream` pushes "
            "every change as Server-Sent Events. Errors are `{\"error\": {\"message\", \"type\", \"param\", "
            "\"code\"}}`."
        ),
        lifespan=lifespan,
    )
    app.state.indexer = context
    app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET"],
                       allow_headers=["Last-Event-ID"])  # fmt: skip
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(router)

    def openapi() -> dict[str, Any]:
        # NOTE: validation errors are 400 with the error envelope here, not FastAPI's 422.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
