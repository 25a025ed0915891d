"""``eth_getLogs`` range planning: pure logic, no I/O.

Providers cap ``eth_getLogs`` two ways: by the number of logs in one answer
(geth and Infura: 10,000) and by the width of the block range (QuickNode:
10,000 blocks, BSC: 5,000, Cloudflare: 800, ...). Neither cap is advertised
in a machine-readable way, so the indexer learns them from the errors:

* :func:`classify_rpc_error` maps a provider's error (code and message) to an
  :class:`RpcErrorKind` that says what to do next (retry, shrink, give up);
* :func:`suggested_range` reads the range or the span limit some providers
  put into the message ("this block range should work: [0x1, 0x2]");
* :class:`RangePlanner` is the adaptive span: it grows after sparse successes
  and shrinks after range errors, within ``[min_span, max_span]``;
* :class:`RangeWalk` walks ``[start, end]`` with a planner so that the
  fetched ranges cover every block exactly once, whatever fails on the way.

Every value here is immutable: a step returns a new planner or walk, so a
caller can persist or log the state and tests can replay any sequence.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from enum import Enum

__all__ = [
    "RangePlanner",
    "RangeWalk",
    "RpcErrorKind",
    "classify_rpc_error",
    "parse_block_limit",
    "parse_suggested_range",
    "split_range",
    "suggested_range",
]


class RpcErrorKind(Enum):
    """What an RPC failure means for the caller."""

    TOO_MANY_RESULTS = "too_many_results"  # the answer would exceed the provider's log cap: fetch fewer blocks
    RANGE_TOO_LARGE = "range_too_large"  # the block range exceeds the provider's span cap: fetch fewer blocks
    TIMEOUT = "timeout"  # the node gave up (or we did) before answering: fewer blocks, or another node
    RATE_LIMITED = "rate_limited"  # the provider throttles us: wait, or another node
    TRANSIENT = "transient"  # unreachable, overloaded or behind: retry, or another node
    TERMINAL = "terminal"  # the request itself is wrong or refused: retrying cannot help

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later or on another node."""
        return self in _RETRYABLE

    @property
    def shrinks_range(self) -> bool:
        """Whether a smaller block range is the cure (for ``eth_getLogs``)."""
        return self in _SHRINKING


_RETRYABLE = frozenset({RpcErrorKind.TIMEOUT, RpcErrorKind.RATE_LIMITED, RpcErrorKind.TRANSIENT})
# NOTE: a timeout on eth_getLogs is nearly always a range that is too heavy for
# the node; shrinking it is the cure, retrying the same range is not.
_SHRINKING = frozenset({RpcErrorKind.TOO_MANY_RESULTS, RpcErrorKind.RANGE_TOO_LARGE, RpcErrorKind.TIMEOUT})


def _patterns(*pairs: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in pairs)


