"""Per-request receipts and the Merkle trees that commit them on chain.

Leaves and pair hashing match ``contracts/ReceiptRegistry.vy``:
``leaf = keccak256(keccak256(abi_encode(Receipt)))`` and each parent is the
keccak256 of its two children sorted, as in OpenZeppelin's MerkleProof, so a
proof is just the list of siblings from the leaf up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from eth_abi import encode
from eth_utils import keccak

RECEIPT_ABI_TYPES = ["bytes32", "address", "address", "uint256", "uint256", "uint256", "uint256", "uint256", "uint256"]


@dataclass(frozen=True, slots=True)
class Receipt:
    request_hash: bytes
    provider: str
    payer: str
    model_id: int
    tokens_in: int
    tokens_out: int
    latency_ms: int
    amount: int
    timestamp: int

    def as_tuple(self) -> tuple:
        """The ABI tuple the contract takes (field order of the Vyper struct)."""
        return (
            self.request_hash,
            self.provider,
            self.payer,
            self.model_id,
            self.tokens_in,
            self.tokens_out,
            self.latency_ms,
            self.amount,
            self.timestamp,
        )

    def leaf(self) -> bytes:
        return keccak(keccak(encode(RECEIPT_ABI_TYPES, self.as_tuple())))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


class MerkleTree:
    """A Merkle tree over 32-byte leaves; an odd node is carried up unpaired."""

    def __init__(self, leaves: Sequence[bytes]):
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        if any(len(leaf) != 32 for leaf in leaves):
            raise ValueError("every leaf must be 32 bytes")
        self.levels: list[list[bytes]] = [list(leaves)]
        while len(self.levels[-1]) > 1:
            level = self.levels[-1]
            parents = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                parents.append(level[-1])
            self.levels.append(parents)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def proof(self, index: int) -> list[bytes]:
        """Sibling hashes from leaf ``index`` up to the root."""
        if not 0 <= index < len(self.levels[0]):
            raise IndexError(f"leaf index {index} outside 0..{len(self.levels[0]) - 1}")
        siblings = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                siblings.append(level[sibling])
            index //= 2
        return siblings


def verify_proof(proof: Sequence[bytes], root: bytes, leaf: bytes) -> bool:
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
