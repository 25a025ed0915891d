"""Projections: how each protocol event changes the view, as pure functions.

An event belongs to at most one entity, named by ``entity_of``; an entity's
document is the fold of ``apply`` over its events in chain order. The
indexer folds incrementally while ingesting, and after a reorg rebuilds each
touched entity by folding the events that remain, so both paths share this
one definition.

Kinds and keys: ``model`` (model id; agents are models of kind "agent"),
``provider`` (address), ``job`` (job id), ``channel`` ("payer:provider") and
``receipt_batch`` ("provider:root").
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from nodeai.chain.jobs import Job, JobState, RefundReason, apply_event
from nodeai.indexer.store import Entity, EventRow

Doc = dict[str, Any]

MODEL_EVENTS = {"ModelRegistered", "ModelVersionPublished", "ModelTermsChanged", "ModelOwnershipTransferred", "ModelDeprecated"}
PROVIDER_EVENTS = {
    "ProviderRegistered", "ProviderEndpointChanged", "ModelServed", "StakeAdded", "UnbondingStarted",
    "UnbondedWithdrawn", "StakeBonded", "StakeReleased", "ProviderSlashed",
}  # fmt: skip
JOB_EVENTS = {"JobCreated", "JobClaimed", "JobSubmitted", "JobDisputed", "DisputeResolved", "JobSettled", "JobRefunded"}
CHANNEL_EVENTS = {"Deposited", "WithdrawalRequested", "Withdrawn", "VoucherRedeemed"}

# NOTE: filterable top-level fields per kind (the API refuses any other filter).
FILTERS: dict[str, set[str]] = {
    "model": {"owner", "kind", "deprecated", "base_model_id"},
    "provider": {"registered"},
    "job": {"state", "requester", "provider", "model_id"},
    "channel": {"payer", "provider"},
    "receipt_batch": {"provider"},
}


def entity_of(name: str, args: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (kind, key) an event belongs to, or None for events no projection uses."""
    if name in MODEL_EVENTS:
        return "model", str(args["modelId"])
    if name in PROVIDER_EVENTS:
        return "provider", args["provider"]
    if name in JOB_EVENTS:
        return "job", str(args["jobId"])
    if name in CHANNEL_EVENTS:
        return "channel", f"{args['payer']}:{args['provider']}"
    if name == "ReceiptsCommitted":
        return "receipt_batch", f"{args['provider']}:{args['root']}"
    return None


def apply(kind: str, doc: Doc | None, name: str, args: Mapping[str, Any], block: int) -> Doc:
    """The entity's document after event ``name`` (``doc`` is None before its first event)."""
    return _APPLY[kind](dict(doc) if doc else None, name, args, block)


def _model(doc: Doc | None, name: str, a: Mapping[str, Any], block: int) -> Doc:
    if name == "ModelRegistered":
        return {
            "model_id": a["modelId"], "owner": a["owner"], "kind": "agent" if a["kind"] == 1 else "model",
            "base_model_id": a["baseModelId"], "version": 1, "artifact_cid": a["artifactCid"],
            "manifest_cid": a["manifestCid"], "price_per_1k_tokens": a["pricePer1kTokens"],
            "revenue_share_bps": a["revenueShareBps"], "pending_revenue_share_bps": None, "share_effective_at": None,
            "deprecated": False,
            "versions": [{"version": 1, "artifact_cid": a["artifactCid"], "manifest_cid": a["manifestCid"], "block": block}],
        }  # fmt: skip
    doc = _require(doc, name)
    if name == "ModelVersionPublished":
        doc["version"] = a["version"]
        doc["artifact_cid"], doc["manifest_cid"] = a["artifactCid"], a["manifestCid"]
        doc["versions"] = doc["versions"] + [
            {"version": a["version"], "artifact_cid": a["artifactCid"], "manifest_cid": a["manifestCid"], "block": block}
        ]
    elif name == "ModelTermsChanged":
        doc["price_per_1k_tokens"] = a["pricePer1kTokens"]
        if a["revenueShareBps"] > doc["revenue_share_bps"]:
            # NOTE: an increase applies at shareEffectiveAt (ModelRegistry.SHARE_INCREASE_DELAY).
            doc["pending_revenue_share_bps"], doc["share_effective_at"] = a["revenueShareBps"], a["shareEffectiveAt"]
        else:
            doc["revenue_share_bps"] = a["revenueShareBps"]
            doc["pending_revenue_share_bps"], doc["share_effective_at"] = None, None
    elif name == "ModelOwnershipTransferred":
        doc["owner"] = a["newOwner"]
    elif name == "ModelDeprecated":
        doc["deprecated"] = True
    return doc


