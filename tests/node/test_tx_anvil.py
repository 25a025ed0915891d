"""The transaction manager on a real anvil: dry runs, nonce resync, fee bumping of a stuck transaction,
a dropped transaction replaced at the same nonce, terminal errors."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from eth_account import Account

from nodeai.chain.client import Transactor
from nodeai.errors import ContractReverted
from nodeai.node.config import TxConfig
from nodeai.node.errors import TxTerminal
from nodeai.node.metrics import NodeMetrics
from nodeai.node.tx import TxManager, TxStatus

from .conftest import NODE_KEY, Suite, wait_until

pytestmark = pytest.mark.integration
NODE = Account.from_key(NODE_KEY)


def manager(suite: Suite, **config: Any) -> tuple[TxManager, NodeMetrics]:
    metrics = NodeMetrics()
    settings = dict(bump_after=0.5, poll_interval=0.05, backoff=0.05, max_backoff=0.2) | config
    return TxManager(suite.w3, NODE, TxConfig(**settings), metrics), metrics


def approve(suite: Suite, amount: int):
    return suite.market.token.functions.approve(suite.market.escrow.address, amount)


def allowance(suite: Suite) -> int:
    return suite.market.token.functions.allowance(NODE.address, suite.market.escrow.address).call()


def test_dry_run_refuses_before_any_nonce_is_used(suite: Suite) -> None:
    tx, _ = manager(suite)
    fn = suite.market.providers.functions.addStake(1)  # the node is not registered
    with pytest.raises(ContractReverted, match="providers: not registered"):
        tx.send(fn, "addStake")
    assert suite.nonce(NODE.address) == 0


def test_nonce_resync_after_another_sender_used_the_key(suite: Suite) -> None:
    tx, _ = manager(suite)
    recorded: list[tuple[str, int]] = []
    tx.send(approve(suite, 1), "approve", on_signed=lambda h, n: recorded.append((h, n)))
    # another process with the same key moves the account on: the local nonce is now stale
    Transactor(suite.w3, NODE).send(approve(suite, 2), "approve elsewhere")
    result = tx.send(approve(suite, 3), "approve", on_signed=lambda h, n: recorded.append((h, n)))
    assert allowance(suite) == 3
    assert [n for _, n in recorded] == [0, 1, 2]  # nonce 1 was tried, refused as too low, resynced to 2
    assert result.tx_hash == recorded[-1][0]
    assert suite.nonce(NODE.address) == 3


def test_stuck_transaction_is_replaced_with_higher_fees_at_the_same_nonce(suite: Suite) -> None:
    tx, metrics = manager(suite)
    tx.send(approve(suite, 1), "approve")  # nonce tracking warm
    suite.rpc("evm_setAutomine", [False])
    recorded: list[tuple[str, int]] = []
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", tx.send(
        approve(suite, 7), "approve", on_signed=lambda h, n: recorded.append((h, n)))))
    try:
        worker.start()
        wait_until(lambda: len(recorded) >= 3, 20, "two fee bumps")
    finally:
        suite.rpc("evm_setAutomine", [True])
        suite.rpc("evm_mine")
        worker.join(timeout=30)
    assert not worker.is_alive()
    nonces = {n for _, n in recorded}
    assert nonces == {1}, "a replacement must reuse the stuck transaction's nonce"
    txs = [suite.w3.eth.get_transaction(recorded[-1][0])]
    mined = outcome["result"]
    assert mined.tx_hash in [h for h, _ in recorded]
    fees = []
    for h, _ in recorded:
        try:
            fees.append(suite.w3.eth.get_transaction(h)["maxPriorityFeePerGas"])
        except Exception:  # noqa: BLE001 - replaced transactions leave the pool
            continue
    assert txs[0]["maxPriorityFeePerGas"] == max(fees)
    first = 10**9  # anvil's suggested priority fee
    assert txs[0]["maxPriorityFeePerGas"] >= first * 1.125**2 - 1
    assert suite.nonce(NODE.address) == 2 and allowance(suite) == 7
    assert metrics.txs_bumped.labels("approve")._value.get() >= 2
    assert tx.status(mined.tx_hash) is TxStatus.MINED


def test_dropped_transaction_is_sent_again_at_its_nonce(suite: Suite) -> None:
    tx, _ = manager(suite)
    suite.rpc("evm_setAutomine", [False])
    recorded: list[tuple[str, int]] = []
    dropped: list[str] = []

    def on_signed(tx_hash: str, nonce: int) -> None:
        recorded.append((tx_hash, nonce))

    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", tx.send(approve(suite, 9), "approve",
                                                                                on_signed=on_signed)))
    try:
        worker.start()
        first = wait_until(lambda: recorded and suite.w3.eth.get_transaction(recorded[0][0]) and recorded[0][0], 10,
                           "the first broadcast")
        suite.rpc("anvil_dropTransaction", [first])
        dropped.append(first)
        assert tx.status(first) is TxStatus.UNKNOWN
        wait_until(lambda: len(recorded) >= 2, 20, "a replacement after the drop")
    finally:
        suite.rpc("evm_setAutomine", [True])
        suite.rpc("evm_mine")
        worker.join(timeout=30)
    assert outcome["result"].tx_hash != dropped[0]
    assert {n for _, n in recorded} == {0} and allowance(suite) == 9


def test_terminal_error_is_not_retried_and_leaves_no_nonce_gap(suite: Suite) -> None:
    poor = Account.create()
    tx = TxManager(suite.w3, poor, TxConfig(backoff=0.05, max_backoff=0.1))
    with pytest.raises(TxTerminal, match="enough ETH for gas"):
        tx.send(suite.market.token.functions.approve(suite.market.escrow.address, 1), "approve")
    assert tx.nonces.needs_sync, "no nonce was taken for a transaction that was never signed"
    # with a gas limit given there is no estimate: the node itself refuses the broadcast
    with pytest.raises(TxTerminal, match="(?i)the node refused the transaction: insufficient funds"):
        tx.send(suite.market.token.functions.approve(suite.market.escrow.address, 1), "approve", gas=100_000)
    assert tx.nonces.needs_sync, "the unused nonce must be given back (resync) so no gap is left"
