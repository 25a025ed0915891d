"""The provider daemon: start-up, the job loop, settlement batches, and the scale-out worker.

    daemon = ProviderDaemon(config, account, engine=engine)

    @daemon.on_startup
    async def announce(d: ProviderDaemon) -> None: ...

    @daemon.on_job(Phase.FINALIZED)
    async def paid(record: JobRecord) -> None: ...

    await daemon.run(stop_event)

Start-up (``prepare``): the RPC answers, the chain id and the contract code match
the deployments file, the configured models exist; then the provider's
registration is reconciled (nothing is sent when the chain already matches).

The job loop: the indexer's job feed delivers open jobs that match the served
models and the price floor; the claim policy (``policy.claim_decision``)
decides; each accepted job gets a driver task that repeats
``reconcile.next_action(local record, chain view)`` and performs the action
(claim, execute, submit, wait for the window, finalize) until the job ends.
The same drivers resume every unfinished record after a restart, so a crash
at any point ends in the same place as a run without one.

Why the feed is read in-process (embedded ingestion, or the database of a
separately run indexer) rather than over the indexer's HTTP API: the feed's
"delivered" bookkeeping lives in that database, a restart then resumes
exactly where it stopped, and a claim does not wait for an HTTP hop and an
SSE poll (claim latency is the number a provider competes on).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from nodeai.chain.deployments import Deployment
from nodeai.chain.jobs import Job
from nodeai.errors import ContractReverted, NodeAIError
from nodeai.node.artifacts import ArtifactError, open_artifact_store
from nodeai.node.chain import ProviderChain
from nodeai.node.config import ConfigError, NodeConfig
from nodeai.node.errors import ExecutionError, QueueError, StartupError, TxError
from nodeai.node.executors import (
    AgentExecutor, BatchInferenceExecutor, ExecutionResult, ExecutorRegistry, JobContext, load_engine,
)  # fmt: skip
from nodeai.node.metrics import NodeMetrics
from nodeai.node.policy import ClaimPolicy, JobOffer, Verdict, claim_decision
from nodeai.node.queue import JetStreamQueue, WorkItem, heartbeat
from nodeai.node.reconcile import Action, LocalView, next_action
from nodeai.node.settlement import ReceiptSource, Settler, VoucherSource
from nodeai.node.state import JobRecord, Phase, StateStore
from nodeai.node.tx import ErrorClass, TxManager, TxStatus, backoff_delay, classify_exception
from nodeai.serving.engines.base import Engine

log = logging.getLogger("nodeai.node")

__all__ = ["ProviderDaemon", "StoredResult", "run_worker", "execute_job", "failure_result"]

Hook = Callable[..., Awaitable[None]]
BUSY = (Phase.CLAIMING, Phase.CLAIMED, Phase.EXECUTING, Phase.RESULT_STORED, Phase.SUBMITTING)
MAX_QUIET_FAILURES = 5  # attempts of one action before an unclaimed job is given up


@dataclass(frozen=True)
class StoredResult:
    """An executed job's output, stored in the artifact store, ready to submit."""

    output_cid: str
    output_hash: str  # 0x + 64 hex
    usage: int
    charge: int


def failure_result(job: JobContext, reason: str) -> ExecutionResult:
    """What is submitted for a claimed job that cannot run (bad input, unknown kind): charge 0.

    Submitting it settles the job with a full refund and releases the bond,
    which serves the requester and the provider better than letting it expire.
    """
    output = json.dumps({"kind": "error", "job_id": job.job_id, "error": reason}, sort_keys=True).encode()
    return ExecutionResult(output, 0, 0, keccak(output), status="failed", reason=reason)


async def execute_job(executors: ExecutorRegistry, artifacts: Any, ctx: JobContext, input_cid: str,
                      metrics: NodeMetrics | None = None) -> StoredResult:
    """Fetch the input (verified against its CID), execute, store the output. Shared by daemon and workers.

    A job that cannot run (malformed input, no executor, a CID whose bytes do
    not match) yields a failure report; transient problems (the store or the
    engine unreachable) raise, and the caller retries.
    """
    from nodeai.ipfs import ArtifactNotFoundError, CidMismatchError, InvalidCidError

    started = time.monotonic()
    try:
        data = await asyncio.to_thread(artifacts.get_bytes, input_cid)
    except (ArtifactError, CidMismatchError, InvalidCidError, ArtifactNotFoundError) as exc:
        # NOTE: after the store's own timeout a missing input is as final as a corrupt one: report it
        # (charge 0, bond released) rather than hold the job until its deadline slashes the bond.
        result = failure_result(ctx, f"input {input_cid} unusable: {exc}")
    else:
        try:
            result = await executors.execute(ctx, data)
        except ExecutionError as exc:
            result = failure_result(ctx, str(exc))
    output_cid = await asyncio.to_thread(artifacts.add_bytes, result.output)
    if metrics is not None:
        metrics.execution_seconds.labels(result.status).observe(time.monotonic() - started)
        metrics.jobs_executed.labels(result.status).inc()
    return StoredResult(output_cid, "0x" + result.output_hash.hex(), result.usage, result.charge)


