"""InferenceEscrow: deposits, withdrawals after the timelock and EIP-712 voucher redemption.

Vouchers are signed off chain with ``nodeai.chain.vouchers`` exactly as a
consumer's wallet does, and every payout is checked to the unit against
``nodeai.chain.fees.split_payment``.
"""

from __future__ import annotations

import boa
import pytest
from eth_keys import keys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeai.chain.fees import split_payment
from nodeai.chain.jobs import ZERO_ADDRESS
from nodeai.chain.vouchers import Voucher, redeemable_delta, sign_voucher, voucher_digest

from .conftest import (
    ONE,
    PROTOCOL_FEE_BPS,
    REVENUE_SHARE_BPS,
    WITHDRAW_TIMELOCK,
    actor,
    last_event,
    load,
    now,
    warp,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
UNKNOWN_MODEL_ID = 999


def chain_id() -> int:
    return boa.env.evm.patch.chain_id


def voucher(s, cumulative: int, payer=None, provider=None, model_id=None, expiry=None) -> Voucher:
    return Voucher(
        payer=(payer or s.payer).address,
        provider=(provider or s.provider).address,
        model_id=s.model_id if model_id is None else model_id,
        cumulative_amount=cumulative,
        expiry=now() + 3_600 if expiry is None else expiry,
    )


def sign(s, v: Voucher, key: bytes | None = None, chain: int | None = None, escrow=None) -> bytes:
    return sign_voucher(
        v, key or s.payer.key, chain_id() if chain is None else chain, (escrow or s.escrow).address
    )


def deposit(s, amount: int, payer=None, provider=None, escrow=None) -> None:
    with boa.env.prank((payer or s.payer).address):
        (escrow or s.escrow).deposit((provider or s.provider).address, amount)


def redeem(s, v: Voucher, signature: bytes | None = None, caller=None, escrow=None) -> int:
    signature = sign(s, v, escrow=escrow) if signature is None else signature
    with boa.env.prank((caller or s.provider).address):
        return (escrow or s.escrow).redeem(v.as_tuple(), signature)


def balances(s) -> dict[str, int]:
    who = {
        "provider": s.provider, "provider2": s.provider2, "publisher": s.publisher,
        "treasury": s.treasury, "payer": s.payer, "requester": s.requester,
    }  # fmt: skip
    out = {name: s.token.balanceOf(a.address) for name, a in who.items()}
    out["escrow"] = s.token.balanceOf(s.escrow.address)
    return out


def diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in before if after[k] != before[k]}


def expected_payout(amount: int, share_bps: int = REVENUE_SHARE_BPS, fee_bps: int = PROTOCOL_FEE_BPS,
                    owner: str = "publisher", provider: str = "provider") -> dict[str, int]:
    """The balance changes of one redemption of ``amount`` (escrow pays out ``amount``)."""
    split = split_payment(amount, share_bps, fee_bps)
    out: dict[str, int] = {}
    for name, value in ((provider, split.provider), (owner, split.model_owner), ("treasury", split.protocol_fee)):
        if value:
            out[name] = out.get(name, 0) + value
    if amount:
        out["escrow"] = -amount
    return out


def channel(s, payer=None, provider=None) -> tuple[int, int]:
    c = s.escrow.channels((payer or s.payer).address, (provider or s.provider).address)
    return c.balance, c.unlockAt


def assert_solvent(s, *channels) -> None:
    """Token balance of the escrow == sum of every channel's balance."""
    assert s.token.balanceOf(s.escrow.address) == sum(
        s.escrow.channels(p.address, q.address).balance for p, q in channels
    )


# --- deposit ---------------------------------------------------------------------------------


def test_deposit_books_the_channel_and_pulls_the_tokens(suite):
    s = suite
    before = balances(s)
    deposit(s, 10 * ONE)
    event = last_event(s.escrow, "Deposited")
    assert diff(before, balances(s)) == {"payer": -10 * ONE, "escrow": 10 * ONE}
    assert channel(s) == (10 * ONE, 0)
    assert (event["payer"], event["provider"], event["amount"], event["balance"]) == (
        s.payer.address, s.provider.address, 10 * ONE, 10 * ONE,
    )  # fmt: skip
    deposit(s, 5 * ONE)
    assert last_event(s.escrow, "Deposited")["balance"] == 15 * ONE
    assert channel(s) == (15 * ONE, 0)
    assert_solvent(s, (s.payer, s.provider))


def test_deposit_of_zero_reverts(suite):
    with boa.reverts("escrow: amount is zero"):
        deposit(suite, 0)


def test_deposit_for_an_unregistered_provider_reverts(suite):
    s = suite
    with boa.reverts("escrow: provider not registered"):
        deposit(s, ONE, provider=s.requester)
    with boa.reverts("escrow: provider not registered"):
        with boa.env.prank(s.payer.address):
            s.escrow.deposit(ZERO_ADDRESS, ONE)


