"""Voucher redemption and receipt-root commits in batches, against the gateway's real store on anvil."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from eth_utils import keccak

from nodeai.chain.fees import split_payment
from nodeai.chain.receipts import Receipt
from nodeai.chain.vouchers import Voucher, sign_voucher
from nodeai.node.chain import ProviderChain
from nodeai.node.config import BatchingConfig, ProviderConfig, ModelOffer, TxConfig
from nodeai.node.metrics import NodeMetrics
from nodeai.node.settlement import ReceiptSource, Settler, VoucherSource, receipts_due, vouchers_due
from nodeai.node.state import StateStore
from nodeai.node.tx import TxManager
from nodeai.serving.receipts import ReceiptSigner
from nodeai.serving.store import GatewayStore

from .conftest import NODE_KEY, ONE, PRICE, Suite

pytestmark = pytest.mark.integration
NODE = Account.from_key(NODE_KEY)


def setup(suite: Suite, tmp_path: Path, **batching) -> tuple[Settler, GatewayStore, NodeMetrics]:
    metrics = NodeMetrics()
    chain = ProviderChain(suite.w3, suite.deployment, TxManager(suite.w3, NODE, TxConfig(), metrics))
    chain.register(ProviderConfig(stake=100 * ONE, models=[ModelOffer(id=suite.model_id, price_per_1k_tokens=PRICE)]))
    store = GatewayStore(tmp_path / "gateway.db", NODE.address)
    config = BatchingConfig(**({"voucher_min_amount": 10**12, "receipt_min_count": 1000} | batching))
    return Settler(chain, StateStore(tmp_path / "node.db"), config, store, store, metrics), store, metrics


def serve(suite: Suite, store: GatewayStore, requests: int, cost: int, first: int = 1) -> list[Receipt]:
    """What the gateway records for ``requests`` paid requests of ``cost`` each."""
    m = suite.market
    payer = m.accounts["requester"]
    signer = ReceiptSigner(NODE_KEY, suite.deployment.chain_id, m.receipts.address)
    now = m.now()
    receipts = []
    for i in range(first, first + requests):
        voucher = Voucher(payer.address, NODE.address, suite.model_id, i * cost, now + 86_400)
        signature = sign_voucher(voucher, payer.key, suite.deployment.chain_id, m.escrow.address)
        receipt = Receipt(keccak(text=f"request {i}"), NODE.address, payer.address, suite.model_id, 10 + i, 20 + i,
                          100, cost, now + i)
        store.record_request(payer.address, suite.model_id, i * cost, signer.sign(receipt), voucher, signature)
        receipts.append(receipt)
    return receipts


def test_gateway_store_is_both_sources(tmp_path: Path) -> None:
    store = GatewayStore(tmp_path / "g.db", NODE.address)
    assert isinstance(store, VoucherSource) and isinstance(store, ReceiptSource)


def test_thresholds() -> None:
    config = BatchingConfig(voucher_min_amount=100, voucher_expiry_margin=60, receipt_min_count=10, receipt_max_age=300)
    assert not vouchers_due(99, 3, 3_600, config) and vouchers_due(100, 3, 3_600, config)
    assert vouchers_due(1, 1, 60, config) and not vouchers_due(0, 1, 0, config) and not vouchers_due(5, 0, 0, config)
    assert not receipts_due(9, 299, config) and receipts_due(10, 0, config) and receipts_due(1, 300, config)
    assert not receipts_due(0, 10**6, config)


def test_vouchers_are_redeemed_in_one_batch_once_due_and_never_twice(suite: Suite, tmp_path: Path) -> None:
    m = suite.market
    settler, store, metrics = setup(suite, tmp_path)
    m.send("requester", m.escrow.functions.deposit(NODE.address, 50 * ONE), "deposit")
    serve(suite, store, 5, 2 * ONE)
    before = m.balance(NODE.address), m.balance("publisher"), m.balance("treasury")
    nonce = suite.nonce(NODE.address)

    assert settler.run_once()["vouchers_redeemed"] == 0  # 10 TUSD owed, threshold not reached
    assert suite.nonce(NODE.address) == nonce

    settler.config = BatchingConfig(voucher_min_amount=10 * ONE, receipt_min_count=1000)
    done = settler.run_once()
    assert done["vouchers_redeemed"] == 1 and done["amount_redeemed"] == 10 * ONE  # the highest voucher pays all
    assert suite.nonce(NODE.address) == nonce + 1
    split = split_payment(10 * ONE, 1_000, 250)
    assert (m.balance(NODE.address), m.balance("publisher"), m.balance("treasury")) == (
        before[0] + split.provider, before[1] + split.model_owner, before[2] + split.protocol_fee)
    assert store.redeemable(m.now()) == []
    assert settler.run_once()["vouchers_redeemed"] == 0 and suite.nonce(NODE.address) == nonce + 1
    assert metrics.vouchers._value.get() == 1 and metrics.voucher_amount._value.get() == 10 * ONE


def test_a_redemption_found_on_chain_after_a_crash_is_only_marked(suite: Suite, tmp_path: Path) -> None:
    m = suite.market
    settler, store, _ = setup(suite, tmp_path, voucher_min_amount=1)
    m.send("requester", m.escrow.functions.deposit(NODE.address, 50 * ONE), "deposit")
    serve(suite, store, 3, ONE)
    [top] = store.redeemable(m.now())
    settler.chain.tx.send(m.escrow.functions.redeem(top.voucher.as_tuple(), top.signature), "redeem")  # then "crash"
    nonce = suite.nonce(NODE.address)
    assert settler.run_once()["vouchers_redeemed"] == 0
    assert suite.nonce(NODE.address) == nonce and store.redeemable(m.now()) == []


def test_receipts_are_committed_as_a_verifiable_root_and_a_prepared_batch_survives_a_crash(
        suite: Suite, tmp_path: Path) -> None:
    m = suite.market
    settler, store, metrics = setup(suite, tmp_path, receipt_min_count=4)
    receipts = serve(suite, store, 3, ONE)
    nonce = suite.nonce(NODE.address)
    assert settler.run_once()["receipts_committed"] == 0 and suite.nonce(NODE.address) == nonce

    # a batch prepared and then interrupted (the daemon died before sending) is committed first
    interrupted = store.prepare_batch(2)
    receipts += serve(suite, store, 1, ONE, first=4)
    settler.config = BatchingConfig(voucher_min_amount=10**12, receipt_min_count=2)
    done = settler.run_once()
    assert done["receipts_committed"] == 4 and suite.nonce(NODE.address) == nonce + 2
    assert store.batches("prepared") == [] and store.pending_receipts() == 0
    for receipt in receipts:
        proof = store.receipt_proof(receipt.request_hash)
        assert proof is not None and proof.committed
        assert m.receipts.functions.verifyReceipt(proof.root, receipt.as_tuple(), proof.proof).call()
    assert m.receipts.functions.isCommitted(NODE.address, interrupted.root).call()
    assert metrics.receipts._value.get() == 4

    # a prepared batch already on chain (committed, then the daemon died) is only marked
    serve(suite, store, 1, ONE, first=5)
    again = store.prepare_batch(10)
    settler.chain.tx.send(m.receipts.functions.commitReceipts(again.root, 1, 1, 1, 1, 1, 1), "commit elsewhere")
    nonce = suite.nonce(NODE.address)
    assert settler.run_once()["receipts_committed"] == 1 and suite.nonce(NODE.address) == nonce