# NOTE: matched in this order, first match wins. Result caps come first because
# Alchemy's result-cap message also mentions a block range; rate limits come
# before the bare "limit exceeded" of EIP-1474 because Infura says "project ID
# request rate exceeded" with the same code -32005.
_MESSAGE_RULES: tuple[tuple[RpcErrorKind, tuple[re.Pattern[str], ...]], ...] = (
    (
        RpcErrorKind.TOO_MANY_RESULTS,
        _patterns(
            r"query returned more than \d+ results",  # geth eth/filters; Infura and thirdweb add "Try with this block range [..]"; Polygon zkEVM
            r"log response size exceeded",  # Alchemy: "Log response size exceeded. You can make ... should work: [0x.., 0x..]"
            r"query exceeds max results",  # reth, erigon, dRPC, BlastAPI: "... 20000, retry with the range A-B"
            r"logs matched by query exceeds limit",  # Arbitrum Nitro: "logs matched by query exceeds limit of 10000"
            r"response size should not greater than",  # 1RPC: "response size should not greater than 10000000 bytes"
            r"backend response too large",  # Optimism / Base public endpoints (-32020)
            r"response (?:is )?too (?:big|large)",  # Soneium and other proxies
            r"too many logs",  # generic proxies
        ),
    ),
    (
        RpcErrorKind.RANGE_TOO_LARGE,
        _patterns(
            r"block range is too wide",  # Ankr (-32600)
            r"limited to an? \d[\d,.]*k? (?:block )?range",  # QuickNode: "eth_getLogs is limited to a 10,000 range" (-32614); Blast
            r"limited to [\d,.]+ blocks?",  # BlockPI
            # BSC: "exceed maximum block range: 5000"; PublicNode: "maximum block range: 50000";
            # reth, Hyperliquid: "query exceeds max block range 100000"; Morph: "... max block range = 5000";
            # Scroll: "block range is bigger than maxBlockRange"
            r"max(?:imum)? ?block ?range",
            r"block range (?:is )?too (?:large|high|big)",  # Base/Coinbase "block range too large"; Optimism "Block range is too large"; Candle "too high"
            r"range too large",  # Cloudflare: "'fromBlock'-'toBlock' range too large. Max range: 800" (-32047); Arc (-32012)
            r"block range limit exceeded",  # Chainstack: "Block range limit exceeded."
            r"limit the query to at most [\d,.]+ blocks",  # Coinbase: "please limit the query to at most 1000 blocks"
            r"range \d+ exceeds limit of \d+",  # Infura (live API, -32602): "range 1000000 exceeds limit of 10000"
            r"bigger than range limit",  # thirdweb (in `data`): "range 20000 is bigger than range limit 2000"
            r"requests with up to an? \d[\d,.]*k? block range",  # Alchemy free tier: "... with up to a 10 block range"
            r"exceeds the range allowed for your plan",  # Blast paid plans: "(5000 > 500)"
        ),
    ),
    (
        RpcErrorKind.RATE_LIMITED,
        _patterns(
            r"rate.?limit",  # "rate limit exceeded" (many), "over rate limit" (Cloudflare), "rate limited"
            r"too many requests",  # Ankr, LlamaRPC, plain HTTP 429 bodies
            r"request rate exceeded|request count exceeded",  # Infura (-32005): "project ID request rate exceeded"
            r"compute units per second",  # Alchemy (code 429): "Your app has exceeded its compute units per second capacity"
            r"request limit reached|exceeded .*capacity|throttl",  # QuickNode and other gateways
        ),
    ),
    (
        RpcErrorKind.TIMEOUT,
        _patterns(
            r"timed out",  # geth rpc (-32002): "request timed out"; Cloudflare; "queued request timed out"
            r"timeout",  # Alchemy: "Query timeout exceeded. Consider reducing your block range."; Etherscan
            r"deadline exceeded",  # erigon and other Go nodes: "context deadline exceeded"
        ),
    ),
    (
        RpcErrorKind.TERMINAL,
        _patterns(
            r"invalid block range params",  # geth: fromBlock > toBlock
            r"method not found|not supported|unsupported method|does not exist/is not available",
            r"unauthori[sz]ed|forbidden|invalid api key|project id|must be authenticated",
        ),
    ),
    (
        RpcErrorKind.TRANSIENT,
        _patterns(
            r"header not found",  # geth (-32000): the node has not imported the block yet (lagging) or pruned it
            r"unknown block",  # geth / erigon: same
            r"block not (?:yet )?(?:found|imported|available)",  # erigon, Arc (-32014): "block not yet imported"
            r"blockoutofrangeerror|block height is \d+ but requested was",  # anvil (-32602) for blocks past its head
            r"missing trie node",  # a pruned (non-archive) node: another node may be an archive
            r"service unavailable|bad gateway|internal server error|temporarily unavailable|try again",
            r"connection (?:reset|refused|closed|aborted)|overloaded|server is busy",
        ),
    ),
)
# NOTE: the bare EIP-1474 "limit exceeded" (erigon, nethermind; code -32005) is
# read as a result cap: shrinking a range that was in fact rate limited costs
# a few smaller requests, while retrying a range that hit a result cap can
# never succeed.
_LIMIT_EXCEEDED = re.compile(r"limit exceeded", re.IGNORECASE)
_REVERTED = re.compile(r"execution reverted|\brevert(?:ed)?\b", re.IGNORECASE)


