"""Errors of the agent runtime.

Every error subclasses :class:`nodeai.errors.NodeAIError` and builds its message
from its arguments, saying what was wrong and what to do::

    NodeAIError
    +-- AgentError
        +-- SpecError (ValueError)        an agent spec is invalid (names the field and the problem)
        +-- ExpressionError (ValueError)  a rules-workflow expression cannot be parsed or evaluated
        +-- PolicyDenied                  the policy refused an action (carries the rule that refused it)
        +-- ApprovalRequired              the action waits for a human (carries the approval id)
        +-- ApprovalNotFound (KeyError)   no approval with that id
        +-- ApprovalClosed                the approval was already decided or has expired
        +-- ToolFailure                   a tool could not do its work (``retryable`` says whether to try again)
        |   +-- ToolArgumentError         the arguments of a tool call are invalid (never retried)
        |   +-- SqlRejected               the SQL tool refused a statement that is not a plain SELECT
        +-- TranscriptInvalid             a transcript does not verify (names the first bad step)
        +-- JobNotFound (KeyError)        the runtime store has no job with that id
        +-- ModelUnavailable              the model endpoint failed (``retryable`` for transient trouble)
"""

from __future__ import annotations

from nodeai.errors import NodeAIError


class AgentError(NodeAIError):
    """Something about an agent, its spec, its tools or its policy."""


class SpecError(AgentError, ValueError):
    """An invalid agent spec; ``problems`` lists ``(field path, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  {path or '(spec)'}: {message}" for path, message in problems)
        super().__init__(f"invalid agent spec ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n{lines}")


class ExpressionError(AgentError, ValueError):
    def __init__(self, expression: str, problem: str):
        self.expression = expression
        self.problem = problem
        super().__init__(f"expression {expression!r}: {problem}")


class PolicyDenied(AgentError):
    """The policy refused an action; ``rule`` names the policy field that refused it."""

    def __init__(self, rule: str, reason: str):
        self.rule = rule
        self.reason = reason
        super().__init__(f"policy denied ({rule}): {reason}")


class ApprovalRequired(AgentError):
    """The action exceeds the approval threshold and waits as a pending approval."""

    def __init__(self, approval_id: str, summary: str):
        self.approval_id = approval_id
        self.summary = summary
        super().__init__(
            f"{summary} needs human approval: approve or deny approval {approval_id} "
            "(`python -m nodeai.agents approvals approve ID`, the Python API or POST /approvals/ID/approve)"
        )


class ApprovalNotFound(AgentError, KeyError):
    def __init__(self, approval_id: str):
        self.approval_id = approval_id
        super().__init__(f"no approval {approval_id!r}: list the pending ones with `approvals list`")

    def __str__(self) -> str:  # NOTE: KeyError would print the message in quotes
        return str(self.args[0])


class ApprovalClosed(AgentError):
    def __init__(self, approval_id: str, status: str):
        self.approval_id = approval_id
        self.status = status
        super().__init__(f"approval {approval_id} is already {status}: only pending approvals can be decided")


class ToolFailure(AgentError):
    """A tool could not do its work. ``retryable`` failures (network, timeouts) are retried by the loop."""

    def __init__(self, tool: str, message: str, *, retryable: bool = False):
        self.tool = tool
        self.message = message
        self.retryable = retryable
        super().__init__(f"{tool}: {message}")


class ToolArgumentError(ToolFailure):
    def __init__(self, tool: str, message: str):
        super().__init__(tool, message, retryable=False)


class SqlRejected(ToolFailure):
    def __init__(self, message: str):
        super().__init__("sql.query", f"{message}: only a single read-only SELECT (or WITH ... SELECT) is allowed")


class TranscriptInvalid(AgentError):
    """A transcript failed verification; ``step`` is the index of the first bad step (None: the header or root)."""

    def __init__(self, step: int | None, problem: str):
        self.step = step
        self.problem = problem
        where = "transcript" if step is None else f"transcript step {step}"
        super().__init__(f"{where}: {problem}")


class JobNotFound(AgentError, KeyError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no agent job {job_id!r} in the runtime store: start it with run(), not resume()")

    def __str__(self) -> str:
        return str(self.args[0])


class ModelUnavailable(AgentError):
    """The model endpoint failed (``retryable``: connection trouble, overload, 5xx)."""

    def __init__(self, endpoint: str, message: str, *, retryable: bool = True):
        self.endpoint = endpoint
        self.retryable = retryable
        super().__init__(f"model at {endpoint}: {message}")
