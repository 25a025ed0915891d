"""Where a paid embedding request's time goes in the gateway: per-phase server timings, one run.

`scripts/bench/serving.py` gives the overhead ratio (gateway p50 / engine
p50); this one splits it. The gateway serves MiniLM embeddings with the real
voucher path (anvil, contracts, deposit, as serving.py sets them up); a
client process sends one-sentence requests one at a time over a plain
keep-alive `http.client` connection (no client library in the way), with a
voucher signed once for a large cumulative amount (the gateway accepts a
voucher as long as it covers everything charged so far). Timers wrapped
around the gateway's own methods give each phase's p50:

* `asgi_ms`: the whole request inside the ASGI app (routing, validation,
  handler, response);
* `handler_ms`: `GatewayService.embeddings` (checks, token counts, payment,
  engine, receipt, body);
* `authorize_ms`: voucher decoding, signature recovery, coverage checks and
  the reservation; `engine_ms`: the engine's `embed`; `settle_ms`: the
  receipt signature and the SQLite transaction (charge, voucher, receipt);
* client side: `client_ms` (the request's round trip), `health_ms` (a bare
  GET /health round trip, the transport's floor), `sign_voucher_ms`.

Run::

    .venv/bin/python scripts/bench/gateway_phases.py [--requests 200]

Last line: one JSON object with the keys above.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import EMBEDDER, SENTENCES, deploy  # noqa: E402 - the serving benchmark's set-up

PHASES: dict[str, list[float]] = defaultdict(list)
WARMUP = 20
"""Requests of each kind sent before measuring (dropped from the server's phases too)."""


def p50_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 3)


def timed(cls: type, name: str, phase: str) -> None:
    """Record the wall time of every call of ``cls.name`` (sync or async) under ``phase``."""
    original: Callable[..., Any] = getattr(cls, name)
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                PHASES[phase].append(time.perf_counter() - t0)
    else:

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                PHASES[phase].append(time.perf_counter() - t0)

    setattr(cls, name, wrapper)


def run_client(spec: dict[str, Any], requests: int) -> dict[str, float]:
    import http.client

    from nodeai.serving.client import VoucherWallet
    from nodeai.serving.payments import VOUCHER_HEADER

    wallet = VoucherWallet(spec["payer_key"], spec["provider"], spec["chain_id"], spec["escrow"],
                           {EMBEDDER: spec["embed_id"]}, headroom=10**6)  # fmt: skip
    host, port = spec["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port))
    body = json.dumps({"model": EMBEDDER, "input": [SENTENCES[0]], "encoding_format": "float"})
    voucher = wallet.sign(spec["embed_id"], 10**13)
    headers = {"Content-Type": "application/json", VOUCHER_HEADER: voucher}

    def health() -> None:
        conn.request("GET", "/health")
        conn.getresponse().read()

    def embed() -> None:
        conn.request("POST", "/v1/embeddings", body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise SystemExit(f"the gateway answered {response.status}: {data[:500]!r}")

    def sign() -> None:
        wallet.sign(spec["embed_id"], 10**13 + time.monotonic_ns() % 10**6)

    out = {}
    for name, call in (("health_ms", health), ("client_ms", embed), ("sign_voucher_ms", sign)):
        for _ in range(WARMUP):
            call()
        latencies = []
        for _ in range(requests):
            t0 = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - t0)
        out[name] = p50_ms(latencies)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="measured requests per client-side figure")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(run_client(json.loads(args.client), args.requests)))
        return

    from nodeai.chain.anvil import ANVIL_KEYS
    from nodeai.serving.chain_view import ChainView
    from nodeai.serving.engines.onnx_embed import OnnxEmbeddingEngine
    from nodeai.serving.gateway import GatewayServer, create_app
    from nodeai.serving.gateway.auth import Authorizer
    from nodeai.serving.gateway.serving import GatewayService
    from nodeai.serving.limits import Limits
    from nodeai.serving.store import GatewayStore

    timed(GatewayService, "embeddings", "handler_ms")
    timed(Authorizer, "authorize", "authorize_ms")
    timed(OnnxEmbeddingEngine, "embed", "engine_ms")
    timed(GatewayService, "_settle", "settle_ms")

    workdir = Path(tempfile.mkdtemp(prefix="nodeai-bench-phases-"))
    anvil, market, _, embed_id = deploy()
    engine = OnnxEmbeddingEngine()
    store: GatewayStore | None = None
    server: GatewayServer | None = None
    try:
        engine.start_sync()
        provider = market.address("provider")
        store = GatewayStore(workdir / "gateway.db", provider)
        app = create_app([engine], provider_key=ANVIL_KEYS[3], database=store,
                         chain=ChainView(market.w3, market.deployment, provider, [embed_id]),
                         model_ids={EMBEDDER: embed_id}, manage_engines=False,
                         limits=Limits(rate_limit_per_s=100_000, rate_limit_burst=100_000))  # fmt: skip

        async def timed_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            t0 = time.perf_counter()
            try:
                await app(scope, receive, send)
            finally:
                if scope["type"] == "http" and scope["path"] == "/v1/embeddings":
                    PHASES["asgi_ms"].append(time.perf_counter() - t0)

        server = GatewayServer(timed_app).start()
        spec = {"url": server.url, "payer_key": ANVIL_KEYS[4], "provider": provider,
                "chain_id": market.deployment.chain_id, "escrow": market.escrow.address, "embed_id": embed_id}  # fmt: skip
        done = subprocess.run([sys.executable, __file__, "--requests", str(args.requests), "--client", json.dumps(spec)],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"the client process failed:\n{done.stderr[-4000:]}")
        client = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        if server is not None:
            server.stop()
        engine.close_sync()
        if store is not None:
            store.close()
        anvil.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, Any] = {name: p50_ms(values[WARMUP:]) for name, values in sorted(PHASES.items())}
    results.update(client)
    results["overhead_vs_engine"] = round(results["client_ms"] / results["engine_ms"], 3)
    results["requests"] = len(PHASES["engine_ms"]) - WARMUP
    print(json.dumps(results))


if __name__ == "__main__":
    main()
