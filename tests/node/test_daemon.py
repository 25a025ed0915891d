"""The daemon end to end on a real anvil, in-process queue: a batch-inference job created on chain is
claimed, executed on the engine, stored, submitted, finalized after the challenge window, and every
party is paid exactly what the contracts' fee split says."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from nodeai.chain.fees import split_payment
from nodeai.keystore import load_account
from nodeai.node.artifacts import DirectoryStore
from nodeai.node.config import load_config
from nodeai.node.loop import ProviderDaemon
from nodeai.node.policy import job_charge
from nodeai.node.state import Phase

from .conftest import NODE_KEY, ONE, PASSWORD, PRICE, DaemonThread, Suite, batch_input, node_toml, wait_until

pytestmark = pytest.mark.integration
NODE = Account.from_key(NODE_KEY).address


def events(suite: Suite, name: str) -> list[dict]:
    return [dict(e["args"]) for e in getattr(suite.market.market.events, name).get_logs(from_block=0)]


def start_daemon(suite: Suite, keystore: Path, tmp_path: Path, **kw) -> DaemonThread:
    config = load_config(node_toml(tmp_path, suite, keystore, **kw), environ={})
    return DaemonThread(ProviderDaemon(config, load_account(config.keystore.path, PASSWORD))).start()


def phase(daemon: ProviderDaemon, job_id: int) -> Phase | None:
    record = daemon.state.get(job_id)
    return record.phase if record else None


def test_batch_inference_job_end_to_end(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    m = suite.market
    runner = start_daemon(suite, keystore, tmp_path)
    daemon = runner.daemon
    try:
        store = DirectoryStore(tmp_path / "artifacts")
        job_input = batch_input("the quick brown fox", "hello world", max_tokens=3)
        store.add_bytes(job_input)
        before = {who: m.balance(who) for who in ("requester", "publisher", "treasury")} | {"node": m.balance(NODE)}
        max_payment = 5 * ONE
        job_id, _ = m.create_job(suite.model_id, job_input, max_payment)

        wait_until(lambda: phase(daemon, job_id) is Phase.SUBMITTED, 30, "the job to be submitted")
        record = daemon.state.get(job_id)
        output = json.loads(store.get_bytes(record.output_cid))
        assert [r["text"] for r in output["results"]] == ["fox brown quick", "world hello"]
        assert output["usage"] == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}
        charge = job_charge(11, PRICE, max_payment)
        assert (record.usage, record.charge) == (11, charge) and charge == 2_750
        [submitted] = events(suite, "JobSubmitted")
        assert submitted["outputCid"] == record.output_cid and submitted["charge"] == charge

        suite.advance(61)  # past the 60 s challenge window
        wait_until(lambda: phase(daemon, job_id) is Phase.FINALIZED, 30, "the job to be finalized")

        split = split_payment(charge, 1_000, 250)  # the model's revenue share and the protocol fee (conftest)
        assert m.balance("requester") == before["requester"] - charge
        assert m.balance(NODE) == before["node"] + split.provider
        assert m.balance("publisher") == before["publisher"] + split.model_owner
        assert m.balance("treasury") == before["treasury"] + split.protocol_fee
        assert split.total == charge and split.model_owner > 0 and split.protocol_fee > 0
        for name in ("JobClaimed", "JobSubmitted", "JobSettled"):
            assert len(events(suite, name)) == 1, name
        assert m.providers.functions.providers(NODE).call()[2] == 0, "the claim bond was not released"

        health = httpx.get(f"http://127.0.0.1:{daemon.http_port}/health", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert health.json()["jobs"] == {"finalized": 1}
        metrics = httpx.get(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=5).text
        assert 'nodeai_node_jobs{state="finalized"} 1.0' in metrics
        for step in ("claimJob", "submitResult", "finalize"):
            assert f'nodeai_node_tx_sent_total{{step="{step}"}} 1.0' in metrics
        assert "nodeai_node_claim_latency_seconds_count 1.0" in metrics
    finally:
        runner.stop()


def test_unusable_input_is_settled_with_a_full_refund_and_unwanted_jobs_are_left(suite: Suite, keystore: Path,
                                                                                  tmp_path: Path) -> None:
    m = suite.market
    runner = start_daemon(suite, keystore, tmp_path)
    daemon = runner.daemon
    try:
        store = DirectoryStore(tmp_path / "artifacts")
        garbage = b"not json at all"
        store.add_bytes(garbage)
        requester_before = m.balance("requester")
        bad, _ = m.create_job(suite.model_id, garbage, 3 * ONE)
        other_model, _ = m.register_model(b"w2", b"m2", 1_000, 0)
        unserved, _ = m.create_job(other_model, batch_input("x"), 3 * ONE)
        too_late, _ = m.create_job(suite.model_id, batch_input("y"), 3 * ONE, duration=30)

        wait_until(lambda: phase(daemon, bad) is Phase.SUBMITTED, 30, "the failure report to be submitted")
        record = daemon.state.get(bad)
        report = json.loads(store.get_bytes(record.output_cid))
        assert report["kind"] == "error" and "not JSON" in report["error"]
        assert record.charge == 0
        wait_until(lambda: phase(daemon, too_late) is Phase.SKIPPED, 10, "the late job to be skipped")
        assert "to the deadline" in daemon.state.get(too_late).reason
        assert phase(daemon, unserved) is None  # the feed never offered it: model not served

        suite.advance(61)
        wait_until(lambda: phase(daemon, bad) is Phase.FINALIZED, 30, "the failed job to settle")
        assert m.balance("requester") == requester_before - 3 * ONE - 3 * ONE  # the two untouched jobs stay escrowed
        [settled] = events(suite, "JobSettled")
        assert settled["charge"] == 0 and settled["refund"] == 3 * ONE
        assert len(events(suite, "JobClaimed")) == 1
    finally:
        runner.stop()


def test_input_and_output_travel_over_embedded_ipfs(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    """The requester's own kubo node holds the input; the daemon's embedded node fetches it over the
    network (verified against its CID), and the requester fetches the output back from the daemon's node."""
    from nodeai.chain.jobs import ZERO_ADDRESS
    from nodeai.ipfs import EmbeddedKuboStore

    m = suite.market
    with EmbeddedKuboStore(tmp_path / "requester-ipfs") as requester_node:
        peers = json.dumps(requester_node.multiaddrs()[:1])
        path = node_toml(tmp_path, suite, keystore,
                         ipfs=f'backend = "embedded"\npeers = {peers}\ncache_max_bytes = 10000000')
        config = load_config(path, environ={})
        assert config.ipfs.backend == "embedded"
        runner = DaemonThread(ProviderDaemon(config, load_account(config.keystore.path, PASSWORD))).start()
        daemon = runner.daemon
        try:
            cid = requester_node.add_bytes(batch_input("over the wire", max_tokens=2))
            deadline = m.now() + 86_400
            result = m.send("requester", m.market.functions.createJob(suite.model_id, cid, 2 * ONE, deadline,
                                                                     ZERO_ADDRESS, 0), "createJob")
            job_id = result.event("JobCreated")["jobId"]
            wait_until(lambda: phase(daemon, job_id) is Phase.SUBMITTED, 60, "the job to be submitted")
            output_cid = daemon.state.get(job_id).output_cid
            assert output_cid.startswith("Qm") and output_cid != cid
            output = json.loads(requester_node.get_bytes(output_cid, timeout=30))
            assert output["results"][0]["text"] == "wire the"
            metrics = httpx.get(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=5).text
            assert "nodeai_node_artifact_cache_misses_total 1.0" in metrics
        finally:
            runner.stop()


