"""Unit tests of contracts/ProviderRegistry.vy: registration, endpoints, model
prices, stake and unbonding, the market-only bond / release / slash, governance
and the stats the job market keeps.

The suite registers ``provider`` and ``provider2`` with 1,000 tokens each;
``fresh`` (a new actor with tokens and an allowance) covers registration.
"""

from __future__ import annotations

import boa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeai.chain.jobs import ZERO_ADDRESS
from tests.contracts.conftest import (
    ARTIFACT_CID,
    CHALLENGE_WINDOW,
    MANIFEST_CID,
    MIN_STAKE,
    ONE,
    UNBONDING_DELAY,
    actor,
    call_as,
    last_event,
    now,
    provider_info,
    warp,
)

DAY = 86_400
MAX_UINT256 = 2**256 - 1
STAKE = 1_000 * ONE  # what the suite staked for provider and provider2


# --------------------------------------------------------------------------- helpers


def event(s, name: str) -> dict:
    """The last ``name`` event of the last call to the registry (emitter checked)."""
    args = last_event(s.providers, name)
    assert args.pop("address") == s.providers.address
    return args


def fund(s, who, amount: int, approve: bool = True) -> None:
    with boa.env.prank(s.deployer.address):
        s.token.mint(who.address, amount)
    if approve:
        with boa.env.prank(who.address):
            s.token.approve(s.providers.address, MAX_UINT256)


def fresh(s, name: str = "fresh", amount: int = 10_000 * ONE, approve: bool = True):
    who = actor(name)
    fund(s, who, amount, approve)
    return who


def registry_balance_matches_stakes(s, *who) -> bool:
    """The registry's token balance is the sum of stake + unbonding over providers."""
    total = sum(provider_info(s, w)["stake"] + provider_info(s, w)["unbonding"] for w in who)
    return s.token.balanceOf(s.providers.address) == total


def fake_market(s):
    """An EOA the owner authorizes as a market, to drive bond / release / slash directly."""
    market = actor("fake-market")
    call_as(s.deployer, s.providers.setMarket, market.address, True)
    return market


# --------------------------------------------------------------------------- register


def test_register_stakes_and_records_endpoint(suite):
    s = suite
    who = fresh(s)
    before = s.token.balanceOf(s.providers.address)
    call_as(who, s.providers.register, "https://fresh.example/v1", "12D3KooWfresh", 250 * ONE)
    assert event(s, "ProviderRegistered") == {
        "provider": who.address,
        "endpoint": "https://fresh.example/v1",
        "peerId": "12D3KooWfresh",
        "stake": 250 * ONE,
    }
    assert s.providers.isRegistered(who.address)
    assert s.providers.endpoint(who.address) == "https://fresh.example/v1"
    assert s.providers.peerId(who.address) == "12D3KooWfresh"
    assert provider_info(s, who) == {
        "registered": True, "stake": 250 * ONE, "bonded": 0, "unbonding": 0, "unbondingReadyAt": 0,
        "jobsCompleted": 0, "jobsFailed": 0, "disputesLost": 0, "totalSlashed": 0,
    }  # fmt: skip
    assert s.providers.freeStake(who.address) == 250 * ONE
    assert s.token.balanceOf(who.address) == 10_000 * ONE - 250 * ONE
    assert s.token.balanceOf(s.providers.address) == before + 250 * ONE
    assert registry_balance_matches_stakes(s, s.provider, s.provider2, who)


def test_register_twice_reverts(suite):
    s = suite
    with boa.reverts("providers: already registered"):
        call_as(s.provider, s.providers.register, "https://again.example", "peer", MIN_STAKE)
    who = fresh(s)
    call_as(who, s.providers.register, "https://fresh.example", "peer", MIN_STAKE)
    with boa.reverts("providers: already registered"):
        call_as(who, s.providers.register, "https://fresh.example", "peer", MIN_STAKE)
    assert provider_info(s, who)["stake"] == MIN_STAKE


def test_register_empty_endpoint_reverts(suite):
    s = suite
    who = fresh(s)
    with boa.reverts("providers: endpoint is empty"):
        call_as(who, s.providers.register, "", "peer", MIN_STAKE)
    assert not s.providers.isRegistered(who.address)
    call_as(who, s.providers.register, "h", "", MIN_STAKE)  # one character and no peer id are fine
    assert s.providers.isRegistered(who.address)


