"""Receipt signing, the persistent ledger/outbox and API keys (no chain, no model)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeai.chain.receipts import Receipt, verify_proof
from nodeai.chain.vouchers import Voucher, sign_voucher
from nodeai.serving.apikeys import ApiKeyStore
from nodeai.serving.client import receipt_from_headers, receipt_from_usage, verify_inclusion, verify_receipt
from nodeai.serving.errors import PaymentRequired
from nodeai.serving.ledger import Ledger
from nodeai.serving.payments import ChannelFunds
from nodeai.serving.receipts import (
    ReceiptSigner,
    decode_receipt_header,
    encode_receipt_header,
    receipt_from_json,
    request_hash,
    verify_receipt_signature,
)
from nodeai.serving.store import GatewayStore, StoreMismatch

PROVIDER_KEY = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
PROVIDER = Account.from_key(PROVIDER_KEY).address
PAYER_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"
PAYER = Account.from_key(PAYER_KEY).address
REGISTRY = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SIGNER = ReceiptSigner(PROVIDER_KEY, 31337, REGISTRY)


def receipt(i: int = 0, amount: int = 10) -> Receipt:
    return Receipt(request_hash(b"{}".decode(), f"id-{i}"), PROVIDER, PAYER, 1, 5 + i, 7, 12, amount, 1_700_000_000 + i)


@settings(max_examples=40)
@given(st.binary(min_size=32, max_size=32), st.integers(0, 2**256 - 1), st.integers(0, 2**32), st.integers(1, 2**64))
def test_fast_signature_verifies_with_eth_account(hash_: bytes, amount: int, tokens: int, chain_id: int) -> None:
    signer = ReceiptSigner(PROVIDER_KEY, chain_id, REGISTRY)
    signed = signer.sign(Receipt(hash_, PROVIDER, PAYER, 3, tokens, tokens, 9, amount, 1_700_000_000))
    assert verify_receipt_signature(signed, PROVIDER)
    assert receipt_from_json(signed.to_json()) == signed
    assert decode_receipt_header(encode_receipt_header(signed)) == signed


def test_tampered_or_foreign_receipts_fail_verification() -> None:
    signed = SIGNER.sign(receipt())
    tampered = receipt_from_json({**signed.to_json(), "amount": "11"})
    assert not verify_receipt(tampered)
    assert not verify_receipt(signed, provider=PAYER)
    other = ReceiptSigner(PAYER_KEY, 31337, REGISTRY)
    with pytest.raises(ValueError, match="names provider"):
        other.sign(receipt())
    assert verify_receipt(signed, PROVIDER, request_body="{}", response_id="id-0")
    assert not verify_receipt(signed, PROVIDER, request_body="{}", response_id="id-1")
    assert receipt_from_usage({"nodeai_receipt": signed.to_json()}) == signed
    assert receipt_from_headers({"X-NodeAI-Receipt": encode_receipt_header(signed)}) == signed
    with pytest.raises(ValueError, match="no nodeai_receipt"):
        receipt_from_usage({"prompt_tokens": 1})


def test_request_hash_is_over_canonical_json() -> None:
    assert request_hash({"b": 1, "a": [1, "é"]}, "x") == request_hash({"a": [1, "é"], "b": 1}, "x")
    assert request_hash({"a": 1}, "x") != request_hash({"a": 1}, "y")


# -- the store ----------------------------------------------------------------------------------------
def signed_voucher(cumulative: int, expiry: int = 2**40, model_id: int = 1) -> tuple[Voucher, bytes]:
    voucher = Voucher(PAYER, PROVIDER, model_id, cumulative, expiry)
    return voucher, sign_voucher(voucher, PAYER_KEY, 31337, ESCROW)


def test_store_belongs_to_one_provider(tmp_path: Path) -> None:
    GatewayStore(tmp_path / "g.db", PROVIDER).close()
    with pytest.raises(StoreMismatch, match="belongs to provider"):
        GatewayStore(tmp_path / "g.db", PAYER)


def test_redeemable_is_the_best_voucher_not_above_the_charged_total(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.db", PROVIDER)
    for cumulative, charged in ((100, 60), (160, 130), (230, 150)):
        voucher, signature = signed_voucher(cumulative)
        store.record_request(PAYER, 1, charged, SIGNER.sign(receipt(cumulative)), voucher, signature)
    # charged 150: the 100 voucher is the best one at or below it (160 would take 10 unserved)
    [best] = store.redeemable(now=1_000)
    assert (best.voucher.cumulative_amount, best.charged, best.gain) == (100, 150, 100)
    store.record_voucher(*signed_voucher(150))  # the client settles its exact total
    [best] = store.redeemable(now=1_000)
    assert best.voucher.cumulative_amount == 150
    # an expired voucher is never offered; a redeemed one neither
    store.record_voucher(*signed_voucher(150 - 1, expiry=500))
    store.mark_redeemed([(PAYER, 1, 150)])
    assert store.redeemable(now=1_000) == []
    store.close()


def test_restart_keeps_charges_so_a_replayed_voucher_is_refused(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.db", PROVIDER)
    ledger = Ledger(store)
    voucher, signature = signed_voucher(100)
    reservation = ledger.reserve(PAYER, 1, 80, voucher, signature)
    ledger.settle(reservation, 70, lambda amount: SIGNER.sign(receipt(0, amount)))
    store.close()
    reopened = Ledger(GatewayStore(tmp_path / "g.db", PROVIDER))
    assert reopened.account(PAYER, 1).charged == 70
    with pytest.raises(PaymentRequired, match="sign a voucher with cumulativeAmount >= 150"):
        reopened.reserve(PAYER, 1, 80, voucher, signature)
    reopened.store.close()


def test_the_deposit_must_cover_every_model_of_the_payer(tmp_path: Path) -> None:
    ledger = Ledger(GatewayStore(tmp_path / "g.db", PROVIDER))
    funds = ChannelFunds(balance=100, unlock_at=0, redeemed={1: 0, 2: 0})
    ledger.reserve(PAYER, 1, 70, *signed_voucher(70), funds=funds)
    with pytest.raises(PaymentRequired, match="deposit at least 10 more") as refused:
        ledger.reserve(PAYER, 2, 40, *signed_voucher(40, model_id=2), funds=funds)
    assert refused.value.code == "insufficient_deposit"
    ledger.reserve(PAYER, 2, 30, *signed_voucher(30, model_id=2), funds=funds)
    ledger.store.close()


def test_batches_keep_proofs_retrievable(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.db", PROVIDER)
    signed = [SIGNER.sign(receipt(i)) for i in range(5)]
    for s in signed:
        store.record_request(PAYER, 1, 0, s)
    batch = store.prepare_batch(3)
    assert batch is not None and [s.receipt for s in batch.receipts] == [s.receipt for s in signed[:3]]
    assert store.pending_receipts() == 2
    for s in signed[:3]:
        found = store.receipt_proof(s.receipt.request_hash)
        assert found is not None and found.root == batch.root and not found.committed
        assert verify_proof(found.proof, batch.root, s.receipt.leaf())
        assert verify_inclusion(s, batch.root, found.proof)
    assert not verify_inclusion(signed[3], batch.root, store.receipt_proof(signed[0].receipt.request_hash).proof)
    store.mark_batch_committed(batch.id, "0xabc")
    store.close()
    reopened = GatewayStore(tmp_path / "g.db", PROVIDER)
    found = reopened.receipt_proof(signed[2].receipt.request_hash)
    assert found is not None and found.committed and verify_proof(found.proof, batch.root, signed[2].receipt.leaf())
    unbatched = reopened.receipt_proof(signed[4].receipt.request_hash)
    assert unbatched is not None and unbatched.root is None
    assert [b.status for b in reopened.batches()] == ["committed"]
    reopened.close()


# -- API keys -----------------------------------------------------------------------------------------
def test_api_keys_are_stored_hashed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = ApiKeyStore.load(path)
    key = keys.create("ci", payer=PAYER)
    text = path.read_text()
    assert key not in text and key.split("_", 2)[2] not in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    reloaded = ApiKeyStore.load(path)
    entry = reloaded.authenticate(key)
    assert entry is not None and entry.payer == PAYER and entry.label == "ci"
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "nk_00000000_x", "", "Bearer", key + "x"):
        assert reloaded.authenticate(wrong) is None
    assert reloaded.revoke(entry.id) and reloaded.authenticate(key) is None
    other_salt = ApiKeyStore()
    assert other_salt.authenticate(key) is None
