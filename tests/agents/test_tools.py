"""The tool interface (a custom tool in a few lines, as documented) and the EVM tool's reads on anvil."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import Field

from nodeai.agents import AgentRuntime, Tool, ToolContext, function, load_spec
from nodeai.agents.errors import PolicyDenied
from tests.agents.conftest import CHAIN_ID, ONE, Chain


class Weather(Tool):
    """Current weather (the example of ``nodeai.agents.tools``)."""

    name = "weather"

    def __init__(self) -> None:
        self.asked: list[str] = []

    @function("Temperature in Celsius of a city")
    def temperature(self, ctx: ToolContext, city: Annotated[str, Field(max_length=64)]) -> dict[str, Any]:
        self.asked.append(city)
        return {"city": city, "celsius": 21}


def test_custom_tool_in_a_few_lines(tmp_path: Path) -> None:
    weather = Weather()
    spec = load_spec({
        "spec_version": 1, "name": "forecaster", "tools": [{"type": "custom", "name": "weather"}],
        "planner": {"kind": "rules", "rules": [
            {"id": "ask", "call": "weather.temperature", "args": {"city": "${input}"}, "save_as": "t"},
            {"id": "long", "call": "weather.temperature", "args": {"city": "${input * 20}"}, "save_as": "bad",
             "on_error": "continue"},
            {"id": "done", "finish": {"celsius": "${t.celsius}", "bad": "${bad.error}"}},
        ]},
    })  # fmt: skip
    (fn,) = weather.functions().values()
    assert fn.json_schema()["properties"]["city"] == {"maxLength": 64, "title": "City", "type": "string"}
    result = AgentRuntime(tmp_path / "agents.db", custom_tools={"weather": weather}).run(spec, "Lisbon")
    assert result.status == "succeeded", result.reason
    assert result.output["celsius"] == 21 and weather.asked == ["Lisbon"]
    assert "invalid arguments: city: String should have at most 64 characters" in result.output["bad"]
    # a provider without the tool refuses the job before it starts
    runtime = AgentRuntime(tmp_path / "other.db")
    with pytest.raises(PolicyDenied, match="custom tool 'weather' is not installed on this provider"):
        runtime.assert_allowed(spec)


@pytest.mark.integration
def test_evm_reads_balances_and_view_functions(chain: Chain, store_path: Path) -> None:
    token = chain.new_token(agent_balance=7 * ONE)
    market = chain.deployment.contracts["JobMarket"]
    spec = load_spec({
        "spec_version": 1, "name": "reader",
        "tools": [{"type": "evm", "chain_id": CHAIN_ID, "contracts": {"usd": {"address": token.address},
                                                                      "market": {"address": market["address"], "abi": market["abi"]}}}],
        "planner": {"kind": "rules", "rules": [
            {"id": "eth", "call": "evm.native_balance", "args": {"account": "${agent.address}"}, "save_as": "eth"},
            {"id": "sym", "call": "evm.call", "args": {"contract": "usd", "function": "symbol"}, "save_as": "sym"},
            {"id": "bal", "call": "evm.call", "args": {"contract": "usd", "function": "balanceOf(address)",
                                                        "args": ["${agent.address}"]}, "save_as": "bal"},
            {"id": "reg", "call": "evm.call", "args": {"contract": "market", "function": "providerRegistry"}, "save_as": "reg"},
            {"id": "nope", "call": "evm.call", "args": {"contract": "market", "function": "noSuchFunction"}, "save_as": "nope",
             "on_error": "continue"},
            {"id": "done", "finish": {"eth": "${eth.wei}", "symbol": "${sym.result}", "balance": "${bal.result}",
                                      "registry": "${reg.result}", "nope": "${nope.error}"}},
        ]},
    })  # fmt: skip
    runtime = AgentRuntime(store_path, wallet=chain.agent, rpc_urls={CHAIN_ID: chain.url})
    nonce = chain.w3.eth.get_transaction_count(chain.agent.address)
    result = runtime.run(spec, "read")
    assert result.status == "succeeded", result.reason
    out = result.output
    assert out["eth"] == chain.w3.eth.get_balance(chain.agent.address) > 0
    assert out["symbol"] == token.functions.symbol().call() and out["balance"] == 7 * ONE
    assert out["registry"] == chain.deployment.address("ProviderRegistry")
    assert "cannot call noSuchFunction" in out["nope"]
    assert chain.w3.eth.get_transaction_count(chain.agent.address) == nonce  # reads send nothing
