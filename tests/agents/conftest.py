"""Fixtures of the agent runtime tests: a real anvil with the suite deployed, fresh ERC-20s, wallets,
treasury specs, and real HTTP servers on 127.0.0.1.

Every test gets its own token contract (deployed from ``contracts/TestToken.vy``)
and its own runtime store, so balances and spend ledgers never leak between
tests while the chain itself is shared by the module.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from nodeai.agents.spec import AgentSpec, load_spec
from nodeai.chain.anvil import ANVIL_KEYS, Anvil
from nodeai.chain.artifacts import load_artifact
from nodeai.chain.client import Transactor
from nodeai.chain.deploy import DeployParams, Deployment, deploy_suite

ONE = 10**6  # one token (6 decimals)
CHAIN_ID = 31337
DAY = 86_400


@dataclass
class Chain:
    anvil: Anvil
    w3: Web3
    deployment: Deployment
    deployer: LocalAccount
    agent: LocalAccount
    """The agent wallet: only the policy-gated signer holds it."""
    ops: str
    """The second treasury account (no key used in the tests)."""
    _symbols: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return self.anvil.url

    def new_token(self, agent_balance: int = 0, ops_balance: int = 0) -> Any:
        """A fresh TestToken with the given balances for the agent wallet and the ops account."""
        artifact = load_artifact("TestToken")
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        tx = factory.constructor("Agent Test", f"T{next(self._symbols)}", 6).build_transaction({
            "from": self.deployer.address, "nonce": self.w3.eth.get_transaction_count(self.deployer.address, "pending"),
            "chainId": CHAIN_ID,
        })  # fmt: skip
        receipt = self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_raw_transaction(self.deployer.sign_transaction(tx).raw_transaction)
        )
        token = self.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)
        sender = Transactor(self.w3, self.deployer)
        if agent_balance:
            sender.send(token.functions.mint(self.agent.address, agent_balance), "mint agent")
        if ops_balance:
            sender.send(token.functions.mint(self.ops, ops_balance), "mint ops")
        return token

    def balances(self, token: Any) -> tuple[int, int]:
        return token.functions.balanceOf(self.agent.address).call(), token.functions.balanceOf(self.ops).call()


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    """anvil with the NodeAI suite deployed (the agent tests also use its JobMarket as a foreign contract)."""
    with Anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 30}))
        deployer = Account.from_key(ANVIL_KEYS[0])
        deployment = deploy_suite(w3, deployer, DeployParams(treasury=deployer.address, arbiter=deployer.address))
        yield Chain(node, w3, deployment, deployer, Account.from_key(ANVIL_KEYS[6]), Account.from_key(ANVIL_KEYS[7]).address)


def treasury_rules() -> list[dict[str, Any]]:
    """The rebalancing workflow: keep the split named in the input ("Rebalance to 60/40") between the
    agent wallet and the ops account, moving tokens from the agent wallet when ops holds too little."""
    return [
        {"id": "mine", "call": "evm.erc20_balance", "args": {"token": "${vars.token}", "account": "${agent.address}"},
         "save_as": "mine"},
        {"id": "theirs", "call": "evm.erc20_balance", "args": {"token": "${vars.token}", "account": "${vars.ops}"},
         "save_as": "theirs"},
        {"id": "split", "set": {"split": "extract_ints(input)"}},
        {"id": "check", "when": "len(split) != 2 or split[0] + split[1] != 100",
         "fail": "the input must name a split that adds up to 100, such as 60/40 (got ${split})"},
        {"id": "plan", "set": {"total": "mine.balance + theirs.balance",
                               "move": "(mine.balance + theirs.balance) * split[1] // 100 - theirs.balance"}},
        {"id": "send", "when": "move > 0", "call": "evm.erc20_transfer",
         "args": {"token": "${vars.token}", "to": "${vars.ops}", "amount": "${move}"}, "save_as": "tx"},
        {"id": "done", "finish": {"moved": "${max(move, 0)}", "total": "${total}",
                                  "note": "${'ops holds more than its share' if move < 0 else 'balanced'}"}},
    ]  # fmt: skip


def treasury_spec(chain: Chain, token: Any, *, cap: int = 1_000 * ONE, approval_above: int | None = None,
                  functions: tuple[str, ...] = ("transfer(address,uint256)",), rules: list[dict[str, Any]] | None = None,
                  name: str = "treasury-bot", extra_policy: dict[str, Any] | None = None,
                  tools: list[dict[str, Any]] | None = None) -> AgentSpec:  # fmt: skip
    cap_entry: dict[str, Any] = {"chain_id": CHAIN_ID, "token": token.address, "max_amount": cap, "period_s": DAY}
    if approval_above is not None:
        cap_entry["approval_above"] = approval_above
    policy: dict[str, Any] = {
        "contracts": [{"chain_id": CHAIN_ID, "address": token.address, "functions": list(functions)}],
        "spend_caps": [cap_entry], "tool_retries": 2, "retry_backoff_s": 0.01,
    }  # fmt: skip
    policy.update(extra_policy or {})
    return load_spec({
        "spec_version": 1, "name": name, "description": "Keeps the treasury split between two accounts.",
        "system_prompt": "Rebalance the treasury.",
        "planner": {"kind": "rules", "vars": {"token": token.address, "ops": chain.ops}, "rules": rules or treasury_rules()},
        "tools": tools or [{"type": "evm", "chain_id": CHAIN_ID}], "policy": policy, "max_steps": 12,
    })  # fmt: skip


# -- HTTP servers ------------------------------------------------------------------------------
@dataclass
class Site:
    """A real HTTP server on 127.0.0.1 with scripted routes; records every request path it served."""

    server: ThreadingHTTPServer
    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]
    hits: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
def site() -> Iterator[Site]:
    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
    holder: dict[str, Site] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
            holder["site"].hits.append(self.path)
            route = routes.get(self.path.split("?")[0])
            if route is None:
                self.send_error(404)
                return
            route(self)

        def log_message(self, format: str, *args: Any) -> None:  # NOTE: keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["site"] = Site(server, routes)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield holder["site"]
    holder["site"].release.set()  # NOTE: frees handlers that are holding a slow answer
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def reply(status: int, body: bytes = b"", content_type: str = "text/plain", headers: dict[str, str] | None = None):
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    return handle


def wait_until(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; bounded, so a hung process fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "agents.db"


@pytest.fixture(scope="module")
def ipfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real embedded IPFS node (kubo in-process), offline, in a temporary repo."""
    from nodeai.ipfs import EmbeddedKuboStore

    with EmbeddedKuboStore(tmp_path_factory.mktemp("ipfs") / "repo", offline=True) as store:
        yield store
