"""Pure policy decisions: caps hold for any sequence of spends; allow-lists, thresholds, domains, rate limits."""

from __future__ import annotations

from eth_abi import encode
from hypothesis import given
from hypothesis import strategies as st

from nodeai.agents.policy import (
    TxIntent, check_budget, check_domain, check_rate, check_transaction, cost_units, decode_spends, selector,
    window_total,
)  # fmt: skip
from nodeai.agents.spec import Budget, PolicySpec

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OTHER = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
TO = "0x14dC79964da2C08b23698B3D3cc7Ca32193d9955"
CHAIN = 31337


def policy(cap: int = 1_000, period: int = 100, approval_above: int | None = None, functions: list[str] | None = None) -> PolicySpec:
    return PolicySpec.model_validate({
        "contracts": [{"chain_id": CHAIN, "address": TOKEN, "functions": functions or ["transfer(address,uint256)"]}],
        "spend_caps": [{"chain_id": CHAIN, "token": TOKEN, "max_amount": cap, "period_s": period,
                        "approval_above": approval_above}],
    })  # fmt: skip


def transfer(amount: int, token: str = TOKEN, chain: int = CHAIN) -> TxIntent:
    return TxIntent(chain, token, selector("transfer(address,uint256)") + encode(["address", "uint256"], [TO, amount]))


@given(cap=st.integers(0, 10_000), period=st.integers(1, 100),
       attempts=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 4_000)), max_size=30))  # fmt: skip
def test_sliding_window_cap_is_never_exceeded(cap: int, period: int, attempts: list[tuple[int, int]]) -> None:
    """Whatever spends are tried, at whatever times, no window of ``period`` seconds holds more than the cap."""
    spec = policy(cap=cap, period=period)
    ledger: list[tuple[float, int]] = []
    now = 0.0
    for gap, amount in attempts:
        now += gap
        spent = window_total(ledger, now, period)
        decision = check_transaction(spec, transfer(amount), {(CHAIN, TOKEN): spent})
        if decision.allowed:
            ledger.append((now, amount))
        else:
            assert decision.rule == "policy.spend_caps[0].max_amount" and spent + amount > cap
    for at, _ in ledger:
        assert window_total(ledger, at, period) <= cap


@given(amount=st.integers(0, 2**256 - 1), threshold=st.integers(0, 2**200))
def test_approval_threshold(amount: int, threshold: int) -> None:
    spec = policy(cap=2**256 - 1, approval_above=threshold)
    decision = check_transaction(spec, transfer(amount), {})
    assert decision.verdict == ("approve" if amount > threshold else "allow")
    assert check_transaction(spec, transfer(amount), {}, approved=True).allowed


def test_allow_lists_of_contracts_and_functions() -> None:
    spec = policy()
    assert check_transaction(spec, transfer(5), {}).allowed
    foreign = check_transaction(spec, transfer(5, token=OTHER), {})
    assert foreign.verdict == "deny" and foreign.rule == "policy.contracts" and OTHER in foreign.reason
    approve = TxIntent(CHAIN, TOKEN, selector("approve(address,uint256)") + encode(["address", "uint256"], [TO, 5]))
    assert "is not allowed (allowed: transfer(address,uint256))" in check_transaction(spec, approve, {}).reason
    assert check_transaction(spec, TxIntent(CHAIN, TOKEN, b"", 1), {}).verdict == "deny"  # plain value transfer
    other_chain = check_transaction(spec, transfer(5, chain=1), {})
    assert other_chain.rule == "policy.contracts"


def test_every_token_moving_function_counts_against_the_cap() -> None:
    spec = policy(cap=10, functions=["*"])
    approve = TxIntent(CHAIN, TOKEN, selector("approve(address,uint256)") + encode(["address", "uint256"], [TO, 11]))
    assert check_transaction(spec, approve, {}).rule == "policy.spend_caps[0].max_amount"
    pull = TxIntent(CHAIN, TOKEN, selector("transferFrom(address,address,uint256)")
                    + encode(["address", "address", "uint256"], [TO, TO, 11]))  # fmt: skip
    assert check_transaction(spec, pull, {}).verdict == "deny"
    paid = TxIntent(CHAIN, TOKEN, selector("transfer(address,uint256)") + encode(["address", "uint256"], [TO, 1]), value=1)
    assert "no spend cap for native" in check_transaction(spec, paid, {}).reason
    truncated = TxIntent(CHAIN, TOKEN, selector("transfer(address,uint256)") + b"\x00" * 10)
    assert "does not decode" in check_transaction(spec, truncated, {}).reason


@given(st.binary(max_size=200), st.integers(0, 10**30))
def test_decoding_arbitrary_calldata_never_crashes_the_policy(data: bytes, value: int) -> None:
    decision = check_transaction(policy(functions=["*"]), TxIntent(CHAIN, TOKEN, data, value), {})
    assert decision.verdict in ("allow", "deny", "approve")
    if decision.allowed:
        assert sum(s.amount for s in decode_spends(TxIntent(CHAIN, TOKEN, data, value))) <= 1_000


def test_domains() -> None:
    spec = PolicySpec.model_validate({"domains": ["localhost", "*.example.com"]})
    assert check_domain(spec, "localhost").allowed
    assert check_domain(spec, "LOCALHOST.").allowed
    assert check_domain(spec, "api.example.com").allowed
    assert not check_domain(spec, "example.com").allowed
    assert not check_domain(spec, "evilexample.com").allowed
    denied = check_domain(spec, "127.0.0.1")
    assert denied.rule == "policy.domains" and "'127.0.0.1' is not in the allowed domains" in denied.reason


@given(st.lists(st.floats(0, 10), max_size=20))
def test_rate_limit_waits_exactly_until_a_slot_frees(times: list[float]) -> None:
    spec = PolicySpec.model_validate({"rate_limits": {"http": {"calls": 3, "per_s": 10}}})
    now = 10.0
    decision = check_rate(spec, "http", "fetch", {"http": times}, now)
    inside = sorted(t for t in times if now - 10 < t <= now)
    if len(inside) < 3:
        assert decision.allowed
    else:
        assert decision.verdict == "wait" and decision.rule == "policy.rate_limits.http"
        later = now + decision.retry_after_s + 1e-6
        assert check_rate(spec, "http", "fetch", {"http": times}, later).allowed


@given(st.integers(0, 10**9), st.integers(0, 10**6))
def test_budget_and_cost(tokens: int, price: int) -> None:
    assert cost_units(tokens, price) * 1000 >= tokens * price
    budget = Budget(model_tokens=1_000, payment_units=50)
    decision = check_budget(budget, tokens, price)
    assert decision.allowed == (tokens < 1_000 and cost_units(tokens, price) < 50)
