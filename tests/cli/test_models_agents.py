"""``nodeai models`` and ``nodeai agents`` with the real embedded IPFS node, the real registry and the real agent runtime."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nodeai.chain.jobs import ZERO_ADDRESS
from nodeai.ipfs import EmbeddedKuboStore
from tests.cli.conftest import ONE, Chain, Indexer, assert_user_error, run, run_json


def _model_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path / "llm-small"
    folder.mkdir()
    files = {"model.gguf": os.urandom(700_000), "tokenizer.json": b'{"vocab": {"a": 1}}'}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder, files


def test_deploy_pins_registers_and_lists(chain: Chain, indexer: Indexer, wallet: str, home: Path, tmp_path: Path) -> None:
    folder, files = _model_folder(tmp_path)
    result = run("models", "deploy", str(folder), "--price", "0.002", "--share", "1000", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert "pinning llm-small" in result.stderr  # the progress bar
    registry = chain.market.models.functions
    assert registry.artifactCid(data["model_id"]).call() == data["artifact_cid"]
    assert registry.manifestCid(data["model_id"]).call() == data["manifest_cid"]
    info = registry.models(data["model_id"]).call()
    assert info[0] == wallet and info[4] == 2_000 and info[5] == 1_000

    with EmbeddedKuboStore(home / "ipfs", offline=True) as store:  # what the CLI pinned, verified by CID
        manifest = json.loads(store.get_bytes(data["manifest_cid"]))
        assert manifest["artifact"] == data["artifact_cid"] and manifest["format"] == "gguf"
        for entry in manifest["files"]:
            assert store.get_bytes(entry["cid"]) == files[entry["path"]]

    single = run_json("models", "deploy", str(folder / "model.gguf"), "--price", "2000", "--raw")
    with EmbeddedKuboStore(home / "ipfs", offline=True) as store:
        assert store.get_bytes(single["artifact_cid"]) == files["model.gguf"]

    indexer.wait_synced()
    listed = run_json("models", "list", "--mine")["items"]
    assert {m["model_id"] for m in listed} == {data["model_id"], single["model_id"]}
    assert all(m["owner"] == wallet and m["kind"] == "model" for m in listed)
    assert data["artifact_cid"] in run("models", "list", "--mine").stdout


def test_deploy_mistakes_are_user_errors(chain: Chain, wallet: str, tmp_path: Path) -> None:
    folder, _ = _model_folder(tmp_path)
    assert_user_error(run("models", "deploy", str(folder), "--price", "abc"), "not a number")
    assert run("models", "deploy", str(folder), "--price", "1", "--share", "6000").exit_code == 2
    assert_user_error(run("models", "deploy", str(tmp_path / "missing"), "--price", "1"), "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run("models", "deploy", str(empty), "--price", "1"), "holds no files")


def test_agents_create_pins_the_spec_and_registers_it(chain: Chain, indexer: Indexer, wallet: str, home: Path) -> None:
    data = run_json("agents", "create", "treasury-bot", "--tools=rpc,sql,ipfs", "--budget=50", "--model", str(chain.model_id),
                    "--system", "Keep 60/40.")  # fmt: skip
    info = chain.market.models.functions.models(data["agent_id"]).call()
    assert info[0] == wallet and info[1] == 1 and info[2] == chain.model_id  # owner, kind agent, base model
    assert chain.market.models.functions.artifactCid(data["agent_id"]).call() == data["spec_cid"]

    from nodeai.agents.spec import load_spec

    with EmbeddedKuboStore(home / "ipfs", offline=True) as store:
        spec = load_spec(store.get_bytes(data["spec_cid"]))
    assert spec.name == "treasury-bot" and spec.system_prompt == "Keep 60/40." and spec.base_model_id == chain.model_id
    assert sorted(t.type for t in spec.tools) == ["evm", "ipfs", "sql"] and spec.policy.budget.payment_units == 50 * ONE

    indexer.wait_synced()
    listed = run_json("agents", "list", "--mine")["items"]
    assert [(a["model_id"], a["name"]) for a in listed] == [(data["agent_id"], "treasury-bot")]


def test_agents_create_mistakes(chain: Chain, wallet: str) -> None:
    assert_user_error(run("agents", "create", "bot", "--tools=rpc,teleport", "--budget=5", "--model", str(chain.model_id)),
                      "unknown tool 'teleport'")
    assert_user_error(run("agents", "create", "bot", "--tools=rpc", "--budget=5", "--model", "999"), "not a registered model")
    assert_user_error(run("agents", "create", "Not A Name", "--budget=5", "--model", str(chain.model_id)), "not a valid agent name")
    assert_user_error(run("agents", "run", "nobody", "--input", "hi"), "no agent named 'nobody'")


ECHO_SPEC = {"spec_version": 1, "name": "echo-bot", "planner": {"kind": "rules", "rules": [
    {"id": "done", "finish": {"task": "${input}", "answer": "done"}}]}, "max_steps": 3}


class Provider(threading.Thread):
    """The provider's side of one agent job, by hand: the real agent runtime executes it, the result goes on chain.

    It has an IPFS node of its own, which the CLI's node dials (``NODEAI_IPFS_PEERS``)
    as it would a real provider's: the input and the spec travel from the CLI's node
    to this one, the output back, over loopback.
    """

    def __init__(self, chain: Chain, store: EmbeddedKuboStore, agent_id: int, workdir: Path):
        super().__init__(daemon=True)
        self.chain, self.store, self.agent_id, self.workdir = chain, store, agent_id, workdir
        self.error: BaseException | None = None
        self.result: Any = None

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def _serve(self) -> None:
        from nodeai.agents import AgentRuntime

        market, store = self.chain.market, self.store
        start = self.chain.w3.eth.block_number
        market.send("provider", market.providers.functions.setModelPrice(self.agent_id, 2_000), "serve the agent")
        deadline = time.monotonic() + 60
        while True:
            logs = market.market.events.JobCreated().get_logs(argument_filters={"modelId": self.agent_id}, from_block=start)
            if logs:
                created = logs[0]["args"]
                break
            assert time.monotonic() < deadline, "no job was created"
            time.sleep(0.1)
        job_id = created["jobId"]
        doc = json.loads(store.get_bytes(created["inputCid"], timeout=30))
        assert doc["kind"] == "agent" and doc["agent_id"] == self.agent_id
        runtime = AgentRuntime(self.workdir / "agents.db", artifacts=store)
        result = runtime.run(store.get_bytes(doc["spec_cid"], timeout=30), doc["input"], job_id=f"31337:{job_id}",
                             spec_cid=doc["spec_cid"])  # fmt: skip
        output_cid = store.add_bytes(result.document_bytes())
        self.result = result
        self.chain.sync_job(job_id)
        market.claim(job_id)
        root = bytes.fromhex(result.transcript_root.removeprefix("0x"))
        fn = market.market.functions.submitResult(job_id, market.jobs[job_id].as_tuple(), output_cid, root, 42, ONE)
        market.send("provider", fn, "submitResult")
        self.chain.advance(self.chain.deployment.params["challenge_window"] + 1)


def test_agents_run_follows_the_job_until_settled(chain: Chain, wallet: str, home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    spec_file = tmp_path / "echo.json"
    spec_file.write_text(json.dumps(ECHO_SPEC))
    with EmbeddedKuboStore(tmp_path / "provider-ipfs") as provider_store:
        monkeypatch.setenv("NODEAI_IPFS_PEERS", provider_store.multiaddrs()[0])
        agent = run_json("agents", "create", "echo-bot", "--spec", str(spec_file), "--budget", "5", "--model",
                         str(chain.model_id))  # fmt: skip
        provider = Provider(chain, provider_store, agent["agent_id"], tmp_path)
        provider.start()
        before = chain.market.balance("requester")
        result = run("agents", "run", "echo-bot", "--input", "Rebalance to 60/40", "--timeout", "60s")
        provider.join(timeout=30)
        transcript = json.loads(provider_store.get_bytes(provider.result.transcript_cid)) if provider.result else None
    assert provider.error is None, provider.error
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "OPEN" in result.stderr and "SUBMITTED" in result.stderr  # followed live
    assert "Rebalance to 60/40" in out and f"transcript: {provider.result.transcript_cid}" in out
    assert "receipt:" in out and "charged      1 TUSD of 5 TUSD locked" in out and "refunded     4 TUSD" in out
    assert chain.market.balance("requester") == before - ONE

    from nodeai.agents import verify_transcript

    verify_transcript(transcript, expected_root=provider.result.transcript_root)


def test_agents_run_json_until_created(chain: Chain, wallet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_file = tmp_path / "echo.json"
    spec_file.write_text(json.dumps(ECHO_SPEC | {"name": "quick-bot"}))
    agent = run_json("agents", "create", "quick-bot", "--spec", str(spec_file), "--budget", "2", "--model", str(chain.model_id))
    # the embedded node stops with the command: alone, it would hold the job's only input copy for no one
    before = chain.market.balance("requester")
    assert_user_error(run("agents", "run", "quick-bot", "--input", "hello", "--until", "created"),
                      "stops when this command returns", "--ipfs-api")
    assert chain.market.balance("requester") == before, "a job was created"
    monkeypatch.setenv("NODEAI_IPFS_PEERS", "/ip4/127.0.0.1/tcp/9")  # a peer named: allowed, with warnings
    warned = run("agents", "run", "quick-bot", "--input", "hello", "--until", "created", "--json")
    assert warned.exit_code == 0, warned.stderr
    assert "warning: --until created with the embedded IPFS node" in warned.stderr
    assert "lacks /p2p/" in warned.stderr  # NOTE: a peer address without its peer id cannot be checked
    run_json("jobs", "refund", str(json.loads(warned.stdout)["job_id"]))
    ignored = run("agents", "run", "quick-bot", "--input", "hello", "--until", "created", "--ipfs-api", "http://127.0.0.1:9")
    assert "--ipfs-peers / NODEAI_IPFS_PEERS is ignored with --ipfs-api" in ignored.stderr, ignored.stderr
    assert ignored.exit_code == 1 and chain.market.balance("requester") == before, "no kubo node there: nothing created"
    data = run_json("agents", "run", "quick-bot", "--input", "hello", "--until", "created")
    assert data["state"] == "OPEN" and data["max_payment"] == 2 * ONE and data["agent_id"] == agent["agent_id"]
    job = run_json("jobs", "show", str(data["job_id"]))
    assert job["input_cid"] == data["input_cid"] and job["provider"] == ZERO_ADDRESS
    assert run_json("jobs", "refund", str(data["job_id"]))["how"] == "cancelled"
