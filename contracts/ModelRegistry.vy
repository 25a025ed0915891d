# pragma version ~=0.4.3
"""
@title Model registry
@custom:contract-name ModelRegistry
@notice Models and agents of the NodeAI marketplace. A model is an artifact
        pinned on IPFS (weights) with a manifest; an agent is a spec pinned on
        IPFS (tools, policy, prompt) that runs on a registered model. Both share
        one id space so jobs and vouchers name either the same way.
@dev Only the owner of an entry may publish versions, change its price or
     revenue share, hand it over or deprecate it. The revenue share is read
     by JobMarket (snapshotted at job creation) and InferenceEscrow (at
     redemption). A share increase applies only `SHARE_INCREASE_DELAY` after
     it is announced, so an owner cannot raise its cut of vouchers a provider
     has already earned: providers redeem before it applies.
"""

MAX_REVENUE_SHARE_BPS: constant(uint256) = 5_000
SHARE_INCREASE_DELAY: constant(uint256) = 7 * 86_400
MAX_CID_LENGTH: constant(uint256) = 100

KIND_MODEL: constant(uint8) = 0
KIND_AGENT: constant(uint8) = 1


struct Model:
    owner: address
    kind: uint8
    # @dev For an agent: the model it runs on; 0 for a model.
    baseModelId: uint256
    version: uint256
    pricePer1kTokens: uint256
    revenueShareBps: uint256
    deprecated: bool


# @dev What every payment reads, packed into one slot (see `_load_terms`):
# owner (160 bits) | share (16) | deprecated (1) | kind (1) | pending share (16) | pending since (62).
struct Terms:
    owner: address
    revenueShareBps: uint256
    deprecated: bool
    kind: uint8
    pendingShareBps: uint256
    pendingAt: uint256


struct Info:
    baseModelId: uint256
    version: uint256
    pricePer1kTokens: uint256


SHARE_SHIFT: constant(uint256) = 160
DEPRECATED_BIT: constant(uint256) = 176
KIND_BIT: constant(uint256) = 177
PENDING_SHARE_SHIFT: constant(uint256) = 178
PENDING_AT_SHIFT: constant(uint256) = 194
ADDRESS_MASK: constant(uint256) = 2**160 - 1
SHARE_MASK: constant(uint256) = 2**16 - 1

_terms: HashMap[uint256, uint256]
_info: HashMap[uint256, Info]
artifactCid: public(HashMap[uint256, String[MAX_CID_LENGTH]])
manifestCid: public(HashMap[uint256, String[MAX_CID_LENGTH]])
# @dev Ids start at 1 so that 0 means "no model".
modelCount: public(uint256)


event ModelRegistered:
    modelId: indexed(uint256)
    owner: indexed(address)
    kind: uint8
    baseModelId: uint256
    artifactCid: String[MAX_CID_LENGTH]
    manifestCid: String[MAX_CID_LENGTH]
    pricePer1kTokens: uint256
    revenueShareBps: uint256


event ModelVersionPublished:
    modelId: indexed(uint256)
    version: uint256
    artifactCid: String[MAX_CID_LENGTH]
    manifestCid: String[MAX_CID_LENGTH]


event ModelTermsChanged:
    modelId: indexed(uint256)
    pricePer1kTokens: uint256
    revenueShareBps: uint256
    # @dev When the share applies: now for a decrease, after SHARE_INCREASE_DELAY for an increase.
    shareEffectiveAt: uint256


event ModelOwnershipTransferred:
    modelId: indexed(uint256)
    previousOwner: indexed(address)
    newOwner: indexed(address)


event ModelDeprecated:
    modelId: indexed(uint256)


@deploy
def __init__():
    pass


@external
def registerModel(
    artifactCid: String[MAX_CID_LENGTH],
    manifestCid: String[MAX_CID_LENGTH],
    pricePer1kTokens: uint256,
    revenueShareBps: uint256,
) -> uint256:
    """
    @notice Registers a model whose weights are pinned on IPFS; the caller owns it.
    @param artifactCid CID of the model artifact (weights).
    @param manifestCid CID of the manifest (format, tokenizer, context size).
    @param pricePer1kTokens Suggested list price in token units per 1,000 tokens.
    @param revenueShareBps Share of every payment for this model paid to its owner.
    @return uint256 The new model id (version 1).
    """
    self._check_cid(artifactCid)
    self._check_cid(manifestCid)
    return self._register(KIND_MODEL, 0, artifactCid, manifestCid, pricePer1kTokens, revenueShareBps)


