"""The agent runtime: runs agent jobs through the worker loop, with tools, policy and a transcript.

The provider daemon makes one `AgentRuntime` and calls `AgentRuntime.run` for
each agent job (or `resume_all` after a restart)::

    runtime = AgentRuntime(RuntimeStore("state/agents.db"), artifacts=ipfs_store,
                           model=OpenAIModelClient("http://127.0.0.1:8000/v1"), wallet=agent_wallet,
                           rpc_urls={31337: "http://127.0.0.1:8545"}, sql_url="state/indexer.db")
    result = runtime.run(spec, "Rebalance to 60/40", job_id="31337:42", deadline=job_deadline)
    # result.status, result.output, result.transcript_cid, result.transcript_root -> submitResult

The loop (section 10.4 of the proposal, made durable)::

    assert_allowed(job)                              # tools available, deadline ahead, budget left
    while not done:                                  # bounded by max_steps, budget, deadline
        action = planner(state)                      # model call + parse (llm) or next rule (rules)
        checkpoint(planned action)                   # a restart repeats this action, never re-plans it
        policy check (rate limits), tool call        # retried on transient failure; the signer checks writes
        state = update(state, result)                # pure, see loop.py
        checkpoint(state, transcript)
    finalize: transcript pinned on IPFS, result with its root

Every step goes into the hash-chained transcript. Nothing the model outputs
reaches a key: writes go to the policy-gated signer (``signer.py``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from eth_account.signers.local import LocalAccount

from nodeai.agents import loop
from nodeai.agents.errors import (
    AgentError, ApprovalRequired, ModelUnavailable, PolicyDenied, SpecError, ToolFailure, TranscriptInvalid,
)  # fmt: skip
from nodeai.agents.evm import EvmTool, connect
from nodeai.agents.http_fetch import HttpTool
from nodeai.agents.ipfs_tool import ContentStore, IpfsTool
from nodeai.agents.loop import LoopState, Usage
from nodeai.agents.model import ModelClient, ModelRequest, tool_definitions
from nodeai.agents.planners import (
    Call, FunctionInfo, action_from_json, action_json, action_schema, llm_messages, rules_next,
)  # fmt: skip
from nodeai.agents.policy import check_budget, check_domain, check_rate, cost_units
from nodeai.agents.signer import PolicySigner
from nodeai.agents.spec import AgentSpec, CustomToolConfig, LlmPlanner, RulesPlanner, load_spec
from nodeai.agents.sql import SqlTool
from nodeai.agents.store import ApprovalBook, RuntimeStore
from nodeai.agents.tools import Tool, ToolContext, ToolFunction
from nodeai.agents.transcript import Transcript, canonical, jsonable, sha256_hex
from nodeai.errors import NodeAIError

ResultStatus = Literal["succeeded", "failed", "waiting_approval"]
MAX_INPUT_BYTES = 64 << 10
PIN_ATTEMPTS = 3


@dataclass(frozen=True)
class AgentResult:
    """What a job produced; ``document()`` is what the provider pins as the job's output."""

    job_id: str
    status: ResultStatus
    output: Any
    reason: str
    transcript_cid: str | None
    transcript_root: str
    """0x-prefixed sha256 (32 bytes): goes on chain with the result."""
    usage: Usage
    cost_units: int
    """Payment units for the model tokens at the job's price per 1k tokens."""
    steps: int

    def document(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "output": jsonable(self.output), "reason": self.reason,
                "transcript_cid": self.transcript_cid, "transcript_root": self.transcript_root,
                "usage": self.usage.as_json(), "cost_units": self.cost_units, "steps": self.steps}  # fmt: skip

    def document_bytes(self) -> bytes:
        return canonical(self.document()).encode()

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> "AgentResult":
        usage = Usage(**{k: v for k, v in doc["usage"].items() if k != "total_tokens"})
        return cls(doc["job_id"], doc["status"], doc["output"], doc["reason"], doc["transcript_cid"],
                   doc["transcript_root"], usage, doc["cost_units"], doc["steps"])  # fmt: skip


ToolFactory = Callable[[CustomToolConfig], Tool]


