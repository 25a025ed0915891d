"""The IPFS tool and transcript pinning on a real embedded IPFS node."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from nodeai.agents import AgentRuntime, load_spec, verify_transcript
from nodeai.agents.errors import TranscriptInvalid
from nodeai.ipfs import compute_cid

pytestmark = pytest.mark.integration


def ipfs_spec(rules: list[dict[str, Any]]) -> Any:
    return load_spec({
        "spec_version": 1, "name": "archivist", "tools": [{"type": "ipfs", "timeout_s": 0.5, "max_bytes": 10_000}],
        "planner": {"kind": "rules", "rules": rules},
        "policy": {"tool_retries": 1, "retry_backoff_s": 0.01},
    })  # fmt: skip


def test_put_then_get_by_cid_and_transcript_pinned(ipfs: Any, tmp_path: Path) -> None:
    spec = ipfs_spec([
        {"id": "put", "call": "ipfs.put", "args": {"data": {"report": "${input}", "n": 3}}, "save_as": "stored"},
        {"id": "get", "call": "ipfs.get", "args": {"cid": "${stored.cid}"}, "save_as": "back"},
        {"id": "done", "finish": {"cid": "${stored.cid}", "text": "${back.text}"}},
    ])  # fmt: skip
    runtime = AgentRuntime(tmp_path / "agents.db", artifacts=ipfs)
    result = runtime.run(spec, "weekly", job_id="archive-1")
    assert result.status == "succeeded", result.reason
    body = b'{"n":3,"report":"weekly"}'
    assert result.output == {"cid": compute_cid(body), "text": body.decode()}
    assert ipfs.get_bytes(result.output["cid"]) == body

    # the transcript is on IPFS under the CID in the result, and verifies against the root
    assert result.transcript_cid is not None
    pinned = ipfs.get_bytes(result.transcript_cid)
    assert verify_transcript(pinned, expected_root=result.transcript_root) == result.transcript_root
    document = json.loads(pinned)
    assert document == runtime.transcript("archive-1")
    assert document["header"]["spec_cid"] == compute_cid(spec.to_json())  # the spec was pinned too
    assert ipfs.get_bytes(document["header"]["spec_cid"]) == spec.to_json()

    # an edited copy is caught, and would have another CID anyway
    forged = copy.deepcopy(document)
    tool_entry = next(e for e in forged["entries"] if e["kind"] == "tool" and e["data"]["call"] == "ipfs.get")
    tool_entry["data"]["result"]["text"] = '{"n":4,"report":"weekly"}'
    with pytest.raises(TranscriptInvalid, match=f"step {tool_entry['seq']}: content was changed"):
        verify_transcript(forged, expected_root=result.transcript_root)
    assert compute_cid(json.dumps(forged).encode()) != result.transcript_cid


def test_missing_content_is_retried_then_reported_and_bad_cids_refused(ipfs: Any, tmp_path: Path) -> None:
    absent = compute_cid(b"nobody ever added this")
    spec = ipfs_spec([
        {"id": "bad", "call": "ipfs.get", "args": {"cid": "not-a-cid"}, "save_as": "bad", "on_error": "continue"},
        {"id": "missing", "call": "ipfs.get", "args": {"cid": absent}, "save_as": "missing"},
        {"id": "done", "finish": "unreachable"},
    ])  # fmt: skip
    runtime = AgentRuntime(tmp_path / "agents.db", artifacts=ipfs)
    result = runtime.run(spec, "x", job_id="missing")
    assert result.status == "failed"
    assert f"rule 'missing': ipfs.get failed: ipfs.get: {absent} not found within 0.5 s" in result.reason
    assert "after 2 attempts" in result.reason
    tries = [(e["data"]["args"]["cid"], e["data"]["attempt"], e["data"]["retryable"])
             for e in runtime.transcript("missing")["entries"] if e["kind"] == "tool"]  # fmt: skip
    assert tries == [("not-a-cid", 1, False), (absent, 1, True), (absent, 2, True)]
