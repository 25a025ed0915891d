"""Indexer benchmark: backfill throughput (SQLite, PostgreSQL) against the raw RPC + decode rate, and live latency.

One run, side by side, on one anvil chain:

1. Deploy the suite and four ``EventPump`` contracts (scripts/bench/EventPump.vy), each a
   staked provider, a payer and a requester, and emit >= 20,000 protocol events in a few
   hundred transactions: every pump round is a ModelServed, a Deposited (16 channels) and a
   JobCreated (a new job each), plus ModelTermsChanged and ModelRegistered now and then.
   Nine empty blocks follow each pump transaction, so the events spread over a few thousand
   blocks as on a real chain.
2. (a) raw: ``eth_getLogs`` over plain ``requests`` in ranges of 2,000 blocks, plus eth_abi
   decoding of every log (plain eth_abi), no web3 contract machinery: the ceiling for any
   indexer written in Python against this node.
   (b) backfill: the indexer's CLI (``python -m nodeai.indexer --no-api``) as a subprocess,
   timed from process start (imports included) to the database's cursor at the head with
   every event and projection committed, into SQLite and into PostgreSQL (a fresh schema of
   postgresql://postgres@127.0.0.1:5432/test, dropped after). Ratio = indexer rate / raw rate.
   The three run interleaved, ``--repeats`` passes each, and each path's best pass counts:
   on a shared machine other load only ever slows a pass down.
   (c) live: the CLI with its HTTP API (SQLite, already synced), then 50 blocks mined one at
   a time, each with one createJob; latency from the transaction's receipt to the job being
   served by GET /jobs/{id} (polled every 10 ms), p50 and p99.

Run::

    .venv/bin/python scripts/bench/indexer.py [--rounds-per-tx 24] [--txs 264] [--repeats 4] [--live-blocks 50]
        [--pg-url postgresql://postgres@127.0.0.1:5432/test] [--no-postgres]

Last line: one JSON object (events, raw_events_per_s, sqlite_events_per_s,
postgres_events_per_s, sqlite_ratio, postgres_ratio, live_latency_p50_ms, live_latency_p99_ms, ...).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import requests  # noqa: E402
from eth_account import Account  # noqa: E402
from web3 import Web3  # noqa: E402

from nodeai.chain.anvil import ANVIL_KEYS, Anvil, free_port  # noqa: E402
from nodeai.chain.deploy import DeployParams, Deployment, deploy_suite  # noqa: E402
from nodeai.chain.marketplace import raw_cid  # noqa: E402
from eth_abi import decode as abi_decode  # noqa: E402

from nodeai.indexer.codec import LogCodec  # noqa: E402
from loadgen import percentile, stop_process  # noqa: E402 - scripts/bench/ is on sys.path when run

REPO = Path(__file__).resolve().parents[2]
PUMP_SOURCE = Path(__file__).resolve().parent / "EventPump.vy"
ONE = 10**6
PUMPS = 4
TX_GAS = 25_000_000
EMPTY_BLOCKS_AFTER_TX = 9
RAW_SPAN = 2_000
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


# -- JSON-RPC, plain ------------------------------------------------------------------------------------
class Rpc:
    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()
        self._id = 0

    def __call__(self, method: str, *params):
        self._id += 1
        reply = self.session.post(self.url, json={"jsonrpc": "2.0", "id": self._id, "method": method,
                                                  "params": list(params)}, timeout=120).json()  # fmt: skip
        if reply.get("error"):
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def transact(self, sender: str, to: str | None, data: str, gas: int | None = None) -> dict:
        """eth_sendTransaction from an unlocked anvil account; the receipt (status checked)."""
        tx = {"from": sender, "data": data}
        if to:
            tx["to"] = to
        if gas:
            tx["gas"] = hex(gas)
        tx_hash = self("eth_sendTransaction", tx)
        receipt = self.wait_receipt(tx_hash)
        if int(receipt["status"], 16) != 1:
            raise RuntimeError(f"transaction {tx_hash} to {to} reverted")
        return receipt

    def wait_receipt(self, tx_hash: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            receipt = self("eth_getTransactionReceipt", tx_hash)
            if receipt:
                return receipt
            time.sleep(0.001)
        raise TimeoutError(f"no receipt for {tx_hash}")


def compile_pump() -> tuple[list[dict], str]:
    result = subprocess.run([sys.executable, "-m", "vyper", "-f", "abi,bytecode", str(PUMP_SOURCE)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"EventPump.vy does not compile: {result.stderr.strip()}")
    abi_line, bytecode_line = result.stdout.strip().splitlines()[-2:]
    return json.loads(abi_line), bytecode_line.strip()


# -- 1. the chain -------------------------------------------------------------------------------------
def build_chain(anvil: Anvil, txs: int, rounds: int, workdir: Path) -> dict:
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
    rpc = Rpc(anvil.url)
    deployer = Account.from_key(ANVIL_KEYS[0])
    requester = Account.from_key(ANVIL_KEYS[1]).address
    params = DeployParams(treasury=Account.from_key(ANVIL_KEYS[2]).address, arbiter=deployer.address)
    deployment = deploy_suite(w3, deployer, params)
    deployments_file = deployment.save(workdir)
    token = deployment.contract(w3, "TestToken")
    market = deployment.contract(w3, "JobMarket")
    min_stake = params.min_stake

    abi, bytecode = compile_pump()
    factory = w3.eth.contract(abi=abi, bytecode=bytecode)
    init = factory.constructor(*(deployment.address(n) for n in ("TestToken", "ModelRegistry", "ProviderRegistry",
                                                                   "InferenceEscrow", "JobMarket"))).data_in_transaction  # fmt: skip
    pumps = []
    for _ in range(PUMPS):
        receipt = rpc.transact(deployer.address, None, init)
        address = Web3.to_checksum_address(receipt["contractAddress"])
        pump = w3.eth.contract(address=address, abi=abi)
        rpc.transact(deployer.address, token.address, token.encode_abi("mint", args=[address, 10**9 * ONE]))
        rpc.transact(deployer.address, address, pump.encode_abi("setup", args=[min_stake]))
        pumps.append(pump)
    model_ids = [pump.functions.ownModel().call() for pump in pumps]
    payees = [pump.address for pump in pumps]
    # the live phase's requester: plain createJob calls from an EOA
    rpc.transact(deployer.address, token.address, token.encode_abi("mint", args=[requester, 10**6 * ONE]))
    rpc.transact(requester, token.address, token.encode_abi("approve", args=[market.address, 2**256 - 1]))

    deadline = int(rpc("eth_getBlockByNumber", "latest", False)["timestamp"], 16) + 20 * 86_400
    started = time.perf_counter()
    gas_used = 0
    for k in range(txs):
        pump = pumps[k % PUMPS]
        data = pump.encode_abi("pump", args=[rounds, model_ids, payees, k * rounds, deadline])
        receipt = rpc.transact(deployer.address, pump.address, data, gas=TX_GAS)
        gas_used += int(receipt["gasUsed"], 16)
        rpc("anvil_mine", hex(EMPTY_BLOCKS_AFTER_TX))
    emit_s = time.perf_counter() - started
    head = int(rpc("eth_blockNumber"), 16)
    return {"deployment": deployment, "deployments_file": deployments_file, "head": head, "emit_s": emit_s,
            "gas_per_tx": gas_used // max(txs, 1), "model_ids": model_ids, "requester": requester,
            "market": market, "deadline": deadline}  # fmt: skip


# -- 2a. raw ------------------------------------------------------------------------------------------
def raw_rate(url: str, deployment: Deployment, head: int) -> tuple[int, float, float, dict[str, int]]:
    """Events, wall seconds and CPU seconds (this process) of one pass: eth_getLogs (plain
    requests) + eth_abi decoding of every log's topics and data (types from LogCodec's
    tables; no checksumming, no checks: the bare floor the issue defines)."""
    started, cpu = time.perf_counter(), time.process_time()
    codec = LogCodec(deployment)
    session = requests.Session()
    addresses = [a.lower() for a in codec.addresses]
    count = 0
    names: dict[str, int] = {}
    for low in range(deployment.deploy_block, head + 1, RAW_SPAN):
        high = min(low + RAW_SPAN - 1, head)
        reply = session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [
            {"fromBlock": hex(low), "toBlock": hex(high), "address": addresses}]}, timeout=120).json()  # fmt: skip
        for entry in reply["result"]:
            decoder = codec.decoder(entry["address"], entry["topics"][0])
            for (_, typ), topic in zip(decoder.indexed, entry["topics"][1:]):
                abi_decode([typ], bytes.fromhex(topic[2:]))
            abi_decode(list(decoder.data_types), bytes.fromhex(entry["data"][2:]))
            count += 1
            names[decoder.name] = names.get(decoder.name, 0) + 1
    return count, time.perf_counter() - started, time.process_time() - cpu, names


# -- 2b. backfill -------------------------------------------------------------------------------------
class SqliteProbe:
    def __init__(self, path: Path):
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def height(self, chain_id: int) -> int | None:
        if self.conn is None:
            if not self.path.exists():
                return None
            self.conn = sqlite3.connect(str(self.path), timeout=5)
        try:
            row = self.conn.execute("SELECT height FROM cursors WHERE chain_id = ?", (chain_id,)).fetchone()
        except sqlite3.OperationalError:
            return None  # not migrated yet
        return row[0] if row else None

    def count(self, chain_id: int) -> tuple[int, int]:
        events = self.conn.execute("SELECT COUNT(*) FROM events WHERE chain_id = ?", (chain_id,)).fetchone()[0]
        entities = self.conn.execute("SELECT COUNT(*) FROM entities WHERE chain_id = ?", (chain_id,)).fetchone()[0]
        return events, entities

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class PostgresProbe:
    def __init__(self, url: str):
        import psycopg

        self.psycopg = psycopg
        self.conn = psycopg.connect(url, autocommit=True)

    def height(self, chain_id: int) -> int | None:
        try:
            row = self.conn.execute("SELECT height FROM cursors WHERE chain_id = %s", (chain_id,)).fetchone()
        except self.psycopg.errors.UndefinedTable:
            return None
        return row[0] if row else None

    def count(self, chain_id: int) -> tuple[int, int]:
        events = self.conn.execute("SELECT COUNT(*) FROM events WHERE chain_id = %s", (chain_id,)).fetchone()[0]
        entities = self.conn.execute("SELECT COUNT(*) FROM entities WHERE chain_id = %s", (chain_id,)).fetchone()[0]
        return events, entities

    def close(self) -> None:
        self.conn.close()


def indexer_command(deployments_file: Path, rpc_url: str, db: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nodeai.indexer", "--deployments", str(deployments_file), "--rpc-url", rpc_url,
            "--db", db, "--confirmations", "2", *extra]  # fmt: skip


def process_start_s(repeats: int = 3) -> float:
    """Seconds for a bare ``python -c "import nodeai.indexer.__main__"``: the part of every backfill
    figure that is interpreter start and imports (best of ``repeats``)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import nodeai.indexer.__main__"], cwd=REPO, check=True)
        best = min(best, time.perf_counter() - started)
    return best


