"""Re-entrancy: a hostile payment token calls back into JobMarket and InferenceEscrow
from inside its own transfer, trying to get the same money paid twice.

The token (``fixtures/ReentrantToken.vy``) fires its callback once per arming,
on the next transfer to a chosen recipient, either before or after it moves
the balances. With ``bubble`` the failed callback reverts the whole
transaction; without it the failure is swallowed and recorded, so the test can
check the outer call completed, paid everyone exactly once, and that the
callback was refused by the re-entrancy lock (empty revert data), not by a
business rule.
"""

from __future__ import annotations

import boa
import pytest
from eth_abi import decode
from eth_utils import keccak

from nodeai.chain import jobs
from nodeai.chain.fees import split_payment
from nodeai.chain.jobs import ZERO_ADDRESS, JobState
from nodeai.chain.vouchers import Voucher, sign_voucher

from .conftest import (
    BOND_BPS,
    CHALLENGE_WINDOW,
    FIXTURES,
    INPUT_CID,
    ONE,
    PROTOCOL_FEE_BPS,
    REVENUE_SHARE_BPS,
    WITHDRAW_TIMELOCK,
    JobDriver,
    actor,
    deploy_suite,
    now,
    warp,
)

MAX_UINT = 2**256 - 1
MAX_PAYMENT = 10 * ONE
CHARGE = 4 * ONE + 321


@pytest.fixture(scope="module")
def _hostile_suite():
    with boa.env.prank(actor("deployer").address):
        token = boa.load(str(FIXTURES / "ReentrantToken.vy"))
    return deploy_suite(token=token)


@pytest.fixture
def hs(_hostile_suite):
    """A full suite paying in the re-entrant token, in its own EVM snapshot."""
    with boa.env.anchor():
        yield _hostile_suite


def arm(s, target, payload: bytes, recipient, bubble: bool = False, before: bool = False) -> None:
    s.token.arm(target.address, payload, bubble, recipient if isinstance(recipient, str) else recipient.address, before)


def assert_blocked_by_lock(s) -> None:
    """The callback fired once and was refused with empty revert data: the
    re-entrancy lock, not a business rule (those revert with Error(string))."""
    assert s.token.attempts() == 1
    assert s.token.lastSuccess() is False
    assert s.token.lastReturnData() == b""


def holdings(s, *addresses: str) -> dict[str, int]:
    return {a: s.token.balanceOf(a) for a in addresses}


def changes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


# --- JobMarket ---------------------------------------------------------------------------------


def _submitted_job(s) -> tuple[JobDriver, int]:
    d = JobDriver(s)
    job_id = d.create(max_payment=MAX_PAYMENT)
    d.claim(job_id)
    d.submit(job_id, charge=CHARGE)
    warp(CHALLENGE_WINDOW)
    return d, job_id


def _expected_settlement(s) -> dict[str, int]:
    split = split_payment(CHARGE, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS)
    return {
        s.provider.address: split.provider,
        s.publisher.address: split.model_owner,
        s.treasury.address: split.protocol_fee,
        s.requester.address: MAX_PAYMENT - CHARGE,
        s.market.address: -MAX_PAYMENT,
    }


def _parties(s) -> tuple[str, ...]:
    return (s.provider.address, s.publisher.address, s.treasury.address, s.requester.address, s.market.address,
            s.providers.address, s.deployer.address)  # fmt: skip


