"""Jobs read from the chain itself: events of one job, folded into its struct and checked against its commitment.

The JobMarket stores only ``keccak256(abi_encode(Job))`` per job, and every
call must pass the whole struct back. Before a dispute, a refund or a
finalize the CLI rebuilds the struct from the job's own events (the job id
is the first indexed topic of every job event) and checks it against the
on-chain commitment, so it never signs a call built from stale data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from eth_utils import event_abi_to_log_topic

from nodeai.chain import jobs
from nodeai.cli.context import CliContext
from nodeai.cli.errors import CliError, ServiceUnavailable, UserError

JOB_EVENTS = ("JobCreated", "JobClaimed", "JobSubmitted", "JobDisputed", "DisputeResolved", "JobSettled", "JobRefunded")


@dataclass
class JobView:
    """A job as the chain holds it now, with the events that made it."""

    job_id: int
    job: jobs.Job
    input_cid: str
    output_cid: str | None = None
    usage: int | None = None
    settlement: dict[str, Any] | None = None
    refund: dict[str, Any] | None = None
    provider_won_dispute: bool | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    last_block: int = 0

    @property
    def state(self) -> jobs.JobState:
        return self.job.state

    def as_json(self) -> dict[str, Any]:
        job = self.job
        return {
            "job_id": self.job_id, "state": job.state.name, "model_id": job.model_id, "requester": job.requester,
            "provider": job.provider, "model_owner": job.model_owner, "max_payment": job.max_payment,
            "charge": job.charge, "deadline": job.deadline, "window_ends": job.window_ends,
            "priority_provider": job.priority_provider, "priority_until": job.priority_until, "bond": job.bond,
            "revenue_share_bps": job.revenue_share_bps, "protocol_fee_bps": job.protocol_fee_bps,
            "challenge_window": job.challenge_window, "input_cid": self.input_cid,
            "input_hash": "0x" + job.input_hash.hex(), "output_cid": self.output_cid,
            "output_hash": "0x" + job.output_hash.hex(), "usage": self.usage, "settlement": self.settlement,
            "refund": self.refund, "provider_won_dispute": self.provider_won_dispute, "events": self.events,
        }  # fmt: skip


def _decoders(obj: CliContext) -> dict[bytes, Any]:
    market = obj.contract("JobMarket")
    return {event_abi_to_log_topic(item): getattr(market.events, item["name"])()
            for item in market.abi if item.get("type") == "event" and item["name"] in JOB_EVENTS}  # fmt: skip


def job_events(obj: CliContext, job_id: int, from_block: int | None = None, to_block: int | str = "latest") -> list[dict[str, Any]]:
    """The job's events in chain order: ``{"event", "block", "log_index", "tx", "args"}``."""
    market = obj.contract("JobMarket")
    start = from_block if from_block is not None else obj.deployment.contracts["JobMarket"].get("block", obj.deployment.deploy_block)
    topic = "0x" + job_id.to_bytes(32, "big").hex()
    try:
        logs = obj.w3.eth.get_logs({"address": market.address, "fromBlock": start, "toBlock": to_block,
                                    "topics": [None, topic]})  # fmt: skip
    except ValueError as exc:
        raise ServiceUnavailable(f"the RPC refused eth_getLogs for job {job_id}: {exc}",
                                 "use an RPC with log access, or read the job with the indexer (`nodeai jobs list`)") from None
    decoders = _decoders(obj)
    out = []
    for log in logs:
        decoder = decoders.get(bytes(log["topics"][0]))
        if decoder is None:
            continue
        decoded = decoder.process_log(log)
        out.append({"event": decoded["event"], "block": log["blockNumber"], "log_index": log["logIndex"],
                    "tx": "0x" + bytes(log["transactionHash"]).hex().removeprefix("0x"), "args": dict(decoded["args"])})  # fmt: skip
    out.sort(key=lambda e: (e["block"], e["log_index"]))
    return out


def load_job(obj: CliContext, job_id: int) -> JobView:
    """The job ``job_id`` rebuilt from its events and checked against ``jobCommitment``."""
    return _load_job(obj, job_id)[0]


def _load_job(obj: CliContext, job_id: int) -> tuple[JobView, list[dict[str, Any]]]:
    """``load_job`` and the events it was folded from."""
    if job_id <= 0:
        raise UserError(f"job ids start at 1, got {job_id}")
    market = obj.contract("JobMarket")
    # NOTE: the commitment and the logs are read at one block, so a transaction landing in
    # between (a provider claiming the job right now) cannot make them disagree.
    block = obj.w3.eth.block_number
    commitment = bytes(market.functions.jobCommitment(job_id).call(block_identifier=block))
    if commitment == b"\x00" * 32:
        count = market.functions.jobCount().call(block_identifier=block)
        raise UserError(f"there is no job {job_id} on this chain (jobs 1..{count} exist)",
                        "list them with `nodeai jobs list`")
    events = job_events(obj, job_id, to_block=block)
    view = fold(job_id, events)
    if view is None or view.job.commitment() != commitment:
        raise CliError(f"the events of job {job_id} do not match its on-chain commitment",
                       "the RPC may be lagging or missing logs; retry, or use another --rpc-url")
    return view, events


def fold(job_id: int, events: list[dict[str, Any]]) -> JobView | None:
    view: JobView | None = None
    for event in events:
        name, args = event["event"], event["args"]
        if name == "JobCreated":
            view = JobView(job_id, jobs.Job.from_created(args), input_cid=args["inputCid"])
        elif view is None:
            continue
        else:
            view.job = jobs.apply_event(view.job, name, args)
        if name == "JobSubmitted":
            view.output_cid, view.usage = args["outputCid"], args["usage"]
        elif name == "JobSettled":
            view.settlement = {k: args[k] for k in ("charge", "providerAmount", "modelOwnerAmount", "protocolFee", "refund")}
            view.settlement["tx"] = event["tx"]
        elif name == "JobRefunded":
            view.refund = {"refund": args["refund"], "slashed": args["slashed"],
                           "reason": jobs.RefundReason(args["reason"]).name, "tx": event["tx"]}  # fmt: skip
        elif name == "DisputeResolved":
            view.provider_won_dispute = args["providerWins"]
        view.events.append({"event": name, "block": event["block"], "tx": event["tx"]})
        view.last_block = event["block"]
    return view


def follow(obj: CliContext, job_id: int, stop: Callable[[JobView], bool], on_change: Callable[[JobView], None],
           timeout: float, poll: float = 0.5, on_tick: Callable[[JobView], None] | None = None) -> JobView:  # fmt: skip
    """Poll the job's events until ``stop(view)``; ``on_change`` sees every new state. Bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    view, events = _load_job(obj, job_id)
    on_change(view)
    seen = len(events)
    while not stop(view):
        if time.monotonic() > deadline:
            raise CliError(f"job {job_id} is still {view.state.name} after {timeout:.0f} s",
                           f"it goes on without the CLI: follow it again with `nodeai jobs show {job_id}`")
        time.sleep(poll)
        view, events = _load_job(obj, job_id)
        if len(events) != seen:
            # NOTE: several transitions can land between two polls (a provider that claims
            # and submits within a second): each one is shown, in chain order.
            for count in range(seen + 1, len(events)):
                step = fold(job_id, events[:count])
                if step is not None:
                    on_change(step)
            seen = len(events)
            on_change(view)
        elif on_tick is not None:
            on_tick(view)
    return view
