"""The provider daemon (DESIGN.md section 4): keys, registration, job loop, settlement, scale-out workers.

Modules, one concept each::

    config.py      the typed TOML config (every option documented once)
    tx.py          dry run, local nonces, fee bumping, classified retries
    state.py       the local job records (SQLite, WAL), written before every side effect
    reconcile.py   (local record, chain view) -> next action; pure
    policy.py      claim policy and job charge; pure
    chain.py       start-up checks, registration plan, job calls, commitment-checked job view
    executors.py   Executor interface, registry by job kind, batch inference on a serving Engine
    artifacts.py   artifact store surface (nodeai.ipfs backends, or a content-addressed folder)
    queue.py       NATS JetStream work queue for scale-out workers
    settlement.py  voucher redemption and receipt-root commits in batches
    loop.py        ProviderDaemon and run_worker
    metrics.py, http.py, logs.py   observability
    cli.py         `nodeai node init|run|worker|status`, `nodeai logs`
"""

from __future__ import annotations

import importlib
from typing import Any

# NOTE: exports resolve on first use, so `nodeai --help` (which mounts nodeai.node.cli) does not
# pay for importing web3, FastAPI and the indexer.
_EXPORTS = {
    "ConfigError": "config", "NodeConfig": "config", "PlaintextKeyError": "config", "example_config": "config",
    "load_config": "config", "AgentExecutor": "executors", "BatchInferenceExecutor": "executors",
    "ExecutionResult": "executors", "Executor": "executors", "ExecutorRegistry": "executors", "JobContext": "executors",
    "ProviderDaemon": "loop", "run_worker": "loop", "ReceiptBatch": "settlement", "ReceiptSource": "settlement",
    "RedeemableVoucher": "settlement", "VoucherSource": "settlement", "JobRecord": "state", "Phase": "state",
}  # fmt: skip
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nodeai.node' has no attribute {name!r}")
    return getattr(importlib.import_module(f"nodeai.node.{_EXPORTS[name]}"), name)