@pytest.mark.parametrize("before", [False, True], ids=["after-transfer", "before-transfer"])
@pytest.mark.parametrize("recipient", ["provider", "requester"])
def test_finalize_reentering_finalize_is_refused_and_pays_once(hs, before, recipient):
    s = hs
    d, job_id = _submitted_job(s)
    job = d.jobs[job_id]
    arm(s, s.market, s.market.finalize.prepare_calldata(job_id, job.as_tuple()), getattr(s, recipient), before=before)
    start = holdings(s, *_parties(s))
    d.finalize(job_id)
    assert_blocked_by_lock(s)
    assert changes(start, holdings(s, *_parties(s))) == _expected_settlement(s)
    assert d.jobs[job_id].state is JobState.SETTLED
    assert s.market.jobCommitment(job_id) == d.jobs[job_id].commitment()
    assert s.providers.providers(s.provider.address).bonded == 0
    # An honest retry, with either struct, is refused: nothing is paid twice.
    with boa.reverts("market: job does not match its commitment"):
        s.market.finalize(job_id, job.as_tuple())
    with boa.reverts("market: job is not submitted"):
        s.market.finalize(job_id, d.jobs[job_id].as_tuple())
    assert s.token.balanceOf(s.market.address) == 0


def test_finalize_reentering_other_market_functions_is_refused(hs):
    s = hs
    d, job_id = _submitted_job(s)
    job = d.jobs[job_id]
    payloads = [
        s.market.refundExpired.prepare_calldata(job_id, job.as_tuple()),
        s.market.resolveDispute.prepare_calldata(job_id, job.as_tuple(), True),
        s.market.createJob.prepare_calldata(s.model_id, INPUT_CID, ONE, now() + 3_600, ZERO_ADDRESS, 0),
    ]
    for payload in payloads:
        with boa.env.anchor():
            arm(s, s.market, payload, s.provider)
            start = holdings(s, *_parties(s))
            d2 = JobDriver(s)
            d2.jobs = dict(d.jobs)
            d2.finalize(job_id)
            assert_blocked_by_lock(s)
            assert changes(start, holdings(s, *_parties(s))) == _expected_settlement(s)


def test_finalize_with_a_bubbling_callback_reverts_whole_and_an_honest_retry_pays_once(hs):
    s = hs
    d, job_id = _submitted_job(s)
    job = d.jobs[job_id]
    arm(s, s.market, s.market.finalize.prepare_calldata(job_id, job.as_tuple()), s.provider, bubble=True)
    start = holdings(s, *_parties(s))
    with boa.reverts():
        d.finalize(job_id)
    assert holdings(s, *_parties(s)) == start
    assert s.market.jobCommitment(job_id) == job.commitment()  # still Submitted
    assert s.token.armed()  # the attack's own state was rolled back too
    s.token.disarm()
    d.finalize(job_id)
    assert changes(start, holdings(s, *_parties(s))) == _expected_settlement(s)
    assert s.token.attempts() == 0


def test_state_is_final_before_the_token_is_called(hs):
    """Control: the callback does reach the market mid-settlement (a view is not
    locked) and sees the job already Settled: checks-effects-interactions."""
    s = hs
    d, job_id = _submitted_job(s)
    arm(s, s.market, s.market.jobCommitment.prepare_calldata(job_id), s.provider)
    d.finalize(job_id)
    assert s.token.attempts() == 1 and s.token.lastSuccess() is True
    assert s.token.lastReturnData() == d.jobs[job_id].commitment()
    assert d.jobs[job_id].state is JobState.SETTLED


@pytest.mark.parametrize("bubble", [False, True])
def test_refund_expired_open_job_reentering_is_refused_and_refunds_once(hs, bubble):
    s = hs
    d = JobDriver(s)
    job_id = d.create(max_payment=MAX_PAYMENT, duration=600)
    job = d.jobs[job_id]
    warp(600)
    arm(s, s.market, s.market.refundExpired.prepare_calldata(job_id, job.as_tuple()), s.requester, bubble=bubble)
    start = holdings(s, *_parties(s))
    if bubble:
        with boa.reverts():
            d.refund_expired(job_id)
        assert holdings(s, *_parties(s)) == start
        assert s.market.jobCommitment(job_id) == job.commitment()
        s.token.disarm()
        d.refund_expired(job_id)
    else:
        d.refund_expired(job_id)
        assert_blocked_by_lock(s)
    assert changes(start, holdings(s, *_parties(s))) == {s.requester.address: MAX_PAYMENT, s.market.address: -MAX_PAYMENT}
    with boa.reverts("market: job is not open or claimed"):
        s.market.refundExpired(job_id, d.jobs[job_id].as_tuple())


