"""Exceptions of NodeAI Hub.

One root, one subtree per domain; each error builds its message from its
arguments and says what to do next::

    NodeAIError
    +-- ChainError
    |   +-- ContractReverted          a call or transaction reverted (carries the contract's message)
    |   +-- ChainIdMismatch           the RPC serves another chain than expected
    |   +-- DeploymentNotFound        no deployments file for this chain
    +-- ToolError
        +-- AnvilNotFound             the anvil binary is not installed
        +-- CompileError              a contract failed to compile
"""

from __future__ import annotations


class NodeAIError(Exception):
    """Root of every NodeAI Hub error."""


class ChainError(NodeAIError):
    """Something about the chain or the deployed contracts."""


class ContractReverted(ChainError):
    def __init__(self, function: str, reason: str):
        self.function = function
        self.reason = reason
        super().__init__(f"{function} reverted: {reason}")


class ChainIdMismatch(ChainError, ValueError):
    def __init__(self, expected: int, actual: int, rpc_url: str):
        self.expected, self.actual = expected, actual
        super().__init__(
            f"{rpc_url} serves chain id {actual}, but the deployments are for chain id {expected}: "
            "point --rpc-url at the right network or deploy there first"
        )


class DeploymentNotFound(ChainError, FileNotFoundError):
    def __init__(self, path: str, chain_id: int):
        super().__init__(
            f"no deployments file {path} for chain id {chain_id}: run `python scripts/deploy.py --rpc-url URL` first"
        )


class ToolError(NodeAIError):
    """A local tool (compiler, anvil) is missing or failed."""


class AnvilNotFound(ToolError, FileNotFoundError):
    def __init__(self, searched: str):
        super().__init__(
            f"anvil not found (looked in {searched}): run `npm install` in the repository root "
            "(it installs @foundry-rs/anvil-linux-amd64) or set NODEAI_ANVIL to its path"
        )


class CompileError(ToolError):
    def __init__(self, contract: str, output: str):
        super().__init__(f"vyper could not compile {contract}:\n{output}")


class ServingError(NodeAIError):
    """A model engine refused or failed a request (subtree: ModelNotServed,
    ModelFilesMissing, ContextLengthExceeded, InvalidGenerationParams,
    EngineUnavailable)."""


class ModelNotServed(ServingError, LookupError):
    def __init__(self, model: str, served: list[str]):
        self.model = model
        self.served = served
        super().__init__(
            f"model {model!r} is not served by this engine: use one of {', '.join(served) or '(none)'}"
        )


class ModelFilesMissing(ServingError, FileNotFoundError):
    def __init__(self, what: str, hint: str):
        self.what = what
        super().__init__(f"{what} not found: {hint}")


class ContextLengthExceeded(ServingError, ValueError):
    def __init__(self, model: str, prompt_tokens: int, max_tokens: int, context_length: int):
        self.model = model
        self.prompt_tokens, self.max_tokens, self.context_length = prompt_tokens, max_tokens, context_length
        super().__init__(
            f"model {model!r} has a context of {context_length} tokens, but the prompt has "
            f"{prompt_tokens} tokens and max_tokens is {max_tokens} ({prompt_tokens + max_tokens} in all): "
            "shorten the prompt or lower max_tokens"
        )


class InvalidGenerationParams(ServingError, ValueError):
    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"invalid {field}: {problem}")


class EngineUnavailable(ServingError, RuntimeError):
    def __init__(self, engine: str, reason: str):
        self.engine = engine
        super().__init__(f"engine {engine!r} is unavailable: {reason}")
