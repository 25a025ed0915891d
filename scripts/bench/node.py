"""Provider daemon benchmark: N agent jobs through the whole pipeline on anvil with 1 s blocks.

Set-up: anvil (``--block-time 1``), the contract suite (challenge window 60 s, the
market's minimum), a published agent (a rules-planner spec on the artifact store,
so the numbers measure the pipeline, not a model), a funded requester, and the
daemon as a real subprocess (``python -m nodeai.node run``) with its embedded
indexer, in-process workers and a content-addressed artifact folder.

The requester sends ``createJob`` transactions at ``--rate`` per second. For each job:

* claim latency: from the moment the block holding its ``JobCreated`` appeared
  (a watcher polls ``eth_blockNumber`` every 5 ms) to the daemon signing and
  sending its claim (the daemon's state records that time just before the
  broadcast);
* create to settle: from sending ``createJob`` to the block holding ``JobSettled``.
  The challenge window is protocol time, not pipeline time: once a job's result
  is on chain the bench moves the chain clock past the window
  (``evm_increaseTime``), so the figure is the pipeline plus a block or two.
* jobs_per_min: jobs settled per minute from the first createJob to the last
  settlement (bounded by ``--rate``; raise it to find the daemon's ceiling).

Run::

    .venv/bin/python scripts/bench/node.py [--jobs 30] [--rate 1]

Last line: one JSON object (jobs, jobs_per_min, claim_latency_p50_ms, claim_latency_p90_ms,
create_to_submit_p50_s, create_to_settle_p50_s, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import requests
from eth_account import Account
from web3 import Web3
from web3.logs import DISCARD

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nodeai.chain.anvil import ANVIL_KEYS, Anvil  # noqa: E402
from nodeai.chain.deploy import DeployParams, deploy_suite  # noqa: E402
from nodeai.chain.jobs import ZERO_ADDRESS  # noqa: E402
from nodeai.chain.marketplace import Marketplace  # noqa: E402
from nodeai.keystore import create_keystore  # noqa: E402
from nodeai.node.artifacts import DirectoryStore  # noqa: E402
from loadgen import percentile, stop_process  # noqa: E402 - scripts/bench/ is on sys.path when run

ONE = 10**6
ROLES = ("deployer", "treasury", "publisher", "provider", "requester")
NODE_KEY = ANVIL_KEYS[6]
SPEC = {
    "spec_version": 1, "name": "bench-agent", "tools": [],
    "planner": {"kind": "rules", "rules": [{"id": "done", "finish": {"echo": "${input}"}}]},
}  # fmt: skip


class BlockWatcher(threading.Thread):
    """Wall time at which each block number was first seen (polled every 5 ms)."""

    def __init__(self, url: str):
        super().__init__(daemon=True, name="block-watcher")
        self.url = url
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        last = -1
        while not self.stop.is_set():
            try:
                reply = session.post(self.url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}, timeout=2)
                number = int(reply.json()["result"], 16)
            except (requests.RequestException, KeyError, ValueError):
                time.sleep(0.005)
                continue
            now = time.time()
            for n in range(last + 1, number + 1):
                self.seen.setdefault(n, now)
            last = max(last, number)
            time.sleep(0.005)


class WindowKeeper(threading.Thread):
    """Records the blocks of JobSubmitted/JobSettled and moves the chain clock past each new challenge window."""

    def __init__(self, w3: Web3, market: Marketplace, from_block: int):
        super().__init__(daemon=True, name="window-keeper")
        self.w3, self.market, self.scanned = w3, market, from_block
        self.submitted: dict[int, int] = {}
        self.settled: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        events = self.market.market.events
        while not self.stop.wait(0.2):
            head = self.w3.eth.block_number
            fresh = False
            for event in events.JobSubmitted.get_logs(from_block=self.scanned, to_block=head):
                if event["args"]["jobId"] not in self.submitted:
                    self.submitted[event["args"]["jobId"]] = event["blockNumber"]
                    fresh = True
            for event in events.JobSettled.get_logs(from_block=self.scanned, to_block=head):
                self.settled.setdefault(event["args"]["jobId"], event["blockNumber"])
            self.scanned = max(self.scanned, head - 2)
            if fresh:  # NOTE: the window is protocol time: the next block is past it for what was submitted
                self.w3.provider.make_request("evm_increaseTime", [61])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30, help="agent jobs to run")
    parser.add_argument("--rate", type=float, default=1.0, help="createJob transactions per second (1: below the daemon's throughput here)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every job to settle")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="nodeai-bench-node-"))
    with Anvil(block_time=1) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 30}))
        keys = dict(zip(ROLES, ANVIL_KEYS)) | {"node": NODE_KEY}
        deployer = Account.from_key(keys["deployer"])
        params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address,
                              challenge_window=60, min_stake=10 * ONE)
        deployment = deploy_suite(w3, deployer, params)
        deployments_file = deployment.save(work / "deployments")
        market = Marketplace.from_keys(w3, deployment, keys)
        store = DirectoryStore(work / "artifacts")
        spec_cid = store.add_bytes(json.dumps(SPEC).encode())
        for who in ("requester",):
            market.mint(who, 10_000_000 * ONE)
        market.mint("node", 100_000 * ONE)
        base_id, _ = market.register_model(b"base model weights", b"base manifest", 10_000, 1_000)
        agent_id = market.send("publisher", market.models.functions.registerAgent(spec_cid, base_id, 10_000, 1_000),
                               "registerAgent").event("ModelRegistered")["modelId"]
        market.approve("requester", market.market)

        keystore = work / "node-keystore.json"
        create_keystore(keystore, "bench", NODE_KEY, scrypt_n=2**14)
        (work / "password").write_text("bench\n")
        config = work / "node.toml"
        config.write_text(f"""
