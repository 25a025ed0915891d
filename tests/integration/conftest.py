"""Fixtures that start real processes: an anvil chain on a free loopback port."""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import Web3

from nodeai.chain.anvil import ANVIL_KEYS, Anvil
from nodeai.chain.deploy import DeployParams, deploy_suite
from nodeai.chain.marketplace import Marketplace

ROLES = ("deployer", "treasury", "publisher", "provider", "requester")


@pytest.fixture(scope="module")
def anvil():
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="module")
def w3(anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url))


@pytest.fixture(scope="module")
def marketplace(w3, tmp_path_factory) -> Marketplace:
    keys = dict(zip(ROLES, ANVIL_KEYS))
    deployer = Account.from_key(keys["deployer"])
    params = DeployParams(treasury=Account.from_key(keys["treasury"]).address, arbiter=deployer.address)
    deployment = deploy_suite(w3, deployer, params)
    deployment.save(tmp_path_factory.mktemp("deployments"))
    return Marketplace.from_keys(w3, deployment, keys)
