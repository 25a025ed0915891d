"""Fixtures of the gateway tests: the real engines (loaded once per module), a server runner, a chain.

The engines are the provider's real ones: SmolLM2-135M-Instruct on llama.cpp
and all-MiniLM-L6-v2 on ONNX Runtime, from their PyPI data packages. They are
started once per module and shared by every gateway app of the module
(``manage_engines=False``), so a "restart" starts a new app, not a new model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from nodeai.chain.anvil import ANVIL_KEYS, Anvil  # noqa: E402
from nodeai.chain.deploy import DeployParams, deploy_suite  # noqa: E402
from nodeai.chain.marketplace import Marketplace  # noqa: E402
from nodeai.serving.engines.base import Engine  # noqa: E402
from nodeai.serving.gateway import GatewayServer  # noqa: E402

LLM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
ROLES = ("deployer", "treasury", "publisher", "provider", "requester", "payer2", "payer3")
PROVIDER_KEY = ANVIL_KEYS[3]


@pytest.fixture(scope="module")
def llm_engine() -> Iterator[Engine]:
    from nodeai.serving.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

    # NOTE: a small context keeps the KV cache (and start-up) small; tests ask for a few tokens.
    engine = LlamaCppEngine(LlamaCppConfig(n_ctx=2048, n_seq_max=4))
    engine.start_sync()
    yield engine
    engine.close_sync()


@pytest.fixture(scope="module")
def embed_engine() -> Iterator[Engine]:
    from nodeai.serving.engines.onnx_embed import OnnxEmbeddingEngine

    engine = OnnxEmbeddingEngine()
    engine.start_sync()
    yield engine
    engine.close_sync()


@pytest.fixture
def serve() -> Iterator[Callable[[Any], GatewayServer]]:
    """``serve(app)`` runs the app on 127.0.0.1 (free port) until the test ends."""
    servers: list[GatewayServer] = []

    def start(app: Any) -> GatewayServer:
        server = GatewayServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.stop()


@contextmanager
def running(app: Any) -> Iterator[GatewayServer]:
    server = GatewayServer(app).start()
    try:
        yield server
    finally:
        server.stop()


# -- a deployed suite on anvil ------------------------------------------------------------------------
@dataclass
class Chain:
    anvil: Anvil
    w3: Web3
    market: Marketplace
    llm_id: int
    embed_id: int
    llm_price: int
    embed_price: int


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    """A fresh anvil with the suite deployed, the provider registered for both models with a price,
    and three funded payers (``requester`` has deposited)."""
    with Anvil() as anvil:
        w3 = Web3(Web3.HTTPProvider(anvil.url))
        keys = dict(zip(ROLES, ANVIL_KEYS))
        deployer = Account.from_key(keys["deployer"])
        params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address)
        market = Marketplace.from_keys(w3, deploy_suite(w3, deployer, params), keys)
        llm_price, embed_price = 2_000, 500
        llm_id = market.onboard(funds=10**12, stake=200 * 10**6, price_per_1k=llm_price)
        embed_id, _ = market.register_model(b"minilm weights", b"minilm manifest", embed_price, 1_000)
        market.send("provider", market.providers.functions.setModelPrice(embed_id, embed_price), "setModelPrice")
        for payer in ("payer2", "payer3"):
            market.mint(payer, 10**9)
            market.approve(payer, market.escrow)
        market.deposit(10**8)
        yield Chain(anvil, w3, market, llm_id, embed_id, llm_price, embed_price)