state_dir = "{work / 'state'}"
[chain]
rpc_url = "{chain.url}"
chain_id = {deployment.chain_id}
deployments = "{deployments_file}"
poll_interval = 0.2
[keystore]
path = "{keystore}"
password_file = "{work / 'password'}"
[provider]
stake = {10_000 * ONE}
[[provider.models]]
id = {agent_id}
price_per_1k_tokens = 10000
[claim]
capacity = 64
min_time_to_deadline = 60
[tx]
poll_interval = 0.02
[feed]
poll_interval = 0.02
[ipfs]
backend = "directory"
directory = "{work / 'artifacts'}"
[http]
port = 0
[logging]
json = true
""")
        watcher = BlockWatcher(chain.url)
        watcher.start()
        log = open(work / "daemon.out", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "nodeai.node", "run", "--config", str(config), "--quiet"],
                                  cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            port_file = work / "state" / "http.port"
            deadline = time.monotonic() + 120
            while True:
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited: {(work / 'daemon.out').read_text()[-2000:]}")
                if port_file.is_file():
                    try:
                        if httpx.get(f"http://127.0.0.1:{port_file.read_text()}/health", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                if time.monotonic() > deadline:
                    raise SystemExit("the daemon did not become healthy within 120 s")
                time.sleep(0.1)

            requester = market.accounts["requester"]
            nonce = w3.eth.get_transaction_count(requester.address)
            sent: dict[str, float] = {}
            inputs = []
            for i in range(args.jobs):
                data = json.dumps({"kind": "agent", "spec_cid": spec_cid, "input": f"bench job {i}"}).encode()
                inputs.append((store.add_bytes(data), data))
            chain_now = w3.eth.get_block("latest")["timestamp"]
            keeper = WindowKeeper(w3, market, w3.eth.block_number)
            keeper.start()
            started = time.time()
            for i, (cid, _) in enumerate(inputs):
                tx = market.market.functions.createJob(agent_id, cid, 2 * ONE, chain_now + 86_400, ZERO_ADDRESS, 0)
                built = tx.build_transaction({"from": requester.address, "nonce": nonce + i, "gas": 400_000,
                                              "chainId": deployment.chain_id})
                signed = requester.sign_transaction(built)
                sent["0x" + bytes(signed.hash).hex()] = time.time()
                w3.eth.send_raw_transaction(signed.raw_transaction)
                time.sleep(max(0.0, started + (i + 1) / args.rate - time.time()))

            created: dict[int, tuple[int, float]] = {}  # job id -> (block, createJob sent at)
            for tx_hash, at in sent.items():
                receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
                for event in market.market.events.JobCreated().process_receipt(receipt, errors=DISCARD):
                    created[event["args"]["jobId"]] = (receipt["blockNumber"], at)

            deadline = time.monotonic() + args.timeout
            while len(keeper.settled) < len(created):
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(keeper.settled)} of {len(created)} jobs settled within {args.timeout:.0f} s")
                time.sleep(0.2)
            finished = time.time()
        finally:
            stop_process(daemon, timeout=30)
            log.close()
            watcher.stop.set()
            watcher.join(timeout=5)
            if "keeper" in locals():
                keeper.stop.set()
                keeper.join(timeout=5)

    db = sqlite3.connect(work / "state" / "node.db")
    rows = db.execute("SELECT job_id, seen_at, claim_sent_at FROM jobs").fetchall()
    db.close()
    seen_at = {job_id: seen for job_id, seen, _ in rows}
    claim_sent = {job_id: at for job_id, _, at in rows}
    claim_ms = [1000 * (claim_sent[j] - watcher.seen[block]) for j, (block, _) in created.items() if claim_sent.get(j)]
    # NOTE: the two halves of the claim latency: the indexer feed delivering the job, then the claim path
    feed_ms = [1000 * (seen_at[j] - watcher.seen[block]) for j, (block, _) in created.items() if j in seen_at]
    decide_ms = [1000 * (claim_sent[j] - seen_at[j]) for j in created if claim_sent.get(j) and j in seen_at]
    to_submit = [watcher.seen[keeper.submitted[j]] - at for j, (_, at) in created.items()]
    to_settle = [watcher.seen[keeper.settled[j]] - at for j, (_, at) in created.items()]
    result = {
        "jobs": len(created),
        "job_kind": "agent (rules planner, no model calls)",
        "block_time_s": 1,
        "challenge_window_s": 60,
        "challenge_window_fast_forwarded": True,
        "jobs_per_min": round(len(created) / (finished - started) * 60, 1),
        "claim_latency_p50_ms": round(statistics.median(claim_ms), 1),
        "claim_latency_p90_ms": round(percentile(claim_ms, 90), 1),
        "claim_latency_max_ms": round(max(claim_ms), 1),
        "feed_latency_p50_ms": round(statistics.median(feed_ms), 1),
        "feed_to_claim_sent_p50_ms": round(statistics.median(decide_ms), 1),
        "create_to_submit_p50_s": round(statistics.median(to_submit), 2),
        "create_to_settle_p50_s": round(statistics.median(to_settle), 2),
        "create_to_settle_p90_s": round(percentile(to_settle, 90), 2),
        "target_claim_latency_p50_ms": 500,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
