"""The job feed over a store filled by a real Ingestor on anvil (SQLite and PostgreSQL).

A consumer's loop is driven by hand (``anext`` under ``asyncio.wait_for``), so
"came back for the next job" and "crashed while handling one" are explicit,
and nothing can hang: every wait has a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from nodeai.indexer.feed import JobFeed
from nodeai.indexer.ingest import Ingestor
from nodeai.indexer.rpc import RpcPool
from nodeai.indexer.store import Store, open_store

from .conftest import ONE, Suite

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds a job that should come may take (ingestion + polling)
QUIET = 0.6  # seconds of silence that count as "nothing more"
DURATION = 20 * 86_400


class Crash(Exception):
    """The consumer died while handling a job."""


async def next_job(jobs: AsyncIterator[dict[str, Any]], timeout: float = WAIT) -> dict[str, Any]:
    return await asyncio.wait_for(anext(jobs), timeout)


async def drain(jobs: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every job until QUIET seconds pass without one (each acknowledged by asking for the next)."""
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(anext(jobs), QUIET))
        except asyncio.TimeoutError:
            return got


async def assert_nothing_more(jobs: AsyncIterator[dict[str, Any]]) -> None:
    """Ask for the next job (which also acknowledges the previous one) and get none in QUIET seconds."""
    with pytest.raises(asyncio.TimeoutError):
        job = await asyncio.wait_for(anext(jobs), QUIET)
        pytest.fail(f"unexpected job {job['job_id']} ({job['state']}, model {job['model_id']}, max {job['max_payment']})")


def test_feed_delivers_matching_open_jobs_once_per_consumer_across_restarts(suite: Suite, db_url: str) -> None:
    m, chain_id = suite.market, suite.chain_id
    other_model, _ = m.register_model(b"other-weights", b"other-manifest", 3_000, 500)
    m.send("provider", m.providers.functions.setModelPrice(other_model, 3_000), "setModelPrice")
    wanted_model = suite.model_id

    def job(model: int, max_payment: int, tag: str) -> int:
        return m.create_job(model, tag.encode(), max_payment, duration=DURATION)[0]

    match_a = job(wanted_model, 10 * ONE, "a")
    other = job(other_model, 10 * ONE, "other model")
    cheap = job(wanted_model, 5 * ONE - 1, "cheap")
    taken = job(wanted_model, 8 * ONE, "taken")
    m.claim(taken)
    match_b = job(wanted_model, 5 * ONE, "exactly the minimum")

    ingest_store = open_store(db_url)
    ingest_store.migrate()
    pool = RpcPool([suite.anvil.url], chain_id)
    ingestor = Ingestor(pool, ingest_store, suite.deployment)
    feed_stores: list[Store] = []

    def catch_up() -> None:
        while ingestor.step():
            pass

    def store_factory() -> Store:
        store = open_store(db_url)
        feed_stores.append(store)
        return store

    def feed(consumer: str = "provider-a", **kw: Any) -> JobFeed:
        filters: dict[str, Any] = {"models": {wanted_model}, "min_payment": 5 * ONE}
        return JobFeed(store_factory, chain_id, consumer, poll_interval=0.05, **(filters | kw))

    async def on_chain(action: Callable[[], Any]) -> Any:
        """Run a chain action and ingest it, off the event loop (the feed keeps polling meanwhile)."""

        def run() -> Any:
            result = action()
            catch_up()
            return result

        return await asyncio.to_thread(run)

    async def scenario() -> tuple[int, int, int]:
        # first start: every matching open job, once; not the other model, the cheap one or the claimed one
        jobs = aiter(feed())
        first = [await next_job(jobs), await next_job(jobs)]
        assert sorted(j["job_id"] for j in first) == [match_a, match_b]
        assert all(j["state"] == "OPEN" and j["model_id"] == wanted_model for j in first)
        await assert_nothing_more(jobs)

        # an unfiltered consumer is independent: it gets every open job
        everything = aiter(feed("provider-b", models=None, min_payment=0))
        got = {(await next_job(everything))["job_id"] for _ in range(4)}
        assert got == {match_a, other, cheap, match_b}
        await assert_nothing_more(everything)

        # restart: nothing again, but a job created (and ingested) afterwards is delivered live
        jobs = aiter(feed())
        waiting = asyncio.ensure_future(next_job(jobs))
        await asyncio.sleep(QUIET)
        assert not waiting.done(), "a delivered job came again after a restart"
        await on_chain(lambda: job(other_model, 50 * ONE, "live, other model"))
        await on_chain(lambda: job(wanted_model, 1 * ONE, "live, cheap"))
        live = await on_chain(lambda: job(wanted_model, 6 * ONE, "live"))
        fresh = await waiting
        assert fresh["job_id"] == live and fresh["state"] == "OPEN"
        await assert_nothing_more(jobs)

        # a job claimed before the feed read its creation from the change log is not open any more
        start_after = await asyncio.to_thread(ingest_store.last_change_id, chain_id)
        gone = await on_chain(lambda: job(wanted_model, 7 * ONE, "claimed at once"))
        await on_chain(lambda: m.claim(gone))
        late = await on_chain(lambda: job(wanted_model, 9 * ONE, "late"))
        jobs = aiter(feed("provider-c", start_after=start_after))
        seen = [j["job_id"] for j in await drain(jobs)]
        assert gone not in seen, "a claimed job was delivered as open"
        assert sorted(seen) == sorted([match_a, match_b, live, late])

        # provider-a, restarted, gets the job created while it was away (and not the claimed one)
        assert [j["job_id"] for j in await drain(aiter(feed()))] == [late]

        # a consumer that crashes while handling a job gets it again after a restart
        crashed = await on_chain(lambda: job(wanted_model, 12 * ONE, "crash"))
        with pytest.raises(Crash):
            async for delivered in feed():
                assert delivered["job_id"] == crashed
                raise Crash
        jobs = aiter(feed())
        again = await next_job(jobs)
        assert again["job_id"] == crashed
        await assert_nothing_more(jobs)  # handled this time (it asked for the next one)...
        await assert_nothing_more(aiter(feed()))  # ...so a restart does not bring it back
        return live, late, crashed

    try:
        catch_up()
        live, late, crashed = asyncio.run(asyncio.wait_for(scenario(), 120))
        keys = [e.key for e in ingest_store.list_entities(chain_id, "job", limit=1_000)]
        delivered = {consumer: sorted(int(k) for k in keys if ingest_store.delivered(consumer, chain_id, k))
                     for consumer in ("provider-a", "provider-b", "provider-c")}  # fmt: skip
        assert delivered == {
            "provider-a": sorted([match_a, match_b, live, late, crashed]),
            "provider-b": sorted([match_a, other, cheap, match_b]),
            "provider-c": sorted([match_a, match_b, live, late]),
        }
        assert taken not in delivered["provider-a"]
    finally:
        for store in feed_stores:
            store.close()
        pool.close()
        ingest_store.close()