@dataclass
class _Job:
    """One job while it runs in this process."""

    job_id: str
    spec: AgentSpec
    input: Any
    deadline: float | None
    price_per_1k: int
    state: LoopState
    transcript: Transcript
    tools: dict[str, Tool]

    @property
    def functions(self) -> dict[str, ToolFunction]:
        """The functions this job may call: every tool's, narrowed by the spec's ``functions`` lists."""
        offered = {}
        for name, tool in self.tools.items():
            config = self.spec.tool(name)
            allowed = config.functions if config is not None else None
            for fn in tool.functions().values():
                if allowed is None or fn.name in allowed:
                    offered[fn.qualified_name] = fn
        return offered


class AgentRuntime:
    """Runs agent jobs; see the module docstring."""

    def __init__(self, store: RuntimeStore | str | Path, *, artifacts: ContentStore | None = None,
                 model: ModelClient | None = None, wallet: LocalAccount | None = None,
                 rpc_urls: Mapping[int, str] | None = None, sql_url: str | None = None,
                 custom_tools: Mapping[str, Tool | ToolFactory] | None = None, poll_interval_s: float = 0.5,
                 rpc_timeout_s: float = 10.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):  # fmt: skip
        self.store = store if isinstance(store, RuntimeStore) else RuntimeStore(store, clock)
        self.artifacts = artifacts
        self.model = model
        self.rpc_urls = dict(rpc_urls or {})
        self.sql_url = sql_url
        self.custom_tools = dict(custom_tools or {})
        self.poll_interval_s = poll_interval_s
        self.clock = clock
        self.sleep = sleep
        self._w3 = {chain: connect(url, rpc_timeout_s) for chain, url in self.rpc_urls.items()}
        # NOTE: the wallet goes to the signer only; tools get the signer as a TxGateway without the key
        self.signer = PolicySigner(wallet, self.store, self._w3) if wallet is not None else None
        self.approvals = ApprovalBook(self.store)

    # -- entry points ---------------------------------------------------------------------------
    def run(self, spec: AgentSpec | bytes | str | Mapping[str, Any], input_value: Any, *, job_id: str | None = None,
            spec_cid: str | None = None, deadline: float | None = None, price_per_1k_tokens: int = 0,
            wait: bool = True) -> AgentResult:  # fmt: skip
        """Run a job to the end (``wait=False``: return when it starts waiting for an approval).

        A ``job_id`` already in the store is resumed, not started again, so the daemon
        may call ``run`` again for a job it is unsure about.
        """
        if not isinstance(spec, AgentSpec):
            spec = load_spec(spec)
        job_id = job_id or f"job-{uuid.uuid4().hex[:16]}"
        if spec_cid is None and self.artifacts is not None:
            spec_cid = self._pin(spec.to_json())
        self.store.create_job(job_id, spec.name, spec.to_json().decode(), spec_cid, jsonable(input_value), deadline,
                              price_per_1k_tokens)  # fmt: skip
        return self.resume(job_id, wait=wait)

    def resume(self, job_id: str, *, wait: bool = True) -> AgentResult:
        """Continue a job from its last checkpoint (or return its result if it has ended)."""
        record = self.store.job(job_id)
        if record.result is not None:
            return AgentResult.from_document(record.result)
        spec = load_spec(record.spec)
        if record.checkpoint:
            state = LoopState.from_json(record.checkpoint["state"])
            transcript = Transcript.from_document(record.checkpoint["transcript"])
        else:
            state = LoopState()
            transcript = Transcript.start(job_id=job_id, agent=spec.name, spec_cid=record.spec_cid,
                                          spec_hash=sha256_hex(spec.to_json()), input_value=record.input,
                                          started_at_ms=self._ms())  # fmt: skip
        job = _Job(job_id, spec, record.input, record.deadline, record.price_per_1k, state, transcript, {})
        if record.checkpoint is None:
            self._log(job, "job", {"agent": spec.name, "spec_cid": record.spec_cid, "input": record.input,
                                   "deadline": record.deadline, "price_per_1k_tokens": record.price_per_1k})  # fmt: skip
            problems = self.admission_problems(spec, record.deadline)
            if problems:
                self._log(job, "policy", {"verdict": "deny", "rule": "assert_allowed", "reason": "; ".join(problems)})
                job.state = loop.fail(job.state, "job not admitted: " + "; ".join(problems))
                return self._finalize(job)
        elif job.state.pending is not None:
            self._log(job, "resume", {"status": job.state.status, "action_key": job.state.pending["action_key"]})
        try:
            job.tools = self._build_tools(spec)
        except AgentError as exc:
            job.state = loop.fail(job.state, f"tools unavailable: {exc}")
            return self._finalize(job)
        try:
            return self._drive(job, wait)
        finally:
            for tool in job.tools.values():
                tool.close()

    def resume_all(self, *, wait: bool = True) -> list[AgentResult]:
        """Resume every unfinished job in the store (after a restart), oldest first."""
        return [self.resume(job_id, wait=wait) for job_id in self.store.jobs()]

    def transcript(self, job_id: str) -> dict[str, Any]:
        """The transcript document of a job as checkpointed (also while it runs or waits)."""
        record = self.store.job(job_id)
        if record.checkpoint is None:
            raise TranscriptInvalid(None, f"job {job_id} has no transcript yet")
        return record.checkpoint["transcript"]

    def assert_allowed(self, spec: AgentSpec, deadline: float | None = None) -> None:
        """Raise `PolicyDenied` when this runtime cannot take a job of ``spec`` (call it before claiming)."""
        problems = self.admission_problems(spec, deadline)
        if problems:
            raise PolicyDenied("assert_allowed", "; ".join(problems))

    def admission_problems(self, spec: AgentSpec, deadline: float | None) -> list[str]:
        """``policy.assert_allowed(job)``: why this runtime cannot take the job (empty when it can)."""
        problems = []
        if deadline is not None and deadline <= self.clock():
            problems.append("the job's deadline has passed")
        for tool in spec.tools:
            if tool.type == "evm" and tool.chain_id not in self.rpc_urls:
                problems.append(f"no RPC for chain {tool.chain_id} (tool {tool.name!r})")
            elif tool.type == "sql" and not self.sql_url:
                problems.append(f"no database for the SQL tool {tool.name!r}")
            elif tool.type == "ipfs" and self.artifacts is None:
                problems.append(f"no IPFS store for the tool {tool.name!r}")
            elif tool.type == "custom" and tool.name not in self.custom_tools:
                problems.append(f"custom tool {tool.name!r} is not installed on this provider")
        if isinstance(spec.planner, LlmPlanner):
            if self.model is None:
                problems.append("no model client for the llm planner")
            budget = spec.policy.budget
            if budget.model_tokens == 0 or budget.payment_units == 0:
                problems.append("the model budget is zero")
        return problems

    # -- the loop -----------------------------------------------------------------------------
    def _drive(self, job: _Job, wait: bool) -> AgentResult:
        spec = job.spec
        while not job.state.done:
            if job.state.status == "waiting_approval":
                if not self._await_approval(job, wait):
                    return self._result(job, None)
                continue
            if job.deadline is not None and self.clock() >= job.deadline:
                job.state = loop.fail(job.state, "the job's deadline passed before it finished")
                break
            if job.state.pending is not None:
                # NOTE: a call planned before a restart: run it as planned, with the same action key
                pending = job.state.pending
                self._execute(job, action_from_json(pending["action"]), pending["model_output"], pending["action_key"])  # type: ignore[arg-type]
                self._checkpoint(job)
                continue
            job.state = loop.begin_iteration(job.state, spec.max_steps)
            if job.state.done:
                break
            if isinstance(spec.planner, LlmPlanner):
                call, model_output = self._plan_llm(job, spec.planner)
            else:
                call, model_output = self._plan_rules(job, spec.planner), None
            if call is not None and not job.state.done:
                action_key = f"{job.job_id}:{job.state.step}:{call.qualified_name}"
                self._log(job, "action", {"action": action_json(call), "action_key": action_key})
                job.state = loop.call_planned(job.state, call, model_output, action_key)
                self._checkpoint(job)
                self._execute(job, call, model_output, action_key)
            self._checkpoint(job)
        return self._finalize(job)

    def _plan_llm(self, job: _Job, planner: LlmPlanner) -> tuple[Call | None, str | None]:
        spec = job.spec
        budget = check_budget(spec.policy.budget, job.state.usage.total_tokens, job.price_per_1k)
        if not budget.allowed:
            self._log(job, "policy", budget.as_json())
            job.state = loop.fail(job.state, f"out of budget: {budget.reason}")
            return None, None
        functions = sorted(job.functions.values(), key=lambda f: f.qualified_name)
        infos = [FunctionInfo(f.qualified_name, f.description, f.json_schema()) for f in functions]
        messages = llm_messages(spec, infos, job.input, job.state.history, planner.history_steps)
        max_tokens = planner.max_tokens
        if spec.policy.budget.model_tokens is not None:
            max_tokens = max(1, min(max_tokens, spec.policy.budget.model_tokens - job.state.usage.total_tokens))
        request = ModelRequest(
            model=spec.model or "", messages=tuple(messages), tools=tool_definitions(functions),
            json_schema=action_schema(infos, planner.max_arg_chars) if planner.json_schema else None,
            max_tokens=max_tokens, temperature=planner.temperature,
        )  # fmt: skip
        prompt_hash = sha256_hex(canonical(jsonable({"messages": request.messages, "tools": request.tools,
                                                     "json_schema": request.json_schema, "max_tokens": max_tokens,
                                                     "temperature": request.temperature})))  # fmt: skip
        assert self.model is not None  # NOTE: admission refused llm jobs without a model client
        reply = None
        attempts = 1 + spec.policy.tool_retries
        for attempt in range(1, attempts + 1):
            try:
                reply = self.model.generate(request)
                break
            except ModelUnavailable as exc:
                self._log(job, "model", {"prompt_hash": prompt_hash, "attempt": attempt, "error": str(exc),
                                         "retryable": exc.retryable})  # fmt: skip
                if not exc.retryable or attempt == attempts:
                    job.state = loop.fail(job.state, f"model unavailable after {attempt} attempt(s): {exc}")
                    return None, None
                self.sleep(spec.policy.retry_backoff_s * 2 ** (attempt - 1))
        assert reply is not None
        self._log(job, "model", {
            "prompt_hash": prompt_hash, "output": reply.text, "finish_reason": reply.finish_reason,
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
        })  # fmt: skip
        # NOTE: the model's own words are what the history shows it; tool calls are echoed as JSON
        echo = reply.text or canonical([{"tool": c.name, "args": c.arguments} for c in reply.tool_calls])
        job.state, call, malformed = loop.model_replied(job.state, echo, reply.tool_calls, reply.prompt_tokens,
                                                        reply.completion_tokens, set(job.functions),
                                                        planner.max_malformed, reply.finish_reason == "length")  # fmt: skip
        if malformed is not None:
            self._log(job, "malformed", {"problem": malformed.problem, "in_a_row": job.state.malformed_in_a_row})
        elif job.state.status == "succeeded":
            self._log(job, "decision", {"action": {"type": "finish", "output": job.state.output}})
        return call, echo

    def _plan_rules(self, job: _Job, planner: RulesPlanner) -> Call | None:
        env = self._rules_env(job, planner)
        prompt_hash = sha256_hex(canonical(jsonable({"from_rule": job.state.rule_index, "variables": job.state.variables})))
        decision = rules_next(planner, job.state.rule_index, env)
        entry: dict[str, Any] = {"prompt_hash": prompt_hash, "skipped": list(decision.skipped),
                                 "action": action_json(decision.action) if decision.action else None}  # fmt: skip
        self._log(job, "decision", entry)
        job.state, call = loop.rules_decided(job.state, decision)
        return call

    def _rules_env(self, job: _Job, planner: RulesPlanner) -> dict[str, Any]:
        agent = {"name": job.spec.name, "address": self.signer.address if self.signer else None}
        return {**job.state.variables, "input": job.input, "vars": planner.vars, "agent": agent,
                "job": {"id": job.job_id, "deadline": job.deadline}}  # fmt: skip

    def _execute(self, job: _Job, call: Call, model_output: str | None, action_key: str) -> None:
        """Run one call: rate limits, tool with retries, signer decisions; update the state."""
        policy = job.spec.policy
        tool = job.tools.get(call.tool)
        if tool is None or call.qualified_name not in job.functions:
            job.state = loop.tool_failed(job.state, call, model_output, f"no tool function {call.qualified_name}")
            return
        keys = [call.tool, call.qualified_name]
        while True:
            now = self.clock()
            window = max((policy.rate_limits[k].per_s for k in keys if k in policy.rate_limits), default=0.0)
            recent = self.store.recent_calls(job.spec.name, keys, now - window) if window else {}
            decision = check_rate(policy, call.tool, call.function, recent, now)
            if decision.verdict != "wait":
                break
            if job.deadline is not None and now + decision.retry_after_s >= job.deadline:
                self._log(job, "policy", {**decision.as_json(), "verdict": "deny"})
                job.state = loop.tool_failed(job.state, call, model_output, f"rate limited ({decision.reason}) past the deadline")
                return
            self._log(job, "policy", decision.as_json())
            self.sleep(decision.retry_after_s)
        self._log(job, "policy", decision.as_json())
        ctx = ToolContext(job.job_id, job.spec.name, job.state.step, action_key, policy, job.deadline, self.signer,
                          lambda host: _require_domain(job.spec, host))  # fmt: skip
        attempts = 1 + policy.tool_retries
        for attempt in range(1, attempts + 1):
            self.store.record_call(job.spec.name, keys, self.clock())
            try:
                result = tool.invoke(call.function, call.args, ctx)
            except ApprovalRequired as exc:
                self._log(job, "policy", {"verdict": "approve", "rule": "policy.spend_caps.approval_above",
                                          "reason": exc.summary, "approval_id": exc.approval_id})  # fmt: skip
                job.state = loop.wait_for_approval(job.state, exc.approval_id)
                return
            except PolicyDenied as exc:
                self._log(job, "policy", {"verdict": "deny", "rule": exc.rule, "reason": exc.reason})
                job.state = loop.tool_failed(job.state, call, model_output, str(exc))
                return
            except ToolFailure as exc:
                self._log(job, "tool", {"call": call.qualified_name, "args": call.args, "attempt": attempt,
                                        "error": str(exc), "retryable": exc.retryable})  # fmt: skip
                if not exc.retryable or attempt == attempts:
                    tries = f" after {attempt} attempts" if attempt > 1 else ""
                    job.state = loop.tool_failed(job.state, call, model_output, f"{exc}{tries}")
                    return
                self.sleep(policy.retry_backoff_s * 2 ** (attempt - 1))
                continue
            self._log(job, "tool", {"call": call.qualified_name, "args": call.args, "attempt": attempt, "result": result})
            job.state = loop.tool_done(job.state, call, model_output, result)
            return

    def _await_approval(self, job: _Job, wait: bool) -> bool:
        """Wait for the pending approval; True when the loop can go on, False to return (``wait=False``)."""
        pending = job.state.pending
        assert pending is not None and pending["approval_id"] is not None
        call = action_from_json(pending["action"])
        assert isinstance(call, Call)
        while True:
            approval = self.store.approval(pending["approval_id"])
            deadline_passed = job.deadline is not None and self.clock() >= job.deadline
            if approval.status == "approved":
                self._log(job, "approval", {"approval_id": approval.id, "status": "approved", "by": approval.decided_by,
                                            "note": approval.note})  # fmt: skip
                job.state = loop.approval_given(job.state)
                self._checkpoint(job)
                return True  # NOTE: the pending call runs again in _drive; the signer now lets it through
            if approval.status == "denied":
                self._log(job, "approval", {"approval_id": approval.id, "status": "denied", "by": approval.decided_by,
                                            "note": approval.note})  # fmt: skip
                job.state = loop.approval_given(job.state)
                job.state = loop.tool_failed(job.state, call, pending["model_output"],
                                             f"approval {approval.id} denied by {approval.decided_by}: {approval.note or 'no reason given'}")  # fmt: skip
                self._checkpoint(job)
                return True
            if approval.status == "expired" or deadline_passed:
                self._log(job, "approval", {"approval_id": approval.id, "status": "expired"})
                job.state = loop.fail(job.state, f"approval {approval.id} was not given before the deadline ({approval.summary})")
                self._checkpoint(job)
                return True
            if not wait:
                return False
            left = (job.deadline - self.clock()) if job.deadline is not None else self.poll_interval_s
            self.sleep(max(0.0, min(self.poll_interval_s, left)))

    # -- tools ----------------------------------------------------------------------------------
    def _build_tools(self, spec: AgentSpec) -> dict[str, Tool]:
        tools: dict[str, Tool] = {}
        for config in spec.tools:
            if config.type == "evm":
                tools[config.name] = EvmTool(config, self._w3[config.chain_id])
            elif config.type == "ipfs":
                assert self.artifacts is not None
                tools[config.name] = IpfsTool(config, self.artifacts)
            elif config.type == "http":
                tools[config.name] = HttpTool(config)
            elif config.type == "sql":
                assert self.sql_url is not None
                tools[config.name] = SqlTool(config, self.sql_url)
            else:
                installed = self.custom_tools[config.name]
                tool = installed if isinstance(installed, Tool) else installed(config)
                tool._tool_name = config.name  # type: ignore[attr-defined]
                tools[config.name] = tool
        return tools

    # -- bookkeeping ----------------------------------------------------------------------------
    def _ms(self) -> int:
        return int(self.clock() * 1000)

    def _log(self, job: _Job, kind: str, data: Mapping[str, Any]) -> None:
        job.transcript.append(kind, job.state.step, data, self._ms())

    def _checkpoint(self, job: _Job) -> None:
        self.store.checkpoint(job.job_id, job.state.status,
                              {"state": job.state.as_json(), "transcript": job.transcript.to_document()})  # fmt: skip

    def _finalize(self, job: _Job) -> AgentResult:
        state = job.state
        cost = cost_units(state.usage.total_tokens, job.price_per_1k)
        self._log(job, "finish", {"status": state.status, "output": state.output, "reason": state.reason,
                                  "usage": state.usage.as_json(), "cost_units": cost})  # fmt: skip
        cid = self._pin(job.transcript.to_bytes()) if self.artifacts is not None else None
        result = self._result(job, cid)
        self.store.checkpoint(job.job_id, state.status, {"state": state.as_json(), "transcript": job.transcript.to_document()},
                              result.document())  # fmt: skip
        return result

    def _result(self, job: _Job, cid: str | None) -> AgentResult:
        state = job.state
        status: ResultStatus = "waiting_approval" if state.status == "waiting_approval" else \
            ("succeeded" if state.status == "succeeded" else "failed")  # fmt: skip
        reason = state.reason
        if status == "waiting_approval" and state.pending:
            reason = f"waiting for approval {state.pending['approval_id']}"
        return AgentResult(job.job_id, status, state.output, reason, cid, job.transcript.root, state.usage,
                           cost_units(state.usage.total_tokens, job.price_per_1k), state.step)  # fmt: skip

    def _pin(self, data: bytes) -> str:
        assert self.artifacts is not None
        for attempt in range(1, PIN_ATTEMPTS + 1):
            try:
                return self.artifacts.add_bytes(data, pin=True)
            except (OSError, NodeAIError):  # NOTE: nodeai.ipfs.IpfsError for a failing node
                if attempt == PIN_ATTEMPTS:
                    raise
                self.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release the model client, if it has a close method."""
        close = getattr(self.model, "close", None)
        if callable(close):
            close()


def _require_domain(spec: AgentSpec, host: str) -> None:
    decision = check_domain(spec.policy, host)
    if not decision.allowed:
        raise PolicyDenied(decision.rule, decision.reason)


__all__ = ["AgentRuntime", "AgentResult", "SpecError"]
