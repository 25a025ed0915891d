"""How one payment splits between provider, model owner and treasury.

Mirrors ``contracts/modules/protocol_fees.vy::_split`` exactly (integer
division, rounding in the provider's favour), so off-chain accounting, tests
and the indexer agree with the chain to the last unit.
"""

from __future__ import annotations

from dataclasses import dataclass

BPS = 10_000
MAX_PROTOCOL_FEE_BPS = 1_000
MAX_REVENUE_SHARE_BPS = 5_000


@dataclass(frozen=True, slots=True)
class Split:
    provider: int
    model_owner: int
    protocol_fee: int

    @property
    def total(self) -> int:
        return self.provider + self.model_owner + self.protocol_fee


def split_payment(amount: int, revenue_share_bps: int, protocol_fee_bps: int) -> Split:
    """Split ``amount`` the way the contracts do."""
    if amount < 0:
        raise ValueError(f"amount must be >= 0, got {amount}")
    if not 0 <= revenue_share_bps <= MAX_REVENUE_SHARE_BPS:
        raise ValueError(f"revenue share must be within 0..{MAX_REVENUE_SHARE_BPS} bps, got {revenue_share_bps}")
    if not 0 <= protocol_fee_bps <= MAX_PROTOCOL_FEE_BPS:
        raise ValueError(f"protocol fee must be within 0..{MAX_PROTOCOL_FEE_BPS} bps, got {protocol_fee_bps}")
    fee = amount * protocol_fee_bps // BPS
    share = amount * revenue_share_bps // BPS
    return Split(provider=amount - fee - share, model_owner=share, protocol_fee=fee)
