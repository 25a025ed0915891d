"""Unit tests of contracts/JobMarket.vy: every external function, on its happy
path and on each of its revert paths, with exact token accounting.

The contract keeps one commitment per job; ``JobDriver`` (tests/contracts/conftest.py)
rebuilds the struct from the events the way a client does. Tests that need
odd arguments call the contract directly with ``driver.jobs[job_id].as_tuple()``.
"""

from __future__ import annotations

from dataclasses import replace

import boa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from eth_utils import keccak

from nodeai.chain import jobs
from nodeai.chain.fees import split_payment
from nodeai.chain.jobs import ZERO_ADDRESS, JobState, RefundReason
from tests.contracts.conftest import (
    ARBITRATION_WINDOW,
    ARTIFACT_CID,
    BOND_BPS,
    CHALLENGE_WINDOW,
    INPUT_CID,
    MANIFEST_CID,
    MIN_STAKE,
    ONE,
    OUTPUT_CID,
    PROTOCOL_FEE_BPS,
    REVENUE_SHARE_BPS,
    JobDriver,
    actor,
    call_as,
    last_event,
    now,
    provider_info,
    warp,
)

DAY = 86_400
MAX_UINT256 = 2**256 - 1
MAX_BOND_BPS = 50_000
# NOTE: the largest maxPayment the market accepts (see createJob): every
# product the market computes (bond, fee, revenue share) then fits in uint256.
MAX_PAYMENT_CAP = MAX_UINT256 // MAX_BOND_BPS
OUTPUT_HASH = b"\x11" * 32


# --------------------------------------------------------------------------- helpers


def balances(s, *who) -> dict:
    """Token balances of actors (by name), the market and the registry."""
    out = {a.name: s.token.balanceOf(a.address) for a in who}
    out["market"] = s.token.balanceOf(s.market.address)
    out["registry"] = s.token.balanceOf(s.providers.address)
    return out


def event(contract, name: str, emitter=None) -> dict:
    """The last ``name`` event of the last call to ``contract``, without its emitter
    address (checked against ``emitter``, by default ``contract`` itself)."""
    args = last_event(contract, name)
    assert args.pop("address") == (emitter or contract).address
    return args


