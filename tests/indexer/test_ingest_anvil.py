"""The indexer against a real anvil chain: reorgs, crashes, a wrong chain and malformed logs.

Every scenario ends with the same oracle: the database equals a fresh
re-index of the final canonical chain (``Store.snapshot``: events and
entities), and where it helps, the chain itself (job commitments, counts).
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_abi import encode
from eth_utils import event_abi_to_log_topic, function_signature_to_4byte_selector, keccak

from nodeai.chain import jobs
from nodeai.chain.anvil import Anvil
from nodeai.chain.marketplace import raw_cid
from nodeai.chain.receipts import Receipt
from nodeai.indexer.ingest import IngestConfig, Ingestor
from nodeai.indexer.projections import job_struct
from nodeai.indexer.rpc import RpcPool
from nodeai.indexer.store import Store, open_store

from .conftest import ONE, Suite, db_kind

pytestmark = pytest.mark.integration

JOB_DURATION = 20 * 86_400  # below JobMarket's 30-day cap, above every advance_time of a test


# -- helpers --------------------------------------------------------------------------------------------
def catch_up(ingestor: Ingestor, max_steps: int = 2_000) -> None:
    for _ in range(max_steps):
        if not ingestor.step():
            return
    raise AssertionError(f"the ingestor did not reach the head in {max_steps} steps")


def fresh_snapshot(suite: Suite, url: str) -> dict[str, Any]:
    """Index the current chain from scratch into the (empty) database at ``url``; its snapshot."""
    store = open_store(url)
    try:
        store.migrate()
        with RpcPool([suite.anvil.url], suite.chain_id) as pool:
            catch_up(Ingestor(pool, store, suite.deployment))
        return store.snapshot(suite.chain_id)
    finally:
        store.close()


def metric(ingestor: Ingestor, name: str, **labels: str) -> float:
    return ingestor.metrics.registry.get_sample_value(name, labels or None) or 0.0


def chain_jobs(suite: Suite) -> dict[int, bytes]:
    """Every job the canonical chain has: id -> commitment."""
    market = suite.market.market.functions
    return {i: market.jobCommitment(i).call() for i in range(1, market.jobCount().call() + 1)}


def assert_jobs_match_chain(store: Store, suite: Suite) -> None:
    """The indexed jobs are exactly the chain's, each document rebuilding the struct the contract committed to."""
    on_chain = chain_jobs(suite)
    indexed = {int(e.key): e.doc for e in store.list_entities(suite.chain_id, "job", limit=10_000)}
    assert sorted(indexed) == sorted(on_chain)
    for job_id, doc in indexed.items():
        assert job_struct(doc).commitment() == on_chain[job_id], f"job {job_id}: document differs from the chain"


def contract_logs(suite: Suite) -> int:
    """How many logs the indexed contracts emitted on the canonical chain (an independent count)."""
    codec_addresses = [suite.deployment.address(c) for c in
                       ("ModelRegistry", "ProviderRegistry", "JobMarket", "InferenceEscrow", "ReceiptRegistry")]  # fmt: skip
    return len(suite.w3.eth.get_logs({"fromBlock": suite.deployment.deploy_block, "toBlock": "latest",
                                      "address": codec_addresses}))  # fmt: skip


