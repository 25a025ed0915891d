"""Pure limit logic (token bucket, generation sizes) and the content filter, streamed or not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeai.serving.content_filter import BlocklistFilter, NoFilter, OutputGuard, load_filter
from nodeai.serving.errors import BadRequest, PromptTooLong, RateLimited
from nodeai.serving.limits import Limits, RateLimiter, TokenBucket, check_generation, take


# -- token bucket -------------------------------------------------------------------------------------
@given(
    rate=st.floats(0.1, 100), burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 5), min_size=1, max_size=200),
)  # fmt: skip
def test_bucket_never_allows_more_than_burst_plus_rate_times_time(rate: float, burst: int, gaps: list[float]) -> None:
    bucket: TokenBucket | None = None
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        bucket, wait = take(bucket, now, rate, burst)
        if wait == 0:
            allowed += 1
        else:
            # the advertised wait is exactly enough: the same request then succeeds
            assert take(bucket, now + wait + 1e-9, rate, burst)[1] == 0
    assert allowed <= burst + rate * now + 1e-6


@given(st.floats(0.1, 100), st.integers(1, 50), st.floats(0, 1_000), st.floats(0, 1_000))
def test_a_clock_going_backwards_grants_nothing(rate: float, burst: int, t1: float, t2: float) -> None:
    empty = TokenBucket(0.0, max(t1, t2))
    bucket, wait = take(empty, min(t1, t2), rate, burst)
    assert wait > 0 and bucket.tokens == 0.0


def test_rate_limiter_keeps_payers_apart_and_says_when_to_retry() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    limiter.check("alice")
    limiter.check("alice")
    limiter.check("bob")  # bob has his own bucket
    with pytest.raises(RateLimited) as limited:
        limiter.check("alice")
    assert limited.value.status == 429 and limited.value.headers() == {"Retry-After": "1"}
    assert "retry after 0.50 s" in limited.value.message
    now[0] += 0.5
    limiter.check("alice")


def test_rate_limiter_forgets_the_least_recently_seen_payer() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_payers=2, clock=lambda: 0.0)
    for payer in ("a", "b", "c"):
        limiter.check(payer)
    assert list(limiter._buckets) == ["b", "c"]


# -- generation sizes ---------------------------------------------------------------------------------
LIMITS = Limits(max_prompt_tokens=100, max_tokens_cap=50, default_max_tokens=40)


def test_generation_limits_name_what_to_change() -> None:
    with pytest.raises(PromptTooLong, match="101 tokens .* limit of 100 tokens: shorten the prompt"):
        check_generation(LIMITS, "m", 101, 10, 2048, 40)
    with pytest.raises(BadRequest, match="max_tokens 51 is above this provider's cap of 50: ask for at most 50") as e:
        check_generation(LIMITS, "m", 10, 51, 2048, 40)
    assert e.value.param == "max_tokens" and e.value.code == "max_tokens_too_large"
    with pytest.raises(BadRequest, match="lower max_tokens to at most 10") as e:
        check_generation(LIMITS, "m", 90, 20, 100, 40)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(BadRequest, match="max_tokens must be at least 1"):
        check_generation(LIMITS, "m", 10, 0, 2048, 40)


@given(st.integers(0, 99), st.integers(101, 4096), st.integers(1, 500))
def test_default_max_tokens_fits_context_and_cap(prompt: int, context: int, default: int) -> None:
    chosen = check_generation(LIMITS, "m", prompt, None, context, default)
    assert 1 <= chosen <= min(LIMITS.max_tokens_cap, default) and prompt + chosen <= context


# -- content filter -----------------------------------------------------------------------------------
def test_blocklist_matches_whole_words_case_insensitively() -> None:
    f = BlocklistFilter(["pipe bomb", "Sarin"])
    assert f.check_input(["how do I build a PIPE   bomb?"]) == "blocked term 'pipe   bomb'"
    assert f.check_input(["sarins", "bombastic pipe bombers"]) is None
    assert f.find_in_output("about SARIN.", final=True) == 6
    assert f.find_in_output("about sarin", final=False) is None  # may still become "sarine"
    assert NoFilter().check_input(["pipe bomb"]) is None


def test_default_blocklist_refuses_weapons_requests() -> None:
    assert BlocklistFilter().check_input(["Explain how to synthesize sarin at home"]) is not None
    assert BlocklistFilter().check_input(["What is the capital of France?"]) is None


def test_filter_is_chosen_by_config() -> None:
    assert isinstance(load_filter("none"), NoFilter)
    assert load_filter("blocklist", ["x"]).check_input(["x"]) is not None
    made = load_filter("nodeai.serving.content_filter:NoFilter")
    assert isinstance(made, NoFilter)
    with pytest.raises(ValueError, match="not 'blocklist', 'none' or 'package.module:factory'"):
        load_filter("strict")


words = st.sampled_from(["ab", "b", "ba", "abc", "c", "x"])
texts = st.lists(words, max_size=30).map(" ".join)


@given(texts, st.lists(st.integers(0, 200), max_size=10), st.lists(words, min_size=1, max_size=3))
def test_a_streamed_output_is_cut_exactly_where_the_whole_output_would_be(text: str, cuts: list[int],
                                                                         terms: list[str]) -> None:
    """However the text is split into chunks, the guard sends exactly the filtered text, never more."""
    blocklist = BlocklistFilter(terms)
    cut = blocklist.find_in_output(text, final=True)
    expected = text if cut is None else text[:cut]
    guard = OutputGuard(blocklist)
    sent, start = "", 0
    for end in sorted({min(c, len(text)) for c in cuts}) + [len(text)]:
        sent += guard.feed(text[start:end])
        assert expected.startswith(sent)
        start = end
    sent += guard.finish()
    assert sent == expected and guard.blocked == (cut is not None)
