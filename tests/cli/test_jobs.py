"""``nodeai jobs``: real jobs on anvil, listed through the real indexer, changed by CLI transactions."""

from __future__ import annotations

import json
from pathlib import Path

from nodeai.ipfs import EmbeddedKuboStore
from tests.cli.conftest import ONE, Chain, Indexer, assert_user_error, run, run_json


def _submitted_job(chain: Chain, max_payment: int = 5 * ONE, charge: int = 2 * ONE) -> int:
    market = chain.market
    job_id, _ = market.create_job(chain.model_id, b"rebalance to 60/40", max_payment)
    market.claim(job_id)
    market.submit(job_id, b"moved 10 TUSD", usage=1_234, charge=charge)
    return job_id


def test_list_mine_reads_the_indexer_and_filters_by_state(chain: Chain, indexer: Indexer, wallet: str) -> None:
    open_id, _ = chain.market.create_job(chain.model_id, b"list me", 3 * ONE)
    submitted_id = _submitted_job(chain)
    indexer.wait_synced()

    data = run_json("jobs", "list", "--mine")
    ids = [item["job_id"] for item in data["items"]]
    assert {open_id, submitted_id} <= set(ids)
    assert all(item["requester"] == wallet for item in data["items"])
    item = next(i for i in data["items"] if i["job_id"] == open_id)
    assert item["state"] == "OPEN" and item["max_payment"] == 3 * ONE and item["model_id"] == chain.model_id

    submitted = run_json("jobs", "list", "--state", "submitted", "--mine")["items"]
    assert submitted_id in [i["job_id"] for i in submitted] and all(i["state"] == "SUBMITTED" for i in submitted)

    text = run("jobs", "list", "--mine").stdout
    assert "max payment" in text and "3 TUSD" in text


def test_show_rebuilds_the_job_from_the_chain(chain: Chain, wallet: str) -> None:
    job_id = _submitted_job(chain, max_payment=5 * ONE, charge=2 * ONE)
    data = run_json("jobs", "show", str(job_id))
    assert data["job_id"] == job_id and data["state"] == "SUBMITTED"
    assert data["requester"] == wallet and data["provider"] == chain.market.address("provider")
    assert data["charge"] == 2 * ONE and data["usage"] == 1_234 and data["output_cid"].startswith("b")
    assert [e["event"] for e in data["events"]] == ["JobCreated", "JobClaimed", "JobSubmitted"]
    assert "nodeai jobs dispute" in data["next"]

    human = run("jobs", "show", str(job_id))
    assert human.exit_code == 0 and f"job {job_id}  SUBMITTED" in human.stdout and "2 TUSD" in human.stdout


def test_show_of_a_missing_job_is_a_user_error(chain: Chain, wallet: str) -> None:
    assert_user_error(run("jobs", "show", "999999"), "no job 999999", "nodeai jobs list")


def test_dispute_pins_the_evidence_then_the_arbiter_refunds(chain: Chain, wallet: str, home: Path) -> None:
    job_id = _submitted_job(chain)
    data = run_json("jobs", "dispute", str(job_id), "--reason", "the output ignores the 60/40 target")
    assert data["state"] == "DISPUTED" and data["arbitration_ends"] > chain.now()
    with EmbeddedKuboStore(home / "ipfs", offline=True) as store:
        evidence = json.loads(store.get_bytes(data["reason_cid"]))
    assert evidence == {"type": "nodeai.dispute", "job_id": job_id, "by": wallet, "reason": "the output ignores the 60/40 target"}
    assert run_json("jobs", "show", str(job_id))["state"] == "DISPUTED"

    before = chain.market.balance("requester")
    chain.sync_job(job_id)  # the CLI moved the job on: the arbiter needs the struct as the chain holds it
    chain.market.resolve(job_id, provider_wins=False)
    refund = run_json("jobs", "show", str(job_id))["refund"]
    assert refund["reason"] == "DISPUTE_LOST" and refund["refund"] == 5 * ONE and refund["slashed"] > 0
    assert chain.market.balance("requester") == before + refund["refund"] + refund["slashed"]


def test_dispute_refused_when_not_submitted_or_not_mine(chain: Chain, wallet: str) -> None:
    open_id, _ = chain.market.create_job(chain.model_id, b"not yet", 2 * ONE)
    assert_user_error(run("jobs", "dispute", str(open_id), "--reason-cid", "bafkreiexample0000000000"),
                      f"job {open_id} is OPEN", "hint:")
    assert_user_error(run("jobs", "dispute", str(open_id)), "exactly one of --reason")


def test_refund_cancels_an_open_job(chain: Chain, wallet: str) -> None:
    job_id, _ = chain.market.create_job(chain.model_id, b"changed my mind", 4 * ONE)
    before = chain.market.balance("requester")
    data = run_json("jobs", "refund", str(job_id))
    assert data == data | {"job_id": job_id, "state": "REFUNDED", "how": "cancelled", "refund": 4 * ONE, "slashed": 0}
    assert chain.market.balance("requester") == before + 4 * ONE
    assert_user_error(run("jobs", "refund", str(job_id)), f"job {job_id} is REFUNDED")


def test_refund_of_a_claimed_job_past_its_deadline_slashes_the_provider(chain: Chain, wallet: str) -> None:
    job_id, _ = chain.market.create_job(chain.model_id, b"never delivered", 5 * ONE, duration=600)
    chain.market.claim(job_id)
    assert_user_error(run("jobs", "refund", str(job_id)), "CLAIMED", "running on")  # before the deadline: not allowed
    chain.advance(601)
    before = chain.market.balance("requester")
    data = run_json("jobs", "refund", str(job_id))
    assert data["how"] == "expired" and data["refund"] == 5 * ONE and data["slashed"] > 0
    assert chain.market.balance("requester") == before + data["refund"] + data["slashed"]


def test_finalize_after_the_challenge_window(chain: Chain, wallet: str) -> None:
    job_id = _submitted_job(chain, max_payment=5 * ONE, charge=2 * ONE)
    assert_user_error(run("jobs", "finalize", str(job_id)), "cannot be finalized now", "challenge window open")
    chain.advance(chain.deployment.params["challenge_window"] + 1)
    data = run_json("jobs", "finalize", str(job_id))
    assert data["state"] == "SETTLED" and data["charge"] == 2 * ONE and data["refund"] == 3 * ONE
    assert data["provider_amount"] + data["model_owner_amount"] + data["protocol_fee"] == 2 * ONE
    assert run_json("jobs", "show", str(job_id))["settlement"]["providerAmount"] == data["provider_amount"]