class Actor:
    """Random but valid protocol actions through the Marketplace, driven by a seeded Random."""

    def __init__(self, suite: Suite, rng: random.Random):
        self.suite = suite
        self.m = suite.market
        self.rng = rng
        self.counter = 0
        self.models = [suite.model_id]
        self.cumulative = 0  # voucher amounts only grow, so every voucher pays something new
        self.deposited = 0
        self.log: list[str] = []

    def unique(self, prefix: str) -> bytes:
        self.counter += 1
        return f"{prefix}-{self.counter}-{self.rng.random()}".encode()

    def jobs_in(self, *states: jobs.JobState) -> list[int]:
        return sorted(j for j, job in self.m.jobs.items() if job.state in states)

    # -- actions ---------------------------------------------------------------
    def create_job(self) -> None:
        model = self.rng.choice(self.models)
        job_id, _ = self.m.create_job(model, self.unique("input"), self.rng.randint(1, 20) * ONE, duration=JOB_DURATION)
        self.log.append(f"create {job_id}")

    def claim(self) -> None:
        job_id = self.rng.choice(self.jobs_in(jobs.JobState.OPEN))
        self.m.claim(job_id)
        self.log.append(f"claim {job_id}")

    def submit(self) -> None:
        job_id = self.rng.choice(self.jobs_in(jobs.JobState.CLAIMED))
        charge = self.rng.randint(0, self.m.jobs[job_id].max_payment)
        self.m.submit(job_id, self.unique("output"), self.rng.randint(1, 5_000), charge)
        self.log.append(f"submit {job_id}")

    def finalize(self) -> None:
        job_id = self.rng.choice(self.jobs_in(jobs.JobState.SUBMITTED))
        self.m.advance_time(self.m.jobs[job_id].challenge_window + 1)
        self.m.finalize(job_id)
        self.log.append(f"finalize {job_id}")

    def dispute(self) -> None:
        now = self.m.now()
        job_id = self.rng.choice([j for j in self.jobs_in(jobs.JobState.SUBMITTED) if self.m.jobs[j].window_ends > now + 5])
        self.m.dispute(job_id, self.unique("evidence"))
        self.m.resolve(job_id, provider_wins=self.rng.random() < 0.5)
        self.log.append(f"dispute {job_id}")

    def cancel(self) -> None:
        job_id = self.rng.choice(self.jobs_in(jobs.JobState.OPEN))
        self.m.send("requester", self.m.market.functions.cancelJob(job_id, self.m.jobs[job_id].as_tuple()), "cancelJob")
        self.m.jobs[job_id] = jobs.refunded(self.m.jobs[job_id])
        self.log.append(f"cancel {job_id}")

    def voucher(self) -> None:
        amount = self.rng.randint(1, 5) * ONE
        self.m.deposit(amount)
        self.deposited += amount
        self.cumulative += self.rng.randint(1, 3) * ONE
        self.m.redeem(*self.m.sign(self.rng.choice(self.models), self.cumulative))
        self.log.append("voucher")

    def receipts(self) -> None:
        now = self.m.now()
        batch = [
            Receipt(keccak(self.unique("request")), self.m.address("provider"), self.m.address("requester"),
                    self.rng.choice(self.models), self.rng.randint(1, 99), self.rng.randint(1, 99), 100, 1_000, now + i)
            for i in range(self.rng.randint(1, 4))
        ]  # fmt: skip
        self.m.commit_receipts(batch)
        self.log.append("receipts")

    def new_model(self) -> None:
        price = self.rng.randint(1, 9) * 1_000
        model_id, _ = self.m.register_model(self.unique("weights"), self.unique("manifest"), price, self.rng.randint(0, 2_000))
        self.m.send("provider", self.m.providers.functions.setModelPrice(model_id, price), "setModelPrice")
        self.models.append(model_id)
        self.log.append(f"model {model_id}")

    def new_version(self) -> None:
        model_id = self.rng.choice(self.models)
        fn = self.m.models.functions.publishVersion(model_id, raw_cid(self.unique("w")), raw_cid(self.unique("m")))
        self.m.send("publisher", fn, "publishVersion")
        self.log.append(f"version {model_id}")

    def random_action(self) -> None:
        now = self.m.now()
        choices: list[tuple[Any, int]] = [(self.create_job, 4), (self.voucher, 2), (self.receipts, 1), (self.new_model, 1),
                                          (self.new_version, 1)]  # fmt: skip
        if self.jobs_in(jobs.JobState.OPEN):
            choices += [(self.claim, 4), (self.cancel, 1)]
        if self.jobs_in(jobs.JobState.CLAIMED):
            choices.append((self.submit, 5))
        if self.jobs_in(jobs.JobState.SUBMITTED):
            choices.append((self.finalize, 4))
            if any(self.m.jobs[j].window_ends > now + 5 for j in self.jobs_in(jobs.JobState.SUBMITTED)):
                choices.append((self.dispute, 2))
        actions, weights = zip(*choices)
        self.rng.choices(actions, weights)[0]()

    def resync(self) -> None:
        """After a reorg: forget the jobs and models the canonical chain does not have as we knew them.

        (The Marketplace keeps job structs in memory; after a revert those of
        reverted blocks are stale, so they are dropped, never reused.)
        """
        market = self.m.market.functions
        for job_id in list(self.m.jobs):
            if market.jobCommitment(job_id).call() != self.m.jobs[job_id].commitment():
                del self.m.jobs[job_id]
        provider = self.m.address("provider")
        self.models = [mid for mid in self.models if self.m.providers.functions.modelPrice(provider, mid).call() > 0]
        assert self.models, "the onboarding model predates every reorg"