def test_register_stake_below_min_reverts(suite):
    s = suite
    who = fresh(s)
    for amount in (0, MIN_STAKE - 1):
        with boa.reverts("providers: stake below minStake"):
            call_as(who, s.providers.register, "https://fresh.example", "peer", amount)
    call_as(who, s.providers.register, "https://fresh.example", "peer", MIN_STAKE)
    assert provider_info(s, who)["stake"] == MIN_STAKE


def test_register_without_allowance_or_balance_reverts(suite):
    s = suite
    who = fresh(s, amount=MIN_STAKE, approve=False)
    with boa.reverts("erc20: insufficient allowance"):
        call_as(who, s.providers.register, "https://fresh.example", "peer", MIN_STAKE)
    with boa.env.prank(who.address):
        s.token.approve(s.providers.address, MAX_UINT256)
    with boa.reverts("erc20: transfer amount exceeds balance"):
        call_as(who, s.providers.register, "https://fresh.example", "peer", MIN_STAKE + 1)
    assert not s.providers.isRegistered(who.address)
    assert s.token.balanceOf(who.address) == MIN_STAKE


# --------------------------------------------------------------------------- updateEndpoint


def test_update_endpoint(suite):
    s = suite
    call_as(s.provider, s.providers.updateEndpoint, "https://new.example", "12D3KooWnew")
    assert event(s, "ProviderEndpointChanged") == {
        "provider": s.provider.address, "endpoint": "https://new.example", "peerId": "12D3KooWnew",
    }  # fmt: skip
    assert s.providers.endpoint(s.provider.address) == "https://new.example"
    assert s.providers.peerId(s.provider.address) == "12D3KooWnew"
    assert s.providers.endpoint(s.provider2.address) == "https://provider2.example"


def test_update_endpoint_reverts(suite):
    s = suite
    with boa.reverts("providers: not registered"):
        call_as(actor("stranger"), s.providers.updateEndpoint, "https://x.example", "peer")
    with boa.reverts("providers: endpoint is empty"):
        call_as(s.provider, s.providers.updateEndpoint, "", "peer")
    assert s.providers.endpoint(s.provider.address) == "https://provider.example"


# --------------------------------------------------------------------------- setModelPrice


def test_set_model_price(suite):
    s = suite
    call_as(s.provider, s.providers.setModelPrice, s.model_id, 42)
    assert event(s, "ModelServed") == {"provider": s.provider.address, "modelId": s.model_id, "pricePer1kTokens": 42}
    assert s.providers.modelPrice(s.provider.address, s.model_id) == 42
    assert s.providers.modelPrice(s.provider2.address, s.model_id) == 5 * ONE // 1000


def test_set_model_price_unregistered_reverts(suite):
    s = suite
    with boa.reverts("providers: not registered"):
        call_as(actor("stranger"), s.providers.setModelPrice, s.model_id, 1)
    with boa.reverts("providers: not registered"):
        call_as(actor("stranger"), s.providers.setModelPrice, s.model_id, 0)


def test_set_model_price_deprecated_or_unknown_model_reverts(suite):
    s = suite
    for model_id in (0, 999):
        with boa.reverts("providers: model not registered or deprecated"):
            call_as(s.provider, s.providers.setModelPrice, model_id, 1)
    call_as(s.publisher, s.models.deprecate, s.model_id)
    with boa.reverts("providers: model not registered or deprecated"):
        call_as(s.provider, s.providers.setModelPrice, s.model_id, 7)
    # stopping to serve a deprecated model is always possible
    call_as(s.provider, s.providers.setModelPrice, s.model_id, 0)
    assert s.providers.modelPrice(s.provider.address, s.model_id) == 0


def test_set_model_price_zero_stops_serving(suite, driver):
    s = suite
    call_as(s.provider, s.providers.setModelPrice, s.model_id, 0)
    assert event(s, "ModelServed")["pricePer1kTokens"] == 0
    assert s.providers.modelPrice(s.provider.address, s.model_id) == 0
    job_id = driver.create()
    with boa.reverts("providers: model not served"):
        driver.claim(job_id)
    call_as(s.provider, s.providers.setModelPrice, s.model_id, 1)  # serving again
    driver.claim(job_id)
    assert provider_info(s, s.provider)["bonded"] == driver.jobs[job_id].bond