def build_executors(config: NodeConfig, engine: Engine | None, artifacts: Any, chain_id: int,
                    loop: asyncio.AbstractEventLoop | None = None) -> ExecutorRegistry:
    """The executors this node runs: batch inference on its engine, agents through the agent runtime."""
    registry = ExecutorRegistry()
    if engine is not None:
        registry.register(BatchInferenceExecutor(engine, config.engine.max_tokens))
    if config.agents.enabled:
        from nodeai.agents import AgentRuntime
        from nodeai.agents.model import EngineModelClient

        # NOTE: the engine lives on the daemon's event loop; the runtime runs in worker threads
        # and reaches it through that loop. No wallet: agents with write tools need one of their own.
        model = EngineModelClient(engine, loop) if engine is not None else None
        runtime = AgentRuntime(config.agents.store or config.state_path / "agents.db", artifacts=artifacts, model=model,
                               rpc_urls={chain_id: config.chain.rpc_url})
        registry.register(AgentExecutor(runtime, artifacts, chain_id))
    return registry


class _Server:
    """uvicorn without its signal handlers (the daemon owns SIGTERM/SIGINT)."""

    def __init__(self, app: Any, host: str, port: int):
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.server = Quiet(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
        self.task: asyncio.Task | None = None

    async def start(self) -> int:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise StartupError("the HTTP server stopped while starting")
            await asyncio.sleep(0.02)
        return self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            await asyncio.wait([self.task], timeout=5)


class ProviderDaemon:
    def __init__(self, config: NodeConfig, account: LocalAccount, *, engine: Engine | None = None,
                 executors: ExecutorRegistry | None = None, artifacts: Any = None, vouchers: VoucherSource | None = None,
                 receipts: ReceiptSource | None = None, w3: Web3 | None = None, deployment: Deployment | None = None):
        self.config = config
        self.account = account
        self.engine = engine
        self.executors = executors
        self.artifacts = artifacts
        self.vouchers, self.receipts = vouchers, receipts
        self.w3 = w3
        self.deployment = deployment
        self.metrics = NodeMetrics()
        self.state: StateStore | None = None
        self.chain: ProviderChain | None = None
        self.settler: Settler | None = None
        self.queue: JetStreamQueue | None = None
        self.http_port: int | None = None
        self.registration_txs: list[str] = []
        self._hooks: dict[str, list[Hook]] = {"startup": [], "shutdown": []}
        self._job_hooks: dict[Phase, list[Hook]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._drivers: dict[int, asyncio.Task] = {}
        self._busy: set[int] = set()
        self._slot_freed: asyncio.Event | None = None
        self._results: dict[int, asyncio.Event] = {}
        self._ingestor: Any = None
        self._ingest_thread: threading.Thread | None = None
        self._server: _Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stake_cache: tuple[int, float] | None = None
        self._head: tuple[int, int] | None = None  # (number, timestamp) of the latest block seen
        self._head_changed = asyncio.Event()
        self.ready = False

    # -- the decorator surface ----------------------------------------------------------------------------
    def on_startup(self, fn: Hook) -> Hook:
        """``await fn(daemon)`` after start-up, before the first job."""
        self._hooks["startup"].append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        self._hooks["shutdown"].append(fn)
        return fn

    def on_job(self, *phases: Phase) -> Callable[[Hook], Hook]:
        """``await fn(record)`` whenever a job enters one of ``phases``."""

        def register(fn: Hook) -> Hook:
            for phase in phases:
                self._job_hooks.setdefault(phase, []).append(fn)
            return fn

        return register

    # -- start-up -------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Checks and registration, synchronously; raises before anything is sent when a check fails."""
        config = self.config
        if self.deployment is None:
            path = config.chain.deployments
            if not path.is_file():
                raise ConfigError(f"no deployments file at {path}: set chain.deployments to the file scripts/deploy.py wrote")
            try:
                self.deployment = Deployment(**json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{path} is not a deployments file: {exc}") from None
        if self.w3 is None:
            self.w3 = Web3(Web3.HTTPProvider(config.chain.rpc_url, request_kwargs={"timeout": config.chain.rpc_timeout}))
        self.state = StateStore(config.db_path)
        owner = self.state.get_meta("provider")
        identity = f"{self.deployment.chain_id}:{self.account.address}"
        if owner and owner != identity:
            raise StartupError(f"the state in {config.state_path} belongs to {owner} (chain id:address), not {identity}: "
                               "use another state_dir for another key or chain")
        tx = TxManager(self.w3, self.account, config.tx, self.metrics)
        self.chain = ProviderChain(self.w3, self.deployment, tx, config.chain.rpc_url)
        self.chain.check(config.chain.chain_id, config.provider.models)
        self.state.set_meta("provider", identity)
        self.registration_txs = [r.tx_hash for r in self.chain.register(config.provider)]
        if self.registration_txs:
            log.info("registration updated on chain", extra={"txs": ",".join(self.registration_txs)})
        else:
            log.info("registration already matches the config: nothing sent")
        if self.artifacts is None:
            self.artifacts = open_artifact_store(config)
        if self.engine is None and config.engine.factory:
            self.engine = load_engine(config.engine.factory, config.engine.options)
        if self.executors is None:
            self.executors = build_executors(config, self.engine, self.artifacts, self.deployment.chain_id, self._loop)
        if self.vouchers is None and self.receipts is None and config.batching.gateway_store is not None:
            self.vouchers = self.receipts = self._gateway_store(config.batching.gateway_store)
        self.settler = Settler(self.chain, self.state, config.batching, self.vouchers, self.receipts, self.metrics)
        self.metrics.bind(self.state.counts, self._cache_stats)

    def _gateway_store(self, path: Path) -> Any:
        try:
            from nodeai.serving.store import GatewayStore
        except ImportError as exc:
            raise ConfigError(f"batching.gateway_store needs the gateway (nodeai.serving.store): {exc}") from None
        if not path.is_file():
            raise ConfigError(f"no gateway store at {path}: start the gateway first or fix batching.gateway_store")
        return GatewayStore(path, self.account.address)

    def _cache_stats(self) -> tuple[int, int] | None:
        stats = getattr(self.artifacts, "stats", None)
        stats = stats() if callable(stats) else stats
        if stats is None:
            return None
        if isinstance(stats, dict):
            return int(stats.get("hits", 0)), int(stats.get("misses", 0))
        return int(getattr(stats, "hits", 0)), int(getattr(stats, "misses", 0))

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        # NOTE: every chain call blocks a thread (receipts are awaited there); the default pool
        # (cpu + 4 threads) would make a claim wait behind jobs waiting for their receipts.
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="node-io")
        loop.set_default_executor(self._pool)
        self._slot_freed = asyncio.Event()
        await asyncio.to_thread(self.prepare)
        if self.engine is not None:
            await self.engine.start()
        if self.config.queue.mode == "nats":
            self.queue = await JetStreamQueue(self.config.queue).connect()
            await self.queue.serve_control(self._control)
        self._start_feed_source()
        if self.config.http.enabled:
            from nodeai.node.http import create_app

            self._server = _Server(create_app(self), self.config.http.host, self.config.http.port)
            self.http_port = await self._server.start()
            (self.config.state_path / "http.port").write_text(str(self.http_port))
        for record in self.state.active():  # type: ignore[union-attr]
            if record.phase in BUSY:
                self._busy.add(record.job_id)
            if record.phase is not Phase.SEEN or record.not_before <= time.time():
                self._drive_later(record.job_id)
        log.info("provider daemon started", extra={"address": self.account.address, "chain_id": self.deployment.chain_id,
                                                   "resumed": len(self._drivers), "queue": self.config.queue.mode})
        for hook in self._hooks["startup"]:
            await hook(self)
        self._spawn(self._feed_loop(), "feed")
        self._spawn(self._head_loop(), "head")
        self._spawn(self._scheduler_loop(), "scheduler")
        if self.vouchers is not None or self.receipts is not None:
            self._spawn(self._settlement_loop(), "settlement")
        self.ready = True

    def _start_feed_source(self) -> None:
        feed = self.config.feed
        if feed.mode != "embedded":
            return
        from nodeai.indexer.ingest import IngestConfig, Ingestor
        from nodeai.indexer.rpc import RpcPool
        from nodeai.indexer.store import open_store

        store = open_store(self._feed_db_url())
        store.migrate()
        pool = RpcPool([self.config.chain.rpc_url], self.deployment.chain_id, timeout=self.config.chain.rpc_timeout)
        self._ingestor = Ingestor(pool, store, self.deployment,
                                  IngestConfig(confirmations=feed.confirmations, poll_interval=self._feed_poll()))
        self._ingest_thread = threading.Thread(target=self._ingestor.run, name="node-ingest", daemon=True)
        self._ingest_thread.start()

    def _feed_poll(self) -> float:
        # NOTE: with the head watcher claiming new jobs, the indexer's feed is the safety net
        # (restarts, missed blocks): polling it less often leaves the CPU to the fast path.
        return max(self.config.feed.poll_interval, 0.5) if self.config.feed.watch_head else self.config.feed.poll_interval

    def _feed_db_url(self) -> str:
        if self.config.feed.mode == "store":
            return self.config.feed.db_url  # type: ignore[return-value]
        return f"sqlite:///{self.config.state_path / 'indexer.db'}"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Start, run until ``stop`` is set (forever without one), shut down."""
        stop = stop or asyncio.Event()
        try:
            await self.start()
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait([waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for task in list(self._tasks):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        self._stopping = True
        self.ready = False
        for hook in self._hooks["shutdown"]:
            try:
                await hook(self)
            except Exception:  # noqa: BLE001 - a failing hook must not keep the daemon from stopping
                log.exception("shutdown hook failed")
        tasks = [*self._tasks, *self._drivers.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._ingestor is not None:
            self._ingestor.stop()
            if self._ingest_thread is not None:
                await asyncio.to_thread(self._ingest_thread.join, 10)
        if self._server is not None:
            await self._server.stop()
        if self.queue is not None:
            await self.queue.close()
        if self.engine is not None:
            await self.engine.close()
        if self.state is not None:
            self.state.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- tasks ----------------------------------------------------------------------------------------------
    async def _db(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A state-store call off the event loop: writes fsync, and a wait there must not stall every job."""
        return await asyncio.to_thread(getattr(self.state, method), *args, **kwargs)

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        return task

    def _drive_later(self, job_id: int, fresh: tuple[Job, int] | None = None) -> None:
        if job_id in self._drivers and not self._drivers[job_id].done():
            return
        task = asyncio.create_task(self._drive(job_id, fresh), name=f"job-{job_id}")
        self._drivers[job_id] = task
        task.add_done_callback(lambda t, j=job_id: self._driver_done(j, t))

    def _driver_done(self, job_id: int, task: asyncio.Task) -> None:
        if self._drivers.get(job_id) is task:
            del self._drivers[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("driver of job %d crashed: %r", job_id, task.exception(), extra={"job_id": job_id})

    def _release(self, job_id: int) -> None:
        if job_id in self._busy:
            self._busy.discard(job_id)
            assert self._slot_freed is not None
            self._slot_freed.set()

    async def _wait_for_slot(self) -> None:
        assert self._slot_freed is not None
        while len(self._busy) >= self.config.claim.capacity:
            self._slot_freed.clear()
            await self._slot_freed.wait()

    def policy(self) -> ClaimPolicy:
        claim = self.config.claim
        return ClaimPolicy(frozenset(m.id for m in self.config.provider.models), claim.min_payment, claim.capacity,
                           claim.min_time_to_deadline)

    # -- the feed ---------------------------------------------------------------------------------------------
    async def _feed_loop(self) -> None:
        from nodeai.indexer.feed import JobFeed
        from nodeai.indexer.projections import job_struct
        from nodeai.indexer.store import open_store

        url = self._feed_db_url()
        feed = JobFeed(lambda: open_store(url), self.deployment.chain_id, consumer=f"node-{self.account.address.lower()}",
                       models={m.id for m in self.config.provider.models}, min_payment=self.config.claim.min_payment,
                       poll_interval=self._feed_poll())
        async for doc in feed:
            job_id = int(doc["job_id"])
            if await self._db("get", job_id) is not None:
                continue
            await self._wait_for_slot()
            await self._consider(job_id, job_struct(doc), doc["input_cid"], doc["created_block"])

    async def _head_loop(self) -> None:
        """The chain clock, and the claim fast path.

        One poll of the latest block serves every job: drivers waiting for a
        window or a deadline read the head's timestamp from here instead of
        asking the node each (``_now``, ``_until``). With ``feed.watch_head`` the
        JobCreated logs of each new block are read straight from the RPC, so a
        claim does not wait for the indexer to ingest the block; the indexer's
        feed delivers the same jobs a moment later (and after a restart), and
        whichever comes first records the job. Failures only cost latency.
        """
        chain = self.chain
        topic = chain.topic("JobCreated")
        served = {m.id for m in self.config.provider.models}
        watch = self.config.feed.watch_head
        interval = self.config.feed.poll_interval if watch else self.config.chain.poll_interval
        last: int | None = None
        while True:
            try:
                block = await asyncio.to_thread(chain.w3.eth.get_block, "latest")
                number, stamp = int(block["number"]), int(block["timestamp"])
                if self._head is None or number > self._head[0]:
                    self._head = (number, stamp)
                    self._head_changed.set()
                    self._head_changed = asyncio.Event()
                logs = []
                if watch and last is not None and number > last:
                    logs = await asyncio.to_thread(chain.w3.eth.get_logs, {
                        "address": chain.market.address, "fromBlock": last + 1, "toBlock": number, "topics": [topic]})
                last = number if last is None or number > last else last
            except Exception as exc:  # noqa: BLE001 - the next poll retries; the indexer's feed covers jobs
                log.debug("head poll failed: %s", exc)
                logs = []
            for entry in logs:
                args = chain.market.events.JobCreated().process_log(entry)["args"]
                job_id = int(args["jobId"])
                if args["modelId"] not in served or args["maxPayment"] < self.config.claim.min_payment:
                    continue
                if await self._db("get", job_id) is not None:
                    continue
                await self._wait_for_slot()
                await self._consider(job_id, Job.from_created(args), args["inputCid"], entry["blockNumber"])
            await asyncio.sleep(interval)

    async def _now(self) -> int:
        """Timestamp of the latest block, from the head poll (one RPC before the first poll)."""
        if self._head is None:
            return await asyncio.to_thread(self.chain.now)
        return self._head[1]

    async def _until(self, timestamp: int, limit: float) -> None:
        """Wait until the chain's clock reaches ``timestamp``, or ``limit`` seconds, whichever comes first."""
        deadline = time.monotonic() + limit
        while self._head is None or self._head[1] < timestamp:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._head_changed.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _free_stake(self) -> int:
        """The free stake, read at most once a second; bonds of claims since are subtracted locally."""
        cached = self._stake_cache
        if cached is None or time.monotonic() - cached[1] > 1.0:
            cached = self._stake_cache = (await asyncio.to_thread(self.chain.free_stake), time.monotonic())
        return cached[0]

    async def _consider(self, job_id: int, job: Job, input_cid: str, created_block: int) -> None:
        now, free = await asyncio.gather(self._now(), self._free_stake())
        offer = JobOffer(job.model_id, job.max_payment, job.deadline, job.bond, job.priority_provider, job.priority_until)
        decision = claim_decision(offer, self.policy(), in_progress=len(self._busy), now=now, free_stake=free,
                                  provider=self.account.address)
        wall_not_before = time.time() + max(0, decision.not_before - now) if decision.verdict is Verdict.LATER else 0.0
        if not await self._db("add_seen", job_id, job, input_cid, created_block, wall_not_before):
            return
        log.info("job %d: %s (%s)", job_id, decision.verdict.value, decision.reason, extra={"job_id": job_id})
        if decision.verdict is Verdict.SKIP:
            await self._db("update", job_id, phase=Phase.SKIPPED, reason=decision.reason)
            return
        if decision.verdict is Verdict.CLAIM:
            self._busy.add(job_id)
            if self._stake_cache is not None:
                self._stake_cache = (self._stake_cache[0] - job.bond, self._stake_cache[1])
            self._drive_later(job_id, (job, now))

    async def _scheduler_loop(self) -> None:
        """Jobs put off (another provider's priority window, busy slots) come back when due."""
        while True:
            await asyncio.sleep(max(self.config.chain.poll_interval, 0.2))
            now = time.time()
            for record in await self._db("active"):
                if record.job_id in self._drivers:
                    continue
                if record.phase is Phase.SEEN:
                    if record.not_before > now or len(self._busy) >= self.config.claim.capacity:
                        continue
                    self._busy.add(record.job_id)
                self._drive_later(record.job_id)

    # -- one job ----------------------------------------------------------------------------------------------
    def _step_status(self, record: JobRecord) -> TxStatus | None:
        step = record.phase.step
        if step is None:
            return None
        statuses = {self.chain.tx.status(h) for h in self.state.tx_hashes(record.job_id, step)}
        for status in (TxStatus.MINED, TxStatus.PENDING, TxStatus.FAILED):
            if status in statuses:
                return status
        return TxStatus.UNKNOWN

    async def _drive(self, job_id: int, fresh: tuple[Job, int] | None = None) -> None:
        failures = 0
        while not self._stopping:
            record = await self._db("require", job_id)
            if record.phase.is_terminal:
                self._release(job_id)
                return
            try:
                if fresh is not None and record.phase is Phase.SEEN:
                    # NOTE: a job the feed just delivered, read at the head a moment ago: claim at once;
                    # the claim's dry run refuses it if the job changed meanwhile.
                    (job, now), status, fresh = fresh, None, None
                else:
                    job = await asyncio.to_thread(self.chain.job, job_id, [record.job], record.created_block)
                    now = await self._now()
                    status = await asyncio.to_thread(self._step_status, record)
            except LookupError as exc:
                failures += 1
                if failures >= MAX_QUIET_FAILURES:
                    await self._set(job_id, Phase.LOST, reason=str(exc))
                    continue
                await asyncio.sleep(backoff_delay(failures, 0.5, 10))
                continue
            except Exception as exc:  # noqa: BLE001 - transient RPC trouble: retried below, never fatal
                failures += 1
                log.warning("job %d: cannot read the chain (%s)", job_id, exc, extra={"job_id": job_id})
                await asyncio.sleep(backoff_delay(failures, self.config.tx.backoff, self.config.tx.max_backoff))
                continue
            if job != record.job:
                record = await self._db("update", job_id, job=job)
            decision = next_action(LocalView(record.phase, status, record.has_result), self.chain.view(job, now))
            log.debug("job %d: %s (%s)", job_id, decision.action.value, decision.reason,
                      extra={"job_id": job_id, "chain_time": now})
            try:
                await self._perform(record, job, decision.action, decision.reason, now)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried or given up below
                failures += 1
                terminal = isinstance(exc, (ContractReverted, TxError, ExecutionError, NodeAIError)) or (
                    classify_exception(exc) is not ErrorClass.TRANSIENT)
                log.warning("job %d: %s failed (%s)", job_id, decision.action.value, exc, extra={"job_id": job_id})
                await self._db("update", job_id, reason=f"{decision.action.value}: {exc}", attempts=record.attempts + 1)
                claimed_by_us = record.phase in BUSY[1:] or job.provider == self.account.address
                if terminal and not claimed_by_us and failures >= MAX_QUIET_FAILURES:
                    await self._set(job_id, Phase.FAILED, reason=f"{decision.action.value}: {exc}")
                    continue
                # NOTE: a job claimed by us is never given up here: reconciliation ends it
                # (MARK_FAILED) only once its deadline has passed.
                await asyncio.sleep(backoff_delay(failures, self.config.tx.backoff, self.config.tx.max_backoff))

    async def _set(self, job_id: int, phase: Phase, **fields: Any) -> JobRecord:
        record = await self._db("update", job_id, phase=phase, **fields)
        if phase not in BUSY:
            self._release(job_id)
        for hook in self._job_hooks.get(phase, []):
            try:
                await hook(record)
            except Exception:  # noqa: BLE001 - a user hook must not break the job loop
                log.exception("job hook failed", extra={"job_id": job_id})
        return record

    def _on_signed(self, job_id: int, step: str, phase: Phase) -> Callable[[str, int], None]:
        def record(tx_hash: str, nonce: int) -> None:
            self.state.record_tx(job_id, step, tx_hash, nonce, phase)  # type: ignore[union-attr]
            log.info("job %d: %s sent", job_id, step, extra={"job_id": job_id, "tx": tx_hash, "nonce": nonce})
        return record

    async def _perform(self, record: JobRecord, job: Job, action: Action, reason: str, now: int) -> None:
        job_id = record.job_id
        chain = self.chain
        assert chain is not None and self.state is not None
        if action is Action.CLAIM:
            self._busy.add(job_id)
            sign = self._on_signed(job_id, "claim", Phase.CLAIMING)

            def claim_signed(tx_hash: str, nonce: int) -> None:
                sign(tx_hash, nonce)
                self.metrics.claim_latency.observe(max(0.0, time.time() - record.seen_at))

            _, job = await asyncio.to_thread(chain.claim, job_id, job, claim_signed)
            await self._set(job_id, Phase.CLAIMED, job=job, reason=None)
        elif action is Action.WAIT_TX:
            step = record.phase.step or "tx"
            hashes = await self._db("tx_hashes", job_id, step)
            if hashes and (await asyncio.to_thread(chain.tx.status, hashes[-1])) is TxStatus.PENDING:
                await asyncio.to_thread(chain.resume, hashes[-1], f"{step} job {job_id}",
                                        self._on_signed(job_id, step, record.phase))
            else:
                await asyncio.sleep(self.config.tx.poll_interval)
        elif action is Action.WAIT_PRIORITY:
            await self._until(job.priority_until, 60)
        elif action is Action.EXECUTE:
            self._busy.add(job_id)
            await self._set(job_id, Phase.EXECUTING)
            stored = await self._execute(record, job)
            await self._set(job_id, Phase.RESULT_STORED, output_cid=stored.output_cid, output_hash=stored.output_hash,
                            usage=stored.usage, charge=stored.charge)
        elif action is Action.SUBMIT:
            _, job = await asyncio.to_thread(
                chain.submit, job_id, job, record.output_cid, bytes.fromhex(record.output_hash[2:]),  # type: ignore[index]
                record.usage, record.charge, self._on_signed(job_id, "submit", Phase.SUBMITTING))
            await self._set(job_id, Phase.SUBMITTED, job=job, reason=None)
            self._notify_result(job_id)
        elif action is Action.WAIT_WINDOW:
            if record.phase in BUSY:
                await self._set(job_id, Phase.SUBMITTED, reason=None)
                self._notify_result(job_id)
            # NOTE: re-read the job at least once a minute: a dispute moves the window's end
            await self._until(job.window_ends, 60)
        elif action is Action.FINALIZE:
            _, job = await asyncio.to_thread(chain.finalize, job_id, job,
                                             self._on_signed(job_id, "finalize", Phase.FINALIZING))
            await self._set(job_id, Phase.FINALIZED, job=job, reason="settled")
        else:
            phase = {Action.MARK_FINALIZED: Phase.FINALIZED, Action.MARK_REFUNDED: Phase.REFUNDED,
                     Action.MARK_LOST: Phase.LOST, Action.MARK_FAILED: Phase.FAILED}[action]
            await self._set(job_id, phase, reason=reason)
            self._notify_result(job_id)
            log.info("job %d: %s (%s)", job_id, phase.value, reason, extra={"job_id": job_id})

    def context(self, record: JobRecord, job: Job) -> JobContext:
        offer = self.config.model(job.model_id)
        if offer is None:
            raise ExecutionError(f"model {job.model_id} is no longer in provider.models")
        return JobContext(record.job_id, job.model_id, offer.engine_name, offer.price_per_1k_tokens, job.max_payment,
                          job.deadline, job.requester)

    async def _execute(self, record: JobRecord, job: Job) -> StoredResult:
        ctx = self.context(record, job)
        if self.queue is None:
            return await execute_job(self.executors, self.artifacts, ctx, record.input_cid, self.metrics)  # type: ignore[arg-type]
        event = self._results.setdefault(record.job_id, asyncio.Event())
        fresh = await self.queue.publish(WorkItem(self.deployment.chain_id, ctx, record.input_cid))
        log.info("job %d queued for the workers%s", record.job_id, "" if fresh else " (already queued)",
                 extra={"job_id": record.job_id})
        await event.wait()
        self._results.pop(record.job_id, None)
        stored = await self._db("require", record.job_id)
        if stored.output_cid is None:
            raise QueueError(f"job {record.job_id}: woken without a result")
        return StoredResult(stored.output_cid, stored.output_hash, stored.usage, stored.charge)  # type: ignore[arg-type]

    def _notify_result(self, job_id: int) -> None:
        event = self._results.get(job_id)
        if event is not None:
            event.set()

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        """A worker hands in a result: store it, let the driver submit, answer once it is on chain."""
        if request.get("op") != "result":
            return {"ok": False, "error": f"unknown op {request.get('op')!r}"}
        job_id = int(request["job_id"])
        record = await self._db("get", job_id)
        if record is None:
            return {"ok": True, "phase": "unknown", "note": "not a job of this daemon"}
        if record.phase in (Phase.CLAIMED, Phase.EXECUTING) and record.output_cid is None:
            await self._db("update", job_id, phase=Phase.RESULT_STORED, output_cid=request["output_cid"],
                           output_hash=request["output_hash"], usage=int(request["usage"]), charge=int(request["charge"]))
            self._notify_result(job_id)
            if job_id not in self._drivers:
                self._drive_later(job_id)
        deadline = time.monotonic() + float(request.get("wait", 60))
        while time.monotonic() < deadline:
            record = await self._db("require", job_id)
            if record.phase not in BUSY:
                return {"ok": True, "phase": record.phase.value}
            await asyncio.sleep(0.05)
        return {"ok": False, "error": "not submitted yet", "phase": record.phase.value}

    # -- settlement -------------------------------------------------------------------------------------------
    async def _settlement_loop(self) -> None:
        while True:
            try:
                done = await asyncio.to_thread(self.settler.run_once)  # type: ignore[union-attr]
                if any(done.values()):
                    log.info("settlement pass", extra=done)
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning("settlement pass failed: %s", exc)
            await asyncio.sleep(self.config.batching.interval)

    # -- status for /health and `nodeai node status` ------------------------------------------------------
    def health(self) -> dict[str, Any]:
        ingest_ok = self._ingest_thread is None or self._ingest_thread.is_alive()
        caught_up = self._ingestor is None or self._ingestor.caught_up.is_set()
        return {
            "status": "ok" if self.ready and ingest_ok else "starting" if not self.ready else "degraded",
            "address": self.account.address, "chain_id": self.deployment.chain_id if self.deployment else None,
            "indexer_caught_up": caught_up, "queue": self.config.queue.mode,
            "executors": self.executors.kinds if self.executors else [],
            "jobs": {k: v for k, v in (self.state.counts() if self.state else {}).items() if v},
            "in_progress": len(self._busy),
        }  # fmt: skip


# -- the scale-out worker ---------------------------------------------------------------------------------------
async def run_worker(config: NodeConfig, stop: asyncio.Event, *, engine: Engine | None = None,
                     executors: ExecutorRegistry | None = None, artifacts: Any = None) -> None:
    """Execute jobs from the JetStream queue until ``stop`` is set (``nodeai node worker``)."""
    if config.queue.mode != "nats":
        raise ConfigError('a worker needs queue.mode = "nats" (in-process mode runs jobs inside the daemon)')
    if engine is None and config.engine.factory:
        engine = load_engine(config.engine.factory, config.engine.options)
    artifacts = artifacts or open_artifact_store(config)
    executors = executors or build_executors(config, engine, artifacts, config.chain.chain_id,
                                             asyncio.get_running_loop())
    if engine is not None:
        await engine.start()
    queue = await JetStreamQueue(config.queue).connect()
    log.info("worker started", extra={"pid": os.getpid(), "stream": config.queue.stream, "executors": ",".join(executors.kinds)})

    async def work() -> None:
        async for delivery in queue.deliveries():
            job_id = delivery.item.context.job_id
            log.info("executing job %d (delivery %d)", job_id, delivery.attempt,
                     extra={"job_id": job_id, "attempt": delivery.attempt, "pid": os.getpid()})
            beat = asyncio.create_task(heartbeat(delivery, max(config.queue.ack_wait / 3, 0.1)))
            try:
                stored = await execute_job(executors, artifacts, delivery.item.context, delivery.item.input_cid)
                reply = await queue.request({"op": "result", "job_id": job_id, "output_cid": stored.output_cid,
                                             "output_hash": stored.output_hash, "usage": stored.usage,
                                             "charge": stored.charge, "wait": 60}, timeout=75)
            except Exception as exc:  # noqa: BLE001 - any failure: JetStream redelivers after a delay
                log.warning("job %d: %s; handing it back", job_id, exc, extra={"job_id": job_id})
                await delivery.nak(delay=min(5.0, config.queue.ack_wait))
                continue
            finally:
                beat.cancel()
            if reply.get("ok"):
                await delivery.ack()  # NOTE: only now: the result is on chain (or the job is over)
                log.info("job %d done: %s", job_id, reply.get("phase"), extra={"job_id": job_id})
            else:
                await delivery.nak(delay=1.0)

    task = asyncio.create_task(work())
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    finally:
        task.cancel()
        waiter.cancel()
        await asyncio.wait([task, waiter], timeout=5)
        await queue.close()
        if engine is not None:
            await engine.close()
