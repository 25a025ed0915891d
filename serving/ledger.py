"""The gateway's ledger: channel accounts in memory, every settled charge in the store.

Reservations live in memory only: a request that dies with the process was
never charged, so there is nothing to recover. Charges are written (with the
voucher and the receipt) before the response is sent, and the accounts are
rebuilt from the store on start, so a restarted gateway still refuses a
replayed voucher.

Check-and-reserve runs under one lock and without awaiting, so two concurrent
requests of a payer can never both spend the same voucher headroom.

# NOTE: one ledger per provider database: run one gateway process per provider
# key (uvicorn ``workers=1``); several processes would each keep their own
# reservations and could spend the same headroom once each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from nodeai.chain.vouchers import Voucher

from .payments import ChannelAccount, ChannelFunds, release, reserve, settle, uncovered
from .errors import PaymentRequired
from .receipts import SignedReceipt, receipt_to_json
from .store import GatewayStore

__all__ = ["Ledger", "Reservation"]


@dataclass(frozen=True, slots=True)
class Reservation:
    payer: str
    model_id: int
    amount: int
    voucher: Voucher | None = None
    signature: bytes | None = None


class Ledger:
    def __init__(self, store: GatewayStore):
        self.store = store
        self._lock = threading.Lock()
        self._accounts: dict[str, dict[int, ChannelAccount]] = {}
        for record in store.channels():
            self._accounts.setdefault(record.payer, {})[record.model_id] = ChannelAccount(charged=record.charged)

    def account(self, payer: str, model_id: int) -> ChannelAccount:
        with self._lock:
            return self._accounts.get(payer, {}).get(model_id, ChannelAccount())

    def reserve(self, payer: str, model_id: int, amount: int, voucher: Voucher | None = None,
                signature: bytes | None = None, funds: ChannelFunds | None = None) -> Reservation:
        """Check the voucher (when given) and the deposit (when given) and book ``amount``, atomically.

        Raises ``PaymentRequired`` with code ``voucher_too_low`` or ``insufficient_deposit``.
        """
        with self._lock:
            accounts = self._accounts.setdefault(payer, {})
            current = accounts.get(model_id, ChannelAccount())
            cumulative = voucher.cumulative_amount if voucher is not None else current.owed + amount
            updated = reserve(current, cumulative, amount)
            if funds is not None:
                owed = {m: a.owed for m, a in accounts.items()}
                owed[model_id] = updated.owed
                missing = uncovered(funds, owed)
                if missing:
                    have = funds.balance + sum(funds.redeemed.values())
                    raise PaymentRequired(
                        f"the payer's deposit for this provider does not cover what it owes: "
                        f"{sum(max(owed.get(m, 0), funds.redeemed.get(m, 0)) for m in set(owed) | set(funds.redeemed))}"
                        f" owed across models including this request's maximum price {amount}, but deposited plus "
                        f"redeemed is only {have}: deposit at least {missing} more into the InferenceEscrow "
                        "(deposit(provider, amount))",
                        code="insufficient_deposit",
                        extra={"missing": str(missing), "balance": str(funds.balance)},
                    )
            accounts[model_id] = updated
        return Reservation(payer, model_id, amount, voucher, signature)

    def settle(self, reservation: Reservation, actual: int, make_receipt: Callable[[int], SignedReceipt]
               ) -> tuple[int, int, SignedReceipt, dict[str, Any]]:
        """Charge ``actual`` (capped at the reservation) and persist charge, voucher and receipt together.

        ``make_receipt(amount)`` builds the signed receipt for the amount charged.
        Returns (amount charged, the channel's new charged total, the receipt, its wire form).
        """
        with self._lock:
            accounts = self._accounts[reservation.payer]
            account, charged = settle(accounts[reservation.model_id], reservation.amount, actual)
            accounts[reservation.model_id] = account
            total = account.charged
        signed = make_receipt(charged)
        wire = receipt_to_json(signed)
        # NOTE: written outside the in-memory lock; the store serialises writers itself and
        # keeps the larger total (``max``), so two settles committing out of order are harmless.
        self.store.record_request(reservation.payer, reservation.model_id, total, signed,
                                  reservation.voucher, reservation.signature, wire)
        return charged, total, signed, wire

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            accounts = self._accounts[reservation.payer]
            accounts[reservation.model_id] = release(accounts[reservation.model_id], reservation.amount)
