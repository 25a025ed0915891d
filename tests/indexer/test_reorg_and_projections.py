"""Pure parts of the indexer: reorg walk-back and the projection folds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodeai.chain.jobs import Job, JobState
from nodeai.indexer.projections import apply, entity_of, job_struct, rebuild_entity
from nodeai.indexer.reorg import find_fork_point, parent_links_ok
from nodeai.indexer.store import EventRow

A = "0x" + "aa" * 20
B = "0x" + "bb" * 20


@st.composite
def forked_chains(draw):
    length = draw(st.integers(min_value=1, max_value=60))
    fork = draw(st.integers(min_value=-1, max_value=length - 1))  # -1: they share nothing
    new_length = draw(st.integers(min_value=max(fork + 1, 0), max_value=length + 10))
    ours = {h: f"ours-{h}" if h > fork else f"common-{h}" for h in range(length)}
    theirs = {h: f"theirs-{h}" if h > fork else f"common-{h}" for h in range(new_length)}
    kept = draw(st.sets(st.sampled_from(range(length)), min_size=1))
    return {h: ours[h] for h in kept}, theirs, fork, length - 1


@given(forked_chains())
def test_fork_point_is_the_highest_kept_block_both_chains_share(case):
    stored, canonical, fork, tip = case
    found = find_fork_point(stored, canonical.get, tip)
    shared = [h for h in stored if h <= fork]
    assert found == (max(shared) if shared else None)
    if found is not None:
        assert canonical[found] == stored[found]


def test_parent_links():
    headers = [{"hash": "h1", "parentHash": "h0"}, {"hash": "h2", "parentHash": "h1"}]
    assert parent_links_ok("h0", headers)
    assert not parent_links_ok("hX", headers)
    assert not parent_links_ok("h0", [headers[0], {"hash": "h2", "parentHash": "other"}])


def created(job_id: int = 1, **overrides) -> dict:
    return {
        "jobId": job_id, "requester": A, "modelId": 1, "inputCid": "bafy-input", "inputHash": "0x" + "01" * 32,
        "maxPayment": 10, "deadline": 100, "priorityProvider": "0x" + "00" * 20, "priorityUntil": 0,
        "modelOwner": B, "revenueShareBps": 1_000, "protocolFeeBps": 250, "challengeWindow": 60, "bond": 2,
    } | overrides  # fmt: skip


JOB_STREAM = [
    ("JobCreated", created()),
    ("JobClaimed", {"jobId": 1, "provider": B, "bond": 2}),
    ("JobSubmitted", {"jobId": 1, "provider": B, "outputCid": "bafy-out", "outputHash": "0x" + "02" * 32,
                      "usage": 7, "charge": 4, "challengeEnds": 160}),
    ("JobSettled", {"jobId": 1, "requester": A, "provider": B, "modelId": 1, "outputHash": "0x" + "02" * 32,
                    "charge": 4, "providerAmount": 3, "modelOwnerAmount": 1, "protocolFee": 0, "refund": 6}),
]  # fmt: skip


def test_job_document_follows_the_lifecycle_and_keeps_the_contract_struct():
    doc = None
    for block, (name, args) in enumerate(JOB_STREAM, start=10):
        assert entity_of(name, args) == ("job", "1")
        doc = apply("job", doc, name, args, block)
        struct = job_struct(doc)
        assert isinstance(struct, Job) and struct.state.name == doc["state"]
    assert doc["state"] == "SETTLED" and doc["output_cid"] == "bafy-out" and doc["usage"] == 7
    assert doc["settlement"]["providerAmount"] == 3
    assert job_struct(doc).state is JobState.SETTLED


def test_rebuilding_from_events_equals_the_incremental_fold():
    events = [EventRow(10 + i, 0, "0x", "0x", "JobMarket", name, args, "job", "1") for i, (name, args) in enumerate(JOB_STREAM)]
    incremental = None
    for e in events:
        incremental = apply("job", incremental, e.name, e.args, e.block_number)
    rebuilt = rebuild_entity("job", "1", events[:2])
    assert rebuilt.doc["state"] == "CLAIMED" and rebuilt.updated_block == 11
    assert rebuild_entity("job", "1", events).doc == incremental
    assert rebuild_entity("job", "1", []) is None


def test_provider_channel_model_and_receipt_documents():
    p = apply("provider", None, "ProviderRegistered", {"provider": A, "endpoint": "http://x", "peerId": "p", "stake": 100}, 1)
    p = apply("provider", p, "ModelServed", {"provider": A, "modelId": 3, "pricePer1kTokens": 5}, 2)
    p = apply("provider", p, "StakeBonded", {"provider": A, "market": B, "amount": 20, "bonded": 20}, 3)
    p = apply("provider", p, "ProviderSlashed", {"provider": A, "recipient": B, "amount": 20, "stake": 80, "bonded": 0,
                                                 "lostDispute": True}, 4)  # fmt: skip
    assert (p["stake"], p["bonded"], p["disputes_lost"], p["total_slashed"], p["models"]) == (80, 0, 1, 20, {"3": 5})
    p = apply("provider", p, "ModelServed", {"provider": A, "modelId": 3, "pricePer1kTokens": 0}, 5)
    assert p["models"] == {}

    c = apply("channel", None, "Deposited", {"payer": A, "provider": B, "amount": 50, "balance": 50}, 1)
    c = apply("channel", c, "VoucherRedeemed", {"payer": A, "provider": B, "modelId": 3, "cumulativeAmount": 20, "paid": 20,
                                                "providerAmount": 18, "modelOwner": B, "modelOwnerAmount": 2,
                                                "protocolFee": 0, "balance": 30}, 2)  # fmt: skip
    c = apply("channel", c, "WithdrawalRequested", {"payer": A, "provider": B, "unlockAt": 999}, 3)
    assert (c["balance"], c["unlock_at"], c["redeemed"], c["total_redeemed"]) == (30, 999, {"3": 20}, 20)
    assert entity_of("Deposited", {"payer": A, "provider": B}) == ("channel", f"{A}:{B}")

    m = apply("model", None, "ModelRegistered", {"modelId": 3, "owner": A, "kind": 1, "baseModelId": 2, "artifactCid": "a",
                                                 "manifestCid": "", "pricePer1kTokens": 5, "revenueShareBps": 100}, 1)  # fmt: skip
    m = apply("model", m, "ModelTermsChanged", {"modelId": 3, "pricePer1kTokens": 6, "revenueShareBps": 900,
                                                "shareEffectiveAt": 777}, 2)  # fmt: skip
    assert (m["kind"], m["revenue_share_bps"], m["pending_revenue_share_bps"], m["share_effective_at"]) == ("agent", 100, 900, 777)
    m = apply("model", m, "ModelVersionPublished", {"modelId": 3, "version": 2, "artifactCid": "b", "manifestCid": ""}, 3)
    assert [v["version"] for v in m["versions"]] == [1, 2] and m["artifact_cid"] == "b"
    assert entity_of("OwnershipTransferred", {}) is None
