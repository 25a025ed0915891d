# pragma version ~=0.4.3
"""
@title Event pump (benchmarks only)
@notice Emits many protocol events per transaction for the indexer benchmark
        (scripts/bench/indexer.py). It is a registered provider, a payer and a
        requester at once: each round of `pump` calls
        ProviderRegistry.setModelPrice (ModelServed), InferenceEscrow.deposit
        (Deposited, one of several channels) and JobMarket.createJob
        (JobCreated, a new job); every 8th round ModelRegistry.setTerms
        (ModelTermsChanged) and every 32nd registerModel (ModelRegistered,
        a new model). Never deploy it anywhere but a local chain.
"""

interface IERC20:
    def approve(spender: address, amount: uint256) -> bool: nonpayable

interface IModels:
    def registerModel(artifactCid: String[100], manifestCid: String[100], pricePer1kTokens: uint256, revenueShareBps: uint256) -> uint256: nonpayable
    def setTerms(modelId: uint256, pricePer1kTokens: uint256, revenueShareBps: uint256): nonpayable

interface IProviders:
    def register(endpoint_: String[256], peer_id_: String[128], stake_amount: uint256): nonpayable
    def setModelPrice(modelId: uint256, pricePer1kTokens: uint256): nonpayable

interface IEscrow:
    def deposit(provider: address, amount: uint256): nonpayable

interface IMarket:
    def createJob(modelId: uint256, inputCid: String[100], maxPayment: uint256, deadline: uint256, priorityProvider: address, priorityUntil: uint256) -> uint256: nonpayable

MAX_ROUNDS: constant(uint256) = 1_000
CID: constant(String[100]) = "bafkreibenchmarkeventpumpinputcid000000000000000000000000000"

token: public(immutable(IERC20))
models: public(immutable(IModels))
providers: public(immutable(IProviders))
escrow: public(immutable(IEscrow))
market: public(immutable(IMarket))

ownModel: public(uint256)


@deploy
def __init__(token_: IERC20, models_: IModels, providers_: IProviders, escrow_: IEscrow, market_: IMarket):
    token = token_
    models = models_
    providers = providers_
    escrow = escrow_
    market = market_


@external
def setup(stake: uint256):
    """
    @notice Approves the protocol contracts, registers as a provider with
            `stake` (the pump must hold it) and registers a model of its own.
    """
    extcall token.approve(providers.address, max_value(uint256))
    extcall token.approve(escrow.address, max_value(uint256))
    extcall token.approve(market.address, max_value(uint256))
    extcall providers.register("http://127.0.0.1:9/pump", "12D3KooWEventPump", stake)
    self.ownModel = extcall models.registerModel(CID, CID, 1_000, 500)


@external
def pump(rounds: uint256, model_ids: DynArray[uint256, 16], payees: DynArray[address, 16], seed: uint256, deadline: uint256):
    """
    @notice `rounds` rounds of protocol calls (see the contract notice).
    @param model_ids Active models to serve and create jobs for (cycled).
    @param payees Registered providers to deposit to (cycled; one channel each).
    @param seed Varies prices and amounts between calls.
    @param deadline Deadline of the jobs created.
    """
    own: uint256 = self.ownModel
    n_models: uint256 = len(model_ids)
    n_payees: uint256 = len(payees)
    for i: uint256 in range(rounds, bound=MAX_ROUNDS):
        model_id: uint256 = model_ids[i % n_models]
        extcall providers.setModelPrice(model_id, 1_000 + (seed + i) % 997)
        extcall escrow.deposit(payees[(seed + i) % n_payees], 1 + i % 3)
        extcall market.createJob(model_id, CID, 1 + (seed + i) % 5, deadline, empty(address), 0)
        if i % 8 == 0:
            extcall models.setTerms(own, 1_000 + i, 500 - (seed + i) % 100)
        if i % 32 == 0:
            extcall models.registerModel(CID, CID, 1_000, 300)
