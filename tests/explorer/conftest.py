"""Fixtures of the explorer tests: a marketplace on anvil, the real indexer process serving the page, Chromium.

One session per test worker: anvil with the suite deployed and some activity
(a model and an agent, two staked providers, jobs, an escrow deposit, a committed
receipt batch), ``python -m nodeai.indexer`` on it (ingestion + API + explorer,
exactly as an operator starts it), and headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright; no browser is downloaded).

The page gets an EIP-1193 test wallet (``window.ethereum``) through
``add_init_script``; its requests go to Python through ``expose_function``, which
signs transactions with an anvil account's key (as MetaMask signs with the
user's) and forwards every other request to anvil.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from nodeai.chain.anvil import ANVIL_KEYS, Anvil, free_port
from nodeai.chain.deploy import DeployParams, Deployment, deploy_suite
from nodeai.chain.marketplace import Marketplace, raw_cid, synthetic_receipts
from nodeai.chain.receipts import MerkleTree, Receipt

ROLES = ("deployer", "treasury", "publisher", "provider", "requester")
ONE = 10**6  # one test token (6 decimals)
CHROMIUM = Path("/usr/bin/chromium")
WALLET_KEY = ANVIL_KEYS[5]  # the page's wallet: funded, but has approved nothing yet
SECOND_PROVIDER_KEY = ANVIL_KEYS[6]
REPO_ROOT = Path(__file__).resolve().parents[2]


class StubGateway(BaseHTTPRequestHandler):
    """The part of a provider's OpenAI-compatible gateway that liveness probes: GET /v1/models."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") != "/v1/models":
            self.send_error(404)
            return
        body = json.dumps({"object": "list", "data": [{"id": "model-1", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass


@dataclass
class Activity:
    """What the chain holds before any test runs."""

    model_id: int
    agent_id: int
    job_ids: list[int]
    claimed_job_id: int
    providers: dict[str, str]  # address -> endpoint
    live_provider: str
    dead_provider: str
    receipts: list[Receipt]
    tree: MerkleTree


@dataclass
class Explorer:
    anvil: Anvil
    w3: Web3
    market: Marketplace
    deployment: Deployment
    deployments_file: Path
    activity: Activity
    api: str  # http://127.0.0.1:PORT/
    wallet: LocalAccount
    log: Path

    @property
    def url(self) -> str:
        return self.api + "explorer/"


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the indexer exited with code {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url + "ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the indexer was not ready within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _seed(market: Marketplace, w3: Web3, deployment: Deployment, gateway_url: str) -> Activity:
    model_id = market.onboard(100_000 * ONE, 10_000 * ONE)
    agent_id = market.send("publisher", market.models.functions.registerAgent(raw_cid(b"agent spec"), model_id, 3_000, 500),
                           "registerAgent").event("ModelRegistered")["modelId"]  # fmt: skip
    # NOTE: the onboarded provider's endpoint points at a gateway that answers; a second
    # provider's at a loopback port nothing listens on (port 1), so liveness shows both states.
    market.send("provider", market.providers.functions.updateEndpoint(gateway_url, "12D3KooWLive"), "updateEndpoint")
    second = Marketplace.from_keys(w3, deployment, {"deployer": ANVIL_KEYS[0], "provider": SECOND_PROVIDER_KEY})
    market.send("deployer", market.token.functions.mint(second.address("provider"), 5_000 * ONE), "mint to provider 2")
    second.register_provider("http://127.0.0.1:1/v1", "12D3KooWDead", 1_000 * ONE, model_id, 1_500)
    first_job, _ = market.create_job(model_id, b"first job input", 5 * ONE)
    second_job, _ = market.create_job(model_id, b"second job input", 7 * ONE)
    market.claim(second_job)
    market.deposit(3 * ONE)
    receipts = synthetic_receipts(market, model_id, 5, 40)
    tree, _ = market.commit_receipts(receipts)
    return Activity(
        model_id=model_id, agent_id=agent_id, job_ids=[first_job, second_job], claimed_job_id=second_job,
        providers={market.address("provider"): gateway_url, second.address("provider"): "http://127.0.0.1:1/v1"},
        live_provider=market.address("provider"), dead_provider=second.address("provider"), receipts=receipts,
        tree=tree,
    )  # fmt: skip


@pytest.fixture(scope="package")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Explorer]:
    """anvil + deployed suite + activity + the indexer process serving the explorer."""
    tmp = tmp_path_factory.mktemp("explorer")
    gateway = ThreadingHTTPServer(("127.0.0.1", 0), StubGateway)
    gateway_thread = threading.Thread(target=gateway.serve_forever, name="stub-gateway", daemon=True)
    gateway_thread.start()
    try:
        with Anvil() as chain:
            w3 = Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 30}))
            keys = dict(zip(ROLES, ANVIL_KEYS))
            deployer = Account.from_key(keys["deployer"])
            params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address)
            deployment = deploy_suite(w3, deployer, params)
            path = deployment.save(tmp / "deployments")
            market = Marketplace.from_keys(w3, deployment, keys)
            activity = _seed(market, w3, deployment, f"http://127.0.0.1:{gateway.server_address[1]}/v1")
            wallet = Account.from_key(WALLET_KEY)
            market.send("deployer", market.token.functions.mint(wallet.address, 1_000 * ONE), "mint to the wallet")

            port = free_port()
            log = tmp / "indexer.log"
            # NOTE: 2 confirmations, so the page shows both final and pending rows.
            args = [sys.executable, "-m", "nodeai.indexer", "--deployments", str(path), "--rpc-url", chain.url,
                    "--db", f"sqlite:///{tmp / 'indexer.db'}", "--port", str(port), "--host", "127.0.0.1",
                    "--confirmations", "2", "--poll-interval", "0.05"]  # fmt: skip
            with log.open("wb") as out:
                process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
            try:
                api = f"http://127.0.0.1:{port}/"
                _wait_ready(api, process, log)
                yield Explorer(chain, w3, market, deployment, path, activity, api, wallet, log)
            finally:
                _stop(process)
    finally:
        gateway.shutdown()
        gateway.server_close()


