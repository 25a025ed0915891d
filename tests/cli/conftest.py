"""Fixtures of the CLI tests: one real anvil with the deployed suite, a real indexer, and a wallet per test.

One chain serves the whole folder (deploying takes seconds on 2 cores); every
test makes its own jobs and channels, so tests stay independent. Each test
gets its own ``NODEAI_HOME`` with a config file pointing at that chain, so
nothing reads or writes ``~/.nodeai``. The wallet's keystore is written with a
low scrypt cost by ``nodeai.keystore`` so that unlocking takes milliseconds;
the login tests use the real cost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result
from eth_account import Account
from web3 import Web3

from nodeai.chain.anvil import ANVIL_KEYS, Anvil, free_port
from nodeai.chain.deploy import DeployParams, Deployment, deploy_suite
from nodeai.chain.marketplace import Marketplace
from nodeai.cli import chainview
from nodeai.cli.config import Settings, save_settings
from nodeai.cli.main import cli

ROLES = ("deployer", "treasury", "publisher", "provider", "requester")
ONE = 10**6  # one TestToken (6 decimals)
PASSWORD = "correct horse battery staple"
FAST_SCRYPT_N = 2**12


@dataclass
class Chain:
    anvil: Anvil
    w3: Web3
    market: Marketplace
    deployment: Deployment
    deployments_file: Path
    model_id: int

    def advance(self, seconds: int) -> None:
        self.market.advance_time(seconds)

    def now(self) -> int:
        return self.market.now()

    def sync_job(self, job_id: int) -> None:
        """Rebuild the marketplace's copy of a job from its events, after the CLI changed it."""
        from nodeai.chain import jobs

        logs = []
        for name in chainview.JOB_EVENTS:
            for log in getattr(self.market.market.events, name)().get_logs(argument_filters={"jobId": job_id}, from_block=0):
                logs.append((log["blockNumber"], log["logIndex"], name, log["args"]))
        struct = None
        for _, _, name, args in sorted(logs, key=lambda entry: entry[:2]):
            struct = jobs.apply_event(struct, name, args)
        assert struct is not None, f"job {job_id} has no events"
        self.market.jobs[job_id] = struct


@pytest.fixture(scope="session")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    with Anvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        keys = dict(zip(ROLES, ANVIL_KEYS))
        deployer = Account.from_key(keys["deployer"])
        params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address)
        deployment = deploy_suite(w3, deployer, params)
        path = deployment.save(tmp_path_factory.mktemp("deployments"))
        market = Marketplace.from_keys(w3, deployment, keys)
        model_id = market.onboard(1_000_000 * ONE, 10_000 * ONE)
        yield Chain(anvil, w3, market, deployment, path, model_id)


class Indexer:
    """``python -m nodeai.indexer`` as a subprocess on a free loopback port; stopped by PID at teardown."""

    def __init__(self, chain: Chain, workdir: Path):
        self.chain = chain
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "indexer.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.args = [sys.executable, "-m", "nodeai.indexer", "--deployments", str(chain.deployments_file),
                     "--rpc-url", chain.anvil.url, "--db", f"sqlite:///{workdir / 'indexer.db'}",
                     "--confirmations", "0", "--poll-interval", "0.05", "--host", "127.0.0.1", "--port", str(self.port)]  # fmt: skip

    def start(self) -> "Indexer":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        self.wait_synced()
        return self

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until the indexer has ingested the chain's current head."""
        target = self.chain.w3.eth.block_number
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"the indexer exited:\n{self.log.read_text()[-2000:]}"
            try:
                body = requests.get(f"{self.url}/ready", timeout=2).json()
                if (body.get("indexed_height") or -1) >= target:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the indexer did not reach block {target} in {timeout} s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def indexer(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexer]:
    idx = Indexer(chain, tmp_path_factory.mktemp("indexer"))
    try:
        yield idx.start()
    finally:
        idx.stop()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty NODEAI_HOME (and working directory); every other NODEAI_* variable of the outer environment is removed."""
    for name in list(os.environ):
        if name.startswith("NODEAI_") and name not in ("NODEAI_TEST_HOME", "NODEAI_ANVIL"):
            monkeypatch.delenv(name)
    path = tmp_path / "nodeai-home"
    path.mkdir()
    monkeypatch.setenv("NODEAI_HOME", str(path))
    # NOTE: the embedded kubo node writes kubo.log into the working directory: keep it out of the repository.
    monkeypatch.chdir(tmp_path)
    return path


def write_wallet(home: Path, chain: Chain, key: str, indexer_url: str = "http://127.0.0.1:9") -> str:
    """A logged-in wallet for ``key``: a fast keystore plus the config `nodeai login` would write."""
    from nodeai.keystore import create_keystore

    keystore = home / "keystore.json"
    address = create_keystore(keystore, PASSWORD, key, scrypt_n=FAST_SCRYPT_N)
    save_settings(home, Settings(rpc_url=chain.anvil.url, chain_id=chain.deployment.chain_id,
                                 deployments=str(chain.deployments_file), indexer_url=indexer_url,
                                 keystore=str(keystore), address=address))  # fmt: skip
    return address


@pytest.fixture
def wallet(home: Path, chain: Chain, indexer: Indexer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The requester's wallet, logged in, password in $NODEAI_PASSWORD; returns its address."""
    monkeypatch.setenv("NODEAI_PASSWORD", PASSWORD)
    return write_wallet(home, chain, ANVIL_KEYS[ROLES.index("requester")], indexer.url)


def run(*args: str, input: str | None = None) -> Result:
    """Invoke the CLI in-process; stdout and stderr kept apart as a terminal would show them."""
    return CliRunner(mix_stderr=False).invoke(cli, list(args), input=input, catch_exceptions=False)


def run_json(*args: str, code: int = 0) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == code, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return json.loads(result.stdout)


def assert_user_error(result: Result, *phrases: str) -> None:
    """Exit 2, a message with every phrase and a hint, and no traceback."""
    assert result.exit_code == 2, f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    text = result.stderr
    assert "Traceback" not in text + result.stdout
    for phrase in phrases:
        assert phrase in text, f"{phrase!r} not in:\n{text}"
