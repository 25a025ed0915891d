"""NodeAI Hub agent runtime: worker loop, tools, policy engine, auditable transcripts.

Public API (the provider daemon and the CLI use these names)::

    from nodeai.agents import AgentRuntime, AgentResult, RuntimeStore, load_spec, verify_transcript

    runtime = AgentRuntime("state/agents.db", artifacts=store, model=client, wallet=wallet,
                           rpc_urls={31337: rpc_url}, sql_url=indexer_db)
    result = runtime.run(load_spec(spec_bytes), "Rebalance to 60/40", job_id="31337:7", deadline=t)
    runtime.approvals.list(); runtime.approvals.approve(approval_id, by="alice")
    verify_transcript(transcript_doc, expected_root=result.transcript_root)

Modules: ``spec`` (the agent spec), ``runtime`` (the loop's I/O), ``loop``
(its pure state machine), ``planners`` (llm and rules), ``policy`` (pure
decisions), ``signer`` (the policy-gated signer), ``store`` (SQLite state and
approvals), ``api`` (FastAPI router for approvals), ``transcript`` (hash chain),
``tools`` (the tool interface) and the tools ``evm``, ``ipfs_tool``,
``http_fetch``, ``sql``; ``python -m nodeai.agents`` is a small CLI.

Names are imported on first use, so ``import nodeai.agents.spec`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AgentRuntime": "runtime", "AgentResult": "runtime",
    "AgentSpec": "spec", "load_spec": "spec", "spec_template": "spec", "SPEC_VERSION": "spec",
    "RuntimeStore": "store", "ApprovalBook": "store", "Approval": "store",
    "ModelClient": "model", "ModelRequest": "model", "ModelReply": "model", "EngineModelClient": "model",
    "OpenAIModelClient": "model",
    "Tool": "tools", "ToolContext": "tools", "function": "tools",
    "PolicySigner": "signer", "TxIntent": "policy", "Decision": "policy",
    "Transcript": "transcript", "verify_transcript": "transcript",
    "approvals_router": "api",
    "Usage": "loop", "LoopState": "loop",
    "AgentError": "errors", "SpecError": "errors", "PolicyDenied": "errors", "ApprovalRequired": "errors",
    "ApprovalNotFound": "errors", "ApprovalClosed": "errors", "ToolFailure": "errors", "ToolArgumentError": "errors",
    "SqlRejected": "errors", "TranscriptInvalid": "errors", "JobNotFound": "errors", "ModelUnavailable": "errors",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nodeai.agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"nodeai.agents.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # NOTE: for type checkers and IDEs; at run time names load lazily above
    from nodeai.agents.api import approvals_router
    from nodeai.agents.errors import (
        AgentError, ApprovalClosed, ApprovalNotFound, ApprovalRequired, JobNotFound, ModelUnavailable, PolicyDenied,
        SpecError, SqlRejected, ToolArgumentError, ToolFailure, TranscriptInvalid,
    )  # fmt: skip
    from nodeai.agents.loop import LoopState, Usage
    from nodeai.agents.model import (
        EngineModelClient, ModelClient, ModelReply, ModelRequest, OpenAIModelClient,
    )  # fmt: skip
    from nodeai.agents.policy import Decision, TxIntent
    from nodeai.agents.runtime import AgentResult, AgentRuntime
    from nodeai.agents.signer import PolicySigner
    from nodeai.agents.spec import SPEC_VERSION, AgentSpec, load_spec, spec_template
    from nodeai.agents.store import Approval, ApprovalBook, RuntimeStore
    from nodeai.agents.tools import Tool, ToolContext, function
    from nodeai.agents.transcript import Transcript, verify_transcript