@pytest.mark.parametrize("bubble", [False, True])
def test_refund_expired_claimed_job_reentering_from_the_slash_is_refused(hs, bubble):
    """The first transfer to the requester is the bond slashed by ProviderRegistry;
    the callback re-enters the market, which is still mid-refund."""
    s = hs
    d = JobDriver(s)
    job_id = d.create(max_payment=MAX_PAYMENT, duration=600)
    d.claim(job_id)
    job = d.jobs[job_id]
    bond = MAX_PAYMENT * BOND_BPS // 10_000
    assert job.bond == bond
    stake_before = s.providers.providers(s.provider.address).stake
    warp(600)
    arm(s, s.market, s.market.refundExpired.prepare_calldata(job_id, job.as_tuple()), s.requester, bubble=bubble)
    start = holdings(s, *_parties(s))
    if bubble:
        with boa.reverts():
            d.refund_expired(job_id)
        assert holdings(s, *_parties(s)) == start
        assert s.providers.providers(s.provider.address).bonded == bond
        s.token.disarm()
        d.refund_expired(job_id)
    else:
        d.refund_expired(job_id)
        assert_blocked_by_lock(s)
    assert changes(start, holdings(s, *_parties(s))) == {
        s.requester.address: MAX_PAYMENT + bond, s.market.address: -MAX_PAYMENT, s.providers.address: -bond,
    }  # fmt: skip
    p = s.providers.providers(s.provider.address)
    assert (p.stake, p.bonded, p.totalSlashed) == (stake_before - bond, 0, bond)


def _token_as_requester_job(s) -> tuple[int, jobs.Job]:
    """A job whose requester is the token contract itself, so its callback
    comes from the one account allowed to cancel."""
    t = s.token
    with boa.env.prank(s.deployer.address):
        t.mint(t.address, 100 * ONE)
    t.execute(t.address, t.approve.prepare_calldata(s.market.address, MAX_UINT))
    deadline = now() + 86_400
    ret = t.execute(s.market.address, s.market.createJob.prepare_calldata(s.model_id, INPUT_CID, MAX_PAYMENT, deadline, ZERO_ADDRESS, 0))
    (job_id,) = decode(["uint256"], ret)
    job = jobs.Job(
        requester=t.address, model_id=s.model_id, input_hash=keccak(text=INPUT_CID), max_payment=MAX_PAYMENT,
        deadline=deadline, priority_provider=ZERO_ADDRESS, priority_until=0, model_owner=s.publisher.address,
        revenue_share_bps=REVENUE_SHARE_BPS, protocol_fee_bps=PROTOCOL_FEE_BPS, challenge_window=CHALLENGE_WINDOW,
        bond=MAX_PAYMENT * BOND_BPS // 10_000, state=JobState.OPEN, provider=ZERO_ADDRESS, charge=0,
        output_hash=b"\x00" * 32, window_ends=0,
    )  # fmt: skip
    assert s.market.jobCommitment(job_id) == job.commitment()
    return job_id, job


@pytest.mark.parametrize("reenter", ["cancelJob", "refundExpired"])
def test_cancel_job_reentered_by_the_requester_is_refused_and_refunds_once(hs, reenter):
    s = hs
    job_id, job = _token_as_requester_job(s)
    cancel = s.market.cancelJob.prepare_calldata(job_id, job.as_tuple())
    payload = cancel if reenter == "cancelJob" else s.market.refundExpired.prepare_calldata(job_id, job.as_tuple())
    arm(s, s.market, payload, s.token.address)
    parties = (s.token.address, s.market.address)
    start = holdings(s, *parties)
    s.token.execute(s.market.address, cancel)
    assert_blocked_by_lock(s)
    assert changes(start, holdings(s, *parties)) == {s.token.address: MAX_PAYMENT, s.market.address: -MAX_PAYMENT}
    cancelled = jobs.refunded(job)
    assert s.market.jobCommitment(job_id) == cancelled.commitment()
    with boa.reverts():  # the market refuses a second cancel (the token's execute bubbles it up)
        s.token.execute(s.market.address, s.market.cancelJob.prepare_calldata(job_id, cancelled.as_tuple()))
    assert holdings(s, *parties) == {s.token.address: start[s.token.address] + MAX_PAYMENT, s.market.address: 0}


