"""The dApp explorer: a static page served by the indexer, and the few routes it needs beside the API.

``mount_explorer(app, deployments, rpc_urls=...)`` adds to an indexer app (``create_app``):

* ``GET /`` and ``GET /explorer`` redirect to ``/explorer/``, the page (``indexer/explorer/``:
  HTML, CSS and ES modules, no build step; ethers v6 is vendored in ``vendor/``);
* ``GET /explorer/deployments.json``: the deployments file (addresses and ABIs), which the page
  builds its contract objects and wallet transactions from;
* ``GET /explorer/api/position``: the last change id of the live stream with the cursor, so the
  page reads the lists and then follows ``/stream?after=<id>`` without missing a change;
* ``GET /explorer/api/liveness``: whether each registered provider's OpenAI-compatible endpoint
  answers ``GET <endpoint>/models`` (probed from the server, cached for a few seconds);
* ``POST /explorer/rpc``: a read-only JSON-RPC relay to the indexer's own node (``eth_call`` and
  a few other reads), so the page can check receipts on chain without a wallet and without the
  node's URL (which may carry an API key) ever reaching the browser.

The page reads the lists from the API's own routes (``/models``, ``/providers``, ``/jobs``,
``/channels``, ``/receipts``, ``/stream``, ``/ready``); nothing here writes to the database.
"""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import anyio
import requests
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from nodeai.chain.deployments import Deployment
from nodeai.errors import NodeAIError

from .api import ApiContext
from .store import sort_key

__all__ = ["mount_explorer", "ExplorerError", "STATIC_DIR", "READ_METHODS"]

STATIC_DIR = Path(__file__).with_name("explorer")
PREFIX = "/explorer"

# NOTE: only reads: a relay that forwarded eth_sendRawTransaction or the node's admin/debug
# namespaces would let any visitor use the indexer's node (and its API key) for anything.
READ_METHODS = frozenset({
    "eth_call", "eth_chainId", "net_version", "eth_blockNumber", "eth_getBlockByNumber", "eth_getCode",
    "eth_getBalance", "eth_getTransactionReceipt", "eth_getTransactionByHash",
})  # fmt: skip
MAX_RPC_BODY = 64 * 1024
MAX_RPC_BATCH = 20
MAX_PROBED_PROVIDERS = 200

# NOTE: the page loads only its own files (the wallet is injected by the browser extension,
# which CSP does not govern); 'unsafe-inline' is not needed anywhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip


class ExplorerError(NodeAIError, ValueError):
    """The explorer was mounted with arguments it cannot use."""


def _rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class RpcRelay:
    """Forwards read-only JSON-RPC requests to the first node of ``urls`` that answers."""

    def __init__(self, urls: Sequence[str], timeout: float = 10.0):
        self.urls = list(urls)
        self.timeout = timeout
        self._preferred = 0
        self._local = threading.local()  # NOTE: one requests.Session per thread: sessions are not thread-safe
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def check(self, body: Any) -> dict[str, Any] | None:
        """None when ``body`` may be forwarded, else a JSON-RPC error saying why not."""
        calls = body if isinstance(body, list) else [body]
        if not calls or len(calls) > MAX_RPC_BATCH:
            return _rpc_error(None, -32600, f"explorer rpc: send 1..{MAX_RPC_BATCH} requests per call")
        for call in calls:
            if not isinstance(call, dict) or not isinstance(call.get("method"), str):
                return _rpc_error(None, -32600, "explorer rpc: each request must be a JSON-RPC object with a method")
            if call["method"] not in READ_METHODS:
                return _rpc_error(call.get("id"), -32601, f"explorer rpc: {call['method']} is not relayed (read-only: "
                                  f"{', '.join(sorted(READ_METHODS))}); send transactions with your wallet")  # fmt: skip
        return None

    def forward(self, body: Any) -> tuple[int, bytes]:
        """The node's status and body; 502 with a JSON-RPC error when no node answers."""
        order = self.urls[self._preferred:] + self.urls[: self._preferred]
        last_error = "no RPC URL configured"
        for url in order:
            try:
                reply = self._session().post(url, json=body, timeout=self.timeout)
            except requests.RequestException as exc:
                last_error = f"{type(exc).__name__}"
                continue
            if reply.status_code >= 500:
                last_error = f"HTTP {reply.status_code}"
                continue
            with self._lock:
                self._preferred = self.urls.index(url)
            return reply.status_code, reply.content
        # NOTE: the node's URL is not echoed: it may carry an API key.
        message = f"explorer rpc: the indexer's node did not answer ({last_error}); retry later"
        request_id = body.get("id") if isinstance(body, dict) else None
        return 502, json.dumps(_rpc_error(request_id, -32603, message)).encode()