# -- the browser -------------------------------------------------------------------------------------
# NOTE: module scope, not session: Playwright's sync API keeps an event loop
# running in the main thread while it is open, and every later test in the
# same worker that calls asyncio.run() would fail ("cannot be called from a
# running event loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # NOTE: Debian's Chromium, never a downloaded build (nothing may be fetched at run time).
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


class TestWallet:
    """The Python side of the page's EIP-1193 wallet: signs with an anvil key, forwards reads to anvil."""

    def __init__(self, w3: Web3, account: LocalAccount):
        self.w3, self.account = w3, account
        self.chain_id = w3.eth.chain_id
        self.sent: list[str] = []
        self.methods: list[str] = []

    def handle(self, method: str, params_json: str) -> str:
        params = json.loads(params_json) if params_json else []
        self.methods.append(method)
        if method in ("eth_requestAccounts", "eth_accounts"):
            return json.dumps({"result": [self.account.address]})
        if method == "wallet_switchEthereumChain":
            wanted = int(params[0]["chainId"], 16)
            if wanted != self.chain_id:
                return json.dumps({"error": {"code": 4902, "message": f"unknown chain {wanted}"}})
            return json.dumps({"result": None})
        if method == "eth_sendTransaction":
            return json.dumps(self._send(params[0]))
        reply = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        return json.dumps({"result": reply.get("result")} if "error" not in reply else {"error": reply["error"]})

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        if Web3.to_checksum_address(request["from"]) != self.account.address:
            return {"error": {"code": 4100, "message": f"the wallet holds no key for {request['from']}"}}
        tx = {
            "to": Web3.to_checksum_address(request["to"]),
            "data": request.get("data", "0x"),
            "value": int(request.get("value", "0x0"), 16),
            "gas": int(request["gas"], 16) if "gas" in request else 3_000_000,
            "gasPrice": self.w3.eth.gas_price,
            "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
            "chainId": self.chain_id,
        }
        signed = self.account.sign_transaction(tx)
        tx_hash = "0x" + self.w3.eth.send_raw_transaction(signed.raw_transaction).hex().removeprefix("0x")
        self.sent.append(tx_hash)
        return {"result": tx_hash}


WALLET_SCRIPT = """
(() => {
  const listeners = {};
  window.ethereum = {
    isNodeAITestWallet: true,
    async request({ method, params }) {
      const reply = JSON.parse(await window.__nodeaiTestWallet(method, JSON.stringify(params ?? [])));
      if (reply.error) {
        const error = new Error(reply.error.message);
        error.code = reply.error.code;
        error.data = reply.error.data;
        throw error;
      }
      return reply.result;
    },
    on(event, listener) { (listeners[event] ??= []).push(listener); },
    removeListener(event, listener) { listeners[event] = (listeners[event] ?? []).filter((l) => l !== listener); },
  };
})();
"""


@dataclass
class PageSession:
    page: Any
    wallet: TestWallet
    console_errors: list[str] = field(default_factory=list)


def open_page(browser: Any, explorer: Explorer, *, width: int = 1280, height: int = 900) -> Iterator[PageSession]:
    context = browser.new_context(viewport={"width": width, "height": height})
    wallet = TestWallet(explorer.w3, explorer.wallet)
    session = PageSession(context.new_page(), wallet)
    context.expose_function("__nodeaiTestWallet", wallet.handle)
    context.add_init_script(WALLET_SCRIPT)
    page = session.page
    page.on("console", lambda message: session.console_errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: session.console_errors.append(f"uncaught: {error}"))
    try:
        page.goto(explorer.url)
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        yield session
        assert session.console_errors == [], f"JavaScript console errors: {session.console_errors}"
    finally:
        context.close()


@pytest.fixture
def session(browser: Any, explorer: Explorer) -> Iterator[PageSession]:
    """The explorer page at desktop width, loaded, with the test wallet injected (not yet connected)."""
    yield from open_page(browser, explorer)


@pytest.fixture
def phone(browser: Any, explorer: Explorer) -> Iterator[PageSession]:
    """The explorer page at a phone's width (375 px)."""
    yield from open_page(browser, explorer, width=375, height=812)
