"""Errors of the provider daemon, under the project's one root::

    NodeAIError
    +-- ConfigError (node.config)        the config file or an override is wrong       exit 2
    |   +-- PlaintextKeyError            a private key in the config                   exit 2
    +-- KeystoreError (nodeai.keystore)  keystore missing, unreadable, wrong password   exit 2
    +-- NodeError
        +-- StartupError                 a start-up check failed; nothing was sent      exit 2
        |   +-- RpcUnreachable           the RPC does not answer
        |   +-- ContractMissing          no code at a deployment address
        |   +-- ModelNotServable         a configured model is not registered or deprecated
        |   +-- InsufficientFunds        not enough tokens for the stake top-up
        +-- TxError                      a transaction could not be completed          exit 1
        |   +-- TxTerminal               retrying will not help (reason recorded)
        |   +-- TxStuck                  not mined after every fee bump
        +-- ExecutionError               a job could not be executed
        |   +-- UnsupportedJob           no executor for the job's kind, or bad input
        +-- QueueError                   the work queue (NATS JetStream) failed

``StartupError`` and the config/keystore errors are the operator's to fix
(exit code 2); the rest are failures (exit code 1).
"""

from __future__ import annotations

from nodeai.errors import NodeAIError


class NodeError(NodeAIError):
    """Something in the provider daemon."""


class StartupError(NodeError):
    """A start-up check failed before any transaction was sent."""


class RpcUnreachable(StartupError, ConnectionError):
    def __init__(self, url: str, detail: str):
        super().__init__(f"the RPC at {url} does not answer ({detail}): check chain.rpc_url and that the node is running")


class ContractMissing(StartupError):
    def __init__(self, name: str, address: str, rpc_url: str):
        super().__init__(
            f"no contract code at {address} ({name}) on {rpc_url}: the deployments file does not match this chain; "
            "point chain.deployments at the file written when the contracts were deployed there"
        )


class ModelNotServable(StartupError):
    def __init__(self, model_id: int, why: str):
        super().__init__(f"model {model_id} cannot be served: {why}; fix provider.models in the config")


class InsufficientFunds(StartupError):
    def __init__(self, address: str, needed: int, balance: int, what: str):
        super().__init__(
            f"{address} holds {balance} token units but {what} needs {needed}: fund the account or lower provider.stake"
        )


class TxError(NodeError):
    """A transaction could not be completed."""


class TxTerminal(TxError):
    def __init__(self, label: str, reason: str):
        self.label, self.reason = label, reason
        super().__init__(f"{label}: {reason}")


class TxStuck(TxError):
    def __init__(self, label: str, nonce: int, hashes: list[str]):
        self.label, self.nonce, self.hashes = label, nonce, hashes
        super().__init__(
            f"{label}: nonce {nonce} not mined after {len(hashes)} attempts ({', '.join(hashes)}); "
            "raise tx.max_fee_per_gas or check the node's mempool"
        )


class ExecutionError(NodeError):
    """A job could not be executed."""


class UnsupportedJob(ExecutionError):
    """The job's input names a kind no executor handles, or is malformed."""


class QueueError(NodeError):
    """The work queue failed."""
