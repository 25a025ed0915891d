"""Contracts deployed in titanoboa's in-process EVM, one fresh suite per test.

Accounts have real private keys (derived from their names) so tests can
sign EIP-712 vouchers with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import boa
import pytest
from eth_account import Account
from eth_utils import keccak

from nodeai.chain import jobs
from nodeai.chain.jobs import ZERO_ADDRESS

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# NOTE: titanoboa's compile cache goes into the repository (git-ignored), never
# into $HOME. It cannot be switched off: boa 0.2.8 then skips source maps and
# crashes on the first call.
boa.interpret.set_cache_dir(str(Path(__file__).resolve().parents[2] / ".cache" / "boa"))

ONE = 10**6  # the test token has 6 decimals, like USDC
MIN_STAKE = 100 * ONE
UNBONDING_DELAY = 7 * 86_400
PROTOCOL_FEE_BPS = 250
REVENUE_SHARE_BPS = 1_000
CHALLENGE_WINDOW = 3_600
ARBITRATION_WINDOW = 86_400
BOND_BPS = 2_000
WITHDRAW_TIMELOCK = 86_400
ARTIFACT_CID = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
MANIFEST_CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
INPUT_CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"
OUTPUT_CID = "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"


@dataclass(frozen=True)
class Actor:
    name: str
    key: bytes

    @property
    def address(self) -> str:
        return Account.from_key(self.key).address


def actor(name: str) -> Actor:
    return Actor(name, keccak(text=f"nodeai-test-{name}"))


@dataclass
class Suite:
    token: object
    models: object
    providers: object
    market: object
    escrow: object
    receipts: object
    deployer: Actor
    treasury: Actor
    arbiter: Actor
    publisher: Actor
    provider: Actor
    provider2: Actor
    requester: Actor
    payer: Actor
    model_id: int


def load(name: str, *args):
    return boa.load(str(CONTRACTS / f"{name}.vy"), *args)


def deploy_suite(token=None) -> Suite:
    """Deploy every contract, register one model and two staked providers, fund the users."""
    a = {n: actor(n) for n in ("deployer", "treasury", "arbiter", "publisher", "provider", "provider2", "requester", "payer")}
    with boa.env.prank(a["deployer"].address):
        token = token or load("TestToken", "Test USD", "TUSD", 6)
        models = load("ModelRegistry")
        providers = load("ProviderRegistry", token.address, models.address, MIN_STAKE, UNBONDING_DELAY)
        market = load(
            "JobMarket", token.address, models.address, providers.address, a["treasury"].address, PROTOCOL_FEE_BPS,
            a["arbiter"].address, CHALLENGE_WINDOW, ARBITRATION_WINDOW, BOND_BPS,
        )  # fmt: skip
        escrow = load(
            "InferenceEscrow", token.address, models.address, providers.address, a["treasury"].address,
            PROTOCOL_FEE_BPS, WITHDRAW_TIMELOCK,
        )  # fmt: skip
        receipts = load("ReceiptRegistry", providers.address)
        providers.setMarket(market.address, True)
        for who in ("provider", "provider2", "requester", "payer"):
            token.mint(a[who].address, 1_000_000 * ONE)
    with boa.env.prank(a["publisher"].address):
        model_id = models.registerModel(ARTIFACT_CID, MANIFEST_CID, 5 * ONE // 1000, REVENUE_SHARE_BPS)
    for who in ("provider", "provider2"):
        with boa.env.prank(a[who].address):
            token.approve(providers.address, 2**256 - 1)
            providers.register(f"https://{who}.example", f"12D3Koo{who}", 1_000 * ONE)
            providers.setModelPrice(model_id, 5 * ONE // 1000)
    with boa.env.prank(a["requester"].address):
        token.approve(market.address, 2**256 - 1)
    with boa.env.prank(a["payer"].address):
        token.approve(escrow.address, 2**256 - 1)
    return Suite(
        token, models, providers, market, escrow, receipts, a["deployer"], a["treasury"], a["arbiter"],
        a["publisher"], a["provider"], a["provider2"], a["requester"], a["payer"], model_id,
    )  # fmt: skip


@pytest.fixture(scope="module")
def _module_suite():
    return deploy_suite()


@pytest.fixture
def suite(_module_suite):
    """A deployed suite; every test runs in its own EVM snapshot, reverted after."""
    with boa.env.anchor():
        yield _module_suite


PROVIDER_FIELDS = (
    "registered", "stake", "bonded", "unbonding", "unbondingReadyAt",
    "jobsCompleted", "jobsFailed", "disputesLost", "totalSlashed",
)  # fmt: skip


def provider_info(s: Suite, who: Actor | str) -> dict:
    """ProviderRegistry.providers(who) as a dict keyed by the struct's field names."""
    address = who if isinstance(who, str) else who.address
    return dict(zip(PROVIDER_FIELDS, s.providers.providers(address)))


