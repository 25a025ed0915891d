"""Start-up on a real anvil: registration reconciled idempotently; every bad start a clear error with
nothing sent on chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from nodeai.chain.anvil import free_port
from nodeai.errors import ChainIdMismatch
from nodeai.keystore import load_account
from nodeai.node.config import ConfigError, load_config
from nodeai.node.errors import ContractMissing, InsufficientFunds, ModelNotServable, RpcUnreachable, StartupError
from nodeai.node.loop import ProviderDaemon

from .conftest import MODEL_NAME, NODE_KEY, ONE, PASSWORD, PRICE, REPO, Suite, node_toml

pytestmark = pytest.mark.integration
NODE = Account.from_key(NODE_KEY).address


def prepare(config_path: Path, **env: str) -> ProviderDaemon:
    config = load_config(config_path, environ=env)
    daemon = ProviderDaemon(config, load_account(config.keystore.path, PASSWORD))
    try:
        daemon.prepare()
    finally:
        if daemon.state is not None:
            daemon.state.close()
    return daemon


def registered(suite: Suite) -> tuple:
    providers = suite.market.providers.functions
    info = providers.providers(NODE).call()
    return (info[0], info[1], providers.endpoint(NODE).call(), providers.peerId(NODE).call(),
            providers.modelPrice(NODE, suite.model_id).call())


def test_registration_is_idempotent_and_follows_the_config(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    path = node_toml(tmp_path, suite, keystore, stake=500 * ONE)
    first = prepare(path)
    assert len(first.registration_txs) == 3  # approve, register, setModelPrice
    assert registered(suite) == (True, 500 * ONE, "http://127.0.0.1:8000/v1", "12D3KooWNodeTest", PRICE)

    nonce = suite.nonce(NODE)
    again = prepare(path)
    assert again.registration_txs == []
    assert suite.nonce(NODE) == nonce, "re-running with the same config sent a transaction"

    # a new price, endpoint and a higher stake: exactly the transactions needed
    path = node_toml(tmp_path, suite, keystore, stake=800 * ONE, models=(
        f"[[provider.models]]\nid = {suite.model_id}\nprice_per_1k_tokens = 3000\nengine_model = \"{MODEL_NAME}\"\n"))
    changed = prepare(path, NODEAI_NODE__PROVIDER__ENDPOINT="https://node.example/v1")
    assert len(changed.registration_txs) == 4  # updateEndpoint, approve, addStake, setModelPrice
    assert registered(suite) == (True, 800 * ONE, "https://node.example/v1", "12D3KooWNodeTest", 3000)
    nonce = suite.nonce(NODE)
    assert prepare(path, NODEAI_NODE__PROVIDER__ENDPOINT="https://node.example/v1").registration_txs == []
    assert suite.nonce(NODE) == nonce

    # a lower stake is never unbonded behind the operator's back
    assert prepare(node_toml(tmp_path, suite, keystore, stake=100 * ONE, models=(
        f"[[provider.models]]\nid = {suite.model_id}\nprice_per_1k_tokens = 3000\n")),
        NODEAI_NODE__PROVIDER__ENDPOINT="https://node.example/v1").registration_txs == []
    assert registered(suite)[1] == 800 * ONE


def assert_nothing_on_chain(suite: Suite) -> None:
    assert suite.nonce(NODE) == 0
    assert registered(suite)[0] is False


@pytest.mark.parametrize("change, error, message", [
    ({"NODEAI_NODE__CHAIN__CHAIN_ID": "1"}, ChainIdMismatch, "serves chain id 31337"),
    ({"NODEAI_NODE__PROVIDER__MODELS": '[{"id": 999, "price_per_1k_tokens": 5}]'}, ModelNotServable,
     "model 999 cannot be served: no such model"),
    ({"NODEAI_NODE__PROVIDER__STAKE": str(10**12 * ONE)}, InsufficientFunds, "fund the account"),
    ({"NODEAI_NODE__PROVIDER__STAKE": "5"}, StartupError, "below the registry's minimum stake"),
])  # fmt: skip
def test_bad_starts_send_nothing(suite: Suite, keystore: Path, tmp_path: Path, change: dict, error: type,
                                 message: str) -> None:
    with pytest.raises(error, match=message):
        prepare(node_toml(tmp_path, suite, keystore), **change)
    assert_nothing_on_chain(suite)


def test_unreachable_rpc(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RpcUnreachable, match=f"{dead} does not answer"):
        prepare(node_toml(tmp_path, suite, keystore), NODEAI_NODE__CHAIN__RPC_URL=dead)
    assert_nothing_on_chain(suite)


def test_deployments_of_another_chain(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    data = json.loads(suite.deployments_file.read_text())
    data["contracts"]["JobMarket"]["address"] = "0x" + "42" * 20
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(data))
    with pytest.raises(ContractMissing, match="no contract code at 0x4242"):
        prepare(node_toml(tmp_path, suite, keystore), NODEAI_NODE__CHAIN__DEPLOYMENTS=str(wrong))
    with pytest.raises(ConfigError, match="no deployments file"):
        prepare(node_toml(tmp_path, suite, keystore), NODEAI_NODE__CHAIN__DEPLOYMENTS=str(tmp_path / "none.json"))
    assert_nothing_on_chain(suite)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "nodeai.node", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def test_cli_errors_are_one_line_with_exit_code_2(suite: Suite, keystore: Path, tmp_path: Path) -> None:
    path = node_toml(tmp_path, suite, keystore)
    (keystore.parent / "password").write_text("not the password\n")
    wrong = run_cli("run", "--config", str(path))
    assert wrong.returncode == 2, wrong.stderr
    assert "wrong password for the keystore" in wrong.stderr and "Traceback" not in wrong.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text('[chain]\nrpc_url = "x"\nprivate_key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"\n')
    refused = run_cli("run", "--config", str(bad))
    assert refused.returncode == 2 and "nodeai login --import" in refused.stderr and "Traceback" not in refused.stderr

    typo = tmp_path / "typo.toml"
    typo.write_text("[claim]\ncapcity = 3\n")
    result = run_cli("status", "--config", str(typo))
    assert result.returncode == 2 and "claim.capcity: unknown option" in result.stderr

    (keystore.parent / "password").write_text(PASSWORD + "\n")
    chain = run_cli("run", "--config", str(path), env={"NODEAI_NODE__CHAIN__CHAIN_ID": "5"})
    assert chain.returncode == 2 and "serves chain id 31337" in chain.stderr and "Traceback" not in chain.stderr
    assert_nothing_on_chain(suite)
