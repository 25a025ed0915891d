"""The local job records: written before side effects, every field round-trips, counts and active sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.chain.jobs import Job, JobState
from nodeai.node.state import Phase, StateStore, job_from_json, job_to_json

ADDR = "0x" + "ab" * 20


def job(**kw) -> Job:
    values = dict(requester=ADDR, model_id=1, input_hash=b"\x01" * 32, max_payment=10**30, deadline=2_000,
                  priority_provider="0x" + "00" * 20, priority_until=0, model_owner=ADDR, revenue_share_bps=1_000,
                  protocol_fee_bps=250, challenge_window=60, bond=5, state=JobState.OPEN, provider="0x" + "00" * 20,
                  charge=0, output_hash=b"\x00" * 32, window_ends=0)
    return Job(**(values | kw))


@given(st.integers(0, 2**256 - 1), st.sampled_from(list(JobState)), st.binary(min_size=32, max_size=32))
def test_job_struct_round_trips_with_its_commitment(amount: int, state: JobState, digest: bytes) -> None:
    original = job(max_payment=amount, state=state, output_hash=digest)
    back = job_from_json(job_to_json(original))
    assert back == original and back.commitment() == original.commitment()


def test_lifecycle_records(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "node.db")
    assert store.add_seen(7, job(), "bafkcid", 12) is True
    assert store.add_seen(7, job(), "bafkcid", 12) is False  # a redelivery after a restart
    store.record_tx(7, "claim", "0xaa", 3, Phase.CLAIMING)
    record = store.require(7)
    assert (record.phase, record.tx_hash, record.claim_sent_at is not None) == (Phase.CLAIMING, "0xaa", True)
    store.record_tx(7, "claim", "0xbb", 3, Phase.CLAIMING)  # a fee bump: same nonce, new hash
    assert store.tx_hashes(7, "claim") == ["0xaa", "0xbb"]
    store.update(7, phase=Phase.RESULT_STORED, output_cid="bafkout", output_hash="0x" + "11" * 32, usage=5,
                 charge=10**40)
    assert store.require(7).charge == 10**40 and store.require(7).has_result
    store.add_seen(8, job(), "bafk2", 13)
    store.update(8, phase=Phase.SKIPPED, reason="too cheap")
    assert [r.job_id for r in store.active()] == [7]
    assert store.counts()["result_stored"] == 1 and store.counts()["skipped"] == 1 and store.counts()["seen"] == 0
    with pytest.raises(ValueError, match="unknown job record fields"):
        store.update(7, colour="red")
    with pytest.raises(KeyError):
        store.update(99, phase=Phase.LOST)
    store.close()
    reopened = StateStore(tmp_path / "node.db")  # what a restart reads
    assert reopened.require(7).output_cid == "bafkout" and reopened.tx_hashes(7, "claim") == ["0xaa", "0xbb"]
    reopened.set_meta("provider", "31337:0xabc")
    assert reopened.get_meta("provider") == "31337:0xabc" and reopened.get_meta("absent") is None


def test_phase_steps_and_terminals() -> None:
    assert [p for p in Phase if p.step] == [Phase.CLAIMING, Phase.SUBMITTING, Phase.FINALIZING]
    assert {p for p in Phase if p.is_terminal} == {Phase.FINALIZED, Phase.REFUNDED, Phase.LOST, Phase.FAILED,
                                                   Phase.SKIPPED}
