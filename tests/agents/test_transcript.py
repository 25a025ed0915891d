"""The hash-chained transcript: any edit, insertion, removal or reordering is detected."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeai.agents.errors import TranscriptInvalid
from nodeai.agents.transcript import Transcript, jsonable, root_bytes32, verify_transcript

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**256), 2**256) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
entries = st.lists(st.tuples(st.sampled_from(["model", "action", "policy", "tool", "finish"]), json_values),
                   min_size=1, max_size=6)  # fmt: skip
# NOTE: each example hashes whole transcripts; a quarter of the profile's examples keeps the
# folder fast on a 2-core box while `HYPOTHESIS_PROFILE=slow` still scales it up.
chained = settings(max_examples=max(25, settings.default.max_examples // 4))


def build(items: list[tuple[str, Any]]) -> Transcript:
    transcript = Transcript.start(job_id="j1", agent="bot", spec_cid="bafy", spec_hash="0x00", input_value="go",
                                  started_at_ms=1)  # fmt: skip
    for i, (kind, data) in enumerate(items):
        transcript.append(kind, i, {"value": data}, at_ms=1_000 + i)
    return transcript


@chained
@given(entries)
def test_an_untouched_transcript_verifies_and_round_trips_through_json(items: list[tuple[str, Any]]) -> None:
    transcript = build(items)
    document = json.loads(transcript.to_bytes())
    assert verify_transcript(document, expected_root=transcript.root) == transcript.root
    assert verify_transcript(transcript.to_bytes()) == transcript.root
    assert Transcript.from_document(document).root == transcript.root
    assert len(root_bytes32(transcript.root)) == 32


@chained
@given(entries, st.data())
def test_editing_any_entry_is_detected_at_that_entry(items: list[tuple[str, Any]], data: st.DataObject) -> None:
    document = build(items).to_document()
    index = data.draw(st.integers(0, len(items) - 1))
    field = data.draw(st.sampled_from(["data", "kind", "at_ms", "step"]))
    edited = copy.deepcopy(document)
    entry = edited["entries"][index]
    replacement = {"data": {"value": "forged"}, "kind": "forged", "at_ms": -1, "step": 10_000}[field]
    if entry[field] == replacement:
        replacement = {"data": {"value": "forged2"}, "kind": "forged2", "at_ms": -2, "step": 10_001}[field]
    entry[field] = replacement
    with pytest.raises(TranscriptInvalid) as caught:
        verify_transcript(edited)
    assert caught.value.step == index


@chained
@given(entries, st.data())
def test_a_rewritten_chain_still_fails_against_the_root_on_chain(items: list[tuple[str, Any]], data: st.DataObject) -> None:
    original = build(items)
    index = data.draw(st.integers(0, len(items) - 1))
    forged_items = list(items)
    forged_items[index] = (items[index][0], {"forged": True})
    forged = build(forged_items)  # NOTE: every hash recomputed: internally consistent
    assert verify_transcript(forged.to_document()) == forged.root
    with pytest.raises(TranscriptInvalid, match="differs from the expected root"):
        verify_transcript(forged.to_document(), expected_root=original.root)


@chained
@given(entries.filter(lambda items: len(items) >= 2), st.data())
def test_removing_or_reordering_entries_is_detected(items: list[tuple[str, Any]], data: st.DataObject) -> None:
    document = build(items).to_document()
    i = data.draw(st.integers(0, len(items) - 2))
    removed = copy.deepcopy(document)
    del removed["entries"][i]
    with pytest.raises(TranscriptInvalid):
        verify_transcript(removed)
    swapped = copy.deepcopy(document)
    swapped["entries"][i], swapped["entries"][i + 1] = swapped["entries"][i + 1], swapped["entries"][i]
    with pytest.raises(TranscriptInvalid):
        verify_transcript(swapped)
    truncated = copy.deepcopy(document)
    truncated["entries"] = truncated["entries"][: i + 1]
    with pytest.raises(TranscriptInvalid, match="stated root"):
        verify_transcript(truncated)


def test_editing_the_header_breaks_the_first_link() -> None:
    document = build([("model", 1)]).to_document()
    document["header"]["input_hash"] = "0x" + "11" * 32
    with pytest.raises(TranscriptInvalid, match="step 0: does not link"):
        verify_transcript(document)


@pytest.mark.parametrize("bad", [b"not json", json.dumps([1, 2]), {"header": {"version": 2}, "entries": []}])
def test_malformed_documents_are_rejected_with_a_reason(bad: Any) -> None:
    with pytest.raises(TranscriptInvalid):
        verify_transcript(bad)


def test_jsonable_makes_results_canonical() -> None:
    assert jsonable({"b": b"\x01\x02", 1: (1, 2), "f": float("nan"), "s": {3, 1}}) == {
        "b": "0x0102", "1": [1, 2], "f": "nan", "s": [1, 3],
    }  # fmt: skip
