"""Pure voucher logic: prices, the header, signatures, channel accounting (hypothesis)."""

from __future__ import annotations

import base64
import json

import pytest
from eth_account import Account
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nodeai.chain.vouchers import Voucher, sign_voucher, voucher_digest
from nodeai.serving.errors import PaymentRequired, Unauthorized
from nodeai.serving.payments import (
    ChannelAccount,
    ChannelFunds,
    decode_voucher_header,
    encode_voucher_header,
    max_price,
    price_for_tokens,
    recover_address,
    release,
    reserve,
    settle,
    uncovered,
    voucher_digest_fast,
)

KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
PAYER = Account.from_key(KEY).address
ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
uint256 = st.integers(0, 2**256 - 1)
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
vouchers = st.builds(Voucher, payer=addresses, provider=addresses, model_id=uint256, cumulative_amount=uint256,
                     expiry=uint256)


@given(st.integers(0, 10**9), st.integers(0, 10**12))
def test_price_rounds_up_never_down(tokens: int, price: int) -> None:
    charged = price_for_tokens(tokens, price)
    assert charged * 1000 >= tokens * price > (charged - 1) * 1000 or (tokens * price == 0 and charged == 0)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**9))
def test_max_price_bounds_every_actual_price(prompt: int, max_tokens: int, generated: int, price: int) -> None:
    """Whatever the engine generates up to max_tokens costs at most the reserved bound."""
    assume(generated <= max_tokens)
    assert price_for_tokens(prompt + generated, price) <= max_price(prompt, max_tokens, price)


def test_price_refuses_negative_inputs() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        price_for_tokens(-1, 10)


# -- the header ---------------------------------------------------------------------------------------
@given(vouchers, st.binary(min_size=65, max_size=65), st.none() | st.integers(1, 2**64))
def test_header_round_trips(voucher: Voucher, signature: bytes, chain_id: int | None) -> None:
    decoded = decode_voucher_header(encode_voucher_header(voucher, signature, chain_id, ESCROW))
    # addresses come back checksummed, everything else exactly
    assert [str(f).lower() for f in decoded.voucher.as_tuple()] == [str(f).lower() for f in voucher.as_tuple()]
    assert decoded.signature == signature and decoded.chain_id == chain_id and decoded.contract == ESCROW


@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: base64.urlsafe_b64encode(b).decode()))
def test_garbage_headers_are_refused_as_malformed(value: str) -> None:
    with pytest.raises(PaymentRequired) as refused:
        decode_voucher_header(value)
    assert refused.value.code == "malformed_voucher" and "X-NodeAI-Voucher" in refused.value.message


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"signature": "0x1234"}, "signature has 2 bytes"),
        ({"cumulativeAmount": -1}, "cumulativeAmount must be an unsigned 256-bit integer"),
        ({"cumulativeAmount": True}, "not a boolean"),
        ({"payer": "0xnope"}, "payer must be a 0x-prefixed 20-byte hex address"),
        ({"expiry": None}, "expiry is missing"),
    ],
)
def test_each_malformed_field_is_named(change: dict, says: str) -> None:
    body = {"payer": PAYER, "provider": PAYER, "modelId": 1, "cumulativeAmount": "10", "expiry": 5,
            "signature": "0x" + "11" * 65}
    body.update(change)
    if body["expiry"] is None:
        del body["expiry"]
    with pytest.raises(PaymentRequired, match=says):
        decode_voucher_header(base64.urlsafe_b64encode(json.dumps(body).encode()).decode())


# -- signatures ---------------------------------------------------------------------------------------
@settings(max_examples=50)
@given(vouchers, st.integers(1, 2**64))
def test_fast_digest_equals_eth_account_digest(voucher: Voucher, chain_id: int) -> None:
    assert voucher_digest_fast(voucher, chain_id, ESCROW) == voucher_digest(voucher, chain_id, ESCROW)


@settings(max_examples=30)
@given(st.integers(0, 2**256 - 1), st.integers(0, 2**64))
def test_recover_finds_the_wallet_that_signed(cumulative: int, model_id: int) -> None:
    voucher = Voucher(PAYER, ESCROW, model_id, cumulative, 2**40)
    signature = sign_voucher(voucher, KEY, 31337, ESCROW)
    assert recover_address(voucher_digest_fast(voucher, 31337, ESCROW), signature) == PAYER
    # the same signature over another chain's domain recovers to a stranger
    assert recover_address(voucher_digest_fast(voucher, 1, ESCROW), signature) != PAYER


