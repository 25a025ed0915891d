"""Prometheus metrics of one indexer process (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class IndexerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.head_lag = Gauge("nodeai_indexer_head_lag_blocks", "Blocks between the chain head and the indexed height", registry=self.registry)
        self.indexed_height = Gauge("nodeai_indexer_indexed_height", "Last block ingested", registry=self.registry)
        self.events_ingested = Counter("nodeai_indexer_events_ingested", "Protocol events ingested", registry=self.registry)
        self.reorgs = Counter("nodeai_indexer_reorgs", "Chain reorganisations handled", registry=self.registry)
        self.reorg_depth = Gauge("nodeai_indexer_last_reorg_depth_blocks", "Depth of the last reorg", registry=self.registry)
        self.rpc_errors = Counter("nodeai_indexer_rpc_errors", "JSON-RPC errors by kind", ["kind"], registry=self.registry)
        self.step_failures = Counter("nodeai_indexer_step_failures", "Ingest steps that failed for a non-RPC reason (database, bug)", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
