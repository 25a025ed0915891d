"""The protocol end to end from Python: the actors of a deployment driving its contracts.

Used by the demo (``scripts/demo.py``), the gas report
(``scripts/bench/gas.py``) and the integration tests, so all three exercise
the same calls a wallet or a provider daemon makes. Job structs are rebuilt
from the events, as any client of the commitment-based JobMarket does.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from nodeai.chain import jobs
from nodeai.chain.client import Transactor, TxResult
from nodeai.chain.deploy import Deployment, token_name
from nodeai.chain.receipts import MerkleTree, Receipt
from nodeai.chain.vouchers import Voucher, sign_voucher


def raw_cid(data: bytes) -> str:
    """CIDv1 (raw codec, sha2-256, base32) of ``data``: the CID IPFS gives a single raw block."""
    digest = b"\x01\x55\x12\x20" + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(digest).decode().lower().rstrip("=")


@dataclass
class Marketplace:
    w3: Web3
    deployment: Deployment
    accounts: dict[str, LocalAccount]

    @classmethod
    def from_keys(cls, w3: Web3, deployment: Deployment, keys: dict[str, str]) -> "Marketplace":
        return cls(w3, deployment, {name: Account.from_key(key) for name, key in keys.items()})

    def __post_init__(self) -> None:
        self.token = self.deployment.contract(self.w3, token_name(self.deployment))
        self.models = self.deployment.contract(self.w3, "ModelRegistry")
        self.providers = self.deployment.contract(self.w3, "ProviderRegistry")
        self.market = self.deployment.contract(self.w3, "JobMarket")
        self.escrow = self.deployment.contract(self.w3, "InferenceEscrow")
        self.receipts = self.deployment.contract(self.w3, "ReceiptRegistry")
        self.jobs: dict[int, jobs.Job] = {}

    def address(self, actor: str) -> str:
        return self.accounts[actor].address

    def send(self, actor: str, fn, label: str) -> TxResult:
        return Transactor(self.w3, self.accounts[actor]).send(fn, label)

    # -- set-up ---------------------------------------------------------------------------
    def mint(self, to: str, amount: int) -> TxResult:
        return self.send("deployer", self.token.functions.mint(self.address(to), amount), f"mint to {to}")

    def approve(self, actor: str, spender_contract, amount: int = 2**256 - 1) -> TxResult:
        return self.send(actor, self.token.functions.approve(spender_contract.address, amount), f"{actor} approves")

    def register_model(self, artifact: bytes, manifest: bytes, price_per_1k: int, share_bps: int) -> tuple[int, TxResult]:
        fn = self.models.functions.registerModel(raw_cid(artifact), raw_cid(manifest), price_per_1k, share_bps)
        result = self.send("publisher", fn, "registerModel")
        return result.event("ModelRegistered")["modelId"], result

    def register_provider(self, endpoint: str, peer_id: str, stake: int, model_id: int, price_per_1k: int) -> list[TxResult]:
        return [
            self.approve("provider", self.providers),
            self.send("provider", self.providers.functions.register(endpoint, peer_id, stake), "register provider"),
            self.send("provider", self.providers.functions.setModelPrice(model_id, price_per_1k), "setModelPrice"),
        ]

    def onboard(self, funds: int, stake: int, price_per_1k: int = 2_000, share_bps: int = 1_000) -> int:
        """Fund provider and requester, register a model and a staked provider serving it,
        approve both payment contracts for the requester; returns the model id."""
        for who in ("provider", "requester"):
            self.mint(who, funds)
        model_id, _ = self.register_model(b"weights", b"manifest", price_per_1k, share_bps)
        self.register_provider("http://127.0.0.1:8000/v1", "12D3KooWPeer", stake, model_id, price_per_1k)
        self.approve("requester", self.market)
        self.approve("requester", self.escrow)
        return model_id

    # -- agent jobs -----------------------------------------------------------------------
    def create_job(self, model_id: int, job_input: bytes, max_payment: int, duration: int = 86_400,
                   requester: str = "requester") -> tuple[int, TxResult]:
        deadline = self.now() + duration
        fn = self.market.functions.createJob(model_id, raw_cid(job_input), max_payment, deadline, jobs.ZERO_ADDRESS, 0)
        result = self.send(requester, fn, "createJob")
        created = result.event("JobCreated")
        self.jobs[created["jobId"]] = jobs.Job.from_created(created)
        return created["jobId"], result

    def _job_call(self, actor: str, job_id: int, method: str, *args, event: str) -> TxResult:
        fn = getattr(self.market.functions, method)(job_id, self.jobs[job_id].as_tuple(), *args)
        result = self.send(actor, fn, method)
        self.jobs[job_id] = jobs.apply_event(self.jobs[job_id], event, result.event(event))
        return result

    def claim(self, job_id: int) -> TxResult:
        return self._job_call("provider", job_id, "claimJob", event="JobClaimed")

    def submit(self, job_id: int, output: bytes, usage: int, charge: int) -> TxResult:
        return self._job_call("provider", job_id, "submitResult", raw_cid(output), keccak(output), usage, charge,
                              event="JobSubmitted")

    def dispute(self, job_id: int, evidence: bytes) -> TxResult:
        return self._job_call("requester", job_id, "disputeJob", raw_cid(evidence), event="JobDisputed")

    def resolve(self, job_id: int, provider_wins: bool) -> TxResult:
        return self._job_call("deployer", job_id, "resolveDispute", provider_wins,
                              event="JobSettled" if provider_wins else "JobRefunded")

    def finalize(self, job_id: int, caller: str = "requester") -> TxResult:
        return self._job_call(caller, job_id, "finalize", event="JobSettled")

    # -- inference vouchers and receipts ----------------------------------------------------
    def deposit(self, amount: int, payer: str = "requester") -> TxResult:
        return self.send(payer, self.escrow.functions.deposit(self.address("provider"), amount), "escrow deposit")

    def sign(self, model_id: int, cumulative: int, payer: str = "requester", valid_for: int = 86_400) -> tuple[Voucher, bytes]:
        voucher = Voucher(self.address(payer), self.address("provider"), model_id, cumulative, self.now() + valid_for)
        key = self.accounts[payer].key
        return voucher, sign_voucher(voucher, key, self.deployment.chain_id, self.escrow.address)

    def redeem(self, voucher: Voucher, signature: bytes) -> TxResult:
        return self.send("provider", self.escrow.functions.redeem(voucher.as_tuple(), signature), "redeem voucher")

    def commit_receipts(self, receipts: list[Receipt]) -> tuple[MerkleTree, TxResult]:
        tree = MerkleTree([r.leaf() for r in receipts])
        fn = self.receipts.functions.commitReceipts(
            tree.root, len(receipts), sum(r.tokens_in for r in receipts), sum(r.tokens_out for r in receipts),
            sum(r.amount for r in receipts), min(r.timestamp for r in receipts), max(r.timestamp for r in receipts),
        )  # fmt: skip
        return tree, self.send("provider", fn, "commitReceipts")

    def verify_receipt(self, tree: MerkleTree, receipts: list[Receipt], index: int) -> bool:
        return self.receipts.functions.verifyReceipt(tree.root, receipts[index].as_tuple(), tree.proof(index)).call()

    # -- chain helpers --------------------------------------------------------------------
    def now(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]

    def advance_time(self, seconds: int) -> None:
        """Local chains only: move the clock forward and mine a block."""
        self.w3.provider.make_request("evm_increaseTime", [seconds])
        self.w3.provider.make_request("evm_mine", [])

    def balance(self, actor_or_address: str) -> int:
        address = self.accounts[actor_or_address].address if actor_or_address in self.accounts else actor_or_address
        return self.token.functions.balanceOf(address).call()


def synthetic_receipts(market: Marketplace, model_id: int, count: int, price_per_request: int) -> list[Receipt]:
    """Receipts for ``count`` metered requests, as a provider's gateway would sign them."""
    now = int(time.time())
    return [
        Receipt(
            request_hash=keccak(text=f"request-{i}"), provider=market.address("provider"),
            payer=market.address("requester"), model_id=model_id, tokens_in=20 + i % 7, tokens_out=40 + i % 11,
            latency_ms=120 + i % 50, amount=price_per_request, timestamp=now + i,
        )  # fmt: skip
        for i in range(count)
    ]