def test_cancel_job_with_a_bubbling_callback_reverts_whole(hs):
    s = hs
    job_id, job = _token_as_requester_job(s)
    cancel = s.market.cancelJob.prepare_calldata(job_id, job.as_tuple())
    arm(s, s.market, cancel, s.token.address, bubble=True)
    parties = (s.token.address, s.market.address)
    start = holdings(s, *parties)
    with boa.reverts():
        s.token.execute(s.market.address, cancel)
    assert holdings(s, *parties) == start
    assert s.market.jobCommitment(job_id) == job.commitment()
    s.token.disarm()
    s.token.execute(s.market.address, cancel)
    assert changes(start, holdings(s, *parties)) == {s.token.address: MAX_PAYMENT, s.market.address: -MAX_PAYMENT}


# --- InferenceEscrow ---------------------------------------------------------------------------

DEPOSIT = 10 * ONE
OWED = 4 * ONE + 77


def _escrow_parties(s) -> tuple[str, ...]:
    return (s.provider.address, s.publisher.address, s.treasury.address, s.payer.address, s.escrow.address)


def _signed(s, cumulative: int, expiry_in: int = 10 * WITHDRAW_TIMELOCK) -> tuple[Voucher, bytes]:
    v = Voucher(s.payer.address, s.provider.address, s.model_id, cumulative, now() + expiry_in)
    return v, sign_voucher(v, s.payer.key, boa.env.evm.patch.chain_id, s.escrow.address)


def _expected_redemption(s, amount: int) -> dict[str, int]:
    split = split_payment(amount, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS)
    return {
        s.provider.address: split.provider, s.publisher.address: split.model_owner,
        s.treasury.address: split.protocol_fee, s.escrow.address: -amount,
    }  # fmt: skip


def _deposit(s) -> None:
    with boa.env.prank(s.payer.address):
        s.escrow.deposit(s.provider.address, DEPOSIT)


def _reentry_payloads(s, v: Voucher, sig: bytes, higher: tuple[Voucher, bytes]) -> dict[str, bytes]:
    return {
        "same-voucher": s.escrow.redeem.prepare_calldata(v.as_tuple(), sig),
        "higher-voucher": s.escrow.redeem.prepare_calldata(higher[0].as_tuple(), higher[1]),
        "batch": s.escrow.redeemBatch.prepare_calldata(s.provider.address, [v.as_tuple()], [sig]),
        "withdraw": s.escrow.withdraw.prepare_calldata(s.provider.address),
        "deposit": s.escrow.deposit.prepare_calldata(s.provider.address, ONE),
    }


@pytest.mark.parametrize("payload", ["same-voucher", "higher-voucher", "batch", "withdraw", "deposit"])
@pytest.mark.parametrize("recipient", ["publisher", "provider", "treasury"])
def test_redeem_reentered_is_refused_and_pays_once(hs, payload, recipient):
    s = hs
    _deposit(s)
    v, sig = _signed(s, OWED)
    higher = _signed(s, OWED + 2 * ONE)
    arm(s, s.escrow, _reentry_payloads(s, v, sig, higher)[payload], getattr(s, recipient))
    start = holdings(s, *_escrow_parties(s))
    with boa.env.prank(s.provider.address):
        assert s.escrow.redeem(v.as_tuple(), sig) == OWED
    assert_blocked_by_lock(s)
    assert changes(start, holdings(s, *_escrow_parties(s))) == _expected_redemption(s, OWED)
    assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == OWED
    assert s.escrow.channels(s.payer.address, s.provider.address).balance == DEPOSIT - OWED
    # An honest retry of the same voucher pays nothing; the higher one pays only its delta.
    with boa.env.prank(s.provider.address):
        assert s.escrow.redeem(v.as_tuple(), sig) == 0
        assert s.escrow.redeem(higher[0].as_tuple(), higher[1]) == 2 * ONE
    assert s.token.balanceOf(s.escrow.address) == DEPOSIT - OWED - 2 * ONE


