"""The job feed for provider daemons: open jobs matching a filter, each delivered once per consumer.

    feed = JobFeed(lambda: open_store(url), chain_id, consumer="provider-0xabc", models={1, 2}, min_payment=10**6)
    async for job in feed:          # job: the job's document (see projections), state OPEN
        await claim(job)            # the job counts as delivered once the loop asks for the next one

A job is recorded as delivered only when the consumer comes back for the next
one, so a daemon that crashes while handling a job gets it again after a
restart; one that handled it never sees it twice. The feed resumes from the
change log (``start_after``) and, on first start, from every open job.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from nodeai.indexer.store import Store, sort_key

@dataclass
class JobFeed:
    store_factory: Callable[[], Store]
    chain_id: int
    consumer: str
    models: set[int] | None = None
    min_payment: int = 0
    poll_interval: float = 0.1
    start_after: int = 0
    _store: Store | None = field(default=None, init=False, repr=False)

    def matches(self, doc: dict[str, Any]) -> bool:
        return (doc.get("state") == "OPEN" and (self.models is None or doc["model_id"] in self.models)
                and doc["max_payment"] >= self.min_payment)  # fmt: skip

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        store = self._store = self._store or await asyncio.to_thread(self.store_factory)
        after = self.start_after or await asyncio.to_thread(store.last_change_id, self.chain_id)
        backlog: list[dict[str, Any]] = []
        page_after = None
        while True:  # NOTE: first every job open now, then the change log from where that scan began
            page = await asyncio.to_thread(store.list_entities, self.chain_id, "job", {"state": "OPEN"}, 500, page_after)
            backlog += [e.doc for e in page if self.matches(e.doc)]
            if len(page) < 500:
                break
            page_after = sort_key("job", page[-1].key)
        for doc in backlog:
            async for job in self._deliver(store, doc):
                yield job
        while True:
            changes = await asyncio.to_thread(store.changes_since, self.chain_id, after, 500)
            for change in changes:
                after = change.id
                if change.op == "upsert" and change.kind == "job" and change.doc and self.matches(change.doc):
                    async for job in self._deliver(store, change.doc):
                        yield job
            if not changes:
                await asyncio.sleep(self.poll_interval)

    async def _deliver(self, store: Store, doc: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        key = str(doc["job_id"])
        if await asyncio.to_thread(store.delivered, self.consumer, self.chain_id, key):
            return
        # NOTE: a change-log entry (or a backlog row the consumer took a while to reach) may be
        # older than the job: one claimed, cancelled or reorged away since is not open any more.
        current = await asyncio.to_thread(store.get_entity, self.chain_id, "job", key)
        if current is None or not self.matches(current.doc):
            return
        yield current.doc
        await asyncio.to_thread(store.mark_delivered, self.consumer, self.chain_id, key)
