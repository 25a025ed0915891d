"""The treasury agent on a real anvil: rebalancing with real ERC-20 transfers inside the policy,
spend caps, allow-lists, approvals (also across a killed process), and RPC failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from eth_account import Account
from fastapi import FastAPI
from fastapi.testclient import TestClient

from nodeai.agents import AgentRuntime, RuntimeStore, Tool, ToolContext, TxIntent, approvals_router, function, verify_transcript
from nodeai.agents.errors import ApprovalClosed
from nodeai.chain.anvil import free_port
from nodeai.chain.client import Transactor
from nodeai.ipfs import EmbeddedKuboStore
from tests.agents.conftest import CHAIN_ID, DAY, ONE, Chain, treasury_spec, wait_until

pytestmark = pytest.mark.integration


def runtime_for(chain: Chain, store_path: Path, **kwargs: Any) -> AgentRuntime:
    kwargs.setdefault("rpc_urls", {CHAIN_ID: chain.url})
    return AgentRuntime(store_path, wallet=chain.agent, poll_interval_s=0.05, **kwargs)


def kinds(transcript: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in transcript["entries"]]


def policy_entries(transcript: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["data"] for e in transcript["entries"] if e["kind"] == "policy"]


def test_rules_agent_rebalances_to_60_40_with_a_real_transfer(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    runtime = runtime_for(chain, store_path)
    result = runtime.run(treasury_spec(chain, token), "Rebalance to 60/40", job_id="rebalance-1")

    assert result.status == "succeeded", result.reason
    assert result.output == {"moved": 400 * ONE, "total": 1_000 * ONE, "note": "balanced"}
    assert chain.balances(token) == (600 * ONE, 400 * ONE)
    transcript = runtime.transcript("rebalance-1")
    assert verify_transcript(transcript, expected_root=result.transcript_root) == result.transcript_root
    sent = [e["data"]["result"] for e in transcript["entries"] if e["kind"] == "tool" and e["data"]["call"] == "evm.erc20_transfer"]
    assert len(sent) == 1 and sent[0]["status"] == "success"
    assert chain.w3.eth.get_transaction_receipt(sent[0]["tx_hash"])["status"] == 1
    assert all(p["verdict"] == "allow" for p in policy_entries(transcript))
    assert kinds(transcript)[0] == "job" and kinds(transcript)[-1] == "finish"

    # a second job finds the split in place and sends nothing
    again = runtime.run(treasury_spec(chain, token), "Rebalance to 60/40", job_id="rebalance-2")
    assert again.status == "succeeded" and again.output["moved"] == 0
    assert chain.balances(token) == (600 * ONE, 400 * ONE)
    # the same job id is not run twice: its stored result comes back
    assert runtime.run(treasury_spec(chain, token), "Rebalance to 60/40", job_id="rebalance-1") == result


def test_spend_cap_blocks_the_same_agent_across_jobs(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    spec = treasury_spec(chain, token, cap=500 * ONE)
    runtime = runtime_for(chain, store_path)
    assert runtime.run(spec, "Rebalance to 60/40").status == "succeeded"  # moves 400 of the 500 cap
    assert chain.balances(token) == (600 * ONE, 400 * ONE)

    # NOTE: top the agent wallet up so that the split needs another 200: 600 in one day, above the cap
    Transactor(chain.w3, chain.deployer).send(token.functions.mint(chain.agent.address, 500 * ONE), "top up")
    blocked = runtime.run(spec, "Rebalance to 60/40", job_id="over-cap")
    assert blocked.status == "failed"
    assert "policy.spend_caps[0].max_amount" in blocked.reason and "above the cap" in blocked.reason
    assert chain.balances(token) == (1_100 * ONE, 400 * ONE)  # nothing moved
    denied = [p for p in policy_entries(runtime.transcript("over-cap")) if p["verdict"] == "deny"]
    assert denied and denied[0]["rule"] == "policy.spend_caps[0].max_amount"


def test_single_transfer_above_the_cap_is_refused_whatever_the_workflow_asks(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    result = runtime_for(chain, store_path).run(treasury_spec(chain, token, cap=300 * ONE), "Rebalance to 60/40")
    assert result.status == "failed" and "above the cap of 300000000" in result.reason
    assert chain.balances(token) == (1_000 * ONE, 0)


def test_disallowed_contract_function_and_uncapped_token_are_refused(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    other = chain.new_token(agent_balance=1_000 * ONE)
    market = chain.deployment.address("JobMarket")
    rules = [
        {"id": "foreign", "call": "evm.transact", "args": {"contract": market, "function": "setTreasury", "args": [chain.ops],
         "abi": chain.deployment.contracts["JobMarket"]["abi"]}, "save_as": "a", "on_error": "continue"},
        {"id": "other-token", "call": "evm.erc20_transfer", "args": {"token": other.address, "to": chain.ops, "amount": 1},
         "save_as": "b", "on_error": "continue"},
        {"id": "approve", "call": "evm.transact", "args": {"contract": token.address, "function": "approve",
         "args": [chain.ops, 5]}, "save_as": "c", "on_error": "continue"},
        {"id": "done", "finish": {"a": "${a.error}", "b": "${b.error}", "c": "${c.error}"}},
    ]  # fmt: skip
    # NOTE: the second token is allowed as a contract but has no spend cap
    extra = {"contracts": [
        {"chain_id": CHAIN_ID, "address": token.address, "functions": ["transfer(address,uint256)"]},
        {"chain_id": CHAIN_ID, "address": other.address, "functions": ["*"]},
    ]}  # fmt: skip
    runtime = runtime_for(chain, store_path)
    result = runtime.run(treasury_spec(chain, token, rules=rules, extra_policy=extra), "go", job_id="refusals")
    assert result.status == "succeeded", result.reason
    assert f"contract {market} on chain {CHAIN_ID} is not in the allow-list" in result.output["a"]
    assert f"no spend cap for {other.address}" in result.output["b"]
    assert "is not allowed (allowed: transfer(address,uint256))" in result.output["c"]
    assert chain.balances(token) == (1_000 * ONE, 0) and chain.balances(other) == (1_000 * ONE, 0)
    assert token.functions.allowance(chain.agent.address, chain.ops).call() == 0
    rules_hit = [p["rule"] for p in policy_entries(runtime.transcript("refusals")) if p["verdict"] == "deny"]
    assert rules_hit == ["policy.contracts", "policy.spend_caps", "policy.contracts"]


def test_transfer_above_threshold_waits_then_completes_after_approval_through_the_api(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    spec = treasury_spec(chain, token, approval_above=100 * ONE)
    runtime = runtime_for(chain, store_path)
    parked = runtime.run(spec, "Rebalance to 60/40", job_id="needs-approval", wait=False)
    assert parked.status == "waiting_approval"
    assert chain.balances(token) == (1_000 * ONE, 0)

    app = FastAPI()
    app.include_router(approvals_router(runtime.approvals), prefix="/agents")
    with TestClient(app) as http:
        listed = http.get("/agents/approvals").json()
        assert len(listed) == 1 and listed[0]["job_id"] == "needs-approval"
        assert "400000000 units of" in listed[0]["summary"] and "threshold 100000000" in listed[0]["summary"]
        approval_id = listed[0]["id"]
        assert http.get(f"/agents/approvals/{approval_id}").json()["status"] == "pending"
        assert http.get("/agents/approvals/ap_nope").status_code == 404
        decided = http.post(f"/agents/approvals/{approval_id}/approve", json={"by": "alice", "note": "quarterly"})
        assert decided.status_code == 200 and decided.json()["status"] == "approved"
        again = http.post(f"/agents/approvals/{approval_id}/deny", json={"by": "mallory"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "approval_approved"

    done = runtime.resume("needs-approval")
    assert done.status == "succeeded", done.reason
    assert chain.balances(token) == (600 * ONE, 400 * ONE)
    transcript = runtime.transcript("needs-approval")
    verify_transcript(transcript, expected_root=done.transcript_root)
    approvals = [e["data"] for e in transcript["entries"] if e["kind"] == "approval"]
    assert approvals == [{"approval_id": approval_id, "status": "approved", "by": "alice", "note": "quarterly"}]


def test_denied_approval_fails_the_job_cleanly(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    runtime = runtime_for(chain, store_path)
    parked = runtime.run(treasury_spec(chain, token, approval_above=100 * ONE), "Rebalance to 60/40", wait=False)
    (pending,) = runtime.approvals.list()
    runtime.approvals.deny(pending.id, by="bob", note="not this week")
    with pytest.raises(ApprovalClosed, match="already denied"):
        runtime.approvals.approve(pending.id)
    result = runtime.resume(parked.job_id)
    assert result.status == "failed"
    assert f"approval {pending.id} denied by bob: not this week" in result.reason
    assert chain.balances(token) == (1_000 * ONE, 0)


def test_unapproved_transfer_fails_at_the_job_deadline(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    runtime = runtime_for(chain, store_path)
    deadline = time.time() + 600
    spec = treasury_spec(chain, token, approval_above=100 * ONE)
    assert runtime.run(spec, "Rebalance to 60/40", job_id="late", deadline=deadline, wait=False).status == "waiting_approval"
    # NOTE: the same store seen after the deadline (a clock an hour ahead), nobody having decided
    later = runtime_for(chain, store_path, clock=lambda: time.time() + 3_600)
    result = later.resume("late")
    assert result.status == "failed"
    assert "was not given before the deadline" in result.reason
    assert [a.status for a in later.approvals.list(status=None)] == ["expired"]
    with pytest.raises(ApprovalClosed, match="already expired"):
        later.approvals.approve(later.approvals.list(status=None)[0].id)
    assert chain.balances(token) == (1_000 * ONE, 0)


def test_approval_survives_a_killed_process_and_the_job_completes_after_restart(chain: Chain, tmp_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    spec_file = tmp_path / "treasury-bot.json"
    spec_file.write_bytes(treasury_spec(chain, token, approval_above=100 * ONE).to_json())
    keystore = tmp_path / "wallet.json"
    keystore.write_text(json.dumps(Account.encrypt(chain.agent.key, "s3cret", kdf="pbkdf2", iterations=1_000)))
    state = tmp_path / "agents.db"
    repo = tmp_path / "agent-ipfs"  # NOTE: the agent process's own IPFS node (one process per repo)
    common = ["--state", str(state), "--rpc", f"{CHAIN_ID}={chain.url}", "--keystore", str(keystore), "--poll-s", "0.05",
              "--ipfs-repo", str(repo)]  # fmt: skip
    env = dict(os.environ, NODEAI_KEYSTORE_PASSWORD="s3cret")
    python = [sys.executable, "-m", "nodeai.agents"]

    first = subprocess.Popen([*python, "run", str(spec_file), "--input", "Rebalance to 60/40", "--job-id", "treasury-7", *common],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_until(state.exists, what="the runtime store")
        store = RuntimeStore(state)
        wait_until(lambda: store.jobs(("waiting_approval",)), what="the job parked for approval")
        assert first.poll() is None, "the agent process should be waiting for the approval"
        pending = store.approvals("pending")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stderr.close()  # type: ignore[union-attr]
    assert first.returncode == -signal.SIGKILL
    assert chain.balances(token) == (1_000 * ONE, 0)
    assert store.job("treasury-7").status == "waiting_approval"

    store.decide(pending[0].id, True, "alice", "approved while the agent was down")
    second = subprocess.run([*python, "resume", "treasury-7", *common, "--result", str(tmp_path / "result.json")],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert second.returncode == 0, second.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "succeeded" and result["output"]["moved"] == 400 * ONE
    assert chain.balances(token) == (600 * ONE, 400 * ONE)
    transcript = store.job("treasury-7").checkpoint["transcript"]  # type: ignore[index]
    verify_transcript(transcript, expected_root=result["transcript_root"])
    kinds_seen = kinds(transcript)
    assert kinds_seen.count("resume") == 1 and "approval" in kinds_seen
    transfers = [e for e in transcript["entries"] if e["kind"] == "tool" and e["data"]["call"] == "evm.erc20_transfer"
                 and "result" in e["data"]]  # fmt: skip
    assert len(transfers) == 1  # one transfer, sent by the restarted process
    with EmbeddedKuboStore(repo, offline=True) as node:  # the transcript the restarted process pinned
        pinned = node.get_bytes(result["transcript_cid"], timeout=10)
    assert json.loads(pinned) == transcript


class FlakyRpc:
    """A JSON-RPC proxy in front of anvil that answers the first ``failures`` requests with HTTP 503."""

    def __init__(self, upstream: str, failures: int):
        self.upstream = upstream
        self.failures = failures
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    payload, status = b'{"error": "upstream unavailable"}', 503
                else:
                    answer = requests.post(proxy.upstream, data=body, headers={"content-type": "application/json"}, timeout=30)
                    payload, status = answer.content, answer.status_code
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FlakyRpc":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_rpc_errors_are_retried_then_the_job_goes_on(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    with FlakyRpc(chain.url, failures=2) as rpc:
        runtime = runtime_for(chain, store_path, rpc_urls={CHAIN_ID: rpc.url})
        result = runtime.run(treasury_spec(chain, token), "Rebalance to 60/40", job_id="flaky")
    assert result.status == "succeeded", result.reason
    assert chain.balances(token) == (600 * ONE, 400 * ONE)
    failed = [e["data"] for e in runtime.transcript("flaky")["entries"] if e["kind"] == "tool" and "error" in e["data"]]
    assert [f["attempt"] for f in failed] == [1, 2] and all(f["retryable"] for f in failed)
    assert "HTTP 503" in failed[0]["error"]


def test_unreachable_rpc_is_retried_then_reported(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    dead = f"http://127.0.0.1:{free_port()}"  # NOTE: nothing listens there: connection refused
    runtime = runtime_for(chain, store_path, rpc_urls={CHAIN_ID: dead})
    result = runtime.run(treasury_spec(chain, token), "Rebalance to 60/40", job_id="dead-rpc")
    assert result.status == "failed"
    assert "rule 'mine': evm.erc20_balance failed" in result.reason and "RPC unreachable" in result.reason
    assert "after 3 attempts" in result.reason
    attempts = [e["data"]["attempt"] for e in runtime.transcript("dead-rpc")["entries"] if e["kind"] == "tool"]
    assert attempts == [1, 2, 3]
    assert chain.balances(token) == (1_000 * ONE, 0)


def test_job_refused_at_admission_when_the_runtime_lacks_a_tool(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    runtime = AgentRuntime(store_path, rpc_urls={})
    result = runtime.run(treasury_spec(chain, token), "Rebalance to 60/40")
    assert result.status == "failed"
    assert result.reason == f"job not admitted: no RPC for chain {CHAIN_ID} (tool 'evm')"
    assert result.steps == 0


def test_spend_ledger_window_is_per_agent(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=2_000 * ONE)
    runtime = runtime_for(chain, store_path)
    first = runtime.run(treasury_spec(chain, token, cap=500 * ONE, name="bot-a"), "Rebalance to 80/20")
    assert first.status == "succeeded" and first.output["moved"] == 400 * ONE
    assert runtime.store.spent("bot-a", CHAIN_ID, token.address, DAY) == 400 * ONE
    # NOTE: another agent on the same wallet has its own cap
    second = runtime.run(treasury_spec(chain, token, cap=500 * ONE, name="bot-b"), "Rebalance to 60/40")
    assert second.status == "succeeded" and second.output["moved"] == 400 * ONE
    assert runtime.store.spent("bot-b", CHAIN_ID, token.address, DAY) == 400 * ONE


class CrashAfterSend(Tool):
    """Sends a transfer through the signer, then kills the run on its first call (the process 'dies'
    between the broadcast and the checkpoint that would record the result)."""

    name = "payout"

    def __init__(self, token: Any, to: str):
        self.token, self.to, self.calls = token, to, 0

    @function("Pay a fixed amount", effect="write")
    def pay(self, ctx: ToolContext, amount: int) -> dict[str, Any]:
        self.calls += 1
        data = bytes.fromhex(self.token.encode_abi("transfer", [self.to, amount])[2:])
        receipt = ctx.signer.send(TxIntent(CHAIN_ID, self.token.address, data), ctx)  # type: ignore[union-attr]
        if self.calls == 1:
            raise SystemExit("simulated crash right after the broadcast")
        return receipt


def test_a_write_repeated_after_a_crash_is_sent_once(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    payout = CrashAfterSend(token, chain.ops)
    spec = treasury_spec(chain, token, rules=[
        {"id": "pay", "call": "payout.pay", "args": {"amount": 100 * ONE}, "save_as": "tx"},
        {"id": "done", "finish": "${tx.tx_hash}"},
    ], tools=[{"type": "custom", "name": "payout"}])  # fmt: skip
    runtime = runtime_for(chain, store_path, custom_tools={"payout": payout})
    with pytest.raises(SystemExit):
        runtime.run(spec, "pay", job_id="crashy")
    assert chain.balances(token) == (900 * ONE, 100 * ONE)
    assert runtime.store.job("crashy").checkpoint["state"]["pending"]["action_key"] == "crashy:1:payout.pay"  # type: ignore[index]

    result = runtime_for(chain, store_path, custom_tools={"payout": payout}).resume("crashy")
    assert result.status == "succeeded", result.reason
    assert payout.calls == 2 and chain.balances(token) == (900 * ONE, 100 * ONE)  # the call ran again, the transfer did not
    assert chain.w3.eth.get_transaction_receipt(result.output)["status"] == 1
    assert runtime.store.spent("treasury-bot", CHAIN_ID, token.address, DAY) == 100 * ONE
