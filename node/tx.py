"""Transactions of the provider daemon: dry run, local nonces, fee bumping, classified retries.

Pure decisions first (tested with hypothesis), then the one class that does I/O:

* :func:`classify_error` - an RPC error or exception -> what to do about it
  (retry, resync the nonce, treat as sent, bump the fee, give up).
* :func:`bump_fees` - the replacement fees of a stuck transaction.
* :class:`NonceTracker` - the next nonce without asking the node for every transaction.
* :class:`TxManager` - ``send(fn, label, on_signed=...)``: ``eth_call`` dry run,
  sign with the next local nonce, call ``on_signed(hash, nonce)`` (the caller writes the
  hash to its state *before* the broadcast), broadcast, wait for the receipt and
  replace the transaction with higher fees when it sits in the mempool longer than
  ``bump_after``; transient errors retry with exponential backoff.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError, TimeExhausted, TransactionNotFound, Web3RPCError

from nodeai.chain.client import TxResult, decode_events
from nodeai.errors import ContractReverted
from nodeai.node.config import TxConfig
from nodeai.node.errors import TxStuck, TxTerminal

log = logging.getLogger("nodeai.node.tx")

__all__ = [
    "ErrorClass", "classify_error", "classify_exception", "Fees", "bump_fees", "NonceTracker", "TxManager",
    "TxStatus", "backoff_delay",
]  # fmt: skip


# -- error classification (pure) -------------------------------------------------------------------------
class ErrorClass(Enum):
    TRANSIENT = "transient"          # retry the same thing after a backoff
    NONCE_TOO_LOW = "nonce_too_low"  # the nonce was used: resync from the node, rebuild
    NONCE_GAP = "nonce_gap"          # the nonce is ahead of the account: resync from the node, rebuild
    ALREADY_KNOWN = "already_known"  # the node has this exact transaction: it was sent
    UNDERPRICED = "underpriced"      # fees too low to enter or replace: bump and resend
    REVERTED = "reverted"            # the contract refuses: terminal, the reason is the contract's
    TERMINAL = "terminal"            # retrying will not help (funds, gas limit, bad signature, unknown)


# NOTE: substrings of the messages nodes answer, lower-cased; first match wins, so the specific
# ("replacement transaction underpriced") precede the general ("underpriced").
_MESSAGE_RULES: tuple[tuple[str, ErrorClass], ...] = (
    # geth core/txpool ErrNonceTooLow, anvil and reth "nonce too low", erigon same text
    ("nonce too low", ErrorClass.NONCE_TOO_LOW),
    # nethermind AcceptTxResult.OldNonce
    ("oldnonce", ErrorClass.NONCE_TOO_LOW),
    # besu TransactionInvalidReason.NONCE_TOO_LOW as text
    ("nonce is too low", ErrorClass.NONCE_TOO_LOW),
    # geth ErrNonceTooHigh (a gap, e.g. after a dropped transaction); nethermind "NonceGap"
    ("nonce too high", ErrorClass.NONCE_GAP),
    ("noncegap", ErrorClass.NONCE_GAP),
    # geth txpool ErrAlreadyKnown; anvil "transaction already imported"; besu "Known transaction";
    # nethermind AcceptTxResult.AlreadyKnown
    ("already known", ErrorClass.ALREADY_KNOWN),
    ("already imported", ErrorClass.ALREADY_KNOWN),
    ("known transaction", ErrorClass.ALREADY_KNOWN),
    ("alreadyknown", ErrorClass.ALREADY_KNOWN),
    # geth ErrReplaceUnderpriced / ErrUnderpriced; anvil the same texts; besu
    # REPLACEMENT_UNDERPRICED; nethermind "FeeTooLow"; geth core ErrFeeCapTooLow below the base fee
    ("replacement transaction underpriced", ErrorClass.UNDERPRICED),
    ("replacement_underpriced", ErrorClass.UNDERPRICED),
    ("transaction underpriced", ErrorClass.UNDERPRICED),
    ("feetoolow", ErrorClass.UNDERPRICED),
    ("max fee per gas less than block base fee", ErrorClass.UNDERPRICED),
    ("fee cap less than block base fee", ErrorClass.UNDERPRICED),
    # contract reverts (eth_call, eth_estimateGas): the contract's own message follows
    ("execution reverted", ErrorClass.REVERTED),
    ("revert", ErrorClass.REVERTED),
    # geth ErrInsufficientFunds / ErrInsufficientFundsForTransfer; anvil "insufficient funds for gas"
    ("insufficient funds", ErrorClass.TERMINAL),
    # geth/anvil eth_estimateGas when the sender's ETH caps the gas it may use: "gas required exceeds allowance"
    ("gas required exceeds allowance", ErrorClass.TERMINAL),
    # geth ErrIntrinsicGas, ErrGasLimit ("exceeds block gas limit"), ErrTxTypeNotSupported
    ("intrinsic gas too low", ErrorClass.TERMINAL),
    ("exceeds block gas limit", ErrorClass.TERMINAL),
    ("invalid sender", ErrorClass.TERMINAL),
    ("invalid chain id", ErrorClass.TERMINAL),
    # Infura / Alchemy / QuickNode rate limits and overloaded nodes
    ("rate limit", ErrorClass.TRANSIENT),
    ("too many requests", ErrorClass.TRANSIENT),
    ("limit exceeded", ErrorClass.TRANSIENT),
    # geth behind a load balancer whose backends lag one another ("header not found",
    # "unknown block"); nodes restarting ("the method ... is not available", "syncing")
    ("header not found", ErrorClass.TRANSIENT),
    ("unknown block", ErrorClass.TRANSIENT),
    ("syncing", ErrorClass.TRANSIENT),
    ("timeout", ErrorClass.TRANSIENT),
    ("timed out", ErrorClass.TRANSIENT),
    ("connection", ErrorClass.TRANSIENT),
    ("temporarily unavailable", ErrorClass.TRANSIENT),
    ("service unavailable", ErrorClass.TRANSIENT),
    ("bad gateway", ErrorClass.TRANSIENT),
)

_TRANSIENT_CODES = {
    -32005,  # EIP-1474 "limit exceeded" (Infura, Alchemy rate limits)
    -32603,  # JSON-RPC "internal error": overloaded or restarting nodes answer it for anything
    429,     # HTTP Too Many Requests, passed through as a code by some gateways
    502, 503, 504,  # HTTP gateway errors of load balancers in front of nodes
}  # fmt: skip


def classify_error(message: str, code: int | None = None) -> ErrorClass:
    """What an RPC error means for the transaction that got it.

    Unknown errors are TERMINAL: retrying something not understood can loop
    forever; the caller records the message and reconciles from the chain.
    """
    text = message.lower()
    for needle, kind in _MESSAGE_RULES:
        if needle in text:
            return kind
    if code is not None and code in _TRANSIENT_CODES:
        return ErrorClass.TRANSIENT
    return ErrorClass.TERMINAL


def classify_exception(exc: BaseException) -> ErrorClass:
    """:func:`classify_error` for the exceptions web3.py and requests raise."""
    if isinstance(exc, ContractLogicError):
        return ErrorClass.REVERTED
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, TimeExhausted, ConnectionError, TimeoutError)):
        return ErrorClass.TRANSIENT
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return ErrorClass.TRANSIENT if status in _TRANSIENT_CODES or (status or 0) >= 500 else ErrorClass.TERMINAL
    code, message = _code_and_message(exc)
    return classify_error(message, code)


def _code_and_message(exc: BaseException) -> tuple[int | None, str]:
    response = getattr(exc, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        error = response["error"]
        return error.get("code"), str(error.get("message", ""))
    if exc.args and isinstance(exc.args[0], dict):  # NOTE: web3 < 7 raised ValueError({code, message})
        return exc.args[0].get("code"), str(exc.args[0].get("message", ""))
    return None, str(exc)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before retry ``attempt`` (0-based): ``base * 2**attempt``, at most ``cap``."""
    return min(cap, base * (2 ** min(attempt, 30)))