# -- 1. reorgs ----------------------------------------------------------------------------------------------
def test_random_actions_and_reorgs_end_equal_to_a_fresh_reindex(suite: Suite, db_url: str, make_db_url) -> None:
    rng = random.Random(20240531)
    actor = Actor(suite, rng)
    store = open_store(db_url)
    store.migrate()
    pool = RpcPool([suite.anvil.url], suite.chain_id)
    # NOTE: small steps and a short tail window, so reorgs hit partly ingested chains and
    # the sparse block hashes of backfill ranges as well as the fully checked tail.
    ingestor = Ingestor(pool, store, suite.deployment, IngestConfig(max_blocks_per_step=3, tail_window=8))
    chain_id = suite.chain_id
    vanished_checked = 0
    rounds = {"revert": 0, "anvil_reorg": 0, "plain": 0}

    def ingest_some() -> None:
        for _ in range(rng.randint(0, 4)):
            if not ingestor.step():
                break

    def indexed_job_ids() -> set[int]:
        return {int(e.key) for e in store.list_entities(chain_id, "job", limit=10_000)}

    try:
        catch_up(ingestor)
        for round_no in range(15):
            kind = ("revert", "anvil_reorg", "plain")[round_no % 3] if round_no < 6 else rng.choice(
                ["revert", "anvil_reorg", "plain"])
            rounds[kind] += 1
            for _ in range(rng.randint(0, 2)):  # history no reorg of this round touches
                actor.random_action()
            ingest_some()
            start_block = suite.w3.eth.block_number
            snapshot_id = suite.rpc("evm_snapshot") if kind == "revert" else None
            actor.create_job()  # every round has a job a reorg can take away
            for _ in range(rng.randint(1, 4)):
                actor.random_action()
                if rng.random() < 0.4:
                    ingest_some()
            if kind == "plain":
                ingest_some()
                continue
            if rng.random() < 0.7:
                catch_up(ingestor)  # the indexer has seen everything the reorg removes
            else:
                ingest_some()
            before = indexed_job_ids()
            if kind == "revert":
                assert suite.rpc("evm_revert", [snapshot_id]) is True
            else:
                depth = rng.randint(1, suite.w3.eth.block_number - start_block)
                suite.rpc("anvil_reorg", [depth, []])
            actor.resync()
            for _ in range(rng.randint(0, 2)):
                suite.rpc("evm_mine")
            if rng.random() < 0.6:
                catch_up(ingestor)
                on_chain = chain_jobs(suite)
                gone = {j for j in before if j not in on_chain}
                assert not gone & indexed_job_ids(), f"round {round_no}: jobs {gone} survived the reorg"
                assert_jobs_match_chain(store, suite)
                vanished_checked += len(gone)
            for _ in range(rng.randint(0, 3)):  # a different history on the new branch
                actor.random_action()
                if rng.random() < 0.3:
                    ingest_some()
            ingest_some()
        catch_up(ingestor)

        performed = {entry.split()[0] for entry in actor.log}
        assert performed >= {"create", "claim", "submit", "finalize", "dispute", "cancel", "voucher", "receipts", "model",
                             "version"}, performed  # fmt: skip
        assert rounds["revert"] >= 2 and rounds["anvil_reorg"] >= 2
        assert metric(ingestor, "nodeai_indexer_reorgs_total") > 0
        assert vanished_checked > 0, "no round checked that a reorged-away job disappears"
        assert_jobs_match_chain(store, suite)
        kinds = {k: len(store.list_entities(chain_id, k, limit=10_000))
                 for k in ("model", "provider", "job", "channel", "receipt_batch")}  # fmt: skip
        assert all(kinds.values()), f"some entity kind never got indexed: {kinds} ({actor.log})"
        ours = store.snapshot(chain_id)
        assert len(ours["events"]) == contract_logs(suite)
        fresh = fresh_snapshot(suite, make_db_url(db_kind(db_url)))
        assert ours["events"] == fresh["events"]
        assert ours["entities"] == fresh["entities"]
    finally:
        pool.close()
        store.close()


