"""Ingestion: backfill from the deploy block, then tail the head, reorg-safe.

One ``step()`` ingests one block range and commits its events, projections,
block hashes and cursor in one database transaction. Before a range is
accepted its first block must extend the cursor's hash; near the head every
block's parent hash is checked and every log's block hash must match its
header, and a header whose bloom names our contracts must come with logs.
On a mismatch the indexer walks back to the fork point, reverts every effect
above it and re-ingests.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, TypeVar

from eth_bloom import BloomFilter
from eth_utils import to_bytes

from nodeai.chain.deployments import Deployment
from nodeai.indexer.codec import DecodeError, LogCodec
from nodeai.indexer.metrics import IndexerMetrics
from nodeai.indexer.projections import apply, entity_of, rebuild_entity
from nodeai.indexer.ranges import RangePlanner
from nodeai.indexer.reorg import find_fork_point, parent_links_ok
from nodeai.indexer.rpc import RpcError, RpcPool, fetch_logs
from nodeai.indexer.store import Batch, Cursor, Entity, EventRow, Store

log = logging.getLogger("nodeai.indexer")
T = TypeVar("T")


@contextmanager
def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[Iterator[T]]:
    """Iterate ``items`` while a thread fetches up to ``depth`` ahead.

    The next ``eth_getLogs`` range is read (the node works in its own process)
    while this one is decoded and committed; errors reach the consumer at the
    item where they happened. Leaving the block early stops the thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put((done, None))
        except BaseException as exc:  # NOTE: handed to the consumer, raised there
            buffer.put((done, exc))

    def consume() -> Iterator[T]:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item

    worker = threading.Thread(target=produce, name="prefetch-logs", daemon=True)
    worker.start()
    try:
        yield consume()
    finally:
        stop.set()
        worker.join(timeout=30)


class InconsistentChain(Exception):
    """The RPC answered something that contradicts itself (a log from another fork, a bloom
    with our addresses and no logs): the range is retried, never ingested."""


@dataclass
class IngestConfig:
    confirmations: int = 12
    # NOTE: below head - tail_window only range ends are hash-checked; inside it, every block.
    tail_window: int = 64
    max_blocks_per_step: int = 10_000
    poll_interval: float = 0.1


