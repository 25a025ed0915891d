"""What the provider daemon does with the gateway's store: redeem vouchers, commit receipt batches.

Both are safe to retry and to run after a crash:

* ``redeem_vouchers`` takes, per channel, the highest voucher not above the
  charged total (``GatewayStore.redeemable``) and redeems them with
  ``InferenceEscrow.redeemBatch``, up to 64 per transaction. The escrow pays
  only what a voucher adds above what was redeemed, so resending a batch
  whose receipt was lost pays nothing twice. The store then records what was
  redeemed (read back from the escrow, the source of truth).
* ``commit_receipt_batches`` first finishes any batch prepared before a crash
  (if its root is already on chain it is only marked), then prepares and
  commits new ones with ``ReceiptRegistry.commitReceipts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount

from nodeai.chain.client import Transactor

from .store import GatewayStore, ReceiptBatch, RedeemableVoucher

__all__ = ["RedeemResult", "redeem_vouchers", "commit_receipt_batches", "commit_batch", "MAX_REDEEM_BATCH"]

MAX_REDEEM_BATCH = 64  # NOTE: InferenceEscrow.MAX_BATCH


@dataclass(frozen=True, slots=True)
class RedeemResult:
    vouchers: list[RedeemableVoucher]
    paid: int
    """Total the escrow paid out for them (provider + model owner + fee), from its events."""
    tx_hashes: list[str]


def redeem_vouchers(store: GatewayStore, w3: Any, account: LocalAccount, escrow: Any, min_gain: int = 1,
                    min_validity: int = 0, now: int | None = None) -> RedeemResult:
    """Redeem every channel's best voucher (see module docstring); returns what was paid."""
    if account.address != store.provider:
        raise ValueError(f"the store belongs to provider {store.provider}, not to {account.address}")
    chain_now = now if now is not None else w3.eth.get_block("latest")["timestamp"]
    # NOTE: a voucher must still be valid when its transaction is mined: leave a minute.
    items = store.redeemable(chain_now, min_validity=max(min_validity, 60), min_gain=min_gain)
    transactor = Transactor(w3, account)
    paid, hashes = 0, []
    for start in range(0, len(items), MAX_REDEEM_BATCH):
        chunk = items[start:start + MAX_REDEEM_BATCH]
        fn = escrow.functions.redeemBatch(account.address, [i.voucher.as_tuple() for i in chunk],
                                          [i.signature for i in chunk])
        result = transactor.send(fn, f"redeemBatch({len(chunk)})")
        paid += sum(event["paid"] for event in result.events.get("VoucherRedeemed", []))
        hashes.append(result.tx_hash)
        store.mark_redeemed(
            (i.voucher.payer, i.voucher.model_id,
             escrow.functions.redeemed(i.voucher.payer, account.address, i.voucher.model_id).call())
            for i in chunk
        )  # fmt: skip
    return RedeemResult(items, paid, hashes)


def commit_batch(store: GatewayStore, w3: Any, account: LocalAccount, registry: Any, batch: ReceiptBatch) -> str | None:
    """Commit one prepared batch (or only mark it, when its root is on chain already)."""
    if registry.functions.isCommitted(account.address, batch.root).call():
        store.mark_batch_committed(batch.id, None)
        return None
    receipts = [s.receipt for s in batch.receipts]
    fn = registry.functions.commitReceipts(
        batch.root, len(receipts), sum(r.tokens_in for r in receipts), sum(r.tokens_out for r in receipts),
        sum(r.amount for r in receipts), min(r.timestamp for r in receipts), max(r.timestamp for r in receipts),
    )  # fmt: skip
    result = Transactor(w3, account).send(fn, f"commitReceipts({len(receipts)})")
    store.mark_batch_committed(batch.id, result.tx_hash)
    return result.tx_hash


def commit_receipt_batches(store: GatewayStore, w3: Any, account: LocalAccount, registry: Any,
                           max_batch: int = 1024, max_batches: int = 16) -> list[ReceiptBatch]:
    """Finish prepared batches, then commit up to ``max_batches`` new ones; returns the batches committed.

    ``max_batch`` is bounded by the registry's proof length (32 levels) far above any sensible value.
    """
    done = []
    for batch in store.batches(status="prepared"):
        commit_batch(store, w3, account, registry, batch)
        done.append(batch)
    for _ in range(max_batches):
        batch = store.prepare_batch(max_batch)
        if batch is None:
            break
        commit_batch(store, w3, account, registry, batch)
        done.append(batch)
    return done