# --------------------------------------------------------------------------- addStake


def test_add_stake(suite):
    s = suite
    before = s.token.balanceOf(s.provider.address)
    call_as(s.provider, s.providers.addStake, 5 * ONE)
    assert event(s, "StakeAdded") == {"provider": s.provider.address, "amount": 5 * ONE, "stake": STAKE + 5 * ONE}
    assert provider_info(s, s.provider)["stake"] == STAKE + 5 * ONE
    assert s.token.balanceOf(s.provider.address) == before - 5 * ONE
    assert registry_balance_matches_stakes(s, s.provider, s.provider2)


def test_add_stake_reverts(suite):
    s = suite
    with boa.reverts("providers: amount is zero"):
        call_as(s.provider, s.providers.addStake, 0)
    with boa.reverts("providers: not registered"):
        call_as(fresh(s), s.providers.addStake, ONE)
    with boa.reverts("erc20: transfer amount exceeds balance"):
        call_as(s.provider, s.providers.addStake, s.token.balanceOf(s.provider.address) + 1)
    assert provider_info(s, s.provider)["stake"] == STAKE


# --------------------------------------------------------------------------- unbonding


def test_request_unbond_and_withdraw_after_delay(suite):
    s = suite
    call_as(s.provider, s.providers.requestUnbond, 300 * ONE)
    ready_at = now() + UNBONDING_DELAY
    assert event(s, "UnbondingStarted") == {
        "provider": s.provider.address, "amount": 300 * ONE, "stake": 700 * ONE,
        "unbonding": 300 * ONE, "readyAt": ready_at,
    }  # fmt: skip
    p = provider_info(s, s.provider)
    assert (p["stake"], p["unbonding"], p["unbondingReadyAt"]) == (700 * ONE, 300 * ONE, ready_at)
    assert s.providers.freeStake(s.provider.address) == 700 * ONE
    assert registry_balance_matches_stakes(s, s.provider, s.provider2)

    warp(UNBONDING_DELAY - 1)
    with boa.reverts("providers: unbonding delay not over"):
        call_as(s.provider, s.providers.withdrawUnbonded)
    warp(1)
    before = s.token.balanceOf(s.provider.address)
    call_as(s.provider, s.providers.withdrawUnbonded)
    assert event(s, "UnbondedWithdrawn") == {"provider": s.provider.address, "amount": 300 * ONE}
    assert s.token.balanceOf(s.provider.address) == before + 300 * ONE
    assert provider_info(s, s.provider)["unbonding"] == 0 and provider_info(s, s.provider)["stake"] == 700 * ONE
    assert registry_balance_matches_stakes(s, s.provider, s.provider2)
    with boa.reverts("providers: nothing unbonding"):
        call_as(s.provider, s.providers.withdrawUnbonded)


def test_withdraw_unbonded_nothing_unbonding_reverts(suite):
    s = suite
    with boa.reverts("providers: nothing unbonding"):
        call_as(s.provider, s.providers.withdrawUnbonded)
    with boa.reverts("providers: nothing unbonding"):
        call_as(actor("stranger"), s.providers.withdrawUnbonded)


def test_request_unbond_restarts_delay_for_whole_queue(suite):
    s = suite
    call_as(s.provider, s.providers.requestUnbond, 100 * ONE)
    warp(UNBONDING_DELAY - 10)
    call_as(s.provider, s.providers.requestUnbond, 50 * ONE)
    assert provider_info(s, s.provider)["unbonding"] == 150 * ONE
    assert provider_info(s, s.provider)["unbondingReadyAt"] == now() + UNBONDING_DELAY
    warp(10)
    with boa.reverts("providers: unbonding delay not over"):
        call_as(s.provider, s.providers.withdrawUnbonded)
    warp(UNBONDING_DELAY - 10)
    call_as(s.provider, s.providers.withdrawUnbonded)
    assert event(s, "UnbondedWithdrawn")["amount"] == 150 * ONE


def test_request_unbond_reverts(suite):
    s = suite
    with boa.reverts("providers: not registered"):
        call_as(actor("stranger"), s.providers.requestUnbond, ONE)
    with boa.reverts("providers: amount is zero"):
        call_as(s.provider, s.providers.requestUnbond, 0)
    with boa.reverts("providers: amount exceeds unbonded stake"):
        call_as(s.provider, s.providers.requestUnbond, STAKE + 1)
    assert provider_info(s, s.provider)["unbonding"] == 0


