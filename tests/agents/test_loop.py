"""The worker loop's pure state machine and the llm planner's parser: whatever the model outputs,
the loop stays within its step and malformed-output limits, and terminal states never change."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nodeai.agents import loop
from nodeai.agents.loop import LoopState
from nodeai.agents.model import ModelToolCall
from nodeai.agents.planners import (
    Call, Finish, FunctionInfo, Malformed, RulesStep, SetVars, action_schema, parse_reply, rules_next,
)  # fmt: skip
from nodeai.agents.spec import RulesPlanner

KNOWN = {"evm.erc20_balance", "evm.erc20_transfer", "http.fetch"}

valid_call = st.builds(lambda name, args: json.dumps({"tool": name, "args": args}), st.sampled_from(sorted(KNOWN)),
                       st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))  # fmt: skip
model_text = st.one_of(
    st.text(max_size=80), valid_call, st.just('{"final": "done"}'), st.just('```json\n{"tool": "http.fetch", "args": {}}\n```'),
    st.just('{"tool": "rm -rf", "args": {}}'), st.just('{"tool": "evm.erc20_transfer", "args": [1]}'), st.just("{" * 50),
    st.builds(lambda t: f"Sure! {t} then", valid_call),
)  # fmt: skip
tool_calls = st.lists(st.builds(ModelToolCall, st.sampled_from(sorted(KNOWN) + ["evm__erc20_balance", "nope"]),
                                st.sampled_from(["{}", '{"token": "0x1"}', "not json", "[1]"])), max_size=2)  # fmt: skip


@given(model_text, tool_calls)
def test_parse_reply_never_raises_and_only_returns_known_tools(text: str, calls: list[ModelToolCall]) -> None:
    parsed = parse_reply(text, calls, KNOWN)
    assert isinstance(parsed, (Call, Finish, Malformed))
    if isinstance(parsed, Call):
        assert parsed.qualified_name in KNOWN and isinstance(parsed.args, dict)
    if isinstance(parsed, Malformed):
        assert parsed.problem


def test_parse_reply_reads_the_usual_shapes() -> None:
    assert parse_reply('{"tool": "http.fetch", "args": {"url": "u"}}', [], KNOWN) == Call("http", "fetch", {"url": "u"})
    assert parse_reply('I will call: {"tool": "http__fetch", "args": {}} ok', [], KNOWN) == Call("http", "fetch", {})
    assert parse_reply("```json\n{\"final\": 42}\n```", [], KNOWN) == Finish(42)
    assert parse_reply("", [ModelToolCall("evm__erc20_balance", '{"token": "t"}')], KNOWN) == Call("evm", "erc20_balance", {"token": "t"})
    assert "unknown tool 'shell.run'" in parse_reply('{"tool": "shell.run", "args": {}}', [], KNOWN).problem  # type: ignore[union-attr]
    assert "no JSON object" in parse_reply("I think the balance is 5", [], KNOWN).problem  # type: ignore[union-attr]
    info = FunctionInfo("evm.erc20_transfer", "send", {"properties": {"token": {"type": "string"}, "amount": {"type": "integer"},
                                                                      "memo": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
                                                       "required": ["token", "amount"]})  # fmt: skip
    schema = action_schema([info])
    call, final = schema["anyOf"]
    assert call["properties"]["tool"] == {"const": "evm.erc20_transfer"}
    assert call["properties"]["args"]["properties"] == {"token": {"type": "string", "maxLength": 96},
                                                        "amount": {"type": "integer"}, "memo": {}}  # fmt: skip
    assert call["properties"]["args"]["required"] == ["token", "amount"] and final["required"] == ["final"]


events = st.lists(st.one_of(
    st.tuples(st.just("model"), model_text, tool_calls, st.integers(0, 500), st.integers(0, 500)),
    st.tuples(st.just("done"), st.integers()),
    st.tuples(st.just("failed"), st.text(min_size=1, max_size=10)),
    st.tuples(st.just("approval"), st.text(min_size=1, max_size=5)),
    st.tuples(st.just("approved")),
    st.tuples(st.just("budget"), st.text(min_size=1, max_size=10)),
), max_size=40)  # fmt: skip


@given(events, st.integers(1, 10), st.integers(1, 4))
def test_no_event_sequence_escapes_the_loop_limits(sequence: list[tuple[Any, ...]], max_steps: int, max_malformed: int) -> None:
    """Drive the llm loop the way the runtime does, with arbitrary model outputs and tool outcomes."""
    state = LoopState()
    current: Call | None = None
    terminal: LoopState | None = None
    for event in sequence:
        before = state
        kind = event[0]
        if kind == "model":
            state = loop.begin_iteration(state, max_steps)
            if state.status == "running":
                state, call, _ = loop.model_replied(state, event[1], event[2], event[3], event[4], KNOWN, max_malformed)
                if call is not None:
                    current = call
                    state = loop.call_planned(state, call, event[1], f"job:{state.step}")
        elif kind == "done" and current is not None and state.pending is not None:
            state, current = loop.tool_done(state, current, "out", {"value": event[1]}), None
        elif kind == "failed" and current is not None and state.pending is not None:
            state, current = loop.tool_failed(state, current, "out", event[1]), None
        elif kind == "approval" and state.pending is not None:
            state = loop.wait_for_approval(state, event[1])
        elif kind == "approved":
            state = loop.approval_given(state)
        elif kind == "budget":
            state = loop.fail(state, f"out of budget: {event[1]}")

        assert state.step <= max_steps
        assert state.malformed_in_a_row <= max_malformed
        assert state.usage.total_tokens >= before.usage.total_tokens
        assert state.usage.model_calls >= before.usage.model_calls
        if state.status == "failed":
            assert state.reason
        if terminal is not None:
            assert state == terminal, "a terminal state changed"
        if state.done:
            terminal = state
            assert state.pending is None
        assert LoopState.from_json(json.loads(json.dumps(state.as_json()))) == state


def test_malformed_outputs_fail_the_job_after_the_limit_with_the_reason() -> None:
    state = LoopState()
    for _ in range(3):
        state = loop.begin_iteration(state, 10)
        state, call, malformed = loop.model_replied(state, "the balance is probably fine", [], 10, 5, KNOWN, 3)
        assert call is None and malformed is not None
    assert state.status == "failed"
    assert state.reason.startswith("the model's output was unusable 3 times in a row (last: no JSON object")
    assert state.usage.total_tokens == 45 and state.step == 3


def test_a_valid_output_resets_the_malformed_count() -> None:
    state = LoopState()
    state, _, _ = loop.model_replied(state, "garbage", [], 1, 1, KNOWN, 2)
    state, call, _ = loop.model_replied(state, '{"tool": "http.fetch", "args": {}}', [], 1, 1, KNOWN, 2)
    assert call is not None and state.malformed_in_a_row == 0
    state = loop.tool_failed(loop.call_planned(state, call, "x", "k"), call, "x", "policy denied (policy.domains): no")
    assert state.status == "running" and state.history[-1]["error"].startswith("policy denied")


def test_step_limit_ends_the_job() -> None:
    state = LoopState(step=4)
    state = loop.begin_iteration(state, 4)
    assert state.status == "failed" and state.reason == "stopped after max_steps=4 without finishing"


def planner(rules: list[dict[str, Any]], **vars: Any) -> RulesPlanner:
    return RulesPlanner.model_validate({"kind": "rules", "vars": vars, "rules": rules})


def test_rules_planner_walks_the_workflow_and_skips_false_conditions() -> None:
    workflow = planner([
        {"id": "a", "call": "evm.erc20_balance", "args": {"token": "${vars.t}", "account": "0x1"}, "save_as": "bal"},
        {"id": "b", "set": {"half": "bal.balance // 2", "double": "half * 4"}},
        {"id": "c", "when": "half > 100", "call": "evm.erc20_transfer", "args": {"amount": "${half}", "memo": "half=${half}"}},
        {"id": "d", "finish": {"half": "${half}"}},
    ], t="0xT")  # fmt: skip
    env = {"vars": workflow.vars, "input": "", "agent": {}, "job": {}}
    first = rules_next(workflow, 0, env)
    assert first.action == Call("evm", "erc20_balance", {"token": "0xT", "account": "0x1"}, "a", "bal")
    second = rules_next(workflow, first.index, {**env, "bal": {"balance": 50}})
    assert second.action == SetVars({"half": 25, "double": 100}, "b")
    third = rules_next(workflow, second.index, {**env, "bal": {"balance": 50}, "half": 25})
    assert third.action == Finish({"half": 25}, "d") and third.skipped == ("c",)
    sent = rules_next(workflow, 2, {**env, "half": 150})
    assert sent.action == Call("evm", "erc20_transfer", {"amount": 150, "memo": "half=150"}, "c", None)
    assert rules_next(workflow, 4, env) == RulesStep(4, None, ())


def test_rules_expression_errors_fail_the_rule_cleanly() -> None:
    workflow = planner([{"id": "x", "set": {"y": "vars.missing + 1"}}])
    step = rules_next(workflow, 0, {"vars": {}, "input": "", "agent": {}, "job": {}})
    state, call = loop.rules_decided(LoopState(), step)
    assert call is None and state.status == "failed"
    assert state.reason.startswith("rule 'x': expression 'vars.missing + 1': no field 'missing'")
