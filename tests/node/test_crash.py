"""Crash safety: the daemon (a real subprocess) is SIGKILLed at random moments while 20 jobs run, then
restarted; every job ends settled, none is claimed, submitted or paid twice, and the provider sent exactly
the transactions the jobs needed (its nonce proves no duplicate was ever broadcast, not even a reverted one)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from nodeai.node.artifacts import DirectoryStore

from .conftest import NODE_KEY, ONE, DaemonProcess, Suite, batch_input, node_toml, wait_until

pytestmark = pytest.mark.integration
NODE = Account.from_key(NODE_KEY).address
JOBS = 20
KILLS = 3  # NOTE: each restart costs seconds of Python start-up on this machine; 3 keep the test near a minute
SEED = int(os.environ.get("NODE_CRASH_SEED", "20240611"))


def count(suite: Suite, name: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for event in getattr(suite.market.market.events, name).get_logs(from_block=0):
        counts[event["args"]["jobId"]] = counts.get(event["args"]["jobId"], 0) + 1
    return counts


def wait_ready(state: Path, process: DaemonProcess, timeout: float = 90) -> None:
    def ready() -> bool:
        assert process.alive, f"the daemon exited early: {process.log.read_text()[-2000:]}"
        port_file = state / "http.port"
        if not port_file.is_file():
            return False
        try:
            return httpx.get(f"http://127.0.0.1:{port_file.read_text()}/health", timeout=2).status_code == 200
        except (httpx.HTTPError, ValueError):
            return False

    wait_until(ready, timeout, "the daemon to report healthy", interval=0.2)


def test_sigkill_at_random_points_never_pays_twice(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    m = suite.market
    config = node_toml(tmp_path, suite, keystore, engine_delay=0.3)
    state = tmp_path / "state"
    store = DirectoryStore(tmp_path / "artifacts")
    inputs = [batch_input(f"job {i} says hello", f"and {i} more words here", max_tokens=4) for i in range(JOBS)]
    for data in inputs:
        store.add_bytes(data)
    requester_before = m.balance("requester")

    stop_clock = threading.Event()

    def clock() -> None:  # NOTE: moves the chain past challenge windows (60 s) while the daemon works
        while not stop_clock.wait(0.4):
            suite.advance(61)

    ticker = threading.Thread(target=clock, daemon=True)
    process = DaemonProcess(config, tmp_path / "daemon.out")
    created: list[int] = []
    kills = []
    try:
        for round_ in range(KILLS + 1):
            (state / "http.port").unlink(missing_ok=True)
            process.start()
            wait_ready(state, process)
            # jobs arrive while the daemon runs, a share after each start, so every kill finds jobs in flight
            share = JOBS // (KILLS + 1)
            for data in inputs[round_ * share: (round_ + 1) * share]:
                created.append(m.create_job(suite.model_id, data, 2 * ONE)[0])
            if round_ == 0:
                ticker.start()
            if round_ == KILLS:
                break
            delay = rng.uniform(0.1, 1.5)
            time.sleep(delay)
            process.kill()
            kills.append((delay, len(count(suite, "JobSettled"))))
        wait_until(lambda: len(count(suite, "JobSettled")) == JOBS, 120, "every job to settle after the restarts",
                   interval=0.5)
    finally:
        stop_clock.set()
        process.stop()
    print(f"seed {SEED}: kills (seconds after ready, jobs settled by then) {kills}")

    claimed, submitted, settled = count(suite, "JobClaimed"), count(suite, "JobSubmitted"), count(suite, "JobSettled")
    assert sorted(settled) == sorted(created)
    assert set(claimed.values()) == set(submitted.values()) == set(settled.values()) == {1}
    assert count(suite, "JobRefunded") == {}
    # 3 registration transactions (approve, register, setModelPrice) + claim, submit, finalize per job:
    # one more would be a duplicate broadcast, even one the contract reverted
    assert suite.nonce(NODE) == 3 + 3 * JOBS
    assert m.token.functions.balanceOf(m.market.address).call() == 0  # escrow holds nothing for settled jobs
    settlements = [e["args"] for e in m.market.events.JobSettled.get_logs(from_block=0)]
    assert m.balance("requester") == requester_before - sum(s["charge"] for s in settlements)
    assert m.providers.functions.providers(NODE).call()[2] == 0  # every bond released

    # the daemon's log is JSON, one object per line, with the job ids as fields
    lines = [json.loads(line) for line in (state / "node.log").read_text().splitlines()]
    assert {line["job_id"] for line in lines if "job_id" in line} >= set(created)
