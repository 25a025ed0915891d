"""Inference settlement in batches: redeem vouchers, commit receipt roots.

The gateway (``nodeai.serving.gateway``) keeps the vouchers its clients sign
and the receipts it signs for them; the daemon sees them only through two
small protocols, :class:`VoucherSource` and :class:`ReceiptSource`, and turns
them into transactions when the thresholds of ``[batching]`` say so
(:func:`vouchers_due`, :func:`receipts_due`, both pure).

Both are safe to repeat after a crash: a voucher already redeemed pays 0 (it
is then only marked), and a receipt batch is written to the local state
(root and receipt ids) before its transaction is sent, so a restart re-sends
the same root or finds it committed - a receipt never ends in two roots.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from nodeai.chain.receipts import MerkleTree, Receipt
from nodeai.chain.vouchers import Voucher
from nodeai.errors import ContractReverted
from nodeai.node.chain import ProviderChain
from nodeai.node.config import BatchingConfig
from nodeai.node.state import StateStore

log = logging.getLogger("nodeai.node.settlement")

__all__ = [
    "SignedVoucher", "PendingReceipt", "VoucherSource", "ReceiptSource", "vouchers_due", "receipts_due", "Settler",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    voucher: Voucher
    signature: bytes
    received_at: float  # unix time the gateway accepted it


@dataclass(frozen=True, slots=True)
class PendingReceipt:
    id: str              # the gateway's id of the receipt (stable across restarts)
    receipt: Receipt
    received_at: float


@runtime_checkable
class VoucherSource(Protocol):
    def unredeemed(self) -> list[SignedVoucher]:
        """The highest voucher per (payer, model) that may pay more than was redeemed, oldest first."""

    def mark_redeemed(self, vouchers: Sequence[SignedVoucher], tx_hash: str | None) -> None:
        """These vouchers are paid (``tx_hash`` None: they were already, nothing was sent)."""


@runtime_checkable
class ReceiptSource(Protocol):
    def uncommitted(self, limit: int) -> list[PendingReceipt]:
        """Up to ``limit`` receipts not yet in a committed root, oldest first."""

    def mark_committed(self, ids: Sequence[str], root: bytes, tx_hash: str | None) -> None:
        """These receipts are under ``root`` on chain."""


def vouchers_due(total: int, count: int, oldest_age: float, config: BatchingConfig) -> bool:
    """Redeem when something is owed and it is worth it or getting old (vouchers expire)."""
    return count > 0 and total > 0 and (total >= config.voucher_min_amount or oldest_age >= config.voucher_max_age)


def receipts_due(count: int, oldest_age: float, config: BatchingConfig) -> bool:
    return count > 0 and (count >= config.receipt_min_count or oldest_age >= config.receipt_max_age)


_PLANNED = "planned_receipt_batch"


class Settler:
    """One pass of ``run_once`` redeems and commits whatever the thresholds say is due."""

    def __init__(self, chain: ProviderChain, state: StateStore, config: BatchingConfig,
                 vouchers: VoucherSource | None = None, receipts: ReceiptSource | None = None, metrics: Any = None):
        self.chain, self.state, self.config = chain, state, config
        self.vouchers, self.receipts, self.metrics = vouchers, receipts, metrics

    def run_once(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        done = {"vouchers_redeemed": 0, "amount_redeemed": 0, "receipts_committed": 0}
        if self.vouchers is not None:
            done.update(self._redeem(now))
        if self.receipts is not None:
            done["receipts_committed"] = self._commit(now)
        return done

    # -- vouchers ---------------------------------------------------------------------------------------
    def _redeem(self, now: float) -> dict[str, int]:
        assert self.vouchers is not None
        candidates = self.vouchers.unredeemed()
        escrow = self.chain.escrow
        payable = [(v, escrow.functions.redeemable(v.voucher.as_tuple()).call()) for v in candidates]
        stale = [v for v, amount in payable if amount == 0]
        if stale:
            self.vouchers.mark_redeemed(stale, None)
        live = [(v, amount) for v, amount in payable if amount > 0]
        total = sum(amount for _, amount in live)
        oldest = min((v.received_at for v, _ in live), default=now)
        if not vouchers_due(total, len(live), now - oldest, self.config):
            return {"vouchers_redeemed": 0, "amount_redeemed": 0}
        redeemed = amount_paid = 0
        for start in range(0, len(live), self.config.voucher_max_batch):
            batch = [v for v, _ in live[start:start + self.config.voucher_max_batch]]
            fn = escrow.functions.redeemBatch(self.chain.address, [v.voucher.as_tuple() for v in batch],
                                              [v.signature for v in batch])
            result = self.chain.tx.send(fn, f"redeemBatch of {len(batch)}")
            paid = sum(e["paid"] for e in result.events.get("VoucherRedeemed", []))
            self.vouchers.mark_redeemed(batch, result.tx_hash)
            redeemed += len(batch)
            amount_paid += paid
            if self.metrics is not None:
                self.metrics.vouchers_redeemed(len(batch), paid)
            log.info("redeemed %d vouchers for %d token units in %s", len(batch), paid, result.tx_hash)
        return {"vouchers_redeemed": redeemed, "amount_redeemed": amount_paid}

    # -- receipts ---------------------------------------------------------------------------------------
    def _commit(self, now: float) -> int:
        assert self.receipts is not None
        committed = 0
        planned = self.state.get_meta(_PLANNED)
        if planned:
            committed += self._send_planned(json.loads(planned))
        while True:
            pending = self.receipts.uncommitted(self.config.receipt_max_batch)
            oldest = min((p.received_at for p in pending), default=now)
            if not receipts_due(len(pending), now - oldest, self.config):
                return committed
            receipts = [p.receipt for p in pending]
            tree = MerkleTree([r.leaf() for r in receipts])
            plan = {
                "root": "0x" + tree.root.hex(), "ids": [p.id for p in pending], "count": len(receipts),
                "tokens_in": sum(r.tokens_in for r in receipts), "tokens_out": sum(r.tokens_out for r in receipts),
                "amount": sum(r.amount for r in receipts), "from": min(r.timestamp for r in receipts),
                "to": max(r.timestamp for r in receipts),
            }  # fmt: skip
            self.state.set_meta(_PLANNED, json.dumps(plan))  # NOTE: before the transaction, see the module docstring
            committed += self._send_planned(plan)
            if len(pending) < self.config.receipt_max_batch:
                return committed

    def _send_planned(self, plan: dict[str, Any]) -> int:
        assert self.receipts is not None
        root = bytes.fromhex(plan["root"][2:])
        registry = self.chain.receipts
        tx_hash = None
        if not registry.functions.isCommitted(self.chain.address, root).call():
            fn = registry.functions.commitReceipts(root, plan["count"], plan["tokens_in"], plan["tokens_out"],
                                                   plan["amount"], plan["from"], plan["to"])
            try:
                tx_hash = self.chain.tx.send(fn, f"commitReceipts of {plan['count']}").tx_hash
            except ContractReverted as exc:
                if "already committed" not in exc.reason:
                    raise
        self.receipts.mark_committed(plan["ids"], root, tx_hash)
        self.state.set_meta(_PLANNED, "")
        if self.metrics is not None:
            self.metrics.receipts_committed(plan["count"])
        log.info("committed %d receipts under root %s (%s)", plan["count"], plan["root"], tx_hash or "already on chain")
        return plan["count"]