def diff(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def everyone(s) -> tuple:
    return (s.requester, s.provider, s.provider2, s.publisher, s.treasury, s.deployer, s.arbiter)


def expected_settlement(job: jobs.Job) -> dict:
    """Balance changes of a settlement, computed with the off-chain mirror of the split."""
    split = split_payment(job.charge, job.revenue_share_bps, job.protocol_fee_bps)
    assert split.total == job.charge
    return {
        "requester": job.max_payment - job.charge,
        "provider": split.provider,
        "provider2": 0,
        "publisher": split.model_owner,
        "treasury": split.protocol_fee,
        "deployer": 0,
        "arbiter": 0,
        "market": -job.max_payment,
        "registry": 0,
    }


def fund(s, who, amount: int, spender=None) -> None:
    """Mint ``amount`` to ``who`` and (optionally) approve ``spender`` for everything."""
    with boa.env.prank(s.deployer.address):
        s.token.mint(who.address, amount)
    if spender is not None:
        with boa.env.prank(who.address):
            s.token.approve(spender, MAX_UINT256)


def create_raw(s, sender=None, model_id=None, cid=INPUT_CID, max_payment=10 * ONE, deadline=None,
               priority=ZERO_ADDRESS, priority_until=0):  # fmt: skip
    with boa.env.prank((sender or s.requester).address):
        return s.market.createJob(
            s.model_id if model_id is None else model_id, cid, max_payment,
            now() + DAY if deadline is None else deadline, priority, priority_until,
        )  # fmt: skip


def submit_raw(s, driver, job_id, sender=None, cid=OUTPUT_CID, output_hash=OUTPUT_HASH, usage=1, charge=4 * ONE):
    with boa.env.prank((sender or s.provider).address):
        s.market.submitResult(job_id, driver.jobs[job_id].as_tuple(), cid, output_hash, usage, charge)


def assert_commitment(s, driver, job_id) -> None:
    job = driver.jobs[job_id]
    assert s.market.jobCommitment(job_id) == job.commitment()
    assert s.market.jobHash(job.as_tuple()) == job.commitment()


def submitted_job(driver, charge=4 * ONE, **create) -> int:
    job_id = driver.create(**create)
    driver.claim(job_id)
    driver.submit(job_id, charge=charge)
    return job_id


def disputed_job(driver, charge=4 * ONE, **create) -> int:
    job_id = submitted_job(driver, charge=charge, **create)
    driver.dispute(job_id)
    return job_id


# --------------------------------------------------------------------------- createJob


def test_create_job_pulls_escrow_and_snapshots_terms(suite, driver):
    s = suite
    before = balances(s, s.requester)
    deadline = now() + DAY
    job_id = driver.create(max_payment=10 * ONE, duration=DAY)
    ev = event(s.market, "JobCreated")
    assert job_id == 1 and s.market.jobCount() == 1
    assert diff(before, balances(s, s.requester)) == {"requester": -10 * ONE, "market": 10 * ONE, "registry": 0}

    assert ev["jobId"] == 1
    assert ev["requester"] == s.requester.address
    assert ev["modelId"] == s.model_id
    assert ev["inputCid"] == INPUT_CID
    assert ev["inputHash"] == keccak(text=INPUT_CID)
    assert ev["maxPayment"] == 10 * ONE
    assert ev["deadline"] == deadline
    assert ev["priorityProvider"] == ZERO_ADDRESS and ev["priorityUntil"] == 0
    assert ev["modelOwner"] == s.publisher.address
    assert ev["revenueShareBps"] == REVENUE_SHARE_BPS
    assert ev["protocolFeeBps"] == PROTOCOL_FEE_BPS
    assert ev["challengeWindow"] == CHALLENGE_WINDOW
    assert ev["bond"] == 10 * ONE * BOND_BPS // 10_000 == 2 * ONE

    job = driver.jobs[job_id]
    assert job.state is JobState.OPEN and job.provider == ZERO_ADDRESS
    assert_commitment(s, driver, job_id)
    # ids are sequential
    assert driver.create() == 2 and s.market.jobCount() == 2
    assert s.token.balanceOf(s.market.address) == 20 * ONE


def test_create_job_zero_max_payment_reverts(suite):
    with boa.reverts("market: maxPayment is zero"):
        create_raw(suite, max_payment=0)
    assert suite.market.jobCount() == 0


def test_create_job_input_cid_length(suite):
    with boa.reverts("market: input CID too short"):
        create_raw(suite, cid="Qm3456789")  # 9 characters
    with boa.reverts("market: input CID too short"):
        create_raw(suite, cid="")
    assert create_raw(suite, cid="Qm34567890") == 1  # 10 characters is the minimum


def test_create_job_deadline_bounds(suite):
    s = suite
    with boa.reverts("market: deadline in the past"):
        create_raw(s, deadline=now())
    with boa.reverts("market: deadline in the past"):
        create_raw(s, deadline=now() - 1)
    with boa.reverts("market: deadline beyond 30 days"):
        create_raw(s, deadline=now() + 30 * DAY + 1)
    assert create_raw(s, deadline=now() + 30 * DAY) == 1
    assert create_raw(s, deadline=now() + 1) == 2


def test_create_job_priority_window_rules(suite):
    s = suite
    p2 = s.provider2.address
    deadline = now() + DAY
    with boa.reverts("market: priority window without a priority provider"):
        create_raw(s, deadline=deadline, priority=ZERO_ADDRESS, priority_until=now() + 60)
    with boa.reverts("market: priority window outside (now, deadline]"):
        create_raw(s, deadline=deadline, priority=p2, priority_until=0)
    with boa.reverts("market: priority window outside (now, deadline]"):
        create_raw(s, deadline=deadline, priority=p2, priority_until=now())
    with boa.reverts("market: priority window outside (now, deadline]"):
        create_raw(s, deadline=deadline, priority=p2, priority_until=deadline + 1)
    assert create_raw(s, deadline=deadline, priority=p2, priority_until=deadline) == 1
    assert create_raw(s, deadline=deadline, priority=p2, priority_until=now() + 1) == 2
    ev = event(s.market, "JobCreated")
    assert ev["priorityProvider"] == p2 and ev["priorityUntil"] == now() + 1


def test_create_job_deprecated_or_unknown_model_reverts(suite):
    s = suite
    with boa.reverts("market: model not registered or deprecated"):
        create_raw(s, model_id=999)
    with boa.reverts("market: model not registered or deprecated"):
        create_raw(s, model_id=0)
    call_as(s.publisher, s.models.deprecate, s.model_id)
    with boa.reverts("market: model not registered or deprecated"):
        create_raw(s)
    assert s.market.jobCount() == 0


def test_create_job_for_an_agent(suite, driver):
    s = suite
    agent_id = call_as(s.deployer, s.models.registerAgent, MANIFEST_CID, s.model_id, 0, 3_000)
    job_id = driver.create(model_id=agent_id)
    job = driver.jobs[job_id]
    assert job.model_id == agent_id and job.model_owner == s.deployer.address and job.revenue_share_bps == 3_000


def test_create_job_without_allowance_or_balance_reverts(suite):
    s = suite
    stranger = actor("stranger")
    fund(s, stranger, 100 * ONE)
    before = balances(s, stranger)
    with boa.reverts("erc20: insufficient allowance"):
        create_raw(s, sender=stranger, max_payment=10 * ONE)
    with boa.env.prank(stranger.address):
        s.token.approve(s.market.address, 5 * ONE)
    with boa.reverts("erc20: insufficient allowance"):
        create_raw(s, sender=stranger, max_payment=5 * ONE + 1)
    with boa.env.prank(stranger.address):
        s.token.approve(s.market.address, MAX_UINT256)
    with boa.reverts("erc20: transfer amount exceeds balance"):
        create_raw(s, sender=stranger, max_payment=100 * ONE + 1)
    assert balances(s, stranger) == before
    assert s.market.jobCount() == 0
    # the same requester with enough allowance and balance succeeds
    assert create_raw(s, sender=stranger, max_payment=100 * ONE) == 1
    assert s.token.balanceOf(stranger.address) == 0


def test_create_job_max_payment_overflow_reverts_cleanly(suite):
    s = suite
    before = balances(s, s.requester)
    for amount in (MAX_UINT256, MAX_UINT256 - 1, 2**255, MAX_PAYMENT_CAP + 1):
        with boa.reverts("market: maxPayment too large"):
            create_raw(s, max_payment=amount)
    assert s.market.jobCount() == 0
    assert balances(s, s.requester) == before
    # Regression: MAX_UINT256 // 2,000 passed the 20 % bond multiplication, but with
    # a 50 % revenue share the settlement's charge * 5,000 overflowed, so finalize
    # reverted forever and the escrow was stuck. Such a job is now refused up front.
    model_id = call_as(s.publisher, s.models.registerModel, ARTIFACT_CID, MANIFEST_CID, 1, 5_000)
    whale = actor("whale")
    fund(s, whale, MAX_UINT256 // 2_000, spender=s.market.address)
    with boa.reverts("market: maxPayment too large"):
        create_raw(s, sender=whale, model_id=model_id, max_payment=MAX_UINT256 // 2_000)
    # even with bonds switched off (no multiplication at creation) the cap holds
    call_as(s.deployer, s.market.setMarketParams, s.arbiter.address, CHALLENGE_WINDOW, ARBITRATION_WINDOW, 0)
    with boa.reverts("market: maxPayment too large"):
        create_raw(s, sender=whale, max_payment=MAX_PAYMENT_CAP + 1)
    assert s.market.jobCount() == 0


def test_huge_job_at_the_cap_settles_without_overflow(suite, driver):
    """Regression: with the default 20 % bond a job of maxPayment ~ 2**256 / 2,000
    could be created, but a 50 % revenue share then overflowed in the split
    (charge * 5,000), so finalize reverted forever and the escrow was stuck."""
    s = suite
    model_id = call_as(s.publisher, s.models.registerModel, ARTIFACT_CID, MANIFEST_CID, 1, 5_000)
    call_as(s.provider, s.providers.setModelPrice, model_id, 1)
    whale = actor("whale")
    fund(s, whale, MAX_PAYMENT_CAP, spender=s.market.address)
    # NOTE: stake is capped at 2**112 - 1 (it shares a slot with the bond), so no
    # provider could bond 20 % of this job; without a bond it can be claimed.
    call_as(s.deployer, s.market.setMarketParams, s.arbiter.address, CHALLENGE_WINDOW, ARBITRATION_WINDOW, 0)

    job_id = driver.create(requester=whale, max_payment=MAX_PAYMENT_CAP, model_id=model_id)
    assert driver.jobs[job_id].bond == 0
    driver.claim(job_id)
    driver.submit(job_id, charge=MAX_PAYMENT_CAP)
    warp(CHALLENGE_WINDOW)
    before = balances(s, s.provider, s.publisher, s.treasury, whale)
    driver.finalize(job_id)
    split = split_payment(MAX_PAYMENT_CAP, 5_000, PROTOCOL_FEE_BPS)
    assert diff(before, balances(s, s.provider, s.publisher, s.treasury, whale)) == {
        "provider": split.provider,
        "publisher": split.model_owner,
        "treasury": split.protocol_fee,
        "whale": 0,
        "market": -MAX_PAYMENT_CAP,
        "registry": 0,
    }


# --------------------------------------------------------------------------- claimJob


def test_claim_job_bonds_stake(suite, driver):
    s = suite
    job_id = driver.create(max_payment=10 * ONE)
    free_before = s.providers.freeStake(s.provider.address)
    before = balances(s, s.provider, s.requester)
    driver.claim(job_id)

    claimed = event(s.market, "JobClaimed")
    assert claimed == {"jobId": job_id, "provider": s.provider.address, "bond": 2 * ONE}
    bonded = event(s.market, "StakeBonded", s.providers)
    assert bonded == {"provider": s.provider.address, "market": s.market.address, "amount": 2 * ONE, "bonded": 2 * ONE}
    assert s.providers.freeStake(s.provider.address) == free_before - 2 * ONE
    assert provider_info(s, s.provider)["bonded"] == 2 * ONE
    assert provider_info(s, s.provider)["stake"] == 1_000 * ONE  # bonding moves no tokens
    no_change = {"provider": 0, "requester": 0, "market": 0, "registry": 0}
    assert diff(before, balances(s, s.provider, s.requester)) == no_change
    job = driver.jobs[job_id]
    assert job.state is JobState.CLAIMED and job.provider == s.provider.address
    assert_commitment(s, driver, job_id)


def test_claim_job_priority_window_is_exclusive_then_open(suite, driver):
    s = suite
    job_id = driver.create(priority=s.provider2, priority_for=3_600)
    with boa.reverts("market: inside the priority provider's window"):
        driver.claim(job_id, provider=s.provider)
    warp(3_599)
    with boa.reverts("market: inside the priority provider's window"):
        driver.claim(job_id, provider=s.provider)
    warp(1)  # block.timestamp == priorityUntil: the window is over
    driver.claim(job_id, provider=s.provider)
    assert driver.jobs[job_id].provider == s.provider.address


def test_claim_job_priority_provider_claims_inside_window(suite, driver):
    s = suite
    job_id = driver.create(priority=s.provider2, priority_for=3_600)
    driver.claim(job_id, provider=s.provider2)
    assert driver.jobs[job_id].provider == s.provider2.address
    assert provider_info(s, s.provider2)["bonded"] == driver.jobs[job_id].bond


def test_claim_job_unregistered_provider_reverts(suite, driver):
    job_id = driver.create()
    with boa.reverts("providers: not registered"):
        driver.claim(job_id, provider=actor("stranger"))


def test_claim_job_provider_not_serving_model_reverts(suite, driver):
    s = suite
    job_id = driver.create()
    call_as(s.provider, s.providers.setModelPrice, s.model_id, 0)
    with boa.reverts("providers: model not served"):
        driver.claim(job_id)
    driver.claim(job_id, provider=s.provider2)  # provider2 still serves it


def test_claim_job_insufficient_free_stake_reverts(suite, driver):
    s = suite
    # stake is 1,000; a 20 % bond of 5,000 + 1 unit is just above it
    big = driver.create(max_payment=5_000 * ONE + 5)
    with boa.reverts("providers: free stake below bond"):
        driver.claim(big)
    exact = driver.create(max_payment=5_000 * ONE)
    driver.claim(exact)  # bonds all 1,000
    assert s.providers.freeStake(s.provider.address) == 0
    small = driver.create(max_payment=5)  # bond of 1 unit
    with boa.reverts("providers: free stake below bond"):
        driver.claim(small)


def test_claim_job_stake_below_min_after_unbonding_reverts(suite, driver):
    s = suite
    job_id = driver.create(max_payment=ONE)
    call_as(s.provider, s.providers.requestUnbond, 1_000 * ONE - MIN_STAKE + 1)
    with boa.reverts("providers: stake below minStake"):
        driver.claim(job_id)
    call_as(s.provider2, s.providers.requestUnbond, 1_000 * ONE - MIN_STAKE)
    driver.claim(job_id, provider=s.provider2)  # exactly minStake is enough


def test_claim_job_after_deadline_reverts(suite, driver):
    job_id = driver.create(duration=DAY)
    warp(DAY)
    with boa.reverts("market: job deadline passed"):
        driver.claim(job_id)
    late = driver.create(duration=DAY)
    warp(DAY - 1)
    driver.claim(late)


def test_claim_job_twice_reverts(suite, driver):
    s = suite
    job_id = driver.create()
    stale = driver.jobs[job_id].as_tuple()
    driver.claim(job_id)
    with boa.reverts("market: job is not open"):
        driver.claim(job_id, provider=s.provider2)
    with boa.reverts("market: job is not open"):
        driver.claim(job_id)
    with boa.reverts("market: job does not match its commitment"):
        call_as(s.provider2, s.market.claimJob, job_id, stale)
    assert provider_info(s, s.provider2)["bonded"] == 0


def test_claim_job_forged_struct_reverts(suite, driver):
    s = suite
    job_id = driver.create(max_payment=10 * ONE)
    job = driver.jobs[job_id]
    for forged in (
        replace(job, bond=0),
        replace(job, max_payment=job.max_payment + 1),
        replace(job, deadline=job.deadline + 1),
        replace(job, priority_until=1),
        replace(job, provider=s.provider.address),
        replace(job, state=JobState.SUBMITTED),
    ):
        with boa.reverts("market: job does not match its commitment"):
            call_as(s.provider, s.market.claimJob, job_id, forged.as_tuple())
    # the struct of another job does not match either
    other = driver.create(max_payment=11 * ONE)
    with boa.reverts("market: job does not match its commitment"):
        call_as(s.provider, s.market.claimJob, job_id, driver.jobs[other].as_tuple())
    assert provider_info(s, s.provider)["bonded"] == 0


def test_claim_job_unknown_id_reverts(suite, driver):
    s = suite
    job_id = driver.create()
    job = driver.jobs[job_id].as_tuple()
    for unknown in (0, 2, 999):
        with boa.reverts("market: unknown job"):
            call_as(s.provider, s.market.claimJob, unknown, job)


def test_claim_job_market_not_authorized_reverts(suite, driver):
    s = suite
    job_id = driver.create()
    call_as(s.deployer, s.providers.setMarket, s.market.address, False)
    with boa.reverts("providers: caller is not an authorized market"):
        driver.claim(job_id)


# --------------------------------------------------------------------------- submitResult


def test_submit_result_starts_challenge_window(suite, driver):
    s = suite
    job_id = driver.create()
    driver.claim(job_id)
    driver.submit(job_id, charge=3 * ONE, usage=777)
    ev = event(s.market, "JobSubmitted")
    assert ev == {
        "jobId": job_id,
        "provider": s.provider.address,
        "outputCid": OUTPUT_CID,
        "outputHash": OUTPUT_HASH,
        "usage": 777,
        "charge": 3 * ONE,
        "challengeEnds": now() + CHALLENGE_WINDOW,
    }
    job = driver.jobs[job_id]
    assert job.state is JobState.SUBMITTED and job.charge == 3 * ONE and job.window_ends == now() + CHALLENGE_WINDOW
    assert_commitment(s, driver, job_id)


def test_submit_result_only_provider(suite, driver):
    s = suite
    job_id = driver.create()
    driver.claim(job_id)
    for other in (s.provider2, s.requester, s.arbiter):
        with boa.reverts("market: caller is not the job's provider"):
            submit_raw(s, driver, job_id, sender=other)


def test_submit_result_requires_claimed_job(suite, driver):
    s = suite
    job_id = driver.create()
    with boa.reverts("market: job is not claimed"):
        submit_raw(s, driver, job_id)


def test_submit_result_charge_bounds(suite, driver):
    s = suite
    job_id = driver.create(max_payment=10 * ONE)
    driver.claim(job_id)
    with boa.reverts("market: charge above maxPayment"):
        submit_raw(s, driver, job_id, charge=10 * ONE + 1)
    with boa.reverts("market: charge above maxPayment"):
        submit_raw(s, driver, job_id, charge=MAX_UINT256)
    driver.submit(job_id, charge=10 * ONE)  # exactly maxPayment is allowed
    zero = driver.create()
    driver.claim(zero)
    driver.submit(zero, charge=0)  # so is charging nothing
    assert driver.jobs[zero].charge == 0


def test_submit_result_zero_output_hash_reverts(suite, driver):
    s = suite
    job_id = driver.create()
    driver.claim(job_id)
    with boa.reverts("market: outputHash is zero"):
        submit_raw(s, driver, job_id, output_hash=b"\x00" * 32)
    submit_raw(s, driver, job_id, output_hash=b"\x00" * 31 + b"\x01")


def test_submit_result_short_output_cid_reverts(suite, driver):
    s = suite
    job_id = driver.create()
    driver.claim(job_id)
    with boa.reverts("market: output CID too short"):
        submit_raw(s, driver, job_id, cid="bafy12345")
    submit_raw(s, driver, job_id, cid="bafy123456")


def test_submit_result_after_deadline_reverts(suite, driver):
    s = suite
    job_id = driver.create(duration=DAY)
    driver.claim(job_id)
    warp(DAY)
    with boa.reverts("market: job deadline passed"):
        submit_raw(s, driver, job_id)
    ok = driver.create(duration=DAY)
    driver.claim(ok)
    warp(DAY - 1)
    driver.submit(ok)


def test_submit_result_twice_reverts(suite, driver):
    s = suite
    job_id = driver.create()
    driver.claim(job_id)
    stale = driver.jobs[job_id].as_tuple()
    driver.submit(job_id, charge=ONE)
    with boa.reverts("market: job is not claimed"):
        submit_raw(s, driver, job_id, charge=2 * ONE)
    with boa.reverts("market: job does not match its commitment"):
        call_as(s.provider, s.market.submitResult, job_id, stale, OUTPUT_CID, OUTPUT_HASH, 1, 2 * ONE)
    assert driver.jobs[job_id].charge == ONE


# --------------------------------------------------------------------------- disputeJob


def test_dispute_job_starts_arbitration(suite, driver):
    s = suite
    job_id = submitted_job(driver)
    warp(CHALLENGE_WINDOW - 1)
    driver.dispute(job_id)
    ev = event(s.market, "JobDisputed")
    assert ev == {
        "jobId": job_id,
        "requester": s.requester.address,
        "reasonCid": INPUT_CID,
        "arbitrationEnds": now() + ARBITRATION_WINDOW,
    }
    job = driver.jobs[job_id]
    assert job.state is JobState.DISPUTED and job.window_ends == now() + ARBITRATION_WINDOW
    assert_commitment(s, driver, job_id)


def test_dispute_job_only_requester(suite, driver):
    s = suite
    job_id = submitted_job(driver)
    for other in (s.provider, s.provider2, s.arbiter, s.deployer):
        with boa.reverts("market: caller is not the requester"):
            driver.dispute(job_id, requester=other)


def test_dispute_job_after_challenge_window_reverts(suite, driver):
    job_id = submitted_job(driver)
    warp(CHALLENGE_WINDOW)
    with boa.reverts("market: challenge window over"):
        driver.dispute(job_id)


def test_dispute_job_wrong_state_reverts(suite, driver):
    s = suite
    open_id = driver.create()
    with boa.reverts("market: job is not submitted"):
        driver.dispute(open_id)
    driver.claim(open_id)
    with boa.reverts("market: job is not submitted"):
        driver.dispute(open_id)
    disputed = disputed_job(driver)
    with boa.reverts("market: job is not submitted"):
        driver.dispute(disputed)
    settled = submitted_job(driver)
    warp(CHALLENGE_WINDOW)
    driver.finalize(settled)
    with boa.reverts("market: job is not submitted"):
        driver.dispute(settled)
    assert s.market.jobCount() == 3


# --------------------------------------------------------------------------- resolveDispute


def test_resolve_dispute_only_arbiter(suite, driver):
    s = suite
    job_id = disputed_job(driver)
    for other in (s.requester, s.provider, s.deployer, s.treasury):
        with boa.reverts("market: caller is not the arbiter"):
            driver.resolve(job_id, True, caller=other)
        with boa.reverts("market: caller is not the arbiter"):
            driver.resolve(job_id, False, caller=other)


def test_resolve_dispute_wrong_state_reverts(suite, driver):
    s = suite
    job_id = submitted_job(driver)
    with boa.reverts("market: job is not disputed"):
        driver.resolve(job_id, True)
    open_id = driver.create()
    with boa.reverts("market: job is not disputed"):
        driver.resolve(open_id, False)
    with boa.reverts("market: unknown job"):
        call_as(s.arbiter, s.market.resolveDispute, 999, driver.jobs[job_id].as_tuple(), True)


def test_resolve_dispute_provider_wins_pays_like_finalize(suite, driver):
    s = suite
    job_id = disputed_job(driver, charge=7 * ONE, max_payment=10 * ONE)
    job = driver.jobs[job_id]
    before = balances(s, *everyone(s))
    driver.resolve(job_id, True)
    assert diff(before, balances(s, *everyone(s))) == expected_settlement(job)
    assert event(s.market, "DisputeResolved") == {"jobId": job_id, "arbiter": s.arbiter.address, "providerWins": True}
    info = provider_info(s, s.provider)
    assert info["bonded"] == 0 and info["jobsCompleted"] == 1 and info["disputesLost"] == 0
    assert info["stake"] == 1_000 * ONE
    assert driver.jobs[job_id].state is JobState.SETTLED
    assert_commitment(s, driver, job_id)
    with boa.reverts("market: job is not disputed"):
        driver.resolve(job_id, False)


def test_resolve_dispute_provider_loses_refunds_and_slashes(suite, driver):
    s = suite
    job_id = disputed_job(driver, charge=7 * ONE, max_payment=10 * ONE)
    bond = driver.jobs[job_id].bond
    assert bond == 2 * ONE
    before = balances(s, *everyone(s))
    driver.resolve(job_id, False)
    assert diff(before, balances(s, *everyone(s))) == {
        "requester": 10 * ONE + bond,
        "provider": 0,
        "provider2": 0,
        "publisher": 0,
        "treasury": 0,
        "deployer": 0,
        "arbiter": 0,
        "market": -10 * ONE,
        "registry": -bond,
    }
    assert event(s.market, "DisputeResolved")["providerWins"] is False
    assert event(s.market, "JobRefunded") == {
        "jobId": job_id,
        "requester": s.requester.address,
        "provider": s.provider.address,
        "refund": 10 * ONE,
        "slashed": bond,
        "reason": RefundReason.DISPUTE_LOST,
    }
    assert event(s.market, "ProviderSlashed", s.providers) == {
        "provider": s.provider.address,
        "recipient": s.requester.address,
        "amount": bond,
        "stake": 1_000 * ONE - bond,
        "bonded": 0,
        "lostDispute": True,
    }
    info = provider_info(s, s.provider)
    assert info["stake"] == 1_000 * ONE - bond and info["bonded"] == 0
    assert info["disputesLost"] == 1 and info["jobsFailed"] == 0 and info["jobsCompleted"] == 0
    assert info["totalSlashed"] == bond
    assert driver.jobs[job_id].state is JobState.REFUNDED
    assert_commitment(s, driver, job_id)
    with boa.reverts("market: job is not disputed"):
        driver.resolve(job_id, True)


def test_resolve_dispute_slashes_only_this_jobs_bond(suite, driver):
    s = suite
    other = driver.create(max_payment=50 * ONE)
    driver.claim(other)  # bonds 10
    job_id = disputed_job(driver, max_payment=10 * ONE)  # bonds 2
    assert provider_info(s, s.provider)["bonded"] == 12 * ONE
    driver.resolve(job_id, False)
    info = provider_info(s, s.provider)
    assert info["bonded"] == 10 * ONE and info["stake"] == 998 * ONE


# --------------------------------------------------------------------------- finalize


def test_finalize_before_window_reverts(suite, driver):
    job_id = submitted_job(driver)
    warp(CHALLENGE_WINDOW - 1)
    with boa.reverts("market: window not over"):
        driver.finalize(job_id)


def test_finalize_exact_split_anyone_may_call(suite, driver):
    s = suite
    job_id = submitted_job(driver, charge=4 * ONE + 3, max_payment=10 * ONE)
    job = driver.jobs[job_id]
    warp(CHALLENGE_WINDOW)  # block.timestamp == windowEnds
    before = balances(s, *everyone(s))
    stranger = actor("stranger")
    driver.finalize(job_id, caller=stranger)
    expected = expected_settlement(job)
    assert diff(before, balances(s, *everyone(s))) == expected
    split = split_payment(job.charge, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS)
    assert event(s.market, "JobSettled") == {
        "jobId": job_id,
        "requester": s.requester.address,
        "provider": s.provider.address,
        "modelId": s.model_id,
        "outputHash": OUTPUT_HASH,
        "charge": job.charge,
        "providerAmount": split.provider,
        "modelOwnerAmount": split.model_owner,
        "protocolFee": split.protocol_fee,
        "refund": job.max_payment - job.charge,
    }
    # rounding favours the provider
    assert split.model_owner == (4 * ONE + 3) * REVENUE_SHARE_BPS // 10_000
    assert split.protocol_fee == (4 * ONE + 3) * PROTOCOL_FEE_BPS // 10_000
    assert event(s.market, "StakeReleased", s.providers) == {
        "provider": s.provider.address,
        "market": s.market.address,
        "amount": job.bond,
        "bonded": 0,
        "completed": True,
    }
    info = provider_info(s, s.provider)
    assert info["jobsCompleted"] == 1 and info["bonded"] == 0 and info["stake"] == 1_000 * ONE
    assert driver.jobs[job_id].state is JobState.SETTLED
    assert_commitment(s, driver, job_id)
    assert s.token.balanceOf(s.market.address) == 0


def test_finalize_twice_reverts(suite, driver):
    s = suite
    job_id = submitted_job(driver)
    stale = driver.jobs[job_id].as_tuple()
    warp(CHALLENGE_WINDOW)
    driver.finalize(job_id)
    before = balances(s, *everyone(s))
    with boa.reverts("market: job is not submitted"):
        driver.finalize(job_id)
    with boa.reverts("market: job does not match its commitment"):
        call_as(s.deployer, s.market.finalize, job_id, stale)
    assert balances(s, *everyone(s)) == before


def test_finalize_wrong_state_reverts(suite, driver):
    job_id = driver.create()
    with boa.reverts("market: job is not submitted"):
        driver.finalize(job_id)
    driver.claim(job_id)
    warp(DAY)
    with boa.reverts("market: job is not submitted"):
        driver.finalize(job_id)
    driver.refund_expired(job_id)
    with boa.reverts("market: job is not submitted"):
        driver.finalize(job_id)


def test_finalize_full_and_zero_charge(suite, driver):
    s = suite
    full = submitted_job(driver, charge=10 * ONE, max_payment=10 * ONE)
    nothing = submitted_job(driver, charge=0, max_payment=10 * ONE)
    warp(CHALLENGE_WINDOW)
    before = balances(s, *everyone(s))
    driver.finalize(full)
    assert diff(before, balances(s, *everyone(s))) == expected_settlement(driver.jobs[full])
    assert event(s.market, "JobSettled")["refund"] == 0
    before = balances(s, *everyone(s))
    driver.finalize(nothing)
    assert diff(before, balances(s, *everyone(s))) == expected_settlement(driver.jobs[nothing])
    assert diff(before, balances(s, *everyone(s)))["requester"] == 10 * ONE
    assert provider_info(s, s.provider)["jobsCompleted"] == 2


def test_finalize_unresolved_dispute_after_arbitration_window(suite, driver):
    s = suite
    job_id = disputed_job(driver, charge=6 * ONE)
    job = driver.jobs[job_id]
    warp(ARBITRATION_WINDOW - 1)
    with boa.reverts("market: window not over"):
        driver.finalize(job_id)
    warp(1)
    before = balances(s, *everyone(s))
    driver.finalize(job_id, caller=s.provider)
    assert diff(before, balances(s, *everyone(s))) == expected_settlement(job)
    assert provider_info(s, s.provider)["jobsCompleted"] == 1
    with boa.reverts("market: job is not disputed"):
        driver.resolve(job_id, False)


# --------------------------------------------------------------------------- cancelJob


def test_cancel_job_refunds_open_job(suite, driver):
    s = suite
    job_id = driver.create(max_payment=10 * ONE)
    before = balances(s, *everyone(s))
    driver.cancel(job_id)
    assert diff(before, balances(s, *everyone(s))) == {
        **{a.name: 0 for a in everyone(s)}, "requester": 10 * ONE, "market": -10 * ONE, "registry": 0,
    }  # fmt: skip
    assert event(s.market, "JobRefunded") == {
        "jobId": job_id,
        "requester": s.requester.address,
        "provider": ZERO_ADDRESS,
        "refund": 10 * ONE,
        "slashed": 0,
        "reason": RefundReason.CANCELLED,
    }
    assert driver.jobs[job_id].state is JobState.REFUNDED
    assert_commitment(s, driver, job_id)


def test_cancel_job_only_requester(suite, driver):
    s = suite
    job_id = driver.create()
    for other in (s.provider, s.deployer, s.arbiter):
        with boa.reverts("market: caller is not the requester"):
            driver.cancel(job_id, requester=other)


def test_cancel_job_only_open(suite, driver):
    s = suite
    job_id = driver.create()
    driver.claim(job_id)
    with boa.reverts("market: job is not open"):
        driver.cancel(job_id)
    cancelled = driver.create()
    driver.cancel(cancelled)
    with boa.reverts("market: job is not open"):
        driver.cancel(cancelled)
    assert provider_info(s, s.provider)["bonded"] == driver.jobs[job_id].bond


# --------------------------------------------------------------------------- refundExpired


def test_refund_expired_unclaimed_full_refund_no_slash(suite, driver):
    s = suite
    job_id = driver.create(max_payment=10 * ONE, duration=DAY)
    warp(DAY)
    before = balances(s, *everyone(s))
    driver.refund_expired(job_id, caller=actor("stranger"))
    assert diff(before, balances(s, *everyone(s))) == {
        **{a.name: 0 for a in everyone(s)}, "requester": 10 * ONE, "market": -10 * ONE, "registry": 0,
    }  # fmt: skip
    ev = event(s.market, "JobRefunded")
    assert ev["slashed"] == 0 and ev["reason"] == RefundReason.EXPIRED_UNCLAIMED
    assert ev["provider"] == ZERO_ADDRESS
    for who in (s.provider, s.provider2):
        info = provider_info(s, who)
        assert info["jobsFailed"] == 0 and info["totalSlashed"] == 0


def test_refund_expired_claimed_slashes_bond(suite, driver):
    s = suite
    job_id = driver.create(max_payment=10 * ONE, duration=DAY)
    driver.claim(job_id)
    bond = driver.jobs[job_id].bond
    warp(DAY)
    before = balances(s, *everyone(s))
    driver.refund_expired(job_id)
    assert diff(before, balances(s, *everyone(s))) == {
        **{a.name: 0 for a in everyone(s)}, "requester": 10 * ONE + bond, "market": -10 * ONE, "registry": -bond,
    }  # fmt: skip
    assert event(s.market, "JobRefunded") == {
        "jobId": job_id,
        "requester": s.requester.address,
        "provider": s.provider.address,
        "refund": 10 * ONE,
        "slashed": bond,
        "reason": RefundReason.EXPIRED_AFTER_CLAIM,
    }
    slashed = event(s.market, "ProviderSlashed", s.providers)
    assert slashed["lostDispute"] is False and slashed["amount"] == bond and slashed["recipient"] == s.requester.address
    info = provider_info(s, s.provider)
    assert info["jobsFailed"] == 1 and info["disputesLost"] == 0 and info["jobsCompleted"] == 0
    assert info["stake"] == 1_000 * ONE - bond and info["bonded"] == 0 and info["totalSlashed"] == bond
    assert_commitment(s, driver, job_id)


def test_refund_expired_before_deadline_reverts(suite, driver):
    open_id = driver.create(duration=DAY)
    claimed = driver.create(duration=DAY)
    driver.claim(claimed)
    warp(DAY - 1)
    for job_id in (open_id, claimed):
        with boa.reverts("market: deadline not reached"):
            driver.refund_expired(job_id)


def test_refund_expired_submitted_or_final_job_reverts(suite, driver):
    s = suite
    submitted = submitted_job(driver, duration=DAY)
    disputed = disputed_job(driver, duration=DAY)
    refunded = driver.create(duration=DAY)
    driver.cancel(refunded)
    warp(DAY)
    for job_id in (submitted, disputed, refunded):
        with boa.reverts("market: job is not open or claimed"):
            driver.refund_expired(job_id)
    # the submitted job still settles normally after its deadline
    before = balances(s, *everyone(s))
    driver.finalize(submitted)
    assert diff(before, balances(s, *everyone(s))) == expected_settlement(driver.jobs[submitted])
    with boa.reverts("market: job is not open or claimed"):
        driver.refund_expired(submitted)


# --------------------------------------------------------------------------- admin


def test_set_market_params_owner_only(suite):
    s = suite
    for other in (s.requester, s.arbiter, s.provider):
        with boa.reverts("ownable: caller is not the owner"):
            call_as(other, s.market.setMarketParams, other.address, 600, 600, 0)
    call_as(s.deployer, s.market.setMarketParams, s.provider2.address, 600, 1_200, 5_000)
    assert event(s.market, "MarketParamsChanged") == {
        "arbiter": s.provider2.address, "challengeWindow": 600, "arbitrationWindow": 1_200, "bondBps": 5_000,
    }  # fmt: skip
    assert s.market.arbiter() == s.provider2.address
    assert s.market.challengeWindow() == 600
    assert s.market.arbitrationWindow() == 1_200
    assert s.market.bondBps() == 5_000


def test_set_market_params_bounds(suite):
    s = suite
    arb = s.arbiter.address

    def set_params(*args):
        call_as(s.deployer, s.market.setMarketParams, *args)

    with boa.reverts("market: arbiter is the zero address"):
        set_params(ZERO_ADDRESS, 600, 600, 0)
    for window in (0, 59, 7 * DAY + 1):
        with boa.reverts("market: challenge window outside 1 min to 7 days"):
            set_params(arb, window, 600, 0)
        with boa.reverts("market: arbitration window outside 1 min to 7 days"):
            set_params(arb, 600, window, 0)
    with boa.reverts("market: bond above MAX_BOND_BPS"):
        set_params(arb, 600, 600, MAX_BOND_BPS + 1)
    set_params(arb, 60, 7 * DAY, MAX_BOND_BPS)
    assert (s.market.challengeWindow(), s.market.arbitrationWindow(), s.market.bondBps()) == (60, 7 * DAY, MAX_BOND_BPS)
    set_params(arb, 7 * DAY, 60, 0)
    assert (s.market.challengeWindow(), s.market.arbitrationWindow(), s.market.bondBps()) == (7 * DAY, 60, 0)


def test_new_arbiter_takes_over(suite, driver):
    s = suite
    job_id = disputed_job(driver)
    call_as(s.deployer, s.market.setMarketParams, s.provider2.address, CHALLENGE_WINDOW, ARBITRATION_WINDOW, BOND_BPS)
    with boa.reverts("market: caller is not the arbiter"):
        driver.resolve(job_id, False)
    driver.resolve(job_id, False, caller=s.provider2)
    assert driver.jobs[job_id].state is JobState.REFUNDED


def test_set_protocol_fee_owner_only_and_capped(suite):
    s = suite
    with boa.reverts("ownable: caller is not the owner"):
        call_as(s.requester, s.market.setProtocolFee, 100)
    with boa.reverts("fees: fee above MAX_PROTOCOL_FEE_BPS"):
        call_as(s.deployer, s.market.setProtocolFee, 1_001)
    call_as(s.deployer, s.market.setProtocolFee, 1_000)
    assert event(s.market, "ProtocolFeeChanged") == {"protocolFeeBps": 1_000}
    assert s.market.protocolFeeBps() == 1_000
    call_as(s.deployer, s.market.setProtocolFee, 0)
    assert s.market.protocolFeeBps() == 0


def test_set_treasury_owner_only_and_nonzero(suite, driver):
    s = suite
    new_treasury = actor("new-treasury")
    with boa.reverts("ownable: caller is not the owner"):
        call_as(s.treasury, s.market.setTreasury, s.treasury.address)
    with boa.reverts("fees: treasury is the zero address"):
        call_as(s.deployer, s.market.setTreasury, ZERO_ADDRESS)
    call_as(s.deployer, s.market.setTreasury, new_treasury.address)
    assert event(s.market, "TreasuryChanged") == {"treasury": new_treasury.address}
    assert s.market.treasury() == new_treasury.address
    job_id = submitted_job(driver, charge=4 * ONE)
    warp(CHALLENGE_WINDOW)
    before = balances(s, s.treasury, new_treasury)
    driver.finalize(job_id)
    fee = split_payment(4 * ONE, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS).protocol_fee
    after = balances(s, s.treasury, new_treasury)
    assert after["new-treasury"] - before["new-treasury"] == fee and after["treasury"] == before["treasury"]


def test_ownership_transfer_moves_admin_rights(suite):
    s = suite
    call_as(s.deployer, s.market.transfer_ownership, s.arbiter.address)
    assert s.market.owner() == s.arbiter.address
    with boa.reverts("ownable: caller is not the owner"):
        call_as(s.deployer, s.market.setProtocolFee, 0)
    call_as(s.arbiter, s.market.setProtocolFee, 0)
    assert s.market.protocolFeeBps() == 0


def test_parameter_changes_do_not_affect_created_jobs(suite, driver):
    """Fee, revenue share, challenge window and bond are snapshotted at creation."""
    s = suite
    job_id = driver.create(max_payment=10 * ONE)
    call_as(s.deployer, s.market.setProtocolFee, 1_000)
    call_as(s.deployer, s.market.setMarketParams, s.arbiter.address, 7 * DAY, ARBITRATION_WINDOW, 10_000)
    call_as(s.publisher, s.models.setTerms, s.model_id, 1, 5_000)
    call_as(s.publisher, s.models.transferModelOwnership, s.model_id, s.provider2.address)
    driver.claim(job_id)
    assert event(s.market, "StakeBonded", s.providers)["amount"] == 2 * ONE  # old 20 % bond
    driver.submit(job_id, charge=8 * ONE)
    assert driver.jobs[job_id].window_ends == now() + CHALLENGE_WINDOW  # old window
    warp(CHALLENGE_WINDOW)
    job = driver.jobs[job_id]
    assert (job.protocol_fee_bps, job.revenue_share_bps, job.model_owner) == (
        PROTOCOL_FEE_BPS, REVENUE_SHARE_BPS, s.publisher.address,
    )  # fmt: skip
    before = balances(s, *everyone(s))
    driver.finalize(job_id)
    assert diff(before, balances(s, *everyone(s))) == expected_settlement(job)

    # a job created after the changes uses the new terms (a share increase once its notice period is over)
    warp(7 * DAY)
    new_id = driver.create(max_payment=10 * ONE)
    new = driver.jobs[new_id]
    assert (new.protocol_fee_bps, new.revenue_share_bps, new.model_owner) == (1_000, 5_000, s.provider2.address)
    assert (new.challenge_window, new.bond) == (7 * DAY, 10 * ONE)


# --------------------------------------------------------------------------- jobHash / commitments


def test_job_hash_matches_python_commitment_in_every_state(suite, driver):
    s = suite
    settled = submitted_job(driver)
    refunded = disputed_job(driver)
    job_id = driver.create(priority=s.provider, priority_for=600)
    assert_commitment(s, driver, job_id)
    driver.claim(job_id)
    assert_commitment(s, driver, job_id)
    warp(CHALLENGE_WINDOW)
    driver.finalize(settled)
    driver.resolve(refunded, False)
    for jid in (settled, refunded, job_id):
        assert_commitment(s, driver, jid)
    # any changed field changes the hash
    job = driver.jobs[job_id]
    assert s.market.jobHash(replace(job, charge=1).as_tuple()) != job.commitment()
    assert s.market.jobHash(replace(job, charge=1).as_tuple()) == replace(job, charge=1).commitment()


def test_escrow_balance_equals_open_max_payments(suite, driver):
    """The market's token balance is the sum of maxPayment over jobs not yet Settled or Refunded."""
    s = suite

    def live_total():
        return sum(j.max_payment for j in driver.jobs.values() if not j.state.is_final)

    a = driver.create(max_payment=3 * ONE)
    b = submitted_job(driver, max_payment=5 * ONE, charge=ONE)
    c = driver.create(max_payment=7 * ONE)
    d = disputed_job(driver, max_payment=11 * ONE, charge=11 * ONE)
    driver.claim(c)
    assert s.token.balanceOf(s.market.address) == live_total() == 26 * ONE
    driver.cancel(a)
    assert s.token.balanceOf(s.market.address) == live_total()
    warp(CHALLENGE_WINDOW)
    driver.finalize(b)
    assert s.token.balanceOf(s.market.address) == live_total()
    driver.resolve(d, True)
    assert s.token.balanceOf(s.market.address) == live_total()
    warp(DAY)
    driver.refund_expired(c)
    assert s.token.balanceOf(s.market.address) == live_total() == 0


# --------------------------------------------------------------------------- properties


@settings(
    max_examples=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(
    max_payment=st.integers(min_value=1, max_value=10**30),
    charge_ppm=st.integers(min_value=0, max_value=1_000_000),
    fee_bps=st.integers(min_value=0, max_value=1_000),
    share_bps=st.integers(min_value=0, max_value=5_000),
)
def test_finalize_split_sums_to_max_payment(suite, max_payment, charge_ppm, fee_bps, share_bps):
    """For any charge, fee and revenue share, the settlement pays out exactly the
    escrowed maxPayment, split the way ``split_payment`` says."""
    s = suite
    with boa.env.anchor():
        driver = JobDriver(s)
        charge = max_payment * charge_ppm // 1_000_000
        call_as(s.deployer, s.market.setProtocolFee, fee_bps)
        call_as(s.publisher, s.models.setTerms, s.model_id, 1, share_bps)
        warp(7 * DAY)  # a share increase applies after its notice period
        call_as(s.deployer, s.market.setMarketParams, s.arbiter.address, CHALLENGE_WINDOW, ARBITRATION_WINDOW, 0)
        whale = actor("whale")
        fund(s, whale, max_payment, spender=s.market.address)
        job_id = driver.create(requester=whale, max_payment=max_payment)
        driver.claim(job_id)
        driver.submit(job_id, charge=charge)
        warp(CHALLENGE_WINDOW)
        who = (whale, s.provider, s.publisher, s.treasury)
        before = balances(s, *who)
        driver.finalize(job_id)
        delta = diff(before, balances(s, *who))
        split = split_payment(charge, share_bps, fee_bps)
        assert delta == {
            "whale": max_payment - charge,
            "provider": split.provider,
            "publisher": split.model_owner,
            "treasury": split.protocol_fee,
            "market": -max_payment,
            "registry": 0,
        }
        assert delta["whale"] + delta["provider"] + delta["publisher"] + delta["treasury"] == max_payment
        assert split.provider >= charge - charge * (fee_bps + share_bps) // 10_000


@pytest.mark.parametrize("provider_wins", [True, False])
def test_dispute_outcomes_conserve_tokens(suite, driver, provider_wins):
    """Whatever the arbiter rules, no token is created or lost across all holders."""
    s = suite
    job_id = disputed_job(driver, charge=9 * ONE, max_payment=10 * ONE)
    holders = everyone(s)
    total_before = sum(balances(s, *holders).values())
    driver.resolve(job_id, provider_wins)
    assert sum(balances(s, *holders).values()) == total_before
    assert s.token.balanceOf(s.market.address) == 0