def test_deposit_without_allowance_reverts(suite):
    s = suite
    # NOTE: the requester approved the JobMarket only, not the escrow.
    with boa.reverts("erc20: insufficient allowance"):
        deposit(s, ONE, payer=s.requester)
    assert channel(s, payer=s.requester) == (0, 0)


def test_deposit_cancels_a_pending_withdrawal(suite):
    s = suite
    deposit(s, 10 * ONE)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    assert channel(s)[1] == now() + WITHDRAW_TIMELOCK
    deposit(s, ONE)
    assert channel(s) == (11 * ONE, 0)
    warp(WITHDRAW_TIMELOCK)
    with boa.reverts("escrow: no withdrawal requested"):
        with boa.env.prank(s.payer.address):
            s.escrow.withdraw(s.provider.address)


# --- requestWithdrawal ---------------------------------------------------------------------------


def test_request_withdrawal_starts_the_timelock(suite):
    s = suite
    deposit(s, 10 * ONE)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    event = last_event(s.escrow, "WithdrawalRequested")
    unlock_at = now() + WITHDRAW_TIMELOCK
    assert channel(s) == (10 * ONE, unlock_at)
    assert (event["payer"], event["provider"], event["unlockAt"]) == (s.payer.address, s.provider.address, unlock_at)


def test_request_withdrawal_with_nothing_deposited_reverts(suite):
    s = suite
    with boa.reverts("escrow: nothing deposited"):
        with boa.env.prank(s.payer.address):
            s.escrow.requestWithdrawal(s.provider.address)


def test_request_withdrawal_after_everything_was_redeemed_reverts(suite):
    s = suite
    deposit(s, 2 * ONE)
    assert redeem(s, voucher(s, 2 * ONE)) == 2 * ONE
    with boa.reverts("escrow: nothing deposited"):
        with boa.env.prank(s.payer.address):
            s.escrow.requestWithdrawal(s.provider.address)


def test_timelock_change_applies_to_later_requests_only(suite):
    s = suite
    deposit(s, ONE)
    deposit(s, ONE, payer=s.payer, provider=s.provider2)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    first_unlock = now() + WITHDRAW_TIMELOCK
    with boa.env.prank(s.deployer.address):
        s.escrow.setWithdrawTimelock(60)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider2.address)
    assert channel(s)[1] == first_unlock
    assert channel(s, provider=s.provider2)[1] == now() + 60


# --- withdraw ----------------------------------------------------------------------------------


def test_withdraw_without_a_request_reverts(suite):
    s = suite
    deposit(s, ONE)
    with boa.reverts("escrow: no withdrawal requested"):
        with boa.env.prank(s.payer.address):
            s.escrow.withdraw(s.provider.address)


def test_withdraw_before_the_timelock_reverts(suite):
    s = suite
    deposit(s, ONE)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    warp(WITHDRAW_TIMELOCK - 1)
    with boa.reverts("escrow: timelock not over"):
        with boa.env.prank(s.payer.address):
            s.escrow.withdraw(s.provider.address)


def test_withdraw_after_the_timelock_returns_the_unspent_rest(suite):
    s = suite
    deposit(s, 10 * ONE)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    warp(WITHDRAW_TIMELOCK)  # exactly at unlockAt
    before = balances(s)
    with boa.env.prank(s.payer.address):
        s.escrow.withdraw(s.provider.address)
    event = last_event(s.escrow, "Withdrawn")
    assert diff(before, balances(s)) == {"payer": 10 * ONE, "escrow": -10 * ONE}
    assert channel(s) == (0, 0)
    assert (event["payer"], event["provider"], event["amount"]) == (s.payer.address, s.provider.address, 10 * ONE)
    with boa.reverts("escrow: no withdrawal requested"):
        with boa.env.prank(s.payer.address):
            s.escrow.withdraw(s.provider.address)


