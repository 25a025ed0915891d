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
     by JobMarket (snapshotted at job creation) and InferenceEscrow.
"""

MAX_REVENUE_SHARE_BPS: constant(uint256) = 5_000
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


models: public(HashMap[uint256, Model])
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
    base: Model = self.models[baseModelId]
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
    model: Model = self._owned(modelId)
    assert not model.deprecated, "models: model is deprecated"
    self._check_cid(artifactCid)
    if model.kind == KIND_MODEL:
        self._check_cid(manifestCid)
    version: uint256 = model.version + 1
    self.models[modelId].version = version
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
    self._owned(modelId)
    assert revenueShareBps <= MAX_REVENUE_SHARE_BPS, "models: revenue share above MAX_REVENUE_SHARE_BPS"
    self.models[modelId].pricePer1kTokens = pricePer1kTokens
    self.models[modelId].revenueShareBps = revenueShareBps
    log ModelTermsChanged(modelId=modelId, pricePer1kTokens=pricePer1kTokens, revenueShareBps=revenueShareBps)


@external
def transferModelOwnership(modelId: uint256, newOwner: address):
    """
    @notice Hands a model or agent, and its future revenue, to `newOwner` (owner only).
    @param modelId The entry to hand over.
    @param newOwner The new owner; must not be the zero address.
    """
    self._owned(modelId)
    assert newOwner != empty(address), "models: new owner is the zero address"
    self.models[modelId].owner = newOwner
    log ModelOwnershipTransferred(modelId=modelId, previousOwner=msg.sender, newOwner=newOwner)


@external
def deprecate(modelId: uint256):
    """
    @notice Deprecates a model or agent (owner only): no new jobs or agents may
            use it; running jobs and vouchers still settle.
    @param modelId The entry to deprecate.
    """
    model: Model = self._owned(modelId)
    assert not model.deprecated, "models: model is deprecated"
    self.models[modelId].deprecated = True
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
    model: Model = self.models[modelId]
    return model.owner, model.revenueShareBps, model.owner != empty(address) and not model.deprecated


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
    self.models[modelId] = Model(
        owner=msg.sender,
        kind=kind,
        baseModelId=baseModelId,
        version=1,
        pricePer1kTokens=pricePer1kTokens,
        revenueShareBps=revenueShareBps,
        deprecated=False,
    )
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
def _owned(modelId: uint256) -> Model:
    model: Model = self.models[modelId]
    assert model.owner != empty(address), "models: model not registered"
    assert model.owner == msg.sender, "models: caller is not the model owner"
    return model


@internal
@pure
def _check_cid(cid: String[MAX_CID_LENGTH]):
    # NOTE: a CIDv0 is 46 characters and a base32 CIDv1 59; anything shorter
    # than 10 cannot be a CID. Full parsing is left to clients.
    assert len(cid) >= 10, "models: CID too short"
