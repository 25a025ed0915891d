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
