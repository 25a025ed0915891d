"""Agent specs: valid ones load and serialise canonically; invalid ones are refused naming the field."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.agents import expressions
from nodeai.agents.errors import ExpressionError, SpecError
from nodeai.agents.evm import EvmTool
from nodeai.agents.http_fetch import HttpTool
from nodeai.agents.ipfs_tool import IpfsTool
from nodeai.agents.spec import BUILTIN_FUNCTIONS, load_spec, spec_template
from nodeai.agents.sql import SqlTool

TOKEN = "0x5fbdb2315678afecb367f032d93f642f64180aa3"

BASE: dict[str, Any] = {
    "spec_version": 1, "name": "treasury-bot", "system_prompt": "Keep 60/40.",
    "planner": {"kind": "rules", "vars": {"token": TOKEN}, "rules": [
        {"id": "bal", "call": "evm.erc20_balance", "args": {"token": "${vars.token}", "account": "${agent.address}"},
         "save_as": "b"},
        {"id": "done", "when": "b.balance > 0", "finish": {"balance": "${b.balance}"}},
    ]},
    "tools": [{"type": "evm", "chain_id": 31337}, {"type": "http"}],
    "policy": {"spend_caps": [{"chain_id": 31337, "token": TOKEN, "max_amount": 10, "period_s": 60}],
               "domains": ["localhost"], "rate_limits": {"http.fetch": {"calls": 2, "per_s": 1}}},
}  # fmt: skip


def with_change(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node: Any = spec
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def test_a_valid_spec_loads_and_has_one_canonical_form() -> None:
    spec = load_spec(BASE)
    assert spec.policy.spend_caps[0].token == "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # checksummed
    again = load_spec(spec.to_json())
    assert again == spec and again.to_json() == spec.to_json()
    assert json.loads(spec.to_json())["spec_version"] == 1
    assert load_spec(json.dumps(BASE)) == spec


@pytest.mark.parametrize(("path", "value", "field", "message"), [
    ("name", "Treasury Bot", "name", "is not a valid agent name"),
    ("spec_version", 2, "spec_version", "unsupported spec version 2"),
    ("max_steps", 0, "max_steps", "greater than or equal to 1"),
    ("planner.kind", "magic", "planner", "does not match any of the expected tags"),
    ("planner.rules.1.when", "b.balance >", "planner.rules[1].when", "syntax error"),
    ("planner.rules.1.when", "blance > 0", "planner.rules[1].when", "unknown name 'blance'"),
    ("planner.rules.1.when", "__import__('os')", "planner.rules[1].when", "unknown function '__import__'"),
    ("planner.rules.1.when", "b.__class__", "planner.rules[1].when", "field names starting with '_'"),
    ("planner.rules.0.call", "evm.selfdestruct", "planner.rules[0].call", "tool 'evm' has no function 'selfdestruct'"),
    ("planner.rules.0.call", "shell.run", "planner.rules[0].call", "no tool named 'shell'"),
    ("planner.rules.1.id", "bal", "planner.rules[1].id", "rule id 'bal' is used twice"),
    ("planner.rules.0.save_as", "input", "planner.rules[0].save_as", "cannot be a variable name"),
    ("tools.0.chain_id", -1, "tools[0].chain_id", "greater than 0"),
    ("tools.1.type", "ftp", "tools[1]", "does not match any of the expected tags"),
    ("policy.domains", ["https://localhost/"], "policy.domains", "is not a host name"),
    ("policy.spend_caps.0.token", "0x1234", "policy.spend_caps[0].token", "is not an EVM address"),
    ("policy.rate_limits", {"smtp": {"calls": 1, "per_s": 1}}, "policy.rate_limits.smtp", "no tool named 'smtp'"),
    ("policy.colour", "blue", "policy.colour", "Extra inputs are not permitted"),
])  # fmt: skip
def test_invalid_specs_name_the_field_and_the_problem(path: str, value: Any, field: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(with_change(path, value))
    problems = dict(caught.value.problems)
    assert field in problems, caught.value.problems
    assert message in problems[field]
    assert field in str(caught.value)


def test_other_spec_problems() -> None:
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(b"{nope")
    with pytest.raises(SpecError, match="a spec is a JSON object, not list"):
        load_spec("[]")
    llm = with_change("planner", {"kind": "llm"})
    with pytest.raises(SpecError, match="model: the llm planner needs a model id"):
        load_spec(llm)
    llm["model"] = "smollm2-135m-instruct"
    assert load_spec(llm).planner.kind == "llm"
    rule = with_change("planner.rules.1", {"id": "x", "call": "evm.call", "finish": 1})
    with pytest.raises(SpecError, match="needs exactly one of call, set, finish, fail"):
        load_spec(rule)
    caps = with_change("policy.spend_caps", [BASE["policy"]["spend_caps"][0]] * 2)
    with pytest.raises(SpecError, match="two spend caps for token"):
        load_spec(caps)


def test_cli_template_matches_the_proposal_example() -> None:
    spec = spec_template("treasury-bot", tools=["rpc", "sql", "ipfs"], budget=50)
    assert [t.type for t in spec.tools] == ["evm", "sql", "ipfs"]
    assert spec.policy.budget.payment_units == 50 and spec.planner.kind == "llm"
    assert spec.policy.spend_caps == []  # NOTE: nothing may be spent until the owner adds caps
    with pytest.raises(SpecError, match="unknown tool 'ftp'"):
        spec_template("x", tools=["ftp"], budget=1)


def test_builtin_function_table_matches_the_tools() -> None:
    for kind, cls in {"evm": EvmTool, "ipfs": IpfsTool, "http": HttpTool, "sql": SqlTool}.items():
        assert BUILTIN_FUNCTIONS[kind] == set(cls._functions), kind


# -- the expression language -------------------------------------------------------------------
@given(st.integers(-(10**30), 10**30), st.integers(-(10**30), 10**30).filter(bool))
def test_arithmetic_matches_python(a: int, b: int) -> None:
    env = {"a": a, "b": b}
    for expr in ("a + b", "a - b", "a * b", "a // b", "a % b", "max(a, b) - min(a, b)", "abs(a) >= 0 and a != b or a == b"):
        assert expressions.evaluate(expr, env) == eval(expr, {"max": max, "min": min, "abs": abs}, env)  # noqa: S307


@pytest.mark.parametrize(("expr", "problem"), [
    ("().__class__", "field names starting with '_'"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("[x for x in vars]", "ListComp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("10 ** 10000", "exponent must be a number of at most 256"),
    ("'a' * 10 ** 9", "result longer than"),
    ("vars.nope", "no field 'nope'"),
    ("input.x", "cannot read field 'x' of a str"),
    ("1 / 0", "ZeroDivisionError"),
    ("1 < 'a'", "TypeError"),
])  # fmt: skip
def test_expressions_refuse_what_is_not_data(expr: str, problem: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        expressions.evaluate(expr, {"vars": {"a": 1}, "input": "text"})
    assert problem in str(caught.value)


def test_expression_helpers() -> None:
    env = {"input": "Rebalance to 60/40", "r": {"rows": [[1, "a"], [2, "b"]]}}
    assert expressions.evaluate("extract_ints(input)", env) == [60, 40]
    assert expressions.evaluate("r.rows[1][1] + r['rows'][0][1]", env) == "ba"
    assert expressions.evaluate("int('0x10') + len(r.rows)", env) == 18
    assert expressions.render({"a": "${1 + 1}", "b": ["x=${upper('y')}"], "c": 3}, env) == {"a": 2, "b": ["x=Y"], "c": 3}
