"""Sending transactions to the protocol's contracts, with a dry run first.

Every transaction is first simulated with ``eth_call``: a call that would
revert raises ``ContractReverted`` with the contract's own message (for
example ``market: job deadline passed``) before any gas is spent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from nodeai.errors import ContractReverted


@dataclass
class TxResult:
    label: str
    tx_hash: str
    gas_used: int
    block_number: int
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def event(self, name: str) -> dict[str, Any]:
        """Arguments of the one ``name`` event this transaction emitted."""
        found = self.events.get(name, [])
        if len(found) != 1:
            raise LookupError(f"{self.label}: expected one {name} event, found {len(found)}")
        return found[0]


class Transactor:
    """Signs locally with ``account`` and sends, one transaction at a time."""

    def __init__(self, w3: Web3, account: LocalAccount):
        self.w3 = w3
        self.account = account

    def send(self, fn: ContractFunction, label: str | None = None, gas_limit: int | None = None) -> TxResult:
        label = label or fn.fn_name
        sender = self.account.address
        try:
            fn.call({"from": sender})  # NOTE: dry run, so a revert costs nothing and reads clearly
        except ContractLogicError as exc:
            raise ContractReverted(label, _reason(exc)) from None
        tx = fn.build_transaction({
            "from": sender,
            "nonce": self.w3.eth.get_transaction_count(sender, "pending"),
            "chainId": self.w3.eth.chain_id,
        })
        if gas_limit:
            tx["gas"] = gas_limit
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        if receipt["status"] != 1:
            raise ContractReverted(label, f"transaction {tx_hash.hex()} reverted on chain")
        return TxResult(label, "0x" + tx_hash.hex().removeprefix("0x"), receipt["gasUsed"], receipt["blockNumber"],
                        decode_events(fn.contract_abi, self.w3, fn.address, receipt))


def decode_events(abi: list[dict], w3: Web3, address: str, receipt) -> dict[str, list[dict[str, Any]]]:
    contract = w3.eth.contract(address=address, abi=abi)
    events: dict[str, list[dict[str, Any]]] = {}
    for item in abi:
        if item.get("type") != "event":
            continue
        for log in getattr(contract.events, item["name"])().process_receipt(receipt, errors=DISCARD):
            events.setdefault(item["name"], []).append(dict(log["args"]))
    return events


def _reason(exc: ContractLogicError) -> str:
    message = str(exc.message if hasattr(exc, "message") else exc)
    return message.removeprefix("execution reverted: ").strip() or "reverted without a reason"