def test_request_unbond_cannot_touch_bonded_stake(suite, driver):
    s = suite
    job_id = driver.create(max_payment=1_000 * ONE)  # bond 200
    driver.claim(job_id)
    assert s.providers.freeStake(s.provider.address) == 800 * ONE
    with boa.reverts("providers: amount exceeds unbonded stake"):
        call_as(s.provider, s.providers.requestUnbond, 800 * ONE + 1)
    call_as(s.provider, s.providers.requestUnbond, 800 * ONE)  # all the free stake
    p = provider_info(s, s.provider)
    assert (p["stake"], p["bonded"], p["unbonding"]) == (200 * ONE, 200 * ONE, 800 * ONE)
    assert s.providers.freeStake(s.provider.address) == 0
    with boa.reverts("providers: amount exceeds unbonded stake"):
        call_as(s.provider, s.providers.requestUnbond, 1)
    # the bonded job still settles and releases the bond
    driver.submit(job_id, charge=ONE)
    warp(CHALLENGE_WINDOW)
    driver.finalize(job_id)
    assert s.providers.freeStake(s.provider.address) == 200 * ONE


def test_unbonded_stake_still_withdrawable_after_slash(suite, driver):
    s = suite
    job_id = driver.create(max_payment=100 * ONE, duration=DAY)  # bond 20
    driver.claim(job_id)
    call_as(s.provider, s.providers.requestUnbond, 980 * ONE)
    warp(DAY)
    driver.refund_expired(job_id)
    p = provider_info(s, s.provider)
    assert (p["stake"], p["bonded"], p["unbonding"], p["totalSlashed"]) == (0, 0, 980 * ONE, 20 * ONE)
    assert registry_balance_matches_stakes(s, s.provider, s.provider2)
    warp(UNBONDING_DELAY)
    call_as(s.provider, s.providers.withdrawUnbonded)
    assert registry_balance_matches_stakes(s, s.provider, s.provider2)
    assert s.token.balanceOf(s.providers.address) == STAKE  # only provider2's stake is left


# --------------------------------------------------------------------------- bond / release / slash


def test_bond_release_slash_only_authorized_market(suite):
    s = suite
    msg = "providers: caller is not an authorized market"
    for caller in (s.provider, s.requester, s.deployer, s.arbiter):
        with boa.reverts(msg):
            call_as(caller, s.providers.bond, s.provider.address, s.model_id, ONE)
        with boa.reverts(msg):
            call_as(caller, s.providers.release, s.provider.address, 0, True)
        with boa.reverts(msg):
            call_as(caller, s.providers.slash, s.provider.address, 0, caller.address, False)
    # a revoked market loses the right
    market = fake_market(s)
    call_as(s.deployer, s.providers.setMarket, market.address, False)
    with boa.reverts(msg):
        call_as(market, s.providers.bond, s.provider.address, s.model_id, ONE)
    assert provider_info(s, s.provider)["bonded"] == 0


def test_bond_locks_free_stake(suite):
    s = suite
    market = fake_market(s)
    call_as(market, s.providers.bond, s.provider.address, s.model_id, 300 * ONE)
    assert event(s, "StakeBonded") == {
        "provider": s.provider.address, "market": market.address, "amount": 300 * ONE, "bonded": 300 * ONE,
    }  # fmt: skip
    call_as(market, s.providers.bond, s.provider.address, s.model_id, 700 * ONE)
    assert event(s, "StakeBonded")["bonded"] == STAKE
    assert provider_info(s, s.provider)["bonded"] == STAKE and provider_info(s, s.provider)["stake"] == STAKE
    assert s.providers.freeStake(s.provider.address) == 0
    with boa.reverts("providers: free stake below bond"):
        call_as(market, s.providers.bond, s.provider.address, s.model_id, 1)
    call_as(market, s.providers.bond, s.provider.address, s.model_id, 0)  # a zero bond always fits