# -- 2. crashes -----------------------------------------------------------------------------------------------
class CappedRpc:
    """A JSON-RPC proxy to anvil that refuses ``eth_getLogs`` over more than ``cap`` blocks, as QuickNode does.

    It makes the indexer backfill in many small ranges (many commits), so a
    kill lands between commits as well as inside one.
    """

    def __init__(self, upstream: str, cap: int):
        self.upstream = upstream
        self.cap = cap
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                payload = json.loads(body)
                if isinstance(payload, dict) and payload.get("method") == "eth_getLogs":
                    span = int(payload["params"][0]["toBlock"], 16) - int(payload["params"][0]["fromBlock"], 16) + 1
                    if span > proxy.cap:
                        reply = json.dumps({"jsonrpc": "2.0", "id": payload.get("id"), "error": {
                            "code": -32614, "message": f"eth_getLogs is limited to a {proxy.cap} range"}}).encode()
                        return self._send(reply)
                upstream = requests.post(proxy.upstream, data=body, headers={"Content-Type": "application/json"},
                                         timeout=30)  # fmt: skip
                self._send(upstream.content)

            def _send(self, reply: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> CappedRpc:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


SELECTOR_CREATE = function_signature_to_4byte_selector("createJob(uint256,string,uint256,uint256,address,uint256)")
SELECTOR_DEPOSIT = function_signature_to_4byte_selector("deposit(address,uint256)")


def bulk_events(suite: Suite, count: int, per_block: int) -> int:
    """``count`` cheap transactions (createJob and escrow deposits alternately), ``per_block`` per block,
    sent as JSON-RPC batches from anvil's unlocked requester account. Returns the total deposited."""
    m = suite.market
    requester, provider = m.address("requester"), m.address("provider")
    nonce = suite.w3.eth.get_transaction_count(requester)
    deadline = m.now() + JOB_DURATION
    deposited = 0
    txs = []
    for i in range(count):
        if i % 2:
            data = SELECTOR_CREATE + encode(["uint256", "string", "uint256", "uint256", "address", "uint256"],
                                            [suite.model_id, raw_cid(b"bulk-%d" % i), ONE + i, deadline, jobs.ZERO_ADDRESS, 0])  # fmt: skip
            to = m.market.address
        else:
            data = SELECTOR_DEPOSIT + encode(["address", "uint256"], [provider, 1_000 + i])
            to = m.escrow.address
            deposited += 1_000 + i
        txs.append({"from": requester, "to": to, "data": "0x" + data.hex(), "gas": hex(500_000), "nonce": hex(nonce + i)})
    jobs_before = m.market.functions.jobCount().call()
    suite.rpc("evm_setAutomine", [False])
    try:
        with requests.Session() as session:
            for offset in range(0, count, per_block):
                chunk = txs[offset : offset + per_block]
                batch = [{"jsonrpc": "2.0", "id": n, "method": "eth_sendTransaction", "params": [tx]} for n, tx in enumerate(chunk)]
                replies = session.post(suite.anvil.url, json=batch, timeout=60).json()
                assert all("result" in r for r in replies), replies[:3]
                suite.rpc("evm_mine")
    finally:
        suite.rpc("evm_setAutomine", [True])
    assert suite.rpc("txpool_status")["pending"] == "0x0"
    assert m.market.functions.jobCount().call() == jobs_before + count // 2
    return deposited


def sqlite_cursor_height(path: Path, chain_id: int) -> int | None:
    """The indexed height as another process sees it (None: no cursor yet)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(path, timeout=10)
    try:
        rows = conn.execute("SELECT height FROM cursors WHERE chain_id = ?", (chain_id,)).fetchall()
    except sqlite3.OperationalError:  # the tables are not created yet
        return None
    finally:
        conn.close()
    return rows[0][0] if rows else None


class Cli:
    """The indexer CLI as a subprocess; every process it starts is killed and reaped by ``close()``."""

    def __init__(self, args: list[str], log_path: Path):
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen([sys.executable, "-m", "nodeai.indexer", *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.log_path.parent)  # fmt: skip

    def kill(self) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"the indexer exited by itself:\n{self.tail()}"
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=10) == -signal.SIGKILL
        self.proc = None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=15)
        self.proc = None
        return code

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3_000:]


def wait_for(condition, timeout: float, what: str, cli: Cli) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert cli.proc is None or cli.proc.poll() is None, f"the indexer exited while waiting for {what}:\n{cli.tail()}"
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}:\n{cli.tail()}")


def test_sigkill_during_backfill_and_tail_leaves_no_gap_and_no_duplicate(suite: Suite, sqlite_url: str,
                                                                         make_db_url, tmp_path: Path) -> None:
    rng = random.Random(7)
    actor = Actor(suite, rng)
    chain_id = suite.chain_id
    deposited = bulk_events(suite, count=3_000, per_block=10)
    backfill_head = suite.w3.eth.block_number
    db_path = Path(sqlite_url.removeprefix("sqlite:///"))

    with CappedRpc(suite.anvil.url, cap=6) as proxy:
        cli = Cli(["--deployments", str(suite.deployments_file), "--rpc-url", proxy.url, "--db", sqlite_url,
                   "--no-api", "--confirmations", "2"], tmp_path / "indexer.log")  # fmt: skip
        try:
            heights_at_kill: list[int | None] = []
            # -- backfill: kill it as soon as it has committed something, then at random moments
            for attempt in range(5):
                before = sqlite_cursor_height(db_path, chain_id)
                cli.start()
                if attempt == 0:
                    wait_for(lambda: sqlite_cursor_height(db_path, chain_id) is not None, 30, "a first commit", cli)
                else:
                    wait_for(lambda: sqlite_cursor_height(db_path, chain_id) != before, 30, "progress", cli)
                    time.sleep(rng.uniform(0.0, 0.4))
                cli.kill()
                heights_at_kill.append(sqlite_cursor_height(db_path, chain_id))
                if heights_at_kill[-1] is not None and heights_at_kill[-1] >= backfill_head:
                    break
            partial = [h for h in heights_at_kill if h is not None and h < backfill_head]
            assert partial, f"no kill landed inside the backfill: heights {heights_at_kill}, head {backfill_head}"
            assert heights_at_kill == sorted(heights_at_kill, key=lambda h: h or 0), "the cursor went backwards"

            # -- live tail: once it has caught up, new actions arrive and it is killed among them
            live_ingested = 0
            for _ in range(4):
                cli.start()
                tip = suite.w3.eth.block_number
                wait_for(lambda: (sqlite_cursor_height(db_path, chain_id) or 0) >= tip, 60, "the catch-up", cli)
                for _ in range(rng.randint(2, 4)):
                    actor.random_action()
                time.sleep(rng.uniform(0.0, 0.15))
                cli.kill()
                live_ingested += (sqlite_cursor_height(db_path, chain_id) or 0) > tip
                actor.random_action()  # while it is down
            assert live_ingested, "no kill hit the indexer after it had ingested live blocks"

            cli.start()
            head = suite.w3.eth.block_number
            wait_for(lambda: sqlite_cursor_height(db_path, chain_id) == head, 60, "the final catch-up", cli)
            assert cli.stop() == 0, cli.tail()
        finally:
            cli.close()
    assert cli.starts >= 7

    store = open_store(sqlite_url)
    try:
        ours = store.snapshot(chain_id)
        assert_jobs_match_chain(store, suite)
        channel = store.get_entity(chain_id, "channel", f"{suite.market.address('requester')}:{suite.market.address('provider')}")
        assert channel is not None and channel.doc["deposited"] == deposited + actor.deposited
        balance = suite.market.escrow.functions.channels(suite.market.address("requester"), suite.market.address("provider")).call()[0]
        assert channel.doc["balance"] == balance
    finally:
        store.close()
    positions = [(e[0], e[1]) for e in ours["events"]]
    assert len(positions) == len(set(positions)) == contract_logs(suite) >= 3_000
    fresh = fresh_snapshot(suite, make_db_url("sqlite"))
    assert ours["events"] == fresh["events"]
    assert ours["entities"] == fresh["entities"]


# -- 3. refusals -----------------------------------------------------------------------------------------------
def test_cli_refuses_an_rpc_of_another_chain_with_exit_code_2(suite: Suite, sqlite_url: str, tmp_path: Path) -> None:
    with Anvil(chain_id=4_242) as other:
        done = subprocess.run(
            [sys.executable, "-m", "nodeai.indexer", "--deployments", str(suite.deployments_file), "--rpc-url", other.url,
             "--db", sqlite_url, "--no-api", "--confirmations", "2"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert f"chain id {suite.chain_id}" in last and "4242" in last and other.url in last
    assert "Traceback" not in done.stderr
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists(), "nothing may be written for a wrong chain"


class TamperingPool:
    """A real RpcPool whose eth_getLogs answers have one log of a known event mangled."""

    def __init__(self, pool: RpcPool, mangle):
        self._pool = pool
        self._mangle = mangle
        self.tampered = 0

    def __getattr__(self, name: str):
        return getattr(self._pool, name)

    def get_logs(self, from_block: int, to_block: int, addresses, **kwargs) -> list[dict[str, Any]]:
        logs = self._pool.get_logs(from_block, to_block, addresses, **kwargs)
        if logs:
            self.tampered += 1
            logs = [self._mangle(logs[0]), *logs[1:]]
        return logs


DAMAGES = ("data missing its last word", "data cut mid-word", "topic cut short")


def test_malformed_log_is_retried_and_reported_never_ingested(suite: Suite, db_url: str, make_db_url) -> None:
    chain_id = suite.chain_id
    store = open_store(db_url)
    store.migrate()
    pool = RpcPool([suite.anvil.url], suite.chain_id)
    try:
        catch_up(Ingestor(pool, store, suite.deployment))
        before = store.snapshot(chain_id), store.cursor(chain_id)
        suite.market.deposit(3 * ONE)  # one new block whose only indexed log is Deposited(payer, provider, amount, balance)
        abi = next(i for i in suite.deployment.contracts["InferenceEscrow"]["abi"] if i.get("name") == "Deposited")
        topic0 = "0x" + event_abi_to_log_topic(abi).hex()

        for damage in DAMAGES:
            def mangle(entry: dict[str, Any], damage: str = damage) -> dict[str, Any]:
                assert entry["topics"][0] == topic0 and len(entry["data"]) == 2 + 128
                if damage == "data missing its last word":
                    return entry | {"data": entry["data"][:-64]}
                if damage == "data cut mid-word":
                    return entry | {"data": entry["data"][:-10]}
                return entry | {"topics": [entry["topics"][0], entry["topics"][1][:-8], entry["topics"][2]]}

            tampering = TamperingPool(pool, mangle)
            ingestor = Ingestor(tampering, store, suite.deployment, IngestConfig(poll_interval=0.05))
            ingestor.run(stop_after=1.0)  # returns: a bad log is an error to retry, never a crash

            assert tampering.tampered >= 2, f"{damage}: the range is retried"
            assert metric(ingestor, "nodeai_indexer_rpc_errors_total", kind="decodeerror") == tampering.tampered, damage
            assert metric(ingestor, "nodeai_indexer_events_ingested_total") == 0, damage
            assert not ingestor.caught_up.is_set(), damage
            assert (store.snapshot(chain_id), store.cursor(chain_id)) == before, f"{damage}: the bad range got stored"

        catch_up(Ingestor(pool, store, suite.deployment))  # an honest answer later is ingested normally
        channel = store.get_entity(chain_id, "channel", f"{suite.market.address('requester')}:{suite.market.address('provider')}")
        assert channel is not None and channel.doc["deposited"] == 3 * ONE
        assert store.snapshot(chain_id) == fresh_snapshot(suite, make_db_url(db_kind(db_url)))
    finally:
        pool.close()
        store.close()
