# pragma version ~=0.4.3
"""
@title Provider registry
@custom:contract-name ProviderRegistry
@notice Providers (node operators) stake the payment token, advertise where
        they serve (endpoint URL, libp2p peer id) and which models they serve
        at what price. Job claims bond part of the stake; a provider that
        fails a job or loses a dispute is slashed from that bond only.
@dev Stake accounting per provider:
     `stake` is active stake (bonded part included), `bonded <= stake`,
     `unbonding` has left `stake` and waits for `unbondingDelay`.
     The token balance of this contract always equals the sum over all
     providers of `stake + unbonding`.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from .interfaces import IModelRegistry
from .modules import token_transfers

initializes: ownable
exports: (ownable.owner, ownable.transfer_ownership)

MAX_URL_LENGTH: constant(uint256) = 256
MAX_PEER_ID_LENGTH: constant(uint256) = 128
# @dev Governance cannot lock stake for longer than this.
MAX_UNBONDING_DELAY: constant(uint256) = 30 * 86_400


struct Provider:
    registered: bool
    stake: uint256
    bonded: uint256
    unbonding: uint256
    unbondingReadyAt: uint256
    jobsCompleted: uint256
    jobsFailed: uint256
    disputesLost: uint256
    totalSlashed: uint256


# @dev What every claim and settlement touches, packed into one slot (see
# `_load`/`_store`): a claim then updates a slot that is already non-zero
# (stake is in it) instead of turning `bonded` from 0 to non-zero, which saves
# about 19,000 gas per job.
struct Account:
    stake: uint256
    bonded: uint256
    registered: bool
    jobsCompleted: uint256


# @dev Fields only unbonding and slashing touch.
struct Record:
    unbonding: uint256
    unbondingReadyAt: uint256
    jobsFailed: uint256
    disputesLost: uint256
    totalSlashed: uint256


# @dev Packed layout: stake (112 bits) | bonded (112) | registered (1) | jobsCompleted (31).
STAKE_SHIFT: constant(uint256) = 144
BONDED_SHIFT: constant(uint256) = 32
REGISTERED_FLAG: constant(uint256) = 2**31
AMOUNT_MASK: constant(uint256) = 2**112 - 1
COUNT_MASK: constant(uint256) = 2**31 - 1
# @dev Stake is capped so it fits its 112 bits (5 * 10**33 base units).
MAX_STAKE: constant(uint256) = 2**112 - 1


token: public(immutable(IERC20))
modelRegistry: public(immutable(IModelRegistry))

_accounts: HashMap[address, uint256]
_records: HashMap[address, Record]
endpoint: public(HashMap[address, String[MAX_URL_LENGTH]])
peerId: public(HashMap[address, String[MAX_PEER_ID_LENGTH]])
# @dev Price per 1,000 tokens; 0 means the model is not served.
modelPrice: public(HashMap[address, HashMap[uint256, uint256]])

minStake: public(uint256)
unbondingDelay: public(uint256)
# @dev Contracts allowed to bond, release and slash (the job market).
markets: public(HashMap[address, bool])


event ProviderRegistered:
    provider: indexed(address)
    endpoint: String[MAX_URL_LENGTH]
    peerId: String[MAX_PEER_ID_LENGTH]
    stake: uint256


event ProviderEndpointChanged:
    provider: indexed(address)
    endpoint: String[MAX_URL_LENGTH]
    peerId: String[MAX_PEER_ID_LENGTH]


event ModelServed:
    provider: indexed(address)
    modelId: indexed(uint256)
    pricePer1kTokens: uint256


event StakeAdded:
    provider: indexed(address)
    amount: uint256
    stake: uint256


event UnbondingStarted:
    provider: indexed(address)
    amount: uint256
    stake: uint256
    unbonding: uint256
    readyAt: uint256


event UnbondedWithdrawn:
    provider: indexed(address)
    amount: uint256


event StakeBonded:
    provider: indexed(address)
    market: indexed(address)
    amount: uint256
    bonded: uint256


event StakeReleased:
    provider: indexed(address)
    market: indexed(address)
    amount: uint256
    bonded: uint256
    completed: bool


event ProviderSlashed:
    provider: indexed(address)
    recipient: indexed(address)
    amount: uint256
    stake: uint256
    bonded: uint256
    lostDispute: bool


event MarketAuthorized:
    market: indexed(address)
    allowed: bool


event StakeParamsChanged:
    minStake: uint256
    unbondingDelay: uint256


@deploy
def __init__(token_: IERC20, model_registry_: IModelRegistry, min_stake_: uint256, unbonding_delay_: uint256):
    """
    @param token_ The staking token (the payment token).
    @param model_registry_ The model registry providers pick models from.
    @param min_stake_ Stake a provider needs to register and to claim jobs.
    @param unbonding_delay_ Seconds between requesting unbonding and withdrawal.
    """
    ownable.__init__()
    token = token_
    modelRegistry = model_registry_
    self._set_stake_params(min_stake_, unbonding_delay_)


@external
@nonreentrant
def register(endpoint_: String[MAX_URL_LENGTH], peer_id_: String[MAX_PEER_ID_LENGTH], stake_amount: uint256):
    """
    @notice Registers the caller as a provider and stakes `stake_amount`
            (needs an allowance). Registering twice reverts.
    @param endpoint_ Public URL of the provider's OpenAI-compatible gateway.
    @param peer_id_ libp2p peer id used for gossip.
    @param stake_amount Initial stake, at least `minStake`.
    """
    assert not self._load(msg.sender).registered, "providers: already registered"
    assert len(endpoint_) > 0, "providers: endpoint is empty"
    assert stake_amount >= self.minStake, "providers: stake below minStake"
    assert stake_amount <= MAX_STAKE, "providers: stake above 2**112 - 1"
    self._store(msg.sender, Account(stake=stake_amount, bonded=0, registered=True, jobsCompleted=0))
    self.endpoint[msg.sender] = endpoint_
    self.peerId[msg.sender] = peer_id_
    log ProviderRegistered(provider=msg.sender, endpoint=endpoint_, peerId=peer_id_, stake=stake_amount)
    token_transfers._pull(token, msg.sender, stake_amount)


@external
def updateEndpoint(endpoint_: String[MAX_URL_LENGTH], peer_id_: String[MAX_PEER_ID_LENGTH]):
    """
    @notice Changes the caller's endpoint URL and libp2p peer id.
    @param endpoint_ New public URL; must not be empty.
    @param peer_id_ New libp2p peer id.
    """
    self._check_registered(msg.sender)
    assert len(endpoint_) > 0, "providers: endpoint is empty"
    self.endpoint[msg.sender] = endpoint_
    self.peerId[msg.sender] = peer_id_
    log ProviderEndpointChanged(provider=msg.sender, endpoint=endpoint_, peerId=peer_id_)


@external
def setModelPrice(modelId: uint256, pricePer1kTokens: uint256):
    """
    @notice Starts serving a model at a price, changes the price, or stops
            serving it (price 0).
    @param modelId A registered, active model or agent.
    @param pricePer1kTokens Price per 1,000 tokens; 0 stops serving.
    """
    self._check_registered(msg.sender)
    if pricePer1kTokens > 0:
        owner: address = empty(address)
        share: uint256 = 0
        active: bool = False
        owner, share, active = staticcall modelRegistry.modelTerms(modelId)
        assert active, "providers: model not registered or deprecated"
    self.modelPrice[msg.sender][modelId] = pricePer1kTokens
    log ModelServed(provider=msg.sender, modelId=modelId, pricePer1kTokens=pricePer1kTokens)


@external
@nonreentrant
def addStake(amount: uint256):
    """
    @notice Adds `amount` to the caller's stake (needs an allowance).
    @param amount Tokens to add; must not be zero.
    """
    self._check_registered(msg.sender)
    assert amount > 0, "providers: amount is zero"
    account: Account = self._load(msg.sender)
    account.stake += amount
    assert account.stake <= MAX_STAKE, "providers: stake above 2**112 - 1"
    self._store(msg.sender, account)
    log StakeAdded(provider=msg.sender, amount=amount, stake=account.stake)
    token_transfers._pull(token, msg.sender, amount)


@external
def requestUnbond(amount: uint256):
    """
    @notice Moves unbonded stake into the unbonding queue; it can be
            withdrawn after `unbondingDelay`. Restarts the delay for the
            whole queue.
    @param amount Tokens to unbond; at most stake minus bonded.
    """
    account: Account = self._load(msg.sender)
    assert account.registered, "providers: not registered"
    assert amount > 0, "providers: amount is zero"
    assert amount <= account.stake - account.bonded, "providers: amount exceeds unbonded stake"
    account.stake -= amount
    self._store(msg.sender, account)
    record: Record = self._records[msg.sender]
    record.unbonding += amount
    record.unbondingReadyAt = block.timestamp + self.unbondingDelay
    self._records[msg.sender] = record
    log UnbondingStarted(provider=msg.sender, amount=amount, stake=account.stake, unbonding=record.unbonding, readyAt=record.unbondingReadyAt)


@external
@nonreentrant
def withdrawUnbonded():
    """
    @notice Pays out the caller's unbonding queue once its delay has passed.
    """
    amount: uint256 = self._records[msg.sender].unbonding
    assert amount > 0, "providers: nothing unbonding"
    assert block.timestamp >= self._records[msg.sender].unbondingReadyAt, "providers: unbonding delay not over"
    self._records[msg.sender].unbonding = 0
    log UnbondedWithdrawn(provider=msg.sender, amount=amount)
    token_transfers._push(token, msg.sender, amount)


@external
def bond(provider: address, modelId: uint256, amount: uint256):
    """
    @notice Locks `amount` of a provider's stake for a job it claims
            (authorized markets only). Checks the provider is eligible:
            registered, serving `modelId`, stake >= minStake and enough free stake.
    @param provider The claiming provider.
    @param modelId The job's model or agent.
    @param amount Bond to lock.
    """
    self._check_market()
    account: Account = self._load(provider)
    assert account.registered, "providers: not registered"
    assert self.modelPrice[provider][modelId] > 0, "providers: model not served"
    assert account.stake >= self.minStake, "providers: stake below minStake"
    assert account.stake - account.bonded >= amount, "providers: free stake below bond"
    # NOTE: bonded + amount <= stake, checked just above, so no overflow.
    account.bonded = unsafe_add(account.bonded, amount)
    self._store(provider, account)
    log StakeBonded(provider=provider, market=msg.sender, amount=amount, bonded=account.bonded)


@external
def release(provider: address, amount: uint256, completed: bool):
    """
    @notice Unlocks a bond after a job ends well (authorized markets only).
    @param provider The provider whose bond ends.
    @param amount The bond locked by `bond`.
    @param completed True when the job was delivered and paid.
    """
    self._check_market()
    account: Account = self._load(provider)
    assert amount <= account.bonded, "providers: release exceeds bond"
    account.bonded = unsafe_sub(account.bonded, amount)
    if completed:
        # NOTE: the 31-bit counter saturates instead of overflowing into the flag bit.
        account.jobsCompleted = min(account.jobsCompleted + 1, COUNT_MASK)
    self._store(provider, account)
    log StakeReleased(provider=provider, market=msg.sender, amount=amount, bonded=account.bonded, completed=completed)


@external
@nonreentrant
def slash(provider: address, amount: uint256, recipient: address, lostDispute: bool):
    """
    @notice Slashes a bond to `recipient` (authorized markets only). Never
            more than what is bonded.
    @param provider The provider at fault.
    @param amount The bond of the failed job.
    @param recipient Who is compensated (the job's requester).
    @param lostDispute True when an arbiter ruled against the provider,
           False when it missed a deadline.
    """
    self._check_market()
    assert recipient != empty(address), "providers: recipient is the zero address"
    account: Account = self._load(provider)
    assert amount <= account.bonded, "providers: slash exceeds bond"
    # NOTE: amount <= bonded <= stake, so neither subtraction can underflow.
    account.bonded = unsafe_sub(account.bonded, amount)
    account.stake = unsafe_sub(account.stake, amount)
    self._store(provider, account)
    record: Record = self._records[provider]
    record.totalSlashed += amount
    if lostDispute:
        record.disputesLost += 1
    else:
        record.jobsFailed += 1
    self._records[provider] = record
    log ProviderSlashed(provider=provider, recipient=recipient, amount=amount, stake=account.stake, bonded=account.bonded, lostDispute=lostDispute)
    token_transfers._push(token, recipient, amount)


@external
def setMarket(market: address, allowed: bool):
    """
    @notice Authorizes a contract to bond, release and slash (owner only).
    @param market The job market contract.
    @param allowed True to authorize, False to revoke.
    """
    ownable._check_owner()
    assert market != empty(address), "providers: market is the zero address"
    self.markets[market] = allowed
    log MarketAuthorized(market=market, allowed=allowed)


@external
def setStakeParams(min_stake_: uint256, unbonding_delay_: uint256):
    """
    @notice Changes the minimum stake and the unbonding delay (owner only).
    @param min_stake_ New minimum stake.
    @param unbonding_delay_ New delay in seconds, at most 30 days.
    """
    ownable._check_owner()
    self._set_stake_params(min_stake_, unbonding_delay_)


@external
@view
def isRegistered(provider: address) -> bool:
    """
    @notice True when `provider` has registered.
    @param provider The address to check.
    @return bool Registration status.
    """
    return self._load(provider).registered


@external
@view
def freeStake(provider: address) -> uint256:
    """
    @notice Stake not locked by job bonds: what a new claim can bond.
    @param provider The provider.
    @return uint256 stake - bonded.
    """
    account: Account = self._load(provider)
    return account.stake - account.bonded


@external
@view
def providers(provider: address) -> Provider:
    """
    @notice Everything the registry holds about a provider's stake and record.
    @param provider The provider.
    @return Provider Registration, stake, bonded, unbonding queue and stats.
    """
    account: Account = self._load(provider)
    record: Record = self._records[provider]
    return Provider(
        registered=account.registered,
        stake=account.stake,
        bonded=account.bonded,
        unbonding=record.unbonding,
        unbondingReadyAt=record.unbondingReadyAt,
        jobsCompleted=account.jobsCompleted,
        jobsFailed=record.jobsFailed,
        disputesLost=record.disputesLost,
        totalSlashed=record.totalSlashed,
    )


@internal
def _set_stake_params(min_stake_: uint256, unbonding_delay_: uint256):
    assert unbonding_delay_ <= MAX_UNBONDING_DELAY, "providers: unbonding delay above 30 days"
    self.minStake = min_stake_
    self.unbondingDelay = unbonding_delay_
    log StakeParamsChanged(minStake=min_stake_, unbondingDelay=unbonding_delay_)


@internal
@view
def _check_registered(provider: address):
    assert self._load(provider).registered, "providers: not registered"


@internal
@view
def _load(provider: address) -> Account:
    packed: uint256 = self._accounts[provider]
    return Account(
        stake=packed >> STAKE_SHIFT,
        bonded=(packed >> BONDED_SHIFT) & AMOUNT_MASK,
        registered=packed & REGISTERED_FLAG != 0,
        jobsCompleted=packed & COUNT_MASK,
    )


@internal
def _store(provider: address, account: Account):
    # NOTE: stake <= MAX_STAKE (checked where it grows), bonded <= stake and
    # jobsCompleted <= COUNT_MASK, so no field spills into its neighbour.
    flag: uint256 = REGISTERED_FLAG if account.registered else 0
    self._accounts[provider] = (account.stake << STAKE_SHIFT) | (account.bonded << BONDED_SHIFT) | flag | account.jobsCompleted


@internal
@view
def _check_market():
    assert self.markets[msg.sender], "providers: caller is not an authorized market"