def classify_rpc_error(code: int | None, message: str) -> RpcErrorKind:
    """Classify a failed RPC request.

    ``code`` is the JSON-RPC error code, the HTTP status when the reply was not
    a JSON-RPC error, or ``None`` for a transport failure (no reply at all);
    ``message`` is the provider's text (include the error's ``data`` when it is
    a string: thirdweb puts the details there). The message decides first
    because providers reuse codes (-32000, -32005, -32602) for unrelated
    errors; the code decides when the message is unknown.
    """
    # NOTE: a revert carries the contract's own text ("market: rate limit"),
    # which must not be read as a provider's words; the same call reverts again.
    if code == 3 or _REVERTED.search(message):
        return RpcErrorKind.TERMINAL
    for kind, patterns in _MESSAGE_RULES:
        if any(pattern.search(message) for pattern in patterns):
            return kind
    if code == -32005 or _LIMIT_EXCEEDED.search(message):
        return RpcErrorKind.TOO_MANY_RESULTS
    return _classify_code(code)


def _classify_code(code: int | None) -> RpcErrorKind:
    if code is None:
        return RpcErrorKind.TRANSIENT  # no reply at all: connection refused or reset
    if code == 429:
        return RpcErrorKind.RATE_LIMITED  # HTTP 429, and Alchemy's JSON-RPC code 429
    if code in (408, 504, 524, -32002):
        return RpcErrorKind.TIMEOUT  # HTTP request/gateway timeouts, Cloudflare 524, geth -32002
    if code in (500, 502, 503, 520, 521, 522, 523):
        return RpcErrorKind.TRANSIENT  # server or gateway down
    if 400 <= code < 500:
        return RpcErrorKind.TERMINAL  # 401/403 (API key), 404 (wrong URL), 413 (request too big)
    if code in (-32000, -32603):
        # NOTE: -32000 is geth's catch-all "server error" and -32603 the
        # internal error; unknown ones are retried (a bounded number of times).
        return RpcErrorKind.TRANSIENT
    return RpcErrorKind.TERMINAL  # -32700, -32600, -32601, -32602, 3 (revert), ...


_HEX_RANGE = re.compile(r"\[\s*(0x[0-9a-f]+)\s*,\s*(0x[0-9a-f]+)\s*\]", re.IGNORECASE)
_DECIMAL_RANGE = re.compile(r"retry with the range (\d+)\s*-\s*(\d+)", re.IGNORECASE)


def parse_suggested_range(message: str) -> tuple[int, int] | None:
    """The block range a provider's error message suggests, inclusive, or ``None``.

    Alchemy ("this block range should work: [0x1, 0x2]"), Infura and thirdweb
    ("Try with this block range [0x1, 0x2].") write hex; reth, erigon and dRPC
    ("retry with the range 1-2") write decimal.
    """
    match = _HEX_RANGE.search(message)
    if match:
        low, high = int(match[1], 16), int(match[2], 16)
    else:
        match = _DECIMAL_RANGE.search(message)
        if not match:
            return None
        low, high = int(match[1]), int(match[2])
    return (low, high) if low <= high else None


