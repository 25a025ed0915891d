"""The codec's one-word fast path decodes exactly what eth_abi decodes, and refuses what eth_abi refuses."""

from __future__ import annotations

import pytest
from eth_abi import decode, encode
from eth_utils import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from nodeai.indexer.codec import DecodeError, _word

ADDRESSES = st.binary(min_size=20, max_size=20).map(lambda b: to_checksum_address(b))


@given(st.integers(0, 2**256 - 1), st.integers(0, 255), ADDRESSES, st.booleans(), st.binary(min_size=32, max_size=32))
def test_fast_path_matches_eth_abi(u256, u8, address, flag, b32):
    for typ, value in (("uint256", u256), ("uint8", u8), ("address", address), ("bool", flag), ("bytes32", b32)):
        raw = encode([typ], [value])
        expected = decode([typ], raw)[0]
        got = _word("E", "f", typ, raw)
        if typ == "bytes32":
            assert got == "0x" + expected.hex()
        elif typ == "address":
            assert got == to_checksum_address(expected)
        else:
            assert got == expected


@pytest.mark.parametrize("typ, raw, message", [
    ("uint8", (256).to_bytes(32, "big"), "does not fit uint8"),
    ("address", (2**160).to_bytes(32, "big"), "non-zero padding"),
    ("bool", (2).to_bytes(32, "big"), "is not a bool"),
])  # fmt: skip
def test_fast_path_refuses_bad_padding(typ, raw, message):
    with pytest.raises(DecodeError, match=message):
        _word("E", "f", typ, raw)
