"""Stateful invariant (fuzz) tests: random sequences of valid and invalid calls.

Two hypothesis state machines drive the contracts in titanoboa's in-process EVM:

* ``JobMarketMachine``: JobMarket jobs (create, claim, submit, dispute, resolve,
  finalize, cancel, refundExpired; replays of stale or tampered structs and
  unknown ids; every time limit probed one second before, at and after),
  ProviderRegistry stake (register, addStake, requestUnbond, withdrawUnbonded,
  model prices, minimum stake), governance (protocol fee, treasury, market
  params, revenue shares with their delayed increases, deprecation) and warps.
* ``EscrowMachine``: InferenceEscrow deposits, withdrawal requests and
  withdrawals around the timelock, EIP-712 vouchers (good, lower or higher
  than before, above the deposit, expired, wrong signer, tampered, EIP-2098
  compact, high-s, from the zero address) redeemed one by one or in batches,
  governance and warps.

Every call is first predicted by a Python model of the contracts: a call the
model says is valid must succeed with the events and payouts it predicts; an
invalid one must revert (``boa.BoaError``) and leave every token balance
unchanged. After every step the invariants compare the chain with the model
and check the accounting identities the contracts document (escrowed
balances, bonds, one payout per job, redeemed <= signed, conservation of the
minted supply).

The suite is deployed once per module; each example runs inside
``boa.env.anchor()``, so it starts from the same state and costs no
deployment. Token balances are read straight from storage (microseconds);
the headline balances, provider records and job commitments through the
public getters. A failing example is printed with every call and its revert
reason (hypothesis notes).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace

import boa
import pytest
from eth_utils import keccak
from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule

from nodeai.chain import jobs as J
from nodeai.chain.fees import split_payment
from nodeai.chain.jobs import ZERO_ADDRESS, JobState
from nodeai.chain.vouchers import Voucher, sign_voucher, voucher_digest

from .conftest import (
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
    PROVIDER_FIELDS,
    REVENUE_SHARE_BPS,
    UNBONDING_DELAY,
    WITHDRAW_TIMELOCK,
    actor,
    deploy_suite,
    now,
)

# ---------------------------------------------------------------------------
# Settings: at least 1,000 examples per machine; more under a bigger profile.
# ---------------------------------------------------------------------------

_PROFILE = settings()
EXAMPLES = max(1_000, _PROFILE.max_examples)
JOB_STEPS = 15
ESCROW_STEPS = 15

# Contract constants the model mirrors.
MAX_JOB_DURATION = 30 * 86_400
MAX_WINDOW = 7 * 86_400
MAX_BOND_BPS = 50_000
MAX_PROTOCOL_FEE_BPS = 1_000
MAX_REVENUE_SHARE_BPS = 5_000
MAX_TIMELOCK = 30 * 86_400
UINT256_MAX = 2**256 - 1
EXTRA_MINT = 1_000_000 * ONE
UNKNOWN_MODEL = 999
SHARE_INCREASE_DELAY = 7 * 86_400
MAX_STAKE = 2**112 - 1
MAX_CHANNEL_BALANCE = 2**192 - 1
SHARES = (0, 1, REVENUE_SHARE_BPS, MAX_REVENUE_SHARE_BPS, MAX_REVENUE_SHARE_BPS + 1)
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


# ---------------------------------------------------------------------------
# The world: one suite per module, plus a few extra actors and a second model.
# ---------------------------------------------------------------------------


@dataclass
class World:
    s: object
    a: dict  # name -> Actor
    m1: int  # the suite's model (10 % revenue share)
    m2: int  # a second model (50 % revenue share), served by provider and provider2
    minted: int
    raw: "Raw"
    initial_providers: dict  # address -> the providers(addr) record at the start of every example
    initial_prices: dict  # (provider, model id) -> modelPrice at the start of every example

    def addr(self, name: str) -> str:
        cache = self.__dict__.setdefault("_addresses", {})
        if name not in cache:
            cache[name] = self.a[name].address  # derived from the key: slow, so once
        return cache[name]


_WORLD: World | None = None


def world() -> World:
    global _WORLD
    if _WORLD is None:
        s = deploy_suite()
        a = {n: actor(n) for n in (
            "deployer", "treasury", "treasury2", "arbiter", "arbiter2", "publisher", "provider", "provider2",
            "provider3", "requester", "requester2", "payer", "payer2", "outsider",
        )}  # fmt: skip
        with boa.env.prank(a["deployer"].address):
            for who in ("provider3", "requester2", "payer2"):
                s.token.mint(a[who].address, EXTRA_MINT)
        with boa.env.prank(a["provider3"].address):
            s.token.approve(s.providers.address, UINT256_MAX)
        with boa.env.prank(a["requester2"].address):
            s.token.approve(s.market.address, UINT256_MAX)
        with boa.env.prank(a["payer2"].address):
            s.token.approve(s.escrow.address, UINT256_MAX)
        with boa.env.prank(a["publisher"].address):
            m2 = s.models.registerModel(ARTIFACT_CID, MANIFEST_CID, 5 * ONE // 1000, MAX_REVENUE_SHARE_BPS)
        for who in ("provider", "provider2"):
            with boa.env.prank(a[who].address):
                s.providers.setModelPrice(m2, 5 * ONE // 1000)
        minted = 4 * 1_000_000 * ONE + 3 * EXTRA_MINT
        assert s.token.totalSupply() == minted
        providers = {a[p].address: tuple(int(x) for x in s.providers.providers(a[p].address))
                     for p in ("provider", "provider2", "provider3")}  # fmt: skip
        prices = {(addr, m): s.providers.modelPrice(addr, m)
                  for addr in providers for m in (s.model_id, m2, UNKNOWN_MODEL)}  # fmt: skip
        w = World(s, a, s.model_id, m2, minted, Raw(s), providers, prices)
        w.raw.calibrate(w)
        _WORLD = w
    return _WORLD


@pytest.fixture(scope="module", autouse=True)
def _deployed_world():
    """Deploys the world once for this module, outside any example.

    titanoboa's pytest plugin runs each fixture's set-up in an anchor that is
    reverted when the fixture is finalized, each test in another, and each
    hypothesis example in a third: a world deployed lazily inside an example
    would vanish with it. Deployed here it lives until the module is done.
    """
    global _WORLD
    _WORLD = None
    yield world()
    _WORLD = None


# ---------------------------------------------------------------------------
# Raw storage reads: the same storage the getters return, a thousand times cheaper.
# ---------------------------------------------------------------------------


def _find_slot(layout: dict, name: str) -> int | None:
    for key, value in layout.items():
        if key == name and isinstance(value, dict) and "slot" in value:
            return value["slot"]
        if isinstance(value, dict) and key != "transient_storage_layout":
            found = _find_slot(value, name)
            if found is not None:
                return found
    return None


def _key(k) -> bytes:
    if isinstance(k, int):
        return k.to_bytes(32, "big")
    return bytes(12) + bytes.fromhex(str(k)[2:])


class Raw:
    """Reads state for the per-step checks.

    Token balances (snekmate's ERC-20) are read straight from storage
    (Vyper: a HashMap entry lives at keccak256(slot . key)), a thousand times
    cheaper than a call. Job commitments, channels and redeemed amounts are
    read the same way only when ``calibrate`` proved the raw read equals the
    public getter on this build of the contracts; otherwise (a storage
    refactor) they go through the getter. Provider records always go through
    the ``providers(addr)`` getter: their storage is packed.
    """

    def __init__(self, s):
        def slot_of(contract, name):
            return _find_slot(contract.compiler_data.storage_layout, name)

        self.s = s
        self.token = bytes.fromhex(str(s.token.address)[2:])
        self.market = bytes.fromhex(str(s.market.address)[2:])
        self.escrow = bytes.fromhex(str(s.escrow.address)[2:])
        self.balance_base = slot_of(s.token, "balanceOf")
        self.supply_slot = slot_of(s.token, "totalSupply")
        self.commitment_base = slot_of(s.market, "jobCommitment")
        self.channel_base = slot_of(s.escrow, "channels")
        self.redeemed_base = slot_of(s.escrow, "redeemed")
        self.fast = {"commitment": False, "channel": False, "redeemed": False}
        self._slots: dict = {}

    def _slot(self, base: int, *keys) -> int:
        cache_key = (base, keys)
        slot = self._slots.get(cache_key)
        if slot is None:
            slot = base
            for k in keys:
                slot = int.from_bytes(keccak(slot.to_bytes(32, "big") + _key(k)), "big")
            self._slots[cache_key] = slot
        return slot

    @staticmethod
    def _state():
        return boa.env.evm.vm.state

    def balances(self, addrs) -> tuple:
        state = self._state()
        return tuple(state.get_storage(self.token, self._slot(self.balance_base, a)) for a in addrs)

    def total_supply(self) -> int:
        return self._state().get_storage(self.token, self.supply_slot)

    def provider(self, addr: str) -> tuple:
        return tuple(int(x) for x in self.s.providers.providers(addr))

    def commitment(self, job_id: int) -> bytes:
        if self.fast["commitment"]:
            value = self._state().get_storage(self.market, self._slot(self.commitment_base, job_id))
            return value.to_bytes(32, "big")
        return bytes(self.s.market.jobCommitment(job_id))

    def channel(self, payer: str, provider: str) -> tuple:
        if self.fast["channel"]:
            state = self._state()
            base = self._slot(self.channel_base, payer, provider)
            return (state.get_storage(self.escrow, base), state.get_storage(self.escrow, base + 1))
        return tuple(self.s.escrow.channels(payer, provider))

    def redeemed(self, payer: str, provider: str, model_id: int) -> int:
        if self.fast["redeemed"]:
            return self._state().get_storage(self.escrow, self._slot(self.redeemed_base, payer, provider, model_id))
        return self.s.escrow.redeemed(payer, provider, model_id)

    def calibrate(self, w: World) -> None:
        """Checks the raw reads against the public getters once, at deployment, on non-trivial values."""
        s = w.s
        payer, provider = w.addr("payer"), w.addr("provider")
        for a in w.a.values():
            assert self.balances([a.address]) == (s.token.balanceOf(a.address),)
        assert self.total_supply() == s.token.totalSupply()
        with boa.env.anchor():
            with boa.env.prank(payer):
                s.escrow.deposit(provider, 123)
                s.escrow.requestWithdrawal(provider)
            v = Voucher(payer, provider, w.m1, 100, now() + 10)
            s.escrow.redeem(v.as_tuple(), sign_voucher(v, w.a["payer"].key, chain_id(), s.escrow.address))
            with boa.env.prank(w.addr("requester")):
                job_id = s.market.createJob(w.m1, INPUT_CID, 10, now() + 100, ZERO_ADDRESS, 0)
            expected = {
                "commitment": bytes(s.market.jobCommitment(job_id)),
                "channel": tuple(s.escrow.channels(payer, provider)),
                "redeemed": s.escrow.redeemed(payer, provider, w.m1),
            }
            for name, value in expected.items():
                self.fast[name] = getattr(self, f"{name}_base", None) is not None
                try:
                    args = {"commitment": (job_id,), "channel": (payer, provider), "redeemed": (payer, provider, w.m1)}
                    self.fast[name] = self.fast[name] and getattr(self, name)(*args[name]) == value
                except Exception:
                    self.fast[name] = False


def chain_id() -> int:
    return boa.env.evm.patch.chain_id


# ---------------------------------------------------------------------------
# Helpers shared by both machines.
# ---------------------------------------------------------------------------

_REASON = re.compile(r"(?:market|providers|escrow|fees|models|transfers|erc20|ecdsa|ownable)[:\s][^\n\"']*")


def _reason(err: Exception) -> str:
    text = str(err)
    m = _REASON.search(text)
    return m.group(0) if m else text[-400:]


def action(**strategies):
    """Marks a method as one action of a grouped rule (the group draws which one and its arguments)."""

    def mark(fn):
        fn.strategies = strategies
        return fn

    return mark


def run_action(machine, data, name: str, **fixed) -> None:
    fn = getattr(machine, name)
    fn(**fixed, **data.draw(st.fixed_dictionaries(fn.strategies), label=name))


def _printing() -> bool:
    """True only while hypothesis replays the final (failing) example, when notes are shown."""
    return current_build_context().is_final


def _decode(log) -> tuple[str, dict]:
    args = {k: (str(v) if type(v).__name__ == "Address" else v) for k, v in log._asdict().items()}
    return type(log).__name__, args


WARP = st.one_of(
    st.integers(1, 120),
    st.integers(1, 3 * 86_400),
    st.sampled_from([59, 60, 61, 3_599, 3_600, 3_601, 86_399, 86_400, 86_401, 7 * 86_400, 7 * 86_400 + 1,
                     30 * 86_400, 31 * 86_400]),
)  # fmt: skip


class Base(RuleBasedStateMachine):
    """Anchors the EVM for one example and tracks every account's expected balance."""

    def __init__(self):
        super().__init__()
        self.w = world()
        self.s = self.w.s
        self.raw = self.w.raw
        self._anchor = boa.env.anchor()
        self._anchor.__enter__()
        try:
            self._init_model()
        except BaseException:
            self.teardown()
            raise

    def _init_model(self):
        # every address that can ever hold the token in this machine
        contracts = [self.s.token.address, self.s.models.address, self.s.providers.address, self.s.market.address,
                     self.s.escrow.address, self.s.receipts.address]  # fmt: skip
        self.addresses = [str(c) for c in contracts] + [self.w.addr(n) for n in self.w.a]
        self.version = 0  # counts the calls that succeeded
        self.bal = dict(zip(self.addresses, self.raw.balances(self.addresses)))
        assert sum(self.bal.values()) == self.w.minted
        self.fee_bps = {str(self.s.market.address): PROTOCOL_FEE_BPS, str(self.s.escrow.address): PROTOCOL_FEE_BPS}
        self.treasury = {str(self.s.market.address): self.w.addr("treasury"),
                         str(self.s.escrow.address): self.w.addr("treasury")}  # fmt: skip
        # revenue share per model: [share in force, announced increase, when it applies (0: none)]
        self.share_terms = {self.w.m1: [REVENUE_SHARE_BPS, 0, 0], self.w.m2: [MAX_REVENUE_SHARE_BPS, 0, 0],
                            UNKNOWN_MODEL: [0, 0, 0]}  # fmt: skip
        self.model_owner = {self.w.m1: self.w.addr("publisher"), self.w.m2: self.w.addr("publisher"),
                            UNKNOWN_MODEL: ZERO_ADDRESS}  # fmt: skip
        self.active = {self.w.m1: True, self.w.m2: True, UNKNOWN_MODEL: False}

    def teardown(self):
        self._anchor.__exit__(None, None, None)

    def unchanged_since_last(self, check: str) -> bool:
        """True when no call succeeded since ``check`` last ran: a revert changes nothing (``call``
        checks the balances around each one), so the chain reads of that check can be skipped."""
        seen = self.__dict__.setdefault("_seen", {})
        if seen.get(check) == self.version:
            return True
        seen[check] = self.version
        return False

    def every_few_steps(self, n: int = 7) -> bool:
        self._checks = getattr(self, "_checks", 0) + 1
        return self._checks % n == 0

    def a(self, name: str) -> str:
        return self.w.addr(name)

    # -- calls -------------------------------------------------------------

    def _snapshot(self):
        return self.raw.balances(self.addresses)

    def call(self, expect_ok: bool, sender: str, fn, *args, what: str):
        """Calls ``fn`` as ``sender``. Asserts it succeeds iff ``expect_ok``; a revert must change nothing."""
        before = self._snapshot()
        try:
            with boa.env.prank(sender):
                result = fn(*args)
        except boa.BoaError as err:
            assert self._snapshot() == before, f"{what}: reverted but token balances changed"
            assert not expect_ok, f"{what}: the model expected success, the contract reverted with {_reason(err)!r}"
            if _printing():
                note(f"  {what} reverted as expected: {_reason(err)}")
            return False, None
        assert expect_ok, f"{what}: the model expected a revert, the contract accepted it (returned {result!r})"
        if _printing():
            note(f"  {what} ok -> {result!r}")
        self.version += 1
        return True, result

    def pay(self, frm: str, to: str, amount: int) -> None:
        assert amount >= 0
        if amount == 0:
            return  # the contracts skip zero transfers (and a model without an owner gets none)
        self.bal[frm] -= amount
        self.bal[to] += amount

    # -- governance shared by JobMarket and InferenceEscrow ----------------

    def _set_protocol_fee(self, contract, caller: str, fee: int) -> None:
        ok = caller == self.a("deployer") and fee <= MAX_PROTOCOL_FEE_BPS
        done, _ = self.call(ok, caller, contract.setProtocolFee, fee, what=f"setProtocolFee({fee})")
        if done:
            self.fee_bps[str(contract.address)] = fee

    def _set_treasury(self, contract, caller: str, treasury: str) -> None:
        ok = caller == self.a("deployer") and treasury != ZERO_ADDRESS
        done, _ = self.call(ok, caller, contract.setTreasury, treasury, what=f"setTreasury({treasury})")
        if done:
            self.treasury[str(contract.address)] = treasury

    def _set_revenue_share(self, caller: str, model_id: int, share: int) -> None:
        ok = self.model_owner[model_id] != ZERO_ADDRESS and caller == self.model_owner[model_id]
        ok = ok and share <= MAX_REVENUE_SHARE_BPS
        done, _ = self.call(ok, caller, self.s.models.setTerms, model_id, 5 * ONE // 1000, share,
                            what=f"setTerms({model_id}, share={share})")  # fmt: skip
        if done:
            current = self.share(model_id)
            if share > current:  # an increase applies only SHARE_INCREASE_DELAY after it is announced
                self.share_terms[model_id] = [current, share, now() + SHARE_INCREASE_DELAY]
            else:
                self.share_terms[model_id] = [share, 0, 0]
        assert self.s.models.modelTerms(model_id)[1] == self.share(model_id)

    def share(self, model_id: int) -> int:
        """The revenue share in force now."""
        share, pending, pending_at = self.share_terms[model_id]
        return pending if pending_at and now() >= pending_at else share

    # -- shared invariants -------------------------------------------------

    def check_conservation(self) -> None:
        actual = self.raw.balances(self.addresses)
        supply = self.raw.total_supply()
        assert supply == self.w.minted, f"total supply {supply} != minted {self.w.minted}"
        assert sum(actual) == self.w.minted, f"balances sum to {sum(actual)}, minted {self.w.minted}"
        expected = tuple(self.bal[a] for a in self.addresses)
        if actual != expected:
            diff = {a: (e, x) for a, e, x in zip(self.addresses, expected, actual) if e != x}
            raise AssertionError(f"balances differ from the model (address: (expected, actual)): {diff}")


# ---------------------------------------------------------------------------
# Machine 1: JobMarket + ProviderRegistry stake.
# ---------------------------------------------------------------------------

PROVIDERS = ("provider", "provider2", "provider3")
CALLERS = ("deployer", "arbiter", "arbiter2", "publisher", "provider", "provider2", "provider3", "requester",
           "requester2", "outsider")  # fmt: skip
JOB_ACTIONS = ("claim", "submit", "dispute", "resolve", "finalize", "cancel", "refund_expired")
JOB_EVENTS = ("JobCreated", "JobClaimed", "JobSubmitted", "JobDisputed", "JobSettled", "JobRefunded")

MAX_PAYMENT = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 5, 9, 10, ONE, 1_000_000 * ONE, 1_000_000 * ONE + 1, 2**200, 2**255,
                     UINT256_MAX // MAX_BOND_BPS + 1, UINT256_MAX]),
    st.integers(1, 100 * ONE),
    st.integers(1, 10_000 * ONE),
)  # fmt: skip
DURATION = st.one_of(
    st.sampled_from([-1, 0, 1, 2, 60, 3_600, 3_601, 86_400, MAX_JOB_DURATION - 1, MAX_JOB_DURATION,
                     MAX_JOB_DURATION + 1]),
    st.integers(1, MAX_JOB_DURATION),
)  # fmt: skip
VALID_MAX_PAYMENT = st.one_of(
    st.just(1), st.integers(1, 10 * ONE), st.integers(1, 500 * ONE), st.integers(1, 5_000 * ONE)
)
VALID_DURATION = st.one_of(st.sampled_from([1, 60, 3_600, 86_400, MAX_JOB_DURATION]), st.integers(1, MAX_JOB_DURATION))
PRIORITY_FOR = st.one_of(st.sampled_from([-1, 0, 1, 2, 60]), st.integers(1, 2 * 86_400), st.just(MAX_JOB_DURATION + 5))


