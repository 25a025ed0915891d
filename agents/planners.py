"""Planners (pure): what the agent does next.

* ``llm``: `llm_messages` turns the spec, the job input and the recent history
  into chat messages; `parse_reply` turns whatever the model answered (OpenAI
  tool calls, a JSON object, JSON inside prose or a code fence, or garbage) into
  a `Call`, a `Finish` or a `Malformed` with the problem, never an exception.
* ``rules``: `rules_next` evaluates the workflow from a position with the
  current variables and returns the next action, the rules it skipped and the
  new position.

Both produce the same actions, executed by the same loop, tools and policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from nodeai.agents import expressions
from nodeai.agents.errors import ExpressionError
from nodeai.agents.model import ModelToolCall
from nodeai.agents.spec import AgentSpec, RulesPlanner
from nodeai.agents.transcript import canonical

MAX_OBSERVATION_CHARS = 2_000  # NOTE: a tool result shown to the model is cut here to keep prompts small
MAX_OUTPUT_ECHO_CHARS = 1_000


@dataclass(frozen=True)
class Call:
    tool: str
    function: str
    args: Mapping[str, Any] = field(default_factory=dict)
    rule: str | None = None
    save_as: str | None = None
    on_error: str = "fail"

    @property
    def qualified_name(self) -> str:
        return f"{self.tool}.{self.function}"


@dataclass(frozen=True)
class Finish:
    output: Any
    rule: str | None = None


@dataclass(frozen=True)
class Fail:
    reason: str
    rule: str | None = None


@dataclass(frozen=True)
class SetVars:
    values: Mapping[str, Any]
    rule: str


@dataclass(frozen=True)
class Malformed:
    problem: str


Action = Union[Call, Finish, Fail, SetVars]


def action_json(action: Action) -> dict[str, Any]:
    if isinstance(action, Call):
        return {"type": "call", "tool": action.tool, "function": action.function, "args": dict(action.args),
                "rule": action.rule, "save_as": action.save_as, "on_error": action.on_error}  # fmt: skip
    if isinstance(action, Finish):
        return {"type": "finish", "output": action.output, "rule": action.rule}
    if isinstance(action, Fail):
        return {"type": "fail", "reason": action.reason, "rule": action.rule}
    return {"type": "set", "values": dict(action.values), "rule": action.rule}


def action_from_json(data: Mapping[str, Any]) -> Action:
    kind = data["type"]
    if kind == "call":
        return Call(data["tool"], data["function"], data.get("args") or {}, data.get("rule"), data.get("save_as"),
                    data.get("on_error", "fail"))  # fmt: skip
    if kind == "finish":
        return Finish(data.get("output"), data.get("rule"))
    if kind == "fail":
        return Fail(data["reason"], data.get("rule"))
    return SetVars(data["values"], data["rule"])


# -- llm --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FunctionInfo:
    """What the planner needs to know about a tool function."""

    qualified_name: str
    description: str
    parameters: Mapping[str, Any]


MAX_FINAL_CHARS = 400


def _grammar_friendly(schema: Mapping[str, Any], max_chars: int) -> dict[str, Any]:
    """A parameter schema reduced to what grammar-guided decoding handles well: plain types with
    bounded strings and arrays; anything more complex becomes "any JSON value"."""
    kind = schema.get("type")
    if kind == "string":
        out: dict[str, Any] = {"type": "string", "maxLength": min(int(schema.get("maxLength", max_chars)), max_chars)}
        if "enum" in schema:
            out = {"enum": list(schema["enum"])}
        return out
    if kind in ("integer", "number", "boolean"):
        return {"type": kind}
    if kind == "array":
        return {"type": "array", "maxItems": 8}
    if kind == "object" and "properties" not in schema:
        return {"type": "object"}
    return {}


def action_schema(functions: Sequence[FunctionInfo], max_arg_chars: int = 96) -> dict[str, Any]:
    """JSON schema of one action: a call of one of ``functions`` with its arguments, or a final
    answer. Given to engines with grammar-constrained decoding, so even a small model emits a
    well-formed action (the tools still validate the arguments)."""
    alternatives: list[dict[str, Any]] = []
    for info in functions:
        props = info.parameters.get("properties", {})
        required = [p for p in info.parameters.get("required", []) if p in props]
        args = {"type": "object", "properties": {k: _grammar_friendly(v, max_arg_chars) for k, v in props.items()},
                "required": required, "additionalProperties": False}  # fmt: skip
        alternatives.append({"type": "object", "properties": {"tool": {"const": info.qualified_name}, "args": args},
                             "required": ["tool", "args"], "additionalProperties": False})  # fmt: skip
    alternatives.append({"type": "object", "properties": {"final": {"type": "string", "maxLength": MAX_FINAL_CHARS}},
                         "required": ["final"], "additionalProperties": False})  # fmt: skip
    return {"anyOf": alternatives} if len(alternatives) > 1 else alternatives[0]


def _signature(info: FunctionInfo) -> str:
    props = info.parameters.get("properties", {})
    required = set(info.parameters.get("required", []))
    parts = []
    for name, schema in props.items():
        kind = schema.get("type") or "/".join(s.get("type", "any") for s in schema.get("anyOf", [])) or "any"
        parts.append(f"{name}{'' if name in required else '?'}: {kind}")
    return f"{info.qualified_name}({', '.join(parts)}): {info.description}"


def system_message(spec: AgentSpec, functions: Sequence[FunctionInfo]) -> str:
    tools = "\n".join(f"- {_signature(f)}" for f in functions) or "- (no tools)"
    return (
        f"{spec.system_prompt}\n\n"
        "Answer with exactly one JSON object and nothing else.\n"
        'To use a tool: {"tool": "<name>", "args": {...}}\n'
        'When done: {"final": "<answer>"}\n'
        f"Tools:\n{tools}"
    ).strip()


def llm_messages(spec: AgentSpec, functions: Sequence[FunctionInfo], input_value: Any,
                 history: Sequence[Mapping[str, Any]], history_steps: int) -> list[dict[str, str]]:
    """Chat messages for the next model call: system, the task, then the recent (output, observation) pairs."""
    task = input_value if isinstance(input_value, str) else canonical(input_value)
    messages = [{"role": "system", "content": system_message(spec, functions)}, {"role": "user", "content": task}]
    for item in list(history)[-history_steps:]:
        messages.append({"role": "assistant", "content": str(item.get("model_output", ""))[:MAX_OUTPUT_ECHO_CHARS]})
        messages.append({"role": "user", "content": observation_text(item)})
    return messages


def observation_text(item: Mapping[str, Any]) -> str:
    if "error" in item:
        return f"Error: {item['error']}\nAnswer with one JSON object as described."
    text = canonical(item.get("observation"))
    if len(text) > MAX_OBSERVATION_CHARS:
        text = text[:MAX_OBSERVATION_CHARS] + "...(cut)"
    return f"Result: {text}"


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def _json_objects(text: str) -> list[dict[str, Any]]:
    """JSON objects found in ``text``: the whole text, fenced blocks, then every ``{`` that starts one."""
    found: list[dict[str, Any]] = []
    candidates = [text.strip()] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            return [value]
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            found.append(value)
            break
    return found


def _resolve(name: Any, known: set[str]) -> str | None:
    if not isinstance(name, str):
        return None
    for candidate in (name, name.replace("__", "."), name.strip()):
        if candidate in known:
            return candidate
    return None


def parse_reply(text: str, tool_calls: Sequence[ModelToolCall], known: set[str]) -> Call | Finish | Malformed:
    """The action in a model reply; `Malformed` (with what is wrong) for anything unusable. Never raises."""
    names = ", ".join(sorted(known)) or "none"
    if tool_calls:
        first = tool_calls[0]
        qualified = _resolve(first.name, known)
        if qualified is None:
            return Malformed(f"unknown tool {first.name!r} (tools: {names})")
        try:
            args = json.loads(first.arguments or "{}")
        except (json.JSONDecodeError, RecursionError):
            return Malformed(f"arguments of {qualified} are not valid JSON")
        if not isinstance(args, dict):
            return Malformed(f"arguments of {qualified} must be a JSON object")
        tool, _, function = qualified.partition(".")
        return Call(tool, function, args)
    objects = _json_objects(text or "")
    if not objects:
        return Malformed('no JSON object in the answer: reply with {"tool": ..., "args": {...}} or {"final": ...}')
    obj = objects[0]
    if "final" in obj:
        return Finish(obj["final"])
    if "tool" in obj:
        qualified = _resolve(obj["tool"], known)
        if qualified is None:
            return Malformed(f"unknown tool {obj['tool']!r} (tools: {names})")
        args = obj.get("args", obj.get("arguments", {}))
        if not isinstance(args, dict):
            return Malformed(f"args of {qualified} must be a JSON object")
        tool, _, function = qualified.partition(".")
        return Call(tool, function, args)
    return Malformed('the JSON object has neither "tool" nor "final"')


# -- rules ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RulesStep:
    index: int
    """Position of the rule after the one returned (where the next evaluation starts)."""
    action: Action | None
    """None: the workflow ran out of rules."""
    skipped: tuple[str, ...] = ()


def rules_next(planner: RulesPlanner, index: int, env: Mapping[str, Any]) -> RulesStep:
    """The next action of a rules workflow from rule ``index``, skipping rules whose ``when`` is false.

    Expression errors become a `Fail` naming the rule, so a bad workflow ends the job cleanly.
    """
    skipped: list[str] = []
    while index < len(planner.rules):
        rule = planner.rules[index]
        index += 1
        try:
            if rule.when is not None and not expressions.evaluate(rule.when, env):
                skipped.append(rule.id)
                continue
            kind = rule.action_kind
            if kind == "call":
                assert rule.call is not None
                tool, _, function = rule.call.partition(".")
                args = expressions.render(rule.args, env)
                return RulesStep(index, Call(tool, function, args, rule.id, rule.save_as, rule.on_error), tuple(skipped))
            if kind == "set":
                assert rule.set is not None
                # NOTE: in order, so a later name may use an earlier one of the same rule
                values: dict[str, Any] = {}
                for name, expr in rule.set.items():
                    values[name] = expressions.evaluate(expr, {**env, **values})
                return RulesStep(index, SetVars(values, rule.id), tuple(skipped))
            if kind == "finish":
                return RulesStep(index, Finish(expressions.render(rule.finish, env), rule.id), tuple(skipped))
            return RulesStep(index, Fail(str(expressions.render(rule.fail, env)), rule.id), tuple(skipped))
        except ExpressionError as exc:
            return RulesStep(index, Fail(f"rule {rule.id!r}: {exc}", rule.id), tuple(skipped))
    return RulesStep(index, None, tuple(skipped))