def backfill(command: list[str], probe, chain_id: int, head: int, expected: int, log_path: Path,
             timeout: float = 300.0) -> tuple[float, float, int]:
    """Seconds from the CLI's start to the cursor at ``head``, the CLI's CPU seconds, entities committed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            while True:
                height = probe.height(chain_id)
                if height is not None and height >= head:
                    elapsed = time.perf_counter() - started
                    break
                if process.poll() is not None:
                    raise RuntimeError(f"the indexer exited with code {process.returncode}: "
                                       f"{log_path.read_text()[-2000:]}")  # fmt: skip
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"the indexer did not reach block {head} in {timeout:.0f} s "
                                       f"(at {height}): {log_path.read_text()[-2000:]}")  # fmt: skip
                time.sleep(0.02)
        finally:
            stop_process(process)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    events, entities = probe.count(chain_id)
    if events != expected:
        raise RuntimeError(f"the indexer committed {events} events, the chain has {expected}")
    return elapsed, cpu, entities


# -- 2c. live ------------------------------------------------------------------------------------------
def live_latency(chain: dict, rpc_url: str, db: str, blocks: int, workdir: Path) -> list[float]:
    rpc = Rpc(rpc_url)
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    http = requests.Session()
    market, requester = chain["market"], chain["requester"]
    log_path = workdir / "live.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(indexer_command(chain["deployments_file"], rpc_url, db, "--port", str(port)),
                                   cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"the indexer exited: {log_path.read_text()[-2000:]}")
                try:
                    if http.get(f"{api}/ready", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the indexer API never became ready: {log_path.read_text()[-2000:]}")
                time.sleep(0.05)
            rng = random.Random(7)
            latencies = []
            model_id = chain["model_ids"][0]
            for i in range(blocks):
                # NOTE: a random pause, so blocks land at every phase of the indexer's head polling
                time.sleep(rng.uniform(0.02, 0.3))
                data = market.encode_abi("createJob", args=[model_id, raw_cid(b"live job %d" % i), ONE,
                                                            chain["deadline"], "0x" + "00" * 20, 0])  # fmt: skip
                tx_hash = rpc("eth_sendTransaction", {"from": requester, "to": market.address, "data": data})
                receipt = rpc.wait_receipt(tx_hash)
                mined = time.perf_counter()
                if int(receipt["status"], 16) != 1:
                    raise RuntimeError(f"live createJob {tx_hash} reverted")
                created = [e for e in receipt["logs"] if e["address"].lower() == market.address.lower()]
                job_id = int(created[0]["topics"][1], 16)  # JobCreated(jobId indexed, ...)
                give_up = mined + 30
                while True:
                    if http.get(f"{api}/jobs/{job_id}", timeout=5).status_code == 200:
                        latencies.append((time.perf_counter() - mined) * 1000)
                        break
                    if time.perf_counter() > give_up:
                        raise TimeoutError(f"job {job_id} not served within 30 s: {log_path.read_text()[-2000:]}")
                    time.sleep(0.01)
            return latencies
        finally:
            stop_process(process)


# -- main ---------------------------------------------------------------------------------------------
def sqlite_backfill(chain: dict, url: str, path: Path, expected: int, log_path: Path) -> tuple[float, float, int]:
    probe = SqliteProbe(path)
    try:
        seconds, cpu, entities = backfill(indexer_command(chain["deployments_file"], url, f"sqlite:///{path}", "--no-api"),
                                        probe, chain["deployment"].chain_id, chain["head"], expected, log_path)  # fmt: skip
    finally:
        probe.close()
    return seconds, cpu, entities


def postgres_backfill(chain: dict, url: str, pg_url: str, expected: int, log_path: Path) -> tuple[float, float, int]:
    import psycopg

    schema = f"bench_indexer_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            sep = "&" if "?" in pg_url else "?"
            db = f"{pg_url}{sep}options=-csearch_path%3D{schema}"
            probe = PostgresProbe(db)
            try:
                seconds, cpu, entities = backfill(indexer_command(chain["deployments_file"], url, db, "--no-api"),
                                                probe, chain["deployment"].chain_id, chain["head"], expected, log_path)  # fmt: skip
            finally:
                probe.close()
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    return seconds, cpu, entities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--txs", type=int, default=264, help="pump transactions (each followed by empty blocks)")
    parser.add_argument("--rounds-per-tx", type=int, default=24, help="pump rounds per transaction (~3.2 events each)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="passes of every path, interleaved; the best of each counts (other load on the machine "
                             "only ever slows a pass down)")  # fmt: skip
    parser.add_argument("--live-blocks", type=int, default=50)
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL database (a fresh schema is made and dropped)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nodeai-bench-indexer-") as tmp, Anvil() as anvil:
        workdir = Path(tmp)
        chain = build_chain(anvil, args.txs, args.rounds_per_tx, workdir)
        deployment: Deployment = chain["deployment"]
        head = chain["head"]
        print(f"chain: blocks {deployment.deploy_block}..{head}, {args.txs} pump txs "
              f"({chain['gas_per_tx']:,} gas each) in {chain['emit_s']:.1f} s", flush=True)  # fmt: skip

        events, _, _, names = raw_rate(anvil.url, deployment, head)  # warm-up pass: anvil's caches, our imports
        print("events: " + ", ".join(f"{n} {c:,}" for n, c in sorted(names.items(), key=lambda kv: -kv[1])), flush=True)
        times: dict[str, list[float]] = {"raw": [], "sqlite": [], "postgres": []}
        cpus: dict[str, list[float]] = {"raw": [], "sqlite": [], "postgres": []}
        entities = 0
        for i in range(args.repeats):
            count, seconds, cpu, _ = raw_rate(anvil.url, deployment, head)
            if count != events:
                raise RuntimeError(f"eth_getLogs returned {count} logs, then {events}")
            times["raw"].append(seconds)
            cpus["raw"].append(cpu)
            seconds, cpu, entities = sqlite_backfill(chain, anvil.url, workdir / f"indexer-{i}.db", events,
                                                     workdir / f"sqlite-{i}.log")  # fmt: skip
            times["sqlite"].append(seconds)
            cpus["sqlite"].append(cpu)
            if not args.no_postgres:
                seconds, cpu, _ = postgres_backfill(chain, anvil.url, args.pg_url, events, workdir / f"postgres-{i}.log")
                times["postgres"].append(seconds)
                cpus["postgres"].append(cpu)
            print(f"pass {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items() if v), flush=True)

        start_s = process_start_s()
        latencies = live_latency(chain, anvil.url, f"sqlite:///{workdir / 'indexer-0.db'}", args.live_blocks, workdir)

    best = {k: min(v) for k, v in times.items() if v}
    rate = {k: events / v for k, v in best.items()}
    best_cpu = {k: min(v) for k, v in cpus.items() if v}
    results = {
        "events": events,
        "entities": entities,
        "blocks": head - deployment.deploy_block + 1,
        "raw_events_per_s": round(rate["raw"]),
        "sqlite_events_per_s": round(rate["sqlite"]),
        "postgres_events_per_s": round(rate["postgres"]) if "postgres" in rate else None,
        "sqlite_ratio": round(rate["sqlite"] / rate["raw"], 3),
        "postgres_ratio": round(rate["postgres"] / rate["raw"], 3) if "postgres" in rate else None,
        "live_latency_p50_ms": round(percentile(latencies, 50), 1),
        "live_latency_p99_ms": round(percentile(latencies, 99), 1),
        "live_blocks": len(latencies),
        "passes": args.repeats,
        "indexer_process_start_s": round(start_s, 3),
        # NOTE: CPU seconds of the measuring process (raw) and of the indexer process (backfills),
        # not of anvil or PostgreSQL: less sensitive than wall time to other load on the machine.
        "cpu_s": {k: round(v, 2) for k, v in best_cpu.items()},
    }

    labels = {
        "raw": "raw: eth_getLogs (requests) + eth_abi decode",
        "sqlite": "indexer backfill -> SQLite, from process start",
        "postgres": "indexer backfill -> PostgreSQL, from process start",
    }
    width = max(len(labels[k]) for k in best)
    print(f"\n{events:,} events, {entities:,} entities, {results['blocks']:,} blocks; best of {args.repeats} passes")
    print(f"{'path':<{width}}  {'seconds':>7}  {'events/s':>8}  {'vs raw':>6}  {'CPU s':>5}  passes (wall s)")
    for key in best:
        passes = " ".join(f"{t:.2f}" for t in times[key])
        print(f"{labels[key]:<{width}}  {best[key]:>7.2f}  {rate[key]:>8,.0f}  {rate[key] / rate['raw']:>6.2f}  "
              f"{best_cpu[key]:>5.2f}  {passes}")  # fmt: skip
    print(f"(each indexer figure includes {start_s:.2f} s of interpreter start and imports; CPU s: the measuring"
          " or indexer process only, not anvil or PostgreSQL)")
    print(f"\nlive: {len(latencies)} blocks, receipt -> GET /jobs/{{id}} (10 ms polls): "
          f"p50 {results['live_latency_p50_ms']:.0f} ms, p99 {results['live_latency_p99_ms']:.0f} ms, "
          f"max {max(latencies):.0f} ms")  # fmt: skip
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
