"""Ethereum primitives for the request path: keccak-256 and address checksums, without per-call overhead.

``eth_utils.to_checksum_address`` validates and re-hashes on every call
(~20 µs); a gateway handles the same few addresses (its provider, its
contracts, its payers) over and over, so ``checksum`` caches them.
``keccak256`` calls pycryptodome directly, skipping eth_utils' type dispatch.
"""

from __future__ import annotations

from functools import lru_cache

from Crypto.Hash import keccak as _keccak
from eth_utils import to_checksum_address

__all__ = ["keccak256", "checksum"]


def keccak256(data: bytes) -> bytes:
    return _keccak.new(data=data, digest_bits=256).digest()


@lru_cache(maxsize=65_536)
def checksum(address: str) -> str:
    """EIP-55 checksummed form of a 0x-prefixed 20-byte hex address (cached; bounded LRU)."""
    return to_checksum_address(address)
