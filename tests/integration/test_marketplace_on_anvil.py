"""The protocol end to end on a real anvil chain, through web3 as a wallet uses it."""

from __future__ import annotations

import pytest

from nodeai.chain.fees import split_payment
from nodeai.chain.jobs import JobState
from nodeai.chain.marketplace import synthetic_receipts
from nodeai.errors import ContractReverted

pytestmark = pytest.mark.integration
ONE = 10**6


@pytest.fixture(scope="module")
def model_id(marketplace):
    return marketplace.onboard(funds=10_000 * ONE, stake=1_000 * ONE)


def test_job_lifecycle_pays_everyone_exactly(marketplace, model_id):
    m = marketplace
    before = {who: m.balance(who) for who in ("provider", "publisher", "treasury", "requester")}
    job_id, created = m.create_job(model_id, b"job input", 10 * ONE)
    assert m.balance("requester") == before["requester"] - 10 * ONE  # escrow locked at creation
    assert m.market.functions.jobCommitment(job_id).call() == m.jobs[job_id].commitment()
    m.claim(job_id)
    m.submit(job_id, b"job output", usage=900, charge=4 * ONE)
    with pytest.raises(ContractReverted, match="market: window not over"):
        m.finalize(job_id)
    m.advance_time(m.jobs[job_id].challenge_window)
    m.finalize(job_id, caller="publisher")  # anyone may finalize
    assert m.jobs[job_id].state is JobState.SETTLED
    split = split_payment(4 * ONE, 1_000, 250)
    assert m.balance("provider") == before["provider"] + split.provider
    assert m.balance("publisher") == before["publisher"] + split.model_owner
    assert m.balance("treasury") == before["treasury"] + split.protocol_fee
    assert m.balance("requester") == before["requester"] - 4 * ONE
    with pytest.raises(ContractReverted, match="market: job is not submitted"):
        m.finalize(job_id)  # never pays twice


def test_dispute_lost_refunds_and_slashes(marketplace, model_id):
    m = marketplace
    requester_before = m.balance("requester")
    stake_before = m.providers.functions.providers(m.address("provider")).call()
    job_id, _ = m.create_job(model_id, b"job input 2", 10 * ONE)
    m.claim(job_id)
    m.submit(job_id, b"bad output", usage=900, charge=10 * ONE)
    m.dispute(job_id, b"evidence")
    m.resolve(job_id, provider_wins=False)
    bond = m.jobs[job_id].bond
    assert m.jobs[job_id].state is JobState.REFUNDED
    assert m.balance("requester") == requester_before + bond
    stake_after = m.providers.functions.providers(m.address("provider")).call()
    assert stake_after[1] == stake_before[1] - bond


def test_vouchers_redeem_once_and_receipts_prove_inclusion(marketplace, model_id):
    m = marketplace
    m.deposit(5 * ONE)
    provider_before = m.balance("provider")
    voucher, signature = m.sign(model_id, cumulative=2 * ONE)
    first = m.redeem(voucher, signature).event("VoucherRedeemed")
    assert first["paid"] == 2 * ONE
    retry = m.redeem(voucher, signature)
    assert "VoucherRedeemed" not in retry.events  # idempotent: the retry pays nothing
    assert m.balance("provider") == provider_before + split_payment(2 * ONE, 1_000, 250).provider
    receipts = synthetic_receipts(m, model_id, 37, 20_000)
    tree, _ = m.commit_receipts(receipts)
    assert all(m.verify_receipt(tree, receipts, i) for i in (0, 17, 36))
    forged = receipts[5].__class__(**{**{f: getattr(receipts[5], f) for f in receipts[5].__slots__}, "amount": 1})
    assert not m.receipts.functions.verifyReceipt(tree.root, forged.as_tuple(), tree.proof(5)).call()