_LIMIT_RULES = _patterns(
    r"limited to an? (\d[\d,.]*k?) (?:block )?range",  # QuickNode, Blast
    r"limited to (\d[\d,.]*k?) blocks?",  # BlockPI
    r"max(?:imum)? ?block ?range\s*[:=]?\s*(\d[\d,.]*k?)",  # BSC, PublicNode, reth, Morph
    r"max range:\s*(\d[\d,.]*k?)",  # Cloudflare
    r"at most (\d[\d,.]*k?) blocks",  # Coinbase
    r"exceeds limit of (\d[\d,.]*k?)",  # Infura
    r"range limit (\d[\d,.]*k?)",  # thirdweb
    r"up to an? (\d[\d,.]*k?) block range",  # Alchemy free tier
    r"allowed for your plan \(\d+ > (\d+)\)",  # Blast paid plans
)


def parse_block_limit(message: str) -> int | None:
    """The largest block span a RANGE_TOO_LARGE message names ("limited to a 10,000 range"), or ``None``."""
    for pattern in _LIMIT_RULES:
        match = pattern.search(message)
        if match:
            text = match[1].lower().replace(",", "").replace(".", "")
            value = int(text[:-1]) * 1_000 if text.endswith("k") else int(text) if text else 0
            if value > 0:
                return value
    return None


def suggested_range(kind: RpcErrorKind, message: str, start: int) -> tuple[int, int] | None:
    """The range to try next for a request that started at ``start`` and failed with ``message``.

    An explicit range in the message wins; otherwise a RANGE_TOO_LARGE message
    that names the provider's span limit gives ``[start, start + limit - 1]``.
    """
    explicit = parse_suggested_range(message)
    if explicit is not None:
        return explicit
    if kind is RpcErrorKind.RANGE_TOO_LARGE:
        limit = parse_block_limit(message)
        if limit is not None:
            # NOTE: "limited to N" means N blocks to some providers and
            # to - from <= N (N + 1 blocks) to others; N blocks suits both.
            return (start, start + limit - 1)
    return None


def split_range(start: int, end: int) -> list[tuple[int, int]]:
    """Halve the inclusive range ``[start, end]``; a single block stays whole."""
    if start > end:
        raise ValueError(f"empty block range [{start}, {end}]: pass start <= end")
    if start == end:
        return [(start, end)]
    middle = start + (end - start) // 2
    return [(start, middle), (middle + 1, end)]


