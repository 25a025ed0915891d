"""
@title Protocol fees
@custom:contract-name protocol_fees
@notice Treasury address, protocol fee and the one rule that splits a payment
        between provider, model owner and treasury. Shared by JobMarket and
        InferenceEscrow so both settle money the same way.
@dev The fee is capped at `MAX_PROTOCOL_FEE_BPS`; model revenue shares are
     capped by ModelRegistry, so fee + share never exceeds 100 %.
"""

from snekmate.auth import ownable

uses: ownable

# @dev 10 %: the most governance can ever charge.
MAX_PROTOCOL_FEE_BPS: constant(uint256) = 1_000
BPS: constant(uint256) = 10_000

treasury: public(address)
protocolFeeBps: public(uint256)


event TreasuryChanged:
    treasury: indexed(address)


event ProtocolFeeChanged:
    protocolFeeBps: uint256


@deploy
def __init__(treasury_: address, protocol_fee_bps_: uint256):
    self._set_treasury(treasury_)
    self._set_fee(protocol_fee_bps_)


@external
def setTreasury(treasury_: address):
    """
    @notice Changes where protocol fees are paid (owner only).
    @param treasury_ The new treasury; must not be the zero address.
    """
    ownable._check_owner()
    self._set_treasury(treasury_)


@external
def setProtocolFee(fee_bps: uint256):
    """
    @notice Changes the protocol fee for payments made from now on (owner only).
    @dev Jobs already created keep the fee they were created with.
    @param fee_bps Fee in basis points, at most `MAX_PROTOCOL_FEE_BPS`.
    """
    ownable._check_owner()
    self._set_fee(fee_bps)


@internal
def _set_treasury(treasury_: address):
    assert treasury_ != empty(address), "fees: treasury is the zero address"
    self.treasury = treasury_
    log TreasuryChanged(treasury=treasury_)


@internal
def _set_fee(fee_bps: uint256):
    assert fee_bps <= MAX_PROTOCOL_FEE_BPS, "fees: fee above MAX_PROTOCOL_FEE_BPS"
    self.protocolFeeBps = fee_bps
    log ProtocolFeeChanged(protocolFeeBps=fee_bps)


@internal
@pure
def _split(amount: uint256, share_bps: uint256, fee_bps: uint256) -> (uint256, uint256, uint256):
    """
    @dev Splits `amount` into (provider, model owner, treasury). Rounding
         favours the provider: owner and fee round down.
    """
    fee: uint256 = amount * fee_bps // BPS
    share: uint256 = amount * share_bps // BPS
    # NOTE: fee_bps <= 1_000 and share_bps <= 5_000, so fee + share <= amount.
    return unsafe_sub(unsafe_sub(amount, fee), share), share, fee