def test_agent_job_runs_through_the_agent_runtime(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    """An agent job: the spec on IPFS (here the directory store), the runtime runs it, the transcript is
    pinned, and the transcript's root is the commitment submitted on chain."""
    from nodeai.agents import verify_transcript

    m = suite.market
    runner = start_daemon(suite, keystore, tmp_path)
    daemon = runner.daemon
    try:
        store = DirectoryStore(tmp_path / "artifacts")
        spec = json.dumps({
            "spec_version": 1, "name": "echo-agent", "tools": [],
            "planner": {"kind": "rules", "rules": [{"id": "done", "finish": {"echo": "${input}"}}]},
        }).encode()  # fmt: skip
        spec_cid = store.add_bytes(spec)
        job_input = json.dumps({"kind": "agent", "spec_cid": spec_cid, "input": "rebalance to 60/40"}).encode()
        store.add_bytes(job_input)
        job_id, _ = m.create_job(suite.model_id, job_input, 2 * ONE)

        wait_until(lambda: phase(daemon, job_id) is Phase.SUBMITTED, 30, "the agent job to be submitted")
        record = daemon.state.get(job_id)
        result = json.loads(store.get_bytes(record.output_cid))
        assert result["status"] == "succeeded" and result["output"] == {"echo": "rebalance to 60/40"}
        transcript = store.get_bytes(result["transcript_cid"])
        assert verify_transcript(transcript, expected_root=result["transcript_root"]) == result["transcript_root"]
        [submitted] = events(suite, "JobSubmitted")
        assert "0x" + submitted["outputHash"].hex() == result["transcript_root"]
    finally:
        runner.stop()
