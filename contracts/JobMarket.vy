# pragma version ~=0.4.3
"""
@title Job market
@custom:contract-name JobMarket
@notice Escrowed agent and batch jobs. The requester's maximum payment is
        locked when the job is created. Lifecycle:
        Open -> Claimed -> Submitted -> (Disputed ->) Settled, or Refunded
        (cancelled while open, expired, or a dispute lost by the provider).
@dev Gas: a job is stored as one slot, the keccak256 commitment of its
     `Job` struct. Every call passes the struct back as calldata; the
     contract checks it against the commitment, applies the transition and
     stores the new commitment. The events carry every field, so indexers
     and clients rebuild the struct without calling the contract.
     Token balance of this contract == sum of `maxPayment` over jobs that are
     neither Settled nor Refunded.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from .interfaces import IModelRegistry
from .interfaces import IProviderRegistry
from .modules import protocol_fees
from .modules import token_transfers

initializes: ownable
initializes: protocol_fees[ownable := ownable]
exports: (
    ownable.owner,
    ownable.transfer_ownership,
    protocol_fees.treasury,
    protocol_fees.protocolFeeBps,
    protocol_fees.setTreasury,
    protocol_fees.setProtocolFee,
)

STATE_OPEN: constant(uint256) = 1
STATE_CLAIMED: constant(uint256) = 2
STATE_SUBMITTED: constant(uint256) = 3
STATE_DISPUTED: constant(uint256) = 4
STATE_SETTLED: constant(uint256) = 5
STATE_REFUNDED: constant(uint256) = 6

MAX_CID_LENGTH: constant(uint256) = 100
MAX_JOB_DURATION: constant(uint256) = 30 * 86_400
MAX_WINDOW: constant(uint256) = 7 * 86_400
# @dev A claim may bond up to 5x the job's maximum payment.
MAX_BOND_BPS: constant(uint256) = 50_000


struct Job:
    requester: address
    modelId: uint256
    # @dev keccak256 of the input CID string (the CID itself is in JobCreated).
    inputHash: bytes32
    maxPayment: uint256
    # @dev The job must be claimed and submitted by this time.
    deadline: uint256
    priorityProvider: address
    priorityUntil: uint256
    # @dev Terms snapshotted at creation, so later changes never touch open jobs.
    modelOwner: address
    revenueShareBps: uint256
    protocolFeeBps: uint256
    challengeWindow: uint256
    bond: uint256
    state: uint256
    provider: address
    charge: uint256
    outputHash: bytes32
    # @dev End of the challenge window (Submitted) or of arbitration (Disputed).
    windowEnds: uint256


token: public(immutable(IERC20))
modelRegistry: public(immutable(IModelRegistry))
providerRegistry: public(immutable(IProviderRegistry))

# @dev jobId -> keccak256(abi_encode(Job)); zero when the job does not exist.
jobCommitment: public(HashMap[uint256, bytes32])
jobCount: public(uint256)

arbiter: public(address)
# @dev challengeWindow | arbitrationWindow << 64 | bondBps << 128, one slot:
# createJob reads two of them, and one cold read costs 2,100 gas instead of 4,200.
_params: uint256
FIELD_MASK: constant(uint256) = 2**64 - 1


event JobCreated:
    jobId: indexed(uint256)
    requester: indexed(address)
    modelId: indexed(uint256)
    inputCid: String[MAX_CID_LENGTH]
    inputHash: bytes32
    maxPayment: uint256
    deadline: uint256
    priorityProvider: address
    priorityUntil: uint256
    modelOwner: address
    revenueShareBps: uint256
    protocolFeeBps: uint256
    challengeWindow: uint256
    bond: uint256


event JobClaimed:
    jobId: indexed(uint256)
    provider: indexed(address)
    bond: uint256


event JobSubmitted:
    jobId: indexed(uint256)
    provider: indexed(address)
    outputCid: String[MAX_CID_LENGTH]
    outputHash: bytes32
    usage: uint256
    charge: uint256
    challengeEnds: uint256


event JobDisputed:
    jobId: indexed(uint256)
    requester: indexed(address)
    reasonCid: String[MAX_CID_LENGTH]
    arbitrationEnds: uint256


event DisputeResolved:
    jobId: indexed(uint256)
    arbiter: indexed(address)
    providerWins: bool


# @notice The job's receipt: who was paid what for which output.
event JobSettled:
    jobId: indexed(uint256)
    requester: indexed(address)
    provider: indexed(address)
    modelId: uint256
    outputHash: bytes32
    charge: uint256
    providerAmount: uint256
    modelOwnerAmount: uint256
    protocolFee: uint256
    refund: uint256


event JobRefunded:
    jobId: indexed(uint256)
    requester: indexed(address)
    provider: indexed(address)
    refund: uint256
    slashed: uint256
    # @dev 1 cancelled while open, 2 expired unclaimed, 3 expired after claim, 4 dispute lost.
    reason: uint8


event MarketParamsChanged:
    arbiter: address
    challengeWindow: uint256
    arbitrationWindow: uint256
    bondBps: uint256


@deploy
def __init__(
    token_: IERC20,
    model_registry_: IModelRegistry,
    provider_registry_: IProviderRegistry,
    treasury_: address,
    protocol_fee_bps_: uint256,
    arbiter_: address,
    challenge_window_: uint256,
    arbitration_window_: uint256,
    bond_bps_: uint256,
):
    """
    @param token_ The payment token (USDC in production).
    @param model_registry_ Where models, owners and revenue shares live.
    @param provider_registry_ Where provider stake is bonded and slashed.
    @param treasury_ Receives the protocol fee.
    @param protocol_fee_bps_ Protocol fee, at most 1,000 (10 %).
    @param arbiter_ Resolves disputes.
    @param challenge_window_ Seconds a requester has to dispute a result.
    @param arbitration_window_ Seconds the arbiter has to resolve a dispute.
    @param bond_bps_ Claim bond as basis points of the job's maximum payment.
    """
    ownable.__init__()
    protocol_fees.__init__(treasury_, protocol_fee_bps_)
    token = token_
    modelRegistry = model_registry_
    providerRegistry = provider_registry_
    self._set_params(arbiter_, challenge_window_, arbitration_window_, bond_bps_)


@external
@nonreentrant
def createJob(
    modelId: uint256,
    inputCid: String[MAX_CID_LENGTH],
    maxPayment: uint256,
    deadline: uint256,
    priorityProvider: address,
    priorityUntil: uint256,
) -> uint256:
    """
    @notice Creates a job and locks `maxPayment` from the caller in escrow
            (needs an allowance).
    @param modelId The model or agent that runs the job.
    @param inputCid CID of the job input on IPFS.
    @param maxPayment The most the requester pays; the rest is refunded.
    @param deadline Time by which the job must be claimed and submitted.
    @param priorityProvider Provider with an exclusive claim window, or zero.
    @param priorityUntil End of that window; must be zero without one.
    @return uint256 The job id.
    """
    assert maxPayment > 0, "market: maxPayment is zero"
    # NOTE: keeps every product computed from maxPayment (the bond, up to 5x, and the
    # fee and revenue share in `_split`) below 2**256, so a job that was created can
    # always settle: without it a large charge made `finalize` overflow forever.
    assert maxPayment <= max_value(uint256) // MAX_BOND_BPS, "market: maxPayment too large"
    assert len(inputCid) >= 10, "market: input CID too short"
    assert deadline > block.timestamp, "market: deadline in the past"
    assert deadline <= block.timestamp + MAX_JOB_DURATION, "market: deadline beyond 30 days"
    if priorityProvider == empty(address):
        assert priorityUntil == 0, "market: priority window without a priority provider"
    else:
        assert priorityUntil > block.timestamp and priorityUntil <= deadline, "market: priority window outside (now, deadline]"
    owner: address = empty(address)
    share_bps: uint256 = 0
    active: bool = False
    owner, share_bps, active = staticcall modelRegistry.modelTerms(modelId)
    assert active, "market: model not registered or deprecated"

    params: uint256 = self._params
    job: Job = Job(
        requester=msg.sender,
        modelId=modelId,
        inputHash=keccak256(inputCid),
        maxPayment=maxPayment,
        deadline=deadline,
        priorityProvider=priorityProvider,
        priorityUntil=priorityUntil,
        modelOwner=owner,
        revenueShareBps=share_bps,
        protocolFeeBps=protocol_fees._fee_bps(),
        challengeWindow=params & FIELD_MASK,
        # NOTE: bondBps <= MAX_BOND_BPS and maxPayment <= max_value(uint256) // MAX_BOND_BPS.
        bond=maxPayment * (params >> 128) // 10_000,
        state=STATE_OPEN,
        provider=empty(address),
        charge=0,
        outputHash=empty(bytes32),
        windowEnds=0,
    )
    jobId: uint256 = self.jobCount + 1
    self.jobCount = jobId
    self.jobCommitment[jobId] = self._commit(job)
    log JobCreated(
        jobId=jobId,
        requester=msg.sender,
        modelId=modelId,
        inputCid=inputCid,
        inputHash=job.inputHash,
        maxPayment=maxPayment,
        deadline=deadline,
        priorityProvider=priorityProvider,
        priorityUntil=priorityUntil,
        modelOwner=owner,
        revenueShareBps=share_bps,
        protocolFeeBps=job.protocolFeeBps,
        challengeWindow=job.challengeWindow,
        bond=job.bond,
    )
    token_transfers._pull(token, msg.sender, maxPayment)
    return jobId


@external
@nonreentrant
def claimJob(jobId: uint256, job: Job):
    """
    @notice Claims an open job for the caller and bonds `job.bond` of its stake.
            During the priority window only the priority provider may claim.
    @param jobId The job.
    @param job The job's current struct (from the events).
    """
    self._check(jobId, job)
    assert job.state == STATE_OPEN, "market: job is not open"
    assert block.timestamp < job.deadline, "market: job deadline passed"
    if block.timestamp < job.priorityUntil:
        assert msg.sender == job.priorityProvider, "market: inside the priority provider's window"
    extcall providerRegistry.bond(msg.sender, job.modelId, job.bond)
    new: Job = job
    new.state = STATE_CLAIMED
    new.provider = msg.sender
    self.jobCommitment[jobId] = self._commit(new)
    log JobClaimed(jobId=jobId, provider=msg.sender, bond=job.bond)


@external
@nonreentrant
def submitResult(
    jobId: uint256, job: Job, outputCid: String[MAX_CID_LENGTH], outputHash: bytes32, usage: uint256, charge: uint256
):
    """
    @notice Submits the job's result and starts the challenge window (claiming provider only).
    @param jobId The job.
    @param job The job's current struct.
    @param outputCid CID of the output (with the agent transcript) on IPFS.
    @param outputHash Commitment to the output (e.g. the transcript root).
    @param usage Units of work done (tokens), for the record.
    @param charge What the provider charges, at most `job.maxPayment`.
    """
    self._check(jobId, job)
    assert job.state == STATE_CLAIMED, "market: job is not claimed"
    assert msg.sender == job.provider, "market: caller is not the job's provider"
    assert block.timestamp < job.deadline, "market: job deadline passed"
    assert len(outputCid) >= 10, "market: output CID too short"
    assert outputHash != empty(bytes32), "market: outputHash is zero"
    assert charge <= job.maxPayment, "market: charge above maxPayment"
    new: Job = job
    new.state = STATE_SUBMITTED
    new.charge = charge
    new.outputHash = outputHash
    new.windowEnds = block.timestamp + job.challengeWindow
    self.jobCommitment[jobId] = self._commit(new)
    log JobSubmitted(
        jobId=jobId,
        provider=msg.sender,
        outputCid=outputCid,
        outputHash=outputHash,
        usage=usage,
        charge=charge,
        challengeEnds=new.windowEnds,
    )


@external
@nonreentrant
def disputeJob(jobId: uint256, job: Job, reasonCid: String[MAX_CID_LENGTH]):
    """
    @notice Disputes a submitted result inside the challenge window (requester only).
            The arbiter then has `arbitrationWindow` seconds to rule.
    @param jobId The job.
    @param job The job's current struct.
    @param reasonCid CID of the requester's evidence on IPFS.
    """
    self._check(jobId, job)
    assert job.state == STATE_SUBMITTED, "market: job is not submitted"
    assert msg.sender == job.requester, "market: caller is not the requester"
    assert block.timestamp < job.windowEnds, "market: challenge window over"
    new: Job = job
    new.state = STATE_DISPUTED
    new.windowEnds = block.timestamp + ((self._params >> 64) & FIELD_MASK)
    self.jobCommitment[jobId] = self._commit(new)
    log JobDisputed(jobId=jobId, requester=msg.sender, reasonCid=reasonCid, arbitrationEnds=new.windowEnds)


@external
@nonreentrant
def resolveDispute(jobId: uint256, job: Job, providerWins: bool):
    """
    @notice Rules on a dispute (arbiter only): either the provider is paid as
            submitted, or the requester gets everything back plus the slashed bond.
    @param jobId The job.
    @param job The job's current struct.
    @param providerWins True pays the provider; False refunds and slashes.
    """
    self._check(jobId, job)
    assert msg.sender == self.arbiter, "market: caller is not the arbiter"
    assert job.state == STATE_DISPUTED, "market: job is not disputed"
    log DisputeResolved(jobId=jobId, arbiter=msg.sender, providerWins=providerWins)
    if providerWins:
        self._settle(jobId, job)
    else:
        self._refund(jobId, job, 4)


@external
@nonreentrant
def finalize(jobId: uint256, job: Job):
    """
    @notice Settles a job after its challenge window (anyone may call): pays
            the provider, the model owner's share and the protocol fee, and
            refunds the rest of the escrow. A dispute the arbiter left
            unresolved past its window settles the same way.
    @param jobId The job.
    @param job The job's current struct.
    """
    self._check(jobId, job)
    assert job.state == STATE_SUBMITTED or job.state == STATE_DISPUTED, "market: job is not submitted"
    assert block.timestamp >= job.windowEnds, "market: window not over"
    self._settle(jobId, job)


@external
@nonreentrant
def cancelJob(jobId: uint256, job: Job):
    """
    @notice Cancels a job nobody has claimed and refunds it (requester only).
    @param jobId The job.
    @param job The job's current struct.
    """
    self._check(jobId, job)
    assert job.state == STATE_OPEN, "market: job is not open"
    assert msg.sender == job.requester, "market: caller is not the requester"
    self._refund(jobId, job, 1)


@external
@nonreentrant
def refundExpired(jobId: uint256, job: Job):
    """
    @notice Refunds a job that passed its deadline unclaimed or claimed but
            not submitted (anyone may call). In the second case the
            provider's bond is slashed to the requester.
    @param jobId The job.
    @param job The job's current struct.
    """
    self._check(jobId, job)
    assert job.state == STATE_OPEN or job.state == STATE_CLAIMED, "market: job is not open or claimed"
    assert block.timestamp >= job.deadline, "market: deadline not reached"
    if job.state == STATE_OPEN:
        self._refund(jobId, job, 2)
    else:
        self._refund(jobId, job, 3)


@external
def setMarketParams(arbiter_: address, challenge_window_: uint256, arbitration_window_: uint256, bond_bps_: uint256):
    """
    @notice Changes the arbiter, windows and claim bond for jobs created from now on (owner only).
    @param arbiter_ New arbiter.
    @param challenge_window_ Seconds to dispute, 1 minute to 7 days.
    @param arbitration_window_ Seconds to arbitrate, 1 minute to 7 days.
    @param bond_bps_ Claim bond in basis points of maxPayment, at most 50,000.
    """
    ownable._check_owner()
    self._set_params(arbiter_, challenge_window_, arbitration_window_, bond_bps_)


@external
@view
def challengeWindow() -> uint256:
    """
    @notice Seconds a requester has to dispute a result, for jobs created now.
    @return uint256 The window.
    """
    return self._params & FIELD_MASK


@external
@view
def arbitrationWindow() -> uint256:
    """
    @notice Seconds the arbiter has to rule on a dispute opened now.
    @return uint256 The window.
    """
    return (self._params >> 64) & FIELD_MASK


@external
@view
def bondBps() -> uint256:
    """
    @notice Claim bond in basis points of maxPayment, for jobs created now.
    @return uint256 The bond rate.
    """
    return self._params >> 128


@external
@pure
def jobHash(job: Job) -> bytes32:
    """
    @notice The commitment of a job struct, for clients checking their copy.
    @param job A job struct.
    @return bytes32 keccak256(abi_encode(job)).
    """
    return keccak256(abi_encode(job))


@internal
def _settle(jobId: uint256, job: Job):
    new: Job = job
    new.state = STATE_SETTLED
    self.jobCommitment[jobId] = self._commit(new)
    provider_amount: uint256 = 0
    owner_amount: uint256 = 0
    fee: uint256 = 0
    provider_amount, owner_amount, fee = protocol_fees._split(job.charge, job.revenueShareBps, job.protocolFeeBps)
    # NOTE: charge <= maxPayment was checked in submitResult.
    refund: uint256 = unsafe_sub(job.maxPayment, job.charge)
    extcall providerRegistry.release(job.provider, job.bond, True)
    log JobSettled(
        jobId=jobId,
        requester=job.requester,
        provider=job.provider,
        modelId=job.modelId,
        outputHash=job.outputHash,
        charge=job.charge,
        providerAmount=provider_amount,
        modelOwnerAmount=owner_amount,
        protocolFee=fee,
        refund=refund,
    )
    token_transfers._push(token, job.provider, provider_amount)
    token_transfers._push(token, job.modelOwner, owner_amount)
    token_transfers._push(token, protocol_fees._treasury(), fee)
    token_transfers._push(token, job.requester, refund)


@internal
def _refund(jobId: uint256, job: Job, reason: uint8):
    new: Job = job
    new.state = STATE_REFUNDED
    self.jobCommitment[jobId] = self._commit(new)
    slashed: uint256 = 0
    if job.provider != empty(address):
        # NOTE: claimed, expired or lost a dispute: the bond goes to the requester.
        slashed = job.bond
        extcall providerRegistry.slash(job.provider, job.bond, job.requester, reason == 4)
    log JobRefunded(jobId=jobId, requester=job.requester, provider=job.provider, refund=job.maxPayment, slashed=slashed, reason=reason)
    token_transfers._push(token, job.requester, job.maxPayment)


@internal
@view
def _check(jobId: uint256, job: Job):
    commitment: bytes32 = self.jobCommitment[jobId]
    assert commitment != empty(bytes32), "market: unknown job"
    assert commitment == self._commit(job), "market: job does not match its commitment"


@internal
@pure
def _commit(job: Job) -> bytes32:
    return keccak256(abi_encode(job))


@internal
def _set_params(arbiter_: address, challenge_window_: uint256, arbitration_window_: uint256, bond_bps_: uint256):
    assert arbiter_ != empty(address), "market: arbiter is the zero address"
    assert challenge_window_ >= 60 and challenge_window_ <= MAX_WINDOW, "market: challenge window outside 1 min to 7 days"
    assert arbitration_window_ >= 60 and arbitration_window_ <= MAX_WINDOW, "market: arbitration window outside 1 min to 7 days"
    assert bond_bps_ <= MAX_BOND_BPS, "market: bond above MAX_BOND_BPS"
    self.arbiter = arbiter_
    # NOTE: windows <= 7 days and bond <= 50_000 all fit their 64 bits.
    self._params = challenge_window_ | (arbitration_window_ << 64) | (bond_bps_ << 128)
    log MarketParamsChanged(arbiter=arbiter_, challengeWindow=challenge_window_, arbitrationWindow=arbitration_window_, bondBps=bond_bps_)