# -- fees (pure) -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Fees:
    """EIP-1559 fees (``gas_price`` None) or a legacy gas price (the 1559 fields None)."""

    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    gas_price: int | None = None

    def as_tx(self) -> dict[str, int]:
        if self.gas_price is not None:
            return {"gasPrice": self.gas_price}
        return {"maxFeePerGas": self.max_fee_per_gas or 0, "maxPriorityFeePerGas": self.max_priority_fee_per_gas or 0}

    @property
    def cap(self) -> int:
        return self.gas_price if self.gas_price is not None else self.max_fee_per_gas or 0


def initial_fees(base_fee: int | None, priority_fee: int, ceiling: int | None = None) -> Fees:
    """Fees of a new transaction: twice the base fee plus the tip (mined for ~6 full blocks of rises)."""
    if base_fee is None:
        price = priority_fee if ceiling is None else min(priority_fee, ceiling)
        return Fees(gas_price=max(price, 1))
    max_fee = 2 * base_fee + priority_fee
    if ceiling is not None:
        max_fee = min(max_fee, ceiling)
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(priority_fee, max_fee))


def bump_fees(fees: Fees, percent: float, ceiling: int | None = None, base_fee: int | None = None) -> Fees | None:
    """Replacement fees at least ``percent`` above ``fees`` in every field, or None above ``ceiling``.

    Nodes accept a replacement only if every fee field rose by their minimum
    (geth 10 %, others 12.5 %); rounding up keeps small values rising too.
    The new fee cap also covers twice the current base fee plus the tip.
    """
    factor = 1 + percent / 100

    def up(value: int) -> int:
        return max(value + 1, math.ceil(value * factor))

    if fees.gas_price is not None:
        price = up(fees.gas_price)
        return None if ceiling is not None and price > ceiling else Fees(gas_price=price)
    priority = up(fees.max_priority_fee_per_gas or 0)
    max_fee = max(up(fees.max_fee_per_gas or 0), priority + 2 * (base_fee or 0))
    if ceiling is not None and max_fee > ceiling:
        return None
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=priority)


