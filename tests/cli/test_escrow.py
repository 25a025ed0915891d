"""``nodeai escrow``: deposits, balances and the two-step withdrawal of the real InferenceEscrow."""

from __future__ import annotations

from tests.cli.conftest import ONE, Chain, Indexer, assert_user_error, run, run_json


def test_deposit_balance_and_withdraw_after_the_timelock(chain: Chain, indexer: Indexer, wallet: str) -> None:
    provider = chain.market.address("provider")
    wallet_before = chain.market.balance("requester")
    start = run_json("escrow", "balance", "--provider", provider)["channels"][0]["balance"]

    data = run_json("escrow", "deposit", "12.5", "--provider", provider)
    assert data["amount"] == 12_500_000 and data["balance"] == start + 12_500_000
    assert run_json("escrow", "deposit", "500000", "--raw", "--provider", provider)["amount"] == 500_000
    total = start + 13 * ONE

    balance = run_json("escrow", "balance", "--provider", provider)
    assert balance["channels"] == [{"payer": wallet, "provider": provider, "balance": total, "unlock_at": 0,
                                    "withdrawal": "none"}]  # fmt: skip
    assert balance["wallet_balance"] == wallet_before - 13 * ONE
    indexer.wait_synced()
    listed = run_json("escrow", "balance")  # every channel of the wallet, from the indexer
    assert [c["balance"] for c in listed["channels"] if c["provider"] == provider] == [total]
    assert "13 TUSD" in run("escrow", "balance", "--provider", provider).stdout or total != 13 * ONE

    step1 = run_json("escrow", "withdraw", "--provider", provider)
    assert step1["action"] == "requested" and step1["unlock_at"] > chain.now()
    early = run("escrow", "withdraw", "--provider", provider)
    assert_user_error(early, "unlocks", "run this command again after that time")

    chain.advance(chain.deployment.params["withdraw_timelock"] + 1)
    step2 = run_json("escrow", "withdraw", "--provider", provider)
    assert step2 == step2 | {"action": "withdrawn", "amount": total}
    assert chain.market.balance("requester") == wallet_before + start
    assert run_json("escrow", "balance", "--provider", provider)["channels"][0]["balance"] == 0


def test_withdraw_human_output_says_which_step(chain: Chain, wallet: str) -> None:
    provider = chain.market.address("provider")
    run_json("escrow", "deposit", "1", "--provider", provider)
    text = run("escrow", "withdraw", "--provider", provider).stdout
    assert "step 1 of 2" in text and "again" in text
    run_json("escrow", "deposit", "1", "--provider", provider)  # a deposit cancels the pending request
    assert run_json("escrow", "balance", "--provider", provider)["channels"][0]["withdrawal"] == "none"


def test_amount_mistakes_are_user_errors(chain: Chain, wallet: str) -> None:
    provider = chain.market.address("provider")
    assert_user_error(run("escrow", "deposit", "ten", "--provider", provider), "is not a number", "--raw")
    assert_user_error(run("escrow", "deposit", "0.0000001", "--provider", provider), "too many decimal places", "6 decimals")
    assert_user_error(run("escrow", "deposit", "1.5", "--raw", "--provider", provider), "base units are whole numbers")
    assert_user_error(run("escrow", "deposit", "1", "--provider", "0x1234"), "is not an address")
    assert_user_error(run("escrow", "deposit", "1", "--provider", chain.market.address("publisher")), "not a registered provider")
    assert_user_error(run("escrow", "deposit", "10000000", "--provider", provider), "holds", "is needed")


def test_json_errors_are_one_document(chain: Chain, wallet: str) -> None:
    provider = chain.market.address("provider")
    data = run_json("escrow", "deposit", "ten", "--provider", provider, code=2)
    assert data["error"]["type"] == "user_error" and "not a number" in data["error"]["message"]
    assert data["error"]["exit_code"] == 2 and data["error"]["hint"]