def test_bond_eligibility_reverts(suite):
    s = suite
    market = fake_market(s)
    with boa.reverts("providers: not registered"):
        call_as(market, s.providers.bond, actor("stranger").address, s.model_id, 0)
    with boa.reverts("providers: model not served"):
        call_as(market, s.providers.bond, s.provider.address, 999, 0)
    call_as(s.provider, s.providers.requestUnbond, STAKE - MIN_STAKE + 1)
    with boa.reverts("providers: stake below minStake"):
        call_as(market, s.providers.bond, s.provider.address, s.model_id, 0)
    with boa.reverts("providers: free stake below bond"):
        call_as(market, s.providers.bond, s.provider2.address, s.model_id, STAKE + 1)
    assert provider_info(s, s.provider)["bonded"] == 0 and provider_info(s, s.provider2)["bonded"] == 0


def test_release_unlocks_bond(suite):
    s = suite
    market = fake_market(s)
    call_as(market, s.providers.bond, s.provider.address, s.model_id, 100 * ONE)
    call_as(market, s.providers.release, s.provider.address, 40 * ONE, False)
    assert event(s, "StakeReleased") == {
        "provider": s.provider.address, "market": market.address, "amount": 40 * ONE, "bonded": 60 * ONE,
        "completed": False,
    }  # fmt: skip
    assert provider_info(s, s.provider)["jobsCompleted"] == 0  # not completed: no stat
    call_as(market, s.providers.release, s.provider.address, 60 * ONE, True)
    p = provider_info(s, s.provider)
    assert (p["bonded"], p["stake"], p["jobsCompleted"]) == (0, STAKE, 1)
    with boa.reverts("providers: release exceeds bond"):
        call_as(market, s.providers.release, s.provider.address, 1, True)


def test_slash_pays_recipient_from_bond(suite):
    s = suite
    market = fake_market(s)
    victim = actor("victim")
    call_as(market, s.providers.bond, s.provider.address, s.model_id, 100 * ONE)
    registry_before = s.token.balanceOf(s.providers.address)
    call_as(market, s.providers.slash, s.provider.address, 30 * ONE, victim.address, False)
    assert event(s, "ProviderSlashed") == {
        "provider": s.provider.address, "recipient": victim.address, "amount": 30 * ONE,
        "stake": STAKE - 30 * ONE, "bonded": 70 * ONE, "lostDispute": False,
    }  # fmt: skip
    assert s.token.balanceOf(victim.address) == 30 * ONE
    assert s.token.balanceOf(s.providers.address) == registry_before - 30 * ONE
    p = provider_info(s, s.provider)
    assert (p["stake"], p["bonded"], p["jobsFailed"], p["disputesLost"], p["totalSlashed"]) == (
        STAKE - 30 * ONE, 70 * ONE, 1, 0, 30 * ONE,
    )  # fmt: skip
    call_as(market, s.providers.slash, s.provider.address, 70 * ONE, victim.address, True)
    assert event(s, "ProviderSlashed")["lostDispute"] is True
    p = provider_info(s, s.provider)
    assert (p["stake"], p["bonded"], p["jobsFailed"], p["disputesLost"], p["totalSlashed"]) == (
        STAKE - 100 * ONE, 0, 1, 1, 100 * ONE,
    )  # fmt: skip
    assert registry_balance_matches_stakes(s, s.provider, s.provider2)


def test_slash_never_exceeds_bond(suite):
    s = suite
    market = fake_market(s)
    with boa.reverts("providers: slash exceeds bond"):
        call_as(market, s.providers.slash, s.provider.address, 1, s.requester.address, False)
    call_as(market, s.providers.bond, s.provider.address, s.model_id, 10 * ONE)
    with boa.reverts("providers: slash exceeds bond"):
        call_as(market, s.providers.slash, s.provider.address, 10 * ONE + 1, s.requester.address, False)
    with boa.reverts("providers: slash exceeds bond"):
        call_as(market, s.providers.slash, s.provider.address, STAKE, s.requester.address, True)
    with boa.reverts("providers: recipient is the zero address"):
        call_as(market, s.providers.slash, s.provider.address, ONE, ZERO_ADDRESS, False)
    p = provider_info(s, s.provider)
    assert (p["stake"], p["bonded"], p["totalSlashed"]) == (STAKE, 10 * ONE, 0)