def test_high_s_and_bad_v_are_refused_as_the_escrow_would() -> None:
    voucher = Voucher(PAYER, ESCROW, 1, 10, 2**40)
    signature = sign_voucher(voucher, KEY, 31337, ESCROW)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = signature[:32] + (n - int.from_bytes(signature[32:64], "big")).to_bytes(32, "big") + bytes([55 - signature[64]])
    digest = voucher_digest_fast(voucher, 31337, ESCROW)
    with pytest.raises(Unauthorized, match="high s value"):
        recover_address(digest, high_s)
    with pytest.raises(Unauthorized, match="v byte is 1"):
        recover_address(digest, signature[:64] + b"\x01")


# -- channel accounting -------------------------------------------------------------------------------
class ChannelMachine(RuleBasedStateMachine):
    """Concurrent requests of one payer against one channel: vouchers arrive, requests reserve,
    settle or fail, in any order. Nothing is ever served beyond what a voucher covered."""

    def __init__(self) -> None:
        super().__init__()
        self.account = ChannelAccount()
        self.in_flight: list[int] = []
        self.best_accepted = 0

    @rule(cumulative=st.integers(0, 10_000), amount=st.integers(0, 2_000))
    def request(self, cumulative: int, amount: int) -> None:
        before = self.account
        try:
            self.account = reserve(self.account, cumulative, amount)
        except PaymentRequired as exc:
            assert cumulative < before.owed + amount
            assert exc.code == "voucher_too_low" and int(exc.extra["required_cumulative"]) == before.owed + amount
            return
        assert cumulative >= before.owed + amount
        self.best_accepted = max(self.best_accepted, cumulative)
        self.in_flight.append(amount)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100), actual=st.integers(0, 3_000))
    def finish(self, index: int, actual: int) -> None:
        reserved = self.in_flight.pop(index % len(self.in_flight))
        before = self.account.charged
        self.account, charged = settle(self.account, reserved, actual)
        assert charged == min(actual, reserved) and self.account.charged == before + charged

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100))
    def fail(self, index: int) -> None:
        before = self.account.charged
        self.account = release(self.account, self.in_flight.pop(index % len(self.in_flight)))
        assert self.account.charged == before

    @invariant()
    def only_what_was_paid_is_served(self) -> None:
        assert self.account.reserved == sum(self.in_flight)
        assert self.account.owed <= self.best_accepted or self.account.owed == 0


TestChannelMachine = ChannelMachine.TestCase
TestChannelMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


@given(
    balance=st.integers(0, 10**9),
    owed=st.dictionaries(st.integers(0, 3), st.integers(0, 10**9), max_size=4),
    redeemed=st.dictionaries(st.integers(0, 3), st.integers(0, 10**9), max_size=4),
    model=st.integers(0, 3),
    data=st.data(),
)
def test_redemptions_never_change_coverage(balance: int, owed: dict, redeemed: dict, model: int, data) -> None:
    """Whoever redeems a voucher moves value from the balance to `redeemed`; what is covered stays the same."""
    # a redemption pays a voucher the gateway accepted, so it never takes a model above what it owes
    room = max(owed.get(model, 0), redeemed.get(model, 0)) - redeemed.get(model, 0)
    moved = data.draw(st.integers(0, min(balance, room)), label="moved")
    before = uncovered(ChannelFunds(balance, 0, redeemed), owed)
    after_redeemed = dict(redeemed)
    after_redeemed[model] = after_redeemed.get(model, 0) + moved
    assert uncovered(ChannelFunds(balance - moved, 0, after_redeemed), owed) == before


@given(st.integers(0, 10**9), st.dictionaries(st.integers(0, 3), st.integers(0, 10**9), max_size=4))
def test_uncovered_is_what_a_deposit_must_add(balance: int, owed: dict) -> None:
    missing = uncovered(ChannelFunds(balance, 0, {}), owed)
    assert missing == max(0, sum(owed.values()) - balance)
    assert uncovered(ChannelFunds(balance + missing, 0, {}), owed) == 0
