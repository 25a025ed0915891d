"""Fixtures of the indexer tests: databases (SQLite file, PostgreSQL schema) and a deployed suite on anvil.

``db_url`` runs a test once on SQLite and once on PostgreSQL. PostgreSQL is the
real server at ``PG_URL``; each URL gets a fresh random schema (through
``search_path``), dropped with everything in it afterwards, so tests never see
each other's tables. ``make_db_url(kind)`` hands out more databases of a kind,
e.g. the second database of a "fresh re-index" comparison.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from eth_account import Account
from web3 import Web3

from nodeai.chain.anvil import ANVIL_KEYS, Anvil
from nodeai.chain.deploy import DeployParams, Deployment, deploy_suite
from nodeai.chain.marketplace import Marketplace

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
ROLES = ("deployer", "treasury", "publisher", "provider", "requester")
ONE = 10**6  # one token (6 decimals)


def db_kind(url: str) -> str:
    return "postgres" if url.startswith(("postgresql://", "postgres://")) else "sqlite"


@pytest.fixture
def make_db_url(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``make("sqlite" | "postgres")``: the URL of a new, empty database; PostgreSQL schemas are dropped at teardown."""
    schemas: list[str] = []
    counter = itertools.count()

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path}/indexer-{next(counter)}.db"
        if kind != "postgres":
            raise ValueError(f"unknown database kind {kind!r}")
        schema = f"idx_test_{secrets.token_hex(6)}"
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return f"{PG_URL}?options=-csearch_path%3D{schema}"

    yield make
    if schemas:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            for schema in schemas:
                admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
def sqlite_url(make_db_url) -> str:
    return make_db_url("sqlite")


@pytest.fixture
def postgres_url(make_db_url) -> str:
    return make_db_url("postgres")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, make_db_url) -> str:
    return make_db_url(request.param)


# -- a deployed suite on a fresh anvil ---------------------------------------------------------------
@dataclass
class Suite:
    anvil: Anvil
    w3: Web3
    market: Marketplace
    deployment: Deployment
    deployments_file: Path
    model_id: int

    @property
    def chain_id(self) -> int:
        return self.deployment.chain_id

    def rpc(self, method: str, params: list | None = None):
        reply = self.w3.provider.make_request(method, params or [])
        if reply.get("error"):
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply.get("result")


@pytest.fixture
def suite(tmp_path: Path) -> Iterator[Suite]:
    """anvil with the contract suite deployed and onboarded (a model, a staked provider, a funded requester)."""
    with Anvil() as chain:
        w3 = Web3(Web3.HTTPProvider(chain.url, request_kwargs={"timeout": 30}))
        keys = dict(zip(ROLES, ANVIL_KEYS))
        deployer = Account.from_key(keys["deployer"])
        params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address)
        deployment = deploy_suite(w3, deployer, params)
        path = deployment.save(tmp_path / "deployments")
        market = Marketplace.from_keys(w3, deployment, keys)
        model_id = market.onboard(100_000 * ONE, 10_000 * ONE)
        yield Suite(chain, w3, market, deployment, path, model_id)