def test_provider_redeems_during_the_timelock_and_withdrawal_pays_only_the_rest(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, 3 * ONE + 7, expiry=now() + 2 * WITHDRAW_TIMELOCK)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    unlock_at = now() + WITHDRAW_TIMELOCK
    warp(WITHDRAW_TIMELOCK // 2)
    before = balances(s)
    assert redeem(s, v) == 3 * ONE + 7
    assert diff(before, balances(s)) == expected_payout(3 * ONE + 7)
    # NOTE: redeeming does not cancel the pending withdrawal.
    assert channel(s) == (7 * ONE - 7, unlock_at)
    warp(WITHDRAW_TIMELOCK // 2)
    before = balances(s)
    with boa.env.prank(s.payer.address):
        s.escrow.withdraw(s.provider.address)
    assert diff(before, balances(s)) == {"payer": 7 * ONE - 7, "escrow": -(7 * ONE - 7)}
    # The voucher is now worthless: the channel is empty, redeeming pays 0 and does not revert.
    before = balances(s)
    assert redeem(s, v) == 0
    assert balances(s) == before
    assert s.token.balanceOf(s.escrow.address) == 0


def test_withdraw_after_everything_was_redeemed_pays_nothing(suite):
    s = suite
    deposit(s, 4 * ONE)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    assert redeem(s, voucher(s, 9 * ONE, expiry=now() + 10 * WITHDRAW_TIMELOCK)) == 4 * ONE
    warp(WITHDRAW_TIMELOCK)
    before = balances(s)
    with boa.env.prank(s.payer.address):
        s.escrow.withdraw(s.provider.address)
    assert balances(s) == before
    assert last_event(s.escrow, "Withdrawn")["amount"] == 0
    assert channel(s) == (0, 0)


def test_redeemed_amounts_survive_a_withdrawal_and_a_new_deposit(suite):
    s = suite
    deposit(s, 5 * ONE)
    v = voucher(s, 2 * ONE, expiry=now() + 10 * WITHDRAW_TIMELOCK)
    assert redeem(s, v) == 2 * ONE
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    warp(WITHDRAW_TIMELOCK)
    with boa.env.prank(s.payer.address):
        s.escrow.withdraw(s.provider.address)
    deposit(s, 5 * ONE)
    # The old voucher was paid in full already; it cannot be charged again on the new deposit.
    assert redeem(s, v) == 0
    assert redeem(s, voucher(s, 3 * ONE)) == ONE
    assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == 3 * ONE


# --- redeem --------------------------------------------------------------------------------------


def test_redeem_pays_the_exact_split(suite):
    s = suite
    deposit(s, 10 * ONE)
    amount = 3 * ONE + 333  # not a round number: every share rounds
    v = voucher(s, amount)
    before = balances(s)
    # NOTE: anyone may redeem; the provider is paid, never the caller.
    assert redeem(s, v, caller=s.requester) == amount
    event = last_event(s.escrow, "VoucherRedeemed")
    split = split_payment(amount, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS)
    assert diff(before, balances(s)) == {
        "provider": split.provider, "publisher": split.model_owner, "treasury": split.protocol_fee, "escrow": -amount,
    }  # fmt: skip
    assert split.total == amount
    assert channel(s) == (10 * ONE - amount, 0)
    assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == amount
    assert event == {
        "address": event["address"], "payer": s.payer.address, "provider": s.provider.address, "modelId": s.model_id,
        "cumulativeAmount": amount, "paid": amount, "providerAmount": split.provider, "modelOwner": s.publisher.address,
        "modelOwnerAmount": split.model_owner, "protocolFee": split.protocol_fee, "balance": 10 * ONE - amount,
    }  # fmt: skip
    assert_solvent(s, (s.payer, s.provider))


def test_redeem_is_idempotent(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, 4 * ONE)
    signature = sign(s, v)
    assert redeem(s, v, signature) == 4 * ONE
    before = balances(s)
    assert redeem(s, v, signature) == 0
    assert redeem(s, v, signature, caller=s.payer) == 0
    assert balances(s) == before
    assert channel(s) == (6 * ONE, 0)


def test_higher_cumulative_voucher_pays_only_the_delta(suite):
    s = suite
    deposit(s, 10 * ONE)
    total = {}
    previous = 0
    for cumulative in (ONE + 1, 3 * ONE + 17, 7 * ONE):
        before = balances(s)
        assert redeem(s, voucher(s, cumulative)) == cumulative - previous
        assert diff(before, balances(s)) == expected_payout(cumulative - previous)
        for k, v in diff(before, balances(s)).items():
            total[k] = total.get(k, 0) + v
        previous = cumulative
    assert total["escrow"] == -7 * ONE
    assert total["provider"] + total["publisher"] + total["treasury"] == 7 * ONE
    assert channel(s) == (3 * ONE, 0)


def test_lower_cumulative_voucher_pays_nothing(suite):
    s = suite
    deposit(s, 10 * ONE)
    assert redeem(s, voucher(s, 5 * ONE)) == 5 * ONE
    before = balances(s)
    for stale in (0, ONE, 5 * ONE - 1, 5 * ONE):
        assert redeem(s, voucher(s, stale)) == 0
    assert balances(s) == before
    assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == 5 * ONE


def test_redeem_is_capped_at_the_deposit_and_the_rest_is_paid_after_a_top_up(suite):
    s = suite
    deposit(s, 4 * ONE)
    v = voucher(s, 10 * ONE)
    signature = sign(s, v)
    before = balances(s)
    assert redeem(s, v, signature) == 4 * ONE
    assert diff(before, balances(s)) == expected_payout(4 * ONE)
    assert channel(s) == (0, 0)
    assert redeem(s, v, signature) == 0  # empty channel: pays 0, no revert
    deposit(s, 10 * ONE)
    before = balances(s)
    assert redeem(s, v, signature) == 6 * ONE
    assert diff(before, balances(s)) == expected_payout(6 * ONE)
    assert channel(s) == (4 * ONE, 0)
    assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == 10 * ONE
    assert redeem(s, v, signature) == 0


def test_models_have_separate_counters_sharing_one_deposit(suite):
    s = suite
    with boa.env.prank(s.requester.address):
        other = s.models.registerModel("QmOtherModelArtifactCid0000000000000000000000", "QmOtherModelManifest", 0, 5_000)
    deposit(s, 10 * ONE)
    before = balances(s)
    assert redeem(s, voucher(s, 3 * ONE)) == 3 * ONE
    assert redeem(s, voucher(s, 3 * ONE, model_id=other)) == 3 * ONE
    a = split_payment(3 * ONE, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS)
    b = split_payment(3 * ONE, 5_000, PROTOCOL_FEE_BPS)
    assert diff(before, balances(s)) == {
        "provider": a.provider + b.provider, "publisher": a.model_owner, "requester": b.model_owner,
        "treasury": a.protocol_fee + b.protocol_fee, "escrow": -6 * ONE,
    }  # fmt: skip
    assert s.escrow.redeemed(s.payer.address, s.provider.address, other) == 3 * ONE
    assert channel(s) == (4 * ONE, 0)


def test_unknown_model_share_stays_with_the_provider(suite):
    s = suite
    deposit(s, 10 * ONE)
    before = balances(s)
    assert redeem(s, voucher(s, 2 * ONE, model_id=UNKNOWN_MODEL_ID)) == 2 * ONE
    event = last_event(s.escrow, "VoucherRedeemed")
    assert diff(before, balances(s)) == expected_payout(2 * ONE, share_bps=0)
    assert (event["modelOwner"], event["modelOwnerAmount"]) == (ZERO_ADDRESS, 0)


def test_deprecated_and_transferred_models_still_pay_the_current_owner(suite):
    s = suite
    deposit(s, 10 * ONE)
    with boa.env.prank(s.publisher.address):
        s.models.transferModelOwnership(s.model_id, s.requester.address)
    with boa.env.prank(s.requester.address):
        s.models.deprecate(s.model_id)
    before = balances(s)
    assert redeem(s, voucher(s, 2 * ONE)) == 2 * ONE
    assert diff(before, balances(s)) == expected_payout(2 * ONE, owner="requester")


def test_redeem_without_a_deposit_pays_nothing(suite):
    s = suite
    before = balances(s)
    assert redeem(s, voucher(s, 2 * ONE)) == 0
    assert balances(s) == before
    assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == 0


def test_protocol_fee_change_applies_to_later_redemptions(suite):
    s = suite
    deposit(s, 10 * ONE)
    assert redeem(s, voucher(s, 2 * ONE)) == 2 * ONE
    with boa.env.prank(s.deployer.address):
        s.escrow.setProtocolFee(0)
    before = balances(s)
    assert redeem(s, voucher(s, 5 * ONE)) == 3 * ONE
    assert diff(before, balances(s)) == expected_payout(3 * ONE, fee_bps=0)
    assert "treasury" not in diff(before, balances(s))


def test_redeem_accepts_a_voucher_on_its_expiry_and_rejects_it_after(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, ONE, expiry=now() + 100)
    signature = sign(s, v)
    warp(100)
    assert now() == v.expiry
    assert redeem(s, v, signature) == ONE
    later = voucher(s, 2 * ONE, expiry=now() + 100)
    signature = sign(s, later)
    warp(101)
    with boa.reverts("escrow: voucher expired"):
        redeem(s, later, signature)
    assert channel(s) == (9 * ONE, 0)


def test_voucher_signed_by_someone_else_is_rejected(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, ONE)
    for key in (s.provider.key, s.requester.key, actor("mallory").key):
        with boa.reverts("escrow: signature is not the payer's"):
            redeem(s, v, sign(s, v, key=key))
    assert channel(s) == (10 * ONE, 0)


def test_provider_cannot_charge_a_payer_with_its_own_signature(suite):
    s = suite
    deposit(s, 10 * ONE)
    # The provider names the payer but signs itself: the classic forgery.
    v = voucher(s, 10 * ONE)
    with boa.reverts("escrow: signature is not the payer's"):
        redeem(s, v, sign(s, v, key=s.provider.key))


def test_tampered_voucher_is_rejected(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, ONE)
    signature = sign(s, v)
    tampered = (
        voucher(s, 10 * ONE, expiry=v.expiry),
        voucher(s, ONE, expiry=v.expiry + 1),
        voucher(s, ONE, expiry=v.expiry, model_id=UNKNOWN_MODEL_ID),
        voucher(s, ONE, expiry=v.expiry, provider=s.provider2),
    )
    for t in tampered:
        with boa.reverts("escrow: signature is not the payer's"):
            redeem(s, t, signature)
    assert redeem(s, v, signature) == ONE


def test_voucher_signed_for_another_chain_is_rejected(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, ONE)
    with boa.reverts("escrow: signature is not the payer's"):
        redeem(s, v, sign(s, v, chain=chain_id() + 1))
    assert channel(s) == (10 * ONE, 0)


def test_voucher_is_not_replayable_after_a_chain_id_change(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, ONE)
    signature = sign(s, v)
    original = chain_id()
    boa.env.evm.patch.chain_id = original + 10  # e.g. the chain forked
    try:
        assert s.escrow.eip712Domain()[3] == original + 10
        with boa.reverts("escrow: signature is not the payer's"):
            redeem(s, v, signature)
        assert redeem(s, v, sign(s, v)) == ONE  # signed for the new chain id
    finally:
        boa.env.evm.patch.chain_id = original


def test_voucher_for_another_escrow_is_rejected(suite):
    s = suite
    with boa.env.prank(s.deployer.address):
        other = load(
            "InferenceEscrow", s.token.address, s.models.address, s.providers.address, s.treasury.address,
            PROTOCOL_FEE_BPS, WITHDRAW_TIMELOCK,
        )  # fmt: skip
    with boa.env.prank(s.payer.address):
        s.token.approve(other.address, 2**256 - 1)
    deposit(s, 10 * ONE)
    deposit(s, 10 * ONE, escrow=other)
    v = voucher(s, ONE)
    for_first, for_other = sign(s, v), sign(s, v, escrow=other)
    assert s.escrow.voucherDigest(v.as_tuple()) != other.voucherDigest(v.as_tuple())
    with boa.reverts("escrow: signature is not the payer's"):
        redeem(s, v, for_first, escrow=other)
    with boa.reverts("escrow: signature is not the payer's"):
        redeem(s, v, for_other)
    assert redeem(s, v, for_first) == ONE
    assert redeem(s, v, for_other, escrow=other) == ONE
    assert s.token.balanceOf(s.escrow.address) == s.token.balanceOf(other.address) == 9 * ONE


def _rsv(signature: bytes) -> tuple[int, int, int]:
    return int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]


def test_compact_signature_is_accepted_but_cannot_pay_twice(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, 2 * ONE)
    signature = sign(s, v)
    r, sv, recovery = _rsv(signature)
    compact = r.to_bytes(32, "big") + ((recovery - 27) << 255 | sv).to_bytes(32, "big")  # EIP-2098
    assert redeem(s, v, compact) == 2 * ONE
    # NOTE: the 65-byte form of the same signature is a different byte string but the
    # same voucher: redemption is keyed by the cumulative amount, never by the signature.
    assert redeem(s, v, signature) == 0
    assert channel(s) == (8 * ONE, 0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda sig: b"\x00" * 64 + b"\x1b", "ecdsa: invalid signature"),
        (lambda sig: b"\x00" * 64, "ecdsa: invalid signature"),
        (lambda sig: b"\xff" * 65, "ecdsa: invalid signature `s` value"),
        (lambda sig: sig[:64] + b"\x00", "ecdsa: invalid signature"),  # v not 27/28
        (lambda sig: sig[:64] + b"\x1d", "ecdsa: invalid signature"),
        (
            # the malleable twin (r, n - s, v ^ 1) of a valid signature
            lambda sig: sig[:32] + (SECP256K1_N - _rsv(sig)[1]).to_bytes(32, "big") + bytes([55 - sig[64]]),
            "ecdsa: invalid signature `s` value",
        ),
        # other lengths recover no one: the zero address is never the payer
        (lambda sig: b"", "escrow: signature is not the payer's"),
        (lambda sig: sig[:63], "escrow: signature is not the payer's"),
        (lambda sig: sig[:20], "escrow: signature is not the payer's"),
    ],
    ids=["zero-65", "zero-64", "high-s-garbage", "v-zero", "v-29", "malleable-high-s", "empty", "63-bytes", "20-bytes"],
)
def test_malformed_signature_is_rejected(suite, make, message):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, ONE)
    with boa.reverts(message):
        redeem(s, v, make(sign(s, v)))
    assert channel(s) == (10 * ONE, 0)