class LivenessProber:
    """Probes providers' OpenAI-compatible endpoints; results are cached for ``ttl`` seconds."""

    def __init__(self, timeout: float = 5.0, ttl: float = 15.0):
        self.timeout, self.ttl = timeout, ttl
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        # NOTE: one probing round at a time: visitors arriving while a round runs wait for it and
        # read its results from the cache, instead of each probing every endpoint again.
        self._lock = threading.Lock()

    def probe_all(self, endpoints: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            results: dict[str, dict[str, Any]] = {}
            stale: list[str] = []
            for endpoint in dict.fromkeys(endpoints):
                cached = self._cache.get(endpoint)
                if cached and now - cached[0] < self.ttl:
                    results[endpoint] = cached[1]
                else:
                    stale.append(endpoint)
            if stale:
                # NOTE: a pool per round, not per process: rounds are rare (cached), and nothing is left running.
                with ThreadPoolExecutor(max_workers=min(len(stale), 16), thread_name_prefix="explorer-probe") as pool:
                    probed = list(pool.map(self._probe, stale))
                for endpoint, result in zip(stale, probed):
                    results[endpoint] = result
                    self._cache[endpoint] = (time.monotonic(), result)
            return results

    def _probe(self, endpoint: str) -> dict[str, Any]:
        checked_at = int(time.time())
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return {"live": False, "latency_ms": None, "checked_at": checked_at,
                    "reason": "endpoint is not an http(s) URL"}  # fmt: skip
        url = endpoint.rstrip("/") + "/models"
        started = time.monotonic()
        try:
            # NOTE: no redirects and only the status is kept: an endpoint is chosen by whoever
            # registers it, so the indexer must not become a way to read other hosts' pages.
            reply = requests.get(url, timeout=self.timeout, allow_redirects=False, stream=True)
            reply.close()
        except requests.Timeout:
            return {"live": False, "latency_ms": None, "checked_at": checked_at,
                    "reason": f"no answer in {self.timeout:g} s"}  # fmt: skip
        except requests.RequestException:
            return {"live": False, "latency_ms": None, "checked_at": checked_at, "reason": "unreachable"}
        latency = round((time.monotonic() - started) * 1000)
        # NOTE: 401/403 still mean "up": a gateway may require a voucher even for /models.
        live = reply.status_code < 500
        return {"live": live, "latency_ms": latency, "checked_at": checked_at,
                "reason": None if live else f"HTTP {reply.status_code}"}  # fmt: skip


def _load_deployment(deployments: Deployment | str | os.PathLike[str]) -> Deployment:
    if isinstance(deployments, Deployment):
        return deployments
    path = Path(deployments)
    if not path.is_file():
        raise ExplorerError(f"no deployments file {path}: deploy first (scripts/deploy.py) or fix the path")
    try:
        return Deployment(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ExplorerError(f"{path} is not a deployments file ({exc}): regenerate it with scripts/deploy.py") from None


def _context(request: Request) -> ApiContext:
    context = getattr(request.app.state, "indexer", None)
    if not isinstance(context, ApiContext):
        raise RuntimeError("mount_explorer needs an app made by nodeai.indexer.api.create_app")
    return context


def mount_explorer(app: FastAPI, deployments: Deployment | str | os.PathLike[str], *,
                   rpc_urls: Sequence[str] = (), probe_providers: bool = True, probe_timeout: float = 5.0,
                   liveness_ttl: float = 15.0) -> None:  # fmt: skip
    """Serve the explorer page at ``/explorer/`` (``/`` redirects there) on an indexer ``app``.

    ``deployments`` is the Deployment or the path of its JSON file; it must be for the chain the
    app indexes. ``rpc_urls`` (the indexer's nodes) back the read-only ``/explorer/rpc`` relay;
    without them the page reads the chain through the visitor's wallet. ``probe_providers=False``
    turns off the liveness probes of providers' endpoints.
    """
    deployment = _load_deployment(deployments)
    context = getattr(app.state, "indexer", None)
    if not isinstance(context, ApiContext):
        raise ExplorerError("mount_explorer needs an app made by nodeai.indexer.api.create_app")
    if context.chain_id != deployment.chain_id:
        raise ExplorerError(f"the deployments are for chain id {deployment.chain_id} but the indexer serves chain id "
                            f"{context.chain_id}: pass the deployments file the indexer was started with")  # fmt: skip
    if not (STATIC_DIR / "index.html").is_file():
        raise ExplorerError(f"explorer files missing in {STATIC_DIR}: reinstall the package")
    missing = [name for name in ("JobMarket", "InferenceEscrow", "ReceiptRegistry") if name not in deployment.contracts]
    if missing:
        raise ExplorerError(f"the deployments file has no {', '.join(missing)}: it is not a full NodeAI suite")
    relay = RpcRelay(rpc_urls) if rpc_urls else None
    prober = LivenessProber(probe_timeout, liveness_ttl) if probe_providers else None
    deployment_json = asdict(deployment)

    def index() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})  # fmt: skip

    def to_explorer() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    def deployments_json() -> Response:
        return JSONResponse(deployment_json)

    def position(request: Request) -> dict[str, Any]:
        ctx = _context(request)
        view = ctx.view()
        cursor = view.cursor
        return {
            "chain_id": view.chain_id,
            "change_id": view.store.last_change_id(view.chain_id),
            "indexed_height": cursor.height if cursor else None,
            "head": cursor.head if cursor else None,
            "finalized_height": view.finalized_height,
            "confirmations": ctx.confirmations,
            "rpc_relay": relay is not None,
            "liveness": prober is not None,
        }

    def liveness(request: Request) -> dict[str, Any]:
        if prober is None:
            return {"enabled": False, "items": []}
        ctx = _context(request)
        store = ctx.store()
        providers: list[dict[str, Any]] = []
        after = None
        while len(providers) < MAX_PROBED_PROVIDERS:
            rows = store.list_entities(ctx.chain_id, "provider", None, 100, after)
            providers += [row.doc for row in rows if row.doc.get("registered")]
            if len(rows) < 100:
                break
            after = sort_key("provider", rows[-1].key)
        providers = providers[:MAX_PROBED_PROVIDERS]
        results = prober.probe_all([str(p.get("endpoint") or "") for p in providers])
        items = [{"address": p.get("address"), "endpoint": p.get("endpoint"), **results[str(p.get("endpoint") or "")]}
                 for p in providers]  # fmt: skip
        return {"enabled": True, "items": items}

    async def rpc(request: Request) -> Response:
        if relay is None:
            body = _rpc_error(None, -32601, "explorer rpc: this indexer relays no RPC; connect a wallet instead")
            return JSONResponse(body, status_code=404)
        raw = await request.body()
        if len(raw) > MAX_RPC_BODY:
            return JSONResponse(_rpc_error(None, -32600, f"explorer rpc: body over {MAX_RPC_BODY} bytes"), 413)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse(_rpc_error(None, -32700, "explorer rpc: the body is not JSON"), status_code=400)
        refused = relay.check(body)
        if refused is not None:
            return JSONResponse(refused, status_code=400)
        # NOTE: requests blocks: run it in a thread so the event loop (and the SSE streams) go on.
        status, content = await anyio.to_thread.run_sync(relay.forward, body)
        return Response(content, status_code=status, media_type="application/json")

    add = app.add_api_route
    add("/", to_explorer, methods=["GET"], include_in_schema=False)
    add(PREFIX, to_explorer, methods=["GET"], include_in_schema=False)
    add(f"{PREFIX}/", index, methods=["GET"], include_in_schema=False)
    add(f"{PREFIX}/index.html", index, methods=["GET"], include_in_schema=False)
    add(f"{PREFIX}/deployments.json", deployments_json, methods=["GET"], tags=["explorer"],
        summary="The deployments file (addresses and ABIs)")  # fmt: skip
    add(f"{PREFIX}/api/position", position, methods=["GET"], tags=["explorer"],
        summary="Last change id of /stream, with the cursor")  # fmt: skip
    add(f"{PREFIX}/api/liveness", liveness, methods=["GET"], tags=["explorer"],
        summary="Whether each registered provider's endpoint answers GET /models")  # fmt: skip
    add(f"{PREFIX}/rpc", rpc, methods=["POST"], include_in_schema=False)
    # NOTE: mounted last: a mount matches every path under it, so the routes above go first.
    app.mount(PREFIX, StaticFiles(directory=STATIC_DIR), name="explorer")
    app.openapi_schema = None  # the schema is built lazily; drop one built before these routes
