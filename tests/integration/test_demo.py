"""The README demo end to end: ``scripts/demo.py`` as a user runs it, as a subprocess.

The one slow end-to-end test: a real anvil, three embedded IPFS nodes, the
real SmolLM2 model on llama.cpp, the gateway, the provider daemon, the agent
runtime, the indexer and the CLI. Nothing is skipped; ``--workdir`` keeps the
demo's files in the test's folder and ``--summary`` writes its outcome as JSON,
which the test checks against the printed lines and against the fee rule
computed here on its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nodeai.chain.fees import split_payment

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROTOCOL_FEE_BPS = 250   # DeployParams' default, which the demo deploys with
MODEL_SHARE_BPS = 1_000  # the publisher's share in the demo


def gone(pid: int) -> bool:
    """The process ``pid`` no longer runs (or is a zombie nobody reaped, or the pid was reused by another program)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state == "Z" or not (b"anvil" in cmdline or b"nodeai.indexer" in cmdline)


def test_demo_runs_the_whole_marketplace_and_everything_settles(tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEAI_NODE__")}
    # NOTE: cwd is the test's folder: the embedded kubo library writes ./kubo.log before it is redirected.
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", str(tmp_path / "work"),
         "--summary", str(summary_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{out[-4000:]}\n{err[-4000:]}"
    assert "Traceback" not in out + err, err[-2000:]

    summary = json.loads(summary_file.read_text())
    assert summary["ok"] is True

    # 2-3: both models went from the publisher's IPFS node to the provider's and were registered
    llm, embedder = summary["model"], summary["embedder"]
    assert llm["artifact_cid"].startswith("Qm") and llm["size"] > 90_000_000 and embedder["size"] > 20_000_000
    assert f"provider fetched model #{llm['id']} {llm['artifact_cid']} (98 MB) from the publisher over IPFS" in out
    assert f"provider fetched model #{embedder['id']} {embedder['artifact_cid']} (23 MB)" in out
    assert "4 transactions (approve, register, setModelPrice, setModelPrice)" in out
    assert "the daemon restarted: 1 transaction (setModelPrice)" in out, "re-registration is not idempotent"

    # 4: paid chat completions and embeddings, each with a verified receipt; one redemption, one root
    inference = summary["inference"]
    assert inference["requests"] == 4 and inference["vouchers"] == 2
    # NOTE: a settlement pass may run between two vouchers arriving, so the
    # daemon may redeem in more than one batch; what must hold is the amount.
    assert inference["redeem_txs"] >= 1 and inference["receipt_roots"] >= 1 and inference["receipts_committed"] == 4
    assert sum(inference["paid_by_model"].values()) == inference["paid"] > 0
    assert len(re.findall(r"signed by the provider: verified", out)) == 3
    assert len(re.findall(r"^ +A: \S", out, re.MULTILINE)) == 3, "an answer is missing"
    assert "vectors of 384 dimensions" in out

    # 5: the agent job ran on the model, its transcript verifies, it settled through escrow
    job = summary["agent_job"]
    assert job["state"] == "SETTLED" and job["status"] == "succeeded" and job["charge"] > 0
    assert job["transcript_cid"].startswith("Qm") and job["transcript_verified"] is True
    assert re.search(rf"job {job['job_id']} SETTLED: provider", out)
    assert "transcript chain verified" in out

    # 6: the receipt is proven on chain; every balance moved exactly as the fee rule says
    assert summary["receipt_verified"] is True and summary["balances_ok"] is True
    assert "balances match nodeai/chain/fees.py to the unit" in out
    balances = summary["balances"]
    # NOTE: the escrow splits each redeemed voucher (one per model) on its own
    splits = [split_payment(paid, MODEL_SHARE_BPS, PROTOCOL_FEE_BPS) for paid in inference["paid_by_model"].values()]
    job_split = split_payment(job["charge"], 0, PROTOCOL_FEE_BPS)
    changes = {role: b["after"] - b["before"] for role, b in balances.items()}
    assert changes["model owner"] == sum(s.model_owner for s in splits) > 0
    assert changes["treasury"] == sum(s.protocol_fee for s in splits) + job_split.protocol_fee > 0
    assert changes["provider"] == -500 * 10**6 + sum(s.provider for s in splits) + job_split.provider
    assert changes["requester"] == -5 * 10**6 - job["charge"]

    # 7: where to look next, then everything stopped
    assert re.search(r"explorer: http://127\.0\.0\.1:\d+/explorer/", out)
    assert "`nodeai jobs list` -> job 1 SETTLED; `nodeai receipts verify` -> valid" in out
    assert re.search(r"nodeai --rpc-url http://127\.0\.0\.1:\d+ --deployments \S+ --indexer-url \S+ jobs list", out)
    assert re.search(r"== done in [\d.]+ s: start-up [\d.]+ s, 1\. chain [\d.]+ s, .* 7\. explore [\d.]+ s", out)
    pids = [int(p) for p in re.findall(r"\(pid (\d+)", out)]
    assert len(pids) >= 2 and all(gone(pid) for pid in pids), "anvil or the indexer still runs"
    assert summary["total_s"] > 0
