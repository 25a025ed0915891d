"""The worker loop's state and its transitions (pure: no clock, no I/O).

A job is a `LoopState`; every event of the loop (the model replied, the rules
planner decided, a tool returned or failed, an approval is awaited or given,
the budget ran out) is a function from state to state. The runtime
(``runtime.py``) performs the I/O and calls these; hypothesis checks that no
sequence of events, whatever the model outputs, gets past the step limit, the
malformed-output limit or a terminal state.

States: ``running`` -> ``waiting_approval`` -> ``running`` ... ->
``succeeded`` | ``failed``. Terminal states never change again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from nodeai.agents.model import ModelToolCall
from nodeai.agents.planners import Call, Fail, Finish, Malformed, RulesStep, SetVars, action_json, parse_reply

Status = Literal["running", "waiting_approval", "succeeded", "failed"]
TERMINAL = frozenset({"succeeded", "failed"})


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    tool_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_json(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class LoopState:
    step: int = 0
    """Planner iterations so far (model calls or rules decisions), bounded by ``max_steps``."""
    status: Status = "running"
    malformed_in_a_row: int = 0
    usage: Usage = Usage()
    rule_index: int = 0
    variables: Mapping[str, Any] = field(default_factory=dict)
    """Rules planner: results saved by ``save_as`` and values from ``set``."""
    history: tuple[Mapping[str, Any], ...] = ()
    """llm planner: ``{"model_output", "observation" | "error"}`` per step, shown back to the model."""
    pending: Mapping[str, Any] | None = None
    """The call planned and not finished yet (also while it waits for approval):
    ``{"action", "model_output", "approval_id", "action_key"}``. Checkpointed before the call runs."""
    output: Any = None
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def as_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "status": self.status, "malformed_in_a_row": self.malformed_in_a_row,
            "usage": asdict(self.usage), "rule_index": self.rule_index, "variables": dict(self.variables),
            "history": [dict(h) for h in self.history], "pending": dict(self.pending) if self.pending else None,
            "output": self.output, "reason": self.reason,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "LoopState":
        return cls(data["step"], data["status"], data["malformed_in_a_row"], Usage(**data["usage"]), data["rule_index"],
                   dict(data["variables"]), tuple(data["history"]), data["pending"], data["output"], data["reason"])  # fmt: skip


def fail(state: LoopState, reason: str) -> LoopState:
    if state.done:
        return state
    return replace(state, status="failed", reason=reason or "failed", pending=None)


def succeed(state: LoopState, output: Any) -> LoopState:
    if state.done:
        return state
    return replace(state, status="succeeded", output=output, pending=None)


def begin_iteration(state: LoopState, max_steps: int) -> LoopState:
    """Called before each planner iteration: enforces the step limit."""
    if state.status != "running":
        return state
    if state.step >= max_steps:
        return fail(state, f"stopped after max_steps={max_steps} without finishing")
    return state


def model_replied(state: LoopState, text: str, tool_calls: Sequence[ModelToolCall], prompt_tokens: int,
                  completion_tokens: int, known: set[str], max_malformed: int,
                  cut_off: bool = False) -> tuple[LoopState, Call | None, Malformed | None]:  # fmt: skip
    """Account the model call and parse its reply; returns the call to run, if any, or the malformed reason.

    ``cut_off``: the reply stopped at ``max_tokens``, which the problem then says (and the model sees).
    """
    if state.status != "running":
        return state, None, None
    usage = replace(state.usage, prompt_tokens=state.usage.prompt_tokens + max(prompt_tokens, 0),
                    completion_tokens=state.usage.completion_tokens + max(completion_tokens, 0),
                    model_calls=state.usage.model_calls + 1)  # fmt: skip
    state = replace(state, usage=usage, step=state.step + 1)
    parsed = parse_reply(text, tool_calls, known)
    if isinstance(parsed, Malformed) and cut_off:
        parsed = Malformed(f"{parsed.problem} (the answer was cut off at the token limit: answer shorter)")
    if isinstance(parsed, Malformed):
        count = state.malformed_in_a_row + 1
        state = replace(state, malformed_in_a_row=count,
                        history=state.history + ({"model_output": text, "error": parsed.problem},))  # fmt: skip
        if count >= max_malformed:
            state = fail(state, f"the model's output was unusable {count} times in a row (last: {parsed.problem})")
        return state, None, parsed
    state = replace(state, malformed_in_a_row=0)
    if isinstance(parsed, Finish):
        return succeed(state, parsed.output), None, None
    return state, parsed, None


def rules_decided(state: LoopState, decision: RulesStep) -> tuple[LoopState, Call | None]:
    """Apply a rules-planner decision; returns the call to run, if any."""
    if state.status != "running":
        return state, None
    state = replace(state, step=state.step + 1, rule_index=decision.index)
    action = decision.action
    if action is None:
        return succeed(state, None), None
    if isinstance(action, Finish):
        return succeed(state, action.output), None
    if isinstance(action, Fail):
        return fail(state, action.reason), None
    if isinstance(action, SetVars):
        return replace(state, variables={**state.variables, **action.values}), None
    return state, action


def tool_done(state: LoopState, call: Call, model_output: str | None, result: Any) -> LoopState:
    """A call returned ``result``: shown to the model (llm) or saved under ``save_as`` (rules)."""
    if state.status != "running":
        return state
    state = replace(state, pending=None, usage=replace(state.usage, tool_calls=state.usage.tool_calls + 1))
    if model_output is not None:
        return replace(state, history=state.history + ({"model_output": model_output, "observation": result},))
    return replace(state, variables={**state.variables, call.save_as: result}) if call.save_as else state


def tool_failed(state: LoopState, call: Call, model_output: str | None, error: str) -> LoopState:
    """A call failed for good (retries used up, refused by the policy, or denied by a human).

    The llm planner sees the error and may choose differently; a rules workflow
    fails unless the rule says ``on_error: continue`` (then ``save_as`` gets ``{"error": ...}``).
    """
    if state.status != "running":
        return state
    state = replace(state, pending=None, usage=replace(state.usage, tool_calls=state.usage.tool_calls + 1))
    if model_output is not None:
        return replace(state, history=state.history + ({"model_output": model_output, "error": error},))
    if call.on_error == "continue":
        return replace(state, variables={**state.variables, call.save_as: {"error": error}}) if call.save_as else state
    where = f"rule {call.rule!r}: " if call.rule else ""
    return fail(state, f"{where}{call.qualified_name} failed: {error}")


def call_planned(state: LoopState, call: Call, model_output: str | None, action_key: str) -> LoopState:
    """Remember the call about to run, so a restarted process repeats this very call instead of re-planning."""
    if state.status != "running":
        return state
    pending = {"action": action_json(call), "model_output": model_output, "approval_id": None, "action_key": action_key}
    return replace(state, pending=pending)


def wait_for_approval(state: LoopState, approval_id: str) -> LoopState:
    if state.status != "running" or state.pending is None:
        return state
    return replace(state, status="waiting_approval", pending={**state.pending, "approval_id": approval_id})


def approval_given(state: LoopState) -> LoopState:
    """Back to running: the runtime now repeats the pending call, which the signer lets through."""
    if state.status != "waiting_approval":
        return state
    return replace(state, status="running")
