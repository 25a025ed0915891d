"""The ingest loop survives a database failure: nothing half-committed, then it catches up."""

from __future__ import annotations

import pytest

from nodeai.indexer.ingest import IngestConfig, Ingestor
from nodeai.indexer.rpc import RpcPool
from nodeai.indexer.store import open_store

from .conftest import db_kind

pytestmark = pytest.mark.integration
ONE = 10**6


def test_a_failed_commit_is_retried_and_nothing_is_lost(suite, db_url, make_db_url):
    suite.market.create_job(suite.model_id, b"resilience", 3 * ONE)
    store, fresh = open_store(db_url), open_store(make_db_url(db_kind(db_url)))
    try:
        store.migrate()
        fresh.migrate()
        real_commit, failures = store.commit_batch, []

        def flaky_commit(chain_id, batch):
            if not failures:
                failures.append(batch)
                raise RuntimeError("database went away")  # NOTE: stands for a psycopg/sqlite OperationalError
            return real_commit(chain_id, batch)

        store.commit_batch = flaky_commit
        ingestor = Ingestor(RpcPool([suite.anvil.url], suite.chain_id), store, suite.deployment,
                            IngestConfig(confirmations=1, poll_interval=0.02))
        ingestor.run(stop_after=2.0)
        assert failures, "the first commit should have failed"
        assert ingestor.metrics.step_failures._value.get() >= 1
        assert ingestor.caught_up.is_set()
        assert [j.doc["state"] for j in store.list_entities(suite.chain_id, "job")] == ["OPEN"]
        clean = Ingestor(RpcPool([suite.anvil.url], suite.chain_id), fresh, suite.deployment, IngestConfig(confirmations=1))
        while clean.step():
            pass
        assert fresh.snapshot(suite.chain_id) == store.snapshot(suite.chain_id)
    finally:
        store.close()
        fresh.close()