def _provider(doc: Doc | None, name: str, a: Mapping[str, Any], block: int) -> Doc:
    if name == "ProviderRegistered":
        return {
            "address": a["provider"], "registered": True, "endpoint": a["endpoint"], "peer_id": a["peerId"],
            "stake": a["stake"], "bonded": 0, "unbonding": 0, "unbonding_ready_at": 0, "jobs_completed": 0,
            "jobs_failed": 0, "disputes_lost": 0, "total_slashed": 0, "models": {},
        }  # fmt: skip
    doc = _require(doc, name)
    if name == "ProviderEndpointChanged":
        doc["endpoint"], doc["peer_id"] = a["endpoint"], a["peerId"]
    elif name == "ModelServed":
        models = dict(doc["models"])
        if a["pricePer1kTokens"]:
            models[str(a["modelId"])] = a["pricePer1kTokens"]
        else:
            models.pop(str(a["modelId"]), None)
        doc["models"] = models
    elif name == "StakeAdded":
        doc["stake"] = a["stake"]
    elif name == "UnbondingStarted":
        doc["stake"], doc["unbonding"], doc["unbonding_ready_at"] = a["stake"], a["unbonding"], a["readyAt"]
    elif name == "UnbondedWithdrawn":
        doc["unbonding"] = 0
    elif name == "StakeBonded":
        doc["bonded"] = a["bonded"]
    elif name == "StakeReleased":
        doc["bonded"] = a["bonded"]
        doc["jobs_completed"] += 1 if a["completed"] else 0
    elif name == "ProviderSlashed":
        doc["stake"], doc["bonded"] = a["stake"], a["bonded"]
        doc["total_slashed"] += a["amount"]
        doc["disputes_lost" if a["lostDispute"] else "jobs_failed"] += 1
    return doc


def _job(doc: Doc | None, name: str, a: Mapping[str, Any], block: int) -> Doc:
    struct = None if doc is None else _struct_from_doc(doc)
    if name == "DisputeResolved":
        doc = _require(doc, name)
        doc["provider_won_dispute"] = a["providerWins"]
        return doc
    job = apply_event(struct, name, a)
    doc = dict(doc or {})
    doc.update(_doc_from_struct(job))
    if name == "JobCreated":
        doc.update(job_id=a["jobId"], input_cid=a["inputCid"], output_cid=None, usage=None, created_block=block,
                   settlement=None, refund=None, provider_won_dispute=None)  # fmt: skip
    elif name == "JobSubmitted":
        doc.update(output_cid=a["outputCid"], usage=a["usage"])
    elif name == "JobSettled":
        doc["settlement"] = {k: a[k] for k in ("charge", "providerAmount", "modelOwnerAmount", "protocolFee", "refund")}
    elif name == "JobRefunded":
        doc["refund"] = {"amount": a["refund"], "slashed": a["slashed"], "reason": RefundReason(a["reason"]).name.lower()}
    return doc


_STRUCT_FIELDS = (
    "requester", "model_id", "input_hash", "max_payment", "deadline", "priority_provider", "priority_until",
    "model_owner", "revenue_share_bps", "protocol_fee_bps", "challenge_window", "bond", "state", "provider",
    "charge", "output_hash", "window_ends",
)  # fmt: skip


def _doc_from_struct(job: Job) -> Doc:
    doc = {f: getattr(job, f) for f in _STRUCT_FIELDS}
    doc["state"] = job.state.name
    doc["input_hash"] = "0x" + job.input_hash.hex()
    doc["output_hash"] = "0x" + job.output_hash.hex()
    return doc


def _struct_from_doc(doc: Doc) -> Job:
    values = {f: doc[f] for f in _STRUCT_FIELDS}
    values["state"] = JobState[doc["state"]]
    values["input_hash"] = bytes.fromhex(doc["input_hash"][2:])
    values["output_hash"] = bytes.fromhex(doc["output_hash"][2:])
    return Job(**values)


def job_struct(doc: Doc) -> Job:
    """The contract's ``Job`` struct of a job document: what a client passes to JobMarket calls."""
    return _struct_from_doc(doc)


def _channel(doc: Doc | None, name: str, a: Mapping[str, Any], block: int) -> Doc:
    doc = doc or {"payer": a["payer"], "provider": a["provider"], "balance": 0, "unlock_at": 0, "redeemed": {},
                  "total_redeemed": 0, "deposited": 0, "withdrawn": 0}  # fmt: skip
    if name == "Deposited":
        doc["balance"], doc["unlock_at"] = a["balance"], 0
        doc["deposited"] += a["amount"]
    elif name == "WithdrawalRequested":
        doc["unlock_at"] = a["unlockAt"]
    elif name == "Withdrawn":
        doc["balance"], doc["unlock_at"] = 0, 0
        doc["withdrawn"] += a["amount"]
    elif name == "VoucherRedeemed":
        redeemed = dict(doc["redeemed"])
        redeemed[str(a["modelId"])] = redeemed.get(str(a["modelId"]), 0) + a["paid"]
        doc["redeemed"], doc["balance"] = redeemed, a["balance"]
        doc["total_redeemed"] += a["paid"]
    return doc


def _receipt_batch(doc: Doc | None, name: str, a: Mapping[str, Any], block: int) -> Doc:
    return {"provider": a["provider"], "root": a["root"], "count": a["count"], "tokens_in": a["tokensIn"],
            "tokens_out": a["tokensOut"], "amount": a["amount"], "from_timestamp": a["fromTimestamp"],
            "to_timestamp": a["toTimestamp"], "block_number": block}  # fmt: skip


def _require(doc: Doc | None, name: str) -> Doc:
    if doc is None:
        raise ValueError(f"{name} before the entity's first event: the event stream is missing a block")
    return doc


_APPLY: dict[str, Callable[[Doc | None, str, Mapping[str, Any], int], Doc]] = {
    "model": _model, "provider": _provider, "job": _job, "channel": _channel, "receipt_batch": _receipt_batch,
}  # fmt: skip


def rebuild_entity(kind: str, key: str, events: list[EventRow]) -> Entity | None:
    """An entity folded from scratch over its remaining events (after a reorg)."""
    doc = None
    for event in events:
        doc = apply(kind, doc, event.name, event.args, event.block_number)
    if doc is None:
        return None
    return Entity(kind, key, doc, events[0].block_number, events[-1].block_number)
