"""Pure parts of the transaction manager: error classification, fee bumps, the nonce tracker."""

from __future__ import annotations

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from web3.exceptions import ContractLogicError, Web3RPCError

from nodeai.node.tx import ErrorClass, Fees, NonceTracker, backoff_delay, bump_fees, classify_error, classify_exception


@pytest.mark.parametrize("message, code, expected", [
    ("nonce too low", -32003, ErrorClass.NONCE_TOO_LOW),                                  # anvil, geth
    ("Nonce too low: next nonce 5, tx nonce 4", -32000, ErrorClass.NONCE_TOO_LOW),       # reth
    ("OldNonce, Current nonce: 7, nonce of rejected tx: 6", -32010, ErrorClass.NONCE_TOO_LOW),  # nethermind
    ("nonce too high", -32000, ErrorClass.NONCE_GAP),
    ("transaction already imported", -32003, ErrorClass.ALREADY_KNOWN),                  # anvil
    ("already known", -32000, ErrorClass.ALREADY_KNOWN),                                  # geth
    ("Known transaction (0xabc)", -32000, ErrorClass.ALREADY_KNOWN),                      # besu
    ("replacement transaction underpriced", -32000, ErrorClass.UNDERPRICED),
    ("transaction underpriced", -32000, ErrorClass.UNDERPRICED),
    ("max fee per gas less than block base fee: address 0x.., maxFeePerGas: 1 baseFee: 7", -32000, ErrorClass.UNDERPRICED),
    ("execution reverted: market: job is not open", 3, ErrorClass.REVERTED),
    ("insufficient funds for gas * price + value", -32000, ErrorClass.TERMINAL),
    ("intrinsic gas too low", -32000, ErrorClass.TERMINAL),
    ("daily request count exceeded, request rate limited", -32005, ErrorClass.TRANSIENT),
    ("header not found", -32000, ErrorClass.TRANSIENT),
    ("something nobody has seen", -32603, ErrorClass.TRANSIENT),
    ("something nobody has seen", -32000, ErrorClass.TERMINAL),
    ("something nobody has seen", None, ErrorClass.TERMINAL),
])  # fmt: skip
def test_classify_error_known_messages(message: str, code: int | None, expected: ErrorClass) -> None:
    assert classify_error(message, code) is expected


def test_classify_exceptions_from_web3_and_requests() -> None:
    rpc = Web3RPCError("boom", rpc_response={"jsonrpc": "2.0", "id": 1, "error": {"code": -32003, "message": "nonce too low"}})
    assert classify_exception(rpc) is ErrorClass.NONCE_TOO_LOW
    assert classify_exception(requests.ConnectionError("refused")) is ErrorClass.TRANSIENT
    assert classify_exception(requests.Timeout()) is ErrorClass.TRANSIENT
    assert classify_exception(ContractLogicError("execution reverted: x")) is ErrorClass.REVERTED
    assert classify_exception(ValueError({"code": -32000, "message": "already known"})) is ErrorClass.ALREADY_KNOWN


@given(st.text(max_size=60), st.one_of(st.none(), st.integers(-33_000, 600)))
def test_classify_is_total_and_case_insensitive(message: str, code: int | None) -> None:
    kind = classify_error(message, code)
    assert kind in ErrorClass
    assert classify_error(message.upper(), code) is kind or message.upper().lower() != message.lower()


@given(st.integers(0, 10**12), st.integers(0, 10**11), st.floats(10, 100), st.one_of(st.none(), st.integers(0, 10**11)))
def test_bump_raises_every_fee_field_by_the_percentage(max_fee: int, tip: int, percent: float, base: int | None) -> None:
    tip = min(tip, max_fee)
    old = Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=tip)
    new = bump_fees(old, percent, None, base)
    assert new is not None
    assert new.max_priority_fee_per_gas >= tip * (1 + percent / 100) and new.max_priority_fee_per_gas > tip
    assert new.max_fee_per_gas >= max_fee * (1 + percent / 100) and new.max_fee_per_gas > max_fee
    assert new.max_fee_per_gas >= new.max_priority_fee_per_gas + 2 * (base or 0)


@given(st.integers(1, 10**12), st.floats(10, 50), st.integers(1, 10**13))
def test_bump_never_exceeds_the_ceiling(price: int, percent: float, ceiling: int) -> None:
    legacy = bump_fees(Fees(gas_price=price), percent, ceiling)
    assert legacy is None or (price < legacy.gas_price <= ceiling)
    dynamic = bump_fees(Fees(max_fee_per_gas=price, max_priority_fee_per_gas=price // 2), percent, ceiling)
    assert dynamic is None or dynamic.max_fee_per_gas <= ceiling


@given(st.lists(st.one_of(st.just("allocate"), st.just("resync"), st.integers(0, 50)), max_size=40))
def test_nonce_tracker_never_hands_out_a_nonce_twice_or_below_the_chain(ops: list) -> None:
    tracker = NonceTracker()
    chain = 0
    issued: list[int] = []
    for op in ops:
        if op == "resync":
            tracker.resync()
            chain = max(chain, max(issued, default=-1) + 1)  # NOTE: what a resync reads back: every sent tx counted
        elif op == "allocate":
            nonce = tracker.allocate(chain if tracker.needs_sync else None)
            assert nonce >= chain
            assert nonce not in issued
            issued.append(nonce)
        else:  # another sender moved the account on by `op` transactions
            chain = max(chain, max(issued, default=-1) + 1) + op
            nonce = tracker.allocate(chain)
            assert nonce >= chain and nonce not in issued
            issued.append(nonce)


def test_tracker_needs_the_chain_count_to_start() -> None:
    with pytest.raises(ValueError):
        NonceTracker().allocate(None)


@given(st.integers(0, 100), st.floats(0.01, 5), st.floats(0.01, 60))
def test_backoff_doubles_up_to_the_cap(attempt: int, base: float, cap: float) -> None:
    delay = backoff_delay(attempt, base, cap)
    assert 0 < delay <= cap
    assert delay == min(cap, base * 2**attempt) or attempt > 30