class JobMarketMachine(Base):
    jobs = Bundle("jobs")

    def _init_model(self):
        super()._init_model()
        self.market_addr = str(self.s.market.address)
        self.registry_addr = str(self.s.providers.address)
        # provider records, field for field the contract's struct
        self.prov = {a: dict(zip(PROVIDER_FIELDS, record)) for a, record in self.w.initial_providers.items()}
        self.price = dict(self.w.initial_prices)
        self.min_stake = MIN_STAKE
        self.bond_bps = BOND_BPS
        self.challenge_window = CHALLENGE_WINDOW
        self.arbitration_window = ARBITRATION_WINDOW
        self.arbiter = self.a("arbiter")
        # jobs, rebuilt from the events as a client does
        self.job: dict[int, J.Job] = {}
        self.history: dict[int, list[J.Job]] = {}
        self.final_event: dict[int, str] = {}
        self.failed_bonds: dict[str, int] = {self.a(p): 0 for p in PROVIDERS}

    # -- plumbing ------------------------------------------------------------

    def _job_events(self) -> list[tuple[str, dict]]:
        out = []
        for log in self.s.market.get_logs():
            name = type(log).__name__
            if name in JOB_EVENTS or name == "DisputeResolved":
                out.append(_decode(log))
        return out

    def _apply(self, job_id: int, expected_names: tuple[str, ...]) -> list[tuple[str, dict]]:
        events = [e for e in self._job_events() if e[0] != "DisputeResolved"]
        assert [e[0] for e in events] == list(expected_names), f"job {job_id}: events {events}"
        for name, args in events:
            assert args["jobId"] == job_id
            if name in ("JobSettled", "JobRefunded"):
                assert job_id not in self.final_event, (
                    f"job {job_id} paid out twice: {self.final_event[job_id]} then {name}"
                )
                self.final_event[job_id] = name
            new = J.apply_event(self.job.get(job_id), name, args)
            self.job[job_id] = new
            self.history.setdefault(job_id, []).append(new)
        assert self.raw.commitment(job_id) == self.job[job_id].commitment(), f"job {job_id}: commitment drifted"
        return events

    def _job_call(self, expect_ok, caller, fn, job_id, *args, what):
        # (provider records are compared with the model after every step, by ``bonds_match_the_jobs``)
        before = self.raw.commitment(job_id)
        done, result = self.call(expect_ok, caller, fn, job_id, *args, what=what)
        if not done:
            assert self.raw.commitment(job_id) == before, f"{what}: reverted but the job's commitment changed"
        return done, result

    def _settle(self, job: J.Job, events) -> None:
        split = split_payment(job.charge, job.revenue_share_bps, job.protocol_fee_bps)
        settled = dict(events[-1][1])
        assert (settled["charge"], settled["providerAmount"], settled["modelOwnerAmount"], settled["protocolFee"],
                settled["refund"]) == (job.charge, split.provider, split.model_owner, split.protocol_fee,
                                       job.max_payment - job.charge), settled  # fmt: skip
        self.pay(self.market_addr, job.provider, split.provider)
        self.pay(self.market_addr, job.model_owner, split.model_owner)
        self.pay(self.market_addr, self.treasury[self.market_addr], split.protocol_fee)
        self.pay(self.market_addr, job.requester, job.max_payment - job.charge)
        p = self.prov[job.provider]
        p["bonded"] -= job.bond
        p["jobsCompleted"] += 1

    def _refund(self, job: J.Job, events, reason: int) -> None:
        refunded = events[-1][1]
        slashed = job.bond if job.provider != ZERO_ADDRESS else 0
        assert (refunded["refund"], refunded["slashed"], refunded["reason"]) == (job.max_payment, slashed, reason)
        self.pay(self.market_addr, job.requester, job.max_payment)
        if job.provider != ZERO_ADDRESS:
            p = self.prov[job.provider]
            p["bonded"] -= job.bond
            p["stake"] -= job.bond
            p["totalSlashed"] += job.bond
            p["disputesLost" if reason == 4 else "jobsFailed"] += 1
            self.failed_bonds[job.provider] += job.bond
            self.pay(self.registry_addr, job.requester, job.bond)

    def _can_bond(self, provider: str, job: J.Job) -> bool:
        p = self.prov.get(provider)
        if p is None or not p["registered"]:
            return False
        return (self.price.get((provider, job.model_id), 0) > 0 and p["stake"] >= self.min_stake
                and p["stake"] - p["bonded"] >= job.bond)  # fmt: skip

    # -- job actions (each predicts the contract, then checks it) ----------

    def _create(self, who, max_payment, duration, priority, priority_for, model, short_cid, stray_until):
        t = now()
        requester = self.a(who)
        deadline = max(0, t + duration)
        priority_addr = self.a(priority) if priority else ZERO_ADDRESS
        if priority:
            priority_until = max(0, t + priority_for)
            priority_ok = t < priority_until <= deadline
        else:
            priority_until = t + 5 if stray_until else 0
            priority_ok = priority_until == 0
        cid = INPUT_CID[:9] if short_cid else INPUT_CID
        ok = (max_payment > 0 and not short_cid and t < deadline <= t + MAX_JOB_DURATION and priority_ok
              and self.active[model] and max_payment <= UINT256_MAX // MAX_BOND_BPS
              and self.bal[requester] >= max_payment)  # fmt: skip
        done, job_id = self.call(
            ok, requester, self.s.market.createJob, model, cid, max_payment, deadline, priority_addr, priority_until,
            what=f"createJob(model={model}, max={max_payment}, +{duration}s, priority={priority}@{priority_until})",
        )
        if not done:
            return None
        assert job_id == len(self.job) + 1
        self._apply(job_id, ("JobCreated",))  # reads the logs of the last call: before any other call
        assert self.s.market.jobCount() == job_id
        job = self.job[job_id]
        expected = J.Job(
            requester=requester, model_id=model, input_hash=keccak(text=INPUT_CID), max_payment=max_payment,
            deadline=deadline, priority_provider=priority_addr, priority_until=priority_until,
            model_owner=self.model_owner[model], revenue_share_bps=self.share(model),
            protocol_fee_bps=self.fee_bps[self.market_addr], challenge_window=self.challenge_window,
            bond=max_payment * self.bond_bps // 10_000, state=JobState.OPEN, provider=ZERO_ADDRESS, charge=0,
            output_hash=b"\x00" * 32, window_ends=0,
        )  # fmt: skip
        assert job == expected, f"created {job}, expected {expected}"
        self.pay(requester, self.market_addr, max_payment)
        return job_id

    def _claim(self, job_id: int, caller: str) -> None:
        job, t = self.job[job_id], now()
        ok = job.state is JobState.OPEN and t < job.deadline
        ok = ok and (t >= job.priority_until or caller == job.priority_provider) and self._can_bond(caller, job)
        done, _ = self._job_call(ok, caller, self.s.market.claimJob, job_id, job.as_tuple(), what=f"claimJob({job_id})")
        if done:
            self._apply(job_id, ("JobClaimed",))
            assert self.job[job_id] == replace(job, state=JobState.CLAIMED, provider=caller)
            self.prov[caller]["bonded"] += job.bond

    def _submit(self, job_id: int, caller: str, charge: int, zero_hash: bool = False, short_cid: bool = False) -> None:
        job, t = self.job[job_id], now()
        output_hash = b"\x00" * 32 if zero_hash else keccak(text=f"output-{job_id}")
        cid = OUTPUT_CID[:9] if short_cid else OUTPUT_CID
        ok = (job.state is JobState.CLAIMED and caller == job.provider and t < job.deadline and not short_cid
              and not zero_hash and charge <= job.max_payment)  # fmt: skip
        done, _ = self._job_call(ok, caller, self.s.market.submitResult, job_id, job.as_tuple(), cid, output_hash,
                                 1234, charge, what=f"submitResult({job_id}, charge={charge})")  # fmt: skip
        if done:
            self._apply(job_id, ("JobSubmitted",))
            expected = replace(job, state=JobState.SUBMITTED, charge=charge, output_hash=output_hash,
                               window_ends=t + job.challenge_window)  # fmt: skip
            assert self.job[job_id] == expected

    def _dispute(self, job_id: int, caller: str) -> None:
        job, t = self.job[job_id], now()
        ok = job.state is JobState.SUBMITTED and caller == job.requester and t < job.window_ends
        done, _ = self._job_call(ok, caller, self.s.market.disputeJob, job_id, job.as_tuple(), INPUT_CID,
                                 what=f"disputeJob({job_id})")  # fmt: skip
        if done:
            self._apply(job_id, ("JobDisputed",))
            expected = replace(job, state=JobState.DISPUTED, window_ends=t + self.arbitration_window)
            assert self.job[job_id] == expected

    def _resolve(self, job_id: int, caller: str, provider_wins: bool) -> None:
        job = self.job[job_id]
        ok = caller == self.arbiter and job.state is JobState.DISPUTED
        done, _ = self._job_call(ok, caller, self.s.market.resolveDispute, job_id, job.as_tuple(), provider_wins,
                                 what=f"resolveDispute({job_id}, providerWins={provider_wins})")  # fmt: skip
        if done:
            events = self._apply(job_id, ("JobSettled",) if provider_wins else ("JobRefunded",))
            resolved = [args for name, args in self._job_events() if name == "DisputeResolved"]
            assert len(resolved) == 1 and resolved[0]["providerWins"] == provider_wins
            if provider_wins:
                self._settle(job, events)
            else:
                self._refund(job, events, 4)

    def _finalize(self, job_id: int, caller: str) -> None:
        job = self.job[job_id]
        ok = job.state in (JobState.SUBMITTED, JobState.DISPUTED) and now() >= job.window_ends
        done, _ = self._job_call(ok, caller, self.s.market.finalize, job_id, job.as_tuple(), what=f"finalize({job_id})")
        if done:
            self._settle(job, self._apply(job_id, ("JobSettled",)))

    def _cancel(self, job_id: int, caller: str) -> None:
        job = self.job[job_id]
        ok = job.state is JobState.OPEN and caller == job.requester
        done, _ = self._job_call(ok, caller, self.s.market.cancelJob, job_id, job.as_tuple(),
                                 what=f"cancelJob({job_id})")  # fmt: skip
        if done:
            self._refund(job, self._apply(job_id, ("JobRefunded",)), 1)

    def _refund_expired(self, job_id: int, caller: str) -> None:
        job = self.job[job_id]
        ok = job.state in (JobState.OPEN, JobState.CLAIMED) and now() >= job.deadline
        done, _ = self._job_call(ok, caller, self.s.market.refundExpired, job_id, job.as_tuple(),
                                 what=f"refundExpired({job_id})")  # fmt: skip
        if done:
            self._refund(job, self._apply(job_id, ("JobRefunded",)), 2 if job.state is JobState.OPEN else 3)

    def _charge(self, job: J.Job, kind: str, x: int) -> int:
        return {"zero": 0, "max": job.max_payment, "over": job.max_payment + 1 + x % 3,
                "some": x % (job.max_payment + 1)}[kind]  # fmt: skip

    # -- rules: jobs -------------------------------------------------------

    def _create_valid(self, who, max_payment, duration, priority, priority_frac, model):
        priority_for = max(1, duration * priority_frac // 1_000)
        model_id = {"m1": self.w.m1, "m2": self.w.m2}[model]
        job_id = self._create(who, max_payment, duration, priority, priority_for, model_id, False, False)
        return multiple() if job_id is None else job_id

    @initialize(target=jobs, who=st.sampled_from(["requester", "requester2"]), max_payment=VALID_MAX_PAYMENT,
                duration=VALID_DURATION, priority=st.sampled_from([None, None, "provider", "provider2"]),
                priority_frac=st.integers(1, 1_000), model=st.sampled_from(["m1", "m1", "m2"]))  # fmt: skip
    def first_job(self, who, max_payment, duration, priority, priority_frac, model):
        return self._create_valid(who, max_payment, duration, priority, priority_frac, model)

    @rule(target=jobs, who=st.sampled_from(["requester", "requester2"]), max_payment=VALID_MAX_PAYMENT,
          duration=VALID_DURATION, priority=st.sampled_from([None, None, None, "provider", "provider2", "provider3"]),
          priority_frac=st.integers(1, 1_000), model=st.sampled_from(["m1", "m1", "m2"]))  # fmt: skip
    def create_job(self, who, max_payment, duration, priority, priority_frac, model):
        """A well-formed job (it can still fail: a deprecated model, an empty wallet)."""
        return self._create_valid(who, max_payment, duration, priority, priority_frac, model)

    @rule(
        target=jobs,
        who=st.sampled_from(["requester", "requester", "requester2", "outsider"]),
        max_payment=MAX_PAYMENT,
        duration=DURATION,
        priority=st.sampled_from([None, None, "provider", "provider2", "provider3", "outsider"]),
        priority_for=PRIORITY_FOR,
        model=st.sampled_from(["m1", "m1", "m2", "unknown"]),
        short_cid=st.booleans(),
        stray_until=st.booleans(),
    )
    def create_job_fuzz(self, who, max_payment, duration, priority, priority_for, model, short_cid, stray_until):
        """Any parameters, edge values included: invalid ones must revert."""
        model_id = {"m1": self.w.m1, "m2": self.w.m2, "unknown": UNKNOWN_MODEL}[model]
        # mostly well formed: a short CID or a stray priority window only now and then
        short_cid = short_cid and max_payment % 7 == 0
        stray_until = stray_until and duration % 5 == 0
        job_id = self._create(who, max_payment, duration, priority, priority_for, model_id, short_cid, stray_until)
        return multiple() if job_id is None else job_id

    @action(who=st.sampled_from(["provider", "provider", "provider2", "provider3", "requester"]))
    def claim(self, job_id, who):
        self._claim(job_id, self.a(who))

    @action(who=st.sampled_from(["job", "job", "job", "provider", "provider2", "requester"]),
            kind=st.sampled_from(["zero", "max", "over", "some", "some"]), x=st.integers(0, UINT256_MAX),
            zero_hash=st.integers(0, 9), short_cid=st.integers(0, 9))  # fmt: skip
    def submit(self, job_id, who, kind, x, zero_hash, short_cid):
        job = self.job[job_id]
        caller = job.provider if who == "job" else self.a(who)
        self._submit(job_id, caller, self._charge(job, kind, x), zero_hash == 0, short_cid == 0)

    @action(who=st.sampled_from(["job", "job", "job", "provider", "requester2", "arbiter"]))
    def dispute(self, job_id, who):
        self._dispute(job_id, self.job[job_id].requester if who == "job" else self.a(who))

    @action(who=st.sampled_from(["current", "current", "current", "arbiter", "arbiter2", "deployer", "requester",
                                 "provider"]), provider_wins=st.booleans())  # fmt: skip
    def resolve(self, job_id, who, provider_wins):
        self._resolve(job_id, self.arbiter if who == "current" else self.a(who), provider_wins)

    @action(who=st.sampled_from(CALLERS))
    def finalize(self, job_id, who):
        self._finalize(job_id, self.a(who))

    @action(who=st.sampled_from(["job", "job", "job", "requester2", "provider", "deployer"]))
    def cancel(self, job_id, who):
        self._cancel(job_id, self.job[job_id].requester if who == "job" else self.a(who))

    @action(who=st.sampled_from(CALLERS))
    def refund_expired(self, job_id, who):
        self._refund_expired(job_id, self.a(who))

    @rule(job_id=jobs, choices=st.lists(st.integers(0, 7), min_size=1, max_size=4),
          kind=st.sampled_from(["zero", "max", "some", "some"]), x=st.integers(0, UINT256_MAX),
          provider_index=st.integers(0, 2))  # fmt: skip
    def progress(self, job_id, choices, kind, x, provider_index):
        """Takes the job up to four steps along a likely path, warping time where a step needs it."""
        for choice in choices:
            self._progress_once(job_id, choice, kind, x, provider_index)
            if self.job[job_id].state.is_final:
                break

    # NOTE: hypothesis picks every rule equally often; these copies weight the steps that move
    # jobs along (progress) and the single actions with random callers and arguments (act).

    @rule(job_id=jobs, choices=st.lists(st.integers(0, 7), min_size=1, max_size=4),
          kind=st.sampled_from(["zero", "max", "some", "some"]), x=st.integers(0, UINT256_MAX),
          provider_index=st.integers(0, 2))  # fmt: skip
    def progress_2(self, job_id, choices, kind, x, provider_index):
        self.progress(job_id, choices, kind, x, provider_index)

    @rule(job_id=jobs, choices=st.lists(st.integers(0, 7), min_size=1, max_size=4),
          kind=st.sampled_from(["zero", "max", "some", "some"]), x=st.integers(0, UINT256_MAX),
          provider_index=st.integers(0, 2))  # fmt: skip
    def progress_3(self, job_id, choices, kind, x, provider_index):
        self.progress(job_id, choices, kind, x, provider_index)

    @rule(job_id=jobs, data=st.data(), name=st.sampled_from(JOB_ACTIONS))
    def act(self, job_id, data, name):
        """One job call with a random caller and arguments (mostly invalid ones: they must revert)."""
        run_action(self, data, name, job_id=job_id)

    @rule(job_id=jobs, data=st.data(), name=st.sampled_from(JOB_ACTIONS))
    def act_2(self, job_id, data, name):
        run_action(self, data, name, job_id=job_id)

    def _progress_once(self, job_id, choice, kind, x, provider_index):
        # NOTE: hypothesis favours 0 and the largest value: both take the job forward.
        job = self.job[job_id]
        delta = (x >> 8) % 3 - 1  # -1, 0 or +1 second around the time limit a step warps to
        if job.state is JobState.OPEN:
            if choice == 5:
                self._cancel(job_id, job.requester)
            elif choice == 6:
                self._warp_to(job.deadline + delta)
                self._refund_expired(job_id, self.a("outsider"))
            elif choice == 7 and job.priority_until > now():
                # the priority window's last second, its end, or just after: someone else claims
                self._warp_to(job.priority_until + delta)
                self._claim(job_id, self.a("provider2" if job.priority_provider == self.a("provider") else "provider"))
            else:
                if now() < job.priority_until and job.priority_provider in self.prov and choice % 2 == 0:
                    caller = job.priority_provider
                else:  # provider3 (not registered unless a step registered it) now and then
                    caller = self.a(PROVIDERS[provider_index if provider_index < 2 or x % 4 == 0 else 0])
                self._claim(job_id, caller)
        elif job.state is JobState.CLAIMED:
            if choice in (5, 6):
                self._warp_to(job.deadline + delta)
            if choice == 5:
                self._refund_expired(job_id, self.a("outsider"))
            else:
                self._submit(job_id, job.provider, self._charge(job, kind, x))
        elif job.state is JobState.SUBMITTED:
            if choice in (3, 4):
                self._warp_to(job.window_ends + delta)
            elif choice >= 5:
                self._warp_to(job.window_ends)
            if choice <= 3:
                self._dispute(job_id, job.requester)
            else:
                self._finalize(job_id, self.a("outsider"))
        elif job.state is JobState.DISPUTED:
            if choice in (5, 6):
                self._warp_to(job.window_ends + (delta if choice == 5 else 0))
                self._finalize(job_id, self.a("outsider"))
            else:
                self._resolve(job_id, self.arbiter, choice % 2 == 0)
        else:
            # a settled or refunded job: every way of paying it out again must revert
            [self._finalize, self._refund_expired, self._cancel, self._claim][choice % 4](job_id, job.requester)

    @rule(job_id=jobs, version=st.integers(0, 10), action=st.integers(0, 7), field=st.integers(0, 16),
          delta=st.sampled_from([1, -1, 2**255]))  # fmt: skip
    def replay(self, job_id, version, action, field, delta):
        """A stale struct (any earlier version), a tampered copy of the current one or an unknown job id
        always reverts."""
        if version == 10:
            self.unknown_job(action % 4, [0, 1, 2, 1000, UINT256_MAX][field % 5])
            return
        versions = self.history[job_id]
        if len(versions) > 1 and version % 2 == 0:
            stale = versions[version % (len(versions) - 1)]
        else:
            values = list(self.job[job_id].as_tuple())
            value = values[field]
            if isinstance(value, int):
                values[field] = (value + delta) % 2**256
            elif isinstance(value, bytes):
                values[field] = bytes([value[0] ^ 1]) + value[1:]
            else:  # an address
                values[field] = self.a("outsider") if value != self.a("outsider") else self.a("requester")
            if field == 12:
                values[field] = 1 + (value + 1) % 6  # keep the state a valid enum value
            stale = tuple(values)
        if not isinstance(stale, tuple):
            stale = stale.as_tuple()
        assert stale != self.job[job_id].as_tuple()
        job = self.job[job_id]
        m = self.s.market
        calls = [
            ("claimJob", self.a("provider"), m.claimJob, (stale,)),
            ("submitResult", stale[13], m.submitResult, (stale, OUTPUT_CID, b"\x11" * 32, 1, 0)),
            ("disputeJob", stale[0], m.disputeJob, (stale, INPUT_CID)),
            ("resolveDispute", self.arbiter, m.resolveDispute, (stale, True)),
            ("resolveDispute", self.arbiter, m.resolveDispute, (stale, False)),
            ("finalize", self.a("outsider"), m.finalize, (stale,)),
            ("cancelJob", stale[0], m.cancelJob, (stale,)),
            ("refundExpired", self.a("outsider"), m.refundExpired, (stale,)),
        ]
        name, caller, fn, args = calls[action]
        self._job_call(False, caller, fn, job_id, *args,
                       what=f"replay {name}({job_id}) with a stale or tampered struct")  # fmt: skip
        assert self.job[job_id] == job

    def unknown_job(self, action, offset):
        job_id = 0 if offset == 0 else (len(self.job) + offset) % 2**256
        if job_id in self.job:
            return
        fake = replace(next(iter(self.job.values())), state=JobState.OPEN) if self.job else None
        fake = fake.as_tuple() if fake else J.Job(
            self.a("requester"), self.w.m1, keccak(text=INPUT_CID), 1, now() + 10, ZERO_ADDRESS, 0,
            self.a("publisher"), 0, 0, 60, 0, JobState.OPEN, ZERO_ADDRESS, 0, b"\x00" * 32, 0,
        ).as_tuple()  # fmt: skip
        name = ["claimJob", "cancelJob", "refundExpired", "finalize"][action]
        self.call(False, self.a("requester") if action == 1 else self.a("provider"), getattr(self.s.market, name),
                  job_id, fake, what=f"{name}(unknown job {job_id})")  # fmt: skip

    # -- rules: time -------------------------------------------------------

    def _warp_to(self, target: int) -> None:
        if target > now():
            boa.env.time_travel(seconds=target - now())

    @rule(seconds=WARP)
    def warp(self, seconds):
        boa.env.time_travel(seconds=seconds)

    @rule(job_id=jobs, which=st.sampled_from(["deadline", "priority_until", "window_ends", "min_stake"]),
          delta=st.sampled_from([-1, 0, 1]), act=st.integers(0, 3), provider_index=st.integers(0, 1))  # fmt: skip
    def at_job_boundary(self, job_id, which, delta, act, provider_index):
        """Warps to one second before, at or after one of the job's time limits (or sets the minimum
        stake one unit below, at or above a provider's stake) and tries what that limit guards:
        off-by-one errors in the contract's comparisons show up here."""
        if which == "min_stake":
            provider = PROVIDERS[provider_index]
            self.set_min_stake("deployer", max(0, self.prov[self.a(provider)]["stake"] + delta), provider)
            self._claim(job_id, self.a(provider))
            return
        self._warp_to(getattr(self.job[job_id], which) + delta)
        job = self.job[job_id]
        others = [self.a(p) for p in PROVIDERS[:2] if self.a(p) != job.priority_provider]
        provider = job.provider if job.provider != ZERO_ADDRESS else self.a(PROVIDERS[provider_index])
        if which == "deadline":
            [lambda: self._claim(job_id, provider), lambda: self._submit(job_id, provider, job.max_payment // 2),
             lambda: self._refund_expired(job_id, self.a("outsider")),
             lambda: self._claim(job_id, job.priority_provider)][act]()
        elif which == "priority_until":
            self._claim(job_id, others[act % len(others)] if act < 3 else job.priority_provider)
        else:
            [lambda: self._dispute(job_id, job.requester), lambda: self._finalize(job_id, self.a("outsider")),
             lambda: self._resolve(job_id, self.arbiter, True), lambda: self._finalize(job_id, job.requester)][act]()

    # -- rules: stake and governance (one rule each; it draws the action) ---

    @rule(data=st.data(), name=st.sampled_from(["add_stake", "request_unbond", "request_unbond", "withdraw_unbonded",
                                                "register", "set_model_price", "set_min_stake"]))  # fmt: skip
    def stake(self, data, name):
        run_action(self, data, name)

    @rule(data=st.data(), name=st.sampled_from(["add_stake", "request_unbond", "request_unbond", "withdraw_unbonded",
                                                "register", "set_model_price", "set_min_stake"]))  # fmt: skip
    def stake_2(self, data, name):
        run_action(self, data, name)

    @rule(data=st.data(), name=st.sampled_from(["set_protocol_fee", "set_treasury", "set_market_params",
                                                "set_market_params", "set_min_stake", "set_revenue_share",
                                                "deprecate_model2"]))  # fmt: skip
    def governance(self, data, name):
        run_action(self, data, name)
        m = self.s.market
        assert (m.protocolFeeBps(), m.treasury(), m.arbiter(), m.challengeWindow(), m.arbitrationWindow(),
                m.bondBps()) == (self.fee_bps[self.market_addr], self.treasury[self.market_addr], self.arbiter,
                                 self.challenge_window, self.arbitration_window, self.bond_bps)  # fmt: skip
        assert self.s.providers.minStake() == self.min_stake


    @action(who=st.sampled_from(PROVIDERS + ("outsider",)),
            amount=st.one_of(st.sampled_from([0, 1, MIN_STAKE, EXTRA_MINT + 1]),
                             st.integers(1, 1_000 * ONE)))  # fmt: skip
    def add_stake(self, who, amount):
        p = self.prov.get(self.a(who))
        ok = p is not None and p["registered"] and amount > 0 and self.bal[self.a(who)] >= amount
        ok = ok and p["stake"] + amount <= MAX_STAKE
        done, _ = self.call(ok, self.a(who), self.s.providers.addStake, amount, what=f"addStake({who}, {amount})")
        if done:
            p["stake"] += amount
            self.pay(self.a(who), self.registry_addr, amount)

    @action(who=st.sampled_from(["busy", "busy", "provider", "provider2", "provider3", "outsider"]),
            kind=st.sampled_from(["zero", "free", "free+1", "free+1", "some", "some", "stake", "to_min", "below_min"]),
            x=st.integers(0, 2**64), again_after=st.one_of(st.none(), WARP))  # fmt: skip
    def request_unbond(self, who, kind, x, again_after=None):
        """Unbonds some stake ("busy": the provider with the most stake bonded in jobs); now and then
        again after a while, which restarts the delay of the whole queue."""
        if who == "busy":
            who = max(PROVIDERS, key=lambda n: (self.prov[self.a(n)]["bonded"], n == "provider"))
        self._request_unbond(who, kind, x)
        if again_after is not None:
            boa.env.time_travel(seconds=again_after)
            self._request_unbond(who, "some", x // 3)

    def _request_unbond(self, who, kind, x):
        addr = self.a(who)
        p = self.prov.get(addr) or dict.fromkeys(PROVIDER_FIELDS, 0)
        free = p["stake"] - p["bonded"]
        amount = {"zero": 0, "free": free, "free+1": free + 1, "some": x % (free + 1), "stake": p["stake"],
                  "to_min": max(0, p["stake"] - self.min_stake),
                  "below_min": max(0, p["stake"] - self.min_stake + 1)}[kind]  # fmt: skip
        ok = bool(p["registered"]) and 0 < amount <= free
        done, _ = self.call(ok, addr, self.s.providers.requestUnbond, amount,
                            what=f"requestUnbond({who}, {kind}={amount})")  # fmt: skip
        if done:
            p["stake"] -= amount
            p["unbonding"] += amount
            p["unbondingReadyAt"] = now() + UNBONDING_DELAY

    @action(who=st.sampled_from(PROVIDERS + ("outsider",)))
    def withdraw_unbonded(self, who):
        addr = self.a(who)
        p = self.prov.get(addr) or dict.fromkeys(PROVIDER_FIELDS, 0)
        ok = p["unbonding"] > 0 and now() >= p["unbondingReadyAt"]
        done, _ = self.call(ok, addr, self.s.providers.withdrawUnbonded, what=f"withdrawUnbonded({who})")
        if done:
            self.pay(self.registry_addr, addr, p["unbonding"])
            p["unbonding"] = 0

    @action(who=st.sampled_from(PROVIDERS),
            amount=st.sampled_from([0, MIN_STAKE - 1, MIN_STAKE, 500 * ONE, EXTRA_MINT + 1]),
            empty_endpoint=st.integers(0, 9))  # fmt: skip
    def register(self, who, amount, empty_endpoint):
        addr = self.a(who)
        p = self.prov[addr]
        endpoint = "" if empty_endpoint == 0 else f"https://{who}.example"
        ok = not p["registered"] and endpoint and self.min_stake <= amount <= MAX_STAKE and self.bal[addr] >= amount
        done, _ = self.call(bool(ok), addr, self.s.providers.register, endpoint, f"12D3Koo{who}", amount,
                            what=f"register({who}, {amount})")  # fmt: skip
        if done:
            p["registered"] = 1
            p["stake"] = amount
            self.pay(addr, self.registry_addr, amount)

    @action(who=st.sampled_from(PROVIDERS), model=st.sampled_from(["m1", "m2", "unknown"]), serve=st.booleans())
    def set_model_price(self, who, model, serve):
        model_id = {"m1": self.w.m1, "m2": self.w.m2, "unknown": UNKNOWN_MODEL}[model]
        addr = self.a(who)
        price = 5 * ONE // 1000 if serve else 0
        ok = bool(self.prov[addr]["registered"]) and (price == 0 or self.active[model_id])
        done, _ = self.call(ok, addr, self.s.providers.setModelPrice, model_id, price,
                            what=f"setModelPrice({who}, {model}, {price})")  # fmt: skip
        if done:
            self.price[(addr, model_id)] = price

    # -- rules: governance ---------------------------------------------------

    @action(who=st.sampled_from(["deployer", "deployer", "outsider"]),
            fee=st.one_of(st.sampled_from([0, 1, 250, 999, 1_000, 1_001, 10_000]), st.integers(0, 1_000)))  # fmt: skip
    def set_protocol_fee(self, who, fee):
        self._set_protocol_fee(self.s.market, self.a(who), fee)

    @action(who=st.sampled_from(["deployer", "deployer", "outsider"]),
            treasury=st.sampled_from(["treasury", "treasury2", None]))  # fmt: skip
    def set_treasury(self, who, treasury):
        self._set_treasury(self.s.market, self.a(who), self.a(treasury) if treasury else ZERO_ADDRESS)

    @action(who=st.sampled_from(["deployer", "deployer", "outsider"]),
            arbiter=st.sampled_from(["arbiter", "arbiter2", None]),
            challenge=st.sampled_from([59, 60, CHALLENGE_WINDOW, 86_400, MAX_WINDOW, MAX_WINDOW + 1]),
            arbitration=st.sampled_from([59, 60, ARBITRATION_WINDOW, MAX_WINDOW, MAX_WINDOW + 1]),
            bond_bps=st.one_of(st.sampled_from([0, 1, BOND_BPS, 10_000, MAX_BOND_BPS, MAX_BOND_BPS + 1]),
                               st.integers(0, MAX_BOND_BPS)))  # fmt: skip
    def set_market_params(self, who, arbiter, challenge, arbitration, bond_bps):
        arbiter_addr = self.a(arbiter) if arbiter else ZERO_ADDRESS
        ok = (who == "deployer" and arbiter_addr != ZERO_ADDRESS and 60 <= challenge <= MAX_WINDOW
              and 60 <= arbitration <= MAX_WINDOW and bond_bps <= MAX_BOND_BPS)  # fmt: skip
        done, _ = self.call(ok, self.a(who), self.s.market.setMarketParams, arbiter_addr, challenge, arbitration,
                            bond_bps,
                            what=f"setMarketParams({arbiter}, {challenge}, {arbitration}, {bond_bps})")  # fmt: skip
        if done:
            self.arbiter, self.challenge_window, self.arbitration_window, self.bond_bps = (
                arbiter_addr, challenge, arbitration, bond_bps)

    @action(who=st.sampled_from(["deployer", "deployer", "outsider"]),
            value=st.sampled_from([0, MIN_STAKE, 1_000 * ONE, 2_000 * ONE, "stake", "stake+1", "stake+2"]),
            of=st.sampled_from(PROVIDERS[:2]))  # fmt: skip
    def set_min_stake(self, who, value, of):
        """A fixed minimum, or one pinned to a provider's stake (exactly at, one above, two above it)."""
        stake = self.prov[self.a(of)]["stake"]
        min_stake = {"stake": stake, "stake+1": stake + 1, "stake+2": stake + 2}.get(value, value)
        done, _ = self.call(who == "deployer", self.a(who), self.s.providers.setStakeParams, min_stake,
                            UNBONDING_DELAY, what=f"setStakeParams({min_stake})")  # fmt: skip
        if done:
            self.min_stake = min_stake

    @action(who=st.sampled_from(["publisher", "publisher", "outsider"]),
            model=st.sampled_from(["m1", "m2", "unknown"]), share=st.sampled_from(SHARES))  # fmt: skip
    def set_revenue_share(self, who, model, share):
        model_id = {"m1": self.w.m1, "m2": self.w.m2, "unknown": UNKNOWN_MODEL}[model]
        self._set_revenue_share(self.a(who), model_id, share)

    @action(who=st.sampled_from(["publisher", "outsider"]))
    def deprecate_model2(self, who):
        ok = who == "publisher" and self.active[self.w.m2]
        done, _ = self.call(ok, self.a(who), self.s.models.deprecate, self.w.m2, what=f"deprecate(m2) by {who}")
        if done:
            self.active[self.w.m2] = False

    # -- invariants ----------------------------------------------------------

    def _live_jobs(self):
        return [j for j in self.job.values() if not j.state.is_final]

    def _chain_providers(self) -> dict:
        if self.__dict__.get("_providers_at") != self.version:
            self._providers = {a: dict(zip(PROVIDER_FIELDS, self.raw.provider(a))) for a in self.prov}
            self._providers_at = self.version
        return self._providers

    @invariant()
    def market_holds_exactly_the_open_escrow(self):
        if self.unchanged_since_last("market"):
            return
        expected = sum(j.max_payment for j in self._live_jobs())
        actual = self.s.token.balanceOf(self.s.market.address)
        assert actual == expected, f"market holds {actual}, jobs not settled/refunded lock {expected}"

    @invariant()
    def registry_holds_exactly_stake_plus_unbonding(self):
        if self.unchanged_since_last("registry"):
            return
        expected = sum(r["stake"] + r["unbonding"] for r in self._chain_providers().values())
        actual = self.s.token.balanceOf(self.s.providers.address)
        assert actual == expected, f"registry holds {actual}, providers' stake + unbonding is {expected}"

    @invariant()
    def bonds_match_the_jobs(self):
        if self.unchanged_since_last("bonds"):
            return
        for addr, model in self.prov.items():
            chain = self._chain_providers()[addr]
            assert chain == model, f"provider {addr}: chain {chain} != model {model}"
            assert 0 <= chain["bonded"] <= chain["stake"], f"provider {addr}: bonded above stake: {chain}"
            bonds = sum(j.bond for j in self._live_jobs() if j.provider == addr)
            assert chain["bonded"] == bonds, f"provider {addr}: bonded {chain['bonded']} != bonds of its jobs {bonds}"
            assert chain["totalSlashed"] <= self.failed_bonds[addr], (
                f"provider {addr}: slashed {chain['totalSlashed']} > bonds of its failed jobs {self.failed_bonds[addr]}"
            )

    @invariant()
    def each_job_pays_out_once(self):
        for job_id, job in self.job.items():
            assert job.state.is_final == (job_id in self.final_event)
            if job_id in self.final_event:
                final = JobState.SETTLED if self.final_event[job_id] == "JobSettled" else JobState.REFUNDED
                assert job.state is final

    @invariant()
    def conservation(self):
        self.check_conservation()

    @invariant()
    def getters_agree(self):
        """Every few steps: the public getters agree with the model (the other checks read raw storage)."""
        if not self.every_few_steps():
            return
        if self.job:
            last = max(self.job)
            assert self.s.market.jobCommitment(last) == self.job[last].commitment()
            assert self.s.market.jobCount() == last
        for addr, model in self.prov.items():
            assert tuple(int(x) for x in self.s.providers.providers(addr)) == tuple(model.values())
        assert self.s.providers.freeStake(self.a("provider")) == (
            self.prov[self.a("provider")]["stake"] - self.prov[self.a("provider")]["bonded"]
        )


JobMarketMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=JOB_STEPS, deadline=None)
TestJobMarketInvariants = JobMarketMachine.TestCase


# ---------------------------------------------------------------------------
# Machine 2: InferenceEscrow vouchers.
# ---------------------------------------------------------------------------

PAYERS = ("payer", "payer2", "outsider")
PAYEES = ("provider", "provider2", "provider3")
# channels that can hold money (the outsider has no tokens, provider3 is not registered)
LIVE_PAIRS = (("payer", "provider"), ("payer", "provider2"), ("payer2", "provider"), ("payer2", "provider2"))
PAIR = st.sampled_from(LIVE_PAIRS + (("payer", "provider"), ("outsider", "provider"), ("payer", "provider3")))
GOOD_AMOUNTS = ("below", "equal", "above", "above", "above", "deposit", "deposit+")
GOOD_EXPIRY = st.one_of(st.sampled_from([0, 1, 3_600, 86_400, 8 * 86_400]), st.integers(0, 10 * 86_400))
DEPOSIT = st.one_of(st.sampled_from([1, 2, 99, ONE]), st.integers(1, 1_000 * ONE))


@dataclass(frozen=True)
class Signed:
    voucher: Voucher
    signature: bytes
    by_payer: bool  # signed with the payer's own key (a valid voucher while unexpired)

    def __repr__(self):
        v = self.voucher
        return (f"Signed({v.payer[:8]}->{v.provider[:8]} model={v.model_id} cum={v.cumulative_amount} "
                f"exp={v.expiry} by_payer={self.by_payer} siglen={len(self.signature)})")  # fmt: skip


class EscrowMachine(Base):
    vouchers = Bundle("vouchers")

    def _init_model(self):
        super()._init_model()
        self.escrow_addr = str(self.s.escrow.address)
        self.models = (self.w.m1, self.w.m2, UNKNOWN_MODEL)
        self.pairs = [(self.a(p), self.a(q)) for p in PAYERS for q in PAYEES]
        self.channel = {pair: [0, 0] for pair in self.pairs}
        self.redeemed = {(p, q, m): 0 for p, q in self.pairs for m in self.models}
        self.max_signed = dict.fromkeys(self.redeemed, 0)
        self.received = dict.fromkeys(self.redeemed, 0)
        self.registered = {self.a(q): q != "provider3" for q in PAYEES}
        self.timelock = WITHDRAW_TIMELOCK

    # -- model of _redeem ----------------------------------------------------

    def _valid(self, sv: Signed, t: int) -> bool:
        v = sv.voucher
        if t > v.expiry:
            return False
        if v.payer == ZERO_ADDRESS:
            # other signature lengths "recover" the zero address: a voucher from nobody is refused
            return False
        return sv.by_payer and len(sv.signature) in (64, 65)

    def _redeem_model(self, sv: Signed, out: dict) -> int:
        """Applies one voucher to the model; returns what it pays and adds the split to ``out``."""
        v = sv.voucher
        key = (v.payer, v.provider, v.model_id)
        already = self.redeemed.get(key, 0)
        if v.cumulative_amount <= already:
            return 0
        channel = self.channel.get((v.payer, v.provider), [0, 0])
        paid = min(v.cumulative_amount - already, channel[0])
        if paid == 0:
            return 0
        self.redeemed[key] = already + paid
        channel[0] -= paid
        split = split_payment(paid, self.share(v.model_id), self.fee_bps[self.escrow_addr])
        owner = self.model_owner[v.model_id]
        provider_amount, owner_amount = split.provider, split.model_owner
        if owner == ZERO_ADDRESS:
            provider_amount, owner_amount = provider_amount + owner_amount, 0
        out["owner"].append((owner, owner_amount))
        out["provider"] += provider_amount
        out["fee"] += split.protocol_fee
        out["events"].append((v.payer, v.provider, v.model_id, v.cumulative_amount, paid, provider_amount, owner,
                              owner_amount, split.protocol_fee, channel[0]))  # fmt: skip
        return paid

    def _book_redemption(self, provider: str, out: dict, before: tuple) -> None:
        """After a successful redeem or redeemBatch: the events match the model, the escrow paid out
        exactly what they say, and each channel's payout (provider + owner + treasury, from its own
        VoucherRedeemed event) is booked as what that channel's recipients received."""
        events = self._check_redeem_events(out["events"])
        after = dict(zip(self.addresses, self.raw.balances(self.addresses)))
        before = dict(zip(self.addresses, before))
        paid = sum(e[4] for e in events)
        assert before[self.escrow_addr] - after[self.escrow_addr] == paid, "escrow paid out more or less than redeemed"
        recipients = {provider, self.treasury[self.escrow_addr]} | {e[6] for e in events if e[6] != ZERO_ADDRESS}
        assert sum(after[r] - before[r] for r in recipients) == paid, "recipients got more or less than redeemed"
        for e in events:
            assert e[5] + e[7] + e[8] == e[4], f"VoucherRedeemed split does not add up to what was paid: {e}"
            self.received[(e[0], e[1], e[2])] += e[5] + e[7] + e[8]
        self._pay_out(provider, out)

    def _check_redeem_events(self, expected_events: list) -> list:
        actual = []
        for log in self.s.escrow.get_logs():
            if type(log).__name__ == "VoucherRedeemed":
                _, e = _decode(log)
                actual.append((e["payer"], e["provider"], e["modelId"], e["cumulativeAmount"], e["paid"],
                               e["providerAmount"], e["modelOwner"], e["modelOwnerAmount"], e["protocolFee"],
                               e["balance"]))  # fmt: skip
        assert actual == expected_events, f"VoucherRedeemed events {actual} != model {expected_events}"
        return actual

    # -- rules: channels -----------------------------------------------------

    def _deposit(self, payer, provider, amount):
        p, q = self.a(payer), self.a(provider)
        ok = amount > 0 and self.registered[q] and self.bal[p] >= amount
        ok = ok and self.channel[(p, q)][0] + amount <= MAX_CHANNEL_BALANCE
        done, _ = self.call(ok, p, self.s.escrow.deposit, q, amount, what=f"deposit({payer}->{provider}, {amount})")
        if done:
            self.channel[(p, q)] = [self.channel[(p, q)][0] + amount, 0]  # a deposit cancels a pending withdrawal
            self.pay(p, self.escrow_addr, amount)

    def _request_withdrawal(self, payer, provider):
        p, q = self.a(payer), self.a(provider)
        ok = self.channel[(p, q)][0] > 0
        done, _ = self.call(ok, p, self.s.escrow.requestWithdrawal, q, what=f"requestWithdrawal({payer}->{provider})")
        if done:
            self.channel[(p, q)][1] = now() + self.timelock

    def _withdraw(self, payer, provider):
        p, q = self.a(payer), self.a(provider)
        balance, unlock_at = self.channel[(p, q)]
        ok = unlock_at != 0 and now() >= unlock_at
        done, _ = self.call(ok, p, self.s.escrow.withdraw, q, what=f"withdraw({payer}->{provider})")
        if done:
            self.channel[(p, q)] = [0, 0]
            self.pay(self.escrow_addr, p, balance)

    @initialize(pairs=st.lists(st.sampled_from(LIVE_PAIRS), min_size=1, max_size=4, unique=True), amount=DEPOSIT)
    def first_deposits(self, pairs, amount):
        for pair in pairs:
            self._deposit(*pair, amount)

    @rule(pair=PAIR, amount=st.one_of(DEPOSIT, st.sampled_from([0, EXTRA_MINT, EXTRA_MINT + 1])))
    def deposit(self, pair, amount):
        self._deposit(*pair, amount)

    @rule(pair=PAIR)
    def request_withdrawal(self, pair):
        self._request_withdrawal(*pair)

    @rule(pair=PAIR)
    def withdraw(self, pair):
        self._withdraw(*pair)

    @rule(pair=st.sampled_from(LIVE_PAIRS), delta=st.sampled_from([-1, 0, 0, 1]), request=st.booleans(),
          amount=DEPOSIT)  # fmt: skip
    def withdraw_after_timelock(self, pair, delta, request, amount):
        """(Deposit into an empty channel, request a withdrawal,) warp to one second before, at or
        after the unlock time, withdraw."""
        if not self.channel[(self.a(pair[0]), self.a(pair[1]))][0]:
            self._deposit(*pair, amount)
        if request or not self.channel[(self.a(pair[0]), self.a(pair[1]))][1]:
            self._request_withdrawal(*pair)
        unlock_at = self.channel[(self.a(pair[0]), self.a(pair[1]))][1]
        if unlock_at and unlock_at + delta > now():
            boa.env.time_travel(seconds=unlock_at + delta - now())
        self._withdraw(*pair)

    # -- rules: vouchers -----------------------------------------------------

    @initialize(target=vouchers, pair=st.sampled_from(LIVE_PAIRS), kind=st.sampled_from(GOOD_AMOUNTS),
                x=st.integers(0, 2**64), expiry=GOOD_EXPIRY)  # fmt: skip
    def first_voucher(self, pair, kind, x, expiry):
        return self._sign(*pair, 0, kind, x, expiry, "payer")

    @rule(target=vouchers, pair=st.sampled_from(LIVE_PAIRS), model=st.sampled_from([0, 0, 0, 1]),
          kind=st.sampled_from(GOOD_AMOUNTS), x=st.integers(0, 2**64), expiry=GOOD_EXPIRY)  # fmt: skip
    def sign_good(self, pair, model, kind, x, expiry):
        """A voucher a well-behaved payer signs: its own key, a live channel, an expiry ahead."""
        return self._sign(*pair, model, kind, x, expiry, "payer")

    @rule(
        target=vouchers,
        payer=st.sampled_from(PAYERS[:2] + PAYERS[:1]),
        provider=st.sampled_from(PAYEES[:2] + PAYEES),
        model=st.sampled_from([0, 0, 1, 2]),
        kind=st.sampled_from(["below", "equal", "above", "above", "deposit", "deposit+", "random", "zero", "huge"]),
        x=st.integers(0, 2**64),
        expiry=st.one_of(st.sampled_from([-100, -1, 0, 1, 60, 3_600, 86_400, 8 * 86_400]), st.integers(-10, 10**6)),
        signer=st.sampled_from(["payer"] * 4 + ["other", "garbage", "compact", "high_s", "empty"]),
    )
    def sign(self, payer, provider, model, kind, x, expiry, signer):
        """Any voucher: lower or higher than before, above the deposit, expired, signed by the wrong key,
        malformed, in EIP-2098 compact form, with the malleable high-s twin, or from nobody."""
        return self._sign(payer, provider, model, kind, x, expiry, signer)

    def _sign(self, payer, provider, model, kind, x, expiry, signer):
        p, q, m = self.a(payer), self.a(provider), self.models[model]
        key = (p, q, m)
        top, already, balance = self.max_signed[key], self.redeemed[key], self.channel[(p, q)][0]
        amount = {
            "below": max(0, top - 1 - x % max(1, top)), "equal": top, "above": top + 1 + x % (10 * ONE),
            "deposit": already + balance, "deposit+": already + balance + 1 + x % 100, "random": x,
            "zero": 0, "huge": UINT256_MAX,
        }[kind]  # fmt: skip
        amount = min(amount, UINT256_MAX)
        if signer == "empty":
            p = ZERO_ADDRESS  # a voucher "from" the zero address with no signature at all
        voucher = Voucher(p, q, m, amount, max(0, now() + expiry))
        if signer == "empty":
            return Signed(voucher, b"", False)
        sig_key = self.w.a["payer2" if payer != "payer2" else "payer"].key if signer == "other" else self.w.a[payer].key
        signature = sign_voucher(voucher, sig_key, chain_id(), self.s.escrow.address)
        by_payer = signer != "other"
        if signer == "garbage":
            signature = bytes([signature[0] ^ 0xFF]) + signature[1:]
            by_payer = False
        elif signer == "compact":  # EIP-2098 (r, yParity|s): the same signature, 64 bytes
            r, s_, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
            signature = r + ((v - 27) << 255 | s_).to_bytes(32, "big")
        elif signer == "high_s":  # the malleable twin (r, n - s, v ^ 1): refused
            r, s_, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
            signature = r + (SECP256K1_N - s_).to_bytes(32, "big") + bytes([v ^ 1])
            by_payer = False
        if by_payer:
            assert voucher_digest(voucher, chain_id(), self.s.escrow.address) == self.s.escrow.voucherDigest(
                voucher.as_tuple()
            )
        return Signed(voucher, signature, by_payer)

    def _presented(self, sv: Signed) -> None:
        """Records the highest amount the payer signed for a channel and model, counting only the
        vouchers actually presented for redemption (a subset of all signed: a stricter bound)."""
        if sv.by_payer and len(sv.signature) in (64, 65):
            v = sv.voucher
            key = (v.payer, v.provider, v.model_id)
            self.max_signed[key] = max(self.max_signed[key], v.cumulative_amount)

    @rule(sv=vouchers, who=st.sampled_from(["provider", "provider2", "payer", "outsider"]), tamper=st.integers(0, 9))
    def redeem(self, sv, who, tamper):
        self._presented(sv)
        voucher = sv.voucher
        if tamper == 0:  # the signed amount raised by one: the signature no longer matches
            voucher = replace(voucher, cumulative_amount=(voucher.cumulative_amount + 1) % 2**256)
            sv = Signed(voucher, sv.signature, False)
        t = now()
        ok = self._valid(sv, t)
        saved = (copy.deepcopy(self.channel), dict(self.redeemed))
        before = self.raw.balances(self.addresses)
        out = {"owner": [], "provider": 0, "fee": 0, "events": []}
        expected_paid = self._redeem_model(sv, out) if ok else 0
        done, paid = self.call(ok, self.a(who), self.s.escrow.redeem, voucher.as_tuple(), sv.signature,
                               what=f"redeem({sv!r})")  # fmt: skip
        if not done:
            self.channel, self.redeemed = saved
            return
        assert paid == expected_paid, f"redeem paid {paid}, model says {expected_paid}"
        self._book_redemption(voucher.provider, out, before)

    @rule(provider=st.sampled_from(["first", "first", "provider", "provider2"]),
          picks=st.lists(vouchers, max_size=6),
          mismatch=st.integers(0, 9), who=st.sampled_from(["provider", "outsider"]))  # fmt: skip
    def redeem_batch(self, provider, picks, mismatch, who):
        """Redeems several vouchers at once ("first": for the provider of the first one)."""
        if provider == "first":
            provider = next((n for n in PAYEES if picks and self.a(n) == picks[0].voucher.provider), "provider")
        q = self.a(provider)
        if mismatch != 1:  # mostly vouchers of this provider; now and then one of another
            picks = [sv for sv in picks if sv.voucher.provider == q]
        for sv in picks:
            self._presented(sv)
        signatures = [sv.signature for sv in picks]
        if mismatch == 0 and picks:
            signatures = signatures[:-1]
        t = now()
        ok = len(signatures) == len(picks) and all(sv.voucher.provider == q and self._valid(sv, t) for sv in picks)
        saved = (copy.deepcopy(self.channel), dict(self.redeemed))
        before = self.raw.balances(self.addresses)
        out = {"owner": [], "provider": 0, "fee": 0, "events": []}
        expected_total = sum(self._redeem_model(sv, out) for sv in picks) if ok else 0
        done, total = self.call(ok, self.a(who), self.s.escrow.redeemBatch, q, [sv.voucher.as_tuple() for sv in picks],
                                signatures,
                                what=f"redeemBatch({provider}, {picks!r}, {len(signatures)} signatures)")  # fmt: skip
        if not done:
            self.channel, self.redeemed = saved
            return
        assert total == expected_total, f"redeemBatch paid {total}, model says {expected_total}"
        self._book_redemption(q, out, before)

    def _pay_out(self, provider: str, out: dict) -> None:
        for owner, amount in out["owner"]:
            self.pay(self.escrow_addr, owner, amount)
        self.pay(self.escrow_addr, provider, out["provider"])
        self.pay(self.escrow_addr, self.treasury[self.escrow_addr], out["fee"])

    # -- rules: time and governance -----------------------------------------

    @rule(seconds=WARP)
    def warp(self, seconds):
        boa.env.time_travel(seconds=seconds)

    @rule(sv=vouchers, delta=st.sampled_from([0, 1]))
    def warp_to_expiry(self, sv, delta):
        target = sv.voucher.expiry + delta
        if target > now():
            boa.env.time_travel(seconds=target - now())

    @rule(data=st.data(), name=st.sampled_from(["set_protocol_fee", "set_treasury", "set_withdraw_timelock",
                                                "set_revenue_share", "set_revenue_share"]))  # fmt: skip
    def governance(self, data, name):
        run_action(self, data, name)
        e = self.s.escrow
        assert (e.protocolFeeBps(), e.treasury(), e.withdrawTimelock()) == (
            self.fee_bps[self.escrow_addr], self.treasury[self.escrow_addr], self.timelock)

    @action(who=st.sampled_from(["deployer", "deployer", "outsider"]),
            fee=st.one_of(st.sampled_from([0, 1, 250, 1_000, 1_001]), st.integers(0, 1_000)))  # fmt: skip
    def set_protocol_fee(self, who, fee):
        self._set_protocol_fee(self.s.escrow, self.a(who), fee)

    @action(who=st.sampled_from(["deployer", "deployer", "outsider"]),
            treasury=st.sampled_from(["treasury", "treasury2", None]))  # fmt: skip
    def set_treasury(self, who, treasury):
        self._set_treasury(self.s.escrow, self.a(who), self.a(treasury) if treasury else ZERO_ADDRESS)

    @action(who=st.sampled_from(["deployer", "deployer", "outsider"]),
            timelock=st.sampled_from([0, 59, 60, 3_600, WITHDRAW_TIMELOCK, MAX_TIMELOCK,
                                      MAX_TIMELOCK + 1]))  # fmt: skip
    def set_withdraw_timelock(self, who, timelock):
        ok = who == "deployer" and 60 <= timelock <= MAX_TIMELOCK
        done, _ = self.call(ok, self.a(who), self.s.escrow.setWithdrawTimelock, timelock,
                            what=f"setWithdrawTimelock({timelock})")  # fmt: skip
        if done:
            self.timelock = timelock

    @action(who=st.sampled_from(["publisher", "publisher", "outsider"]), model=st.sampled_from([0, 1]),
            share=st.sampled_from(SHARES))  # fmt: skip
    def set_revenue_share(self, who, model, share):
        self._set_revenue_share(self.a(who), self.models[model], share)

    # -- invariants ----------------------------------------------------------

    @invariant()
    def escrow_holds_exactly_the_channels(self):
        if self.unchanged_since_last("channels"):
            return
        chain = {pair: self.raw.channel(*pair) for pair in self.pairs}
        for pair, (balance, unlock_at) in chain.items():
            assert [balance, unlock_at] == self.channel[pair], f"channel {pair}: chain {chain[pair]} != model"
        expected = sum(balance for balance, _ in chain.values())
        actual = self.s.token.balanceOf(self.s.escrow.address)
        assert actual == expected, f"escrow holds {actual}, channel balances sum to {expected}"

    @invariant()
    def redeemed_never_exceeds_what_was_signed(self):
        if self.unchanged_since_last("redeemed"):
            return
        for key, model in self.redeemed.items():
            chain = self.raw.redeemed(*key)
            assert chain == model, f"redeemed{key}: chain {chain} != model {model}"
            assert chain <= self.max_signed[key] or key[0] == ZERO_ADDRESS, (
                f"redeemed{key} = {chain} above the highest amount ever signed, {self.max_signed[key]}"
            )
            assert chain == self.received[key], (
                f"redeemed{key} = {chain} but provider + owner + treasury received {self.received[key]}"
            )

    @invariant()
    def conservation(self):
        self.check_conservation()

    @invariant()
    def getters_agree(self):
        """Every few steps: the public getters agree with the model (the other checks read raw storage)."""
        if not self.every_few_steps():
            return
        for p, q in self.pairs[:4]:
            assert list(self.s.escrow.channels(p, q)) == self.channel[(p, q)]
            assert self.s.escrow.redeemed(p, q, self.w.m1) == self.redeemed[(p, q, self.w.m1)]


EscrowMachine.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=ESCROW_STEPS, deadline=None)
TestEscrowInvariants = EscrowMachine.TestCase
