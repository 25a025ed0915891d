"""Scale-out through the real NATS JetStream at 127.0.0.1:4222: a worker process SIGKILLed mid-job; the
job is redelivered to another worker and completed once (the chain shows one submission)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from eth_account import Account

from nodeai.keystore import load_account
from nodeai.node.artifacts import DirectoryStore
from nodeai.node.config import load_config
from nodeai.node.executors import JobContext
from nodeai.node.loop import ProviderDaemon
from nodeai.node.queue import JetStreamQueue, WorkItem, delete_stream
from nodeai.node.state import Phase

from .conftest import NODE_KEY, ONE, PASSWORD, DaemonProcess, DaemonThread, Suite, batch_input, node_toml, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.nats]
NODE = Account.from_key(NODE_KEY).address


def test_killed_worker_job_is_redelivered_and_completed_once(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    queue_section = (f'[queue]\nmode = "nats"\nstream = "NODE_TEST_{tag}"\nconsumer = "workers_{tag}"\n'
                     "ack_wait = 2.0\nmax_deliver = 10\n")
    path = node_toml(tmp_path, suite, keystore, engine_delay=4.0, queue=queue_section)
    config = load_config(path, environ={})
    daemon_runner = DaemonThread(ProviderDaemon(config, load_account(config.keystore.path, PASSWORD)))
    first = DaemonProcess(path, tmp_path / "worker-a.out")
    second = DaemonProcess(path, tmp_path / "worker-b.out")
    try:
        daemon_runner.start()
        daemon = daemon_runner.daemon
        first.start("worker")
        wait_until(lambda: "worker started" in first.log.read_text(), 90, "worker A to start", interval=0.2)

        store = DirectoryStore(tmp_path / "artifacts")
        data = batch_input("redelivered work survives a crash", max_tokens=4)
        store.add_bytes(data)
        job_id, _ = suite.market.create_job(suite.model_id, data, 2 * ONE)

        wait_until(lambda: f"executing job {job_id} (delivery 1)" in first.log.read_text(), 30,
                   "worker A to take the job", interval=0.1)
        first.kill()  # mid-job: its engine needs 4 s per prompt
        assert daemon.state.get(job_id).phase is Phase.EXECUTING

        second.start("worker")
        wait_until(lambda: daemon.state.get(job_id).phase is Phase.SUBMITTED, 90, "the redelivered job to be submitted",
                   interval=0.2)
        assert f"executing job {job_id} (delivery 2)" in second.log.read_text()
        wait_until(lambda: f"job {job_id} done" in second.log.read_text(), 30, "worker B to acknowledge", interval=0.2)

        suite.advance(61)
        wait_until(lambda: daemon.state.get(job_id).phase is Phase.FINALIZED, 30, "the job to settle", interval=0.2)
        submissions = suite.market.market.events.JobSubmitted.get_logs(from_block=0)
        assert [e["args"]["jobId"] for e in submissions] == [job_id]
        assert len(suite.market.market.events.JobSettled.get_logs(from_block=0)) == 1

        async def republish() -> bool:
            queue = await JetStreamQueue(config.queue).connect()
            try:
                ctx = JobContext(job_id, suite.model_id, "words-1", 1, 1, 1, NODE)
                return await queue.publish(WorkItem(suite.deployment.chain_id, ctx, "bafkreidummycidvalue"))
            finally:
                await queue.close()

        # the job's Nats-Msg-Id is remembered: a republish (a daemon restarting) adds no second copy
        assert asyncio.run(republish()) is False
    finally:
        first.kill()
        second.stop()
        daemon_runner.stop()
        asyncio.run(delete_stream(config.queue))