@settings(
    max_examples=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip
@given(
    bond=st.integers(min_value=0, max_value=STAKE),
    slash=st.integers(min_value=0, max_value=2 * STAKE),
    lost=st.booleans(),
)
def test_slash_property(suite, bond, slash, lost):
    """Slashing succeeds iff it is within the bond, and moves exactly that amount
    out of stake and bond into the recipient's balance; no token is lost."""
    s = suite
    with boa.env.anchor():
        market = fake_market(s)
        victim = actor("victim")
        call_as(market, s.providers.bond, s.provider.address, s.model_id, bond)
        if slash > bond:
            with boa.reverts("providers: slash exceeds bond"):
                call_as(market, s.providers.slash, s.provider.address, slash, victim.address, lost)
            slashed = 0
        else:
            call_as(market, s.providers.slash, s.provider.address, slash, victim.address, lost)
            slashed = slash
        p = provider_info(s, s.provider)
        assert p["stake"] == STAKE - slashed and p["bonded"] == bond - slashed
        assert p["bonded"] <= p["stake"] and p["totalSlashed"] == slashed
        assert s.token.balanceOf(victim.address) == slashed
        assert s.providers.freeStake(s.provider.address) == STAKE - bond
        assert registry_balance_matches_stakes(s, s.provider, s.provider2)


# --------------------------------------------------------------------------- governance


def test_set_market(suite):
    s = suite
    market = actor("new-market")
    with boa.reverts("ownable: caller is not the owner"):
        call_as(s.provider, s.providers.setMarket, market.address, True)
    with boa.reverts("providers: market is the zero address"):
        call_as(s.deployer, s.providers.setMarket, ZERO_ADDRESS, True)
    assert not s.providers.markets(market.address)
    call_as(s.deployer, s.providers.setMarket, market.address, True)
    assert event(s, "MarketAuthorized") == {"market": market.address, "allowed": True}
    assert s.providers.markets(market.address)
    call_as(s.deployer, s.providers.setMarket, market.address, False)
    assert event(s, "MarketAuthorized") == {"market": market.address, "allowed": False}
    assert not s.providers.markets(market.address)
    assert s.providers.markets(s.market.address)


def test_set_stake_params(suite):
    s = suite
    with boa.reverts("ownable: caller is not the owner"):
        call_as(s.provider, s.providers.setStakeParams, 0, 0)
    with boa.reverts("providers: unbonding delay above 30 days"):
        call_as(s.deployer, s.providers.setStakeParams, MIN_STAKE, 30 * DAY + 1)
    call_as(s.deployer, s.providers.setStakeParams, 2_000 * ONE, 30 * DAY)
    assert event(s, "StakeParamsChanged") == {"minStake": 2_000 * ONE, "unbondingDelay": 30 * DAY}
    assert (s.providers.minStake(), s.providers.unbondingDelay()) == (2_000 * ONE, 30 * DAY)
    call_as(s.deployer, s.providers.setStakeParams, 0, 0)
    assert (s.providers.minStake(), s.providers.unbondingDelay()) == (0, 0)


def test_raised_min_stake_applies_to_registration_and_claims(suite, driver):
    s = suite
    call_as(s.deployer, s.providers.setStakeParams, STAKE + 1, UNBONDING_DELAY)
    who = fresh(s)
    with boa.reverts("providers: stake below minStake"):
        call_as(who, s.providers.register, "https://fresh.example", "peer", STAKE)
    job_id = driver.create()
    with boa.reverts("providers: stake below minStake"):
        driver.claim(job_id)
    call_as(s.provider, s.providers.addStake, 1)
    driver.claim(job_id)
    assert provider_info(s, s.provider)["bonded"] == driver.jobs[job_id].bond


def test_zero_unbonding_delay_allows_immediate_withdrawal(suite):
    s = suite
    call_as(s.deployer, s.providers.setStakeParams, MIN_STAKE, 0)
    call_as(s.provider, s.providers.requestUnbond, ONE)
    call_as(s.provider, s.providers.withdrawUnbonded)
    assert event(s, "UnbondedWithdrawn")["amount"] == ONE


def test_ownership_transfer(suite):
    s = suite
    call_as(s.deployer, s.providers.transfer_ownership, s.arbiter.address)
    assert s.providers.owner() == s.arbiter.address
    with boa.reverts("ownable: caller is not the owner"):
        call_as(s.deployer, s.providers.setStakeParams, 0, 0)
    call_as(s.arbiter, s.providers.setStakeParams, 0, 0)
    assert s.providers.minStake() == 0


# --------------------------------------------------------------------------- views and stats


def test_free_stake_view(suite, driver):
    s = suite
    assert s.providers.freeStake(s.provider.address) == STAKE
    assert s.providers.freeStake(actor("stranger").address) == 0
    a = driver.create(max_payment=100 * ONE)  # bond 20
    b = driver.create(max_payment=50 * ONE)  # bond 10
    driver.claim(a)
    driver.claim(b)
    assert s.providers.freeStake(s.provider.address) == STAKE - 30 * ONE
    call_as(s.provider, s.providers.requestUnbond, 70 * ONE)
    assert s.providers.freeStake(s.provider.address) == STAKE - 100 * ONE
    driver.cancel(driver.create())  # unrelated jobs change nothing
    assert s.providers.freeStake(s.provider.address) == STAKE - 100 * ONE
    assert s.providers.isRegistered(s.provider.address) and not s.providers.isRegistered(s.requester.address)


def test_stats_follow_job_outcomes(suite, driver):
    s = suite
    completed = driver.create()
    driver.claim(completed)
    driver.submit(completed)
    won = driver.create()
    driver.claim(won)
    driver.submit(won)
    driver.dispute(won)
    lost = driver.create()
    driver.claim(lost)
    driver.submit(lost)
    driver.dispute(lost)
    expired = driver.create(duration=DAY)
    driver.claim(expired)
    assert provider_info(s, s.provider)["jobsCompleted"] == 0
    warp(CHALLENGE_WINDOW)
    driver.finalize(completed)
    assert provider_info(s, s.provider)["jobsCompleted"] == 1
    driver.resolve(won, True)
    assert provider_info(s, s.provider)["jobsCompleted"] == 2
    driver.resolve(lost, False)
    warp(DAY)
    driver.refund_expired(expired)
    bond = driver.jobs[lost].bond
    p = provider_info(s, s.provider)
    assert (p["jobsCompleted"], p["jobsFailed"], p["disputesLost"]) == (2, 1, 1)
    assert p["totalSlashed"] == 2 * bond and p["stake"] == STAKE - 2 * bond and p["bonded"] == 0
    assert provider_info(s, s.provider2) == {**provider_info(s, s.provider2), "jobsCompleted": 0, "jobsFailed": 0, "disputesLost": 0}
    assert registry_balance_matches_stakes(s, s.provider, s.provider2)


def test_stats_per_provider(suite, driver):
    s = suite
    a = driver.create()
    driver.claim(a, provider=s.provider2)
    driver.submit(a, provider=s.provider2)
    warp(CHALLENGE_WINDOW)
    driver.finalize(a)
    assert provider_info(s, s.provider2)["jobsCompleted"] == 1
    assert provider_info(s, s.provider)["jobsCompleted"] == 0


def test_model_registered_later_can_be_served(suite, driver):
    s = suite
    model_id = call_as(s.publisher, s.models.registerModel, ARTIFACT_CID, MANIFEST_CID, 1, 0)
    job_id = driver.create(model_id=model_id)
    with boa.reverts("providers: model not served"):
        driver.claim(job_id)
    call_as(s.provider, s.providers.setModelPrice, model_id, 3)
    driver.claim(job_id)
    assert driver.jobs[job_id].provider == s.provider.address


def test_stake_is_capped_so_the_packed_slot_never_overflows(suite):
    """Stake shares one storage slot with the bond and the job counter, so it is
    capped at 2**112 - 1; above it registering or adding stake reverts cleanly."""
    s = suite
    whale = actor("stake-whale")
    cap = 2**112 - 1
    with boa.env.prank(s.deployer.address):
        s.token.mint(whale.address, cap + 1)
    with boa.env.prank(whale.address):
        s.token.approve(s.providers.address, 2**256 - 1)
        with boa.reverts("providers: stake above 2**112 - 1"):
            s.providers.register("https://whale.example", "peer", cap + 1)
        s.providers.register("https://whale.example", "peer", cap)
        with boa.reverts("providers: stake above 2**112 - 1"):
            s.providers.addStake(1)
    p = s.providers.providers(whale.address)
    assert (p.registered, p.stake, p.bonded, p.jobsCompleted) == (True, cap, 0, 0)
