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


token: public(immutable(IERC20))
modelRegistry: public(immutable(IModelRegistry))

providers: public(HashMap[address, Provider])
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
    assert not self.providers[msg.sender].registered, "providers: already registered"
    assert len(endpoint_) > 0, "providers: endpoint is empty"
    assert stake_amount >= self.minStake, "providers: stake below minStake"
    self.providers[msg.sender].registered = True
    self.providers[msg.sender].stake = stake_amount
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
    stake: uint256 = self.providers[msg.sender].stake + amount
    self.providers[msg.sender].stake = stake
    log StakeAdded(provider=msg.sender, amount=amount, stake=stake)
    token_transfers._pull(token, msg.sender, amount)


@external
def requestUnbond(amount: uint256):
    """
    @notice Moves unbonded stake into the unbonding queue; it can be
            withdrawn after `unbondingDelay`. Restarts the delay for the
            whole queue.
    @param amount Tokens to unbond; at most stake minus bonded.
    """
    p: Provider = self.providers[msg.sender]
    assert p.registered, "providers: not registered"
    assert amount > 0, "providers: amount is zero"
    assert amount <= p.stake - p.bonded, "providers: amount exceeds unbonded stake"
    p.stake -= amount
    p.unbonding += amount
    p.unbondingReadyAt = block.timestamp + self.unbondingDelay
    self.providers[msg.sender] = p
    log UnbondingStarted(provider=msg.sender, amount=amount, stake=p.stake, unbonding=p.unbonding, readyAt=p.unbondingReadyAt)


@external
@nonreentrant
def withdrawUnbonded():
    """
    @notice Pays out the caller's unbonding queue once its delay has passed.
    """
    amount: uint256 = self.providers[msg.sender].unbonding
    assert amount > 0, "providers: nothing unbonding"
    assert block.timestamp >= self.providers[msg.sender].unbondingReadyAt, "providers: unbonding delay not over"
    self.providers[msg.sender].unbonding = 0
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
    p: Provider = self.providers[provider]
    assert p.registered, "providers: not registered"
    assert self.modelPrice[provider][modelId] > 0, "providers: model not served"
    assert p.stake >= self.minStake, "providers: stake below minStake"
    assert p.stake - p.bonded >= amount, "providers: free stake below bond"
    # NOTE: bonded + amount <= stake, checked just above, so no overflow.
    bonded: uint256 = unsafe_add(p.bonded, amount)
    self.providers[provider].bonded = bonded
    log StakeBonded(provider=provider, market=msg.sender, amount=amount, bonded=bonded)


@external
def release(provider: address, amount: uint256, completed: bool):
    """
    @notice Unlocks a bond after a job ends well (authorized markets only).
    @param provider The provider whose bond ends.
    @param amount The bond locked by `bond`.
    @param completed True when the job was delivered and paid.
    """
    self._check_market()
    bonded: uint256 = self.providers[provider].bonded
    assert amount <= bonded, "providers: release exceeds bond"
    bonded = unsafe_sub(bonded, amount)
    self.providers[provider].bonded = bonded
    if completed:
        self.providers[provider].jobsCompleted += 1
    log StakeReleased(provider=provider, market=msg.sender, amount=amount, bonded=bonded, completed=completed)


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
    p: Provider = self.providers[provider]
    assert amount <= p.bonded, "providers: slash exceeds bond"
    # NOTE: amount <= bonded <= stake, so neither subtraction can underflow.
    p.bonded = unsafe_sub(p.bonded, amount)
    p.stake = unsafe_sub(p.stake, amount)
    p.totalSlashed += amount
    if lostDispute:
        p.disputesLost += 1
    else:
        p.jobsFailed += 1
    self.providers[provider] = p
    log ProviderSlashed(provider=provider, recipient=recipient, amount=amount, stake=p.stake, bonded=p.bonded, lostDispute=lostDispute)
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
    return self.providers[provider].registered


@external
@view
def freeStake(provider: address) -> uint256:
    """
    @notice Stake not locked by job bonds: what a new claim can bond.
    @param provider The provider.
    @return uint256 stake - bonded.
    """
    return self.providers[provider].stake - self.providers[provider].bonded


@internal
def _set_stake_params(min_stake_: uint256, unbonding_delay_: uint256):
    assert unbonding_delay_ <= MAX_UNBONDING_DELAY, "providers: unbonding delay above 30 days"
    self.minStake = min_stake_
    self.unbondingDelay = unbonding_delay_
    log StakeParamsChanged(minStake=min_stake_, unbondingDelay=unbonding_delay_)


@internal
@view
def _check_registered(provider: address):
    assert self.providers[provider].registered, "providers: not registered"


@internal
@view
def _check_market():
    assert self.markets[msg.sender], "providers: caller is not an authorized market"
