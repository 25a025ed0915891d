"""``python -m nodeai.agents`` in-process: create, validate, approvals, verify (the process-level run and
resume are exercised by the restart test in test_treasury.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeai.agents import AgentRuntime, RuntimeStore, load_spec
from nodeai.agents.__main__ import main


def test_create_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["create", "treasury-bot", "--tools", "rpc,sql,ipfs", "--budget", "50"]) == 0
    spec_text = capsys.readouterr().out
    spec = load_spec(spec_text)
    assert spec.name == "treasury-bot" and spec.policy.budget.payment_units == 50
    path = tmp_path / "spec.json"
    path.write_text(spec_text)
    assert main(["validate", str(path)]) == 0
    assert "treasury-bot: valid agent spec v1, sha256 0x" in capsys.readouterr().out
    broken = json.loads(spec_text) | {"max_steps": 0}
    path.write_text(json.dumps(broken))
    assert main(["validate", str(path)]) == 2
    assert "max_steps: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_approvals_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "agents.db"
    store = RuntimeStore(state)
    first = store.request_approval(job_id="j", action_key="j:1:evm.erc20_transfer", agent="bot", summary="send 5",
                                   request={"to": "0x0"}, request_hash="0x1", deadline=None)  # fmt: skip
    second = store.request_approval(job_id="j", action_key="j:2:evm.erc20_transfer", agent="bot", summary="send 6",
                                    request={"to": "0x0"}, request_hash="0x2", deadline=None)  # fmt: skip
    assert main(["approvals", "list", "--state", str(state)]) == 0
    assert [a["id"] for a in json.loads(capsys.readouterr().out)] == [first.id, second.id]
    assert main(["approvals", "approve", first.id, "--state", str(state), "--by", "alice", "--note", "ok"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "approved"
    assert main(["approvals", "deny", second.id, "--state", str(state), "--by", "bob"]) == 0
    capsys.readouterr()
    assert main(["approvals", "approve", second.id, "--state", str(state)]) == 2
    assert "is already denied" in capsys.readouterr().err
    assert main(["approvals", "approve", "ap_missing", "--state", str(state)]) == 2
    assert "no approval 'ap_missing'" in capsys.readouterr().err

    spec = load_spec({"spec_version": 1, "name": "noop", "planner": {"kind": "rules", "rules": [{"id": "d", "finish": "ok"}]}})
    runtime = AgentRuntime(tmp_path / "run.db")
    result = runtime.run(spec, "x", job_id="noop-1")
    transcript = tmp_path / "transcript.json"
    transcript.write_text(json.dumps(runtime.transcript("noop-1")))
    assert main(["verify", str(transcript), "--root", result.transcript_root]) == 0
    assert f"root {result.transcript_root}" in capsys.readouterr().out
    edited = json.loads(transcript.read_text())
    edited["entries"][-1]["data"]["output"] = "forged"
    transcript.write_text(json.dumps(edited))
    assert main(["verify", str(transcript), "--root", result.transcript_root]) == 2
    assert "content was changed after it was recorded" in capsys.readouterr().err
