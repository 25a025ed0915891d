"""``nodeai dev faucet|down``, and the mistakes ``nodeai infer`` and ``receipts verify --latest`` explain.

The paid request itself (a real gateway serving SmolLM2) and ``nodeai dev up``
run end to end in ``tests/docs/test_quickstart.py``.
"""

from __future__ import annotations

from pathlib import Path

from eth_account import Account

from nodeai.chain.anvil import free_port
from tests.cli.conftest import ONE, Chain, assert_user_error, run, run_json

STRANGER = Account.create().address


def test_faucet_mints_tokens_and_adds_eth(chain: Chain, wallet: str) -> None:
    before_tokens, before_eth = chain.market.balance(STRANGER), chain.w3.eth.get_balance(STRANGER)
    data = run_json("dev", "faucet", STRANGER, "--amount", "12.5", "--eth", "2")
    assert data["address"] == STRANGER and data["minted"] == 12_500_000 and data["tx"].startswith("0x")
    assert chain.market.balance(STRANGER) == before_tokens + 12_500_000 == data["token_balance"]
    assert chain.w3.eth.get_balance(STRANGER) == before_eth + 2 * 10**18

    mine = chain.market.balance(wallet)
    text = run("dev", "faucet", "--amount", "1", "--eth", "0")  # no address: this wallet
    assert text.exit_code == 0 and f"sent 1 TUSD and 0 ETH to {wallet}" in text.stdout
    assert chain.market.balance(wallet) == mine + ONE


def test_faucet_mistakes(chain: Chain, wallet: str) -> None:
    assert_user_error(run("dev", "faucet", "0x1234"), "is not an address")
    assert_user_error(run("dev", "faucet", "--amount", "lots"), "is not a number")


def test_down_when_nothing_runs(tmp_path: Path) -> None:
    data = run_json("dev", "down", "--workdir", str(tmp_path / "nothing-here"))
    assert data["action"] == "none"


def test_infer_needs_a_gateway_a_provider_and_a_deposit(chain: Chain, wallet: str) -> None:
    assert_user_error(run("infer", "hello", "--model", "m"), "no gateway to ask", "--gateway-url")
    assert_user_error(run("infer", "hello", "--model", "m", "--provider", STRANGER), "not a registered provider")
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = run("infer", "hello", "--model", "m", "--gateway-url", nowhere)
    assert down.exit_code == 1 and f"the gateway did not answer {nowhere}/health" in down.stderr
    assert "Traceback" not in down.stderr
    # the registered provider's endpoint is read from the chain (no NodeAI gateway serves it in this test)
    provider = chain.market.address("provider")
    endpoint = chain.market.providers.functions.endpoint(provider).call()
    found = run("infer", "hello", "--model", "m", "--provider", provider)
    assert found.exit_code in (1, 2) and endpoint.removesuffix("/v1") in found.stderr and "Traceback" not in found.stderr


def test_receipts_verify_latest_and_hash_mistakes(chain: Chain, wallet: str, home: Path) -> None:
    assert_user_error(run("receipts", "verify", "--latest"), "no receipt kept", "nodeai infer")
    assert_user_error(run("receipts", "verify"), "give a RECEIPT")
    assert_user_error(run("receipts", "verify", "0x" + "ab" * 32), "none is set", "--gateway-url")
    assert_user_error(run("receipts", "verify", str(home / "missing.json")), "No such file")
