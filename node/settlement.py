"""Inference settlement in batches: redeem vouchers, commit receipt roots.

The gateway (``nodeai.serving``) keeps the vouchers its clients sign and the
receipts it signs for them in its store (``serving/store.py::GatewayStore``);
the daemon sees that store only through two small structural protocols,
:class:`VoucherSource` and :class:`ReceiptSource` (the gateway store satisfies
both), and turns them into transactions when the thresholds of ``[batching]``
say so (:func:`vouchers_due`, :func:`receipts_due`, both pure).

Both are safe to repeat after a crash:

* a voucher already redeemed pays 0; the escrow's ``redeemed`` counter then
  shows it was paid and it is only marked, nothing is sent;
* receipts are put into a *prepared* batch in the gateway's store (root and
  members persisted) before the commit transaction is sent, and a prepared
  batch left by a crash is committed first (or found committed): a receipt
  never ends under two roots.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from nodeai.chain.receipts import Receipt
from nodeai.chain.vouchers import Voucher
from nodeai.errors import ContractReverted
from nodeai.node.chain import ProviderChain
from nodeai.node.config import BatchingConfig
from nodeai.node.state import StateStore

log = logging.getLogger("nodeai.node.settlement")

__all__ = ["RedeemableVoucher", "ReceiptBatch", "VoucherSource", "ReceiptSource", "vouchers_due", "receipts_due", "Settler"]


class RedeemableVoucher(Protocol):
    voucher: Voucher
    signature: bytes


class _Signed(Protocol):
    receipt: Receipt


class ReceiptBatch(Protocol):
    id: int
    root: bytes
    receipts: Sequence[_Signed]


@runtime_checkable
class VoucherSource(Protocol):
    def redeemable(self, now: int, min_validity: int = 0, min_gain: int = 1) -> Sequence[RedeemableVoucher]:
        """Per (payer, model), the highest voucher that pays more than was redeemed, valid past ``now + min_validity``."""

    def mark_redeemed(self, redeemed: Iterable[tuple[str, int, int]]) -> None:
        """``(payer, model id, cumulative amount)`` paid out by the escrow."""


@runtime_checkable
class ReceiptSource(Protocol):
    def pending_receipts(self) -> int:
        """Receipts not in any batch yet."""

    def prepare_batch(self, max_count: int) -> ReceiptBatch | None:
        """Persist up to ``max_count`` pending receipts (oldest first) as a new prepared batch."""

    def batches(self, status: str | None = None) -> Sequence[ReceiptBatch]:
        """Batches, e.g. the ``"prepared"`` ones not yet committed."""

    def mark_batch_committed(self, batch_id: int, tx_hash: str | None) -> None:
        """The batch's root is on chain (``tx_hash`` None: found there already)."""


def vouchers_due(total: int, count: int, seconds_to_first_expiry: float, config: BatchingConfig) -> bool:
    """Redeem when something is owed and it is worth a transaction, or a voucher is about to expire."""
    return count > 0 and total > 0 and (total >= config.voucher_min_amount
                                        or seconds_to_first_expiry <= config.voucher_expiry_margin)


def receipts_due(pending: int, seconds_since_last_commit: float, config: BatchingConfig) -> bool:
    """Commit when enough receipts wait, or any waited ``receipt_max_age`` since the last commit."""
    return pending > 0 and (pending >= config.receipt_min_count or seconds_since_last_commit >= config.receipt_max_age)


_LAST_COMMIT = "receipts_last_commit"


