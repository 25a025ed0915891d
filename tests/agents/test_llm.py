"""The llm planner with the real small model (SmolLM2-135M-Instruct on llama.cpp).

A 135M model mostly produces half-right or wrong actions: that is the point.
Whatever it outputs, valid or not, the job ends cleanly (succeeded, or failed
with a reason), stays inside its step and token limits, its transcript
verifies, and the spend cap holds on chain. The same model runs in-process
(`EngineModelClient`) and behind the real OpenAI-compatible gateway
(`OpenAIModelClient`, the official ``openai`` client).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from nodeai.agents import AgentResult, AgentRuntime, load_spec, verify_transcript
from nodeai.agents.model import EngineModelClient, OpenAIModelClient
from nodeai.serving.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from tests.agents.conftest import CHAIN_ID, ONE, Chain

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
CAP = 5 * ONE
TOKEN_BUDGET = 200  # NOTE: below one model call with this prompt (~230 tokens): the budget ends jobs after one call


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    # NOTE: one sequence and one thread: on a shared 2-core box extra compute threads spin against
    # each other (10x the CPU time per token); the agent loop sends one request at a time anyway.
    engine = LlamaCppEngine(LlamaCppConfig(model_id=MODEL, n_ctx=2048, n_seq_max=1, n_threads=1))
    engine.start_sync()
    yield engine
    engine.close_sync()


def llm_spec(token: Any, treasury: str, ops: str, *, json_schema: bool, max_steps: int = 2) -> Any:
    # NOTE: free text gets one chance (the parser's retries are covered by test_loop); constrained
    # JSON gets room for two addresses and a retry
    return load_spec({
        "spec_version": 1, "name": "treasury-chat", "model": MODEL,
        "system_prompt": "You manage a token treasury. The token is called usd; the accounts are treasury and ops.",
        "planner": {"kind": "llm", "max_tokens": 64 if json_schema else 32, "max_malformed": 2 if json_schema else 1,
                    "json_schema": json_schema, "max_arg_chars": 44},
        "tools": [{"type": "evm", "chain_id": CHAIN_ID, "functions": ["erc20_balance", "erc20_transfer"],
                   "contracts": {"usd": {"address": token.address}, "treasury": {"address": treasury},
                                 "ops": {"address": ops}}}],
        "policy": {"contracts": [{"chain_id": CHAIN_ID, "address": token.address, "functions": ["transfer(address,uint256)"]}],
                   "spend_caps": [{"chain_id": CHAIN_ID, "token": token.address, "max_amount": CAP, "period_s": 86_400}],
                   "budget": {"model_tokens": TOKEN_BUDGET}, "tool_retries": 0},
        "max_steps": max_steps,
    })  # fmt: skip


def check_clean_end(runtime: AgentRuntime, result: AgentResult, chain: Chain, token: Any, start: int) -> dict[str, Any]:
    assert result.status in ("succeeded", "failed")
    if result.status == "failed":
        assert result.reason and "Traceback" not in result.reason
    transcript = runtime.transcript(result.job_id)
    assert verify_transcript(transcript, expected_root=result.transcript_root) == result.transcript_root
    models = [e["data"] for e in transcript["entries"] if e["kind"] == "model" and "output" in e["data"]]
    assert len(models) == result.usage.model_calls >= 1
    assert result.usage.prompt_tokens == sum(m["usage"]["prompt_tokens"] for m in models)
    assert result.steps <= 2
    # NOTE: one call may start below the budget and end above it; no call starts above it
    assert sum(m["usage"]["prompt_tokens"] + m["usage"]["completion_tokens"] for m in models[:-1]) < TOKEN_BUDGET
    mine, _ = chain.balances(token)
    assert start - mine <= CAP, "the spend cap was exceeded"
    for entry in transcript["entries"]:
        if entry["kind"] == "tool" and entry["data"]["call"] == "evm.erc20_transfer" and "result" in entry["data"]:
            assert int(entry["data"]["args"]["amount"]) <= CAP
    return transcript


def test_real_model_outputs_never_break_the_loop_or_the_policy(engine: LlamaCppEngine, chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=1_000 * ONE)
    task = "Send 1000000000 usd from treasury to ops, then tell me the transaction hash."
    with EngineModelClient(engine) as client:
        runtime = AgentRuntime(store_path, model=client, wallet=chain.agent, rpc_urls={CHAIN_ID: chain.url})
        outcomes = []
        for json_schema in (True, False):  # grammar-constrained JSON, then free text the parser must cope with
            result = runtime.run(llm_spec(token, chain.agent.address, chain.ops, json_schema=json_schema), task,
                                 price_per_1k_tokens=2_000)  # fmt: skip
            transcript = check_clean_end(runtime, result, chain, token, 1_000 * ONE)
            if json_schema and result.status == "failed":
                # NOTE: the first call used up the budget; the second iteration is refused before calling
                assert result.usage.model_calls == 1
                assert result.reason.startswith(f"out of budget: used {result.usage.total_tokens} model tokens")
                assert transcript["entries"][-2]["data"]["rule"] == "policy.budget.model_tokens"
            assert result.cost_units == -(-result.usage.total_tokens * 2_000 // 1_000)
            outcomes.append(result)
    kinds = {e["kind"] for r in outcomes for e in runtime.transcript(r.job_id)["entries"]}
    assert "model" in kinds and ("action" in kinds or "malformed" in kinds)


def test_openai_client_through_the_real_gateway(engine: LlamaCppEngine, chain: Chain, store_path: Path, tmp_path: Path) -> None:
    from nodeai.serving.apikeys import ApiKeyStore
    from nodeai.serving.gateway.app import create_app
    from nodeai.serving.gateway.server import GatewayServer

    keys = ApiKeyStore()
    secret = keys.create("agents-test")
    provider_key = Account.create().key
    app = create_app(engine, provider_key=provider_key, database=tmp_path / "gateway.db", api_keys=keys, manage_engines=False)
    token = chain.new_token(agent_balance=1_000 * ONE)
    with GatewayServer(app) as gateway:
        client = OpenAIModelClient(gateway.base_url, api_key=secret)
        try:
            runtime = AgentRuntime(store_path, model=client, wallet=chain.agent, rpc_urls={CHAIN_ID: chain.url})
            spec = llm_spec(token, chain.agent.address, chain.ops, json_schema=True, max_steps=1)
            result = runtime.run(spec, "What is the usd balance of ops?")
            check_clean_end(runtime, result, chain, token, 1_000 * ONE)
            assert result.usage.model_calls == 1 and result.usage.completion_tokens >= 1
            # NOTE: this gateway refuses OpenAI tools (400); the client fell back to a JSON schema
            assert client.use_tools is False and client.use_response_format is True
            bad_key = OpenAIModelClient(gateway.base_url, api_key="sk-wrong")
            refused = AgentRuntime(tmp_path / "other.db", model=bad_key, rpc_urls={CHAIN_ID: chain.url}).run(spec, "hello")
            assert refused.status == "failed" and refused.reason.startswith("model unavailable after 1 attempt(s)")
            assert "HTTP 401" in refused.reason
            bad_key.close()
        finally:
            client.close()
