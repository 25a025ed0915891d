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

# @dev treasury (160 bits) | fee in bps (above them), one slot: settlement
# reads both, and one cold read costs 2,100 gas instead of 4,200.
_config: uint256
FEE_SHIFT: constant(uint256) = 160
ADDRESS_MASK: constant(uint256) = 2**160 - 1


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


@external
@view
def treasury() -> address:
    """
    @notice Where protocol fees are paid.
    @return address The treasury.
    """
    return self._treasury()


@external
@view
def protocolFeeBps() -> uint256:
    """
    @notice The protocol fee for payments made now, in basis points.
    @return uint256 The fee.
    """
    return self._fee_bps()


@internal
@view
def _treasury() -> address:
    return convert(self._config & ADDRESS_MASK, address)


@internal
@view
def _fee_bps() -> uint256:
    return self._config >> FEE_SHIFT


@internal
def _set_treasury(treasury_: address):
    assert treasury_ != empty(address), "fees: treasury is the zero address"
    self._config = (self._fee_bps() << FEE_SHIFT) | convert(treasury_, uint256)
    log TreasuryChanged(treasury=treasury_)


@internal
def _set_fee(fee_bps: uint256):
    assert fee_bps <= MAX_PROTOCOL_FEE_BPS, "fees: fee above MAX_PROTOCOL_FEE_BPS"
    self._config = (fee_bps << FEE_SHIFT) | (self._config & ADDRESS_MASK)
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