def call_as(who: Actor | str, fn, *args):
    """Call ``fn(*args)`` with ``who`` (an actor or an address) as msg.sender."""
    with boa.env.prank(who if isinstance(who, str) else who.address):
        return fn(*args)


def now() -> int:
    return boa.env.evm.patch.timestamp


def warp(seconds: int) -> None:
    boa.env.time_travel(seconds=seconds)




def last_event(contract, name: str) -> dict:
    """Arguments of the last ``name`` event the last call to ``contract`` emitted."""
    for log in reversed(contract.get_logs()):
        if type(log).__name__ == name:
            return {k: (str(v) if type(v).__name__ == "Address" else v) for k, v in log._asdict().items()}
    raise AssertionError(f"{name} not emitted; got {[type(x).__name__ for x in contract.get_logs()]}")


class JobDriver:
    """Drives JobMarket calls and keeps each job's struct up to date from the events,
    the way a real client does (the contract stores only a commitment)."""

    def __init__(self, s: Suite):
        self.s = s
        self.jobs: dict[int, jobs.Job] = {}

    def create(self, requester: Actor | None = None, max_payment: int = 10 * ONE, duration: int = 86_400,
               priority: Actor | None = None, priority_for: int = 0, model_id: int | None = None) -> int:
        requester = requester or self.s.requester
        priority_address = priority.address if priority else ZERO_ADDRESS
        priority_until = now() + priority_for if priority else 0
        with boa.env.prank(requester.address):
            job_id = self.s.market.createJob(
                model_id or self.s.model_id, INPUT_CID, max_payment, now() + duration, priority_address, priority_until
            )
        self.jobs[job_id] = jobs.apply_event(None, "JobCreated", last_event(self.s.market, "JobCreated"))
        return job_id

    def _record(self, job_id: int, *names: str) -> None:
        for name in names:
            self.jobs[job_id] = jobs.apply_event(self.jobs[job_id], name, last_event(self.s.market, name))

    def claim(self, job_id: int, provider: Actor | None = None) -> None:
        with boa.env.prank((provider or self.s.provider).address):
            self.s.market.claimJob(job_id, self.jobs[job_id].as_tuple())
        self._record(job_id, "JobClaimed")

    def submit(self, job_id: int, charge: int = 4 * ONE, provider: Actor | None = None, usage: int = 1234,
               output_hash: bytes = b"\x11" * 32) -> None:
        job = self.jobs[job_id]
        with boa.env.prank((provider or self.s.provider).address):
            self.s.market.submitResult(job_id, job.as_tuple(), OUTPUT_CID, output_hash, usage, charge)
        self._record(job_id, "JobSubmitted")

    def dispute(self, job_id: int, requester: Actor | None = None) -> None:
        with boa.env.prank((requester or self.s.requester).address):
            self.s.market.disputeJob(job_id, self.jobs[job_id].as_tuple(), INPUT_CID)
        self._record(job_id, "JobDisputed")

    def resolve(self, job_id: int, provider_wins: bool, caller: Actor | None = None) -> None:
        with boa.env.prank((caller or self.s.arbiter).address):
            self.s.market.resolveDispute(job_id, self.jobs[job_id].as_tuple(), provider_wins)
        self._record(job_id, "JobSettled" if provider_wins else "JobRefunded")

    def finalize(self, job_id: int, caller: Actor | None = None) -> None:
        with boa.env.prank((caller or self.s.deployer).address):
            self.s.market.finalize(job_id, self.jobs[job_id].as_tuple())
        self._record(job_id, "JobSettled")

    def cancel(self, job_id: int, requester: Actor | None = None) -> None:
        with boa.env.prank((requester or self.s.requester).address):
            self.s.market.cancelJob(job_id, self.jobs[job_id].as_tuple())
        self._record(job_id, "JobRefunded")

    def refund_expired(self, job_id: int, caller: Actor | None = None) -> None:
        with boa.env.prank((caller or self.s.deployer).address):
            self.s.market.refundExpired(job_id, self.jobs[job_id].as_tuple())
        self._record(job_id, "JobRefunded")


@pytest.fixture
def driver(suite) -> JobDriver:
    return JobDriver(suite)
