"""Prometheus metrics of one gateway (its own registry, so tests can run several in a process).

``render()`` appends the text of any extra sources after the gateway's own
metrics: the app registers ``engine.metrics_text()`` for engines that have it
(the supervised vLLM server exposes its own ``/metrics``), and anyone may add
a source with ``add_source``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Awaitable, Callable, Union

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["GatewayMetrics", "TextSource"]

log = logging.getLogger(__name__)

TextSource = Callable[[], Union[str, Awaitable[str]]]

# NOTE: buckets from 5 ms (an embedding) to 2 min (a long CPU generation).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("nodeai_gateway_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("nodeai_gateway_request_latency_seconds", "Request latency, until the last byte",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("nodeai_gateway_time_to_first_token_seconds", "Time to the first generated token",
                              ["model"], buckets=_TTFT_BUCKETS, registry=r)
        self.engine_latency = Histogram("nodeai_gateway_engine_latency_seconds", "Time spent in the engine",
                                        ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("nodeai_gateway_tokens", "Tokens metered, by model and direction (in/out)",
                              ["model", "direction"], registry=r)
        self.charged = Counter("nodeai_gateway_charged", "Amount charged in token units, by model and payment mode",
                               ["model", "mode"], registry=r)
        self.errors = Counter("nodeai_gateway_errors", "Errors answered, by error code", ["type"], registry=r)
        self.engine_healthy = Gauge("nodeai_gateway_engine_healthy", "1 when the engine's last health check passed",
                                    ["engine"], registry=r)
        self.in_flight = Gauge("nodeai_gateway_requests_in_flight", "Requests being served", registry=r)
        self.receipts_pending = Gauge("nodeai_gateway_receipts_pending", "Receipts not committed in a batch yet",
                                      registry=r)
        self._sources: list[tuple[str, TextSource]] = []

    def add_source(self, name: str, source: TextSource) -> None:
        """Append ``source()``'s Prometheus text (sync or async) to every ``render``."""
        self._sources.append((name, source))

    async def render(self) -> bytes:
        parts = [generate_latest(self.registry)]
        for name, source in self._sources:
            try:
                text = source()
                if inspect.isawaitable(text):
                    text = await text
            except Exception as exc:  # NOTE: a broken engine must not take /metrics down with it
                log.warning("metrics source %s failed: %s", name, exc)
                self.errors.labels(type="metrics_source").inc()
                continue
            if text:
                parts.append(f"# metrics of {name}\n".encode() + text.encode().rstrip(b"\n") + b"\n")
        return b"".join(parts)
