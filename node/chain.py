"""The daemon's view of and calls into the protocol's contracts.

* :func:`plan_registration` (pure): what to send so the chain advertises what
  the config says - nothing at all when it already does.
* :class:`ProviderChain`: start-up checks (RPC reachable, chain id, contract
  code, models registered), registration, the job calls (claim, submit,
  finalize) and :meth:`ProviderChain.job` - the job's current struct, proven
  current by the contract's stored commitment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import requests
from eth_utils import keccak
from web3 import Web3

from nodeai.chain import jobs
from nodeai.chain.client import TxResult
from nodeai.chain.deployments import Deployment, token_name
from nodeai.chain.jobs import Job, JobState
from nodeai.errors import ChainIdMismatch
from nodeai.node.config import ModelOffer, ProviderConfig
from nodeai.node.errors import ContractMissing, InsufficientFunds, ModelNotServable, RpcUnreachable, StartupError
from nodeai.node.reconcile import ChainView
from nodeai.node.tx import OnSigned, TxManager

log = logging.getLogger("nodeai.node.chain")

__all__ = ["ProviderOnChain", "Step", "plan_registration", "ProviderChain", "JOB_EVENTS"]

JOB_EVENTS = ("JobCreated", "JobClaimed", "JobSubmitted", "JobDisputed", "DisputeResolved", "JobSettled", "JobRefunded")
MAX_UINT = 2**256 - 1


@dataclass(frozen=True)
class ProviderOnChain:
    """What the registry and the token say about the provider now."""

    registered: bool
    stake: int
    endpoint: str
    peer_id: str
    prices: dict[int, int]   # model id -> price per 1k tokens, for the configured models
    allowance: int           # token allowance of the ProviderRegistry
    balance: int             # token balance
    min_stake: int


@dataclass(frozen=True)
class Step:
    kind: Literal["approve", "register", "update_endpoint", "add_stake", "set_price"]
    args: tuple = field(default=())

    def describe(self) -> str:
        return f"{self.kind}({', '.join(str(a) for a in self.args)})"


def plan_registration(desired: ProviderConfig, current: ProviderOnChain) -> list[Step]:
    """The transactions that make the chain match ``desired``; empty when it already does.

    Stake is only ever topped up (a decrease is an unbonding the operator
    starts deliberately). Raises ``StartupError`` subclasses for what no
    transaction could fix (too little balance, stake below the minimum).
    """
    steps: list[Step] = []
    if not current.registered:
        if desired.stake < current.min_stake:
            raise StartupError(f"provider.stake {desired.stake} is below the registry's minimum stake {current.min_stake}: "
                               "raise provider.stake")
        needed = desired.stake
    else:
        needed = max(0, desired.stake - current.stake)
    if needed > current.balance:
        raise InsufficientFunds("the provider account", needed, current.balance,
                                "registering with that stake" if not current.registered else "the stake top-up")
    if needed and current.allowance < needed:
        steps.append(Step("approve", (needed,)))
    if not current.registered:
        steps.append(Step("register", (desired.endpoint, desired.peer_id, needed)))
    else:
        if (current.endpoint, current.peer_id) != (desired.endpoint, desired.peer_id):
            steps.append(Step("update_endpoint", (desired.endpoint, desired.peer_id)))
        if needed:
            steps.append(Step("add_stake", (needed,)))
    for model in desired.models:
        if current.prices.get(model.id, 0) != model.price_per_1k_tokens:
            steps.append(Step("set_price", (model.id, model.price_per_1k_tokens)))
    return steps


class ProviderChain:
    """The provider's contracts on one chain, with every transaction sent through ``tx``."""

    def __init__(self, w3: Web3, deployment: Deployment, tx: TxManager, rpc_url: str = "the RPC"):
        self.w3 = w3
        self.deployment = deployment
        self.tx = tx
        self.rpc_url = rpc_url
        self.token = deployment.contract(w3, token_name(deployment))
        self.models = deployment.contract(w3, "ModelRegistry")
        self.providers = deployment.contract(w3, "ProviderRegistry")
        self.market = deployment.contract(w3, "JobMarket")
        self.escrow = deployment.contract(w3, "InferenceEscrow")
        self.receipts = deployment.contract(w3, "ReceiptRegistry")
        self._topics = {keccak(text=self._signature(name)): name for name in JOB_EVENTS}

    @property
    def address(self) -> str:
        return self.tx.address

    # -- start-up checks (read only: nothing is sent before all of them pass) ----------------------------
    def check(self, expected_chain_id: int, models: list[ModelOffer]) -> None:
        try:
            actual = self.w3.eth.chain_id
        except (requests.ConnectionError, requests.Timeout, OSError) as exc:
            raise RpcUnreachable(self.rpc_url, type(exc).__name__) from None
        for expected in (expected_chain_id, self.deployment.chain_id):
            if actual != expected:
                raise ChainIdMismatch(expected, actual, self.rpc_url)
        for name, entry in self.deployment.contracts.items():
            if not self.w3.eth.get_code(entry["address"]):
                raise ContractMissing(name, entry["address"], self.rpc_url)
        for model in models:
            owner, _share, active = self.models.functions.modelTerms(model.id).call()
            if int(owner, 16) == 0:
                raise ModelNotServable(model.id, "no such model is registered")
            if not active:
                raise ModelNotServable(model.id, "the model is deprecated")

    def provider_state(self, models: list[ModelOffer]) -> ProviderOnChain:
        me = self.address
        info = self.providers.functions.providers(me).call()
        return ProviderOnChain(
            registered=info[0], stake=info[1],
            endpoint=self.providers.functions.endpoint(me).call(), peer_id=self.providers.functions.peerId(me).call(),
            prices={m.id: self.providers.functions.modelPrice(me, m.id).call() for m in models},
            allowance=self.token.functions.allowance(me, self.providers.address).call(),
            balance=self.token.functions.balanceOf(me).call(),
            min_stake=self.providers.functions.minStake().call(),
        )  # fmt: skip

    def register(self, desired: ProviderConfig) -> list[TxResult]:
        """Make the registry match ``desired``; returns the transactions sent (none when it already did)."""
        steps = plan_registration(desired, self.provider_state(desired.models))
        results = []
        for step in steps:
            fn = self._step_function(step)
            log.info("registration: %s", step.describe())
            results.append(self.tx.send(fn, f"registration {step.kind}"))
        return results

    def _step_function(self, step: Step) -> Any:
        f = self.providers.functions
        if step.kind == "approve":
            return self.token.functions.approve(self.providers.address, step.args[0])
        if step.kind == "register":
            return f.register(*step.args)
        if step.kind == "update_endpoint":
            return f.updateEndpoint(*step.args)
        if step.kind == "add_stake":
            return f.addStake(*step.args)
        return f.setModelPrice(*step.args)

    def free_stake(self) -> int:
        return self.tx.retry(lambda: self.providers.functions.freeStake(self.address).call(), "freeStake")

    def now(self) -> int:
        return self.tx.retry(lambda: self.w3.eth.get_block("latest")["timestamp"], "eth_getBlockByNumber")

    # -- jobs -----------------------------------------------------------------------------------------
    def commitment(self, job_id: int) -> bytes:
        return bytes(self.tx.retry(lambda: self.market.functions.jobCommitment(job_id).call(), "jobCommitment"))

    def job(self, job_id: int, candidates: list[Job | None], from_block: int | None = None) -> Job:
        """The job's struct as the contract holds it now.

        A candidate (the local record's copy, the indexer's) is accepted only if
        its hash equals the contract's stored commitment; otherwise the struct is
        rebuilt from the job's events, so a lagging indexer or a reorg can never
        hand the daemon a stale state.
        """
        for _ in range(3):
            stored = self.commitment(job_id)
            if stored == b"\x00" * 32:
                raise LookupError(f"job {job_id} does not exist on chain (reorged away?)")
            for candidate in candidates:
                if candidate is not None and candidate.commitment() == stored:
                    return candidate
            rebuilt = self._job_from_logs(job_id, from_block)
            if rebuilt is not None and rebuilt.commitment() == stored:
                return rebuilt
            candidates = [rebuilt]  # NOTE: a block may have landed between the two reads: read again
        raise LookupError(f"job {job_id}: no struct matches the contract's commitment (the RPC serves inconsistent data?)")

    def topic(self, name: str) -> str:
        """The 0x topic0 of a JobMarket event (e.g. ``"JobCreated"``)."""
        return "0x" + next(t for t, n in self._topics.items() if n == name).hex()

    def _signature(self, name: str) -> str:
        item = next(i for i in self.market.abi if i.get("type") == "event" and i["name"] == name)
        return f"{name}({','.join(_abi_type(x) for x in item['inputs'])})"

    def _job_from_logs(self, job_id: int, from_block: int | None) -> Job | None:
        logs = self.tx.retry(lambda: self.w3.eth.get_logs({
            "address": self.market.address,
            "fromBlock": from_block if from_block is not None else self.deployment.deploy_block,
            "toBlock": "latest",
            "topics": [["0x" + t.hex() for t in self._topics], "0x" + job_id.to_bytes(32, "big").hex()],
        }), "eth_getLogs")  # fmt: skip
        job = None
        for entry in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"])):
            name = self._topics[bytes(entry["topics"][0])]
            args = getattr(self.market.events, name)().process_log(entry)["args"]
            job = jobs.apply_event(job, name, args)
        return job

    def view(self, job: Job, now: int) -> ChainView:
        none = jobs.ZERO_ADDRESS
        return ChainView(
            state=job.state, ours=job.provider.lower() == self.address.lower(), now=now, deadline=job.deadline,
            window_ends=job.window_ends, priority_until=job.priority_until,
            priority_ours=job.priority_provider in (none, self.address),
        )  # fmt: skip

    def _job_call(self, job_id: int, job: Job, method: str, args: tuple, event: str, on_signed: OnSigned | None) -> tuple[TxResult, Job]:
        fn = getattr(self.market.functions, method)(job_id, job.as_tuple(), *args)
        result = self.tx.send(fn, f"{method} job {job_id}", on_signed=on_signed)
        return result, jobs.apply_event(job, event, result.event(event))

    def claim(self, job_id: int, job: Job, on_signed: OnSigned | None = None) -> tuple[TxResult, Job]:
        return self._job_call(job_id, job, "claimJob", (), "JobClaimed", on_signed)

    def submit(self, job_id: int, job: Job, output_cid: str, output_hash: bytes, usage: int, charge: int,
               on_signed: OnSigned | None = None) -> tuple[TxResult, Job]:
        return self._job_call(job_id, job, "submitResult", (output_cid, output_hash, usage, charge), "JobSubmitted", on_signed)

    def finalize(self, job_id: int, job: Job, on_signed: OnSigned | None = None) -> tuple[TxResult, Job]:
        return self._job_call(job_id, job, "finalize", (), "JobSettled", on_signed)

    def resume(self, tx_hash: str, label: str, on_signed: OnSigned | None = None) -> TxResult:
        return self.tx.resume(tx_hash, label, on_signed, self.market.abi, self.market.address)


def _abi_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in item["components"]) + ")" + item["type"][5:]
    return item["type"]


def job_state_name(state: JobState) -> str:
    return state.name.lower()
