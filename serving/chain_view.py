"""What the gateway reads from the chain, cached so the request path rarely waits on RPC.

Two reads matter for a paid request:

* the provider's price for the model, ``ProviderRegistry.modelPrice(provider,
  modelId)``: only this provider's own ``setModelPrice`` transaction changes
  it, so a short TTL is enough;
* the payer's channel, ``InferenceEscrow.channels(payer, provider)`` plus
  ``redeemed(payer, provider, modelId)`` per served model.

Why a cached channel cannot be withdrawn from under the gateway
---------------------------------------------------------------
The deposit (balance plus what was already redeemed) only ever *grows*, except
through ``withdraw``, and ``withdraw`` needs a prior ``requestWithdrawal``
followed by the escrow's timelock (``withdrawTimelock``, at least 60 s by the
contract's own bound). So:

* a read showing no pending withdrawal (``unlockAt == 0``) stays safe until
  ``read time + withdrawTimelock``: a withdrawal requested right after the read
  still cannot complete before then. The cache keeps such a read for
  ``min(ttl, timelock - margin)``;
* a read showing a pending withdrawal is safe only until ``unlockAt - margin``;
  after that the payer may withdraw at any moment, so the channel counts as
  unfunded (``withdrawal_pending``) until the payer deposits again, which
  cancels the withdrawal.

Redemptions by anyone move value from the balance to ``redeemed``, leaving the
sum unchanged, so they cannot make a cached read unsafe either. A read that
looks too small (the payer may just have deposited) is refreshed once before a
request is refused.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import anyio.to_thread
from eth_utils import to_checksum_address

from nodeai.chain.deployments import Deployment

from .errors import PaymentRequired, Unavailable
from .payments import ChannelFunds

__all__ = ["ChainView", "CachedFunds"]


@dataclass(frozen=True, slots=True)
class CachedFunds:
    funds: ChannelFunds
    valid_until: float
    """Monotonic time after which the read must not be trusted."""
    unusable_reason: str | None = None
    """Set when the channel must not be relied on at all (withdrawal unlocking)."""


class ChainView:
    """Cached, safe reads of prices and channels for one provider and its served model ids."""

    def __init__(self, w3: Any, deployment: Deployment, provider: str, model_ids: Sequence[int],
                 channel_ttl: float = 30.0, price_ttl: float = 60.0, margin: float = 15.0,
                 clock: Callable[[], float] = time.monotonic):
        self.w3 = w3
        self.deployment = deployment
        self.provider = to_checksum_address(provider)
        self.model_ids = tuple(sorted(set(model_ids)))
        self.channel_ttl, self.price_ttl, self.margin, self.clock = channel_ttl, price_ttl, margin, clock
        self.escrow = deployment.contract(w3, "InferenceEscrow")
        self.registry = deployment.contract(w3, "ProviderRegistry")
        self.chain_id = deployment.chain_id
        self.escrow_address = to_checksum_address(self.escrow.address)
        self.receipts_address = to_checksum_address(deployment.address("ReceiptRegistry"))
        self._prices: dict[int, tuple[int, float]] = {}
        self._funds: dict[str, CachedFunds] = {}
        self._timelock: tuple[int, float] | None = None
        self._lock = threading.Lock()
        self.reads = 0
        """Channel reads that went to the chain (the cache's misses), for metrics and tests."""

    # -- prices ---------------------------------------------------------------------------------
    async def price(self, model_id: int) -> int:
        now = self.clock()
        cached = self._prices.get(model_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        price = await self._run(lambda: self.registry.functions.modelPrice(self.provider, model_id).call())
        self._prices[model_id] = (price, now + self.price_ttl)
        return price

    # -- channels -------------------------------------------------------------------------------
    async def funds(self, payer: str, refresh: bool = False) -> ChannelFunds:
        """The payer's channel, from the cache while that is safe; raises ``PaymentRequired``
        (withdrawal_pending) when the deposit may be withdrawn at any moment."""
        now = self.clock()
        cached = None if refresh else self._funds.get(payer)
        if cached is None or cached.valid_until <= now:
            cached = await self._run(lambda: self._read_funds(payer))
            with self._lock:
                self._funds[payer] = cached
                if len(self._funds) > 100_000:  # NOTE: bound memory; dropping a read only costs a re-read
                    self._funds.pop(next(iter(self._funds)))
        if cached.unusable_reason:
            raise PaymentRequired(cached.unusable_reason, code="withdrawal_pending")
        return cached.funds

    def _read_funds(self, payer: str) -> CachedFunds:
        started = self.clock()
        timelock = self._withdraw_timelock(started)
        balance, unlock_at = self.escrow.functions.channels(payer, self.provider).call()
        redeemed = {m: self.escrow.functions.redeemed(payer, self.provider, m).call() for m in self.model_ids}
        funds = ChannelFunds(balance=balance, unlock_at=unlock_at, redeemed=redeemed)
        self.reads += 1
        if unlock_at == 0:
            return CachedFunds(funds, started + max(0.0, min(self.channel_ttl, timelock - self.margin)))
        chain_now = self.w3.eth.get_block("latest")["timestamp"]
        left = unlock_at - chain_now - self.margin
        if left <= 0:
            return CachedFunds(funds, started + min(self.channel_ttl, 5.0), (
                f"the payer requested a withdrawal of its deposit for this provider, unlocking at {unlock_at} "
                f"(chain time now {chain_now}), so the deposit may be gone at any moment: deposit again into the "
                "InferenceEscrow (which cancels the withdrawal) to keep using this provider"))
        return CachedFunds(funds, started + min(self.channel_ttl, left))

    def _withdraw_timelock(self, now: float) -> int:
        # NOTE: the owner may lower the timelock (down to the contract's 60 s floor) for later
        # requests; re-reading it every channel TTL keeps the cache inside the current value.
        if self._timelock is None or self._timelock[1] <= now:
            self._timelock = (self.escrow.functions.withdrawTimelock().call(), now + self.channel_ttl)
        return self._timelock[0]

    def forget(self, payer: str) -> None:
        with self._lock:
            self._funds.pop(payer, None)

    async def _run(self, read: Callable[[], Any]) -> Any:
        try:
            return await anyio.to_thread.run_sync(read)
        except PaymentRequired:
            raise
        except Exception as exc:  # NOTE: web3 raises many types (connection, timeout, bad response)
            raise Unavailable(f"the chain RPC failed while checking payment ({type(exc).__name__}: {exc}): "
                              "retry in a moment", code="chain_unavailable") from None
