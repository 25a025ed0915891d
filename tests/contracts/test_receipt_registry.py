"""ReceiptRegistry: providers commit Merkle roots of their receipts; clients verify inclusion.

Trees are built with ``nodeai.chain.receipts`` exactly as the provider node
does, so these tests also pin the Python leaf and pair hashing to the contract's.
"""

from __future__ import annotations

from dataclasses import replace

import boa
import pytest
from eth_utils import keccak

from nodeai.chain.jobs import ZERO_ADDRESS
from nodeai.chain.receipts import MerkleTree, Receipt

from .conftest import actor, last_event, now

ZERO_ROOT = b"\x00" * 32


def make_receipts(s, n: int, provider=None, salt: str = "") -> list[Receipt]:
    provider = provider or s.provider
    start = now()
    return [
        Receipt(
            request_hash=keccak(text=f"request-{salt}-{i}"),
            provider=provider.address,
            payer=(s.payer if i % 2 else s.requester).address,
            model_id=s.model_id,
            tokens_in=100 + i,
            tokens_out=250 + 3 * i,
            latency_ms=40 + i % 17,
            amount=1_000 + 7 * i,
            timestamp=start + i,
        )
        for i in range(n)
    ]


def commit(s, receipts: list[Receipt], provider=None, tree: MerkleTree | None = None) -> MerkleTree:
    tree = tree or MerkleTree([r.leaf() for r in receipts])
    with boa.env.prank((provider or s.provider).address):
        s.receipts.commitReceipts(
            tree.root,
            len(receipts),
            sum(r.tokens_in for r in receipts),
            sum(r.tokens_out for r in receipts),
            sum(r.amount for r in receipts),
            min(r.timestamp for r in receipts),
            max(r.timestamp for r in receipts),
        )
    return tree


def verify(s, root: bytes, receipt: Receipt, proof: list[bytes]) -> bool:
    return s.receipts.verifyReceipt(root, receipt.as_tuple(), proof)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100])