@external
def registerAgent(
    specCid: String[MAX_CID_LENGTH], baseModelId: uint256, pricePer1kTokens: uint256, revenueShareBps: uint256
) -> uint256:
    """
    @notice Registers an agent: a spec pinned on IPFS that runs on a registered model.
    @param specCid CID of the agent spec (tools, policy, model, prompt).
    @param baseModelId The active model the agent runs on.
    @param pricePer1kTokens Suggested list price in token units per 1,000 tokens.
    @param revenueShareBps Share of every payment for this agent paid to its owner.
    @return uint256 The new agent id (version 1).
    """
    self._check_cid(specCid)
    base: Terms = self._load_terms(baseModelId)
    assert base.owner != empty(address) and base.kind == KIND_MODEL, "models: base model not registered"
    assert not base.deprecated, "models: base model is deprecated"
    return self._register(KIND_AGENT, baseModelId, specCid, "", pricePer1kTokens, revenueShareBps)


@external
def publishVersion(modelId: uint256, artifactCid: String[MAX_CID_LENGTH], manifestCid: String[MAX_CID_LENGTH]):
    """
    @notice Publishes a new version of a model or agent (owner only).
    @param modelId The entry to update.
    @param artifactCid CID of the new artifact (or agent spec).
    @param manifestCid CID of the new manifest; may be empty for an agent.
    """
    terms: Terms = self._owned(modelId)
    assert not terms.deprecated, "models: model is deprecated"
    self._check_cid(artifactCid)
    if terms.kind == KIND_MODEL:
        self._check_cid(manifestCid)
    version: uint256 = self._info[modelId].version + 1
    self._info[modelId].version = version
    self.artifactCid[modelId] = artifactCid
    self.manifestCid[modelId] = manifestCid
    log ModelVersionPublished(modelId=modelId, version=version, artifactCid=artifactCid, manifestCid=manifestCid)


@external
def setTerms(modelId: uint256, pricePer1kTokens: uint256, revenueShareBps: uint256):
    """
    @notice Changes the list price and the owner's revenue share (owner only).
    @dev Jobs created before keep the share they were created with.
    @param modelId The entry to update.
    @param pricePer1kTokens New list price per 1,000 tokens.
    @param revenueShareBps New revenue share, at most `MAX_REVENUE_SHARE_BPS`.
    """
    terms: Terms = self._owned(modelId)
    assert revenueShareBps <= MAX_REVENUE_SHARE_BPS, "models: revenue share above MAX_REVENUE_SHARE_BPS"
    effective_at: uint256 = block.timestamp
    if revenueShareBps > terms.revenueShareBps:
        effective_at = block.timestamp + SHARE_INCREASE_DELAY
        terms.pendingShareBps = revenueShareBps
        terms.pendingAt = effective_at
    else:
        terms.revenueShareBps = revenueShareBps
        terms.pendingShareBps = 0
        terms.pendingAt = 0
    self._store_terms(modelId, terms)
    self._info[modelId].pricePer1kTokens = pricePer1kTokens
    log ModelTermsChanged(
        modelId=modelId, pricePer1kTokens=pricePer1kTokens, revenueShareBps=revenueShareBps, shareEffectiveAt=effective_at
    )


@external
def transferModelOwnership(modelId: uint256, newOwner: address):
    """
    @notice Hands a model or agent, and its future revenue, to `newOwner` (owner only).
    @param modelId The entry to hand over.
    @param newOwner The new owner; must not be the zero address.
    """
    terms: Terms = self._owned(modelId)
    assert newOwner != empty(address), "models: new owner is the zero address"
    terms.owner = newOwner
    self._store_terms(modelId, terms)
    log ModelOwnershipTransferred(modelId=modelId, previousOwner=msg.sender, newOwner=newOwner)


@external
def deprecate(modelId: uint256):
    """
    @notice Deprecates a model or agent (owner only): no new jobs or agents may
            use it; running jobs and vouchers still settle.
    @param modelId The entry to deprecate.
    """
    terms: Terms = self._owned(modelId)
    assert not terms.deprecated, "models: model is deprecated"
    terms.deprecated = True
    self._store_terms(modelId, terms)
    log ModelDeprecated(modelId=modelId)


@external
@view
def modelTerms(modelId: uint256) -> (address, uint256, bool):
    """
    @notice What the payment contracts need in one call.
    @param modelId The model or agent.
    @return address Owner (zero when not registered).
    @return uint256 Revenue share in basis points.
    @return bool True when registered and not deprecated.
    """
    terms: Terms = self._load_terms(modelId)
    return terms.owner, terms.revenueShareBps, terms.owner != empty(address) and not terms.deprecated


