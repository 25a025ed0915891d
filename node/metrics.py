"""Prometheus metrics of the provider daemon (one registry per daemon, served at /metrics).

Jobs by local phase are read from the state database at scrape time, so the
gauge is right after a restart too; the rest are counters and histograms
updated as things happen. Transaction labels are the step (``claimJob``,
``submitResult``, ``finalize``, ``registration``, ``redeemBatch``,
``commitReceipts``), never a job id, to keep the label set small.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["NodeMetrics"]


def _step(label: str) -> str:
    return label.split(" ", 1)[0]


class _Live(Collector):
    def __init__(self, jobs: Callable[[], dict[str, int]], cache: Callable[[], tuple[int, int] | None]):
        self._jobs, self._cache = jobs, cache

    def collect(self) -> Iterable[Any]:
        gauge = GaugeMetricFamily("nodeai_node_jobs", "Jobs in the local state by phase", labels=["state"])
        for phase, count in self._jobs().items():
            gauge.add_metric([phase], count)
        yield gauge
        stats = self._cache()
        hits = CounterMetricFamily("nodeai_node_artifact_cache_hits", "Artifact reads served from the local cache")
        misses = CounterMetricFamily("nodeai_node_artifact_cache_misses", "Artifact reads that went to the network")
        hits.add_metric([], stats[0] if stats else 0)
        misses.add_metric([], stats[1] if stats else 0)
        yield hits
        yield misses


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claim_latency = Histogram(
            "nodeai_node_claim_latency_seconds", "From the feed delivering an open job to its claim transaction sent",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)  # fmt: skip
        self.execution_seconds = Histogram("nodeai_node_execution_seconds", "Job execution time, by job kind",
                                           ["kind"], registry=r)
        self.jobs_executed = Counter("nodeai_node_jobs_executed", "Jobs executed, by outcome", ["outcome"], registry=r)
        self.txs_sent = Counter("nodeai_node_tx_sent", "Transactions broadcast (replacements included)", ["step"], registry=r)
        self.txs_failed = Counter("nodeai_node_tx_failed", "Transactions given up, by why", ["step", "kind"], registry=r)
        self.txs_bumped = Counter("nodeai_node_tx_bumped", "Transactions replaced with higher fees", ["step"], registry=r)
        self.vouchers = Counter("nodeai_node_vouchers_redeemed", "Inference vouchers redeemed", registry=r)
        self.voucher_amount = Counter("nodeai_node_voucher_amount_redeemed", "Token units paid by redeemed vouchers",
                                      registry=r)
        self.receipts = Counter("nodeai_node_receipts_committed", "Receipts committed under on-chain roots", registry=r)
        self._live: _Live | None = None

    def bind(self, jobs: Callable[[], dict[str, int]], cache: Callable[[], tuple[int, int] | None]) -> None:
        """Attach the scrape-time sources (the state database, the artifact cache)."""
        if self._live is None:
            self._live = _Live(jobs, cache)
            self.registry.register(self._live)

    # -- hooks the TxManager and the Settler call -----------------------------------------------------------
    def tx_sent(self, label: str) -> None:
        self.txs_sent.labels(_step(label)).inc()

    def tx_failed(self, label: str, kind: str) -> None:
        self.txs_failed.labels(_step(label), kind).inc()

    def tx_bumped(self, label: str) -> None:
        self.txs_bumped.labels(_step(label)).inc()

    def vouchers_redeemed(self, count: int, amount: int) -> None:
        self.vouchers.inc(count)
        self.voucher_amount.inc(amount)

    def receipts_committed(self, count: int) -> None:
        self.receipts.inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
