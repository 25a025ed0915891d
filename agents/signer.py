"""The policy-gated signer: the only holder of the agent wallet's key.

Tools hand it a `TxIntent` (chain, target, calldata, value). For each one it

1. re-uses the transaction already signed for this action, if any (``outbox``):
   a restarted process re-broadcasts the same bytes instead of paying twice;
2. judges it with `policy.check_transaction` (allow-lists, the spends already
   in each cap's window, the approval threshold) and refuses it, or
3. dry-runs it with ``eth_call`` (a revert costs nothing and reads clearly) and,
   above the threshold, parks it as a pending approval until a human decides;
4. signs it and, in one exclusive store transaction, judges it again and records
   spend + signed transaction. Only a recorded transaction is broadcast;
5. broadcasts and waits for the receipt; a transaction that reverts on chain
   gives its spend back to the cap.

Because the policy reads the calldata, not what the model claimed, the caps
hold whatever the model outputs. One signer per key and process: the nonce is
taken under a lock here, not coordinated across processes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError

from nodeai.agents.errors import ApprovalRequired, PolicyDenied, ToolFailure
from nodeai.agents.policy import TxIntent, check_transaction, decode_spends, find_cap
from nodeai.agents.spec import PolicySpec
from nodeai.agents.store import RuntimeStore
from nodeai.agents.tools import ToolContext
from nodeai.agents.transcript import canonical, sha256_hex


def intent_json(intent: TxIntent) -> dict[str, Any]:
    return {"chain_id": intent.chain_id, "to": Web3.to_checksum_address(intent.to), "data": "0x" + intent.data.hex(),
            "value": str(intent.value)}  # fmt: skip


class PolicySigner:
    """Signs and sends an agent's transactions within its policy (see the module docstring)."""

    def __init__(self, account: LocalAccount, store: RuntimeStore, w3_by_chain: Mapping[int, Web3],
                 receipt_timeout_s: float = 120.0):
        self._account = account  # NOTE: private; tools get this object only as a TxGateway
        self.store = store
        self.w3_by_chain = dict(w3_by_chain)
        self.receipt_timeout_s = receipt_timeout_s
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return self._account.address

    def send(self, intent: TxIntent, ctx: ToolContext) -> dict[str, Any]:
        """Send ``intent`` for the job in ``ctx`` under ``ctx.policy``; returns the receipt summary.

        Raises `PolicyDenied`, `ApprovalRequired` (a pending approval now exists),
        or `ToolFailure` (RPC trouble: retryable; a revert: not).
        """
        w3 = self.w3_by_chain.get(intent.chain_id)
        if w3 is None:
            raise ToolFailure("signer", f"no RPC configured for chain {intent.chain_id}")
        request = intent_json(intent)
        request_hash = sha256_hex(canonical(request))
        with self._lock:
            done = self.store.outbox(ctx.action_key)
            if done is not None:
                return self._finish(w3, ctx.action_key, done.raw_tx, done.tx_hash)
            approval = self.store.approval_for_action(ctx.action_key)
            approved = approval is not None and approval.status == "approved" and approval.request_hash == request_hash
            if approval is not None and approval.request_hash != request_hash:
                raise PolicyDenied("approval", f"action {ctx.action_key} changed since approval {approval.id} was requested")
            # NOTE: judged first (allow-lists and caps), so a refused call reads as refused, not as a revert
            first = check_transaction(ctx.policy, intent, self._spent(ctx), approved=approved)
            if first.verdict == "deny":
                raise PolicyDenied(first.rule, first.reason)
            self._dry_run(w3, intent)  # NOTE: before asking a human to approve something that would revert
            if first.verdict == "approve":
                pending = self.store.request_approval(
                    job_id=ctx.job_id, action_key=ctx.action_key, agent=ctx.agent, request=request,
                    request_hash=request_hash, deadline=ctx.deadline, summary=self._summary(ctx.policy, intent),
                )  # fmt: skip
                raise ApprovalRequired(pending.id, pending.summary)
            raw_tx, tx_hash, nonce = self._sign(w3, intent)
            with self.store.spend_transaction() as tx:
                # NOTE: judged again inside the exclusive transaction: another job may have spent meanwhile
                spent = {(c.chain_id, c.token): tx.spent(ctx.agent, c.chain_id, c.token, c.period_s)
                         for c in ctx.policy.spend_caps}  # fmt: skip
                decision = check_transaction(ctx.policy, intent, spent, approved=approved)
                if decision.allowed:
                    spends = [(s.chain_id, s.token, s.amount) for s in decode_spends(intent)]
                    tx.record(ctx.agent, ctx.action_key, spends)
                    tx.add_outbox(ctx.action_key, intent.chain_id, self.address, nonce, raw_tx, tx_hash)
            if not decision.allowed:
                raise PolicyDenied(decision.rule, decision.reason)
            return self._finish(w3, ctx.action_key, raw_tx, tx_hash)

    def _spent(self, ctx: ToolContext) -> dict[tuple[int, str], int]:
        return {(c.chain_id, c.token): self.store.spent(ctx.agent, c.chain_id, c.token, c.period_s)
                for c in ctx.policy.spend_caps}  # fmt: skip

    def _summary(self, policy: PolicySpec, intent: TxIntent) -> str:
        parts = []
        for spend in decode_spends(intent):
            found = find_cap(policy, spend.chain_id, spend.token)
            label = "wei" if spend.token == "native" else f"units of {spend.token}"
            threshold = f" (threshold {found[1].approval_above})" if found and found[1].approval_above is not None else ""
            parts.append(f"{spend.amount} {label}{threshold}")
        return f"transaction to {intent.to} on chain {intent.chain_id} spending " + (", ".join(parts) or "nothing")

    def _dry_run(self, w3: Web3, intent: TxIntent) -> None:
        try:
            w3.eth.call({"from": self.address, "to": intent.to, "data": intent.data, "value": intent.value})
        except ContractLogicError as exc:
            raise ToolFailure("signer", f"the transaction would revert: {exc}") from None
        except (Web3RPCError, requests.ConnectionError, requests.Timeout) as exc:
            raise ToolFailure("signer", f"dry run failed: {type(exc).__name__}: {exc}", retryable=True) from None

    def _sign(self, w3: Web3, intent: TxIntent) -> tuple[str, str, int]:
        try:
            nonce = w3.eth.get_transaction_count(self.address, "pending")
            tx: dict[str, Any] = {"from": self.address, "to": intent.to, "data": intent.data, "value": intent.value,
                                  "nonce": nonce, "chainId": intent.chain_id}  # fmt: skip
            tx["gas"] = int(w3.eth.estimate_gas(tx) * 1.2) + 10_000
            fee = w3.eth.fee_history(1, "latest", [50])
            base = fee["baseFeePerGas"][-1]
            tip = w3.eth.max_priority_fee
            tx.update({"maxFeePerGas": base * 2 + tip, "maxPriorityFeePerGas": tip})
        except (Web3RPCError, requests.ConnectionError, requests.Timeout) as exc:
            raise ToolFailure("signer", f"preparing the transaction failed: {exc}", retryable=True) from None
        del tx["from"]
        signed = self._account.sign_transaction(tx)
        return "0x" + signed.raw_transaction.hex().removeprefix("0x"), "0x" + signed.hash.hex().removeprefix("0x"), nonce

    def _finish(self, w3: Web3, action_key: str, raw_tx: str, tx_hash: str) -> dict[str, Any]:
        entry = self.store.outbox(action_key)
        if entry is not None and entry.receipt is not None:
            if entry.status == "reverted":
                raise ToolFailure("signer", f"transaction {tx_hash} reverted on chain")
            return entry.receipt
        try:
            receipt = self._receipt(w3, tx_hash)
            if receipt is None:
                try:
                    w3.eth.send_raw_transaction(raw_tx)
                except Web3RPCError as exc:
                    # NOTE: "already known" / "nonce too low" after a restart mean it was sent before
                    if "known" not in str(exc).lower() and "nonce" not in str(exc).lower():
                        raise
                receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.receipt_timeout_s)
        except (Web3RPCError, requests.ConnectionError, requests.Timeout, TimeExhausted) as exc:
            raise ToolFailure("signer", f"sending {tx_hash} failed: {type(exc).__name__}: {exc}", retryable=True) from None
        summary = {"tx_hash": tx_hash, "status": "success" if receipt["status"] == 1 else "reverted",
                   "block": receipt["blockNumber"], "gas_used": receipt["gasUsed"]}  # fmt: skip
        self.store.outbox_done(action_key, "mined" if receipt["status"] == 1 else "reverted", summary)
        if receipt["status"] != 1:
            self.store.release_spends(action_key)
            raise ToolFailure("signer", f"transaction {tx_hash} reverted on chain")
        return summary

    @staticmethod
    def _receipt(w3: Web3, tx_hash: str) -> Any:
        try:
            return w3.eth.get_transaction_receipt(tx_hash)
        except Exception as exc:  # NOTE: web3 raises TransactionNotFound (or an RPC error) for an unknown hash
            if type(exc).__name__ == "TransactionNotFound":
                return None
            raise