class Settler:
    """One ``run_once`` redeems and commits whatever the thresholds say is due."""

    def __init__(self, chain: ProviderChain, state: StateStore, config: BatchingConfig,
                 vouchers: VoucherSource | None = None, receipts: ReceiptSource | None = None, metrics: Any = None):
        self.chain, self.state, self.config = chain, state, config
        self.vouchers, self.receipts, self.metrics = vouchers, receipts, metrics
        if not state.get_meta(_LAST_COMMIT):
            # NOTE: the age clock starts with the first run, not at 1970: a new node commits by count first.
            state.set_meta(_LAST_COMMIT, str(time.time()))

    def run_once(self, now: float | None = None) -> dict[str, int]:
        done = {"vouchers_redeemed": 0, "amount_redeemed": 0, "receipts_committed": 0}
        if self.vouchers is not None:
            done.update(self._redeem(self.chain.now()))
        if self.receipts is not None:
            done["receipts_committed"] = self._commit(time.time() if now is None else now)
        return done

    # -- vouchers -----------------------------------------------------------------------------------
    def _redeem(self, chain_now: int) -> dict[str, int]:
        assert self.vouchers is not None
        escrow = self.chain.escrow.functions
        me = self.chain.address
        # NOTE: a voucher must stay valid until its transaction is mined: ask only for ones that do.
        candidates = list(self.vouchers.redeemable(chain_now, min_validity=self.config.voucher_min_validity))
        live: list[tuple[RedeemableVoucher, int]] = []
        paid_before: list[tuple[str, int, int]] = []
        for c in candidates:
            v = c.voucher
            already = escrow.redeemed(v.payer, me, v.model_id).call()
            if already >= v.cumulative_amount:
                paid_before.append((v.payer, v.model_id, already))  # a crash after the transaction: only mark it
                continue
            amount = escrow.redeemable(v.as_tuple()).call()
            if amount > 0:
                live.append((c, amount))
        if paid_before:
            self.vouchers.mark_redeemed(paid_before)
        total = sum(amount for _, amount in live)
        first_expiry = min((c.voucher.expiry for c, _ in live), default=chain_now) - chain_now
        if not vouchers_due(total, len(live), first_expiry, self.config):
            return {"vouchers_redeemed": 0, "amount_redeemed": 0}
        redeemed = amount_paid = 0
        for start in range(0, len(live), self.config.voucher_max_batch):
            batch = [c for c, _ in live[start:start + self.config.voucher_max_batch]]
            fn = self.chain.escrow.functions.redeemBatch(me, [c.voucher.as_tuple() for c in batch],
                                                         [c.signature for c in batch])
            result = self.chain.tx.send(fn, f"redeemBatch of {len(batch)}")
            events = result.events.get("VoucherRedeemed", [])
            self.vouchers.mark_redeemed([(e["payer"], e["modelId"], e["cumulativeAmount"]) for e in events])
            paid = sum(e["paid"] for e in events)
            redeemed += len(batch)
            amount_paid += paid
            if self.metrics is not None:
                self.metrics.vouchers_redeemed(len(batch), paid)
            log.info("redeemed %d vouchers for %d token units", len(batch), paid, extra={"tx": result.tx_hash})
        return {"vouchers_redeemed": redeemed, "amount_redeemed": amount_paid}

    # -- receipts -------------------------------------------------------------------------------------
    def _commit(self, now: float) -> int:
        assert self.receipts is not None
        committed = sum(self._send(batch) for batch in self.receipts.batches("prepared"))
        last = float(self.state.get_meta(_LAST_COMMIT) or 0)
        while receipts_due(self.receipts.pending_receipts(), now - last, self.config):
            batch = self.receipts.prepare_batch(self.config.receipt_max_batch)
            if batch is None:
                break
            committed += self._send(batch)
            last = now
        return committed

    def _send(self, batch: ReceiptBatch) -> int:
        assert self.receipts is not None
        registry = self.chain.receipts
        receipts = [s.receipt for s in batch.receipts]
        tx_hash = None
        if not registry.functions.isCommitted(self.chain.address, batch.root).call():
            fn = registry.functions.commitReceipts(
                batch.root, len(receipts), sum(r.tokens_in for r in receipts), sum(r.tokens_out for r in receipts),
                sum(r.amount for r in receipts), min(r.timestamp for r in receipts), max(r.timestamp for r in receipts))
            try:
                tx_hash = self.chain.tx.send(fn, f"commitReceipts of {len(receipts)}").tx_hash
            except ContractReverted as exc:
                if "already committed" not in exc.reason:
                    raise
        self.receipts.mark_batch_committed(batch.id, tx_hash)
        self.state.set_meta(_LAST_COMMIT, str(time.time()))
        if self.metrics is not None:
            self.metrics.receipts_committed(len(receipts))
        log.info("committed %d receipts under root 0x%s", len(receipts), batch.root.hex(),
                 extra={"tx": tx_hash or "already on chain"})
        return len(receipts)
