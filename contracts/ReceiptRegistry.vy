# pragma version ~=0.4.3
"""
@title Receipt registry
@custom:contract-name ReceiptRegistry
@notice Providers sign a receipt for every inference request and commit
        batches of them on chain as one Merkle root, with the batch's count
        and totals. Any client can then prove that its request was metered
        as billed, with `verifyReceipt`.
@dev Leaves are `keccak256(keccak256(abi_encode(Receipt)))` (double hashed, so
     an inner node can never pass as a leaf); pairs are hashed sorted, as in
     OpenZeppelin's and snekmate's Merkle proofs. One storage slot per batch,
     keyed by provider and root, so no provider can commit another's root first
     and block it.
"""

from snekmate.utils import merkle_proof_verification as merkle
from .interfaces import IProviderRegistry

MAX_PROOF_LENGTH: constant(uint256) = 32


struct Receipt:
    requestHash: bytes32
    provider: address
    payer: address
    modelId: uint256
    tokensIn: uint256
    tokensOut: uint256
    latencyMs: uint256
    amount: uint256
    timestamp: uint256


providerRegistry: public(immutable(IProviderRegistry))
# @dev provider -> Merkle root -> committed.
isCommitted: public(HashMap[address, HashMap[bytes32, bool]])


event ReceiptsCommitted:
    provider: indexed(address)
    root: indexed(bytes32)
    count: uint256
    tokensIn: uint256
    tokensOut: uint256
    amount: uint256
    fromTimestamp: uint256
    toTimestamp: uint256


@deploy
def __init__(provider_registry_: IProviderRegistry):
    """
    @param provider_registry_ Only registered providers may commit receipts.
    """
    providerRegistry = provider_registry_


@external
def commitReceipts(
    root: bytes32, count: uint256, tokensIn: uint256, tokensOut: uint256, amount: uint256, fromTimestamp: uint256, toTimestamp: uint256
):
    """
    @notice Commits a batch of the caller's receipts as a Merkle root (registered providers only).
    @param root Merkle root over the batch's receipt leaves.
    @param count Number of receipts in the batch.
    @param tokensIn Sum of input tokens over the batch.
    @param tokensOut Sum of output tokens over the batch.
    @param amount Sum of amounts charged over the batch.
    @param fromTimestamp Earliest receipt time in the batch.
    @param toTimestamp Latest receipt time in the batch.
    """
    assert root != empty(bytes32), "receipts: root is zero"
    assert count > 0, "receipts: empty batch"
    assert fromTimestamp <= toTimestamp, "receipts: fromTimestamp after toTimestamp"
    assert not self.isCommitted[msg.sender][root], "receipts: root already committed"
    assert staticcall providerRegistry.isRegistered(msg.sender), "receipts: caller is not a registered provider"
    self.isCommitted[msg.sender][root] = True
    log ReceiptsCommitted(
        provider=msg.sender,
        root=root,
        count=count,
        tokensIn=tokensIn,
        tokensOut=tokensOut,
        amount=amount,
        fromTimestamp=fromTimestamp,
        toTimestamp=toTimestamp,
    )


@external
@view
def verifyReceipt(root: bytes32, receipt: Receipt, proof: DynArray[bytes32, MAX_PROOF_LENGTH]) -> bool:
    """
    @notice True when `receipt` is in the batch committed as `root` by the
            receipt's own provider.
    @param root A committed batch root.
    @param receipt The receipt the client got with its response.
    @param proof Sibling hashes from the leaf up to the root.
    @return bool Inclusion verified.
    """
    if not self.isCommitted[receipt.provider][root]:
        return False
    return merkle._verify(proof, root, self._leaf(receipt))


@external
@pure
def receiptLeaf(receipt: Receipt) -> bytes32:
    """
    @notice The Merkle leaf of a receipt, for clients building trees.
    @param receipt The receipt.
    @return bytes32 keccak256(keccak256(abi_encode(receipt))).
    """
    return self._leaf(receipt)


@internal
@pure
def _leaf(receipt: Receipt) -> bytes32:
    return keccak256(keccak256(abi_encode(receipt)))