@dataclass(frozen=True)
class RangePlanner:
    """The adaptive ``eth_getLogs`` span, as an immutable value.

    ``span`` is the number of blocks the next request asks for; ``0`` (the
    default) means ``initial_span``. ``span_limit`` is the provider's span cap
    once an error has revealed it (``None`` until then): growth never passes
    it again, so a capped provider is not probed with a failing request after
    every success.
    """

    min_span: int = 1
    max_span: int = 10_000
    initial_span: int = 2_000
    growth: float = 2.0
    shrink: float = 0.5
    # NOTE: providers cap answers at 10,000 logs; a range that already brought
    # more than half of that would likely hit the cap if it doubled.
    dense_logs: int = 5_000
    span: int = 0
    span_limit: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_span <= self.initial_span <= self.max_span:
            raise ValueError(
                f"RangePlanner needs 1 <= min_span <= initial_span <= max_span, got "
                f"{self.min_span}, {self.initial_span}, {self.max_span}"
            )
        if self.growth < 1.0 or not 0.0 < self.shrink < 1.0:
            raise ValueError(f"RangePlanner needs growth >= 1 and 0 < shrink < 1, got {self.growth}, {self.shrink}")
        if self.span_limit is not None and self.span_limit < self.min_span:
            raise ValueError(f"span_limit {self.span_limit} is below min_span {self.min_span}")
        if self.span == 0:
            object.__setattr__(self, "span", min(self.initial_span, self.ceiling))
        elif not self.min_span <= self.span <= self.ceiling:
            raise ValueError(f"span {self.span} outside [{self.min_span}, {self.ceiling}]")

    @property
    def ceiling(self) -> int:
        """The largest span this planner will ask for."""
        return self.max_span if self.span_limit is None else min(self.max_span, self.span_limit)

    def next_range(self, start: int, end: int) -> tuple[int, int]:
        """The next inclusive range to fetch of ``[start, end]``: ``span`` blocks, or fewer at the end."""
        if start > end:
            raise ValueError(f"nothing left to fetch in [{start}, {end}]: pass start <= end")
        return (start, min(start + self.span - 1, end))

    def after_success(self, n_logs: int) -> RangePlanner:
        """The planner after a range came back with ``n_logs`` logs: wider, unless the range was dense."""
        if n_logs < 0:
            raise ValueError(f"n_logs must be >= 0, got {n_logs}")
        if n_logs > self.dense_logs:
            return self
        return replace(self, span=min(self.ceiling, math.ceil(self.span * self.growth)))

    def after_error(
        self, kind: RpcErrorKind, suggested: tuple[int, int] | None = None, tried: tuple[int, int] | None = None
    ) -> RangePlanner:
        """The planner after a request for ``tried`` failed with ``kind``.

        Range errors (too many results, range too large, timeout) shrink the
        span to the provider's ``suggested`` range when it is narrower than
        what failed, else by ``shrink``; never below ``min_span``. A
        RANGE_TOO_LARGE also makes the new span the ceiling (``span_limit``)
        for good: with several providers, the smallest cap wins. Other kinds
        say nothing about the range and leave the planner unchanged.
        """
        if not kind.shrinks_range:
            return self
        # NOTE: the failed request may have been narrower than the span (the
        # last range of a walk); shrinking from the span could retry it as is.
        failed = self.span if tried is None else max(1, min(self.span, tried[1] - tried[0] + 1))
        halved = math.floor(failed * self.shrink)
        new_span = halved
        if suggested is not None:
            width = suggested[1] - suggested[0] + 1
            # NOTE: a suggestion no narrower than what just failed cannot be
            # right for this request (stale, or for another filter): halve.
            if 1 <= width < failed:
                new_span = width
        new_span = max(self.min_span, min(new_span, self.ceiling))
        limit = self.span_limit
        if kind is RpcErrorKind.RANGE_TOO_LARGE:
            # NOTE: a span cap is the provider's setting, not the chain's load:
            # growing past it again would fail again after every success. When
            # the provider names its cap the new span is exactly that; when it
            # does not, capping at the shrunk span (not at what failed, minus
            # one) converges in a few halvings instead of one block at a time.
            limit = new_span if limit is None else min(limit, new_span)
        return replace(self, span=new_span, span_limit=limit)


@dataclass(frozen=True)
class RangeWalk:
    """A walk over the inclusive block range ``[next_block, end]`` with a planner.

    ``current`` is the range to fetch now; after it succeeds,
    :meth:`after_success` moves past it; after it fails, :meth:`after_error`
    keeps the position and adapts the span. So the successful ranges tile the
    walk's blocks exactly once, in order, whatever failed in between.
    """

    next_block: int
    end: int
    planner: RangePlanner = RangePlanner()

    @property
    def done(self) -> bool:
        return self.next_block > self.end

    @property
    def current(self) -> tuple[int, int]:
        """The range to fetch now (only while not ``done``)."""
        return self.planner.next_range(self.next_block, self.end)

    def can_shrink(self) -> bool:
        """Whether a smaller request than ``current`` is possible (it is wider than ``min_span``)."""
        low, high = self.current
        return high - low + 1 > self.planner.min_span

    def after_success(self, n_logs: int) -> RangeWalk:
        return RangeWalk(self.current[1] + 1, self.end, self.planner.after_success(n_logs))

    def after_error(self, kind: RpcErrorKind, message: str = "") -> RangeWalk:
        """The walk after ``current`` failed with ``kind``; ``message`` may carry a provider's suggestion."""
        tried = self.current
        suggestion = suggested_range(kind, message, tried[0]) if message else None
        return replace(self, planner=self.planner.after_error(kind, suggestion, tried))
