"""Pure Python mirror of the job lifecycle and the payment split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.chain import jobs
from nodeai.chain.fees import MAX_PROTOCOL_FEE_BPS, MAX_REVENUE_SHARE_BPS, split_payment
from nodeai.chain.jobs import Job, JobState, JobTransitionError

REQUESTER = "0x" + "11" * 20
PROVIDER = "0x" + "22" * 20


def created(**overrides) -> dict:
    args = {
        "requester": REQUESTER, "modelId": 1, "inputHash": b"\x01" * 32, "maxPayment": 10, "deadline": 100,
        "priorityProvider": jobs.ZERO_ADDRESS, "priorityUntil": 0, "modelOwner": "0x" + "33" * 20,
        "revenueShareBps": 1_000, "protocolFeeBps": 250, "challengeWindow": 60, "bond": 2,
    }  # fmt: skip
    return args | overrides


def test_events_rebuild_the_struct_through_a_whole_lifecycle():
    job = jobs.apply_event(None, "JobCreated", created())
    assert job.state is JobState.OPEN and job.provider == jobs.ZERO_ADDRESS
    job = jobs.apply_event(job, "JobClaimed", {"provider": PROVIDER, "bond": 2})
    job = jobs.apply_event(job, "JobSubmitted", {"outputHash": b"\x02" * 32, "charge": 4, "challengeEnds": 160})
    assert (job.state, job.charge, job.window_ends) == (JobState.SUBMITTED, 4, 160)
    job = jobs.apply_event(job, "JobDisputed", {"arbitrationEnds": 500})
    job = jobs.apply_event(job, "JobSettled", {})
    assert job.state is JobState.SETTLED and job.state.is_final


def test_commitment_changes_with_every_field():
    job = Job.from_created(created())
    seen = {job.commitment()}
    for name in jobs.JOB_FIELDS:
        value = getattr(job, name)
        if isinstance(value, bytes):
            changed = b"\xff" * 32
        elif isinstance(value, str):
            changed = "0x" + "44" * 20
        else:
            changed = int(value) + 1
        seen.add(jobs.replace(job, **{name: changed}).commitment())
    assert len(seen) == len(jobs.JOB_FIELDS) + 1


@pytest.mark.parametrize(
    "state, event, args",
    [
        (JobState.CLAIMED, "JobClaimed", {"provider": PROVIDER}),
        (JobState.OPEN, "JobSubmitted", {"outputHash": b"\x02" * 32, "charge": 1, "challengeEnds": 1}),
        (JobState.CLAIMED, "JobDisputed", {"arbitrationEnds": 1}),
        (JobState.OPEN, "JobSettled", {}),
        (JobState.SETTLED, "JobRefunded", {}),
        (JobState.REFUNDED, "JobSettled", {}),
    ],
)
def test_transitions_the_contract_refuses_are_refused(state, event, args):
    job = jobs.replace(Job.from_created(created()), state=state)
    with pytest.raises(JobTransitionError, match="^market: "):
        jobs.apply_event(job, event, args)


def test_charge_above_max_payment_is_refused():
    job = jobs.claimed(Job.from_created(created(maxPayment=5)), PROVIDER)
    with pytest.raises(JobTransitionError, match="charge above maxPayment"):
        jobs.submitted(job, b"\x02" * 32, 6, 100)


def test_an_event_before_job_created_is_an_error():
    with pytest.raises(JobTransitionError, match="JobCreated was not seen"):
        jobs.apply_event(None, "JobClaimed", {"provider": PROVIDER})


EVENTS = st.sampled_from(["JobClaimed", "JobSubmitted", "JobDisputed", "JobSettled", "JobRefunded"])
ARGS = {"provider": PROVIDER, "outputHash": b"\x02" * 32, "charge": 3, "challengeEnds": 9, "arbitrationEnds": 9}


@given(st.lists(EVENTS, max_size=12))
def test_a_final_job_never_changes_again(sequence):
    job = Job.from_created(created())
    for event in sequence:
        before = job
        try:
            job = jobs.apply_event(job, event, ARGS)
        except JobTransitionError:
            continue
        assert not before.state.is_final, f"{event} moved a {before.state.name} job"


@given(
    st.integers(min_value=0, max_value=2**200),
    st.integers(min_value=0, max_value=MAX_REVENUE_SHARE_BPS),
    st.integers(min_value=0, max_value=MAX_PROTOCOL_FEE_BPS),
)
def test_split_pays_out_exactly_the_amount(amount, share_bps, fee_bps):
    split = split_payment(amount, share_bps, fee_bps)
    assert split.total == amount
    assert min(split.provider, split.model_owner, split.protocol_fee) >= 0
    assert split.protocol_fee <= amount * fee_bps // 10_000


@pytest.mark.parametrize("amount, share, fee, message", [
    (-1, 0, 0, "amount must be >= 0"),
    (1, MAX_REVENUE_SHARE_BPS + 1, 0, "revenue share must be within"),
    (1, 0, MAX_PROTOCOL_FEE_BPS + 1, "protocol fee must be within"),
])  # fmt: skip
def test_split_rejects_out_of_range_terms(amount, share, fee, message):
    with pytest.raises(ValueError, match=message):
        split_payment(amount, share, fee)
