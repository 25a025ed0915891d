"""The claim policy and the charge of a job. Pure.

``claim_decision`` says whether an open job is worth claiming now:

* the model (or agent) is one this provider serves;
* its maxPayment is at least the configured floor (``claim.min_payment``);
* a slot is free (``claim.capacity`` jobs claimed and not yet submitted);
* the deadline leaves ``claim.min_time_to_deadline`` seconds to execute and submit;
* the free stake covers the claim bond;
* no other provider's exclusive claim window is open (then: later, not never).

``job_charge`` is what a finished job costs the requester: the tokens used at
the provider's price per 1,000, rounded up, never above maxPayment.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Verdict", "ClaimDecision", "JobOffer", "ClaimPolicy", "claim_decision", "job_charge"]


class Verdict(str, Enum):
    CLAIM = "claim"
    LATER = "later"  # not now, but possibly once a window opens
    SKIP = "skip"    # never (wrong model, too cheap, too late)


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    verdict: Verdict
    reason: str
    not_before: int = 0  # LATER: the chain time from which to try again


@dataclass(frozen=True, slots=True)
class JobOffer:
    """What the policy looks at in an open job."""

    model_id: int
    max_payment: int
    deadline: int
    bond: int
    priority_provider: str
    priority_until: int


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    served_models: frozenset[int]
    min_payment: int
    capacity: int
    min_time_to_deadline: float


def claim_decision(offer: JobOffer, policy: ClaimPolicy, *, in_progress: int, now: int, free_stake: int,
                   provider: str) -> ClaimDecision:
    """Whether to claim ``offer`` now; ``in_progress`` counts jobs claimed and not yet submitted."""
    if offer.model_id not in policy.served_models:
        return ClaimDecision(Verdict.SKIP, f"model {offer.model_id} is not served here")
    if offer.max_payment < policy.min_payment:
        return ClaimDecision(Verdict.SKIP, f"maxPayment {offer.max_payment} is below the floor {policy.min_payment}")
    if offer.deadline - now < policy.min_time_to_deadline:
        return ClaimDecision(Verdict.SKIP, f"{max(0, offer.deadline - now)} s to the deadline, "
                                           f"need {policy.min_time_to_deadline:.0f} s")
    if offer.bond > free_stake:
        return ClaimDecision(Verdict.SKIP, f"bond {offer.bond} exceeds the free stake {free_stake}")
    exclusive = offer.priority_provider.lower() not in ("0x" + "0" * 40, provider.lower())
    if exclusive and now < offer.priority_until:
        if offer.priority_until > offer.deadline - policy.min_time_to_deadline:
            return ClaimDecision(Verdict.SKIP, "the priority window leaves too little time before the deadline")
        return ClaimDecision(Verdict.LATER, "another provider's exclusive claim window is open", offer.priority_until)
    if in_progress >= policy.capacity:
        return ClaimDecision(Verdict.LATER, f"all {policy.capacity} slots are busy")
    return ClaimDecision(Verdict.CLAIM, "matches the policy")


def job_charge(tokens: int, price_per_1k_tokens: int, max_payment: int) -> int:
    """``ceil(tokens * price / 1000)``, capped at ``max_payment``."""
    if tokens < 0 or price_per_1k_tokens < 0 or max_payment < 0:
        raise ValueError("tokens, price and maxPayment must be >= 0")
    return min(max_payment, -(-tokens * price_per_1k_tokens // 1000))
