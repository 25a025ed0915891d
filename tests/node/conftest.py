"""Fixtures of the daemon's tests: a deployed suite on anvil, a provider keystore, node.toml files.

The provider is an anvil account that is funded but not registered, so the
daemon's own start-up registers it (``fresh_provider``); ``onboarded`` uses the
Marketplace's provider role, already registered and serving the suite's model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

from nodeai.chain.anvil import ANVIL_KEYS, Anvil
from nodeai.chain.deploy import DeployParams, Deployment, deploy_suite
from nodeai.chain.marketplace import Marketplace
from nodeai.keystore import create_keystore

ROLES = ("deployer", "treasury", "publisher", "provider", "requester")
NODE_KEY = ANVIL_KEYS[6]  # the daemon's account: funded with tokens, not registered
ONE = 10**6
PASSWORD = "node-test-password"
MODEL_NAME = "words-1"
PRICE = 250_000  # token units per 1k tokens (0.25 TUSD)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Suite:
    anvil: Anvil
    w3: Web3
    market: Marketplace
    deployment: Deployment
    deployments_file: Path
    model_id: int

    def rpc(self, method: str, params: list | None = None) -> Any:
        reply = self.w3.provider.make_request(method, params or [])
        if reply.get("error"):
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply.get("result")

    def advance(self, seconds: int) -> None:
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine")

    def nonce(self, address: str) -> int:
        return self.w3.eth.get_transaction_count(address)


def deploy(tmp_path: Path, block_time: float | None = None) -> Iterator[Suite]:
    with Anvil(block_time=block_time) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 30}))
        keys = dict(zip(ROLES, ANVIL_KEYS)) | {"node": NODE_KEY}
        deployer = Account.from_key(keys["deployer"])
        # NOTE: the shortest challenge window the market allows (60 s); tests move the clock past it.
        params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address,
                              challenge_window=60, min_stake=10 * ONE)
        deployment = deploy_suite(w3, deployer, params)
        path = deployment.save(tmp_path / "deployments")
        market = Marketplace.from_keys(w3, deployment, keys)
        model_id = market.onboard(1_000_000 * ONE, 10_000 * ONE, price_per_1k=PRICE)
        market.mint("node", 100_000 * ONE)
        yield Suite(chain, w3, market, deployment, path, model_id)


@pytest.fixture(scope="module")
def module_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    yield from deploy(tmp_path_factory.mktemp("suite"))


@pytest.fixture
def suite(module_suite: Suite) -> Iterator[Suite]:
    """The module's deployed suite, reverted to its onboarded state after each test (anvil snapshots)."""
    snapshot = module_suite.rpc("evm_snapshot")
    yield module_suite
    module_suite.rpc("evm_revert", [snapshot])
    module_suite.market.jobs.clear()


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "provider.json"
    create_keystore(path, PASSWORD, NODE_KEY, scrypt_n=2**4)
    (tmp_path / "password").write_text(PASSWORD + "\n")
    return path


def node_toml(tmp_path: Path, suite: Suite, keystore: Path, *, stake: int = 1_000 * ONE, extra: str = "",
              models: str | None = None, engine_delay: float = 0.0, http_port: int = 0, queue: str = "",
              ipfs: str | None = None) -> Path:
    """A node.toml for ``suite``: directory artifacts, the test engine, short polls."""
    models = models if models is not None else (
        f"[[provider.models]]\nid = {suite.model_id}\nprice_per_1k_tokens = {PRICE}\nengine_model = \"{MODEL_NAME}\"\n")
    text = f"""
state_dir = "{tmp_path / 'state'}"
[chain]
rpc_url = "{suite.anvil.url}"
chain_id = {suite.deployment.chain_id}
deployments = "{suite.deployments_file}"
poll_interval = 0.2
[keystore]
path = "{keystore}"
password_file = "{keystore.parent / 'password'}"
[provider]
endpoint = "http://127.0.0.1:8000/v1"
peer_id = "12D3KooWNodeTest"
stake = {stake}
{models}
[claim]
capacity = 8
min_time_to_deadline = 60
[tx]
bump_after = 5
poll_interval = 0.05
backoff = 0.1
max_backoff = 1
[feed]
poll_interval = 0.05
[ipfs]
{ipfs if ipfs is not None else f'backend = "directory"{chr(10)}directory = "{tmp_path / "artifacts"}"'}
[engine]
factory = "tests.node.engines:WordEngine"
options = {{ model = "{MODEL_NAME}", delay = {engine_delay} }}
[http]
port = {http_port}
[logging]
json = true
{queue}
{extra}
"""
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def batch_input(*prompts: str, max_tokens: int = 8) -> bytes:
    return json.dumps({"kind": "batch-inference", "prompts": list(prompts), "max_tokens": max_tokens}).encode()


class DaemonProcess:
    """``python -m nodeai.node run`` as a real subprocess (stopped by PID)."""

    def __init__(self, config: Path, log: Path, *args: str):
        self.config, self.log = config, log
        self.args = args
        self.process: subprocess.Popen | None = None

    def start(self, command: str = "run") -> "DaemonProcess":
        env = dict(os.environ, PYTHONPATH=str(REPO), NODEAI_KEYSTORE_PASSWORD="")
        self._out = open(self.log, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "nodeai.node", command, "--config", str(self.config),
                                         *self.args], cwd=REPO, env=env, stdout=self._out, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._close()

    def stop(self, timeout: float = 20) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close()
        return self.process.returncode if self.process else None

    def _close(self) -> None:
        out = getattr(self, "_out", None)
        if out is not None and not out.closed:
            out.close()

    @property
    def alive(self) -> bool:
        return bool(self.process and self.process.poll() is None)


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class DaemonThread:
    """A ProviderDaemon running on its own event loop in a thread, so a test body stays synchronous."""

    def __init__(self, daemon: Any):
        import asyncio
        import threading

        self.daemon = daemon
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None

        def main() -> None:
            asyncio.set_event_loop(self._loop)

            async def run() -> None:
                self._stop = asyncio.Event()
                await daemon.run(self._stop)

            try:
                self._loop.run_until_complete(run())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test by stop()
                self.error = exc
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=main, name="daemon", daemon=True)

    def start(self, timeout: float = 60) -> "DaemonThread":
        self._thread.start()
        wait_until(lambda: self.daemon.ready or self.error is not None or not self._thread.is_alive(), timeout,
                   "the daemon to start")
        if self.error is not None:
            raise self.error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the daemon did not stop"
        if self.error is not None:
            raise self.error
