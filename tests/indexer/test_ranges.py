"""eth_getLogs range planning: error classification, suggestions, and the adaptive walk (pure, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.indexer.ranges import (
    RangePlanner,
    RangeWalk,
    RpcErrorKind,
    classify_rpc_error,
    parse_block_limit,
    parse_suggested_range,
    split_range,
    suggested_range,
)

K = RpcErrorKind

# The providers' own words (code, message), as they answer eth_getLogs and friends.
PROVIDER_ERRORS = [
    # geth eth/filters
    (-32005, "query returned more than 10000 results", K.TOO_MANY_RESULTS),
    # Infura
    (-32005, "query returned more than 10000 results. Try with this block range [0x11D3A30, 0x11D3B5E].", K.TOO_MANY_RESULTS),
    # Alchemy
    (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no limit on "
             "the response size, or you can request any block range with a cap of 10K logs in the response. Based on "
             "your parameters, this block range should work: [0x10e0f8d, 0x10e1778]", K.TOO_MANY_RESULTS),
    # erigon / reth / dRPC
    (-32602, "query exceeds max results 20000, retry with the range 24383075-24383096", K.TOO_MANY_RESULTS),
    # Arbitrum Nitro
    (-32000, "logs matched by query exceeds limit of 10000", K.TOO_MANY_RESULTS),
    # Optimism / Base public endpoints
    (-32020, "backend response too large", K.TOO_MANY_RESULTS),
    # erigon / nethermind (EIP-1474 name)
    (-32005, "limit exceeded", K.TOO_MANY_RESULTS),
    # QuickNode
    (-32614, "eth_getLogs is limited to a 10,000 range", K.RANGE_TOO_LARGE),
    # Ankr
    (-32600, "block range is too wide", K.RANGE_TOO_LARGE),
    # BSC
    (-32000, "exceed maximum block range: 5000", K.RANGE_TOO_LARGE),
    # Cloudflare
    (-32047, "Invalid eth_getLogs request. 'fromBlock'-'toBlock' range too large. Max range: 800", K.RANGE_TOO_LARGE),
    # Base / Coinbase
    (-32000, "block range too large", K.RANGE_TOO_LARGE),
    (-32000, "please limit the query to at most 1000 blocks", K.RANGE_TOO_LARGE),
    # Chainstack
    (-32000, "Block range limit exceeded.", K.RANGE_TOO_LARGE),
    # Infura (live API)
    (-32602, "range 1000000 exceeds limit of 10000", K.RANGE_TOO_LARGE),
    # thirdweb (message plus its `data`)
    (-32602, "invalid params: range 20000 is bigger than range limit 2000", K.RANGE_TOO_LARGE),
    # Alchemy free tier
    (-32600, "You can make eth_getLogs requests with up to a 500 block range. Based on your parameters, this block "
             "range should work: [0x123c9b2, 0x123cba5]", K.RANGE_TOO_LARGE),
    # reth / Hyperliquid, Morph
    (-32602, "query exceeds max block range 100000", K.RANGE_TOO_LARGE),
    (-32000, "block range is larger than max block range, block range = 5120, max block range = 5000", K.RANGE_TOO_LARGE),
    # geth rpc, Cloudflare
    (-32002, "request timed out", K.TIMEOUT),
    # Alchemy
    (-32000, "Query timeout exceeded. Consider reducing your block range.", K.TIMEOUT),
    # erigon
    (-32000, "context deadline exceeded", K.TIMEOUT),
    # HTTP 429 bodies, Alchemy, Infura
    (429, "Too Many Requests", K.RATE_LIMITED),
    (429, "Your app has exceeded its compute units per second capacity. If you have retries enabled, you can safely "
          "ignore this message.", K.RATE_LIMITED),
    (-32005, "project ID request rate exceeded", K.RATE_LIMITED),
    (-32016, "over rate limit", K.RATE_LIMITED),
    # geth: the node has not imported the block yet
    (-32000, "header not found", K.TRANSIENT),
    (-32000, "missing trie node 1a2b (path ) state 0x1a2b is not available", K.TRANSIENT),
    # anvil, asked for a block past its head
    (-32602, "BlockOutOfRangeError: block height is 6 but requested was 80", K.TRANSIENT),
    (503, "Service Unavailable", K.TRANSIENT),
    (None, "ConnectionError: connection refused", K.TRANSIENT),
    (-32603, "internal error", K.TRANSIENT),
    # wrong requests: retrying cannot help
    (-32601, "Method not found", K.TERMINAL),
    (-32602, "hex string without 0x prefix", K.TERMINAL),
    (-32000, "invalid block range params", K.TERMINAL),
    (3, "execution reverted: market: rate limit", K.TERMINAL),
    (401, "Unauthorized: invalid API key", K.TERMINAL),
    (-32700, "Parse error", K.TERMINAL),
]


@pytest.mark.parametrize(("code", "message", "kind"), PROVIDER_ERRORS, ids=[m[:40] for _, m, _ in PROVIDER_ERRORS])
def test_provider_messages_are_classified(code, message, kind):
    assert classify_rpc_error(code, message) is kind


def test_kinds_say_retry_or_shrink():
    assert {k for k in K if k.retryable} == {K.TIMEOUT, K.RATE_LIMITED, K.TRANSIENT}
    assert {k for k in K if k.shrinks_range} == {K.TOO_MANY_RESULTS, K.RANGE_TOO_LARGE, K.TIMEOUT}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("query returned more than 10000 results. Try with this block range [0x11D3A30, 0x11D3B5E].",
         (0x11D3A30, 0x11D3B5E)),
        ("... Based on your parameters, this block range should work: [0x10e0f8d, 0x10e1778]", (0x10E0F8D, 0x10E1778)),
        ("query exceeds max results 20000, retry with the range 24383075-24383096", (24383075, 24383096)),
        ("query returned more than 10000 results", None),
        ("Try with this block range [0x20, 0x10].", None),  # reversed: not a range
    ],
)  # fmt: skip
def test_parse_suggested_range(message, expected):
    assert parse_suggested_range(message) == expected


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        ("eth_getLogs is limited to a 10,000 range", 10_000),
        ("exceed maximum block range: 5000", 5_000),
        ("Invalid eth_getLogs request. 'fromBlock'-'toBlock' range too large. Max range: 800", 800),
        ("please limit the query to at most 1000 blocks", 1_000),
        ("range 1000000 exceeds limit of 10000", 10_000),
        ("invalid params: range 20000 is bigger than range limit 2000", 2_000),
        ("query exceeds max block range 100000", 100_000),
        ("block range is larger than max block range, block range = 5120, max block range = 5000", 5_000),
        ("You can make eth_getLogs requests with up to a 2K block range", 2_000),
        ("block range is too wide", None),
    ],
)
def test_parse_block_limit(message, limit):
    assert parse_block_limit(message) == limit


def test_suggested_range_prefers_the_explicit_range_and_uses_limits_only_for_range_errors():
    alchemy = "You can make eth_getLogs requests with up to a 500 block range. this block range should work: [0x64, 0xc7]"
    assert suggested_range(K.RANGE_TOO_LARGE, alchemy, 100) == (100, 199)
    assert suggested_range(K.RANGE_TOO_LARGE, "exceed maximum block range: 5000", 7) == (7, 5006)
    # Arbitrum's "limit of 10000" counts logs, not blocks
    assert suggested_range(K.TOO_MANY_RESULTS, "logs matched by query exceeds limit of 10000", 7) is None


def test_split_range_halves_and_keeps_single_blocks():
    assert split_range(10, 19) == [(10, 14), (15, 19)]
    assert split_range(10, 20) == [(10, 15), (16, 20)]
    assert split_range(5, 5) == [(5, 5)]
    with pytest.raises(ValueError, match="start <= end"):
        split_range(6, 5)


@given(st.integers(0, 10**9), st.integers(0, 10**6))
def test_split_range_covers_exactly(start, length):
    parts = split_range(start, start + length)
    assert parts[0][0] == start and parts[-1][1] == start + length
    assert all(low <= high for low, high in parts)
    assert all(a[1] + 1 == b[0] for a, b in zip(parts, parts[1:]))
    assert len(parts) == (1 if length == 0 else 2)


def test_planner_starts_at_initial_span_and_rejects_bad_settings():
    planner = RangePlanner()
    assert planner.span == 2_000
    assert planner.next_range(100, 10**6) == (100, 2_099)
    assert planner.next_range(100, 150) == (100, 150)
    with pytest.raises(ValueError, match="start <= end"):
        planner.next_range(151, 150)
    with pytest.raises(ValueError, match="min_span <= initial_span <= max_span"):
        RangePlanner(min_span=10, initial_span=5)
    with pytest.raises(ValueError, match="growth >= 1"):
        RangePlanner(shrink=1.0)
    with pytest.raises(ValueError, match="outside"):
        RangePlanner(span=20_000)


def test_success_grows_to_max_span_but_not_after_a_dense_range():
    planner = RangePlanner(initial_span=3_000)
    assert planner.after_success(10).span == 6_000
    assert planner.after_success(10).after_success(10).span == 10_000  # capped
    assert planner.after_success(6_000) == planner  # near the 10k log cap: stay
    assert RangePlanner(growth=1.0).after_success(0).span == 2_000  # fixed spans
    with pytest.raises(ValueError):
        planner.after_success(-1)


def test_errors_shrink_by_kind():
    planner = RangePlanner()
    assert planner.after_error(K.TOO_MANY_RESULTS).span == 1_000
    assert planner.after_error(K.TIMEOUT).span == 1_000
    for kind in (K.RATE_LIMITED, K.TRANSIENT, K.TERMINAL):
        assert planner.after_error(kind) == planner  # not about the range
    # shrinks from what failed, not from the span, when the last range was short
    assert planner.after_error(K.TOO_MANY_RESULTS, tried=(0, 99)).span == 50
    assert RangePlanner(initial_span=1).after_error(K.TOO_MANY_RESULTS).span == 1  # never below min_span


def test_suggested_range_is_honoured_unless_it_is_no_narrower():
    planner = RangePlanner()
    shrunk = planner.after_error(K.TOO_MANY_RESULTS, suggested=(5_000, 5_099), tried=(5_000, 6_999))
    assert shrunk.next_range(5_000, 10**6) == (5_000, 5_099)
    stale = planner.after_error(K.TOO_MANY_RESULTS, suggested=(5_000, 9_999), tried=(5_000, 6_999))
    assert stale.span == 1_000  # a wider "suggestion" cannot be right: halve


@pytest.mark.parametrize(
    ("kind", "message", "expected"),
    [
        (K.TOO_MANY_RESULTS, "Log response size exceeded. ... this block range should work: [0x3e8, 0x44b]", (1_000, 1_099)),
        (K.TOO_MANY_RESULTS, "query returned more than 10000 results. Try with this block range [0x3e8, 0x3f1].", (1_000, 1_009)),
        (K.TOO_MANY_RESULTS, "query exceeds max results 20000, retry with the range 1000-1004", (1_000, 1_004)),
        (K.RANGE_TOO_LARGE, "eth_getLogs is limited to a 500 range", (1_000, 1_499)),
        (K.RANGE_TOO_LARGE, "exceed maximum block range: 300", (1_000, 1_299)),
        (K.TOO_MANY_RESULTS, "query returned more than 10000 results", (1_000, 1_999)),  # no suggestion: halve
    ],
)  # fmt: skip
def test_walk_follows_the_providers_suggestion(kind, message, expected):
    walk = RangeWalk(1_000, 10**6, RangePlanner(initial_span=2_000)).after_error(kind, message)
    assert walk.current == expected
    assert walk.next_block == 1_000


def test_a_span_cap_is_learnt_once():
    walk = RangeWalk(0, 10**6, RangePlanner(initial_span=2_000))
    walk = walk.after_error(K.RANGE_TOO_LARGE, "eth_getLogs is limited to a 500 range")
    assert walk.planner.span == 500 and walk.planner.span_limit == 500
    for _ in range(5):
        walk = walk.after_success(0)
    assert walk.planner.span == 500  # never probes past the provider's cap again
    assert walk.current == (walk.next_block, walk.next_block + 499)
    # without a stated cap: halvings until it works, then that is the cap
    walk = RangeWalk(0, 10**6, RangePlanner(initial_span=8_000))
    walk = walk.after_error(K.RANGE_TOO_LARGE, "block range is too wide")
    walk = walk.after_error(K.RANGE_TOO_LARGE, "block range is too wide")
    assert walk.planner.span == walk.planner.span_limit == 2_000
    assert walk.after_success(0).after_success(0).planner.span == 2_000


def _config():
    return st.integers(1, 50).flatmap(
        lambda min_span: st.integers(min_span, 3_000).flatmap(
            lambda initial: st.builds(
                RangePlanner,
                min_span=st.just(min_span),
                initial_span=st.just(initial),
                max_span=st.integers(initial, 5_000),
                growth=st.sampled_from([1.5, 2.0, 3.0]),
                shrink=st.sampled_from([0.1, 0.5, 0.9]),
                dense_logs=st.integers(0, 10_000),
            )
        )
    )


_MESSAGES = [
    "",
    "query returned more than 10000 results",
    "eth_getLogs is limited to a {width} range",
    "this block range should work: [{low:#x}, {high:#x}]",
    "query exceeds max results 20000, retry with the range {low}-{high}",
]


@given(st.integers(0, 10**8), st.integers(0, 5_000), _config(), st.data())
def test_walk_covers_every_block_exactly_once_whatever_fails(start, length, planner, data):
    end = start + length
    walk = RangeWalk(start, end, planner)
    fetched: list[tuple[int, int]] = []
    steps = 0
    while not walk.done:
        steps += 1
        # NOTE: at worst 40 failed tries, then ranges of min_span blocks (a learnt cap may be that small)
        assert steps <= 41 + length // planner.min_span + 1, "the walk must end"
        low, high = walk.current
        assert start <= low <= high <= end
        assert low == walk.next_block
        p = walk.planner
        assert p.min_span <= p.span <= p.max_span and p.span <= p.ceiling
        # errors only for a while, so that the walk ends; then every range succeeds
        fail = steps < 40 and data.draw(st.booleans())
        if not fail:
            n_logs = data.draw(st.integers(0, 12_000))
            after = walk.after_success(n_logs)
            fetched.append((low, high))
            if n_logs > p.dense_logs:
                assert after.planner.span == p.span
            else:
                assert after.planner.span >= p.span
            walk = after
            continue
        kind = data.draw(st.sampled_from(list(K)))
        template = data.draw(st.sampled_from(_MESSAGES))
        s_low = data.draw(st.integers(max(0, low - 10), low + 10))
        s_high = s_low + data.draw(st.integers(-5, 3_000))
        message = template.format(width=data.draw(st.integers(1, 5_000)), low=s_low, high=max(0, s_high))
        after = walk.after_error(kind, message)
        assert after.next_block == walk.next_block  # nothing skipped
        if kind.shrinks_range and walk.can_shrink():
            new_low, new_high = after.current
            assert new_low == low and new_high - new_low < high - low  # progress: strictly fewer blocks
        elif not kind.shrinks_range:
            assert after == walk
        walk = after
    # the successful ranges tile [start, end]: no gap, no overlap, in order
    assert fetched[0][0] == start and fetched[-1][1] == end
    assert all(a[1] + 1 == b[0] for a, b in zip(fetched, fetched[1:]))