def test_every_committed_receipt_verifies(suite, n):
    s = suite
    receipts = make_receipts(s, n)
    tree = commit(s, receipts)
    event = last_event(s.receipts, "ReceiptsCommitted")
    assert event == {
        "address": event["address"], "provider": s.provider.address, "root": tree.root, "count": n,
        "tokensIn": sum(r.tokens_in for r in receipts), "tokensOut": sum(r.tokens_out for r in receipts),
        "amount": sum(r.amount for r in receipts), "fromTimestamp": receipts[0].timestamp,
        "toTimestamp": receipts[-1].timestamp,
    }  # fmt: skip
    assert s.receipts.isCommitted(s.provider.address, tree.root)
    for i, receipt in enumerate(receipts):
        proof = tree.proof(i)
        assert len(proof) <= max(1, (n - 1).bit_length())
        assert verify(s, tree.root, receipt, proof), f"receipt {i} of {n}"


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100])
def test_tampered_receipt_does_not_verify(suite, n):
    s = suite
    receipts = make_receipts(s, n)
    tree = commit(s, receipts)
    for i in sorted({0, n // 2, n - 1}):
        r, proof = receipts[i], tree.proof(i)
        for tampered in (
            replace(r, amount=r.amount - 1),
            replace(r, tokens_out=r.tokens_out + 1),
            replace(r, payer=s.provider2.address),
            replace(r, request_hash=keccak(text="another request")),
            replace(r, timestamp=r.timestamp + 1),
            replace(r, latency_ms=0),
        ):
            assert not verify(s, tree.root, tampered, proof)


def test_proof_of_another_leaf_does_not_verify(suite):
    s = suite
    receipts = make_receipts(s, 7)
    tree = commit(s, receipts)
    assert not verify(s, tree.root, receipts[0], tree.proof(2))
    assert not verify(s, tree.root, receipts[6], tree.proof(0))
    assert not verify(s, tree.root, receipts[3], [])
    assert not verify(s, tree.root, receipts[3], tree.proof(3)[:-1])
    assert not verify(s, tree.root, receipts[3], tree.proof(3) + [keccak(text="extra")])


def test_wrong_or_uncommitted_root_does_not_verify(suite):
    s = suite
    receipts = make_receipts(s, 3)
    tree = commit(s, receipts)
    other = make_receipts(s, 3, salt="other")
    other_tree = MerkleTree([r.leaf() for r in other])  # built, never committed
    assert not verify(s, other_tree.root, other[0], other_tree.proof(0))
    assert not verify(s, other_tree.root, receipts[0], tree.proof(0))
    assert not verify(s, ZERO_ROOT, receipts[0], tree.proof(0))
    commit(s, other, tree=other_tree)
    assert verify(s, other_tree.root, other[0], other_tree.proof(0))
    assert not verify(s, other_tree.root, receipts[0], tree.proof(0))  # committed, but the wrong batch


def test_root_committed_by_another_provider_does_not_verify(suite):
    s = suite
    # provider's receipts, committed by provider2: nobody may vouch for another provider's metering
    receipts = make_receipts(s, 7)
    tree = commit(s, receipts, provider=s.provider2)
    assert s.receipts.isCommitted(s.provider2.address, tree.root)
    assert not s.receipts.isCommitted(s.provider.address, tree.root)
    for i, r in enumerate(receipts):
        assert not verify(s, tree.root, r, tree.proof(i))
    # ...while the same receipts naming provider2 verify against that root's tree
    theirs = [replace(r, provider=s.provider2.address) for r in receipts]
    their_tree = commit(s, theirs, provider=s.provider2)
    assert all(verify(s, their_tree.root, r, their_tree.proof(i)) for i, r in enumerate(theirs))


def test_single_receipt_batch_root_is_its_leaf(suite):
    s = suite
    [receipt] = make_receipts(s, 1)
    tree = commit(s, [receipt])
    assert tree.root == receipt.leaf() and tree.proof(0) == []
    assert verify(s, tree.root, receipt, [])


def test_receipt_leaf_matches_python(suite):
    s = suite
    receipts = make_receipts(s, 3) + [
        Receipt(b"\x00" * 32, ZERO_ADDRESS, ZERO_ADDRESS, 0, 0, 0, 0, 0, 0),
        Receipt(b"\xff" * 32, s.provider2.address, actor("x").address, *([2**256 - 1] * 6)),
    ]
    for r in receipts:
        leaf = bytes(s.receipts.receiptLeaf(r.as_tuple()))
        assert leaf == r.leaf()
        assert leaf == keccak(keccak(b"".join(_word(v) for v in r.as_tuple())))


def _word(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return bytes(12) + bytes.fromhex(value[2:])
    return value.to_bytes(32, "big")


# --- commitReceipts rules ----------------------------------------------------------------------


def test_commit_from_an_unregistered_caller_reverts(suite):
    s = suite
    receipts = make_receipts(s, 2, provider=s.requester)
    with boa.reverts("receipts: caller is not a registered provider"):
        commit(s, receipts, provider=s.requester)
    assert not s.receipts.isCommitted(s.requester.address, MerkleTree([r.leaf() for r in receipts]).root)


def _commit_raw(s, root=b"\x01" * 32, count=1, from_ts=0, to_ts=0, provider=None):
    with boa.env.prank((provider or s.provider).address):
        s.receipts.commitReceipts(root, count, 10, 20, 30, from_ts, to_ts)


def test_commit_with_a_zero_root_reverts(suite):
    with boa.reverts("receipts: root is zero"):
        _commit_raw(suite, root=ZERO_ROOT)


def test_commit_of_an_empty_batch_reverts(suite):
    with boa.reverts("receipts: empty batch"):
        _commit_raw(suite, count=0)


def test_commit_with_from_after_to_reverts(suite):
    s = suite
    with boa.reverts("receipts: fromTimestamp after toTimestamp"):
        _commit_raw(s, from_ts=101, to_ts=100)
    _commit_raw(s, from_ts=100, to_ts=100)  # a one-instant batch is fine
    assert s.receipts.isCommitted(s.provider.address, b"\x01" * 32)


def test_commit_of_the_same_root_twice_reverts(suite):
    s = suite
    receipts = make_receipts(s, 3)
    tree = commit(s, receipts)
    with boa.reverts("receipts: root already committed"):
        commit(s, receipts, tree=tree)
    assert s.receipts.isCommitted(s.provider.address, tree.root)


def test_another_provider_cannot_squat_a_root(suite):
    """Roots are kept per provider: provider2 committing provider's root first
    neither blocks provider's own commit nor makes provider's receipts verify."""
    s = suite
    receipts = make_receipts(s, 3)
    tree = MerkleTree([r.leaf() for r in receipts])
    commit(s, receipts, tree=tree, provider=s.provider2)
    assert not verify(s, tree.root, receipts[0], tree.proof(0))
    commit(s, receipts, tree=tree)
    assert all(verify(s, tree.root, r, tree.proof(i)) for i, r in enumerate(receipts))


def test_uncommitted_root_has_no_provider(suite):
    s = suite
    assert not s.receipts.isCommitted(s.provider.address, b"\x02" * 32)
    assert s.receipts.providerRegistry() == s.providers.address