def test_malleable_twin_recovers_the_payer_off_chain(suite):
    """Sanity check of the high-s case above: the twin is a valid signature by the payer,
    the contract refuses it only for its high s."""
    s = suite
    v = voucher(s, ONE)
    r, sv, recovery = _rsv(sign(s, v))
    digest = voucher_digest(v, chain_id(), s.escrow.address)
    twin = keys.Signature(vrs=((recovery - 27) ^ 1, r, SECP256K1_N - sv))
    assert twin.recover_public_key_from_msg_hash(digest).to_checksum_address() == s.payer.address


def test_zero_payer_with_an_empty_signature_is_refused(suite):
    """An unrecoverable signature yields the zero address, so a voucher naming
    the zero address as payer is refused outright."""
    s = suite
    v = Voucher(ZERO_ADDRESS, s.provider.address, s.model_id, ONE, now() + 100)
    before = balances(s)
    with boa.reverts("escrow: payer is the zero address"):
        redeem(s, v, b"")
    assert balances(s) == before
    assert s.escrow.redeemable(v.as_tuple()) == 0


# --- redeemBatch -------------------------------------------------------------------------------


def _fund(s, who, amount: int, provider=None) -> None:
    with boa.env.prank(s.deployer.address):
        s.token.mint(who.address, amount)
    with boa.env.prank(who.address):
        s.token.approve(s.escrow.address, 2**256 - 1)
    deposit(s, amount, payer=who, provider=provider)