@external
@view
def models(modelId: uint256) -> Model:
    """
    @notice Everything the registry holds about a model or agent but its CIDs.
    @param modelId The model or agent.
    @return Model Owner, kind, base model, version, list price, share in force, deprecation.
    """
    terms: Terms = self._load_terms(modelId)
    info: Info = self._info[modelId]
    return Model(
        owner=terms.owner,
        kind=terms.kind,
        baseModelId=info.baseModelId,
        version=info.version,
        pricePer1kTokens=info.pricePer1kTokens,
        revenueShareBps=terms.revenueShareBps,
        deprecated=terms.deprecated,
    )


@external
@view
def pendingRevenueShare(modelId: uint256) -> (uint256, uint256):
    """
    @notice An announced share increase not in force yet.
    @param modelId The model or agent.
    @return uint256 The announced share (0 when none).
    @return uint256 When it applies (0 when none).
    """
    packed: uint256 = self._terms[modelId]
    pending_at: uint256 = packed >> PENDING_AT_SHIFT
    if pending_at == 0 or block.timestamp >= pending_at:
        return 0, 0
    return (packed >> PENDING_SHARE_SHIFT) & SHARE_MASK, pending_at


@internal
def _register(
    kind: uint8,
    baseModelId: uint256,
    artifactCid: String[MAX_CID_LENGTH],
    manifestCid: String[MAX_CID_LENGTH],
    pricePer1kTokens: uint256,
    revenueShareBps: uint256,
) -> uint256:
    assert revenueShareBps <= MAX_REVENUE_SHARE_BPS, "models: revenue share above MAX_REVENUE_SHARE_BPS"
    modelId: uint256 = self.modelCount + 1
    self.modelCount = modelId
    self._store_terms(
        modelId,
        Terms(owner=msg.sender, revenueShareBps=revenueShareBps, deprecated=False, kind=kind, pendingShareBps=0, pendingAt=0),
    )
    self._info[modelId] = Info(baseModelId=baseModelId, version=1, pricePer1kTokens=pricePer1kTokens)
    self.artifactCid[modelId] = artifactCid
    self.manifestCid[modelId] = manifestCid
    log ModelRegistered(
        modelId=modelId,
        owner=msg.sender,
        kind=kind,
        baseModelId=baseModelId,
        artifactCid=artifactCid,
        manifestCid=manifestCid,
        pricePer1kTokens=pricePer1kTokens,
        revenueShareBps=revenueShareBps,
    )
    return modelId


@internal
@view
def _owned(modelId: uint256) -> Terms:
    terms: Terms = self._load_terms(modelId)
    assert terms.owner != empty(address), "models: model not registered"
    assert terms.owner == msg.sender, "models: caller is not the model owner"
    return terms


@internal
@view
def _load_terms(modelId: uint256) -> Terms:
    """
    @dev Unpacks the terms slot; an announced share increase whose time has
         come is returned as the share in force.
    """
    packed: uint256 = self._terms[modelId]
    terms: Terms = Terms(
        owner=convert(packed & ADDRESS_MASK, address),
        revenueShareBps=(packed >> SHARE_SHIFT) & SHARE_MASK,
        deprecated=(packed >> DEPRECATED_BIT) & 1 == 1,
        kind=convert((packed >> KIND_BIT) & 1, uint8),
        pendingShareBps=(packed >> PENDING_SHARE_SHIFT) & SHARE_MASK,
        pendingAt=packed >> PENDING_AT_SHIFT,
    )
    if terms.pendingAt != 0 and block.timestamp >= terms.pendingAt:
        terms.revenueShareBps = terms.pendingShareBps
        terms.pendingShareBps = 0
        terms.pendingAt = 0
    return terms


@internal
def _store_terms(modelId: uint256, terms: Terms):
    # NOTE: shares <= MAX_REVENUE_SHARE_BPS fit 16 bits, kind is 0 or 1, and
    # pendingAt (a timestamp) fits 62 bits, so no field spills into another.
    packed: uint256 = convert(terms.owner, uint256) | (terms.revenueShareBps << SHARE_SHIFT)
    if terms.deprecated:
        packed |= 1 << DEPRECATED_BIT
    packed |= convert(terms.kind, uint256) << KIND_BIT
    packed |= (terms.pendingShareBps << PENDING_SHARE_SHIFT) | (terms.pendingAt << PENDING_AT_SHIFT)
    self._terms[modelId] = packed


@internal
@pure
def _check_cid(cid: String[MAX_CID_LENGTH]):
    # NOTE: a CIDv0 is 46 characters and a base32 CIDv1 59; anything shorter
    # than 10 cannot be a CID. Full parsing is left to clients.
    assert len(cid) >= 10, "models: CID too short"