class Ingestor:
    def __init__(self, pool: RpcPool, store: Store, deployment: Deployment, config: IngestConfig | None = None,
                 metrics: IndexerMetrics | None = None):
        self.pool = pool
        self.store = store
        self.deployment = deployment
        self.chain_id = deployment.chain_id
        self.config = config or IngestConfig()
        self.metrics = metrics or IndexerMetrics()
        self.codec = LogCodec(deployment)
        self._bloom_addresses = [to_bytes(hexstr=a) for a in self.codec.addresses]
        self.planner = RangePlanner()
        self.caught_up = threading.Event()
        self._stop = threading.Event()

    # -- the loop -------------------------------------------------------------------------------
    def run(self, stop_after: float | None = None) -> None:
        """Ingest until ``stop()``; errors are logged and retried with backoff, never fatal."""
        deadline = time.monotonic() + stop_after if stop_after else None
        backoff = self.config.poll_interval
        while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
            try:
                progressed = self.step()
                backoff = self.config.poll_interval
                if not progressed:
                    self.caught_up.set()
                    self._stop.wait(self.config.poll_interval)
            except (RpcError, InconsistentChain, DecodeError, OSError) as exc:
                kind = getattr(getattr(exc, "kind", None), "name", type(exc).__name__)
                self.metrics.rpc_errors.labels(kind=kind.lower()).inc()
                log.warning("indexer step failed (%s): %s; retrying in %.2f s", kind, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:  # NOTE: a database outage or a bug: keep the process up, retry with backoff
                self.metrics.step_failures.inc()
                log.exception("indexer step failed; nothing was committed; retrying in %.2f s", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                try:
                    self.store.reconnect()
                except Exception:
                    log.exception("reconnecting to the database failed; will retry")

    def stop(self) -> None:
        self._stop.set()

    def step(self) -> bool:
        """Ingest the next range, or handle a reorg. Returns False when already at the head."""
        head = self.pool.block_number()
        cursor = self.store.cursor(self.chain_id) or self._genesis_cursor(head)
        self.metrics.head_lag.set(max(head - cursor.height, 0))
        self.metrics.indexed_height.set(cursor.height)
        if cursor.height > head or self._hash_at(cursor.height) != cursor.hash:
            self._revert(cursor, head)
            return True
        if cursor.height == head:
            if cursor.head != head:
                self.store.set_head(self.chain_id, head)
            return False
        end = min(head, cursor.height + self.config.max_blocks_per_step)
        ranges = fetch_logs(self.pool, self.planner, cursor.height + 1, end, self.codec.addresses, learned=self._learn)
        with prefetched(ranges) as ranges:
            for start, stop, logs in ranges:
                cursor = self._ingest_range(cursor, start, stop, logs, head)
                if cursor is None:  # a reorg was found and reverted
                    return True
        return True

    def _learn(self, planner: RangePlanner) -> None:
        # NOTE: keeps a provider's range cap (and the grown span) across steps
        self.planner = planner

    # -- one range ---------------------------------------------------------------------------------
    def _ingest_range(self, cursor: Cursor, start: int, stop: int, logs: list[dict], head: int) -> Cursor | None:
        in_tail = stop >= head - self.config.tail_window
        numbers = range(start, stop + 1) if in_tail else sorted({start, stop})
        headers = {n: h for n, h in zip(numbers, self.pool.get_blocks(list(numbers)))}
        if headers[start]["parentHash"] != cursor.hash:
            self._revert(cursor, head)
            return None
        if in_tail and not parent_links_ok(cursor.hash, [headers[n] for n in numbers]):
            raise InconsistentChain(f"headers {start}..{stop} do not link: the chain moved while reading")
        for entry in logs:
            header = headers.get(entry["blockNumber"])
            if header is not None and header["hash"] != entry["blockHash"]:
                raise InconsistentChain(f"log in block {entry['blockNumber']} is from another fork")
        if in_tail:
            self._check_blooms(headers, logs)
        batch = Batch(blocks={n: (h["hash"], h["parentHash"]) for n, h in headers.items()})
        self._fold(batch, logs)
        batch.cursor = Cursor(stop, headers[stop]["hash"], head)
        self.store.commit_batch(self.chain_id, batch)
        self.metrics.events_ingested.inc(len(batch.events))
        self.metrics.indexed_height.set(stop)
        self.metrics.head_lag.set(max(head - stop, 0))
        return batch.cursor

    def _fold(self, batch: Batch, logs: list[dict]) -> None:
        decoded = []
        for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
            decoder = self.codec.decoder(entry["address"], entry["topics"][0]) if entry["topics"] else None
            if decoder is None:
                continue  # NOTE: an event of a contract version we do not know: kept out, not guessed
            args = decoder.decode(entry["topics"], entry["data"])
            owner = entity_of(decoder.name, args)
            decoded.append((entry, decoder, args, owner))
        known = self.store.load_entities(self.chain_id, [o for *_, o in decoded if o])
        for entry, decoder, args, owner in decoded:
            kind, key = owner if owner else (None, None)
            batch.events.append(EventRow(entry["blockNumber"], entry["logIndex"], entry["blockHash"],
                                         entry["transactionHash"], decoder.contract, decoder.name, args, kind, key))
            if owner is None:
                continue
            entity = batch.entities.get(owner) or known.get(owner)
            doc = apply(kind, entity.doc if entity else None, decoder.name, args, entry["blockNumber"])
            created = entity.created_block if entity else entry["blockNumber"]
            batch.entities[owner] = Entity(kind, key, doc, created, entry["blockNumber"])

    def _check_blooms(self, headers: dict[int, dict], logs: list[dict]) -> None:
        with_logs = {entry["blockNumber"] for entry in logs}
        for number, header in headers.items():
            if number in with_logs or not header.get("logsBloom"):
                continue
            bloom = BloomFilter(int(header["logsBloom"], 16))
            # NOTE: a bloom can give false positives, so only a block whose bloom names one of
            # our contracts AND whose logs we got none of is re-read; a real gap retries forever
            # with backoff (and shows in the rpc error metric) instead of being ingested.
            if any(address in bloom for address in self._bloom_addresses) and self._logs_in_block(number):
                raise InconsistentChain(f"block {number}: our contracts logged events the range query did not return")

    def _logs_in_block(self, number: int) -> bool:
        return bool(self.pool.get_logs(number, number, self.codec.addresses))

    # -- reorgs ----------------------------------------------------------------------------------------
    def _revert(self, cursor: Cursor, head: int) -> None:
        stored = self.store.block_hashes(self.chain_id, 0, cursor.height)
        fork = find_fork_point(stored, self._hash_at, min(cursor.height, head))
        if fork is None:
            fork = self.deployment.deploy_block - 1  # NOTE: deeper than anything we kept: re-index everything
        fork_hash = self._hash_at(fork) or ""
        depth = cursor.height - fork
        log.warning("reorg: chain no longer has our block %s; reverting %s blocks to %s", cursor.height, depth, fork)
        self.store.revert_above(self.chain_id, fork, fork_hash, head, rebuild_entity)
        self.metrics.reorgs.inc()
        self.metrics.reorg_depth.set(depth)

    def _hash_at(self, number: int) -> str | None:
        if number < 0:
            return None
        try:
            return self._header(number)["hash"]
        except RpcError:
            return None

    def _header(self, number: int) -> dict:
        return self.pool.get_block(number)

    def _genesis_cursor(self, head: int) -> Cursor:
        start = max(self.deployment.deploy_block - 1, 0)
        return Cursor(start, self._header(start)["hash"], head)