# -- nonces (pure) ---------------------------------------------------------------------------------------
class NonceTracker:
    """The next nonce of one account, kept locally.

    The node is asked (``eth_getTransactionCount(addr, "pending")``) only when the
    tracker knows nothing yet or was told to resync after "nonce too low" or a
    nonce left unused by a failed broadcast.
    """

    def __init__(self) -> None:
        self._next: int | None = None

    @property
    def needs_sync(self) -> bool:
        return self._next is None

    def allocate(self, chain_pending: int | None) -> int:
        """The nonce for the next transaction; ``chain_pending`` is the node's count when ``needs_sync``."""
        if self._next is None:
            if chain_pending is None:
                raise ValueError("the tracker needs the node's pending transaction count to start")
            self._next = chain_pending
        elif chain_pending is not None:
            # NOTE: another sender with the same key moved the account on: never reuse its nonces.
            self._next = max(self._next, chain_pending)
        nonce = self._next
        self._next += 1
        return nonce

    def resync(self) -> None:
        """Forget the local nonce: the next allocation reads the node's count."""
        self._next = None


# -- the I/O edge ----------------------------------------------------------------------------------------
class TxStatus(Enum):
    MINED = "mined"        # receipt with status 1
    FAILED = "failed"      # receipt with status 0
    PENDING = "pending"    # the node has it, no receipt yet
    UNKNOWN = "unknown"    # the node does not know it (never sent, dropped or replaced)


OnSigned = Callable[[str, int], None]
# NOTE: fees move at most 12.5 % per block; reading them once a second saves two RPCs per
# transaction, and a stale price only means a bump later (the base fee is covered twice over).
FEE_TTL = 1.0


@dataclass
class _Pending:
    nonce: int
    tx: dict[str, Any]
    fees: Fees
    hashes: list[str]
    sent_at: float
    bumps: int = 0


