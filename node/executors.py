"""Job execution behind one interface, chosen by the job's kind.

A job's input (the document its ``inputCid`` names) is JSON with a ``kind``::

    {"kind": "batch-inference", "prompts": ["Name a colour.", ...], "max_tokens": 16, "temperature": 0.0}
    {"kind": "batch-inference", "messages": [[{"role": "user", "content": "Hi"}], ...], "max_tokens": 16}
    {"kind": "agent", ...}                                  (the agent runtime's own input)

An :class:`Executor` turns ``(job, input bytes)`` into an :class:`ExecutionResult`:
the output bytes (uploaded to IPFS, their CID submitted), the tokens used, the
charge at the provider's price, and the 32-byte commitment submitted with the
result (the agent transcript's root, or keccak256 of the output). The
:class:`ExecutorRegistry` maps kinds to executors; the daemon fills it from its
config (``engine.factory``) and from the agent runtime when it is installed.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from eth_utils import keccak

from nodeai.node.errors import ExecutionError, UnsupportedJob
from nodeai.node.policy import job_charge
from nodeai.serving.engines.base import ChatMessage, Engine, GenerationRequest, SamplingParams

__all__ = [
    "JobContext", "ExecutionResult", "Executor", "ExecutorRegistry", "BatchInferenceExecutor", "AgentExecutor",
    "parse_input", "load_engine", "BATCH_INFERENCE", "AGENT",
]  # fmt: skip

BATCH_INFERENCE = "batch-inference"
AGENT = "agent"
MAX_PROMPTS = 256


@dataclass(frozen=True, slots=True)
class JobContext:
    """What an executor knows about the job besides its input."""

    job_id: int
    model_id: int
    engine_model: str           # the name the engine serves the model under
    price_per_1k_tokens: int    # the provider's price for this model
    max_payment: int
    deadline: int
    requester: str


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    output: bytes
    usage: int                       # tokens, as the engine counted them
    charge: int                      # token units, <= max_payment
    output_hash: bytes               # 32 bytes: transcript root, or keccak256(output)
    status: str = "ok"               # the agent runtime's status ("ok", "denied", ...), for the record
    reason: str | None = None
    transcript_cid: str | None = None

    def __post_init__(self) -> None:
        if len(self.output_hash) != 32 or self.output_hash == b"\x00" * 32:
            raise ValueError("output_hash must be 32 non-zero bytes (the contract refuses a zero hash)")
        if self.usage < 0 or self.charge < 0:
            raise ValueError("usage and charge must be >= 0")


@runtime_checkable
class Executor(Protocol):
    """Runs one kind of job."""

    kind: str

    async def execute(self, job: JobContext, input_bytes: bytes) -> ExecutionResult: ...


def parse_input(input_bytes: bytes) -> dict[str, Any]:
    """The input document; ``UnsupportedJob`` naming what is wrong when it is not one."""
    try:
        doc = json.loads(input_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedJob(f"the job input is not JSON ({exc}); expected an object with a \"kind\"") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        raise UnsupportedJob('the job input must be a JSON object with a string "kind" (e.g. "batch-inference")')
    return doc


@dataclass
class ExecutorRegistry:
    executors: dict[str, Executor] = field(default_factory=dict)

    def register(self, executor: Executor) -> None:
        self.executors[executor.kind] = executor

    @property
    def kinds(self) -> list[str]:
        return sorted(self.executors)

    async def execute(self, job: JobContext, input_bytes: bytes) -> ExecutionResult:
        kind = parse_input(input_bytes)["kind"]
        executor = self.executors.get(kind)
        if executor is None:
            raise UnsupportedJob(f"no executor for job kind {kind!r} here (this node runs: {', '.join(self.kinds) or 'none'})")
        result = await executor.execute(job, input_bytes)
        if result.charge > job.max_payment:
            raise ExecutionError(f"executor {kind} charged {result.charge} above maxPayment {job.max_payment}")
        return result


class BatchInferenceExecutor:
    """Runs every prompt of a batch-inference job through a serving :class:`Engine`, concurrently."""

    kind = BATCH_INFERENCE

    def __init__(self, engine: Engine, max_tokens: int = 256):
        self.engine = engine
        self.max_tokens = max_tokens

    def _requests(self, job: JobContext, doc: dict[str, Any]) -> list[GenerationRequest]:
        prompts, conversations = doc.get("prompts"), doc.get("messages")
        if (prompts is None) == (conversations is None):
            raise UnsupportedJob('a batch-inference input needs exactly one of "prompts" (strings) or "messages" (chats)')
        items = prompts if prompts is not None else conversations
        if not isinstance(items, list) or not items or len(items) > MAX_PROMPTS:
            raise UnsupportedJob(f"a batch-inference input needs 1 to {MAX_PROMPTS} prompts")
        try:
            params = SamplingParams(
                max_tokens=min(int(doc.get("max_tokens", 64)), self.max_tokens),
                temperature=float(doc.get("temperature", 0.0)),
                top_p=float(doc.get("top_p", 1.0)),
                stop=tuple(doc.get("stop", ())),
                seed=doc.get("seed"),
            )
            if params.max_tokens < 1:
                raise ValueError("max_tokens must be >= 1")
            if prompts is not None:
                if not all(isinstance(p, str) for p in prompts):
                    raise ValueError('"prompts" must be strings')
                return [GenerationRequest(job.engine_model, params, prompt=p) for p in prompts]
            return [
                GenerationRequest(job.engine_model, params, messages=tuple(ChatMessage(m["role"], m["content"]) for m in chat))
                for chat in conversations
            ]
        except (TypeError, ValueError, KeyError) as exc:
            raise UnsupportedJob(f"bad batch-inference input: {exc}") from None

    async def execute(self, job: JobContext, input_bytes: bytes) -> ExecutionResult:
        doc = parse_input(input_bytes)
        requests = self._requests(job, doc)
        completions = await asyncio.gather(*(self.engine.complete(r) for r in requests))
        prompt_tokens = sum(c.usage.prompt_tokens for c in completions)
        completion_tokens = sum(c.usage.completion_tokens for c in completions)
        total = prompt_tokens + completion_tokens
        output = json.dumps({
            "kind": BATCH_INFERENCE, "job_id": job.job_id, "model_id": job.model_id, "model": job.engine_model,
            "results": [{"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.usage.prompt_tokens,
                         "completion_tokens": c.usage.completion_tokens} for c in completions],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total},
        }, sort_keys=True, separators=(",", ":")).encode()  # fmt: skip
        return ExecutionResult(output, total, job_charge(total, job.price_per_1k_tokens, job.max_payment), keccak(output))


class AgentExecutor:
    """Runs agent jobs through the agent runtime (``nodeai.agents.AgentRuntime``).

    The input names the agent's spec (``"spec"`` inline or ``"spec_cid"`` on
    IPFS) and its ``"input"``. The runtime's job id is ``<chain id>:<job id>``,
    so running a job again after a restart resumes it instead of starting over.
    The submitted commitment is the transcript's root, so a dispute can check
    any step of the run against the chain; the output is the runtime's result
    document (status, output, transcript CID and root, usage).
    """

    kind = AGENT

    def __init__(self, runtime: Any, artifacts: Any, chain_id: int):
        self.runtime = runtime
        self.artifacts = artifacts
        self.chain_id = chain_id

    async def execute(self, job: JobContext, input_bytes: bytes) -> ExecutionResult:
        from nodeai.agents.errors import AgentError, SpecError

        doc = parse_input(input_bytes)
        spec, spec_cid = doc.get("spec"), doc.get("spec_cid")
        if spec is None and not isinstance(spec_cid, str):
            raise UnsupportedJob('an agent job input needs "spec" (the agent spec) or "spec_cid" (its CID)')
        if spec is None:
            spec = await asyncio.to_thread(self.artifacts.get_bytes, spec_cid)
        try:
            result = await asyncio.to_thread(
                self.runtime.run, spec, doc.get("input"), job_id=f"{self.chain_id}:{job.job_id}", spec_cid=spec_cid,
                deadline=float(job.deadline), price_per_1k_tokens=job.price_per_1k_tokens)
        except SpecError as exc:
            raise UnsupportedJob(f"bad agent spec: {exc}") from None
        except AgentError as exc:
            raise ExecutionError(f"the agent runtime failed: {exc}") from None
        output = result.document_bytes()
        root = bytes.fromhex(result.transcript_root.removeprefix("0x"))
        return ExecutionResult(output, result.usage.total_tokens, min(result.cost_units, job.max_payment), root,
                               status=result.status, reason=result.reason or None, transcript_cid=result.transcript_cid)


def load_engine(factory: str, options: dict[str, Any]) -> Engine:
    """Build the engine named ``"module:callable"`` with ``options`` as keyword arguments."""
    from nodeai.node.config import ConfigError

    module_name, _, attribute = factory.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"engine.factory {factory!r} must look like 'package.module:Callable'")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"engine.factory {factory!r} cannot be imported: {exc}") from None
    try:
        engine = target(**options)
    except TypeError as exc:
        raise ConfigError(f"engine.options do not fit {factory}: {exc}") from None
    if not isinstance(engine, Engine):
        raise ConfigError(f"engine.factory {factory} returned {type(engine).__name__}, not a serving Engine")
    return engine
