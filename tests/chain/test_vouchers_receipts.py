"""Pure Python tests of ``nodeai.chain.vouchers`` and ``nodeai.chain.receipts`` (no EVM).

The contract tests pin these helpers to the contracts on a few inputs; here
hypothesis checks their own laws over many: Merkle proofs, the redemption
arithmetic, and EIP-712 signing.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from eth_abi import encode
from eth_account import Account
from eth_keys import keys
from eth_utils import keccak, to_checksum_address
from hypothesis import assume, given
from hypothesis import strategies as st

from nodeai.chain.receipts import MerkleTree, Receipt, hash_pair, verify_proof
from nodeai.chain.vouchers import (
    DOMAIN_NAME,
    DOMAIN_VERSION,
    Voucher,
    domain,
    recover_signer,
    redeemable_delta,
    sign_voucher,
    voucher_digest,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UINT256 = st.integers(0, 2**256 - 1)
ADDRESSES = st.binary(min_size=20, max_size=20).map(to_checksum_address)
KEYS = st.integers(1, SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))
CHAIN_IDS = st.integers(1, 2**64)
LEAVES = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=80, unique=True)

RECEIPTS = st.builds(
    Receipt,
    request_hash=st.binary(min_size=32, max_size=32),
    provider=ADDRESSES,
    payer=ADDRESSES,
    model_id=UINT256,
    tokens_in=st.integers(0, 10**9),
    tokens_out=st.integers(0, 10**9),
    latency_ms=st.integers(0, 10**6),
    amount=UINT256,
    timestamp=st.integers(0, 2**40),
)


# --- Merkle trees ------------------------------------------------------------------------------


@given(leaves=LEAVES)
def test_every_leaf_proves_into_the_root(leaves):
    tree = MerkleTree(leaves)
    depth = (len(leaves) - 1).bit_length()
    for i, leaf in enumerate(leaves):
        proof = tree.proof(i)
        assert len(proof) <= depth
        assert verify_proof(proof, tree.root, leaf)


@given(leaves=LEAVES, data=st.data())
def test_a_tampered_leaf_does_not_prove(leaves, data):
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1), label="index")
    byte = data.draw(st.integers(0, 31), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    tampered = bytearray(leaves[i])
    tampered[byte] ^= 1 << bit
    tampered = bytes(tampered)
    assume(tampered not in leaves)
    assert not verify_proof(tree.proof(i), tree.root, tampered)


@given(leaves=st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=40, unique=True), data=st.data())
def test_a_proof_does_not_move_to_a_leaf_elsewhere_in_the_tree(leaves, data):
    tree = MerkleTree(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1), label="i")
    j = data.draw(st.integers(0, len(leaves) - 1), label="j")
    # NOTE: with sorted pairs the two leaves of one pair share their proof's upper
    # part but not their sibling; only the same leaf proves with its own proof.
    assume(leaves[i] != leaves[j])
    assert not verify_proof(tree.proof(i), tree.root, leaves[j])


@given(receipts=st.lists(RECEIPTS, min_size=1, max_size=20, unique_by=lambda r: r.request_hash), data=st.data())
def test_receipt_trees_prove_every_receipt_and_refuse_a_tampered_one(receipts, data):
    tree = MerkleTree([r.leaf() for r in receipts])
    for i, r in enumerate(receipts):
        assert verify_proof(tree.proof(i), tree.root, r.leaf())
    i = data.draw(st.integers(0, len(receipts) - 1), label="index")
    r = receipts[i]
    field = data.draw(st.sampled_from(["tokens_in", "tokens_out", "latency_ms", "timestamp"]), label="field")
    tampered = replace(r, **{field: getattr(r, field) + 1})
    assert not verify_proof(tree.proof(i), tree.root, tampered.leaf())
    assert not verify_proof(tree.proof(i), tree.root, replace(r, amount=(r.amount + 1) % 2**256).leaf())


def test_leaf_is_the_double_hash_of_the_abi_encoded_receipt():
    r = Receipt(b"\x01" * 32, "0x" + "11" * 20, "0x" + "22" * 20, 3, 4, 5, 6, 7, 8)
    words = b"\x01" * 32 + bytes(12) + b"\x11" * 20 + bytes(12) + b"\x22" * 20 + b"".join(
        n.to_bytes(32, "big") for n in (3, 4, 5, 6, 7, 8)
    )
    assert len(words) == 9 * 32
    assert r.leaf() == keccak(keccak(words))
    assert r.leaf() != keccak(words)  # an inner node can never pass as a leaf


def test_tree_shapes():
    a, b, c = (keccak(text=x) for x in "abc")
    assert MerkleTree([a]).root == a and MerkleTree([a]).proof(0) == []
    assert MerkleTree([a, b]).root == hash_pair(a, b) == MerkleTree([b, a]).root
    # an odd node is carried up unpaired
    three = MerkleTree([a, b, c])
    assert three.root == hash_pair(hash_pair(a, b), c)
    assert three.proof(2) == [hash_pair(a, b)]
    assert three.proof(0) == [b, c]


def test_hash_pair_sorts_its_inputs():
    lo, hi = b"\x00" * 31 + b"\x01", b"\x01" + b"\x00" * 31
    assert hash_pair(lo, hi) == hash_pair(hi, lo) == keccak(lo + hi)
    assert hash_pair(lo, lo) == keccak(lo + lo)


def test_tree_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one leaf"):
        MerkleTree([])
    with pytest.raises(ValueError, match="32 bytes"):
        MerkleTree([b"\x00" * 31])
    tree = MerkleTree([keccak(text="a"), keccak(text="b")])
    with pytest.raises(IndexError):
        tree.proof(2)
    with pytest.raises(IndexError):
        tree.proof(-1)


# --- redemption arithmetic ---------------------------------------------------------------------

AMOUNTS = st.integers(0, 10**30)


@given(cumulative=AMOUNTS, already=AMOUNTS, balance=AMOUNTS)
def test_redeemable_delta_never_pays_beyond_the_voucher_or_the_deposit(cumulative, already, balance):
    delta = redeemable_delta(cumulative, already, balance)
    assert 0 <= delta <= balance
    assert already + delta <= max(cumulative, already)
    if cumulative > already and balance > 0:
        assert delta == min(cumulative - already, balance) > 0
    else:
        assert delta == 0


@given(cumulatives=st.lists(AMOUNTS, min_size=1, max_size=30), deposit=AMOUNTS)
def test_deltas_over_any_voucher_sequence_sum_to_min_of_highest_and_deposit(cumulatives, deposit):
    redeemed, balance, paid = 0, deposit, 0
    for cumulative in cumulatives:
        delta = redeemable_delta(cumulative, redeemed, balance)
        redeemed += delta
        balance -= delta
        paid += delta
        assert redeemed <= max(cumulatives)
    assert paid == redeemed == min(max(cumulatives), deposit)
    # replaying the whole sequence pays nothing more
    assert all(redeemable_delta(c, redeemed, balance) == 0 for c in cumulatives)


@given(steps=st.lists(st.tuples(st.booleans(), st.integers(0, 10**12)), min_size=1, max_size=40))
def test_deposits_and_vouchers_interleaved(steps):
    """Top-ups between redemptions: once the provider redeems its highest
    voucher after the last deposit, everything owed (up to the deposits) is paid."""
    redeemed = balance = deposited = highest = paid = 0
    for is_deposit, amount in steps:
        if is_deposit:
            balance += amount
            deposited += amount
        else:
            highest = max(highest, amount)
            delta = redeemable_delta(amount, redeemed, balance)
            redeemed, balance, paid = redeemed + delta, balance - delta, paid + delta
        assert redeemed <= highest and redeemed <= deposited
        assert balance == deposited - redeemed
    paid += redeemable_delta(highest, redeemed, balance)
    assert paid == min(highest, deposited)


@pytest.mark.parametrize("args", [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])
def test_redeemable_delta_rejects_negative_amounts(args):
    with pytest.raises(ValueError, match=">= 0"):
        redeemable_delta(*args)


# --- EIP-712 signing ---------------------------------------------------------------------------

VOUCHERS = st.builds(Voucher, payer=ADDRESSES, provider=ADDRESSES, model_id=UINT256, cumulative_amount=UINT256, expiry=UINT256)


def _manual_digest(v: Voucher, chain_id: int, escrow: str) -> bytes:
    domain_type = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    separator = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [domain_type, keccak(text=DOMAIN_NAME), keccak(text=DOMAIN_VERSION), chain_id, escrow],
        )
    )
    voucher_type = keccak(
        text="Voucher(address payer,address provider,uint256 modelId,uint256 cumulativeAmount,uint256 expiry)"
    )
    struct = keccak(
        encode(["bytes32", "address", "address", "uint256", "uint256", "uint256"], [voucher_type, *v.as_tuple()])
    )
    return keccak(b"\x19\x01" + separator + struct)


@given(v=VOUCHERS, chain_id=CHAIN_IDS, escrow=ADDRESSES)
def test_digest_is_the_eip712_hash(v, chain_id, escrow):
    assert voucher_digest(v, chain_id, escrow) == _manual_digest(v, chain_id, escrow)


@given(key=KEYS, v=VOUCHERS, chain_id=CHAIN_IDS, escrow=ADDRESSES)
def test_sign_and_recover_round_trip(key, v, chain_id, escrow):
    signer = Account.from_key(key).address
    v = replace(v, payer=signer)
    signature = sign_voucher(v, key, chain_id, escrow)
    assert len(signature) == 65 and signature[64] in (27, 28)
    assert int.from_bytes(signature[32:64], "big") <= SECP256K1_N // 2  # low s, as the contract requires
    assert recover_signer(v, signature, chain_id, escrow) == signer
    # the raw signature over the digest recovers the same key: what ecrecover does on chain
    sig = keys.Signature(vrs=(signature[64] - 27, int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")))
    assert sig.recover_public_key_from_msg_hash(voucher_digest(v, chain_id, escrow)).to_checksum_address() == signer
    # the hex form of the key signs the same bytes
    assert sign_voucher(v, "0x" + key.hex(), chain_id, escrow) == signature


@given(key=KEYS, v=VOUCHERS, chain_id=CHAIN_IDS, escrow=ADDRESSES, other_escrow=ADDRESSES, data=st.data())
def test_a_signature_binds_the_voucher_chain_and_escrow(key, v, chain_id, escrow, other_escrow, data):
    signer = Account.from_key(key).address
    v = replace(v, payer=signer)
    signature = sign_voucher(v, key, chain_id, escrow)
    other_chain = data.draw(CHAIN_IDS.filter(lambda c: c != chain_id), label="other_chain")
    assert recover_signer(v, signature, other_chain, escrow) != signer
    if other_escrow != escrow:
        assert recover_signer(v, signature, chain_id, other_escrow) != signer
    field = data.draw(st.sampled_from(["model_id", "cumulative_amount", "expiry"]), label="field")
    tampered = replace(v, **{field: (getattr(v, field) + 1) % 2**256})
    assert recover_signer(tampered, signature, chain_id, escrow) != signer


def test_voucher_message_and_domain_are_checksummed():
    v = Voucher("0x" + "ab" * 20, "0x" + "cd" * 20, 1, 2, 3)
    assert v.message() == {
        "payer": to_checksum_address("0x" + "ab" * 20), "provider": to_checksum_address("0x" + "cd" * 20),
        "modelId": 1, "cumulativeAmount": 2, "expiry": 3,
    }  # fmt: skip
    assert v.to_json() == {"payer": v.payer, "provider": v.provider, "model_id": 1, "cumulative_amount": 2, "expiry": 3}
    assert domain(5, "0x" + "ef" * 20) == {
        "name": "NodeAI InferenceEscrow", "version": "1", "chainId": 5, "verifyingContract": to_checksum_address("0x" + "ef" * 20),
    }  # fmt: skip
    # lower- and mixed-case addresses sign the same digest
    assert voucher_digest(v, 1, "0x" + "ef" * 20) == voucher_digest(
        replace(v, payer=to_checksum_address(v.payer)), 1, to_checksum_address("0x" + "ef" * 20)
    )
