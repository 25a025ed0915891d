"""Agent jobs: the ``Job`` struct the JobMarket commits to, and its state machine.

The contract stores only ``keccak256(abi_encode(Job))`` per job; callers pass
the whole struct back with each call. This module rebuilds the struct from
the contract's events (``apply_event``) and mirrors each transition as a
pure function, so the provider daemon, the indexer and the tests share one
definition of the lifecycle:

    Open -> Claimed -> Submitted -> (Disputed ->) Settled
    Open -> Refunded (cancelled or expired), Claimed -> Refunded (expired, bond slashed),
    Disputed -> Refunded (provider lost the dispute, bond slashed)
"""

from __future__ import annotations

import functools
from dataclasses import astuple, dataclass, fields, replace  # noqa: F401  (replace is re-exported)
from enum import IntEnum
from typing import Any, Mapping

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

# NOTE: the indexer folds thousands of JobCreated events a second; the same few
# addresses recur, and checksumming is the costliest step of building a Job.
_checksum = functools.lru_cache(maxsize=4_096)(to_checksum_address)


class JobState(IntEnum):
    OPEN = 1
    CLAIMED = 2
    SUBMITTED = 3
    DISPUTED = 4
    SETTLED = 5
    REFUNDED = 6

    @property
    def is_final(self) -> bool:
        return self in (JobState.SETTLED, JobState.REFUNDED)


class RefundReason(IntEnum):
    CANCELLED = 1
    EXPIRED_UNCLAIMED = 2
    EXPIRED_AFTER_CLAIM = 3
    DISPUTE_LOST = 4


@dataclass(frozen=True, slots=True)
class Job:
    """Field for field the Vyper ``Job`` struct of ``contracts/JobMarket.vy``."""

    requester: str
    model_id: int
    input_hash: bytes
    max_payment: int
    deadline: int
    priority_provider: str
    priority_until: int
    model_owner: str
    revenue_share_bps: int
    protocol_fee_bps: int
    challenge_window: int
    bond: int
    state: JobState
    provider: str
    charge: int
    output_hash: bytes
    window_ends: int

    ABI_TYPES = (
        "address", "uint256", "bytes32", "uint256", "uint256", "address", "uint256", "address",
        "uint256", "uint256", "uint256", "uint256", "uint256", "address", "uint256", "bytes32", "uint256",
    )  # fmt: skip

    def as_tuple(self) -> tuple:
        """The ABI tuple the contract takes."""
        values = list(astuple(self))
        values[12] = int(self.state)
        return tuple(values)

    def commitment(self) -> bytes:
        """keccak256(abi_encode(job)): what ``JobMarket.jobCommitment(jobId)`` holds."""
        return keccak(encode(list(self.ABI_TYPES), self.as_tuple()))

    @classmethod
    def from_created(cls, args: Mapping[str, Any]) -> "Job":
        """The struct of a new job, from the arguments of its ``JobCreated`` event."""
        return cls(
            requester=_checksum(args["requester"]),
            model_id=args["modelId"],
            input_hash=as_bytes32(args["inputHash"]),
            max_payment=args["maxPayment"],
            deadline=args["deadline"],
            priority_provider=_checksum(args["priorityProvider"]),
            priority_until=args["priorityUntil"],
            model_owner=_checksum(args["modelOwner"]),
            revenue_share_bps=args["revenueShareBps"],
            protocol_fee_bps=args["protocolFeeBps"],
            challenge_window=args["challengeWindow"],
            bond=args["bond"],
            state=JobState.OPEN,
            provider=ZERO_ADDRESS,
            charge=0,
            output_hash=b"\x00" * 32,
            window_ends=0,
        )


class JobTransitionError(ValueError):
    """A transition the contract would refuse; the message names the rule."""


def as_bytes32(value: bytes | str) -> bytes:
    """Event values arrive as bytes (web3) or 0x-hex strings (the indexer's JSON)."""
    return bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)


def claimed(job: Job, provider: str) -> Job:
    _require(job.state is JobState.OPEN, "job is not open")
    return replace(job, state=JobState.CLAIMED, provider=_checksum(provider))


def submitted(job: Job, output_hash: bytes, charge: int, challenge_ends: int) -> Job:
    _require(job.state is JobState.CLAIMED, "job is not claimed")
    _require(charge <= job.max_payment, "charge above maxPayment")
    return replace(job, state=JobState.SUBMITTED, output_hash=as_bytes32(output_hash), charge=charge, window_ends=challenge_ends)


def disputed(job: Job, arbitration_ends: int) -> Job:
    _require(job.state is JobState.SUBMITTED, "job is not submitted")
    return replace(job, state=JobState.DISPUTED, window_ends=arbitration_ends)


def settled(job: Job) -> Job:
    _require(job.state in (JobState.SUBMITTED, JobState.DISPUTED), "job is not submitted")
    return replace(job, state=JobState.SETTLED)


def refunded(job: Job) -> Job:
    _require(job.state in (JobState.OPEN, JobState.CLAIMED, JobState.DISPUTED), "job cannot be refunded")
    return replace(job, state=JobState.REFUNDED)


def apply_event(job: Job | None, name: str, args: Mapping[str, Any]) -> Job:
    """Fold one JobMarket event into the job's struct (``None`` before ``JobCreated``)."""
    if name == "JobCreated":
        return Job.from_created(args)
    if job is None:
        raise JobTransitionError(f"{name} for a job whose JobCreated was not seen")
    if name == "JobClaimed":
        return claimed(job, args["provider"])
    if name == "JobSubmitted":
        return submitted(job, args["outputHash"], args["charge"], args["challengeEnds"])
    if name == "JobDisputed":
        return disputed(job, args["arbitrationEnds"])
    if name == "JobSettled":
        return settled(job)
    if name == "JobRefunded":
        return refunded(job)
    return job  # DisputeResolved and other events do not change the struct


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise JobTransitionError(f"market: {message}")


JOB_FIELDS = tuple(f.name for f in fields(Job))