def test_redeem_batch_reentered_is_refused_and_pays_once(hs):
    s = hs
    _deposit(s)
    v, sig = _signed(s, OWED)
    arm(s, s.escrow, s.escrow.redeemBatch.prepare_calldata(s.provider.address, [v.as_tuple()], [sig]), s.provider)
    start = holdings(s, *_escrow_parties(s))
    with boa.env.prank(s.provider.address):
        assert s.escrow.redeemBatch(s.provider.address, [v.as_tuple()], [sig]) == OWED
    assert_blocked_by_lock(s)
    assert changes(start, holdings(s, *_escrow_parties(s))) == _expected_redemption(s, OWED)


def test_redeem_with_a_bubbling_callback_reverts_whole_and_an_honest_retry_pays_once(hs):
    s = hs
    _deposit(s)
    v, sig = _signed(s, OWED)
    arm(s, s.escrow, s.escrow.redeem.prepare_calldata(v.as_tuple(), sig), s.provider, bubble=True, before=True)
    start = holdings(s, *_escrow_parties(s))
    with boa.reverts():
        with boa.env.prank(s.provider.address):
            s.escrow.redeem(v.as_tuple(), sig)
    assert holdings(s, *_escrow_parties(s)) == start
    assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == 0
    s.token.disarm()
    with boa.env.prank(s.provider.address):
        assert s.escrow.redeem(v.as_tuple(), sig) == OWED
        assert s.escrow.redeem(v.as_tuple(), sig) == 0
    assert changes(start, holdings(s, *_escrow_parties(s))) == _expected_redemption(s, OWED)


def test_escrow_books_the_redemption_before_paying(hs):
    """Control: the callback reaches the escrow mid-redemption and already sees
    the delta booked, so even without the lock a replay would pay 0."""
    s = hs
    _deposit(s)
    v, sig = _signed(s, OWED)
    arm(s, s.escrow, s.escrow.redeemable.prepare_calldata(v.as_tuple()), s.provider)
    with boa.env.prank(s.provider.address):
        s.escrow.redeem(v.as_tuple(), sig)
    assert s.token.attempts() == 1 and s.token.lastSuccess() is True
    assert decode(["uint256"], s.token.lastReturnData()) == (0,)


def _token_as_payer(s, amount: int = DEPOSIT) -> None:
    """The token contract deposits for itself, so its callback comes from the payer."""
    t = s.token
    with boa.env.prank(s.deployer.address):
        t.mint(t.address, amount)
    t.execute(t.address, t.approve.prepare_calldata(s.escrow.address, MAX_UINT))
    t.execute(s.escrow.address, s.escrow.deposit.prepare_calldata(s.provider.address, amount))
    t.execute(s.escrow.address, s.escrow.requestWithdrawal.prepare_calldata(s.provider.address))
    warp(WITHDRAW_TIMELOCK)


