# pragma version ~=0.4.3
"""
@title Inference escrow
@custom:contract-name InferenceEscrow
@notice Pay-per-request inference without a transaction per request. A
        consumer deposits for a provider; each request carries an EIP-712
        voucher signed by the consumer's wallet for the cumulative amount owed
        for one model; the provider redeems the highest voucher whenever it
        likes. Redemption pays only the part not paid yet, so it is idempotent
        and safe to retry. The consumer withdraws the unspent rest after a
        timelock, during which the provider can still redeem.
@dev Token balance of this contract == sum of every channel's `balance`.
     For each (payer, provider, model): redeemed <= the highest cumulative
     amount ever signed.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator as eip712
from .interfaces import IModelRegistry
from .interfaces import IProviderRegistry
from .modules import protocol_fees
from .modules import token_transfers

initializes: ownable
initializes: eip712
initializes: protocol_fees[ownable := ownable]
exports: (
    ownable.owner,
    ownable.transfer_ownership,
    eip712.eip712Domain,
    protocol_fees.treasury,
    protocol_fees.protocolFeeBps,
    protocol_fees.setTreasury,
    protocol_fees.setProtocolFee,
)

VOUCHER_TYPEHASH: constant(bytes32) = keccak256(
    "Voucher(address payer,address provider,uint256 modelId,uint256 cumulativeAmount,uint256 expiry)"
)
MAX_BATCH: constant(uint256) = 64
MAX_TIMELOCK: constant(uint256) = 30 * 86_400


struct Voucher:
    payer: address
    provider: address
    modelId: uint256
    cumulativeAmount: uint256
    expiry: uint256


struct Channel:
    # @dev Deposited and not yet redeemed or withdrawn.
    balance: uint256
    # @dev When a requested withdrawal unlocks; 0 when none is pending.
    unlockAt: uint256


token: public(immutable(IERC20))
modelRegistry: public(immutable(IModelRegistry))
providerRegistry: public(immutable(IProviderRegistry))

# @dev balance (192 bits) | unlockAt << 192, one slot per (payer, provider):
# deposits and redemptions then touch a single slot.
_channels: HashMap[address, HashMap[address, uint256]]
UNLOCK_SHIFT: constant(uint256) = 192
BALANCE_MASK: constant(uint256) = 2**192 - 1
# @dev payer -> provider -> modelId -> cumulative amount paid out so far.
redeemed: public(HashMap[address, HashMap[address, HashMap[uint256, uint256]]])
withdrawTimelock: public(uint256)


event Deposited:
    payer: indexed(address)
    provider: indexed(address)
    amount: uint256
    balance: uint256


event WithdrawalRequested:
    payer: indexed(address)
    provider: indexed(address)
    unlockAt: uint256


event Withdrawn:
    payer: indexed(address)
    provider: indexed(address)
    amount: uint256


event VoucherRedeemed:
    payer: indexed(address)
    provider: indexed(address)
    modelId: indexed(uint256)
    cumulativeAmount: uint256
    paid: uint256
    providerAmount: uint256
    modelOwner: address
    modelOwnerAmount: uint256
    protocolFee: uint256
    balance: uint256


event WithdrawTimelockChanged:
    withdrawTimelock: uint256


@deploy
def __init__(
    token_: IERC20,
    model_registry_: IModelRegistry,
    provider_registry_: IProviderRegistry,
    treasury_: address,
    protocol_fee_bps_: uint256,
    withdraw_timelock_: uint256,
):
    """
    @param token_ The payment token.
    @param model_registry_ Where model owners and revenue shares live.
    @param provider_registry_ Only registered providers can receive deposits.
    @param treasury_ Receives the protocol fee.
    @param protocol_fee_bps_ Protocol fee, at most 1,000 (10 %).
    @param withdraw_timelock_ Seconds between a withdrawal request and the withdrawal.
    """
    ownable.__init__()
    eip712.__init__("NodeAI InferenceEscrow", "1")
    protocol_fees.__init__(treasury_, protocol_fee_bps_)
    token = token_
    modelRegistry = model_registry_
    providerRegistry = provider_registry_
    self._set_timelock(withdraw_timelock_)


@external
@nonreentrant
def deposit(provider: address, amount: uint256):
    """
    @notice Deposits `amount` for requests to `provider` (needs an allowance).
            Cancels a pending withdrawal of this channel.
    @param provider A registered provider.
    @param amount Tokens to deposit; must not be zero.
    """
    assert amount > 0, "escrow: amount is zero"
    assert staticcall providerRegistry.isRegistered(provider), "escrow: provider not registered"
    balance: uint256 = self._channels[msg.sender][provider] & BALANCE_MASK
    balance += amount
    assert balance <= BALANCE_MASK, "escrow: deposit above 2**192 - 1"
    self._channels[msg.sender][provider] = balance  # NOTE: unlockAt = 0 cancels a pending withdrawal
    log Deposited(payer=msg.sender, provider=provider, amount=amount, balance=balance)
    token_transfers._pull(token, msg.sender, amount)


@external
def requestWithdrawal(provider: address):
    """
    @notice Starts the timelock after which the caller may withdraw what is
            left of its deposit for `provider`.
    @param provider The channel's provider.
    """
    balance: uint256 = self._channels[msg.sender][provider] & BALANCE_MASK
    assert balance > 0, "escrow: nothing deposited"
    unlock_at: uint256 = block.timestamp + self.withdrawTimelock
    self._channels[msg.sender][provider] = balance | (unlock_at << UNLOCK_SHIFT)
    log WithdrawalRequested(payer=msg.sender, provider=provider, unlockAt=unlock_at)


@external
@nonreentrant
def withdraw(provider: address):
    """
    @notice Withdraws the caller's unspent deposit for `provider` after the timelock.
    @param provider The channel's provider.
    """
    channel: Channel = self._channel(msg.sender, provider)
    assert channel.unlockAt != 0, "escrow: no withdrawal requested"
    assert block.timestamp >= channel.unlockAt, "escrow: timelock not over"
    self._channels[msg.sender][provider] = 0
    log Withdrawn(payer=msg.sender, provider=provider, amount=channel.balance)
    token_transfers._push(token, msg.sender, channel.balance)


@external
@nonreentrant
def redeem(voucher: Voucher, signature: Bytes[65]) -> uint256:
    """
    @notice Redeems one voucher for its provider (anyone may call; the
            provider is paid). Pays only what this voucher adds above what was
            redeemed before, capped by the deposit; a stale voucher pays 0.
    @param voucher The signed voucher.
    @param signature The payer's 65-byte EIP-712 signature.
    @return uint256 The amount paid out (provider + owner share + fee).
    """
    paid: uint256 = 0
    provider_amount: uint256 = 0
    fee: uint256 = 0
    paid, provider_amount, fee = self._redeem(voucher, signature)
    token_transfers._push(token, voucher.provider, provider_amount)
    token_transfers._push(token, protocol_fees._treasury(), fee)
    return paid


@external
@nonreentrant
def redeemBatch(provider: address, vouchers: DynArray[Voucher, MAX_BATCH], signatures: DynArray[Bytes[65], MAX_BATCH]) -> uint256:
    """
    @notice Redeems many vouchers of one provider in one transaction; the
            provider's and the treasury's payouts are made once at the end.
    @param provider The provider every voucher pays.
    @param vouchers The vouchers, any payers and models.
    @param signatures One signature per voucher, same order.
    @return uint256 The total paid out.
    """
    assert len(vouchers) == len(signatures), "escrow: vouchers and signatures differ in length"
    total: uint256 = 0
    provider_total: uint256 = 0
    fee_total: uint256 = 0
    for i: uint256 in range(len(vouchers), bound=MAX_BATCH):
        assert vouchers[i].provider == provider, "escrow: voucher for another provider"
        paid: uint256 = 0
        provider_amount: uint256 = 0
        fee: uint256 = 0
        paid, provider_amount, fee = self._redeem(vouchers[i], signatures[i])
        total += paid
        provider_total += provider_amount
        fee_total += fee
    token_transfers._push(token, provider, provider_total)
    token_transfers._push(token, protocol_fees._treasury(), fee_total)
    return total


@external
def setWithdrawTimelock(withdraw_timelock_: uint256):
    """
    @notice Changes the withdrawal timelock for requests made from now on (owner only).
    @param withdraw_timelock_ Seconds, 1 minute to 30 days.
    """
    ownable._check_owner()
    self._set_timelock(withdraw_timelock_)


@external
@view
def voucherDigest(voucher: Voucher) -> bytes32:
    """
    @notice The EIP-712 digest a wallet signs for `voucher`.
    @param voucher The voucher.
    @return bytes32 The digest bound to this chain id and contract.
    """
    return self._digest(voucher)


@external
@view
def redeemable(voucher: Voucher) -> uint256:
    """
    @notice What redeeming `voucher` would pay now (signature not checked).
    @param voucher The voucher.
    @return uint256 Amount, capped by the deposit; 0 when stale or expired.
    """
    if voucher.expiry < block.timestamp:
        return 0
    already: uint256 = self.redeemed[voucher.payer][voucher.provider][voucher.modelId]
    if voucher.cumulativeAmount <= already:
        return 0
    return min(voucher.cumulativeAmount - already, self._channels[voucher.payer][voucher.provider] & BALANCE_MASK)


@external
@view
def channels(payer: address, provider: address) -> Channel:
    """
    @notice A payer's deposit for a provider and its pending withdrawal.
    @param payer The consumer.
    @param provider The provider.
    @return Channel Unspent balance and when a requested withdrawal unlocks (0: none).
    """
    return self._channel(payer, provider)


@internal
def _redeem(voucher: Voucher, signature: Bytes[65]) -> (uint256, uint256, uint256):
    """
    @dev Checks the voucher, books the delta and pays the model owner. Returns
         (paid, provider amount, fee) for the caller to pay out.
    """
    assert block.timestamp <= voucher.expiry, "escrow: voucher expired"
    # NOTE: signatures of a length other than 64/65 recover the zero address.
    assert voucher.payer != empty(address), "escrow: payer is the zero address"
    signer: address = ecdsa._recover_sig(self._digest(voucher), signature)
    assert signer == voucher.payer, "escrow: signature is not the payer's"
    already: uint256 = self.redeemed[voucher.payer][voucher.provider][voucher.modelId]
    if voucher.cumulativeAmount <= already:
        return 0, 0, 0
    packed: uint256 = self._channels[voucher.payer][voucher.provider]
    balance: uint256 = packed & BALANCE_MASK
    paid: uint256 = min(unsafe_sub(voucher.cumulativeAmount, already), balance)
    if paid == 0:
        return 0, 0, 0
    # NOTE: paid <= cumulativeAmount - already and paid <= balance.
    self.redeemed[voucher.payer][voucher.provider][voucher.modelId] = unsafe_add(already, paid)
    balance = unsafe_sub(balance, paid)
    # NOTE: only the balance bits change; a pending withdrawal keeps its unlock time.
    self._channels[voucher.payer][voucher.provider] = unsafe_sub(packed, paid)
    owner: address = empty(address)
    share_bps: uint256 = 0
    active: bool = False
    owner, share_bps, active = staticcall modelRegistry.modelTerms(voucher.modelId)
    provider_amount: uint256 = 0
    owner_amount: uint256 = 0
    fee: uint256 = 0
    provider_amount, owner_amount, fee = protocol_fees._split(paid, share_bps, protocol_fees._fee_bps())
    if owner == empty(address):
        # NOTE: an unknown model id has no owner to pay: its share stays with the provider.
        provider_amount += owner_amount
        owner_amount = 0
    log VoucherRedeemed(
        payer=voucher.payer,
        provider=voucher.provider,
        modelId=voucher.modelId,
        cumulativeAmount=voucher.cumulativeAmount,
        paid=paid,
        providerAmount=provider_amount,
        modelOwner=owner,
        modelOwnerAmount=owner_amount,
        protocolFee=fee,
        balance=balance,
    )
    token_transfers._push(token, owner, owner_amount)
    return paid, provider_amount, fee


@internal
@view
def _channel(payer: address, provider: address) -> Channel:
    packed: uint256 = self._channels[payer][provider]
    return Channel(balance=packed & BALANCE_MASK, unlockAt=packed >> UNLOCK_SHIFT)


@internal
@view
def _digest(voucher: Voucher) -> bytes32:
    return eip712._hash_typed_data_v4(
        keccak256(
            abi_encode(
                VOUCHER_TYPEHASH,
                voucher.payer,
                voucher.provider,
                voucher.modelId,
                voucher.cumulativeAmount,
                voucher.expiry,
            )
        )
    )


@internal
def _set_timelock(withdraw_timelock_: uint256):
    assert withdraw_timelock_ >= 60 and withdraw_timelock_ <= MAX_TIMELOCK, "escrow: timelock outside 1 min to 30 days"
    self.withdrawTimelock = withdraw_timelock_
    log WithdrawTimelockChanged(withdrawTimelock=withdraw_timelock_)