def test_redeem_batch_pays_many_payers_to_one_provider(suite):
    s = suite
    payers = [actor(f"batch-payer-{i}") for i in range(6)]
    for i, p in enumerate(payers):
        _fund(s, p, (i + 1) * ONE)
    vs = [voucher(s, (i + 1) * ONE // 2 + i, payer=p) for i, p in enumerate(payers)]
    # the last payer owes more than it deposited: capped
    vs[-1] = voucher(s, 100 * ONE, payer=payers[-1])
    sigs = [sign_voucher(v, p.key, chain_id(), s.escrow.address) for v, p in zip(vs, payers)]
    paid = [min(v.cumulative_amount, (i + 1) * ONE) for i, v in enumerate(vs)]
    before = balances(s)
    with boa.env.prank(s.provider2.address):
        assert s.escrow.redeemBatch(s.provider.address, [v.as_tuple() for v in vs], sigs) == sum(paid)
    splits = [split_payment(a, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS) for a in paid]
    assert diff(before, balances(s)) == {
        "provider": sum(x.provider for x in splits), "publisher": sum(x.model_owner for x in splits),
        "treasury": sum(x.protocol_fee for x in splits), "escrow": -sum(paid),
    }  # fmt: skip
    for i, (p, v) in enumerate(zip(payers, vs)):
        assert channel(s, payer=p) == ((i + 1) * ONE - paid[i], 0)
        assert s.escrow.redeemed(p.address, s.provider.address, s.model_id) == paid[i]
    assert_solvent(s, *[(p, s.provider) for p in payers])
    # The same batch again pays nothing.
    with boa.env.prank(s.provider.address):
        assert s.escrow.redeemBatch(s.provider.address, [v.as_tuple() for v in vs], sigs) == 0


def test_redeem_batch_with_a_repeated_voucher_pays_it_once(suite):
    s = suite
    deposit(s, 10 * ONE)
    low, high = voucher(s, 2 * ONE), voucher(s, 5 * ONE)
    batch = [high, low, high]
    before = balances(s)
    with boa.env.prank(s.provider.address):
        total = s.escrow.redeemBatch(s.provider.address, [v.as_tuple() for v in batch], [sign(s, v) for v in batch])
    assert total == 5 * ONE
    assert diff(before, balances(s)) == expected_payout(5 * ONE)


def test_redeem_batch_empty_pays_nothing(suite):
    s = suite
    before = balances(s)
    with boa.env.prank(s.provider.address):
        assert s.escrow.redeemBatch(s.provider.address, [], []) == 0
    assert balances(s) == before


def test_redeem_batch_with_mismatched_lengths_reverts(suite):
    s = suite
    deposit(s, 10 * ONE)
    v = voucher(s, ONE)
    with boa.reverts("escrow: vouchers and signatures differ in length"):
        with boa.env.prank(s.provider.address):
            s.escrow.redeemBatch(s.provider.address, [v.as_tuple()], [sign(s, v), sign(s, v)])
    with boa.reverts("escrow: vouchers and signatures differ in length"):
        with boa.env.prank(s.provider.address):
            s.escrow.redeemBatch(s.provider.address, [v.as_tuple(), v.as_tuple()], [sign(s, v)])


def test_redeem_batch_with_a_voucher_for_another_provider_reverts(suite):
    s = suite
    deposit(s, 10 * ONE)
    deposit(s, 10 * ONE, provider=s.provider2)
    mine, theirs = voucher(s, ONE), voucher(s, ONE, provider=s.provider2)
    before = balances(s)
    with boa.reverts("escrow: voucher for another provider"):
        with boa.env.prank(s.provider.address):
            s.escrow.redeemBatch(s.provider.address, [mine.as_tuple(), theirs.as_tuple()], [sign(s, mine), sign(s, theirs)])
    assert balances(s) == before  # the whole batch reverted, the first voucher included


def test_redeem_batch_with_one_bad_signature_reverts_entirely(suite):
    s = suite
    deposit(s, 10 * ONE)
    a, b = voucher(s, ONE), voucher(s, 2 * ONE, model_id=UNKNOWN_MODEL_ID)
    before = balances(s)
    with boa.reverts("escrow: signature is not the payer's"):
        with boa.env.prank(s.provider.address):
            s.escrow.redeemBatch(s.provider.address, [a.as_tuple(), b.as_tuple()], [sign(s, a), sign(s, b, key=s.provider.key)])
    assert balances(s) == before


def test_redeem_batch_with_an_expired_voucher_reverts(suite):
    s = suite
    deposit(s, 10 * ONE)
    a, b = voucher(s, ONE), voucher(s, ONE, model_id=UNKNOWN_MODEL_ID, expiry=now() - 1)
    with boa.reverts("escrow: voucher expired"):
        with boa.env.prank(s.provider.address):
            s.escrow.redeemBatch(s.provider.address, [a.as_tuple(), b.as_tuple()], [sign(s, a), sign(s, b)])


# --- views -------------------------------------------------------------------------------------


def test_voucher_digest_matches_the_python_digest(suite):
    s = suite
    for v in (
        voucher(s, ONE),
        voucher(s, 0, model_id=0, expiry=0),
        voucher(s, 2**256 - 1, payer=s.requester, provider=s.provider2, model_id=2**256 - 1, expiry=2**256 - 1),
    ):
        assert bytes(s.escrow.voucherDigest(v.as_tuple())) == voucher_digest(v, chain_id(), s.escrow.address)
    v = voucher(s, ONE)
    assert voucher_digest(v, chain_id() + 1, s.escrow.address) != bytes(s.escrow.voucherDigest(v.as_tuple()))


def test_eip712_domain_names_the_escrow(suite):
    s = suite
    _, name, version, chain, verifying, _, _ = s.escrow.eip712Domain()
    assert (name, version, chain, str(verifying)) == ("NodeAI InferenceEscrow", "1", chain_id(), s.escrow.address)


def test_redeemable_previews_what_redeem_pays(suite):
    s = suite
    deposit(s, 5 * ONE)
    v = voucher(s, 3 * ONE, expiry=now() + 100)
    assert s.escrow.redeemable(v.as_tuple()) == 3 * ONE
    assert s.escrow.redeemable(voucher(s, 8 * ONE).as_tuple()) == 5 * ONE  # capped
    assert redeem(s, v) == 3 * ONE
    assert s.escrow.redeemable(v.as_tuple()) == 0  # stale
    assert s.escrow.redeemable(voucher(s, 2 * ONE).as_tuple()) == 0  # lower
    higher = voucher(s, 4 * ONE, expiry=now() + 100)
    assert s.escrow.redeemable(higher.as_tuple()) == ONE
    warp(101)
    assert s.escrow.redeemable(higher.as_tuple()) == 0  # expired
    # The view ignores the signature: a voucher nobody signed still previews its amount.
    assert s.escrow.redeemable(voucher(s, 3 * ONE + 1, payer=s.payer).as_tuple()) == 1


# --- owner functions ---------------------------------------------------------------------------


def test_set_withdraw_timelock_by_the_owner_within_bounds(suite):
    s = suite
    with boa.env.prank(s.deployer.address):
        for value in (60, 30 * 86_400, 3_600):
            s.escrow.setWithdrawTimelock(value)
            assert last_event(s.escrow, "WithdrawTimelockChanged")["withdrawTimelock"] == value
            assert s.escrow.withdrawTimelock() == value


@pytest.mark.parametrize("value", [0, 59, 30 * 86_400 + 1, 2**256 - 1])
def test_set_withdraw_timelock_outside_bounds_reverts(suite, value):
    s = suite
    with boa.reverts("escrow: timelock outside 1 min to 30 days"):
        with boa.env.prank(s.deployer.address):
            s.escrow.setWithdrawTimelock(value)
    assert s.escrow.withdrawTimelock() == WITHDRAW_TIMELOCK


def test_set_withdraw_timelock_by_anyone_else_reverts(suite):
    s = suite
    with boa.reverts("ownable: caller is not the owner"):
        with boa.env.prank(s.payer.address):
            s.escrow.setWithdrawTimelock(60)


def test_constructor_rejects_a_bad_timelock_and_fee(suite):
    s = suite
    args = (s.token.address, s.models.address, s.providers.address, s.treasury.address)
    with boa.reverts("escrow: timelock outside 1 min to 30 days"):
        load("InferenceEscrow", *args, PROTOCOL_FEE_BPS, 59)
    with boa.reverts("fees: fee above MAX_PROTOCOL_FEE_BPS"):
        load("InferenceEscrow", *args, 1_001, WITHDRAW_TIMELOCK)


def test_protocol_fee_is_capped_at_ten_percent(suite):
    s = suite
    with boa.env.prank(s.deployer.address):
        s.escrow.setProtocolFee(1_000)
        assert s.escrow.protocolFeeBps() == 1_000
        with boa.reverts("fees: fee above MAX_PROTOCOL_FEE_BPS"):
            s.escrow.setProtocolFee(1_001)
    assert s.escrow.protocolFeeBps() == 1_000
    with boa.reverts("ownable: caller is not the owner"):
        with boa.env.prank(s.provider.address):
            s.escrow.setProtocolFee(0)
    # At the cap with the largest revenue share the split still adds up.
    with boa.env.prank(s.publisher.address):
        s.models.setTerms(s.model_id, 0, 5_000)
    warp(7 * 86_400)  # a share increase applies after its notice period
    deposit(s, 10 * ONE)
    before = balances(s)
    assert redeem(s, voucher(s, 10 * ONE - 1)) == 10 * ONE - 1
    assert diff(before, balances(s)) == expected_payout(10 * ONE - 1, share_bps=5_000, fee_bps=1_000)


def test_treasury_change_redirects_the_fee(suite):
    s = suite
    with boa.env.prank(s.deployer.address):
        with boa.reverts("fees: treasury is the zero address"):
            s.escrow.setTreasury(ZERO_ADDRESS)
        s.escrow.setTreasury(s.provider2.address)
    with boa.reverts("ownable: caller is not the owner"):
        with boa.env.prank(s.treasury.address):
            s.escrow.setTreasury(s.treasury.address)
    deposit(s, 10 * ONE)
    before = balances(s)
    redeem(s, voucher(s, 4 * ONE))
    split = split_payment(4 * ONE, REVENUE_SHARE_BPS, PROTOCOL_FEE_BPS)
    assert diff(before, balances(s)) == {
        "provider": split.provider, "publisher": split.model_owner, "provider2": split.protocol_fee, "escrow": -4 * ONE,
    }  # fmt: skip


# --- the contract agrees with the Python model over random sequences ---------------------------

_steps = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.integers(1, 5 * ONE)),
        st.tuples(st.just("redeem"), st.integers(0, 20 * ONE)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=_steps)
def test_redemptions_follow_redeemable_delta(suite, steps):
    s = suite
    with boa.env.anchor():
        balance = redeemed = deposited = highest = 0
        paid_total = 0
        for kind, amount in steps:
            if kind == "deposit":
                deposit(s, amount)
                balance += amount
                deposited += amount
                continue
            v = voucher(s, amount)
            expected = redeemable_delta(amount, redeemed, balance)
            assert s.escrow.redeemable(v.as_tuple()) == expected
            before = balances(s)
            assert redeem(s, v) == expected
            assert diff(before, balances(s)) == expected_payout(expected)
            redeemed += expected
            balance -= expected
            highest = max(highest, amount)
            paid_total += expected
            assert channel(s)[0] == balance
            assert s.escrow.redeemed(s.payer.address, s.provider.address, s.model_id) == redeemed
            assert redeemed <= highest
        # The provider finally redeems its highest voucher: everything owed up to the deposits is paid.
        if highest:
            paid_total += redeem(s, voucher(s, highest))
        assert paid_total == min(highest, deposited)
        assert s.token.balanceOf(s.escrow.address) == deposited - paid_total


def test_only_the_payer_can_withdraw_its_deposit(suite):
    s = suite
    deposit(s, 3 * ONE)
    with boa.env.prank(s.payer.address):
        s.escrow.requestWithdrawal(s.provider.address)
    warp(WITHDRAW_TIMELOCK)
    for other in (s.provider, s.requester):
        with boa.reverts("escrow: nothing deposited"):
            with boa.env.prank(other.address):
                s.escrow.requestWithdrawal(s.provider.address)
        with boa.reverts("escrow: no withdrawal requested"):
            with boa.env.prank(other.address):
                s.escrow.withdraw(s.provider.address)
    assert channel(s)[0] == 3 * ONE


def test_wiring_and_ownership_transfer(suite):
    s = suite
    assert (s.escrow.token(), s.escrow.modelRegistry(), s.escrow.providerRegistry()) == (
        s.token.address, s.models.address, s.providers.address,
    )  # fmt: skip
    assert (s.escrow.owner(), s.escrow.treasury(), s.escrow.protocolFeeBps()) == (
        s.deployer.address, s.treasury.address, PROTOCOL_FEE_BPS,
    )  # fmt: skip
    with boa.reverts("ownable: caller is not the owner"):
        with boa.env.prank(s.payer.address):
            s.escrow.transfer_ownership(s.payer.address)
    with boa.reverts("ownable: new owner is the zero address"):
        with boa.env.prank(s.deployer.address):
            s.escrow.transfer_ownership(ZERO_ADDRESS)
    with boa.env.prank(s.deployer.address):
        s.escrow.transfer_ownership(s.arbiter.address)
    assert s.escrow.owner() == s.arbiter.address
    with boa.reverts("ownable: caller is not the owner"):
        with boa.env.prank(s.deployer.address):
            s.escrow.setWithdrawTimelock(60)
    with boa.env.prank(s.arbiter.address):
        s.escrow.setWithdrawTimelock(60)
    assert s.escrow.withdrawTimelock() == 60
