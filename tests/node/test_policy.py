"""The claim policy and the job charge (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodeai.node.policy import ClaimPolicy, JobOffer, Verdict, claim_decision, job_charge

ME = "0x" + "11" * 20
OTHER = "0x" + "22" * 20
NONE = "0x" + "00" * 20
POLICY = ClaimPolicy(frozenset({1, 2}), min_payment=1_000, capacity=2, min_time_to_deadline=60)


def offer(**kw) -> JobOffer:
    values = dict(model_id=1, max_payment=5_000, deadline=1_000, bond=100, priority_provider=NONE, priority_until=0)
    return JobOffer(**(values | kw))


def decide(o: JobOffer, in_progress: int = 0, now: int = 100, free: int = 10_000):
    return claim_decision(o, POLICY, in_progress=in_progress, now=now, free_stake=free, provider=ME)


def test_each_rule() -> None:
    assert decide(offer()).verdict is Verdict.CLAIM
    assert decide(offer(model_id=9)).verdict is Verdict.SKIP
    assert "below the floor" in decide(offer(max_payment=999)).reason
    assert decide(offer(max_payment=1_000)).verdict is Verdict.CLAIM
    assert decide(offer(deadline=159)).verdict is Verdict.SKIP
    assert decide(offer(deadline=160)).verdict is Verdict.CLAIM
    assert "free stake" in decide(offer(bond=10_001)).reason
    assert decide(offer(), in_progress=2).verdict is Verdict.LATER
    later = decide(offer(priority_provider=OTHER, priority_until=500))
    assert later.verdict is Verdict.LATER and later.not_before == 500
    assert decide(offer(priority_provider=ME, priority_until=500)).verdict is Verdict.CLAIM
    assert decide(offer(priority_provider=OTHER, priority_until=100)).verdict is Verdict.CLAIM
    assert decide(offer(priority_provider=OTHER, priority_until=990)).verdict is Verdict.SKIP


@given(st.integers(0, 5), st.integers(0, 3_000), st.integers(0, 2_000), st.integers(0, 20_000), st.integers(0, 3),
       st.integers(0, 2_000), st.sampled_from([ME, OTHER, NONE]), st.integers(0, 20_000))
def test_a_claim_satisfies_every_rule(model: int, pay: int, deadline: int, bond: int, busy: int, until: int,
                                      prio: str, free: int) -> None:
    o = offer(model_id=model, max_payment=pay, deadline=deadline, bond=bond, priority_provider=prio, priority_until=until)
    d = decide(o, in_progress=busy, now=100, free=free)
    if d.verdict is Verdict.CLAIM:
        assert model in POLICY.served_models and pay >= POLICY.min_payment and deadline - 100 >= 60
        assert busy < POLICY.capacity and bond <= free and (prio in (ME, NONE) or until <= 100)


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**12))
def test_charge_is_the_price_rounded_up_and_capped(tokens: int, price: int, max_payment: int) -> None:
    charge = job_charge(tokens, price, max_payment)
    assert 0 <= charge <= max_payment
    if charge < max_payment:
        assert charge * 1000 >= tokens * price > (charge - 1) * 1000