@pytest.mark.parametrize("before", [False, True], ids=["after-transfer", "before-transfer"])
def test_withdraw_reentered_by_the_payer_is_refused_and_pays_once(hs, before):
    s = hs
    _token_as_payer(s)
    withdraw = s.escrow.withdraw.prepare_calldata(s.provider.address)
    arm(s, s.escrow, withdraw, s.token.address, before=before)
    parties = (s.token.address, s.escrow.address)
    start = holdings(s, *parties)
    s.token.execute(s.escrow.address, withdraw)
    assert_blocked_by_lock(s)
    assert changes(start, holdings(s, *parties)) == {s.token.address: DEPOSIT, s.escrow.address: -DEPOSIT}
    c = s.escrow.channels(s.token.address, s.provider.address)
    assert (c.balance, c.unlockAt) == (0, 0)
    with boa.reverts():  # "escrow: no withdrawal requested", bubbled up through execute
        s.token.execute(s.escrow.address, withdraw)
    assert s.token.balanceOf(s.escrow.address) == 0


def test_withdraw_with_a_bubbling_callback_reverts_whole_and_an_honest_retry_pays_once(hs):
    s = hs
    _token_as_payer(s)
    withdraw = s.escrow.withdraw.prepare_calldata(s.provider.address)
    arm(s, s.escrow, withdraw, s.token.address, bubble=True)
    parties = (s.token.address, s.escrow.address)
    start = holdings(s, *parties)
    with boa.reverts():
        s.token.execute(s.escrow.address, withdraw)
    assert holdings(s, *parties) == start
    assert s.escrow.channels(s.token.address, s.provider.address).balance == DEPOSIT
    s.token.disarm()
    s.token.execute(s.escrow.address, withdraw)
    assert changes(start, holdings(s, *parties)) == {s.token.address: DEPOSIT, s.escrow.address: -DEPOSIT}


def test_withdraw_reentering_request_withdrawal_gains_nothing(hs):
    """requestWithdrawal is not locked (it moves no tokens); re-entering it while
    the withdrawal pays out finds the channel already emptied."""
    s = hs
    _token_as_payer(s)
    withdraw = s.escrow.withdraw.prepare_calldata(s.provider.address)
    arm(s, s.escrow, s.escrow.requestWithdrawal.prepare_calldata(s.provider.address), s.token.address)
    start = holdings(s, s.token.address, s.escrow.address)
    s.token.execute(s.escrow.address, withdraw)
    assert s.token.attempts() == 1 and s.token.lastSuccess() is False
    error = s.token.lastReturnData()
    assert error[:4] == keccak(text="Error(string)")[:4]
    assert decode(["string"], error[4:]) == ("escrow: nothing deposited",)
    assert changes(start, holdings(s, s.token.address, s.escrow.address)) == {
        s.token.address: DEPOSIT, s.escrow.address: -DEPOSIT,
    }  # fmt: skip


def test_hostile_token_is_a_working_erc20(hs):
    """The fixture itself: transfers, allowances and the one-shot arming behave."""
    s = hs
    t = s.token
    a, b = actor("alice"), actor("bob")
    with boa.env.prank(s.deployer.address):
        t.mint(a.address, 5)
    with boa.reverts("token: caller is not the minter"):
        with boa.env.prank(a.address):
            t.mint(a.address, 5)
    with boa.env.prank(a.address):
        assert t.approve(b.address, 3)
    with boa.env.prank(b.address):
        assert t.transferFrom(a.address, b.address, 2)
        with boa.reverts("token: insufficient allowance"):
            t.transferFrom(a.address, b.address, 2)
    assert (t.balanceOf(a.address), t.balanceOf(b.address), t.allowance(a.address, b.address)) == (3, 2, 1)
    with boa.env.prank(b.address):
        with boa.reverts("token: insufficient balance"):
            t.transfer(a.address, 3)
    arm(s, s.escrow, s.escrow.withdrawTimelock.prepare_calldata(), a.address)
    with boa.env.prank(b.address):
        t.transfer(s.provider.address, 1)  # not the trigger recipient: nothing fires
        assert t.attempts() == 0
        t.transfer(a.address, 1)
    assert t.attempts() == 1 and t.lastSuccess() is True
    assert decode(["uint256"], t.lastReturnData()) == (WITHDRAW_TIMELOCK,)
    assert not t.armed()
