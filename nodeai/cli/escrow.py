"""``nodeai escrow deposit|withdraw|balance``: the inference escrow that pays per request by signed vouchers.

A deposit opens (or tops up) a channel from this wallet to one provider;
the gateway is then paid by vouchers the wallet signs per request. Getting
the unspent rest back takes two transactions a timelock apart
(``requestWithdrawal``, then ``withdraw``), so the provider can redeem its
last vouchers first: ``withdraw`` does whichever step is due and says so.
"""

from __future__ import annotations

from typing import Any

import click
from eth_utils import is_address, to_checksum_address

from nodeai.cli.context import CliContext, example, pass_ctx, signer_options
from nodeai.cli.errors import UserError
from nodeai.cli.output import check_amount, duration, emit, parse_amount, table, when


@click.group("escrow")
@example("""
nodeai escrow deposit 25 --provider 0x7099...79C8
nodeai escrow balance
nodeai escrow withdraw --provider 0x7099...79C8
""")
def escrow() -> None:
    """Inference escrow: deposit for a provider, check balances, withdraw the rest."""


def _provider(text: str) -> str:
    if not is_address(text):
        raise UserError(f"{text!r} is not an address", "give the provider's 0x address (see the indexer's /providers)")
    return to_checksum_address(text)


def _channel(obj: CliContext, payer: str, provider: str) -> dict[str, Any]:
    balance, unlock_at = obj.contract("InferenceEscrow").functions.channels(payer, provider).call()
    return {"payer": payer, "provider": provider, "balance": balance, "unlock_at": unlock_at}


@escrow.command("deposit")
@click.argument("amount")
@click.option("--provider", required=True, help="Provider address the deposit pays for.")
@click.option("--raw", is_flag=True, help="AMOUNT is in base units (integer) instead of token units.")
@signer_options
@pass_ctx
@example("""
nodeai escrow deposit 25 --provider 0x70997970C51812dc3A010C7d01b50e0d17dc79C8
nodeai escrow deposit 25000000 --raw --provider 0x7099...79C8 --json
""")
def deposit(obj: CliContext, amount: str, provider: str, raw: bool) -> None:
    """Deposit AMOUNT for inference requests to a provider (approves the escrow first if needed)."""
    check_amount(amount)
    provider = _provider(provider)
    value = parse_amount(amount, obj.decimals, raw)
    if value == 0:
        raise UserError("the amount is zero", "deposit a positive amount")
    escrow_contract = obj.contract("InferenceEscrow")
    registered = obj.contract("ProviderRegistry").functions.isRegistered(provider).call()
    if not registered:
        raise UserError(f"{provider} is not a registered provider", "pick one from the indexer's /providers list")
    obj.ensure_allowance(escrow_contract, value)
    result = obj.send(escrow_contract.functions.deposit(provider, value), "deposit")
    event = result.event("Deposited")
    data = {"payer": obj.address, "provider": provider, "amount": value, "balance": event["balance"], "tx": result.tx_hash}
    emit(obj.json, data, f"deposited {obj.fmt(value)} for {provider}; channel balance {obj.fmt(event['balance'])}")


@escrow.command("balance")
@click.option("--provider", help="One provider's channel (read from the chain); without it, every channel (indexer).")
@click.option("--payer", help="Whose channels (default: this wallet).")
@pass_ctx
@example("""
nodeai escrow balance --provider 0x70997970C51812dc3A010C7d01b50e0d17dc79C8
nodeai escrow balance --json
""")
def balance(obj: CliContext, provider: str | None, payer: str | None) -> None:
    """Show the wallet's deposits in the inference escrow and any pending withdrawal."""
    payer = _provider(payer) if payer else obj.address
    now = obj.now()
    if provider:
        channels = [_channel(obj, payer, _provider(provider))]
    else:
        channels = [{"payer": c["payer"], "provider": c["provider"], "balance": int(c.get("balance") or 0),
                     "unlock_at": int(c.get("unlock_at") or 0)}
                    for c in obj.indexer.pages("/channels", {"payer": payer}, 1_000)]  # fmt: skip
    wallet = obj.token.functions.balanceOf(payer).call()
    for c in channels:
        c["withdrawal"] = _withdrawal_state(c, now)
    data = {"payer": payer, "wallet_balance": wallet, "channels": channels,
            "total": sum(c["balance"] for c in channels)}  # fmt: skip

    def human() -> str:
        rows = [[c["provider"], obj.fmt(c["balance"]), c["withdrawal"]] for c in channels]
        body = table(rows, ["provider", "balance", "withdrawal"]) if rows else "no deposits"
        return f"{body}\nin escrow {obj.fmt(data['total'])}; in wallet {obj.fmt(wallet)}"

    emit(obj.json, data, human)


def _withdrawal_state(channel: dict[str, Any], now: int) -> str:
    unlock_at = channel["unlock_at"]
    if not unlock_at:
        return "none"
    return "ready" if now >= unlock_at else f"unlocks {when(unlock_at)}"


@escrow.command("withdraw")
@click.option("--provider", required=True, help="Provider address of the channel.")
@signer_options
@pass_ctx
@example("""
nodeai escrow withdraw --provider 0x7099...79C8   # 1st run: requests; after the timelock: withdraws
""")
def withdraw(obj: CliContext, provider: str) -> None:
    """Withdraw the unspent deposit of a channel, in two steps a timelock apart.

    The first run sends requestWithdrawal and says when the timelock ends (the
    provider may still redeem vouchers until then). Run it again after that
    time to send withdraw and get the tokens back. A new deposit cancels a
    pending request.
    """
    provider = _provider(provider)
    me = obj.address
    channel = _channel(obj, me, provider)
    escrow_contract = obj.contract("InferenceEscrow")
    now = obj.now()
    if channel["balance"] == 0:
        raise UserError(f"nothing deposited for {provider}", "check `nodeai escrow balance`")
    if channel["unlock_at"] == 0:
        result = obj.send(escrow_contract.functions.requestWithdrawal(provider), "requestWithdrawal")
        unlock_at = result.event("WithdrawalRequested")["unlockAt"]
        data = {"action": "requested", "provider": provider, "balance": channel["balance"], "unlock_at": unlock_at,
                "tx": result.tx_hash}  # fmt: skip
        emit(obj.json, data, f"step 1 of 2 done: withdrawal of {obj.fmt(channel['balance'])} requested; it unlocks "
             f"{when(unlock_at)} (in {duration(unlock_at - now)}).\nthen run `nodeai escrow withdraw --provider {provider}` again")  # fmt: skip
        return
    if now < channel["unlock_at"]:
        raise UserError(f"the withdrawal for {provider} unlocks {when(channel['unlock_at'])}, in {duration(channel['unlock_at'] - now)}",
                        "run this command again after that time")  # fmt: skip
    result = obj.send(escrow_contract.functions.withdraw(provider), "withdraw")
    amount = result.event("Withdrawn")["amount"]
    data = {"action": "withdrawn", "provider": provider, "amount": amount, "tx": result.tx_hash}
    emit(obj.json, data, f"step 2 of 2 done: withdrew {obj.fmt(amount)} from the channel with {provider}")