class TxManager:
    """Sends the provider's transactions; safe to call from several threads.

    ``metrics`` (optional) gets ``tx_sent(label)``, ``tx_failed(label, kind)``
    and ``tx_bumped(label)`` calls.
    """

    def __init__(self, w3: Web3, account: LocalAccount, config: TxConfig | None = None, metrics: Any = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.w3 = w3
        self.account = account
        self.config = config or TxConfig()
        self.metrics = metrics
        self.nonces = NonceTracker()
        self._lock = threading.Lock()  # NOTE: held from nonce allocation to broadcast, never while waiting
        self._sleep = sleep
        self._chain_id: int | None = None
        self._fee_cache: tuple[Fees, float] | None = None

    @property
    def address(self) -> str:
        return self.account.address

    # -- reads with retries ----------------------------------------------------------------------
    def retry(self, call: Callable[[], Any], what: str) -> Any:
        """``call()`` with transient errors retried (exponential backoff); others raise at once."""
        for attempt in range(self.config.retries + 1):
            try:
                return call()
            except (ContractLogicError, TransactionNotFound):
                raise
            except Exception as exc:  # noqa: BLE001 - classified right below
                if classify_exception(exc) is not ErrorClass.TRANSIENT or attempt == self.config.retries:
                    raise
                delay = backoff_delay(attempt, self.config.backoff, self.config.max_backoff)
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.retry(lambda: self.w3.eth.chain_id, "eth_chainId")
        return self._chain_id

    def status(self, tx_hash: str) -> TxStatus:
        """Where a transaction of ours stands."""
        try:
            receipt = self.retry(lambda: self.w3.eth.get_transaction_receipt(tx_hash), "eth_getTransactionReceipt")
        except TransactionNotFound:
            receipt = None
        if receipt is not None:
            return TxStatus.MINED if receipt["status"] == 1 else TxStatus.FAILED
        try:
            self.retry(lambda: self.w3.eth.get_transaction(tx_hash), "eth_getTransactionByHash")
        except TransactionNotFound:
            return TxStatus.UNKNOWN
        return TxStatus.PENDING

    def _fees(self) -> Fees:
        """Fees for a new transaction; read from the node at most once per ``FEE_TTL`` seconds."""
        cached = self._fee_cache
        if cached is not None and time.monotonic() - cached[1] < FEE_TTL:
            return cached[0]
        fees = self._read_fees()
        self._fee_cache = (fees, time.monotonic())
        return fees

    def _read_fees(self) -> Fees:
        block = self.retry(lambda: self.w3.eth.get_block("latest"), "eth_getBlockByNumber")
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            return initial_fees(None, self.retry(lambda: self.w3.eth.gas_price, "eth_gasPrice"), self.config.max_fee_per_gas)
        priority = self.retry(lambda: self.w3.eth.max_priority_fee, "eth_maxPriorityFeePerGas")
        return initial_fees(base_fee, priority, self.config.max_fee_per_gas)

    def _count(self) -> int:
        return self.retry(lambda: self.w3.eth.get_transaction_count(self.address, "pending"), "eth_getTransactionCount")

    # -- sending ----------------------------------------------------------------------------------
    def dry_run(self, fn: ContractFunction, label: str) -> Any:
        """``eth_call`` as the provider; a revert raises ``ContractReverted`` with the contract's message."""
        try:
            return self.retry(lambda: fn.call({"from": self.address}), f"{label} dry run")
        except ContractLogicError as exc:
            raise ContractReverted(label, _reason(exc)) from None

    def send(self, fn: ContractFunction, label: str, on_signed: OnSigned | None = None,
             gas: int | None = None) -> TxResult:
        """Dry-run, sign, record (``on_signed``), broadcast and wait; replaces with higher fees when stuck.

        Raises ``ContractReverted`` (dry run or on-chain revert), ``TxTerminal``
        (an error retrying cannot fix) or ``TxStuck``.
        """
        for _ in range(4):  # NOTE: rebuilds only after "nonce too low"/gap, which resyncs first
            self.dry_run(fn, label)
            try:
                # NOTE: nonce and fees given up front so web3 only estimates gas (one RPC, not four)
                fees = self._fees().as_tx()
                built = self.retry(lambda: fn.build_transaction({"from": self.address, "nonce": 0, "chainId": self.chain_id(),
                                                                  **fees, **({"gas": gas} if gas else {})}),
                                   f"{label} gas estimate")
            except ContractLogicError as exc:
                raise ContractReverted(label, _reason(exc)) from None
            except Exception as exc:  # noqa: BLE001 - transient ones were retried by `retry`
                message = _code_and_message(exc)[1]
                hint = "; does the account hold enough ETH for gas?" if "allowance" in message or "funds" in message.lower() else ""
                raise TxTerminal(label, f"the gas estimate failed: {message}{hint}") from None
            tx = {k: v for k, v in built.items() if k not in ("maxFeePerGas", "maxPriorityFeePerGas", "gasPrice")}
            pending = self._broadcast_new(tx, label, on_signed)
            if pending is None:
                continue
            return self._wait(pending, label, on_signed, fn.contract_abi, fn.address)
        raise TxTerminal(label, "the account's nonce kept moving under us (another sender uses this key?)")

    def _broadcast_new(self, tx: dict[str, Any], label: str, on_signed: OnSigned | None) -> _Pending | None:
        with self._lock:
            nonce = self.nonces.allocate(self._count() if self.nonces.needs_sync else None)
            pending = _Pending(nonce, dict(tx, nonce=nonce), self._fees(), [], time.monotonic())
            outcome = self._sign_and_broadcast(pending, label, on_signed)
            if outcome in (ErrorClass.NONCE_TOO_LOW, ErrorClass.NONCE_GAP):
                self.nonces.resync()
                return None
            return pending

    def _sign_and_broadcast(self, pending: _Pending, label: str, on_signed: OnSigned | None) -> ErrorClass | None:
        """Sign at ``pending.fees``, record, broadcast; None when the node took it."""
        signed = self.account.sign_transaction(dict(pending.tx, **pending.fees.as_tx()))
        tx_hash = "0x" + bytes(signed.hash).hex()
        if on_signed is not None:
            on_signed(tx_hash, pending.nonce)  # NOTE: recorded before the node sees it: a crash after this is recoverable
        pending.hashes.append(tx_hash)
        for attempt in range(self.config.retries + 1):
            try:
                self.w3.eth.send_raw_transaction(signed.raw_transaction)
                self._count_metric("tx_sent", label)
                return None
            except Exception as exc:  # noqa: BLE001 - classified right below
                kind = classify_exception(exc)
                if kind is ErrorClass.ALREADY_KNOWN:
                    return None
                if kind is ErrorClass.TRANSIENT and attempt < self.config.retries:
                    self._sleep(backoff_delay(attempt, self.config.backoff, self.config.max_backoff))
                    continue
                if kind is ErrorClass.UNDERPRICED:
                    bumped = bump_fees(pending.fees, self.config.bump_percent, self.config.max_fee_per_gas)
                    if bumped is not None and pending.bumps < self.config.max_bumps:
                        pending.fees, pending.bumps = bumped, pending.bumps + 1
                        self._count_metric("tx_bumped", label)
                        return self._sign_and_broadcast(pending, label, on_signed)
                if kind in (ErrorClass.NONCE_TOO_LOW, ErrorClass.NONCE_GAP) and len(pending.hashes) == 1:
                    log.info("%s: nonce %d rejected (%s); resyncing from the node", label, pending.nonce, exc)
                    return kind
                self._count_metric("tx_failed", label, kind.value)
                # NOTE: the nonce stays unused when this was the first broadcast: resync so no gap is left.
                if len(pending.hashes) == 1:
                    self.nonces.resync()
                raise TxTerminal(label, f"the node refused the transaction: {_code_and_message(exc)[1]}") from None
        raise AssertionError("unreachable")

    def _wait(self, pending: _Pending, label: str, on_signed: OnSigned | None, abi: list[dict], address: str) -> TxResult:
        deadline_bump = pending.sent_at + self.config.bump_after
        while True:
            for tx_hash in reversed(pending.hashes):
                try:
                    receipt = self.w3.eth.get_transaction_receipt(tx_hash)
                except TransactionNotFound:
                    continue
                except Exception as exc:  # noqa: BLE001
                    if classify_exception(exc) is not ErrorClass.TRANSIENT:
                        raise
                    continue
                if receipt["status"] != 1:
                    self._count_metric("tx_failed", label, "reverted")
                    raise ContractReverted(label, f"transaction {tx_hash} reverted on chain")
                return TxResult(label, tx_hash, receipt["gasUsed"], receipt["blockNumber"],
                                decode_events(abi, self.w3, address, receipt))
            if time.monotonic() >= deadline_bump:
                if pending.bumps >= self.config.max_bumps:
                    self._count_metric("tx_failed", label, "stuck")
                    raise TxStuck(label, pending.nonce, pending.hashes)
                if self._nonce_used_elsewhere(pending):
                    # NOTE: one of our hashes may still turn up in a receipt a moment later.
                    self._sleep(self.config.poll_interval)
                    if not any(self.status(h) is TxStatus.MINED for h in pending.hashes):
                        self._count_metric("tx_failed", label, "replaced")
                        raise TxTerminal(label, f"nonce {pending.nonce} was used by a transaction not sent by this daemon")
                    continue
                base = self.retry(lambda: self.w3.eth.get_block("latest"), "eth_getBlockByNumber").get("baseFeePerGas")
                bumped = bump_fees(pending.fees, self.config.bump_percent, self.config.max_fee_per_gas, base)
                if bumped is None:
                    self._count_metric("tx_failed", label, "fee_ceiling")
                    raise TxStuck(label, pending.nonce, pending.hashes)
                pending.fees, pending.bumps = bumped, pending.bumps + 1
                log.warning("%s: nonce %d not mined after %.0f s; replacing with fee cap %d (bump %d)", label,
                            pending.nonce, self.config.bump_after, bumped.cap, pending.bumps)
                self._count_metric("tx_bumped", label)
                with self._lock:
                    outcome = self._sign_and_broadcast(pending, label, on_signed)
                if outcome is not None:  # NOTE: nonce too low: an earlier hash of ours was mined meanwhile
                    continue
                deadline_bump = time.monotonic() + self.config.bump_after
            self._sleep(self.config.poll_interval)

    def _nonce_used_elsewhere(self, pending: _Pending) -> bool:
        latest = self.retry(lambda: self.w3.eth.get_transaction_count(self.address, "latest"), "eth_getTransactionCount")
        return latest > pending.nonce

    def resume(self, tx_hash: str, label: str, on_signed: OnSigned | None, abi: list[dict], address: str) -> TxResult:
        """Wait for (and bump if stuck) a transaction sent before a restart, known to the node."""
        tx = self.retry(lambda: self.w3.eth.get_transaction(tx_hash), "eth_getTransactionByHash")
        fields = {"to": tx["to"], "data": HexBytes(tx["input"]).to_0x_hex(), "gas": tx["gas"], "value": tx["value"],
                  "chainId": self.chain_id(), "nonce": tx["nonce"]}
        if tx.get("maxFeePerGas") is not None:
            fees = Fees(max_fee_per_gas=tx["maxFeePerGas"], max_priority_fee_per_gas=tx["maxPriorityFeePerGas"])
        else:
            fees = Fees(gas_price=tx["gasPrice"])
        pending = _Pending(tx["nonce"], fields, fees, [tx_hash], time.monotonic())
        return self._wait(pending, label, on_signed, abi, address)

    def _count_metric(self, name: str, label: str, *extra: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name)(label, *extra)


def _reason(exc: ContractLogicError) -> str:
    message = str(exc.message if getattr(exc, "message", None) else exc)
    return message.removeprefix("execution reverted: ").strip() or "reverted without a reason"
